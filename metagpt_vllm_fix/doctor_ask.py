"""The doctor's live check: MetaGPT's own chat request, through the provider built from the user's config.

A model list that answers 200 says nothing about chat: a model without a chat template, or one whose template
refuses the system message, fails only on ``/v1/chat/completions``. So the doctor asks the way ``aask`` does
(system + user message, streamed, ``OpenAILLM._achat_completion_stream`` of the provider ``create_llm_instance``
builds, with whatever fixes this environment applies) and reports each HTTP request the client sent with the
server's status (httpx event hooks on the provider's own client) and which fix acted (records of the
``metagpt_vllm_fix`` logger that carry ``extra={"fix": NAME}``). Reading stops at the first streamed token and the
stream is closed, so a real model does not go on generating ``llm.max_token`` tokens; the whole ask is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from .gate import PLACEHOLDER as PLACEHOLDER_KEY
from .masking import show_authorization
from .report import OK, PROBLEM, WARNING

PROMPT = "Say hello."  #: the doctor's question; MetaGPT adds its default system message before it, as aask does
AASK_TIMEOUT = 3  #: aask's own ``timeout`` argument (MetaGPT sends ``max(llm.timeout, 3)``)
SHOWN_CHARS = 40  #: of the first token
LOGGER = "metagpt_vllm_fix"
#: fixes that stand in for something the server should be set up to do (a chat template that takes MetaGPT's
#: messages): an answer through them is a warning. The others' situations have their own rule-based line.
SERVER_SIDE = ("chat_template", "system_role")


@dataclasses.dataclass
class Exchange:
    """One HTTP request the provider's client sent, and the status it got (None: no answer)."""

    method: str
    path: str
    authorization: str  #: as fit for printing: MetaGPT's placeholder in full, a key masked
    max_tokens: Optional[int] = None
    status: Optional[int] = None

    def __str__(self) -> str:
        asked = f", max_tokens {self.max_tokens}" if self.max_tokens is not None else ", no max_tokens"
        got = str(self.status) if self.status is not None else "no answer"
        return f"{self.method} {self.path} ({self.authorization}{asked}) -> {got}"


@dataclasses.dataclass(frozen=True)
class FixNote:
    """A log record a fix emitted while the doctor asked."""

    fix: str
    message: str


@dataclasses.dataclass
class AskResult:
    """What came of asking the server the way MetaGPT does."""

    asked: bool
    answered: bool = False
    first_token: Optional[str] = None  #: the first non-empty piece of the streamed answer
    exchanges: list[Exchange] = dataclasses.field(default_factory=list)
    fixes: list[FixNote] = dataclasses.field(default_factory=list)
    error: Optional[str] = None  #: status, timeout, connect, empty, client, not-asked
    status: Optional[int] = None  #: the HTTP status MetaGPT's call failed with
    message: Optional[str] = None  #: the server's error message, or what went wrong
    seconds: float = 0.0

    @property
    def fixes_acted(self) -> list[str]:
        return list(dict.fromkeys(note.fix for note in self.fixes))

    def as_json(self) -> dict[str, Any]:
        return {"asked": self.asked, "answered": self.answered, "first_token": self.first_token,
                "requests": [dataclasses.asdict(e) for e in self.exchanges],
                "fixes_acted": self.fixes_acted, "fix_messages": [dataclasses.asdict(n) for n in self.fixes],
                "error": self.error, "status": self.status, "message": self.message, "seconds": self.seconds}


def not_asked(why: str) -> AskResult:
    return AskResult(asked=False, error="not-asked", message=why)


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
        max_tokens = None
        try:
            body = json.loads(request.content or b"{}")
            value = body.get("max_tokens") if isinstance(body, dict) else None
            max_tokens = value if isinstance(value, int) and not isinstance(value, bool) else None
        except (ValueError, TypeError, AttributeError):  # a streamed or non-JSON body: nothing to read
            pass
        exchange = Exchange(request.method, request.url.path,
                            show_authorization(request.headers.get("authorization")), max_tokens)
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


def _failure(result: AskResult, exc: BaseException) -> None:
    import openai

    from .vllm_versions import error_fields

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


async def ask_async(llm: Any, recorder: Recorder, seconds: float) -> AskResult:
    """Ask once, bounded by ``seconds``; close every response and the client afterwards."""
    result = AskResult(asked=True)
    hook_client(llm, recorder)
    try:
        await asyncio.wait_for(_read_first_token(llm, result), max(0.05, seconds))
    except asyncio.TimeoutError:
        result.error, result.message = "timeout", f"no answer within {seconds:.3g} s"
    except Exception as exc:  # noqa: BLE001  (whatever MetaGPT's call raises is the finding)
        _failure(result, exc)
    finally:
        for response in list(recorder.responses):  # stops a stream the server is still generating
            with contextlib.suppress(Exception):
                await asyncio.wait_for(response.aclose(), 1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(llm.aclient.close(), 1.0)
    return result


def ask(llm: Any, seconds: float) -> AskResult:
    """Ask the way MetaGPT does through the provider ``llm``, within ``seconds`` (in a daemon thread, so that
    nothing the client does can hold the doctor longer)."""
    recorder = Recorder()
    box: dict[str, Any] = {}
    started = time.monotonic()

    def target() -> None:
        try:
            box["result"] = asyncio.run(ask_async(llm, recorder, seconds))
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


# --- what the answer means (pure) -----------------------------------------------------------------------------


def _unprefixed(note: FixNote) -> str:
    """A fix's message without its own ``name:`` prefix (the line already names the fix)."""
    prefix = note.fix + ": "
    return note.message[len(prefix):] if note.message.startswith(prefix) else note.message


def _sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith(".") else text + "."


def explain(result: AskResult, off: Mapping[str, str], model: str = "") -> str:
    """Why MetaGPT's call got no answer, and the remedy; ``off`` maps each fix not in effect to why."""
    from .vllm_versions import classify_refusal, is_system_role_refusal, is_template_missing

    message = result.message or ""
    if result.error == "timeout":
        return (f"{message}: a model on CPU, or a busy server, may need longer for its first token; try a larger "
                "--timeout, or check the server's log")
    if result.error in ("connect", "client", "empty"):
        return message
    status = result.status
    said = _sentence(f"The server answered {status}: {message}")
    if status == 401:
        sent_placeholder = any(e.authorization.endswith(" " + PLACEHOLDER_KEY) for e in result.exchanges)
        if sent_placeholder:
            why = f" ({off['api_key']})" if "api_key" in off else ""
            return (f"{said} MetaGPT sent its hard-coded 'sk-xxx', not llm.api_key: the api_key fix is not in "
                    f"effect{why}.")
        return f"{said} The server refuses the configured key: see the server line above."
    if status == 404:
        return f"{said} The server does not serve llm.model {model!r}: see the model line above."
    if status == 400 and is_template_missing(message):
        from .chat_layout import choose
        from .fixes.chat_template import remedy

        layout, _ = choose(model)
        why = f" and the chat_template fix is off ({off['chat_template']})" if "chat_template" in off else ""
        return f"{said} {model} has no chat template on this server{why}. Remedy: {remedy(layout)}."
    if status == 400 and is_system_role_refusal(message):
        why = f"; the system_role fix is off ({off['system_role']})" if "system_role" in off else ""
        return (f"{said} {model}'s chat template refuses the system message MetaGPT 0.7 always sends first{why}. "
                "Remedy: serve it with a chat template that accepts a system role, or let the system_role fix fold "
                "the system message into the first user message.")
    refusal = classify_refusal(message) if status == 400 else None
    if refusal is not None and refusal.kind == "max_tokens":
        size = f" (e.g. {max(1, refusal.context // 4)})" if refusal.context else ""
        why = f": the max_tokens fix is off ({off['max_tokens']})" if "max_tokens" in off else ""
        return (f"{said} MetaGPT 0.7 asks for max_tokens = llm.max_token, which does not fit the context{why}. "
                f"Set a smaller llm.max_token{size}.")
    return said


def ask_verdict(result: AskResult, off: Mapping[str, str], model: str = "", note: str = "",
                api_type: str = "open_llm") -> tuple[str, str]:
    """(level, message) of the ``ask`` check: ok only when an answer came back. Continuation lines list each
    request with its status, then what each fix said."""
    what = (f"asked as MetaGPT does (its {api_type} provider from this config, system + user message, streamed"
            + (f"; {note})" if note else ")"))
    details = [f"  {exchange}" for exchange in result.exchanges]
    details += [f"  the {n.fix} fix acted: {_unprefixed(n)}" for n in result.fixes]
    if not result.exchanges:
        details.append("  (no HTTP request was sent)")
    tail = "\n" + "\n".join(details)
    if result.answered:
        if result.first_token:
            got = f"an answer came back, first token {result.first_token!r} (the stream closed after it)"
        else:
            got = "an answer came back (empty)"
        acted = result.fixes_acted
        by = f", through the {' and '.join(acted)} fix{'es' if len(acted) > 1 else ''}" if acted else ""
        needs = [name for name in acted if name in SERVER_SIDE]
        if needs:
            return WARNING, (f"{what}: {got}{by}, in {result.seconds:g} s. Handled, at one refused round trip per "
                             f"request; without the {' and '.join(needs)} fix every request gets 400. The fix's "
                             f"line below says why and what to change on the server.{tail}")
        return OK, f"{what}: {got}{by}, in {result.seconds:g} s{tail}"
    return PROBLEM, f"{what}: no answer. {explain(result, off, model)}{tail}"

