"""A GPU-free stand-in for vLLM's OpenAI-compatible API server, playing a chosen vLLM release.

It answers deterministic echo text so tests and the demo can prove, over real HTTP, what MetaGPT's ``open_llm``
provider sends and what vLLM answers. Everything that differs between vLLM generations -- the key check, error
bodies, ``/version``, the ``max_tokens`` rule, streamed usage, the refusal of a model without a chat template -- is
read from :mod:`metagpt_vllm_fix.vllm_versions`; a conformance test holds the default generation to a real vLLM
(docs/proof.md). The served model's chat template is chosen by kind (:data:`TEMPLATE_KINDS`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from aiohttp import web

from . import chat_layout, vllm_versions
from .masking import mask
from .vllm_versions import DEFAULT_VERSION, Generation

__all__ = [
    "DEFAULT_MODEL", "DEFAULT_VERSION", "TEMPLATE_KINDS", "RecordedRequest", "VLLMServer",
    "api_key_from_env", "authorized", "build_app", "run", "serve",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "meta-llama/Llama-2-7b-hf"
_BODY = "metagpt_vllm_fix.body"  # where a handler leaves the parsed request body for the recorder
_LIMIT_NAME = "metagpt_vllm_fix.limit"  # max_tokens or max_completion_tokens, as the request named it
_UNAUTHORIZED = b'{"error":"Unauthorized"}'  # starlette's compact JSONResponse rendering

# The served model's chat template, by kind: "none" (no template: meta-llama/Llama-2-7b-hf as published, the
# seed's model), "llama-2-chat" (Llama-2-7b-chat-hf's: one leading system message, then user/assistant
# alternating), "mistral-instruct" (Mistral-7B-Instruct v0.1/v0.2: user/assistant alternating from the first
# message, so no system message), "gemma" (no system role, then alternating).
TEMPLATE_KINDS = ("none", "llama-2-chat", "mistral-instruct", "gemma")
_ALTERNATE, _NO_SYSTEM = vllm_versions.SYSTEM_ROLE_MESSAGES


@dataclass(frozen=True, repr=False)
class RecordedRequest:
    """What a client actually sent (and what it got back)."""

    method: str
    path: str
    authorization: Optional[str]
    status: int
    fields: tuple[str, ...] = ()  #: top-level fields of the JSON body, when it was one
    max_tokens: Optional[int] = None  #: the body's max_tokens, when sent
    body: Any = dataclasses.field(default=None, compare=False)  #: the parsed JSON body, when it was one

    def __repr__(self) -> str:  # masked, so a failing assert or a print never leaks a key
        auth = self.authorization
        if auth is not None:
            scheme, sep, cred = auth.partition(" ")
            auth = scheme + sep + mask(cred) if sep else mask(auth)
        return f"RecordedRequest({self.method} {self.path} auth={auth!r} fields={self.fields} -> {self.status})"


def _generation(version: str) -> Generation:
    """The generation of ``version``, with a clear message for a version the table cannot place."""
    try:
        return vllm_versions.for_version(version)
    except ValueError as exc:
        raise ValueError(f"vllm_version: {exc}") from None


def authorized(header: Optional[str], keys: Sequence[str], vllm_version: str = DEFAULT_VERSION) -> bool:
    """Would that vLLM release accept this ``Authorization`` header value?

    vLLM 0.3 -- 0.10: ``header == "Bearer " + key``, plain case-sensitive string equality, nothing trimmed.
    0.11 and later: the scheme is split at the first space and compared case-insensitively; the rest is matched
    against every key in constant time (sha256 digests + ``hmac.compare_digest``).
    No keys means nothing matches; whether to check at all is the caller's choice.
    """
    generation = _generation(vllm_version)
    if header is None:
        return False
    if not generation.key_scheme_any_case:
        return any(header == "Bearer " + key for key in keys)
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    digest = hashlib.sha256(credential.encode("utf-8")).digest()
    match = False
    for key in keys:  # no early exit: timing must not reveal which key matched
        match |= hmac.compare_digest(digest, hashlib.sha256(key.encode("utf-8")).digest())
    return match


def api_key_from_env(cli_value: Optional[str], vllm_version: str = DEFAULT_VERSION) -> Optional[str]:
    """Resolve the server key as that vLLM release does.

    vLLM 0.3 reads ``os.environ.get("VLLM_API_KEY") or args.api_key`` -- the environment variable wins; newer
    vLLM lets ``--api-key`` win. Empty strings count as unset in both.
    """
    env = os.environ.get("VLLM_API_KEY")
    first, second = (env, cli_value) if _generation(vllm_version).env_key_wins else (cli_value, env)
    return first or second or None


class _APIError(Exception):
    """Raised by handlers; rendered in vLLM's ``ErrorResponse`` shape."""

    def __init__(self, message: str, err_type: str = "BadRequestError", status: int = 400,
                 param: Optional[str] = None) -> None:
        super().__init__(message)
        self.message, self.err_type, self.status, self.param = message, err_type, status, param


# Fields of OpenAI's chat and completion requests that a strict server knows (``reject_unknown_fields``).
_KNOWN_FIELDS = frozenset({
    "model", "messages", "prompt", "max_tokens", "n", "temperature", "top_p", "stream", "stop", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "logprobs", "top_logprobs", "echo", "suffix", "best_of", "seed",
    "tools", "tool_choice", "functions", "function_call", "response_format",
})


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(obj), status=status, content_type="application/json")


def _words(text: str) -> int:
    """Approximate token count: whitespace-separated words (no tokenizer, no model)."""
    return len(text.split())


def _content_text(content: Any) -> str:
    """Message content is a string, null, or (OpenAI vision style) a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _template_exception(kind: str, messages: list[dict[str, Any]]) -> Optional[str]:
    """The exception text a chat template of ``kind`` raises for these messages (None: it renders them)."""
    roles = [m.get("role") for m in messages]
    if kind == "gemma" and roles[:1] == ["system"]:
        return _NO_SYSTEM
    if kind == "llama-2-chat" and roles[:1] == ["system"]:
        roles = roles[1:]
    if any((role == "user") != (index % 2 == 0) for index, role in enumerate(roles)):
        return _ALTERNATE
    if kind == "mistral-instruct" and any(role not in ("user", "assistant") for role in roles):
        return "Only user and assistant roles are supported!"
    return None


def _answer(prompt: str, max_tokens: int) -> tuple[list[str], str]:
    """Deterministic reply split into word "tokens"; ``"".join`` gives the text back."""
    pieces = re.findall(r"\S+\s*", "echo: " + prompt)
    return (pieces[:max_tokens], "length") if len(pieces) > max_tokens else (pieces, "stop")


async def _sse(request: web.Request, events: list[dict[str, Any]], done_delay: float = 0.0) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    for event in events:
        await resp.write(b"data: " + _dumps(event) + b"\n\n")
    if done_delay:  # a stream left open after its last chunk: lets tests overlap concurrent streams
        await asyncio.sleep(done_delay)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


class _Endpoints:
    """Request handlers; one instance per app holds the served model's settings."""

    def __init__(self, model: str, max_model_len: int, version: str, reject_unknown_fields: bool,
                 done_delay: float = 0.0, chat_template: str = "llama-2-chat") -> None:
        self.done_delay, self.chat_template = done_delay, chat_template
        self.model, self.max_model_len, self.version = model, max_model_len, version
        self.generation = _generation(version)
        self.reject_unknown_fields = reject_unknown_fields

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200, body=b"", headers={"Content-Type": ""})  # vLLM's is empty and untyped

    async def version_info(self, request: web.Request) -> web.Response:
        return _json({"version": self.version})

    async def metrics(self, request: web.Request) -> web.Response:
        text = f'vllm:num_requests_running{{model_name="{self.model}"}} 0.0\n'
        return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=1.0.0; charset=utf-8"})

    async def models(self, request: web.Request) -> web.Response:
        now = int(time.time())
        permission = {
            "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": now,
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
            "organization": "*", "group": None, "is_blocking": False,
        }
        card = {"id": self.model, "object": "model", "created": now, "owned_by": "vllm", "root": self.model,
                "parent": None, "permission": [permission], "max_model_len": self.max_model_len}
        return _json({"object": "list", "data": [card]})

    def _invalid(self, field: str, kind: str, text: str, items: int = 0) -> _APIError:
        """A request-validation 400: newer vLLM reports FastAPI's error ("Bad Request", param ``body.<field>``)."""
        if not self.generation.request_checks:
            return _APIError(text)
        detail = {"type": kind, "loc": f"body.{field}", "msg": text, "input": f"<dict of {items} items>"}
        return _APIError(f"1 validation error:\n  {detail}", "Bad Request", param=f"body.{field}")

    async def _parse(self, request: web.Request, default_max_tokens: Optional[int],
                     required: str) -> tuple[dict[str, Any], bool, Optional[int]]:
        """Common field validation (vLLM's pydantic step, which precedes the model check)."""
        try:
            body = request[_BODY] = json.loads(await request.read())
        except ValueError as exc:
            raise self._invalid(str(getattr(exc, "pos", 0)), "json_invalid", "JSON decode error") from None
        if not isinstance(body, dict):
            raise self._invalid("0", "model_attributes_type", "Input should be a valid dictionary")
        for field in ("model", required):
            if field not in body:
                raise self._invalid(field, "missing", "Field required", len(body))
        if not isinstance(body.get("model"), str):
            raise self._invalid("model", "string_type", "Input should be a valid string", len(body))
        unknown = sorted(set(body) - _KNOWN_FIELDS)
        if self.reject_unknown_fields and unknown:  # some OpenAI-compatible servers do this; vLLM ignores them
            raise _APIError(f"Extra inputs are not permitted: {', '.join(unknown)}", param=unknown[0])
        stream = body.get("stream", False)
        name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        max_tokens = body.get(name, default_max_tokens)
        if not isinstance(stream, bool) and stream is not None:
            raise self._invalid("stream", "bool_type", "Input should be a valid boolean", len(body))
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
            raise self._invalid(name, "int_type", "Input should be a valid integer", len(body))
        gen = self.generation
        if gen.request_checks and body.get("stream_options") is not None and not stream:
            raise _APIError("Stream options can only be defined when `stream=True`. (parameter=stream_options)",
                            gen.bad_request_type, param="stream_options")
        request[_LIMIT_NAME] = name
        return body, bool(stream), max_tokens

    def _check_model(self, body: dict[str, Any]) -> None:
        if body["model"] != self.model:
            gen = self.generation
            message = gen.unknown_model_message.format(model=body["model"], served=self.model)
            raise _APIError(message, gen.not_found_type, 404, param=gen.unknown_model_param)

    def _budget(self, prompt_tokens: int, max_tokens: Optional[int], name: str = "max_tokens") -> int:
        """The generation's context rule: how many tokens the answer may have, or the 400 it sends."""
        gen, context = self.generation, self.max_model_len
        fields: dict[str, Any] = {"context": context, "prompt": prompt_tokens}

        def refuse(template: str, param: Optional[str], **more: int) -> _APIError:
            return _APIError(template.format(**fields, **more), gen.bad_request_type, param=param)

        if gen.clamps_max_tokens:  # 0.18+: max_tokens only bounded by the context, then clamped to the room left
            if max_tokens is not None and max_tokens < 1:
                raise _APIError(f"{name} must be at least 1, got {max_tokens}. (parameter={name}, value={max_tokens})",
                                gen.bad_request_type, param=name)
            if max_tokens is not None and max_tokens > context:
                raise refuse(gen.max_tokens_message.replace("max_tokens", name), name, completion=max_tokens)
            if prompt_tokens >= context:  # it counts no further than one past the context ("at least")
                fields["prompt"] = min(prompt_tokens, context + 1)
                raise refuse(gen.prompt_message, gen.prompt_param)
            return min(context if max_tokens is None else max_tokens, context - prompt_tokens)
        if gen.checks_prompt_alone and max_tokens is None:  # 0.10 - 0.17 without max_tokens
            if prompt_tokens >= context:
                raise refuse(gen.prompt_message, gen.prompt_param)
            return context - prompt_tokens
        if max_tokens is None:  # 0.3 defaults to the room left, even when there is none
            max_tokens = context - prompt_tokens
        if prompt_tokens + max_tokens > context:
            raise refuse(gen.max_tokens_message, gen.max_tokens_param, completion=max_tokens,
                         total=prompt_tokens + max_tokens)
        if max_tokens < 1:  # SamplingParams' own check
            raise refuse(gen.prompt_message, gen.prompt_param, completion=max_tokens)
        return max_tokens

    def _chat_prompt_tokens(self, messages: list[dict[str, Any]], texts: list[str]) -> int:
        """Apply the chat template (as far as it shows): its refusal as vLLM reports it, else the prompt's size."""
        gen = self.generation
        if self.chat_template == "none":
            if gen.no_template_message is not None:
                raise _APIError(gen.chat_error(gen.no_template_message), gen.bad_request_type)
            # 0.3.3 with transformers <= 4.43: the tokenizer class's default layout (chat_layout has both)
            return _words(chat_layout.LAYOUTS[chat_layout.auto_layout(self.model)](messages))
        refused = _template_exception(self.chat_template, messages)
        if refused is not None:
            raise _APIError(gen.chat_error(refused, refused), gen.bad_request_type)
        return sum(_words(t) for t in texts)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, stream, max_tokens = await self._parse(request, None, "messages")
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise self._invalid("messages", "list_type", "Input should be a valid list", len(body))
        self._check_model(body)
        if self.generation.checks_max_tokens_first and max_tokens is not None and max_tokens > self.max_model_len:
            self._budget(0, max_tokens, request[_LIMIT_NAME])  # raises: 0.18+ checks this before the template
        texts = [_content_text(m.get("content")) for m in messages]
        prompt_tokens = self._chat_prompt_tokens(messages, texts)
        max_tokens = self._budget(prompt_tokens, max_tokens, request[_LIMIT_NAME])
        last_user = next((t for m, t in zip(reversed(messages), reversed(texts)) if m.get("role") == "user"), "")
        pieces, finish = _answer(last_user, max_tokens)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                 "total_tokens": prompt_tokens + len(pieces)}
        details = {"prompt_tokens_details": None, "completion_tokens_details": None} \
            if self.generation.usage_details else {}
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model}
        if not stream:
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "finish_reason": finish}
            return _json({"id": head["id"], "object": "chat.completion", "created": head["created"],
                          "model": self.model, "choices": [choice], "usage": {**usage, **details}})

        def chunk(delta: dict[str, Any], finish_reason: Optional[str], **extra: Any) -> dict[str, Any]:
            return {"id": head["id"], "object": "chat.completion.chunk", "created": head["created"],
                    "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                    **extra}

        gen = self.generation
        options = body.get("stream_options")
        include_usage = gen.include_usage and isinstance(options, dict) and options.get("include_usage") is True
        events = [chunk({"role": "assistant"}, None)]
        events += [chunk({"content": piece}, None) for piece in pieces]
        events.append(chunk({}, finish, **({"usage": usage} if gen.usage_on_finish_chunk else {})))
        if include_usage:  # a last chunk with no choices carries the usage
            events.append({"id": head["id"], "object": "chat.completion.chunk", "created": head["created"],
                           "model": self.model, "choices": [], "usage": usage})
        return await _sse(request, events, self.done_delay)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body, stream, max_tokens = await self._parse(request, 16, "prompt")  # 0.3's CompletionRequest default
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise _APIError("'prompt' is required and must be a string or a list of strings")
        self._check_model(body)
        answers = [(_words(p), _answer(p, self._budget(_words(p), max_tokens))) for p in prompts]
        prompt_tokens = sum(n for n, _ in answers)
        completion_tokens = sum(len(pieces) for _, (pieces, _) in answers)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        details = {"prompt_tokens_details": None, "completion_tokens_details": None} \
            if self.generation.usage_details else {}
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": self.model}

        def choice(index: int, text: str, finish_reason: Optional[str]) -> dict[str, Any]:
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}

        if not stream:
            choices = [choice(i, "".join(pieces), fin) for i, (_, (pieces, fin)) in enumerate(answers)]
            return _json({**head, "choices": choices, "usage": {**usage, **details}})
        events = []
        for i, (_, (pieces, fin)) in enumerate(answers):
            events += [{**head, "choices": [choice(i, piece, None)]} for piece in pieces]
            events.append({**head, "choices": [choice(i, "", fin)]})
        gen = self.generation
        if gen.usage_on_finish_chunk:
            events[-1]["usage"] = usage
        options = body.get("stream_options")
        if gen.include_usage and isinstance(options, dict) and options.get("include_usage") is True:
            events.append({**head, "choices": [], "usage": usage})  # as for chat: a last chunk with no choices
        return await _sse(request, events, self.done_delay)


def build_app(*, api_keys: Sequence[str] = (), model: str = DEFAULT_MODEL, max_model_len: int = 4096,
              vllm_version: str = DEFAULT_VERSION, reject_unknown_fields: bool = False, done_delay: float = 0.0,
              chat_template: str = "llama-2-chat",
              recorder: Optional[list[RecordedRequest]] = None) -> web.Application:
    """The emulated server as an aiohttp app playing vLLM ``vllm_version``; every response goes to ``recorder``.

    Empty keys are ignored; with no key at all the server is open, as in vLLM. Before 0.11 vLLM takes exactly
    one key. ``reject_unknown_fields`` plays an OpenAI-compatible server that refuses fields it does not know
    (vLLM itself ignores them). ``chat_template`` is the served model's, by kind (:data:`TEMPLATE_KINDS`); the
    default, Llama-2-chat's, answers MetaGPT's chat requests (``serve`` plays the seed's ``none``).
    """
    if chat_template not in TEMPLATE_KINDS:
        raise ValueError(f"chat_template: {chat_template!r} is not one of {', '.join(TEMPLATE_KINDS)}")
    generation = _generation(vllm_version)
    keys = [k for k in api_keys if k]
    if not generation.key_scheme_any_case and len(keys) > 1:
        raise ValueError(f"vLLM {vllm_version} accepts a single API key; several need vLLM 0.11 or later")

    @web.middleware
    async def authentication(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        # aiohttp runs middlewares even when routing failed, so unknown /v1 paths get 401
        # first, like vLLM's middleware.  Newer vLLM lets CORS preflights (OPTIONS) through.
        checked = keys and request.path.startswith("/v1")
        if checked and not (generation.key_scheme_any_case and request.method == "OPTIONS"):
            if not authorized(request.headers.get("Authorization"), keys, vllm_version):
                if request.can_read_body:  # only for the recorder: what the refused request asked for
                    try:
                        request[_BODY] = json.loads(await request.read())
                    except ValueError:
                        pass
                return web.Response(body=_UNAUTHORIZED, status=401, content_type="application/json")
        return await handler(request)

    @web.middleware
    async def api_errors(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:  # routing: FastAPI's {"detail": ...} bodies
            if exc.status not in (404, 405):
                raise
            return _json({"detail": "Not Found" if exc.status == 404 else "Method Not Allowed"}, exc.status)
        except _APIError as exc:
            return _json(generation.error_body(exc.status, exc.message, exc.err_type, exc.param), exc.status)

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        # Runs before the first response byte is sent, so a client that has its answer
        # always finds the record.  list.append is atomic under the GIL: safe across threads.
        if recorder is not None:
            body = request.get(_BODY)
            recorder.append(RecordedRequest(request.method, request.path, request.headers.get("Authorization"),
                                            response.status, tuple(sorted(body)) if isinstance(body, dict) else (),
                                            body.get("max_tokens") if isinstance(body, dict) else None, body))

    ep = _Endpoints(model, max_model_len, vllm_version, reject_unknown_fields, done_delay, chat_template)
    app = web.Application(middlewares=[authentication, api_errors])
    # aiohttp 3.8 parametrises aiosignal's Signal with the callback's type, aiosignal 1.4 with its arguments' types
    app.on_response_prepare.append(record)  # type: ignore[arg-type]
    app.router.add_get("/health", ep.health)
    app.router.add_get("/metrics", ep.metrics)
    if generation.version_endpoint:
        app.router.add_get("/version", ep.version_info)
    app.router.add_get("/v1/models", ep.models)
    app.router.add_post("/v1/chat/completions", ep.chat)
    app.router.add_post("/v1/completions", ep.completions)
    return app


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _describe_keys(api_keys: Sequence[str], vllm_version: str) -> str:
    keys = [k for k in api_keys if k]
    if not keys:
        return f"vLLM {vllm_version}, no API key (open server)"
    return f"vLLM {vllm_version}, keys " + ", ".join(mask(k) for k in keys)


class VLLMServer:
    """The emulator on a background thread with its own event loop (tests, demo).

    ``chat_template`` defaults to ``"llama-2-chat"``, a model whose template takes MetaGPT's system + user
    messages, so a test that is not about chat templates tests what it says; ``"none"`` is the seed's model as
    published (and the ``serve`` command's default).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_keys: Sequence[str] = (),
                 model: str = DEFAULT_MODEL, max_model_len: int = 4096, vllm_version: str = DEFAULT_VERSION,
                 reject_unknown_fields: bool = False, done_delay: float = 0.0,
                 chat_template: str = "llama-2-chat") -> None:
        self.host, self.port, self.model = host, port, model
        self.max_model_len, self.vllm_version, self.chat_template = max_model_len, vllm_version, chat_template
        self._recorded: list[RecordedRequest] = []
        self._app = build_app(api_keys=api_keys, model=model, max_model_len=max_model_len, vllm_version=vllm_version,
                              reject_unknown_fields=reject_unknown_fields, done_delay=done_delay,
                              chat_template=chat_template, recorder=self._recorded)  # validates arguments early
        self._banner = _describe_keys(api_keys, vllm_version)
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self._recorded)

    def clear_requests(self) -> None:
        self._recorded.clear()

    def start(self) -> VLLMServer:
        """Return once the socket listens; a bind error is raised here, not lost in the thread."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("server already started")
            started = threading.Event()
            failure: list[BaseException] = []
            self._thread = threading.Thread(target=self._run, args=(started, failure),
                                            name="vllm-emulator", daemon=True)
            self._thread.start()
            started.wait()
            if failure:
                self._thread.join()
                self._thread = None
                raise failure[0]
        return self

    def _run(self, started: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._app, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, self.host, self.port).start())
            self.port = runner.addresses[0][1]
            self._loop = loop
            log.info("vLLM emulator listening on %s (model %s, %s)", self.url, self.model, self._banner)
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            failure.append(exc)
            loop.run_until_complete(runner.cleanup())
            loop.close()
            started.set()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        """Idempotent; returns after the port is closed and the loop is gone."""
        with self._lock:
            thread, loop = self._thread, self._loop
            self._thread = self._loop = None
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def serve(*, host: str = "127.0.0.1", port: int = 8000, api_keys: Sequence[str] = (),
                model: str = DEFAULT_MODEL, max_model_len: int = 4096, vllm_version: str = DEFAULT_VERSION,
                reject_unknown_fields: bool = False, chat_template: str = "none",
                ready: Optional[Callable[[str], None]] = None,
                recorder: Optional[list[RecordedRequest]] = None) -> None:
    """Serve until cancelled, then close the socket; ``ready(url)`` is called once listening.

    ``recorder`` receives every answered request (see :func:`build_app`); the ``serve`` command prints them.
    ``chat_template`` defaults to ``"none"``: the seed's model as published has no chat template.
    """
    app = build_app(api_keys=api_keys, model=model, max_model_len=max_model_len, vllm_version=vllm_version,
                    reject_unknown_fields=reject_unknown_fields, chat_template=chat_template, recorder=recorder)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        url = _url(host, runner.addresses[0][1])
        log.info("vLLM emulator listening on %s (model %s, %s)", url, model, _describe_keys(api_keys, vllm_version))
        if ready is not None:
            ready(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(**kwargs: Any) -> None:
    """Blocking :func:`serve` that exits cleanly on Ctrl-C or SIGTERM."""

    async def main() -> None:
        task = asyncio.ensure_future(serve(**kwargs))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, task.cancel)
            except (NotImplementedError, RuntimeError):  # Windows / not the main thread
                pass
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # where signal handlers could not be installed
        pass
