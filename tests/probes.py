"""One probe set for any vLLM-compatible server: requests, and what of each answer must match between servers.

The conformance tests send it to a real vLLM and to the emulator and compare the ``fingerprint`` of each
answer: status, content type, error-body shape, error type/param, the error message with its numbers blanked
(token counts differ between tokenizers), and for streams where the usage arrives and what the chunks carry.

Each probe is meant for a server of one template kind (the names the project uses: ``none`` = a model without a
chat template, the seed's; ``mistral-instruct`` = a template that refuses a system message; ``llama-2-chat`` =
Llama-2-chat's own template), served with the context in CONTEXTS. ``python tests/probes.py KIND=URL ...`` prints
the fingerprints of running servers as JSON.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import httpx

KEY = "token-abc123"
MODEL = "meta-llama/Llama-2-7b-hf"
CONTEXT = 512  # the template-less server's --max-model-len, and the emulator's max_model_len for those probes
CONTEXTS = {"none": CONTEXT, "mistral-instruct": 4096, "llama-2-chat": 4096}  # template kind -> --max-model-len
KINDS = tuple(CONTEXTS)
LONG_PROMPT = "hello " * 600  # more than 512 tokens for any tokenizer, and 600 "words" for the emulator


@dataclass(frozen=True)
class Probe:
    name: str
    method: str
    path: str
    auth: Optional[str] = f"Bearer {KEY}"  #: the Authorization header, None for none
    body: Any = None  #: JSON body (a dict), or raw bytes
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = "none"  #: the template kind of the server this probe is meant for
    schema: Optional[dict[str, Any]] = None  #: whether the answer validates against this schema is compared
    finish: bool = False  #: the answer's finish_reason is compared (a constrained answer's; a random model's
    #: unconstrained text ends where it likes)


def chat(*, prompt: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}


# What MetaGPT 0.7 sends: a system message first, then the user's (BaseLLM._system_msgs + _user_msg), with n and
# temperature from its _cons_kwargs (which sends no stop).
METAGPT_MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Say hello."}]
METAGPT_KWARGS = {"n": 1, "temperature": 0.3}


def metagpt_chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": METAGPT_MESSAGES, **METAGPT_KWARGS, **extra}


def completion(*, prompt: str = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, **extra}


# A Llama-2 layout of MetaGPT's messages, as a fallback would send it to /v1/completions (the server adds <s>).
LAID_OUT = "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nSay hello. [/INST]"
TOOLS = [{"type": "function", "function": {"name": "noop", "description": "Does nothing.",
                                           "parameters": {"type": "object", "properties": {}}}}]
NAMED = {"type": "function", "function": {"name": "noop"}}
# Small schemas with bounded values (an enum, a boolean), so that a random-weight model, which pads JSON with
# whitespace, finishes well within max_tokens (CONTEXT.md §14); the seed makes its sampling repeatable.
SCHEMA = {"type": "object", "properties": {"language": {"type": "string", "enum": ["python", "shell"]},
                                           "ok": {"type": "boolean"}},
          "required": ["language", "ok"], "additionalProperties": False}
OTHER_SCHEMA = {"type": "object", "properties": {"task": {"type": "string", "enum": ["eda", "other"]}},
                "required": ["task"], "additionalProperties": False}
UNIQUE_ITEMS = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "enum": ["a"]},
                                                          "uniqueItems": True}}}  # vLLM 0.32 cannot compile it
ROOM = {"max_tokens": 1500, "seed": 7}
# What the formats and tools fixes hold an answer to: the compact JSON of a bounded, strict schema, as a regular
# expression (json_bounds.pattern): a string of at most 24 characters, a list of at most 3, a boolean.
BOUNDED = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 24},
                                           "tags": {"type": "array", "items": {"type": "string", "maxLength": 24},
                                                    "maxItems": 3},
                                           "ok": {"type": "boolean"}},
           "required": ["title", "tags", "ok"], "additionalProperties": False}
_TEXT = r'"[^"\\\x00-\x1f]{0,24}"'
BOUNDED_REGEX = rf'\{{"title": {_TEXT}, "tags": \[(?:{_TEXT}(?:, {_TEXT}){{0,2}})?\], "ok": (?:true|false)\}}'


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's response_format asking for ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


PROBES: list[Probe] = [
    Probe("health", "GET", "/health", auth=None),
    Probe("version", "GET", "/version", auth=None),
    Probe("models, no key", "GET", "/v1/models", auth=None),
    Probe("models, Bearer key", "GET", "/v1/models"),
    Probe("models, bearer key (lower case)", "GET", "/v1/models", auth=f"bearer {KEY}"),
    Probe("models, BEARER key (upper case)", "GET", "/v1/models", auth=f"BEARER {KEY}"),
    Probe("models, Bearer + two spaces", "GET", "/v1/models", auth=f"Bearer  {KEY}"),
    Probe("models, Bearer sk-xxx (MetaGPT 0.7's key)", "GET", "/v1/models", auth="Bearer sk-xxx"),
    Probe("models, Basic key", "GET", "/v1/models", auth=f"Basic {KEY}"),
    Probe("models, key without scheme", "GET", "/v1/models", auth=KEY),
    Probe("chat, no key", "POST", "/v1/chat/completions", auth=None, body=chat()),
    Probe("chat, max_tokens 16", "POST", "/v1/chat/completions", body=chat(max_tokens=16)),
    Probe("chat, max_tokens > context", "POST", "/v1/chat/completions", body=chat(max_tokens=CONTEXT + 88)),
    Probe("chat, max_tokens == context", "POST", "/v1/chat/completions", body=chat(max_tokens=CONTEXT)),
    Probe("chat, prompt + max_tokens > context", "POST", "/v1/chat/completions",
          body=chat(prompt="Say hello to everyone here. " * 5, max_tokens=CONTEXT - 12)),
    Probe("chat, max_tokens 4096 (MetaGPT's default)", "POST", "/v1/chat/completions", body=chat(max_tokens=4096)),
    Probe("chat, no max_tokens", "POST", "/v1/chat/completions", body=chat()),
    Probe("chat, max_tokens 0", "POST", "/v1/chat/completions", body=chat(max_tokens=0)),
    Probe("chat, prompt alone > context, max_tokens 16", "POST", "/v1/chat/completions",
          body=chat(prompt=LONG_PROMPT, max_tokens=16)),
    Probe("chat, prompt alone > context, no max_tokens", "POST", "/v1/chat/completions",
          body=chat(prompt=LONG_PROMPT)),
    Probe("chat, unknown model", "POST", "/v1/chat/completions", body={**chat(), "model": "llama2"}),
    Probe("chat, unknown model and max_tokens 4096", "POST", "/v1/chat/completions",
          body={**chat(max_tokens=4096), "model": "llama2"}),
    Probe("chat, no messages", "POST", "/v1/chat/completions", body={"model": MODEL}),
    Probe("chat, invalid JSON", "POST", "/v1/chat/completions", body=b"{not json",
          headers={"Content-Type": "application/json"}),
    Probe("chat, stream_options without stream", "POST", "/v1/chat/completions",
          body=chat(max_tokens=8, stream_options={"include_usage": True})),
    Probe("chat, stream", "POST", "/v1/chat/completions", body=chat(max_tokens=8, stream=True)),
    Probe("chat, stream + include_usage", "POST", "/v1/chat/completions",
          body=chat(max_tokens=8, stream=True, stream_options={"include_usage": True})),
    Probe("chat, stream, max_tokens > context", "POST", "/v1/chat/completions",
          body=chat(max_tokens=CONTEXT + 88, stream=True)),
    Probe("chat, stream, prompt alone > context", "POST", "/v1/chat/completions",
          body=chat(prompt=LONG_PROMPT, stream=True)),
    Probe("chat, MetaGPT's messages (system first)", "POST", "/v1/chat/completions", body=metagpt_chat()),
    Probe("chat, stream, MetaGPT's messages (system first)", "POST", "/v1/chat/completions",
          body=metagpt_chat(stream=True)),
    Probe("chat, stream + include_usage, MetaGPT's messages", "POST", "/v1/chat/completions",
          body=metagpt_chat(stream=True, stream_options={"include_usage": True})),
    Probe("chat, request-level chat_template", "POST", "/v1/chat/completions",
          body=chat(max_tokens=8, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")),
    Probe("chat, stream, request-level chat_template", "POST", "/v1/chat/completions",
          body=chat(max_tokens=8, stream=True, chat_template="{{ messages[0]['content'] }}")),
    Probe("chat, tools, tool_choice left out (MetaGPT's aask_code)", "POST", "/v1/chat/completions",
          body=metagpt_chat(tools=TOOLS)),
    Probe("chat, tools, tool_choice none", "POST", "/v1/chat/completions",
          body=metagpt_chat(tools=TOOLS, tool_choice="none")),
    Probe("chat, tools, a named tool_choice", "POST", "/v1/chat/completions",
          body=metagpt_chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "noop"}})),
    Probe("chat, assistant message first", "POST", "/v1/chat/completions",
          body={"model": MODEL, "messages": [{"role": "assistant", "content": "Hi."}]}),
    Probe("chat, structured_outputs (no chat template)", "POST", "/v1/chat/completions",
          body=metagpt_chat(structured_outputs={"json": SCHEMA}, max_tokens=8), schema=SCHEMA),
    Probe("chat, structured_outputs beside a named tool_choice", "POST", "/v1/chat/completions",
          body=metagpt_chat(structured_outputs={"json": SCHEMA}, tools=TOOLS, tool_choice=NAMED)),
    Probe("chat, response_format json_schema without its json_schema", "POST", "/v1/chat/completions",
          body=metagpt_chat(response_format={"type": "json_schema"})),
    Probe("completions, structured_outputs, a schema with uniqueItems", "POST", "/v1/completions",
          body=completion(max_tokens=8, structured_outputs={"json": UNIQUE_ITEMS})),
    Probe("completions, stream, a schema with uniqueItems", "POST", "/v1/completions",
          body=completion(max_tokens=8, stream=True, structured_outputs={"json": UNIQUE_ITEMS})),
    Probe("completions, max_tokens 8", "POST", "/v1/completions", body=completion(max_tokens=8)),
    Probe("completions, max_tokens > context", "POST", "/v1/completions", body=completion(max_tokens=CONTEXT + 88)),
    Probe("completions, max_tokens == context", "POST", "/v1/completions", body=completion(max_tokens=CONTEXT)),
    Probe("completions, max_tokens 4096 (MetaGPT's default)", "POST", "/v1/completions",
          body=completion(max_tokens=4096)),
    Probe("completions, prompt + max_tokens > context", "POST", "/v1/completions",
          body=completion(prompt="Say hello to everyone here. " * 5, max_tokens=CONTEXT - 12)),
    Probe("completions, no max_tokens", "POST", "/v1/completions", body=completion()),
    Probe("completions, Llama-2 layout of MetaGPT's messages", "POST", "/v1/completions",
          body=completion(prompt=LAID_OUT, **METAGPT_KWARGS)),
    Probe("completions, prompt alone > context", "POST", "/v1/completions",
          body=completion(prompt=LONG_PROMPT, max_tokens=16)),
    Probe("completions, prompt alone > context, no max_tokens", "POST", "/v1/completions",
          body=completion(prompt=LONG_PROMPT)),
    Probe("completions, stream_options without stream", "POST", "/v1/completions",
          body=completion(max_tokens=8, stream_options={"include_usage": True})),
    Probe("completions, stream", "POST", "/v1/completions", body=completion(max_tokens=8, stream=True)),
    Probe("completions, stream + include_usage", "POST", "/v1/completions",
          body=completion(prompt=LAID_OUT, max_tokens=8, stream=True, stream_options={"include_usage": True},
                          **METAGPT_KWARGS)),
    Probe("completions, stream, max_tokens > context", "POST", "/v1/completions",
          body=completion(max_tokens=CONTEXT + 88, stream=True)),
    Probe("completions, stream, prompt alone > context", "POST", "/v1/completions",
          body=completion(prompt=LONG_PROMPT, stream=True)),
    Probe("completions, no key", "POST", "/v1/completions", auth=None, body=completion(max_tokens=8)),
    Probe("completions, unknown model", "POST", "/v1/completions",
          body={**completion(max_tokens=8), "model": "llama2"}),
    Probe("completions, no prompt", "POST", "/v1/completions", body={"model": MODEL, "max_tokens": 8}),
    Probe("unknown /v1 path, no key", "GET", "/v1/nonexistent", auth=None),
    Probe("unknown /v1 path, key", "GET", "/v1/nonexistent"),
    Probe("wrong method on chat", "GET", "/v1/chat/completions"),
    Probe("OPTIONS models, no key", "OPTIONS", "/v1/models", auth=None),
    # A template that refuses the system role (Mistral-7B-Instruct v0.1/v0.2), and what a fix would send instead.
    Probe("mistral-instruct: chat, MetaGPT's messages (system first)", "POST", "/v1/chat/completions",
          body=metagpt_chat(), kind="mistral-instruct"),
    Probe("mistral-instruct: chat, stream, MetaGPT's messages", "POST", "/v1/chat/completions",
          body=metagpt_chat(stream=True, stream_options={"include_usage": True}), kind="mistral-instruct"),
    Probe("mistral-instruct: chat, MetaGPT's messages, max_tokens 4096", "POST", "/v1/chat/completions",
          body=metagpt_chat(max_tokens=4096), kind="mistral-instruct"),
    Probe("mistral-instruct: chat, system folded into the user message", "POST", "/v1/chat/completions",
          body={**metagpt_chat(max_tokens=8), "messages": [
              {"role": "user", "content": "You are a helpful assistant.\n\nSay hello."}]}, kind="mistral-instruct"),
    Probe("mistral-instruct: chat, stream, system folded into the user message", "POST", "/v1/chat/completions",
          body={**metagpt_chat(max_tokens=8, stream=True, stream_options={"include_usage": True}), "messages": [
              {"role": "user", "content": "You are a helpful assistant.\n\nSay hello."}]}, kind="mistral-instruct"),
    Probe("mistral-instruct: chat, user, user", "POST", "/v1/chat/completions",
          body={**chat(max_tokens=8), "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
          kind="mistral-instruct"),
    Probe("mistral-instruct: chat, request-level chat_template", "POST", "/v1/chat/completions",
          body=metagpt_chat(max_tokens=8, chat_template="{{ messages[0]['content'] }}"), kind="mistral-instruct"),
    Probe("mistral-instruct: chat, tools, a named tool_choice", "POST", "/v1/chat/completions",
          body=metagpt_chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "noop"}}),
          kind="mistral-instruct"),
    Probe("mistral-instruct: chat, no key", "POST", "/v1/chat/completions", auth=None, body=metagpt_chat(),
          kind="mistral-instruct"),
    # Llama-2-chat's own template: MetaGPT's messages answer as they are.
    Probe("llama-2-chat: chat, MetaGPT's messages (system first)", "POST", "/v1/chat/completions",
          body=metagpt_chat(max_tokens=8), kind="llama-2-chat"),
    Probe("llama-2-chat: chat, MetaGPT's messages, max_tokens > context", "POST", "/v1/chat/completions",
          body=metagpt_chat(max_tokens=4096 + 88), kind="llama-2-chat"),
    Probe("llama-2-chat: chat, stream + include_usage, MetaGPT's messages", "POST", "/v1/chat/completions",
          body=metagpt_chat(max_tokens=8, stream=True, stream_options={"include_usage": True}), kind="llama-2-chat"),
    Probe("llama-2-chat: chat, assistant message first", "POST", "/v1/chat/completions",
          body={"model": MODEL, "messages": [{"role": "assistant", "content": "Hi."}]}, kind="llama-2-chat"),
    Probe("llama-2-chat: completions, max_tokens 8", "POST", "/v1/completions", body=completion(max_tokens=8),
          kind="llama-2-chat"),
    # Structured outputs (vllm-tools-facts.md §1): what constrains an answer on 0.32, and what it cannot compile.
    Probe("llama-2-chat: chat, structured_outputs", "POST", "/v1/chat/completions",
          body=metagpt_chat(structured_outputs={"json": SCHEMA}, **ROOM), kind="llama-2-chat", schema=SCHEMA,
          finish=True),
    Probe("llama-2-chat: chat, stream, structured_outputs", "POST", "/v1/chat/completions",
          body=metagpt_chat(structured_outputs={"json": SCHEMA}, stream=True, **ROOM), kind="llama-2-chat",
          schema=SCHEMA, finish=True),
    Probe("llama-2-chat: chat, response_format json_schema", "POST", "/v1/chat/completions",
          body=metagpt_chat(response_format=json_schema(SCHEMA), **ROOM), kind="llama-2-chat", schema=SCHEMA,
          finish=True),
    Probe("llama-2-chat: chat, response_format json_schema over structured_outputs", "POST", "/v1/chat/completions",
          body=metagpt_chat(structured_outputs={"json": SCHEMA}, response_format=json_schema(OTHER_SCHEMA), **ROOM),
          kind="llama-2-chat", schema=OTHER_SCHEMA, finish=True),
    Probe("llama-2-chat: chat, guided_json (removed in 0.12: ignored)", "POST", "/v1/chat/completions",
          body=metagpt_chat(guided_json=SCHEMA, max_tokens=16, seed=7), kind="llama-2-chat", schema=SCHEMA),
    Probe("llama-2-chat: chat, structured_outputs, max_tokens 3", "POST", "/v1/chat/completions",
          body=metagpt_chat(structured_outputs={"json": SCHEMA}, max_tokens=3, seed=7), kind="llama-2-chat",
          schema=SCHEMA, finish=True),
    Probe("llama-2-chat: chat, structured_outputs, a schema with uniqueItems", "POST", "/v1/chat/completions",
          body=metagpt_chat(structured_outputs={"json": UNIQUE_ITEMS}, max_tokens=8), kind="llama-2-chat"),
    Probe("llama-2-chat: chat, stream, a schema with uniqueItems", "POST", "/v1/chat/completions",
          body=metagpt_chat(structured_outputs={"json": UNIQUE_ITEMS}, max_tokens=8, stream=True),
          kind="llama-2-chat"),
    Probe("llama-2-chat: completions, structured_outputs", "POST", "/v1/completions",
          body=completion(structured_outputs={"json": SCHEMA}, **ROOM), kind="llama-2-chat", schema=SCHEMA,
          finish=True),
    Probe("llama-2-chat: completions, response_format json_schema", "POST", "/v1/completions",
          body=completion(response_format=json_schema(SCHEMA), **ROOM), kind="llama-2-chat", schema=SCHEMA,
          finish=True),
    Probe("llama-2-chat: completions, guided_json (removed in 0.12: ignored)", "POST", "/v1/completions",
          body=completion(guided_json=SCHEMA, max_tokens=16, seed=7), kind="llama-2-chat", schema=SCHEMA),
    # What the formats and tools fixes send: a pattern for compact JSON, in structured_outputs (0.11+) or in every
    # field at once where /version does not say the release (guided_regex is ignored by 0.12+, with a warning).
    Probe("llama-2-chat: chat, structured_outputs regex", "POST", "/v1/chat/completions",
          body=metagpt_chat(structured_outputs={"regex": BOUNDED_REGEX}, **ROOM), kind="llama-2-chat",
          schema=BOUNDED, finish=True),
    Probe("llama-2-chat: chat, stream, structured_outputs regex", "POST", "/v1/chat/completions",
          body=metagpt_chat(structured_outputs={"regex": BOUNDED_REGEX}, stream=True, **ROOM), kind="llama-2-chat",
          schema=BOUNDED, finish=True),
    Probe("llama-2-chat: chat, guided_regex and structured_outputs regex (every field)", "POST",
          "/v1/chat/completions", body=metagpt_chat(guided_regex=BOUNDED_REGEX,
                                                    structured_outputs={"regex": BOUNDED_REGEX}, **ROOM),
          kind="llama-2-chat", schema=BOUNDED, finish=True),
    Probe("llama-2-chat: chat, guided_regex (removed in 0.12: ignored)", "POST", "/v1/chat/completions",
          body=metagpt_chat(guided_regex=BOUNDED_REGEX, max_tokens=16, seed=7), kind="llama-2-chat", schema=BOUNDED),
    Probe("completions, structured_outputs regex (no chat template)", "POST", "/v1/completions",
          body=completion(prompt=LAID_OUT, structured_outputs={"regex": BOUNDED_REGEX}, max_tokens=400, seed=7),
          schema=BOUNDED, finish=True),
    Probe("completions, stream, structured_outputs regex (no chat template)", "POST", "/v1/completions",
          body=completion(prompt=LAID_OUT, structured_outputs={"regex": BOUNDED_REGEX}, max_tokens=400, seed=7,
                          stream=True), schema=BOUNDED, finish=True),
]


def _shape(body: Any) -> str:
    """The structure of a JSON body: keys (nested one level), and the type of a lone value."""
    if isinstance(body, dict):
        parts = []
        for key in sorted(body):
            value = body[key]
            parts.append(f"{key}:{{{','.join(sorted(value))}}}" if isinstance(value, dict)
                         else f"{key}:{type(value).__name__}" if len(body) == 1 else key)
        return "{" + ",".join(parts) + "}"
    return type(body).__name__


def _blank_numbers(text: str) -> str:
    return re.sub(r"\d+", "#", text)


def validates(text: Optional[str], schema: dict[str, Any]) -> bool:
    """Whether an answer's text is JSON valid against ``schema`` (by jsonschema, not by hand)."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(text or ""), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _stream_text(chunks: list[dict[str, Any]]) -> str:
    """The text a stream's chunks carry (``delta.content`` or ``text``), joined."""
    return "".join(str(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
                   for chunk in chunks for choice in chunk.get("choices") or [])


def _stream_facts(text: str) -> dict[str, Any]:
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    errors = [c["error"] for c in chunks if isinstance(c.get("error"), dict)]
    return {
        "ends_with_done": bool(events) and events[-1] == "[DONE]",
        "usage_chunk_without_choices": any(c.get("choices") == [] and c.get("usage") for c in chunks),
        "usage_on_a_chunk_with_choices": any(c.get("choices") and c.get("usage") for c in chunks),
        "finish_reason_sent": any((c.get("choices") or [{}])[0].get("finish_reason") for c in chunks),
        "objects": sorted({str(c.get("object")) for c in chunks}),
        "text_in": sorted({key for c in chunks for choice in c.get("choices") or []
                           for key in ("text", "delta") if key in choice}),
        **({"errors": [[e.get("type"), e.get("param"), _blank_numbers(str(e.get("message")))] for e in errors]}
           if errors else {}),  # a stream refused after it began: one error event, then [DONE]
    }


def _finish(chunks: list[dict[str, Any]]) -> Optional[str]:
    return next((choice.get("finish_reason") for c in chunks for choice in c.get("choices") or []
                 if choice.get("finish_reason")), None)


def _answer_facts(text: Optional[str], finish: Optional[str], probe: Optional[Probe]) -> dict[str, Any]:
    """For a probe with a schema: whether the answer validates (and its finish_reason, where it is compared)."""
    if probe is None or probe.schema is None:
        return {}
    return {"validates": validates(text, probe.schema), **({"finish_reason": finish} if probe.finish else {})}


def fingerprint(response: httpx.Response, probe: Optional[Probe] = None) -> dict[str, Any]:
    """What must agree between two servers for one probe."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    facts: dict[str, Any] = {"status": response.status_code, "content_type": content_type}
    if content_type == "text/event-stream":
        facts["stream"] = _stream_facts(response.text)
        if not facts["stream"].get("errors"):
            chunks = [json.loads(line[len("data: "):]) for line in response.text.splitlines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
            facts.update(_answer_facts(_stream_text(chunks), _finish(chunks), probe))
        return facts
    if content_type != "application/json":
        return facts
    body = response.json()
    facts["shape"] = _shape(body) if response.status_code >= 400 else None
    error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else \
        body if isinstance(body, dict) and body.get("object") == "error" else None
    if error is not None:
        facts.update(type=error.get("type"), param=error.get("param"), code=error.get("code"),
                     message=_blank_numbers(str(error.get("message")))
                     if error.get("type") != "Bad Request" else "(validation details)")
    elif response.status_code == 200 and isinstance(body, dict) and "choices" in body:
        facts["usage"] = sorted(body.get("usage") or {})
        facts["object"] = body.get("object")
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message")
        if isinstance(message, dict):  # 0.24+ leave tool_calls out of an answer without a call (facts §3)
            facts["tool_calls"] = message.get("tool_calls", "absent")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        facts.update(_answer_facts(text, choice.get("finish_reason"), probe))
    return facts


def send(url: str, probe: Probe, timeout: float = 120) -> httpx.Response:
    """Send one probe to the server at ``url`` (no /v1), with its Authorization header and body as given."""
    headers = dict(probe.headers)
    if probe.auth is not None:
        headers["Authorization"] = probe.auth
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(probe.body, bytes):
        kwargs["content"] = probe.body
    elif probe.body is not None:
        kwargs["json"] = probe.body
    with httpx.Client(base_url=url, timeout=timeout) as client:
        response = client.request(probe.method, probe.path, **kwargs)
        response.read()
        return response


def observe(url: str, probe: Probe, timeout: float = 300) -> dict[str, Any]:
    """Send one probe to the server at ``url`` (no /v1) and fingerprint the answer."""
    return fingerprint(send(url, probe, timeout), probe)


def raw(url: str, probe: Probe, timeout: float = 120) -> dict[str, Any]:
    """The whole answer to one probe, for the ``observed-*.json`` survey a person reads (streams: the first and
    last events only)."""
    response = send(url, probe, timeout)
    record: dict[str, Any] = {
        "name": probe.name, "kind": probe.kind,
        "request": {"method": probe.method, "path": probe.path, "authorization": probe.auth,
                    "body": probe.body.decode() if isinstance(probe.body, bytes) else probe.body},
        "status": response.status_code, "content_type": response.headers.get("content-type"),
    }
    if record["content_type"] and record["content_type"].startswith("text/event-stream"):
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        record["events"] = len(events)
        record["first_events"], record["last_events"] = events[:2], events[-2:]
    else:
        try:
            record["body"] = response.json()
        except ValueError:
            record["body_text"] = response.text[:2000]
    return record


def observe_all(url: str, kind: str = "none") -> dict[str, dict[str, Any]]:
    """Fingerprints of the probes meant for a server of template ``kind``, sent to the server at ``url``."""
    return {probe.name: observe(url, probe) for probe in PROBES if probe.kind == kind}


def differences(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per probe, the facts on which ``a`` and ``b`` disagree: {probe: {fact: (a's, b's)}}."""
    found = {}
    for name in a:
        keys = set(a[name]) | set(b.get(name, {}))
        diff = {k: (a[name].get(k), b.get(name, {}).get(k)) for k in sorted(keys)
                if a[name].get(k) != b.get(name, {}).get(k)}
        if diff:
            found[name] = diff
    return found


def _validity(facts: dict[str, Any]) -> str:
    if "validates" not in facts:
        return ""
    finish = f", finish {facts['finish_reason']}" if "finish_reason" in facts else ""
    return (", valid against the schema" if facts["validates"] else ", not valid against the schema") + finish


def _cell(facts: dict[str, Any]) -> str:
    if "stream" in facts:
        if facts["stream"].get("errors"):
            _, _, message = facts["stream"]["errors"][0]
            return f"{facts['status']} stream of one error: \"{message[:34].rstrip()}…\""
        where = ("last chunk, no choices" if facts["stream"]["usage_chunk_without_choices"] else
                 "finish chunk" if facts["stream"]["usage_on_a_chunk_with_choices"] else "none")
        return f"{facts['status']} stream, usage: {where}{_validity(facts)}"
    shape = facts.get("shape")
    kind = {"{error:str}": " Unauthorized", "{detail:str}": " detail"}.get(shape or "", "")
    if facts.get("type"):
        nested = "nested" if shape and shape.startswith("{error:{") else "flat"
        kind = f" {nested} {facts['type']}, param {facts.get('param')}"
        message = str(facts.get("message") or "")
        if facts["type"] == "BadRequestError" and message:
            kind += f": \"{message[:34].rstrip()}…\""
    return f"{facts['status']}{kind}{_validity(facts)}"


def table(real: dict[str, dict[str, Any]], emulated: dict[str, dict[str, Any]],
          old: dict[str, dict[str, Any]]) -> str:
    """Markdown: the real server's answer, whether the emulator's equals it, and the emulator as vLLM 0.3.3."""
    rows = ["| probe | real vLLM 0.32.0 | `serve --vllm-version 0.32.0` | `serve --vllm-version 0.3.3` |",
            "|---|---|---|---|"]
    for name in real:
        same = "same" if real[name] == emulated.get(name) else f"differs: {_cell(emulated.get(name, {}))}"
        rows.append(f"| {name} | {_cell(real[name])} | {same} | {_cell(old.get(name, {}))} |")
    return "\n".join(rows)


def emulated(version: str, kinds: tuple[str, ...] = KINDS) -> dict[str, dict[str, Any]]:
    """The emulator's fingerprints as vLLM ``version``: one emulated server per template kind, each with the
    context its probes are meant for."""
    from metagpt_vllm_fix.server import VLLMServer

    found: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        with VLLMServer(api_keys=[KEY], max_model_len=CONTEXTS[kind], vllm_version=version,
                        chat_template=kind) as server:
            found.update(observe_all(server.url, kind))
    return found


if __name__ == "__main__":
    # python tests/probes.py KIND=URL ...   fingerprints of running servers (one per template kind), as JSON
    # python tests/probes.py --table FILE   markdown table: recorded real fingerprints vs the emulator's
    if sys.argv[1] == "--table":
        recorded = json.loads(open(sys.argv[2]).read())
        print(table(recorded, emulated("0.32.0"), emulated("0.3.3")))
    else:
        observed: dict[str, dict[str, Any]] = {}
        for arg in sys.argv[1:]:
            kind, _, url = arg.partition("=")
            observed.update(observe_all(url, kind))
        print(json.dumps(observed, indent=1))
