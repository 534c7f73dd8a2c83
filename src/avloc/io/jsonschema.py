"""A dependency-free checker for the JSON-Schema subset avloc's own schemas use.

avloc documents its JSON outputs with JSON Schema (``avloc/inference/schema.json``
for ``NAME.avloc.json``, ``avloc/report/run_schema.json`` for ``run.json``) but
does not depend on the ``jsonschema`` package: those schemas use only
``type``, ``required``, ``properties``, ``items``, ``enum``, ``minimum``,
``maximum`` and ``exclusiveMinimum``, which :func:`validate` implements. Any
other keyword is ignored (it is documentation as far as this checker goes).

:func:`load_json_strict` reads a document the way a validator should: JSON's
grammar only, so the ``NaN`` / ``Infinity`` that Python's :mod:`json` accepts
by default are an error rather than a value no browser can parse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_TYPES: dict[str, type | tuple[type, ...]] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(doc: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(doc, int) and not isinstance(doc, bool)
    if t == "number":
        return isinstance(doc, int | float) and not isinstance(doc, bool)
    return isinstance(doc, _TYPES[t])


def validate(doc: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Every way ``doc`` breaks ``schema`` (module doc), as ``"$.path: what"`` lines; empty when it conforms."""
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(doc, t) for t in types):
            return [f"{where}: {type(doc).__name__} is not {' or '.join(types)}"]
    errs: list[str] = []
    if "enum" in schema and doc not in schema["enum"]:
        errs.append(f"{where}: {doc!r} is not one of {schema['enum']}")
    if isinstance(doc, int | float) and not isinstance(doc, bool):
        if "minimum" in schema and doc < schema["minimum"]:
            errs.append(f"{where}: {doc} < {schema['minimum']}")
        if "maximum" in schema and doc > schema["maximum"]:
            errs.append(f"{where}: {doc} > {schema['maximum']}")
        if "exclusiveMinimum" in schema and doc <= schema["exclusiveMinimum"]:
            errs.append(f"{where}: {doc} <= {schema['exclusiveMinimum']}")
    if isinstance(doc, dict):
        errs += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in doc]
        for k, sub in schema.get("properties", {}).items():
            if k in doc:
                errs += validate(doc[k], sub, f"{where}.{k}")
    if isinstance(doc, list) and "items" in schema:
        for i, v in enumerate(doc):
            errs += validate(v, schema["items"], f"{where}[{i}]")
    return errs


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_json_strict(path: str | Path) -> Any:
    """Parse a JSON file, refusing ``NaN``/``Infinity``; raises ``OSError``, ``UnicodeDecodeError`` or ``ValueError``."""
    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_no_constant)


def load_schema(package: str, name: str) -> dict[str, Any]:
    """A schema shipped inside an avloc package, e.g. ``load_schema("avloc.inference", "schema.json")``."""
    from importlib.resources import files

    schema: dict[str, Any] = json.loads(files(package).joinpath(name).read_text(encoding="utf-8"))
    return schema
