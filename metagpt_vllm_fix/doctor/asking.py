"""The doctor's live ask: MetaGPT's own chat request, through the provider built from the user's config.

A model list that answers 200 says nothing about chat: a model without a chat template, or one whose template
refuses the system message, fails only on ``/v1/chat/completions``. So the doctor asks the way ``aask`` does
(system + user message, streamed, ``OpenAILLM._achat_completion_stream`` of the provider ``create_llm_instance``
builds, with whatever fixes this environment applies) and records each HTTP request the client sent with the
server's status (httpx event hooks on the provider's own client) and which fix acted (records of the
``metagpt_vllm_fix`` logger that carry ``extra={"fix": NAME}``). Reading stops at the first streamed token and the
stream is closed, so a real model does not go on generating ``llm.max_token`` tokens; the whole ask is bounded.
What the answer means is the ``ask`` check's (checks/ask.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, Callable

from ..fixes.api_key import unsendable as unsendable_key
from ..masking import show_authorization
from ..metagpt_env import import_metagpt
from ..vllm_versions import constraining_fields
from .environment import quiet_plugin_log
from .facts import CHAT, AskResult, Exchange, Facts, FixNote, not_asked
from .probe import OPENAI_COMPATIBLE

PROMPT = "Say hello."  #: the doctor's question; MetaGPT adds its default system message before it, as aask does
AASK_TIMEOUT = 3  #: aask's own ``timeout`` argument (MetaGPT sends ``max(llm.timeout, 3)``)
SHOWN_CHARS = 40  #: of the first token
LOGGER = "metagpt_vllm_fix"


class Recorder(logging.Handler):
    """Collects one ask's HTTP exchanges (as httpx event hooks) and the fixes' log records (as a handler)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.exchanges: list[Exchange] = []
        self.fixes: list[FixNote] = []
        self.responses: list[Any] = []  # httpx responses, closed after the first token
        self._by_request: dict[int, Exchange] = {}
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        fix = getattr(record, "fix", None)
        if isinstance(fix, str):
            with self._guard:
                self.fixes.append(FixNote(fix, record.getMessage()))

    async def on_request(self, request: Any) -> None:
        max_tokens, constrained = None, False
        try:
            body = json.loads(request.content or b"{}")
            value = body.get("max_tokens") if isinstance(body, dict) else None
            max_tokens = value if isinstance(value, int) and not isinstance(value, bool) else None
            constrained = isinstance(body, dict) and any(field in body for field in constraining_fields())
        except (ValueError, TypeError, AttributeError):  # a streamed or non-JSON body: nothing to read
            pass
        exchange = Exchange(request.method, request.url.path,
                            show_authorization(request.headers.get("authorization")), max_tokens,
                            constrained=constrained)
        with self._guard:
            self.exchanges.append(exchange)
            self._by_request[id(request)] = exchange

    async def on_response(self, response: Any) -> None:
        with self._guard:
            self.responses.append(response)
            exchange = self._by_request.get(id(response.request))
        if exchange is not None:
            exchange.status = response.status_code


@contextlib.contextmanager
def capture_fix_log(recorder: Recorder) -> Iterator[None]:
    """The plugin's records go to ``recorder`` only (the doctor reports them; nothing reaches stderr)."""
    logger = logging.getLogger(LOGGER)
    saved = logger.disabled, logger.propagate
    logger.disabled, logger.propagate = False, False
    logger.addHandler(recorder)
    try:
        yield
    finally:
        logger.removeHandler(recorder)
        logger.disabled, logger.propagate = saved


def hook_client(llm: Any, recorder: Recorder) -> None:
    """Add the recorder's event hooks to the httpx client the provider's openai client sends with."""
    http = llm.aclient._client
    hooks = http.event_hooks
    http.event_hooks = {"request": [*hooks.get("request", ()), recorder.on_request],
                        "response": [*hooks.get("response", ()), recorder.on_response]}


def messages_of(llm: Any, prompt: str = PROMPT) -> list[dict[str, Any]]:
    """The messages ``BaseLLM.aask(prompt)`` sends: MetaGPT's default system message (unless the provider uses
    no system prompt), then the user message, both built by the provider's own methods."""
    messages = [llm._default_system_msg()] if getattr(llm, "use_system_prompt", True) else []
    return [*messages, llm._user_msg(prompt)]


def note_failure(result: AskResult, exc: BaseException) -> None:
    import openai

    from ..vllm_versions import error_fields

    if isinstance(exc, openai.APIStatusError):
        message = exc.body if isinstance(exc.body, str) else error_fields(exc.body).get("message")
        if not isinstance(message, str) or not message:  # (openai keeps vLLM's {"error": "Unauthorized"} as the str)
            message = str(exc)
        result.error, result.status = "status", exc.status_code
        result.message = message
    elif isinstance(exc, openai.APITimeoutError):
        result.error, result.message = "timeout", "the client's own timeout expired"
    elif isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        result.error = "connect"
        result.message = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
    else:
        result.error, result.message = "client", f"{type(exc).__name__}: {exc}"


async def _read_first_token(llm: Any, result: AskResult) -> None:
    stream = llm._achat_completion_stream(messages_of(llm), timeout=AASK_TIMEOUT)
    chunks = 0
    try:
        async for piece in stream:
            chunks += 1
            if piece:
                result.first_token = piece[:SHOWN_CHARS]
                break
    finally:
        await stream.aclose()
    result.answered = chunks > 0
    if not chunks:
        result.error, result.message = "empty", "the server's stream ended without a single chunk"


Call = Callable[[Any, AskResult], Awaitable[None]]  #: one MetaGPT request through the provider, noting the answer


async def ask_async(llm: Any, recorder: Recorder, seconds: float, call: Call = _read_first_token) -> AskResult:
    """Ask once, bounded by ``seconds``; close every response and the client afterwards."""
    result = AskResult(asked=True)
    hook_client(llm, recorder)
    try:
        await asyncio.wait_for(call(llm, result), max(0.05, seconds))
    except asyncio.TimeoutError:
        result.error, result.message = "timeout", f"no answer within {seconds:.3g} s"
    except Exception as exc:  # noqa: BLE001  (whatever MetaGPT's call raises is the finding)
        note_failure(result, exc)
    finally:
        for response in list(recorder.responses):  # stops a stream the server is still generating
            with contextlib.suppress(Exception):
                await asyncio.wait_for(response.aclose(), 1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(llm.aclient.close(), 1.0)
    return result


def ask(llm: Any, seconds: float, call: Call = _read_first_token) -> AskResult:
    """Ask the way MetaGPT does through the provider ``llm`` (``call``: aask's streamed chat request unless told),
    within ``seconds`` (in a daemon thread, so that nothing the client does can hold the doctor longer)."""
    recorder = Recorder()
    box: dict[str, Any] = {}
    started = time.monotonic()

    def target() -> None:
        try:
            box["result"] = asyncio.run(ask_async(llm, recorder, seconds, call))
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    with capture_fix_log(recorder):
        thread = threading.Thread(target=target, name="doctor-ask", daemon=True)
        thread.start()
        thread.join(seconds + 1.5)
    result: AskResult = box.get("result") or AskResult(asked=True)
    if thread.is_alive():
        result.error, result.message = "timeout", f"no answer within {seconds:.3g} s"
    elif "error" in box:
        result.error, result.message = "client", f"{type(box['error']).__name__}: {box['error']}"
    result.exchanges, result.fixes = list(recorder.exchanges), list(recorder.fixes)
    result.seconds = round(time.monotonic() - started, 2)
    return result


def gather_ask(facts: Facts, scratch: Path, deadline: float) -> Facts:
    """``asks["chat"]``: MetaGPT's own request, with the provider built as MetaGPT builds it and the fixes as this
    environment applies them (none when automatic activation is off: that is what the `metagpt` command gets)."""
    if facts.config is None:
        return facts
    return dataclasses.replace(facts, asks={**facts.asks, CHAT: _ask_chat(facts, scratch, deadline)})


def _ask_chat(facts: Facts, scratch: Path, deadline: float) -> AskResult:
    return ask_through_provider(facts, scratch, deadline, _read_first_token)


def shortened(value: Any, chars: int) -> str:
    """What MetaGPT read, as JSON, at most ``chars`` characters (an ellipsis where cut)."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= chars else text[:chars] + "…"


def gather_after_chat(facts: Facts, scratch: Path, deadline: float, call: Call, name: str,
                      modules: tuple[str, ...] = ()) -> Facts:
    """``asks[name]``: one more of MetaGPT's requests, ``call``, through the provider as for the chat ask -- not sent
    when MetaGPT's chat request got no answer (it would meet the same wall, and the ask line says which).
    ``modules``: MetaGPT's modules ``call`` needs, imported first."""
    if facts.config is None:
        return facts
    chat = facts.asks.get(CHAT)
    if chat is not None and chat.asked and not chat.answered:
        result = not_asked("MetaGPT's chat request got no answer (the ask line says why)")
    else:
        if modules:
            with quiet_plugin_log():
                import_metagpt(scratch, list(modules))
        result = ask_through_provider(facts, scratch, deadline, call)
    return dataclasses.replace(facts, asks={**facts.asks, name: result})


def ask_through_provider(facts: Facts, scratch: Path, deadline: float, call: Call) -> AskResult:
    """``call`` through MetaGPT's provider built from the config as MetaGPT builds it, with the fixes as this
    environment applies them, within what is left of ``deadline``; why not, when it cannot be asked."""
    config = facts.config
    assert config is not None
    if config.api_type not in OPENAI_COMPATIBLE:
        return not_asked(f"api_type {config.api_type} is not an OpenAI-compatible provider")
    if config.api_type != "open_llm" and unsendable_key(config.api_key):  # open_llm sends 'sk-xxx' instead
        return not_asked("llm.api_key cannot travel in an HTTP header")
    if facts.server is None or not facts.server.reachable:
        return not_asked("the server did not answer the model list")
    seconds = deadline - time.monotonic()
    if seconds < 0.1:
        return not_asked("--timeout was used up by the checks before")
    st = facts.status
    plain = config.api_type == "open_llm" and st is not None and st.code in ("supported", "removed") \
        and not st.automatic
    note = "no fix, as the `metagpt` command here: automatic activation is off" if plain else ""
    from .. import apply, remove

    try:
        with quiet_plugin_log():
            import_metagpt(scratch, ["metagpt.provider"])
            if plain:
                remove()
            from metagpt.provider.llm_provider_registry import create_llm_instance

            try:
                provider = create_llm_instance(config.llm)
            except Exception as exc:  # noqa: BLE001  (the provider check reports it)
                return not_asked(f"the provider cannot be built: {type(exc).__name__}", note)
            # Each ask is told what a fresh MetaGPT process is told: the fixes' once-per-server warnings, which an
            # earlier ask of this doctor already drew, are forgotten, so every fix that acts says so under its line.
            from ..fixes import all_fixes

            for fix in all_fixes():
                fix.forget()
        return dataclasses.replace(ask(provider, seconds, call), note=note)
    finally:
        if plain:
            with quiet_plugin_log():
                apply()
