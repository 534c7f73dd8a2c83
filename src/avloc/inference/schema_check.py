"""Checking an ``NAME.avloc.json`` document against ``schema.json`` (no third-party validator needed).

The subset of JSON Schema that ``schema.json`` uses: ``type`` (one or a list), ``required``,
``properties``, ``items``, ``enum``, ``minimum`` / ``maximum`` / ``exclusiveMinimum``. The batch runner
(:mod:`avloc.inference.batch`) uses it to decide whether a finished output can be skipped on a re-run.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("schema.json")
_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


@functools.cache
def localize_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _type_ok(doc: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(doc, int) and not isinstance(doc, bool)
    if t == "number":
        return isinstance(doc, int | float) and not isinstance(doc, bool)
    return isinstance(doc, _TYPES[t])


def validate(doc: Any, schema: dict[str, Any] | None = None, where: str = "$") -> list[str]:
    """Every violation of ``schema`` (default: ``schema.json``) in ``doc``, as ``"$.path: what"`` lines."""
    schema = localize_schema() if schema is None else schema
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_type_ok(doc, t) for t in types):
            return [f"{where}: {type(doc).__name__} is not {types}"]
    errs: list[str] = []
    if "enum" in schema and doc not in schema["enum"]:
        errs.append(f"{where}: {doc!r} not in {schema['enum']}")
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
