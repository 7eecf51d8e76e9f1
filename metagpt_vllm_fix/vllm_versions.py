"""What each vLLM generation does, in one table: the emulator plays it, the doctor judges by it, the fixes read it.

Facts come from vLLM's released wheels (0.3.3 ... 0.32.0) and from measurements of a real vLLM 0.32.0 (see
docs/proof.md). A release is mapped to the newest generation whose ``since`` it reaches; releases between
generations we have not read behave like the generation before them, which is the best guess we can state.

Error messages are kept as templates with named fields (``{context}``, ``{prompt}``, ``{completion}``,
``{total}``): the emulator formats them, and :func:`classify_refusal` turns the very same templates into
patterns to recognise a refusal from any generation. One source, so the two cannot drift apart.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from re import Pattern
from typing import Any, Optional

__all__ = [
    "CURRENT", "DEFAULT_VERSION", "GENERATIONS", "NO_TEMPLATE_MESSAGES", "SYSTEM_ROLE_MESSAGES", "TOOLS_REFUSALS",
    "REGEX_FIELDS", "Generation", "Refusal", "classify_refusal", "constraint", "for_version", "is_schema_refusal",
    "is_system_role_refusal", "is_template_missing", "is_tools_refusal", "parse_version", "sent_field",
    "structured_output", "structured_output_fields",
]

DEFAULT_VERSION = "0.32.0"  #: the release the emulator plays unless told otherwise (the one CI runs for real)


@dataclass(frozen=True)
class Generation:
    """One generation of vLLM's OpenAI-compatible server, as seen by a client."""

    since: tuple[int, int, int]  #: first release with this behaviour
    name: str  #: short label for people, e.g. "0.18+"
    key_scheme_any_case: bool  #: ``bearer KEY`` accepted (scheme compared case-insensitively), several keys, OPTIONS
    #: (CORS preflight) not behind the key
    env_key_wins: bool  #: ``VLLM_API_KEY`` wins over ``--api-key`` when both are set
    nested_errors: bool  #: error bodies are ``{"error": {...}}`` rather than flat ``{"object": "error", ...}``
    version_endpoint: bool  #: ``GET /version`` answers ``{"version": ...}`` without a key
    clamps_max_tokens: bool  #: only ``max_tokens > context`` is refused; a larger sum is clamped to the room left
    checks_prompt_alone: bool  #: without ``max_tokens``, a prompt that fills the context gets ``prompt_message``
    include_usage: bool  #: understands ``stream_options.include_usage`` (a last chunk with ``choices: []``)
    usage_on_finish_chunk: bool  #: a stream's finish chunk carries ``usage`` without being asked
    max_tokens_message: str  #: 400 when ``max_tokens`` does not fit
    max_tokens_param: Optional[str]
    prompt_message: str  #: 400 when the prompt alone does not fit (``max_tokens`` left out)
    prompt_param: Optional[str]
    unknown_model_message: str  #: 404 for a model name that is not served
    unknown_model_param: Optional[str]
    usage_details: bool  #: non-streamed usage also has ``prompt_tokens_details`` / ``completion_tokens_details`` (null)
    request_checks: bool  #: FastAPI-validation bodies (type "Bad Request", param "body.<field>"), stream_options
    #: only with stream, max_tokens >= 1 with its parameter named (measured on 0.32.0)
    no_template_message: Optional[str]  #: 400 for a chat request to a model without a chat template; None: it
    #: answers in transformers' default layout for the tokenizer's class (0.3.3 with transformers <= 4.43)
    chat_error_cause: bool  #: chat preprocessing errors read ``f"{e} {e.__cause__}"``: " None" after vLLM's own
    #: refusal, a template's exception text twice (0.10.2 - 0.17; 0.5.5 and 0.18+ send ``str(e)``)
    checks_max_tokens_first: bool  #: ``max_tokens > context`` is refused before the template is applied (0.18+)
    untrusted_template_message: Optional[str] = None  #: 400 for a request-level ``chat_template`` (0.11+); None:
    #: ignored (0.3) or used (0.5.1 - 0.10)
    auto_tool_choice_message: Optional[str] = None  #: 400 for ``tools`` with ``tool_choice`` "auto" (or left out) on
    #: a server started without --enable-auto-tool-choice (0.6+); None: ``tools`` ignored
    named_tool_choice_message: Optional[str] = None  #: 400 for a named ``tool_choice`` (MetaGPT's aask_code) on a
    #: server without --tool-call-parser, ``{name}`` the function's (0.14 on; 0.26+'s words, measured on 0.32.0)
    ignores_tools: bool = False  #: ``tools`` / ``tool_choice`` are dropped: a plain answer, no ``tool_calls`` key
    #: (0.3.3 - 0.4.1; 0.4.2 - 0.4.3 refuse them as extra fields, TOOLS_REFUSALS)
    named_tool_call_guided: bool = False  #: a named ``tool_choice`` is answered with a tool call whose arguments are
    #: constrained by the function's parameters, without tool flags (0.5.0 - 0.11.0)
    empty_tool_calls: bool = False  #: an answer without a tool call carries ``"tool_calls": []`` (0.5.0 - 0.23;
    #: absent before and after)
    structured_output_fields: tuple[str, ...] = ("guided_json",)  #: the request fields that constrain an answer to
    #: a JSON schema, chat and completions alike, the last one sent winning: ``guided_json`` (0.3.3 - 0.11.x, a
    #: schema), ``structured_outputs`` (0.11.0 on, ``{"json": schema}``; it wins over ``guided_json`` in 0.11);
    #: a field not listed is ignored (refused as an extra field on 0.4.2 - 0.6.4). vllm-tools-facts.md §1a-1c
    response_format_json_schema: tuple[str, ...] = ()  #: the endpoints ("chat", "completions") on which
    #: ``response_format: {"type": "json_schema"}`` constrains, overriding the fields above: chat from 0.6.0 (not
    #: 0.6.3), completions from 0.11.1 (facts §1a, §1b, §1c); elsewhere it is ignored
    json_schema_missing_message: Optional[str] = None  #: 400 (param ``response_format``) for a json_schema
    #: response_format without its ``json_schema`` (facts §5; measured on 0.32.0)
    structured_outputs_or_tools_message: Optional[str] = None  #: 400 for ``structured_outputs`` beside a named
    #: ``tool_choice`` (0.23 on, ``check_structured_outputs_count``: facts §1c; measured on 0.32.0)
    uncompilable_schema_keys: tuple[str, ...] = ()  #: JSON-schema keywords the server cannot compile into a
    #: grammar, present anywhere in the schema with any value: 400 after the prompt is checked (0.32's default
    #: "auto" backend: xgrammar refuses, guidance's fallback too; facts §5, measured on 0.32.0)
    uncompilable_schema_message: Optional[str] = None  #: that 400's message, ``{keys}`` the keywords found
    tool_call_id_hex: int = 32  #: hex digits after ``chatcmpl-tool-`` in a tool call's id: ``uuid4().hex`` up to
    #: 0.11.1, 16 from 0.12.0 (facts §3)
    prompt_missing_message: Optional[str] = None  #: 400 for a completion request without ``prompt`` (0.32.0
    #: measured: ``prompt_embeds`` may stand in for it); None: the field-validation 400
    bad_request_type: str = "BadRequestError"
    not_found_type: str = "NotFoundError"

    @property
    def structured_output(self) -> str:
        """The field a client constrains an answer with on this generation (the one that wins)."""
        return self.structured_output_fields[-1]

    @property
    def context_rule(self) -> str:
        """The ``max_tokens`` rule in words, for the doctor and the docs."""
        if self.clamps_max_tokens:
            return "max_tokens <= max_model_len (larger sums are clamped to the room left)"
        return "prompt + max_tokens <= max_model_len"

    def refuses_max_tokens(self, max_tokens: int, context: int, prompt_tokens: int = 1) -> bool:
        """Would this generation answer 400 for ``max_tokens`` with a prompt of ``prompt_tokens``?"""
        if self.clamps_max_tokens:
            return max_tokens > context
        return prompt_tokens + max_tokens > context

    def chat_error(self, text: str, cause: Optional[str] = None) -> str:
        """The 400 message for an error preparing a chat prompt (vLLM's own refusal: no ``cause``)."""
        return f"{text} {cause}" if self.chat_error_cause else text

    def error_body(self, status: int, message: str, err_type: str, param: Optional[str]) -> dict[str, Any]:
        """The JSON body of an error response, in this generation's shape."""
        if self.nested_errors:
            return {"error": {"message": message, "type": err_type, "param": param, "code": status}}
        return {"object": "error", "message": message, "type": err_type, "param": param, "code": status}


_V03_MAX_TOKENS = ("This model's maximum context length is {context} tokens. However, you requested {total} tokens "
                   "({prompt} in the messages, {completion} in the completion). Please reduce the length of the "
                   "messages or completion.")
# Without max_tokens, 0.3 defaults it to the room left, which is negative for a prompt longer than the context;
# SamplingParams then refuses it. (With max_tokens, a prompt alone too long gets _V03_MAX_TOKENS.)
_V03_PROMPT = "max_tokens must be at least 1, got {completion}."
_V010_MAX_TOKENS = ("'max_tokens' or 'max_completion_tokens' is too large: {completion}. This model's maximum context "
                    "length is {context} tokens and your request has {prompt} input tokens ({completion} > {context} "
                    "- {prompt}).")
_V010_PROMPT = ("This model's maximum context length is {context} tokens. However, your request has {prompt} input "
                "tokens. Please reduce the length of the input messages.")
# As measured on 0.32.0, which names the offending parameter at the end; the prompt's size is counted only up to
# the context + 1 ("at least").
_V018_MAX_TOKENS = ("max_tokens={completion} cannot be greater than max_model_len={context}. Please request fewer "
                    "output tokens. (parameter=max_tokens, value={completion})")
_V018_PROMPT = ("This model's maximum context length is {context} tokens. However, your prompt contains at least "
                "{prompt} input tokens, which exceeds this limit even without any output tokens. Please reduce the "
                "length of the input prompt. (parameter=input_tokens, value={prompt})")
_UNKNOWN_MODEL = "The model `{model}` does not exist."

# A chat request to a model whose tokenizer has no chat template (read from the wheels). vLLM's own words from
# 0.5.5 on (chat_utils.py; renderers/hf.py in 0.18+); before that vLLM passed on transformers' exception, which
# since transformers 4.44 (no class defaults any more) says the second, and in transformers 5 the third.
_NO_TEMPLATE = ("As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
                "template if the tokenizer does not define one.")
NO_TEMPLATE_MESSAGES = (
    _NO_TEMPLATE,
    "Cannot use apply_chat_template() because tokenizer.chat_template is not set and no template argument was passed!",
    "Cannot use chat template functions because tokenizer.chat_template is not set and no template argument was "
    "passed!",
)
# Chat templates that refuse a system message, in their own raise_exception() words, which vLLM returns as the 400's
# message: Mistral-7B-Instruct v0.1/v0.2 (and Llama-2-chat's for a second system message), Gemma.
SYSTEM_ROLE_MESSAGES = ("Conversation roles must alternate user/assistant/user/assistant/...",
                        "System role not supported")
# Measured on 0.32.0: a request-level chat_template without --trust-request-chat-template (the flag exists from
# 0.11.0), and tools with tool_choice "auto" (the default when tools are given) without --enable-auto-tool-choice
# (vLLM's tool calling, 0.6.0 on). Both come before the template is applied.
_UNTRUSTED_TEMPLATE = ("Chat template is passed with request, but --trust-request-chat-template is not set. Refused "
                       "request with untrusted chat template.")
_AUTO_TOOL_CHOICE = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
_NAMED_TOOL_CHOICE = 'tool_choice=function "{name}" requires --tool-call-parser to be set'
# Every refusal of a function-call request by a server started without tool flags (read from the wheels): "auto"
# (tools without tool_choice) from 0.6.0, a named tool_choice in 0.14 - 0.25's words and in 0.26+'s, and 0.4.2 -
# 0.4.3's refusal of ``tools`` as an extra field (pydantic v2 inside any fastapi's rendering of the error list).
TOOLS_REFUSALS = (
    _AUTO_TOOL_CHOICE,
    _NAMED_TOOL_CHOICE,
    "tool_choice=\"function=ChatCompletionNamedFunction(name='{name}') type='function'\" requires "
    "--tool-call-parser to be set",
    "'type': 'extra_forbidden', 'loc': ('body', 'tools')",
)
_PROMPT_MISSING = "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)"
# Structured outputs on 0.32.0 (measured; vllm-tools-facts.md §1c, §5): a json_schema response_format without its
# schema; structured_outputs beside a named tool_choice; and a schema keyword that neither xgrammar nor the guidance
# fallback of the default "auto" backend compiles (guidance's words; {keys} sorted, each in double quotes).
_JSON_SCHEMA_MISSING = ("When response_format type is 'json_schema', the 'json_schema' field must be provided. "
                        "(parameter=response_format)")
_NOT_BOTH = "You can only either use constraints for structured outputs or tools, not both."
_UNIMPLEMENTED_KEYS = "Grammar error: Unimplemented keys: [{keys}]"

GENERATIONS: tuple[Generation, ...] = (
    # MetaGPT 0.7's time. One check for everything: prompt + max_tokens <= context. A model without a chat template
    # is answered in transformers' default layout, as 0.3.3 did with transformers <= 4.43 (0.5.5 - 0.10.1 refuse it
    # in _NO_TEMPLATE's words, flat bodies: recognised, not played; with transformers >= 4.44 any 0.3 refuses too).
    Generation(since=(0, 3, 0), name="0.3", key_scheme_any_case=False, env_key_wins=True, nested_errors=False,
               version_endpoint=False, clamps_max_tokens=False, checks_prompt_alone=False,
               include_usage=False, usage_on_finish_chunk=True,
               max_tokens_message=_V03_MAX_TOKENS, max_tokens_param=None,
               prompt_message=_V03_PROMPT, prompt_param=None, unknown_model_message=_UNKNOWN_MODEL,
               unknown_model_param=None, usage_details=False, request_checks=False,
               no_template_message=None, chat_error_cause=False, checks_max_tokens_first=False,
               ignores_tools=True),
    # Nested error bodies (0.10.2), /version, stream_options; the key check is still exact.
    Generation(since=(0, 10, 2), name="0.10.2", key_scheme_any_case=False, env_key_wins=True, nested_errors=True,
               version_endpoint=True, clamps_max_tokens=False, checks_prompt_alone=True,
               include_usage=True, usage_on_finish_chunk=False,
               max_tokens_message=_V010_MAX_TOKENS, max_tokens_param="max_tokens",
               prompt_message=_V010_PROMPT, prompt_param="input_tokens", unknown_model_message=_UNKNOWN_MODEL,
               unknown_model_param=None, usage_details=False, request_checks=False,
               no_template_message=_NO_TEMPLATE, chat_error_cause=True, checks_max_tokens_first=False,
               auto_tool_choice_message=_AUTO_TOOL_CHOICE, named_tool_call_guided=True, empty_tool_calls=True,
               response_format_json_schema=("chat",)),
    # Several keys, constant-time compare, case-insensitive scheme; --api-key wins over VLLM_API_KEY.
    Generation(since=(0, 11, 0), name="0.11", key_scheme_any_case=True, env_key_wins=False, nested_errors=True,
               version_endpoint=True, clamps_max_tokens=False, checks_prompt_alone=True,
               include_usage=True, usage_on_finish_chunk=False,
               max_tokens_message=_V010_MAX_TOKENS, max_tokens_param="max_tokens",
               prompt_message=_V010_PROMPT, prompt_param="input_tokens", unknown_model_message=_UNKNOWN_MODEL,
               unknown_model_param=None, usage_details=False, request_checks=False,
               no_template_message=_NO_TEMPLATE, chat_error_cause=True, checks_max_tokens_first=False,
               untrusted_template_message=_UNTRUSTED_TEMPLATE, auto_tool_choice_message=_AUTO_TOOL_CHOICE,
               named_tool_call_guided=True, empty_tool_calls=True,
               structured_output_fields=("guided_json", "structured_outputs"), response_format_json_schema=("chat",)),
    # max_tokens is clamped to the room left; only max_tokens > context is refused (measured on 0.32.0).
    Generation(since=(0, 18, 0), name="0.18+", key_scheme_any_case=True, env_key_wins=False, nested_errors=True,
               version_endpoint=True, clamps_max_tokens=True, checks_prompt_alone=True,
               include_usage=True, usage_on_finish_chunk=False,
               max_tokens_message=_V018_MAX_TOKENS, max_tokens_param="max_tokens",
               prompt_message=_V018_PROMPT, prompt_param="input_tokens",
               unknown_model_message=_UNKNOWN_MODEL + " Valid aliases: {served}.", unknown_model_param="model",
               usage_details=True, request_checks=True,
               no_template_message=_NO_TEMPLATE, chat_error_cause=False, checks_max_tokens_first=True,
               untrusted_template_message=_UNTRUSTED_TEMPLATE, auto_tool_choice_message=_AUTO_TOOL_CHOICE,
               named_tool_choice_message=_NAMED_TOOL_CHOICE, prompt_missing_message=_PROMPT_MISSING,
               structured_output_fields=("structured_outputs",), response_format_json_schema=("chat", "completions"),
               json_schema_missing_message=_JSON_SCHEMA_MISSING, structured_outputs_or_tools_message=_NOT_BOTH,
               uncompilable_schema_keys=("contains", "maxContains", "minContains", "uniqueItems"),
               uncompilable_schema_message=_UNIMPLEMENTED_KEYS, tool_call_id_hex=16),
)
CURRENT = GENERATIONS[-1]


def parse_version(text: str) -> tuple[int, int, int]:
    """``"0.32.0"``, ``"v0.10.2"``, ``"0.8.5.post1"``, ``"0.11.0rc2+cpu"`` -> ``(0, 32, 0)`` ...; else ValueError."""
    match = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not match:
        raise ValueError(f"not a vLLM version: {text!r}")
    major, minor, micro = match.groups()
    return int(major), int(minor), int(micro or 0)


def for_version(version: Optional[str]) -> Generation:
    """The generation a vLLM release belongs to; None (no ``/version``) means the 0.3 generation."""
    if version is None:
        return GENERATIONS[0]
    release = parse_version(version)
    if release < GENERATIONS[0].since:
        raise ValueError(f"vLLM {version} is older than any generation this project knows (0.3.0)")
    return [g for g in GENERATIONS if g.since <= release][-1]


@dataclass(frozen=True)
class Refusal:
    """A 400 about the context, as recognised from the server's message."""

    kind: str  #: "max_tokens" (the requested completion does not fit) or "prompt" (the prompt alone does not)
    context: Optional[int]  #: the server's max_model_len, when the message says it
    prompt_tokens: Optional[int]  #: when the message says it
    completion_tokens: Optional[int]  #: the max_tokens the server saw, when the message says it

    @property
    def retry_helps(self) -> bool:
        """Sending the request without ``max_tokens`` lets the server use the room left: only if there is some."""
        if self.kind != "max_tokens":
            return False
        return self.prompt_tokens is None or self.context is None or self.prompt_tokens < self.context


_TEXT_FIELDS = frozenset({"model", "served", "name"})


def _pattern(template: str) -> Pattern[str]:
    """A template as a regex: literal text escaped, each field a group (a repeated field must repeat its value)."""
    out, seen = [], set()
    for literal, field in re.findall(r"([^{]*)(?:\{(\w+)\})?", template):
        out.append(re.escape(literal))
        if field in seen:
            out.append(f"(?P={field})")
        elif field:
            out.append(rf"(?P<{field}>.*?)" if field in _TEXT_FIELDS else rf"(?P<{field}>-?\d+)")
            seen.add(field)
    return re.compile("".join(out))


@functools.cache  # compiled on the first refusal, not when MetaGPT's module is patched
def _patterns() -> tuple[tuple[str, Pattern[str]], ...]:
    found: list[tuple[str, str]] = []
    for generation in reversed(GENERATIONS):
        for kind, template in (("max_tokens", generation.max_tokens_message), ("prompt", generation.prompt_message)):
            if template not in {t for _, t in found}:
                found.append((kind, template))
    return tuple((kind, _pattern(template)) for kind, template in found)




def served_models(message: str) -> Optional[list[str]]:
    """The served names a 404 for an unknown model lists (vLLM 0.18+: "Valid aliases: ..."), else None."""
    for generation in reversed(GENERATIONS):
        if "{served}" in generation.unknown_model_message:
            match = re.search(_pattern(generation.unknown_model_message).pattern + "$", (message or "").strip())
            if match:
                return [name.strip() for name in match.group("served").split(",") if name.strip()]
    return None


def error_fields(body: Any) -> Mapping[str, Any]:
    """The ``message`` / ``param`` / ``type`` mapping of an error body in any generation's shape."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        error: Mapping[str, Any] = body["error"]
        return error
    return body if isinstance(body, Mapping) else {}


def classify_refusal(message: str) -> Optional[Refusal]:
    """Recognise a context refusal of any vLLM generation from its message; None for anything else."""
    for kind, pattern in _patterns():
        match = pattern.search(message or "")
        if match:
            fields = {name: int(value) for name, value in match.groupdict().items() if name not in _TEXT_FIELDS}
            prompt, completion, context = fields.get("prompt"), fields.get("completion"), fields.get("context")
            if kind == "max_tokens" and prompt is not None and context is not None and prompt >= context:
                kind = "prompt"  # 0.3's single check: the prompt alone already fills the context
            return Refusal(kind, context, prompt, completion)
    return None


def is_template_missing(message: str) -> bool:
    """Is this a refusal of a chat request because the model has no chat template (any vLLM, any transformers)?"""
    return any(known in (message or "") for known in NO_TEMPLATE_MESSAGES)


@functools.cache
def _tools_patterns() -> tuple[Pattern[str], ...]:
    return tuple(_pattern(template) for template in TOOLS_REFUSALS)


def is_tools_refusal(message: str) -> bool:
    """Is this a refusal of ``tools`` / ``tool_choice`` by a server started without tool flags (any generation)?"""
    return any(pattern.search(message or "") for pattern in _tools_patterns())


def is_schema_refusal(message: str) -> bool:
    """Is this a refusal of a JSON schema the server cannot compile into a grammar (any generation's words)?"""
    templates = {g.uncompilable_schema_message for g in GENERATIONS if g.uncompilable_schema_message}
    return any(_pattern(t.split("{keys}")[0]).search(message or "") for t in templates)


def structured_output_fields() -> tuple[str, ...]:
    """Every request field that constrains an answer in some generation, oldest first (by its JSON-schema name)."""
    return tuple(dict.fromkeys(field for g in GENERATIONS for field in g.structured_output_fields))


#: The same generations read a regular expression in these fields (``guided_regex`` beside ``guided_json`` from
#: 0.3.3, removed with it in 0.12; ``structured_outputs: {"regex": ...}`` from 0.11).
REGEX_FIELDS = {"guided_json": "guided_regex", "structured_outputs": "structured_outputs"}


def sent_field(field: str, regex: bool) -> str:
    """The request field a constraint travels in: ``field`` (of :func:`structured_output_fields`) for a schema, its
    regex counterpart for a regex; what a server names when it refuses it."""
    return REGEX_FIELDS[field] if regex else field


def constraining_fields() -> tuple[str, ...]:
    """Every request field that carries a constraint in some generation, as a schema or as a regex, newest first:
    how a recorded request is told constrained."""
    return tuple(dict.fromkeys(sent_field(field, regex) for field in reversed(structured_output_fields())
                               for regex in (False, True)))


def constraint(fields: Sequence[str], schema: Optional[Mapping[str, Any]] = None,
               regex: Optional[str] = None) -> dict[str, Any]:
    """The request fields ``fields`` (of :func:`structured_output_fields`), each constraining the answer to ``regex``
    or else to ``schema``.

    Sent together, each generation reads the one it knows and ignores the other (0.3 - 0.4.1 and 0.6.5 - 0.10
    ignore ``structured_outputs``, 0.12 and later ignore the ``guided_*`` fields with a warning, measured on 0.32.0);
    0.4.2 - 0.6.4 refuse a field they do not know, naming it, so a client drops it and asks again before any
    generation."""
    out: dict[str, Any] = {}
    for field in fields:
        if regex is not None:
            out[sent_field(field, True)] = {"regex": regex} if field == "structured_outputs" else regex
        elif schema is not None:
            out[field] = {"json": dict(schema)} if field == "structured_outputs" else dict(schema)
    return out


def structured_output(generation: Generation, schema: Mapping[str, Any]) -> dict[str, Any]:
    """The request field that constrains an answer to ``schema`` on that generation (chat and completions)."""
    return constraint((generation.structured_output,), schema=schema)


def is_system_role_refusal(message: str) -> bool:
    """Is this a chat template's refusal of the system role (Mistral-Instruct's or Gemma's words)?"""
    return any(known in (message or "") for known in SYSTEM_ROLE_MESSAGES)
