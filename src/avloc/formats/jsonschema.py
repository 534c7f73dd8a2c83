"""Checking avloc's JSON documents against their JSON Schemas (Draft 2020-12) with the ``jsonschema`` library.

avloc documents its JSON outputs with JSON Schema (``avloc/formats/localize_schema.json`` for
``NAME.avloc.json``, ``avloc/formats/run_schema.json`` for ``run.json``). :func:`validate` checks a
document with :class:`jsonschema.Draft202012Validator` -- every keyword of the draft, none ignored -- and
returns each violation as one ``"$.path: what"`` line. The schema itself is checked against the
draft's meta-schema first, so a malformed schema is an error, not a silently weaker check. No
reference is ever fetched: avloc's schemas are self-contained.

:func:`load_json_strict` reads a document the way a validator should: JSON's grammar only, so the
``NaN`` / ``Infinity`` that Python's :mod:`json` accepts by default, and numbers too large for a double
(``1e999``, which Python would read as infinity), are an error rather than a value no browser can parse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from avloc.errors import ConfigError


def _where(root: str, path: Iterable[Any]) -> str:
    """``$.frames[3].boxes`` from a validator's absolute path."""
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


#: a violation's message is cut to this many characters (a huge document must not make a huge error line)
MESSAGE_CHARS = 300
#: validators by their schema's canonical JSON: checking a schema against the meta-schema takes ~0.1 s
_VALIDATORS: dict[str, Draft202012Validator] = {}


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A Draft 2020-12 validator of ``schema``, after checking ``schema`` against the meta-schema (once per schema)."""
    key = json.dumps(schema, sort_keys=True)
    found = _VALIDATORS.get(key)
    if found is None:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as e:
            raise ConfigError(f"invalid JSON Schema at {_where('$', e.absolute_path)}: {e.message}") from None
        found = _VALIDATORS[key] = Draft202012Validator(schema)
    return found


def validate(doc: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Every way ``doc`` breaks ``schema``, as ``"$.path: what"`` lines (document order); empty when it conforms."""
    errors: list[ValidationError] = list(validator(schema).iter_errors(doc))
    return [f"{_where(where, e.absolute_path)}: {e.message[:MESSAGE_CHARS]}" for e in errors]


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
    """A schema shipped inside an avloc package, e.g. ``load_schema("avloc.inference", "schema.json")``."""
    from importlib.resources import files

    schema: dict[str, Any] = json.loads(files(package).joinpath(name).read_text(encoding="utf-8"))
    return schema
