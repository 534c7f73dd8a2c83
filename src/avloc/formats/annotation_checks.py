"""The validating layer under the annotation parsers (:mod:`avloc.formats.annotations`); torch-free.

Parsers read a file into plain data and hand each field to these checks,
which return the value in the form the parser needs or raise
:class:`avloc.errors.DataError` naming the file, the entry (index and id) and
the field — never a ``TypeError``, ``KeyError``, ``OverflowError`` or
``RecursionError`` from deep inside a parser, and never a silent acceptance of
a box that cannot be scored.

Schema (what every format's fields must be; the formats' layouts are in
:mod:`avloc.formats.annotations`):

=============== ======================================================================
file            UTF-8 text; JSON strict (``NaN`` / ``Infinity`` literals refused,
                nesting at most Python's recursion depth), CSV fields at most
                :data:`MAX_CSV_FIELD` characters
entry           a JSON object (the top level is a list of entries, or for MUSIC an
                ``id -> entry`` object)
id / file       a non-empty string (numbers are accepted and turned into strings)
box             4 finite numbers ``[x1, y1, x2, y2]`` (not null, not strings, not
                booleans) within :data:`MAX_COORD`; ``positive`` boxes (the avloc-style
                formats) have ``x1 < x2`` and ``y1 < y2``; VGG-SS keeps the public
                file's degenerate boxes, as the public evaluation does
normalised box  DSOL / Qian ``[x, y, w, h]``: ``x, y`` in [0, 1], ``w, h`` in (0, 1]
integer pixel   Flickr XML: a decimal integer of at most :data:`MAX_DIGITS` digits
box list        a list of boxes
size            ``[W, H]``, two numbers in (0, :data:`MAX_SIDE`]
labels          integers in [0, :data:`MAX_LABEL`] (not booleans)
sounding        booleans, one per box
fps             a number in (0, :data:`MAX_FPS`]
frame index     an integer in [0, :data:`MAX_SECONDS` x :data:`MAX_FPS`]; frame ``time``: a
                number in [0, :data:`MAX_SECONDS`]; an AVSOL frame needs one of them
=============== ======================================================================
"""

from __future__ import annotations

import json
import math
import reprlib
from pathlib import Path
from typing import Any

from avloc.errors import DataError

#: largest |coordinate| of a box: a normalised value times the largest grid the protocols use (256 px) must
#: fit in a 64-bit integer, as the published evaluations cast to int (2^63 / 2^8); the public VGG-SS file's
#: degenerate -2.88e16 fits, 1e308 does not
MAX_COORD = float(2**55)
#: most digits of a Flickr XML pixel coordinate (frames are 256 px; six digits leave room, and a 400-digit
#: number is refused before any int conversion)
MAX_DIGITS = 6
#: largest frame side in pixels (65,536: the bound of the video formats' 16-bit dimension fields)
MAX_SIDE = 65_536
#: largest class index (labels index class maps; 2^31 keeps them valid int32 indices)
MAX_LABEL = 2**31 - 1
#: longest video a frame annotation may point into (a day) and highest frame rate (1,000 fps)
MAX_SECONDS = 86_400.0
MAX_FPS = 1_000.0
#: longest CSV field (the csv module's own default limit): a SLAVC list holds ids of a few dozen characters
MAX_CSV_FIELD = 131_072


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (use null for a missing value, and no box with a missing coordinate)")


def read_text(path: str | Path, what: str = "annotation") -> str:
    """A UTF-8 text file's content, or :class:`DataError` saying what the file is instead."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file not found: {p}" if not p.is_dir() else f"{p} is a folder, not a {what} file")
    try:
        return p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a text (UTF-8) file; is it a binary file given by mistake?") from None


def read_json(path: str | Path, what: str = "annotation") -> Any:
    """Strict JSON from a UTF-8 text file, or :class:`DataError` saying what the file is instead."""
    p = Path(path)
    text = read_text(p, what)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON ({e})") from None
    except RecursionError:
        raise DataError(f"{p}: JSON nested too deeply to be an annotation file") from None
    except ValueError as e:  # NaN / Infinity, or an integer over Python's digit limit
        raise DataError(f"{p}: {str(e).splitlines()[0]}") from None


def read_csv_rows(path: str | Path, what: str = "annotation") -> list[list[str]]:
    """The rows of a UTF-8 CSV file (fields at most :data:`MAX_CSV_FIELD` characters), or :class:`DataError`."""
    import csv
    import io

    p = Path(path)
    reader = csv.reader(io.StringIO(read_text(p, what), newline=""))
    try:
        return list(reader)
    except csv.Error as e:  # a field over the limit, a NUL byte, a broken quote
        raise DataError(f"{p}: line {reader.line_num}: not a CSV row ({e})") from None


def where(path: str | Path, index: int | str | None, entry: Any = None, key: str = "id") -> str:
    """``FILE: entry I (id 'X')`` for messages."""
    s = f"{path}"
    if index is not None:
        s += f": entry {index}"
        sid = entry.get(key) if isinstance(entry, dict) else None
        if isinstance(sid, (str, int)) and not isinstance(sid, bool) and str(sid) != str(index):
            s += f" ({key} {reprlib.repr(str(sid))})"
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
        raise DataError(f"{at}: field {field!r} must be a non-empty string, got {show(value)}")
    if isinstance(value, int) and not abs(value) <= MAX_LABEL:
        raise DataError(f"{at}: field {field!r}: a number of {len(str(abs(value)))} digits is not an id")
    return str(value)


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a boolean, not an integer beyond float range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def number(value: Any, at: str, field: str, positive: bool = False, nonnegative: bool = False,
           high: float | None = None) -> float:
    """A finite number (not a boolean): ``> 0`` if ``positive``, ``>= 0`` if ``nonnegative``, ``<= high``."""
    x = _finite(value)
    if x is None:
        raise DataError(f"{at}: field {field!r} must be a finite number, got {show(value)}")
    if positive and not x > 0:
        raise DataError(f"{at}: field {field!r} must be positive, got {show(value)}")
    if nonnegative and x < 0:
        raise DataError(f"{at}: field {field!r} must not be negative, got {show(value)}")
    if high is not None and x > high:
        raise DataError(f"{at}: field {field!r} must be at most {high:g}, got {show(value)}")
    return x


def box(value: Any, at: str, field: str, positive: bool = False) -> list[float]:
    """4 finite numbers within :data:`MAX_COORD` (see the module's schema); ``positive``: ``x1 < x2, y1 < y2``."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise DataError(f"{at}: field {field!r} must be [x1, y1, x2, y2], got {show(value)}")
    out = []
    for name, v in zip(("x1", "y1", "x2", "y2"), value, strict=True):
        x = _finite(v)
        if x is None:
            raise DataError(f"{at}: field {field!r}: {name} = {show(v)} is not a finite number (box {show(value)})")
        if abs(x) > MAX_COORD:
            raise DataError(f"{at}: field {field!r}: {name} = {show(v)} is not a coordinate (|value| > {MAX_COORD:.3g})")
        out.append(x)
    if positive and not (out[0] < out[2] and out[1] < out[3]):
        raise DataError(f"{at}: field {field!r}: empty box {show(value)} (needs x1 < x2 and y1 < y2)")
    return out


def boxes(value: Any, at: str, field: str, positive: bool = False) -> list[list[float]]:
    if not isinstance(value, list):
        raise DataError(f"{at}: field {field!r} must be a list of [x1, y1, x2, y2] boxes, got {show(value)}")
    return [box(b, at, f"{field}[{i}]", positive) for i, b in enumerate(value)]


def xywh(value: Any, at: str, field: str) -> tuple[float, float, float, float]:
    """A normalised ``[x, y, w, h]`` box (DSOL, Qian): ``x, y`` in [0, 1], ``w, h`` in (0, 1]."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise DataError(f"{at}: field {field!r} must be [x, y, w, h], got {show(value)}")
    x, y, w, h = (number(v, at, f"{field}.{n}", nonnegative=True, high=1.0) for n, v in zip("xywh", value, strict=True))
    if not (w > 0 and h > 0):
        raise DataError(f"{at}: field {field!r}: box {show(value)} has no area (w and h must be > 0)")
    return x, y, w, h


def pixel(text: str | None, at: str, field: str) -> int:
    """A Flickr XML pixel coordinate: a decimal integer of at most :data:`MAX_DIGITS` digits."""
    s = (text or "").strip()
    digits = s.removeprefix("-").removeprefix("+")
    if not digits.isdecimal() or not digits.isascii():
        raise DataError(f"{at}: {field} = {show(s)} is not an integer pixel coordinate")
    if len(digits) > MAX_DIGITS:
        raise DataError(f"{at}: {field} has {len(digits)} digits: not a pixel coordinate (at most {MAX_DIGITS})")
    return int(s)


def size(value: Any, at: str, field: str = "size") -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise DataError(f"{at}: field {field!r} must be [W, H], got {show(value)}")
    w, h = number(value[0], at, f"{field}[0]"), number(value[1], at, f"{field}[1]")
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise DataError(f"{at}: field {field!r} must be [W, H] with W, H > 0 (at most {MAX_SIDE}), got {show(value)}")
    return w, h


def label(value: Any, at: str, field: str) -> int:
    """A class index: an integer in [0, :data:`MAX_LABEL`] (not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LABEL:
        raise DataError(f"{at}: field {field!r} must be a class index (an integer in [0, {MAX_LABEL}]), got {show(value)}")
    return value


def integers(value: Any, at: str, field: str) -> list[int]:
    """Class indices: a list of integers in [0, :data:`MAX_LABEL`]."""
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_LABEL
                                          for v in value):
        raise DataError(f"{at}: field {field!r} must be a list of integers in [0, {MAX_LABEL}] (class indices), "
                        f"got {show(value)}")
    return list(value)


def flags(value: Any, at: str, field: str, n: int) -> list[bool]:
    if not isinstance(value, list) or any(not isinstance(v, bool) for v in value):
        raise DataError(f"{at}: field {field!r} must be a list of true/false, got {show(value)}")
    if len(value) != n:
        raise DataError(f"{at}: field {field!r} has {len(value)} values for {n} boxes")
    return list(value)


def fps(value: Any, at: str, field: str = "fps") -> float:
    return number(value, at, field, positive=True, high=MAX_FPS)


def seconds(value: Any, at: str, field: str) -> float:
    return number(value, at, field, nonnegative=True, high=MAX_SECONDS)


def index(value: Any, at: str, field: str) -> int:
    limit = int(MAX_SECONDS * MAX_FPS)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise DataError(f"{at}: field {field!r} must be a frame number (an integer in [0, {limit}]), got {show(value)}")
    return value


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), f"a {type(v).__name__}"
    )


class _Shower(reprlib.Repr):
    """How values are shown in messages: JSON spelling (null, true, "text"), short whatever their size or depth."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxstring, self.maxlong, self.maxother = \
            3, 6, 6, 4, 48, 24, 48

    def repr_NoneType(self, x: None, level: int) -> str:
        return "null"

    def repr_bool(self, x: bool, level: int) -> str:
        return "true" if x else "false"

    def repr_str(self, x: str, level: int) -> str:
        s = json.dumps(x[: self.maxstring + 1])
        return s if len(x) <= self.maxstring else f"{s[:-1]}...\""


_SHOW = _Shower()


def show(v: Any) -> str:
    """``v`` for a one-line message: JSON spelling, shortened whatever its size or depth."""
    return _SHOW.repr(v)
