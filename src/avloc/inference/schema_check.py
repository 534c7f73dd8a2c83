"""Checking an ``NAME.avloc.json`` document against ``schema.json``, with the one JSON-Schema checker
(:mod:`avloc.io.jsonschema`). The batch runner (:mod:`avloc.inference.batch`) uses it to decide whether a
finished output can be skipped on a re-run.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from avloc.io import jsonschema

SCHEMA_PATH = Path(__file__).with_name("schema.json")


@functools.cache
def localize_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate(doc: Any, schema: dict[str, Any] | None = None, where: str = "$") -> list[str]:
    """Every violation of ``schema`` (default: ``schema.json``) in ``doc``, as ``"$.path: what"`` lines."""
    return jsonschema.validate(doc, localize_schema() if schema is None else schema, where)
