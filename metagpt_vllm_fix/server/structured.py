"""Structured outputs: the JSON schema or regular expression a request constrains its answer to on the played
generation, and the emulator's constrained "model": a deterministic value valid against that schema, or a
deterministic match of that expression.

Which field constrains, and which wins, is the generation's (``vllm_versions``: ``structured_output_fields``,
``response_format_json_schema``; read from the wheels, vllm-tools-facts.md §1). A real model fills a schema with
whatever it likes; the emulator's answer is the smallest value it can build: required properties only, the first
``enum``/``const``, the first ``anyOf``/``oneOf`` branch, strings and arrays as short as allowed, numbers at their
lower bound. Its JSON text is split into pieces like the echo, so ``max_tokens`` cuts it (finish "length").
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional

from .. import vllm_versions
from . import echo
from .errors import APIError
from .served import Served

_TEXT = "echo"  #: the text a string value is made of (cut to maxLength, padded to minLength)
_MAX_DEPTH = 32  #: a schema that refers to itself gets no deeper than this


def validate(served: Served, body: dict[str, Any]) -> None:
    """vLLM's request-validation 400s about structured outputs (pydantic's step: before the model is checked)."""
    gen = served.generation
    response_format = body.get("response_format")
    if (gen.json_schema_missing_message and isinstance(response_format, dict)
            and response_format.get("type") == "json_schema" and response_format.get("json_schema") is None):
        raise APIError(gen.json_schema_missing_message, gen.bad_request_type, param="response_format")
    constraint = body.get("structured_outputs")
    if (gen.structured_outputs_or_tools_message and "structured_outputs" in gen.structured_output_fields
            and isinstance(constraint, dict) and any(constraint.get(k) is not None for k in ("json", "regex", "choice"))
            and body.get("tool_choice", "none") not in ("none", "auto", "required")):
        raise APIError(gen.structured_outputs_or_tools_message, gen.bad_request_type)


def _field_schema(field: str, value: Any) -> Optional[Any]:
    if field == "structured_outputs":
        return value.get("json") if isinstance(value, dict) else None
    return value


def requested_schema(served: Served, body: dict[str, Any], endpoint: str) -> Optional[Any]:
    """The JSON schema this request's answer is constrained to on ``endpoint`` ("chat" or "completions"), or None.

    Of the generation's fields, the last one sent wins; a json_schema ``response_format`` overrides them where the
    generation honours it on that endpoint (facts §1c). A schema sent as a string is parsed, as vLLM does.
    """
    gen, schema = served.generation, None
    for field in gen.structured_output_fields:
        found = _field_schema(field, body.get(field))
        schema = found if found is not None else schema
    response_format = body.get("response_format")
    if endpoint in gen.response_format_json_schema and isinstance(response_format, dict) \
            and response_format.get("type") == "json_schema" and isinstance(response_format.get("json_schema"), dict):
        found = response_format["json_schema"].get("schema")
        schema = found if found is not None else schema
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            raise APIError("Invalid JSON grammar specification.", gen.bad_request_type) from None
    return schema


def requested_regex(served: Served, body: dict[str, Any]) -> Optional[str]:
    """The regular expression this request's answer is constrained to, or None: ``guided_regex`` where the generation
    reads ``guided_json``, ``structured_outputs.regex`` where it reads ``structured_outputs`` (the last one wins)."""
    found = None
    for field in served.generation.structured_output_fields:
        value = body.get(vllm_versions.sent_field(field, True))
        value = value.get("regex") if field == "structured_outputs" and isinstance(value, dict) else value
        found = value if isinstance(value, str) else found
    return found


def _keys(schema: Any) -> set[str]:
    """Every keyword used anywhere in the schema (property names are names, not keywords)."""
    found: set[str] = set()
    if isinstance(schema, Mapping):
        for key, value in schema.items():
            found.add(str(key))
            if key in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas") and \
                    isinstance(value, Mapping):
                for sub in value.values():
                    found |= _keys(sub)
            elif key not in ("enum", "const", "default", "examples", "required"):
                found |= _keys(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= _keys(item)
    return found


def refusal(served: Served, schema: Any) -> Optional[APIError]:
    """The 400 a server sends for a schema it cannot compile (after the prompt's checks), or None."""
    gen = served.generation
    unimplemented = sorted(_keys(schema) & set(gen.uncompilable_schema_keys))
    if not unimplemented or gen.uncompilable_schema_message is None:
        return None
    keys = ", ".join(json.dumps(key) for key in unimplemented)
    return APIError(gen.uncompilable_schema_message.format(keys=keys), gen.bad_request_type)


def _resolve(ref: str, root: Any) -> Any:
    """A local ``$ref`` (``#/$defs/X``, ``#/definitions/X``, any JSON pointer into the root); {} if dangling."""
    target = root
    for part in ref.lstrip("#").strip("/").split("/") if ref.strip("#/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        target = target.get(part) if isinstance(target, Mapping) else None
    return target if target is not None else {}


def _number(schema: Mapping[str, Any], integer: bool) -> Any:
    low, high = schema.get("minimum"), schema.get("maximum")
    step = 1 if integer else 0.5
    if isinstance(schema.get("exclusiveMinimum"), (int, float)) and not isinstance(schema["exclusiveMinimum"], bool):
        low = schema["exclusiveMinimum"] + step
    if isinstance(schema.get("exclusiveMaximum"), (int, float)) and not isinstance(schema["exclusiveMaximum"], bool):
        high = schema["exclusiveMaximum"] - step
    value = 0 if low is None else low
    if high is not None and value > high:
        value = high
    return int(-(-value // 1)) if integer else value


def _string(schema: Mapping[str, Any]) -> str:
    text = _TEXT
    if isinstance(schema.get("maxLength"), int):
        text = text[: schema["maxLength"]]
    if isinstance(schema.get("minLength"), int) and schema["minLength"] > len(text):
        text += "o" * (schema["minLength"] - len(text))
    return text


def _value(schema: Any, root: Any, depth: int) -> Any:
    if schema is True or not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return None
    if isinstance(schema.get("$ref"), str):
        return _value(_resolve(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for branches in ("anyOf", "oneOf"):
        if isinstance(schema.get(branches), list) and schema[branches]:
            first = schema[branches][0]
            rest = {k: v for k, v in schema.items() if k != branches}
            return _value({**rest, **first} if isinstance(first, Mapping) else first, root, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for branch in schema["allOf"]:
            branch = _resolve(branch["$ref"], root) if isinstance(branch, Mapping) and "$ref" in branch else branch
            if isinstance(branch, Mapping):
                merged = {**merged, **branch, "properties": {**merged.get("properties", {}),
                                                             **branch.get("properties", {})},
                          "required": [*merged.get("required", []), *branch.get("required", [])]}
        return _value(merged, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind == "object":
        properties = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
        required = [name for name in schema.get("required", []) if isinstance(name, str)]
        return {name: _value(properties.get(name, {}), root, depth + 1) for name in dict.fromkeys(required)}
    if kind == "array":
        prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
        items = schema.get("items", {})
        minimum = schema.get("minItems") if isinstance(schema.get("minItems"), int) else 0
        return [_value(prefix[i] if i < len(prefix) else items, root, depth + 1) for i in range(max(minimum,
                                                                                                    len(prefix)))]
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return False
    return None


def instance(schema: Any) -> Any:
    """A deterministic value valid against ``schema`` (the emulator's constrained answer)."""
    return _value(schema, schema, 0)


def answer(schema: Any, max_tokens: int) -> tuple[list[str], str]:
    """The constrained answer's JSON text in "tokens", cut at ``max_tokens`` (finish "length") as the echo is."""
    return echo.cut(json.dumps(instance(schema), ensure_ascii=False), max_tokens)


def _regex_parser() -> Any:
    import re

    parser = getattr(re, "_parser", None)  # Python 3.11; sre_parse before (deprecated there)
    if parser is None:  # pragma: no cover  (Python 3.9, 3.10)
        import sre_parse as parser
    return parser


def _one_char(items: Any, position: int) -> Optional[str]:
    """A character the pattern ``items`` matches on its own, preferring the echo's letters (None: none of them)."""
    import re

    pattern = _source(items)
    for candidate in (_TEXT[position % len(_TEXT)], *_TEXT, "a", "0", " "):
        if re.fullmatch(pattern, candidate):
            return str(candidate)
    return None


def _source(items: Any) -> str:
    """Parsed pattern items written back as a pattern (for ``_one_char``'s test)."""
    import re

    out = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            out.append(re.escape(chr(arg)))
        elif name == "IN":
            parts = []
            for sub_op, sub_arg in arg:
                sub = str(sub_op)
                if sub == "NEGATE":
                    parts.append("^")
                elif sub == "LITERAL":
                    parts.append(re.escape(chr(sub_arg)))
                elif sub == "RANGE":
                    parts.append(f"{re.escape(chr(sub_arg[0]))}-{re.escape(chr(sub_arg[1]))}")
                elif sub == "CATEGORY":
                    parts.append({"CATEGORY_DIGIT": r"\d", "CATEGORY_SPACE": r"\s", "CATEGORY_WORD": r"\w"}
                                 .get(str(sub_arg), ""))
            out.append("[" + "".join(parts) + "]")
        elif name == "ANY":
            out.append(".")
        elif name == "SUBPATTERN":
            out.append("(?:" + _source(arg[-1]) + ")")
        elif name == "BRANCH":
            out.append("(?:" + "|".join(_source(branch) for branch in arg[1]) + ")")
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            low, high, sub = arg
            out.append(f"(?:{_source(sub)}){{{low},{'' if high > 10**6 else high}}}")
        else:
            out.append("(?!)")
    return "".join(out)


def _match(items: Any, depth: int = 0) -> str:
    """A short text ``items`` (a parsed pattern) matches: first branches, fewest repeats, but a repeated character
    (a string's content) spells the echo's text as far as allowed."""
    out: list[str] = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name in ("IN", "ANY"):
            out.append(_one_char([(op, arg)], len(out)) or "e")
        elif name == "SUBPATTERN":
            out.append(_match(arg[-1], depth + 1))
        elif name == "BRANCH":
            out.append(_match(arg[1][0], depth + 1))
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            low, high, sub = arg
            if high >= len(_TEXT) and len(_match(sub, depth + 1)) == 1:  # a string's characters
                times = min(max(low, len(_TEXT)), high)
                out.append("".join(_one_char(sub, i) or _match(sub, depth + 1) for i in range(times)))
            else:
                out.append(_match(sub, depth + 1) * low)
    return "".join(out)


def regex_instance(regex: str) -> str:
    """A deterministic text the pattern matches in full (the emulator's regex-constrained answer): each string of
    the compact JSON the fixes ask for reads "echo", each list holds as few items as allowed."""
    return _match(_regex_parser().parse(regex))


def regex_answer(regex: str, max_tokens: int) -> tuple[list[str], str]:
    """The regex-constrained answer in "tokens", cut at ``max_tokens`` (finish "length") as the echo is."""
    return echo.cut(regex_instance(regex), max_tokens)
