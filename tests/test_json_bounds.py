"""json_bounds: MetaGPT's output schemas made strict and bounded, and the pattern that holds an answer to exactly
their compact JSON -- pure functions, checked on MetaGPT 0.7.7's own node classes and on the cases around them."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from conftest import metagpt_with_placeholder_config
from metagpt_vllm_fix.json_bounds import LIST_ITEMS, MAX_STRING, MIN_STRING, SPARE, Unsupported, bound, compact, pattern
from metagpt_vllm_fix.server.structured import regex_instance

metagpt_with_placeholder_config()
from metagpt.actions.design_api_an import DESIGN_API_NODE  # noqa: E402
from metagpt.actions.project_management_an import PM_NODE  # noqa: E402
from metagpt.actions.write_prd_an import WRITE_PRD_NODE  # noqa: E402

NODES = {"WritePRD": WRITE_PRD_NODE, "WriteDesign": DESIGN_API_NODE, "WriteTasks": PM_NODE}


def node_schema(node) -> dict:
    """The schema of the output class ActionNode._aask_v1 builds for a fill (MetaGPT's own)."""
    return node.create_model_class(f"{node.key}_AN", node.get_mapping("auto")).model_json_schema()


def longest(schema: dict) -> str:
    """The longest answer the pattern allows, built by filling every string and list to its bound."""
    kind = schema.get("type")
    if "enum" in schema:
        return max((json.dumps(v, ensure_ascii=False) for v in schema["enum"]), key=len)
    if kind == "string":
        return json.dumps("x" * schema["maxLength"])
    if kind == "array":
        return "[" + ", ".join([longest(schema["items"])] * schema["maxItems"]) + "]"
    if kind == "object":
        return "{" + ", ".join(f"{json.dumps(k)}: {longest(v)}" for k, v in schema["properties"].items()) + "}"
    return "-" + "9" * 18 if kind == "integer" else "true"


@pytest.mark.parametrize("name", sorted(NODES))
def test_every_field_of_a_metagpt_node_is_required_and_nothing_else_allowed(name):
    raw = node_schema(NODES[name])
    assert "required" not in raw  # MetaGPT's own schema requires nothing; its validator refuses a missing field
    schema, _ = bound(raw, 4096)
    assert schema["required"] == list(raw["properties"]) and schema["additionalProperties"] is False


@pytest.mark.parametrize("name", sorted(NODES))
@pytest.mark.parametrize("budget", [300, 1024, 4096])
def test_the_longest_answer_fits_nine_tenths_of_the_budget(name, budget):
    schema, bounds = bound(node_schema(NODES[name]), budget)
    text = longest(schema)
    assert re.fullmatch(pattern(schema), text), "the longest answer is one the pattern allows"
    if bounds.fits:
        assert len(text) <= budget * (1 - SPARE)
    else:
        assert bounds.string_chars == MIN_STRING  # no room even for the smallest strings: said, not hidden


def test_writeprd_bounds_as_the_readme_states_them():
    schema, bounds = bound(node_schema(WRITE_PRD_NODE), 4096)
    props = schema["properties"]
    assert bounds.string_chars == props["Language"]["maxLength"] == 99 and bounds.strings == 33
    assert props["Product Goals"]["maxItems"] == LIST_ITEMS
    assert props["Requirement Pool"]["items"]["maxItems"] == 2  # the node's example: [priority, requirement] pairs


def test_a_smaller_bound_the_schema_had_is_kept():
    schema, _ = bound({"type": "object", "properties": {"id": {"type": "string", "maxLength": 8},
                                                        "tags": {"type": "array", "items": {"type": "string"},
                                                                 "maxItems": 2}}}, 4096)
    assert schema["properties"]["id"]["maxLength"] == 8 and schema["properties"]["tags"]["maxItems"] == 2


def test_strings_never_exceed_max_string_however_large_the_budget():
    schema, bounds = bound({"type": "object", "properties": {"code": {"type": "string"}}}, 10 ** 6)
    assert schema["properties"]["code"]["maxLength"] == bounds.string_chars == MAX_STRING


def test_refs_into_defs_are_inlined_and_keywords_vllm_cannot_compile_dropped():
    raw = {"type": "object", "properties": {"inner": {"$ref": "#/$defs/Inner"}},
           "$defs": {"Inner": {"type": "object", "properties": {"names": {"type": "array", "uniqueItems": True,
                                                                         "items": {"type": "string"}}}}}}
    schema, _ = bound(raw, 1000)
    inner = schema["properties"]["inner"]
    assert "$defs" not in schema and "$ref" not in inner and inner["required"] == ["names"]
    assert "uniqueItems" not in inner["properties"]["names"]  # vLLM 0.32 refuses the whole request for it


def test_the_pattern_matches_compact_json_only():
    schema, _ = bound({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "boolean"}}}, 200)
    rx = pattern(schema)
    assert re.fullmatch(rx, '{"a": "x \'quoted\' y", "b": false}')
    assert not re.fullmatch(rx, '{"a": "x \\"quoted\\" y", "b": false}')  # no escapes: vLLM's grammar is 15x slower
    assert not re.fullmatch(rx, '{\n  "a": "x", "b": false}')  # no free whitespace: the longest answer is known
    assert not re.fullmatch(rx, '{"b": false, "a": "x"}')  # keys in the schema's order
    assert not re.fullmatch(rx, '{"a": "x"}')  # every key
    assert not re.fullmatch(rx, '{"a": "two\nlines", "b": true}') and \
        re.fullmatch(pattern(schema, loose=True), '{"a": "two\nlines", "b": true}')  # loose: json.loads(strict=False)


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"language": {"type": "string", "enum": ["python", "r"]},
                                      "n": {"type": "integer"}, "x": {"type": "number"}, "z": {"type": "null"}}},
    {"type": "array", "items": {"type": "string"}, "minItems": 1},
    {"anyOf": [{"type": "object", "properties": {"name": {"const": "a"}}},
               {"type": "object", "properties": {"name": {"const": "b"}, "k": {"type": ["string", "null"]}}}]},
    {"type": "object", "properties": {"key.with (meta) [chars] {and} $^*+?|": {"type": "string"}}},
])
def test_what_the_pattern_allows_is_json_valid_against_the_schema(schema):
    bounded, _ = bound(schema, 500)
    text = regex_instance(pattern(bounded))
    assert re.fullmatch(pattern(bounded), text)
    jsonschema.validate(json.loads(text), bounded)


def test_a_free_form_object_has_no_pattern():
    with pytest.raises(Unsupported):
        pattern({"type": "object"})


def test_compact_drops_descriptions_but_not_properties_named_like_them():
    raw = {"type": "object", "description": "d", "properties": {"title": {"type": "string", "title": "Title",
                                                                          "description": "x", "default": "y"}}}
    assert compact(raw) == {"type": "object", "properties": {"title": {"type": "string"}}}


def test_the_conformance_probes_send_the_pattern_the_fixes_send():
    """tests/probes.py writes its regex out (the probe set imports nothing of the package): it is this module's."""
    import probes

    assert pattern(bound(probes.BOUNDED, 10_000)[0]) == probes.BOUNDED_REGEX
