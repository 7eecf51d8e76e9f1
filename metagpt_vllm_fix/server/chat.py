"""``/v1/chat/completions``: vLLM's checks in vLLM's order, then the answer (the echo, a constrained value or a
tool call), whole or streamed."""
from __future__ import annotations

import time
import uuid
from typing import Any, Optional

from aiohttp import web

from . import chat_prompt, structured, tool_calls
from .budget import budget
from .echo import answer, usage, usage_details
from .errors import APIError, invalid, sse_error
from .parsing import check_model, parse
from .responses import json_response, sse
from .served import Served


def refuse_tools(served: Served, body: dict[str, Any]) -> None:
    """The 400 a server started without tool flags sends for ``tools`` (vLLM checks them before the template)."""
    gen = served.generation
    if body.get("tools") and body.get("tool_choice", "auto") == "auto" and gen.auto_tool_choice_message \
            and not served.auto_tool_choice:
        raise APIError(gen.auto_tool_choice_message, gen.bad_request_type)  # no tool parser configured
    named = body.get("tool_choice")
    if body.get("tools") and isinstance(named, dict) and gen.named_tool_choice_message and not served.tool_parser:
        function = named.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        raise APIError(gen.named_tool_choice_message.format(name=name), gen.bad_request_type)


async def chat(served: Served, request: web.Request) -> web.StreamResponse:
    gen = served.generation
    body, stream, max_tokens, limit_name = await parse(served, request, None, "messages")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise invalid(gen, "messages", "list_type", "Input should be a valid list", len(body))
    structured.validate(served, body)
    check_model(served, body)
    if gen.checks_max_tokens_first and max_tokens is not None and max_tokens > served.max_model_len:
        budget(served, 0, max_tokens, limit_name)  # raises: 0.18+ checks this before the template
    if body.get("chat_template") is not None and gen.untrusted_template_message:
        raise APIError(gen.untrusted_template_message, gen.bad_request_type)
    refuse_tools(served, body)
    texts = [chat_prompt.content_text(m.get("content")) for m in messages]
    prompt_tokens = chat_prompt.prompt_tokens(served, messages, texts, body)
    max_tokens = budget(served, prompt_tokens, max_tokens, limit_name)
    call = tool_calls.called(served, body)
    schema = call.parameters if call is not None else structured.requested_schema(served, body, "chat")
    refused = structured.refusal(served, schema) if schema is not None else None
    if refused is not None and stream:
        return await sse_error(request, gen, refused, served.done_delay)  # 0.32: a 200 stream of one error
    if refused is not None:
        raise refused
    regex = structured.requested_regex(served, body) if call is None else None
    if regex is not None:
        pieces, finish = structured.regex_answer(regex, max_tokens)
    elif schema is not None:
        pieces, finish = structured.answer(schema, max_tokens)
    else:
        last_user = next((t for m, t in zip(reversed(messages), reversed(texts)) if m.get("role") == "user"), "")
        pieces, finish = answer(last_user, max_tokens, served.answers)
    counts = usage(prompt_tokens, len(pieces))
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.model}
    finish = tool_calls.finish_reason(call, finish) if call is not None else finish
    if not stream:
        choice = {"index": 0, "message": tool_calls.message(served, call, "".join(pieces)), "finish_reason": finish}
        return json_response({"id": head["id"], "object": "chat.completion", "created": head["created"],
                              "model": served.model, "choices": [choice], "usage": {**counts, **usage_details(gen)}})

    def chunk(delta: dict[str, Any], finish_reason: Optional[str], **extra: Any) -> dict[str, Any]:
        return {"id": head["id"], "object": "chat.completion.chunk", "created": head["created"],
                "model": served.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                **extra}

    options = body.get("stream_options")
    include_usage = gen.include_usage and isinstance(options, dict) and options.get("include_usage") is True
    events = [chunk({"role": "assistant"}, None)]
    if call is not None:  # the call's id and name first, then its arguments piece by piece
        events.append(chunk({"tool_calls": [{"index": 0, **tool_calls.tool_call(served, call, "")}]}, None))
        events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None) for piece in pieces]
    else:
        events += [chunk({"content": piece}, None) for piece in pieces]
    events.append(chunk({}, finish, **({"usage": counts} if gen.usage_on_finish_chunk else {})))
    if include_usage:  # a last chunk with no choices carries the usage
        events.append({"id": head["id"], "object": "chat.completion.chunk", "created": head["created"],
                       "model": served.model, "choices": [], "usage": counts})
    return await sse(request, events, served.done_delay)
