"""``/v1/completions``: one answer per prompt (a string or a list of them; the echo, or a value valid against the
request's schema), whole or streamed."""
from __future__ import annotations

import time
import uuid
from typing import Any, Optional

from aiohttp import web

from . import structured
from .budget import budget
from .echo import answer, usage, usage_details, words
from .errors import APIError, sse_error
from .parsing import check_model, parse
from .responses import json_response, sse
from .served import Served


async def completions(served: Served, request: web.Request) -> web.StreamResponse:
    gen = served.generation
    if gen.prompt_missing_message is not None:  # "prompt" is optional: prompt_embeds may do
        body, stream, max_tokens, _ = await parse(served, request, 16, "model")
        if not body.get("prompt"):
            raise APIError(gen.prompt_missing_message, gen.bad_request_type, param="prompt")
    else:
        body, stream, max_tokens, _ = await parse(served, request, 16, "prompt")  # 0.3's CompletionRequest default
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise APIError("'prompt' is required and must be a string or a list of strings")
    structured.validate(served, body)
    check_model(served, body)
    budgets = [(words(p), budget(served, words(p), max_tokens)) for p in prompts]
    schema = structured.requested_schema(served, body, "completions")
    refused = structured.refusal(served, schema) if schema is not None else None
    if refused is not None and stream:
        return await sse_error(request, gen, refused, served.done_delay)  # as chat: a 200 stream of one error
    if refused is not None:
        raise refused
    regex = structured.requested_regex(served, body)
    answers = [(size, structured.regex_answer(regex, room) if regex is not None else
                answer(p, room, served.answers) if schema is None else structured.answer(schema, room))
               for p, (size, room) in zip(prompts, budgets)]
    counts = usage(sum(n for n, _ in answers), sum(len(pieces) for _, (pieces, _) in answers))
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": served.model}

    def choice(index: int, text: str, finish_reason: Optional[str]) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}

    if not stream:
        choices = [choice(i, "".join(pieces), fin) for i, (_, (pieces, fin)) in enumerate(answers)]
        return json_response({**head, "choices": choices, "usage": {**counts, **usage_details(gen)}})
    events = []
    for i, (_, (pieces, fin)) in enumerate(answers):
        events += [{**head, "choices": [choice(i, piece, None)]} for piece in pieces]
        events.append({**head, "choices": [choice(i, "", fin)]})
    if gen.usage_on_finish_chunk:
        events[-1]["usage"] = counts
    options = body.get("stream_options")
    if gen.include_usage and isinstance(options, dict) and options.get("include_usage") is True:
        events.append({**head, "choices": [], "usage": counts})  # as for chat: a last chunk with no choices
    return await sse(request, events, served.done_delay)
