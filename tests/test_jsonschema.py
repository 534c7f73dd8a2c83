"""avloc.formats.jsonschema: Draft 2020-12 validation by the jsonschema library, one "$.path: what" line per problem."""

from __future__ import annotations

import pytest

from avloc.errors import ConfigError
from avloc.formats.jsonschema import load_schema, validate


def test_every_keyword_is_checked_and_paths_are_named() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["frames"],
        "additionalProperties": False,
        "properties": {
            "frames": {"type": "array", "minItems": 1, "items": {
                "type": "object", "properties": {"id": {"type": "string", "pattern": "^f[0-9]+$"},
                                                 "p": {"type": "number", "maximum": 1}}}},
        },
    }
    assert validate({"frames": [{"id": "f1", "p": 0.5}]}, schema) == []
    errs = validate({"frames": [{"id": "x", "p": 1.5}], "extra": 1}, schema)
    # keywords the earlier hand-written subset ignored (pattern, additionalProperties) are enforced now
    assert "$.frames[0].id: 'x' does not match '^f[0-9]+$'" in errs
    assert "$.frames[0].p: 1.5 is greater than the maximum of 1" in errs
    assert any(e.startswith("$: Additional properties are not allowed ('extra'") for e in errs)
    assert validate({"frames": []}, schema) == ["$.frames: [] should be non-empty"]
    assert validate(3, schema, where="doc") == ["doc: 3 is not of type 'object'"]


def test_a_malformed_schema_is_an_error_not_a_weaker_check() -> None:
    with pytest.raises(ConfigError, match=r"invalid JSON Schema at \$\.properties\.a\.minItems"):
        validate({}, {"type": "object", "properties": {"a": {"minItems": "one"}}})


def test_shipped_schemas_are_valid_draft_2020_12() -> None:
    for package, name in (("avloc.formats", "localize_schema.json"), ("avloc.formats", "run_schema.json")):
        schema = load_schema(package, name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert validate({}, schema)  # an empty document misses required keys
