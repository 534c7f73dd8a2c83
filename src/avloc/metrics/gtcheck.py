"""The validating layer under the ground-truth parsers (:mod:`avloc.metrics.groundtruth`).

Parsers read a file into plain JSON data and hand each field to these checks,
which return the value in the form the parser needs or raise
:class:`avloc.errors.DataError` naming the file, the entry (index and id) and
the field — never a ``TypeError``, ``KeyError`` or ``ZeroDivisionError`` from
deep inside a parser, and never a silent acceptance of a box that cannot be
scored.

Schema (what every format's fields must be; the formats' layouts are in
:mod:`avloc.metrics.groundtruth`):

=============== ======================================================================
file            UTF-8 text, strict JSON (``NaN`` / ``Infinity`` literals refused)
entry           a JSON object (the top level is a list of entries, or for MUSIC an
                ``id -> entry`` object)
id / file       a non-empty string (numbers are accepted and turned into strings)
box             4 finite numbers ``[x1, y1, x2, y2]`` (not null, not strings, not
                booleans); range rules are the format's (VGG-SS keeps the public
                file's degenerate boxes, the manifest requires ``x1 < x2``, ``y1 < y2``)
box list        a list of boxes
size            ``[W, H]``, two positive finite numbers
labels          integers (not booleans)
sounding        booleans, one per box
fps             a positive finite number
frame index     a non-negative integer; frame ``time``: a non-negative finite number;
                an AVSOL frame needs one of them
=============== ======================================================================
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from avloc.errors import DataError


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (use null for a missing value, and no box with a missing coordinate)")


def read_json(path: str | Path, what: str = "annotation") -> Any:
    """Strict JSON from a UTF-8 text file, or :class:`DataError` saying what the file is instead."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file not found: {p}" if not p.is_dir() else f"{p} is a folder, not a {what} file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a text (UTF-8 JSON) file; is it a binary file given by mistake?") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON ({e})") from None
    except ValueError as e:
        raise DataError(f"{p}: {e}") from None


def where(path: str | Path, index: int | str | None, entry: Any = None, key: str = "id") -> str:
    """``FILE: entry I (id 'X')`` for messages."""
    s = f"{path}"
    if index is not None:
        s += f": entry {index}"
        sid = entry.get(key) if isinstance(entry, dict) else None
        if isinstance(sid, (str, int)) and not isinstance(sid, bool) and str(sid) != str(index):
            s += f" ({key} {str(sid)!r})"
    return s


def entry(value: Any, at: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{at}: must be a JSON object, got {_kind(value)}")
    return value


def entries(value: Any, path: str | Path, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise DataError(f"{path}: {what} must be a JSON list of entries, got {_kind(value)}")
    return value


def identifier(value: Any, at: str, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataError(f"{at}: field {field!r} must be a non-empty string, got {_show(value)}")
    return str(value)


def number(value: Any, at: str, field: str, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{at}: field {field!r} must be a finite number, got {_show(value)}")
    if positive and not value > 0:
        raise DataError(f"{at}: field {field!r} must be positive, got {value}")
    if nonnegative and value < 0:
        raise DataError(f"{at}: field {field!r} must not be negative, got {value}")
    return float(value)


def box(value: Any, at: str, field: str) -> list[float]:
    """4 finite numbers (see the module's schema)."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise DataError(f"{at}: field {field!r} must be [x1, y1, x2, y2], got {_show(value)}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            name = ("x1", "y1", "x2", "y2")[i]
            raise DataError(f"{at}: field {field!r}: {name} = {_show(v)} is not a finite number (box {_show(value)})")
    return [float(v) for v in value]


def boxes(value: Any, at: str, field: str) -> list[list[float]]:
    if not isinstance(value, list):
        raise DataError(f"{at}: field {field!r} must be a list of [x1, y1, x2, y2] boxes, got {_show(value)}")
    return [box(b, at, f"{field}[{i}]") for i, b in enumerate(value)]


def size(value: Any, at: str, field: str = "size") -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise DataError(f"{at}: field {field!r} must be [W, H], got {_show(value)}")
    w = number(value[0], at, f"{field}[0]")
    h = number(value[1], at, f"{field}[1]")
    if w <= 0 or h <= 0:
        raise DataError(f"{at}: field {field!r} must be [W, H] with W, H > 0, got {_show(value)}")
    return w, h


def integers(value: Any, at: str, field: str) -> list[int]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise DataError(f"{at}: field {field!r} must be a list of integers, got {_show(value)}")
    return list(value)


def flags(value: Any, at: str, field: str, n: int) -> list[bool]:
    if not isinstance(value, list) or any(not isinstance(v, bool) for v in value):
        raise DataError(f"{at}: field {field!r} must be a list of true/false, got {_show(value)}")
    if len(value) != n:
        raise DataError(f"{at}: field {field!r} has {len(value)} values for {n} boxes")
    return list(value)


def index(value: Any, at: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{at}: field {field!r} must be a non-negative integer, got {_show(value)}")
    return value


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), f"a {type(v).__name__}"
    )


def _show(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (dict, list, str, int, float, bool, type(None))) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
