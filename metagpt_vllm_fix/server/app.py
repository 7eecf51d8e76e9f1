"""The emulated server as an aiohttp app: the key check, vLLM's error bodies, the recorder and the routes."""
from __future__ import annotations

from collections.abc import Awaitable, Sequence
from functools import partial
from typing import Callable, Optional

from aiohttp import web

from ..vllm_versions import DEFAULT_VERSION
from . import auth, errors, status
from .chat import chat
from .completions import completions
from .echo import ANSWER_STYLES
from .models import models
from .recorder import RecordedRequest, recording
from .served import DEFAULT_MODEL, TEMPLATE_KINDS, Served, generation_of

Endpoint = Callable[[Served, web.Request], Awaitable[web.StreamResponse]]


def build_app(*, api_keys: Sequence[str] = (), model: str = DEFAULT_MODEL, max_model_len: int = 4096,
              vllm_version: str = DEFAULT_VERSION, reject_unknown_fields: bool = False, done_delay: float = 0.0,
              chat_template: str = "llama-2-chat", tool_parser: Optional[str] = None,
              enable_auto_tool_choice: Optional[bool] = None, answers: str = "echo",
              recorder: Optional[list[RecordedRequest]] = None) -> web.Application:
    """The emulated server as an aiohttp app playing vLLM ``vllm_version``; every response goes to ``recorder``.

    Empty keys are ignored; with no key at all the server is open, as in vLLM. Before 0.11 vLLM takes exactly
    one key. ``reject_unknown_fields`` plays an OpenAI-compatible server that refuses fields it does not know
    (vLLM itself ignores them). ``chat_template`` is the served model's, by kind (:data:`TEMPLATE_KINDS`); the
    default, Llama-2-chat's, answers MetaGPT's chat requests (``serve`` plays the seed's ``none``).
    ``tool_parser`` plays ``--tool-call-parser NAME`` and ``enable_auto_tool_choice`` (by default: with a parser)
    ``--enable-auto-tool-choice`` (vLLM 0.6+): the server then answers function calls itself, and its "model"
    always calls (:mod:`.tool_calls`); any parser name is taken. ``answers``: how the "model" answers a request
    that is not constrained, "echo" (the prompt again) or "plain" (never in the format asked for: a model that
    ignores MetaGPT's formats until an answer is constrained).
    """
    if answers not in ANSWER_STYLES:
        raise ValueError(f"answers: {answers!r} is not one of {', '.join(ANSWER_STYLES)}")
    if chat_template not in TEMPLATE_KINDS:
        raise ValueError(f"chat_template: {chat_template!r} is not one of {', '.join(TEMPLATE_KINDS)}")
    generation = generation_of(vllm_version)
    keys = [k for k in api_keys if k]
    if not generation.key_scheme_any_case and len(keys) > 1:
        raise ValueError(f"vLLM {vllm_version} accepts a single API key; several need vLLM 0.11 or later")
    auto = tool_parser is not None if enable_auto_tool_choice is None else enable_auto_tool_choice
    if auto and not tool_parser:  # vLLM's own start-up check
        raise ValueError("enable_auto_tool_choice needs a tool_parser (vLLM: --tool-call-parser)")
    if tool_parser and generation.ignores_tools:
        raise ValueError(f"vLLM {vllm_version} has no tool calling (--tool-call-parser came with 0.6.0)")
    served = Served(model=model, max_model_len=max_model_len, version=vllm_version, generation=generation,
                    chat_template=chat_template, reject_unknown_fields=reject_unknown_fields, done_delay=done_delay,
                    tool_parser=tool_parser or None, auto_tool_choice=auto, answers=answers)

    def route(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        return partial(endpoint, served)

    app = web.Application(middlewares=[auth.middleware(keys, vllm_version), errors.middleware(generation)])
    # aiohttp 3.8 parametrises aiosignal's Signal with the callback's type, aiosignal 1.4 with its arguments' types
    app.on_response_prepare.append(recording(recorder))  # type: ignore[arg-type]
    app.router.add_get("/health", route(status.health))
    app.router.add_get("/metrics", route(status.metrics))
    if generation.version_endpoint:
        app.router.add_get("/version", route(status.version))
    app.router.add_get("/v1/models", route(models))
    app.router.add_post("/v1/chat/completions", route(chat))
    app.router.add_post("/v1/completions", route(completions))
    return app
