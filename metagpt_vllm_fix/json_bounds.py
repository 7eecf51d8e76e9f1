"""JSON schemas bounded so that a constrained answer closes inside its token budget, and the pattern that holds an
answer to one.

A server constrains an answer to a schema token by token, but the schema alone does not say when to stop: a small
model under near-greedy decoding repeats itself inside one string until ``max_tokens`` cuts it (measured: SmolLM2
on WritePRD's schema, unbounded, ran to 1500 tokens inside one string; CONTEXT.md §16), and MetaGPT then gets JSON
it cannot parse. So every string gets a ``maxLength`` and every array a ``maxItems``, sized from the budget. A JSON
schema still lets a model put any whitespace between two JSON tokens (vLLM 0.32 cannot switch that off per
request: measured, SmolLM2 filled half an answer with blank lines, a random model more), so the answer is
constrained by :func:`pattern` instead: a regular expression for exactly the compact JSON of the bounded schema --
keys in the schema's order, ``", "`` and ``": "`` between items, no other whitespace. Its longest match is then
known, and the bounds keep it within nine tenths of the budget at one token per character (an escape, or a
character that takes several tokens, counts as one: the rare answer cut anyway is asked for again by the fixes,
bounded for the room the server showed).

The schema is also made strict, because MetaGPT's readers are: every property of an object is required (MetaGPT's
ActionNode output classes give each field a default, so their own schema requires none, yet their validator
refuses a missing one) and no other property is allowed. ``$ref`` into ``$defs`` is inlined (pydantic writes
nested models that way), and keywords a server's grammar cannot compile are dropped (``uniqueItems``, which
pydantic writes for a set, makes vLLM 0.32 refuse the whole request; ``vllm_versions``). What a schema says beyond
these keywords is kept as it is.

Pure functions of their arguments: the fixes call them, the tests check them on their own.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from .vllm_versions import GENERATIONS

__all__ = ["Bounds", "Unsupported", "bound", "compact", "how_to_write", "pattern", "sized"]

LIST_ITEMS = 5  #: maxItems of an array whose schema says no smaller bound (MetaGPT asks for "up to 5" at most)
NESTED_ITEMS = 3  #: maxItems of an array inside an array, unless its example shows its length (pairs, mostly)
MIN_STRING, MAX_STRING = 16, 4000  #: a string's maxLength stays within these, whatever the budget
SPARE = 0.1  #: of the budget, left spare (characters that take more than one token)
_INTEGER = r"-?(?:0|[1-9][0-9]{0,17})"
_NUMBER = _INTEGER + r"(?:\.[0-9]{1,17})?(?:[eE][-+]?[0-9]{1,3})?"
_NUMBER_CHARS = 42  #: the longest match of _NUMBER
#: One character of a JSON string: any but a quote, a backslash or a control character. No escapes, as in xgrammar's
#: own bounded strings (vLLM 0.32 compiles ``[^"\\\r\n]{0,N}`` for a maxLength): a repeat of "a character or an escape"
#: made its constrained decoding 15 times slower (0.8 tokens/s, measured on SmolLM2). A model writes ' for ".
_CHAR = r'[^"\\\x00-\x1f]'
#: ... with a raw line break or tab allowed too, for a reader that takes them (``json.loads(strict=False)``): code
#: then keeps its lines, which JSON could otherwise only write with the escapes left out above.
_CHAR_LOOSE = r'[^"\\\x00-\x08\x0b-\x1f]'
_MAX_DEPTH = 16  #: a schema that refers to itself is cut here
_DROPPED = frozenset({"$defs", "definitions", "default", "title",
                      *(key for g in GENERATIONS for key in g.uncompilable_schema_keys)})


@dataclass(frozen=True)
class Bounds:
    """The bounds a schema was given, for the prompt, the log and the README."""

    budget: int  #: the tokens the answer must fit in
    string_chars: int  #: every string's maxLength (a smaller one the schema had is kept)
    strings: int  #: how many strings the answer holds at most (arrays counted full)
    fits: bool  #: False when even MIN_STRING per string does not fit the budget (the answer may then be cut)

    def describe(self) -> str:
        return f"each text at most {self.string_chars} characters"


def _resolve(schema: Any, root: Mapping[str, Any], depth: int) -> Any:
    """``schema`` with local ``$ref``s replaced by what they point to (pydantic's ``#/$defs/Name``)."""
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return _resolve({**(target if isinstance(target, Mapping) else {}), **rest}, root, depth + 1)
    return schema


def _kind(schema: Mapping[str, Any]) -> Optional[str]:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None and "properties" in schema:
        return "object"
    if kind is None and ("items" in schema or "prefixItems" in schema):
        return "array"
    return kind if isinstance(kind, str) else None


def _example_length(schema: Mapping[str, Any]) -> Optional[int]:
    """The longest inner list of an array's example (``default``), e.g. 2 for ``[["P0", "..."], ...]``."""
    example = schema.get("default")
    inner = [len(item) for item in example if isinstance(item, list)] if isinstance(example, list) else []
    return max(inner) if inner and max(inner) > 0 else None


def _strict(schema: Any, root: Mapping[str, Any], depth: int, nested: bool, inner_items: Optional[int]) -> Any:
    """The schema with every object strict and every array given its maxItems (strings are sized later)."""
    schema = _resolve(schema, root, depth)
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return schema
    out = {k: v for k, v in schema.items() if k not in _DROPPED}
    for branches in ("anyOf", "oneOf"):
        if isinstance(out.get(branches), list):
            out[branches] = [_strict(branch, root, depth + 1, nested, inner_items) for branch in out[branches]]
    kind = _kind(out)
    if kind == "object" and isinstance(out.get("properties"), Mapping):
        out["properties"] = {name: _strict(sub, root, depth + 1, False, None)
                             for name, sub in out["properties"].items()}
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    elif kind == "array" and isinstance(out.get("prefixItems"), list):  # a tuple: these items in order, the first
        out["prefixItems"] = [_strict(item, root, depth + 1, True, None) for item in out["prefixItems"]]  # minItems
        out["items"] = False
        out["maxItems"] = len(out["prefixItems"])
        out["minItems"] = min(max(out.get("minItems", 0), 0), out["maxItems"])
    elif kind == "array":
        limit = inner_items if nested and inner_items else (NESTED_ITEMS if nested else LIST_ITEMS)
        given = out.get("maxItems")
        out["maxItems"] = min(given, limit) if isinstance(given, int) and given >= 0 else limit
        if isinstance(out.get("minItems"), int) and out["minItems"] > out["maxItems"]:
            out["maxItems"] = out["minItems"]
        out["items"] = _strict(out.get("items", {}), root, depth + 1, True, _example_length(schema))
    return out


def _count(schema: Any, times: int = 1, depth: int = 0) -> tuple[int, int]:
    """(strings at most, characters besides those strings' contents at most) of the compact JSON :func:`pattern`
    allows for a strict, bounded schema."""
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return 0, 0
    if isinstance(schema.get("enum"), list):
        return 0, times * max((len(_dumps(v)) for v in schema["enum"]), default=4)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list) and branches:
        counted = [_count(branch, times, depth + 1) for branch in branches]
        return max(s for s, _ in counted), max(c for _, c in counted)
    kind = _kind(schema)
    if kind == "object" and isinstance(schema.get("properties"), Mapping):
        strings, chars = 0, 2 * times
        for name, sub in schema["properties"].items():
            s, c = _count(sub, times, depth + 1)
            strings, chars = strings + s, chars + c + times * (len(_dumps(str(name))) + 4)  # "key": ...,
        return strings, chars
    if kind == "array" and isinstance(schema.get("prefixItems"), list):
        counted = [_count(item, times, depth + 1) for item in schema["prefixItems"]]
        return sum(s for s, _ in counted), sum(c for _, c in counted) + times * (2 + 2 * len(counted))
    if kind == "array":
        items = schema.get("maxItems", LIST_ITEMS)
        s, c = _count(schema.get("items", {}), times * items, depth + 1)
        return s, c + times * (2 + 2 * items)
    if kind == "string":
        return times, times * 2
    if kind == "boolean":
        return 0, times * 5
    if kind == "null":
        return 0, times * 4
    return 0, times * _NUMBER_CHARS


def _size_strings(schema: Any, chars: int, depth: int = 0) -> Any:
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return schema
    out = dict(schema)
    kind = _kind(out)
    if kind == "string" and "enum" not in out:
        given = out.get("maxLength")
        out["maxLength"] = min(given, chars) if isinstance(given, int) and given >= 0 else chars
    if isinstance(out.get("properties"), Mapping):
        out["properties"] = {name: _size_strings(sub, chars, depth + 1) for name, sub in out["properties"].items()}
    if "items" in out:
        out["items"] = _size_strings(out["items"], chars, depth + 1)
    if isinstance(out.get("prefixItems"), list):
        out["prefixItems"] = [_size_strings(item, chars, depth + 1) for item in out["prefixItems"]]
    for branches in ("anyOf", "oneOf"):
        if isinstance(out.get(branches), list):
            out[branches] = [_size_strings(branch, chars, depth + 1) for branch in out[branches]]
    return out


def sized(strings: int, structure_chars: int, budget: int) -> tuple[int, bool]:
    """(each string's maxLength, whether it fits) for ``strings`` strings beside ``structure_chars`` in ``budget``."""
    room = int(budget * (1 - SPARE)) - structure_chars
    if strings == 0:
        return MAX_STRING, room >= 0
    per = room // strings
    return max(MIN_STRING, min(MAX_STRING, per)), per >= MIN_STRING


def bound(schema: Mapping[str, Any], budget: int) -> tuple[dict[str, Any], Bounds]:
    """``schema`` made strict and bounded so that an answer to it fits ``budget`` tokens (see the module's doc)."""
    strict = _strict(copy.deepcopy(dict(schema)), schema, 0, False, None)
    strings, structure = _count(strict)
    chars, fits = sized(strings, structure, max(budget, 1))
    return _size_strings(strict, chars), Bounds(budget=budget, string_chars=chars, strings=strings, fits=fits)


class Unsupported(ValueError):
    """A schema :func:`pattern` cannot hold an answer to (a free-form object, say): constrain with the schema."""


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _literal(text: str) -> str:
    """``text`` matched literally; only the metacharacters are escaped (``re.escape`` escapes spaces too, an escape
    not every backend's regex dialect knows)."""
    return "".join("\\" + ch if ch in "\\.^$*+?{}[]|()" else ch for ch in text)


def pattern(schema: Any, depth: int = 0, loose: bool = False) -> str:
    """A regular expression for exactly the compact JSON an answer to the strict, bounded ``schema`` may be
    (``loose``: strings may hold raw line breaks and tabs, which ``json.loads(strict=False)`` reads).

    Only what every structured-output backend of vLLM compiles (outlines, xgrammar, guidance): literals,
    ``(?:...)``, ``|``, character classes and ``{m,n}``."""
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        raise Unsupported(f"not a schema: {schema!r}"[:80])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return "(?:" + "|".join(_literal(_dumps(v)) for v in schema["enum"]) + ")"
    if "const" in schema:
        return _literal(_dumps(schema["const"]))
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list) and branches:
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
        return "(?:" + "|".join(pattern({**rest, **branch}, depth + 1, loose) for branch in branches) + ")"
    kinds = schema.get("type")
    if isinstance(kinds, list) and len(kinds) > 1:
        return "(?:" + "|".join(pattern({**schema, "type": kind}, depth + 1, loose) for kind in kinds) + ")"
    kind = _kind(schema)
    if kind == "string":
        most = schema.get("maxLength", MAX_STRING)
        least = min(schema.get("minLength", 0), most)
        return f'"{_CHAR_LOOSE if loose else _CHAR}{{{least},{most}}}"'
    if kind == "integer":
        return _INTEGER
    if kind == "number":
        return _NUMBER
    if kind == "boolean":
        return "(?:true|false)"
    if kind == "null":
        return "null"
    if kind == "array" and isinstance(schema.get("prefixItems"), list):  # the optional tail nested: one way to match
        members = [pattern(item, depth + 1, loose) for item in schema["prefixItems"]]
        least = schema.get("minItems", len(members))
        tail = ""
        for index in reversed(range(least, len(members))):
            tail = f"(?:{', ' if index else ''}{members[index]}{tail})?"
        return r"\[" + ", ".join(members[:least]) + tail + r"\]"
    if kind == "array":
        most, least = schema.get("maxItems", LIST_ITEMS), schema.get("minItems", 0)
        if most == 0:
            return r"\[\]"
        item = pattern(schema.get("items", {}), depth + 1, loose)
        items = f"{item}(?:, {item}){{{max(least - 1, 0)},{most - 1}}}"
        return r"\[" + (items if least >= 1 else f"(?:{items})?") + r"\]"
    if kind == "object" and isinstance(schema.get("properties"), Mapping) and schema["properties"]:
        members = [_literal(_dumps(str(name))) + ": " + pattern(sub, depth + 1, loose)
                   for name, sub in schema["properties"].items()]
        return r"\{" + ", ".join(members) + r"\}"
    raise Unsupported(f"no pattern for a {kind or 'free-form'} value")


def how_to_write(loose: bool) -> str:
    """What :func:`pattern` allows inside a string, in words for the model: told, a model writes ' for a quote instead
    of ending the string where its text needed one (``print("`` ended a code step's code, measured on SmolLM2)."""
    breaks = " Line breaks inside a string are written as they are." if loose else ""
    return f"Inside a JSON string, write ' where you would write a double quote, and no backslash.{breaks}"


def compact(schema: Any) -> Any:
    """The schema as the model is shown it: without descriptions and examples (MetaGPT's prompt has its own)."""
    if isinstance(schema, Mapping):
        return {k: ({name: compact(sub) for name, sub in v.items()}  # property names are names, whatever they are
                    if k == "properties" and isinstance(v, Mapping) else compact(v))
                for k, v in schema.items() if k not in ("description", "default", "title", "examples")}
    if isinstance(schema, list):
        return [compact(v) for v in schema]
    return schema
