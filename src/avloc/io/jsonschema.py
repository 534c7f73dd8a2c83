"""JSON Schema checking of avloc's own JSON files, with the ``jsonschema`` library (Draft 2020-12).

avloc documents its JSON outputs with JSON Schema (``avloc/formats/localize_schema.json`` for
``NAME.avloc.json``, ``avloc/report/run_schema.json`` for ``run.json``); :func:`validate` checks a document
with a real validator (every keyword, ``$ref`` included) and reports each problem as one ``"$.path: what"``
line.

:func:`load_json_strict` reads a document the way a validator should: JSON's grammar only, so the ``NaN`` /
``Infinity`` that Python's :mod:`json` accepts by default, and numbers too large for a double (``1e999``,
which Python would read as infinity), are an error rather than a value no browser can parse.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=8)
def _validator(schema_json: str) -> Any:
    from jsonschema import Draft202012Validator

    schema = json.loads(schema_json)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate(doc: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Every way ``doc`` breaks ``schema``, as ``"$.path: what"`` lines (document order); empty when it conforms."""
    v = _validator(json.dumps(schema, sort_keys=True))
    errs = sorted(v.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    out = []
    for e in errs:
        path = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        out.append(f"{path}: {e.message[:300]}")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"{text[:40]} is too large for a number")
    return x


def load_json_strict(path: str | Path) -> Any:
    """Parse a JSON file, refusing ``NaN``/``Infinity`` and out-of-range numbers; raises ``OSError``,
    ``UnicodeDecodeError`` or ``ValueError``."""
    return loads_strict(Path(path).read_text(encoding="utf-8"))


def loads_strict(text: str) -> Any:
    """:func:`load_json_strict` of a string."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def load_schema(package: str, name: str) -> dict[str, Any]:
    """A schema shipped inside an avloc package, e.g. ``load_schema("avloc.formats", "localize_schema.json")``."""
    from importlib.resources import files

    schema: dict[str, Any] = json.loads(files(package).joinpath(name).read_text(encoding="utf-8"))
    return schema
