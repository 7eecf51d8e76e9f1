"""A request body read as vLLM's pydantic step reads it, before any endpoint's own checks (and the model check)."""
from __future__ import annotations

import json
from typing import Any, NamedTuple, Optional

from aiohttp import web

from .errors import APIError, invalid
from .recorder import BODY
from .served import Served

# Fields of OpenAI's chat and completion requests that a strict server knows (``reject_unknown_fields``). vLLM's
# own extensions -- guided_json and the other guided_* fields, structured_outputs, add_special_tokens, a request's
# chat_template -- are not among them: such a server refuses them (the fixes' fallbacks are tested against that),
# and so is stream_options, which servers of OpenAI's API before 2024 do not know.
KNOWN_FIELDS = frozenset({
    "model", "messages", "prompt", "max_tokens", "n", "temperature", "top_p", "stream", "stop", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "logprobs", "top_logprobs", "echo", "suffix", "best_of", "seed",
    "tools", "tool_choice", "functions", "function_call", "response_format",
})


class Parsed(NamedTuple):
    body: dict[str, Any]
    stream: bool
    max_tokens: Optional[int]
    limit_name: str  #: max_tokens or max_completion_tokens, as the request named it


async def parse(served: Served, request: web.Request, default_max_tokens: Optional[int], required: str) -> Parsed:
    """Common field validation (vLLM's pydantic step, which precedes the model check)."""
    def bad(field: str, kind: str, text: str, items: int = 0) -> APIError:
        return invalid(served.generation, field, kind, text, items)

    try:
        body = request[BODY] = json.loads(await request.read())
    except ValueError as exc:
        raise bad(str(getattr(exc, "pos", 0)), "json_invalid", "JSON decode error") from None
    if not isinstance(body, dict):
        raise bad("0", "model_attributes_type", "Input should be a valid dictionary")
    for field in ("model", required):
        if field not in body:
            raise bad(field, "missing", "Field required", len(body))
    if not isinstance(body.get("model"), str):
        raise bad("model", "string_type", "Input should be a valid string", len(body))
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if served.reject_unknown_fields and unknown:  # some OpenAI-compatible servers do this; vLLM ignores them
        raise APIError(f"Extra inputs are not permitted: {', '.join(unknown)}", param=unknown[0])
    stream = body.get("stream", False)
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = body.get(name, default_max_tokens)
    if not isinstance(stream, bool) and stream is not None:
        raise bad("stream", "bool_type", "Input should be a valid boolean", len(body))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise bad(name, "int_type", "Input should be a valid integer", len(body))
    gen = served.generation
    if gen.request_checks and body.get("stream_options") is not None and not stream:
        raise APIError("Stream options can only be defined when `stream=True`. (parameter=stream_options)",
                       gen.bad_request_type, param="stream_options")
    return Parsed(body, bool(stream), max_tokens, name)


def check_model(served: Served, body: dict[str, Any]) -> None:
    """The 404 for a model the server does not serve, in the generation's words."""
    if body["model"] != served.model:
        gen = served.generation
        message = gen.unknown_model_message.format(model=body["model"], served=served.model)
        raise APIError(message, gen.not_found_type, 404, param=gen.unknown_model_param)
