"""The ``formats`` fix: an answer MetaGPT cannot parse is asked for once more, constrained to the shape MetaGPT
parses, inside the same attempt -- so MetaGPT's own retries of the same prompt never start.

MetaGPT 0.7 asks for its formats in words only (``parse_sites``: ``[CONTENT]`` JSON for every ActionNode fill, a
JSON task list for the Data Interpreter's plan) and asks the same prompt again when the model does not comply: six
times, then ``RetryError`` (WritePRD, WriteDesign, WriteTasks), or four plans and an exception (the Data
Interpreter). Small and base models rarely comply (CONTEXT.md §16). Every vLLM since 0.3.3 can constrain an answer
to a JSON schema.

How, for one ``llm.aask`` of a site the table knows (found on the asking task's stack; any other ask passes as it
is): the ask goes as MetaGPT sent it, and MetaGPT streams and prints the answer as ever. The fix then reads it with
the site's own parse (MetaGPT's functions, from the site's own module); only if that raises does it ask once more,
through MetaGPT's own ``aask``: this fix's wrapper of the client's ``create`` then tells the model the shape (in the
system message), constrains the answer to it with the server's structured-output field (``constrained``), bounded
so that it closes inside the budget (``json_bounds``), and writes it back as the text MetaGPT's parser reads
(``[CONTENT]``...``[/CONTENT]``, a fenced block, markdown sections) -- streamed, so that what MetaGPT prints is what
it gets, and usage is counted for both answers. A constrained answer cut at ``max_tokens`` is asked for once more
with the bounds the server's room allows.

Two asks are constrained from the first time, because their free answer is known to be wasted: one that the
``chat_template`` fix answers through ``/v1/completions`` (the model has no chat template: a base model, whose free
answer runs to ``max_tokens``), and every ask when ``METAGPT_VLLM_FIX_FORMATS=first``. A model that follows the
format costs nothing: one request, no structured-output field. Where the server cannot constrain (it refuses every
field, or the schema), MetaGPT gets the answer it could not parse, as shipped, and one warning names the remedy.
Nothing is kept from one ask to the next.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional

from .. import constrained, function_calls, json_bounds, parse_sites
from . import REROUTE, Once, RequestFix, Target, copy_model, innermost, server_of, usage_counts

log = logging.getLogger("metagpt_vllm_fix")

FIX_NAME = "formats"  # every record this fix logs carries extra={"fix": FIX_NAME}: the doctor says which fix acted
ENV = "METAGPT_VLLM_FIX_FORMATS"  #: "first": constrain every known ask from the first time; else after a failure
_CHARS_PER_TOKEN = 2  #: how the added instructions are counted against the room (few characters per token: JSON)
_said = Once()


def first_ask_constrained() -> bool:
    """``METAGPT_VLLM_FIX_FORMATS=first``: every ask of a known site is constrained from the first time."""
    return os.environ.get(ENV, "").strip().lower() == "first"


@dataclass
class Asking:
    """One ask of a known site, while it lasts (a context variable of the asking task; nothing outlives it)."""

    asked: parse_sites.Asked
    constrain: bool  #: the next request of this ask goes constrained
    server: str = ""
    model: str = ""
    fields: Optional[tuple[str, ...]] = None  #: the structured-output fields to send (None: not asked yet)
    constraint: Optional[constrained.Constraint] = None  #: what the last constrained request was held to
    constrained: bool = False  #: the last answer was constrained
    cut: bool = False  #: ... and cut at max_tokens
    room: Optional[int] = None  #: tokens the server gave the last answer that was cut (its room then)
    bounds: Optional[json_bounds.Bounds] = None


_asking: ContextVar[Optional[Asking]] = ContextVar("metagpt_vllm_fix_formats", default=None)


def _say_once(key: tuple[Any, ...], message: str, *args: Any) -> None:
    if _said.first(key):
        log.warning(message, *args, extra={"fix": FIX_NAME})
    else:
        log.info(message.split(" Remedy:")[0], *args, extra={"fix": FIX_NAME})


def remedy() -> str:
    return (f"serve a model that follows MetaGPT's formats, or set {ENV}=first to constrain them from the first ask "
            "(no unparseable answer is generated then)")


def one_line(exc: BaseException) -> str:
    """``JSONDecodeError: Expecting value: line 1 column 1 (char 0)``: an exception in one line, for a log."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


def _problem(asking: Asking, text: Any) -> Optional[str]:
    """Why MetaGPT's own parse of this site fails on ``text`` (its exception, in a line), or None when it parses."""
    try:
        asking.asked.parse(text if isinstance(text, str) else "")
    except Exception as exc:  # noqa: BLE001  (whatever MetaGPT's parse raises is what MetaGPT would raise)
        return one_line(innermost(exc))
    return None


async def answer_in_shape(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                          kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``OpenLLM.aask``: a known site's ask, and -- only when MetaGPT cannot parse the answer -- the
    same ask once more, constrained to the site's shape."""
    asked = parse_sites.asked_by(sys._getframe(1)) if _asking.get() is None else None
    if asked is None:
        return await wrapped(*args, **kwargs)
    asking = Asking(asked, constrain=first_ask_constrained())
    if asking.constrain and _said.first(("first", asked.site.name)):
        log.info("formats: %s=first: %s is constrained to its shape from the first ask (and every other ask of "
                 "its kind in this process).", ENV, asked.label, extra={"fix": FIX_NAME})
    token = _asking.set(asking)
    try:
        text = await wrapped(*args, **kwargs)
        for _ in range(2):  # a constrained ask; one more only when it was cut and the server's room is known
            problem = _problem(asking, text)
            if problem is None:
                return text
            if asking.constrained and not (asking.cut and asking.room):
                return text  # MetaGPT's own parse and retries take it from here
            if asking.constrained:
                log.info("formats: %s's constrained answer was cut at max_tokens after %s tokens (%s); asked once "
                         "more, bounded for that room.", asked.label, asking.room,
                         asking.bounds.describe() if asking.bounds else "", extra={"fix": FIX_NAME})
            else:
                _say_once((asking.server, asking.model, "unparsed"),
                          "formats: %s answered %s in a form MetaGPT cannot parse (%s); asked once more, "
                          "constrained to that shape, within MetaGPT's attempt. Remedy: %s.", asking.model,
                          asked.label, problem, remedy())
            asking.constrain = True
            try:
                text = await wrapped(*args, **kwargs)
            except constrained.CannotConstrain as exc:
                _say_once((asking.server, asking.model, "cannot"),
                          "formats: %s cannot constrain answers (%s); MetaGPT gets the answer it could not parse "
                          "and goes on as shipped. Remedy: a vLLM server (0.3.3 or later constrains answers to a "
                          "JSON schema), or %s.", asking.server, str(exc)[:200], remedy())
                return text
        return text
    finally:
        _asking.reset(token)


# --- the client's create: constrain, write back ----------------------------------------------------------------

def _instructions(asking: Asking, schema: dict[str, Any]) -> str:
    kind = "list" if schema.get("type") == "array" else "object"
    bounds = asking.bounds
    limit = f" Keep {bounds.describe()}." if bounds is not None else ""
    return (f"Answer with one JSON {kind} and nothing else: no [CONTENT] tags, no code fence, no other text. It "
            f"follows this JSON schema: {json.dumps(json_bounds.compact(schema), ensure_ascii=False)}.{limit} "
            + json_bounds.how_to_write(asking.asked.loose))


def _budget(asking: Asking, kwargs: dict[str, Any]) -> int:
    """The tokens a constrained answer must fit: the request's, or what the server gave a cut answer."""
    budget = constrained.budget(kwargs)
    return min(budget, asking.room) if asking.room else budget


def constrained_request(asking: Asking, kwargs: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The request as MetaGPT sent it, told the shape and constrained to it (bounded for its budget)."""
    budget = _budget(asking, kwargs)
    schema, asking.bounds = json_bounds.bound(asking.asked.schema, budget)
    told = _instructions(asking, schema)
    if asking.room:  # the room was measured for the prompt without these words: leave them their share
        schema, asking.bounds = json_bounds.bound(asking.asked.schema, max(budget - len(told) // _CHARS_PER_TOKEN, 1))
        told = _instructions(asking, schema)
    extra = kwargs["extra_body"] if isinstance(kwargs.get("extra_body"), dict) else {}
    asking.constraint = constrained.Constraint.of(schema, fields, loose=asking.asked.loose)
    asking.constrained, asking.cut = True, False
    return {**kwargs, "messages": function_calls.told(kwargs["messages"], told),
            "extra_body": {**extra, **asking.constraint.body()}}


def _shapeable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return (not args and isinstance(kwargs.get("messages"), list) and kwargs.get("n") in (None, 1)
            and not any(name in kwargs for name in function_calls.FUNCTION_CALL_FIELDS)
            and (kwargs.get("extra_body") is None or isinstance(kwargs.get("extra_body"), dict)))


async def shape_request(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``chat.completions.create``: within a known site's ask, the request as MetaGPT sent it (a
    reroute to ``/v1/completions`` constrained from the first time) or, when the ask says so, constrained."""
    asking = _asking.get()
    if asking is None or not _shapeable(args, kwargs):
        return await wrapped(*args, **kwargs)
    asking.server, asking.model = server_of(wrapped, instance), str(kwargs.get("model"))

    async def fields() -> tuple[str, ...]:
        if asking.fields is None:
            asking.fields = constrained.fields_for(await constrained.server_generation(instance, wrapped,
                                                                                       asking.server))
        return asking.fields

    stream = bool(kwargs.get("stream"))

    def in_pieces(request: dict[str, Any]) -> dict[str, Any]:
        """Streamed even when MetaGPT asked for one piece: the timeout is then a wait between two tokens."""
        return request if stream else constrained.streamed(request)

    async def on_reroute(rerouted: dict[str, Any]) -> dict[str, Any]:
        """chat_template answers this ask through /v1/completions: the model has no template (a base model)."""
        if asking.constrain:
            return rerouted
        _say_once((asking.server, asking.model, "base"),
                  "formats: %s has no chat template for %s, so MetaGPT's formatted asks (%s) are constrained from "
                  "the first ask there (a base model's free answer runs to max_tokens).", asking.server,
                  asking.model, asking.asked.label)
        asking.constrain = True
        return in_pieces(constrained_request(asking, rerouted, await fields()))

    while True:
        try:
            if asking.constrain:
                answer = await wrapped(**in_pieces(constrained_request(asking, kwargs, await fields())))
            else:
                token = REROUTE.set(on_reroute)
                try:
                    answer = await wrapped(**kwargs)
                finally:
                    REROUTE.reset(token)
            break
        except Exception as exc:
            if not asking.constrain or asking.constraint is None:
                raise
            left = asking.constraint.after(exc)
            if left is None:
                raise
            asking.fields = left.fields
    if not asking.constrained:
        return _Observed(answer, asking) if stream else _noted(answer, asking)
    if stream:
        return _Shaped(answer, asking)
    return (await constrained.collect(_Shaped(answer, asking))).answer


def _noted(answer: Any, asking: Asking) -> Any:
    """A whole (non-streamed) answer, its finish and length noted for the ask."""
    choices = getattr(answer, "choices", None) or []
    usage = getattr(answer, "usage", None)
    _note(asking, getattr(choices[0], "finish_reason", None) if choices else None,
          getattr(usage, "completion_tokens", None))
    return answer


def _note(asking: Asking, finish: Optional[str], completion_tokens: Optional[int]) -> None:
    if finish == "length":
        asking.cut = True
        asking.room = completion_tokens if isinstance(completion_tokens, int) and completion_tokens > 0 else None


def _chunk_usage(chunk: Any) -> Optional[int]:
    counts = usage_counts(getattr(chunk, "usage", None))
    return counts[1] if counts is not None else None


class _Observed:
    """A free answer's stream, unchanged; read to its end, its finish and length are noted for the ask."""

    def __init__(self, stream: Any, asking: Asking) -> None:
        self._stream, self._asking = stream, asking
        self.response = getattr(stream, "response", None)

    def __aiter__(self) -> Any:
        return self._chunks()

    async def _chunks(self) -> Any:
        finish, tokens = None, None
        async for chunk in self._stream:
            for choice in getattr(chunk, "choices", None) or []:
                finish = getattr(choice, "finish_reason", None) or finish
            tokens = _chunk_usage(chunk) or tokens
            yield chunk
        _note(self._asking, finish, tokens)

    async def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            await close()


class _Shaped(_Observed):
    """A constrained answer's stream as MetaGPT's parser reads it: the site's prefix before the first chunk, its
    suffix after the chunk that finishes the answer -- or, where the site's text is rendered from the whole JSON
    (markdown sections), that text in one piece when the answer finishes. Every other chunk (usage) passes as is."""

    async def _chunks(self) -> Any:
        asking, asked = self._asking, self._asking.asked
        finish: Optional[str] = None
        tokens: Optional[int] = None
        texts: list[str] = []
        started = ended = False
        async for chunk in self._stream:
            choices = getattr(chunk, "choices", None) or []
            finishing = not ended and any(getattr(c, "finish_reason", None) for c in choices)
            finish = next((c.finish_reason for c in choices if getattr(c, "finish_reason", None)), finish)
            tokens = _chunk_usage(chunk) or tokens
            if asked.render is not None and not ended and choices:
                texts.extend(getattr(getattr(c, "delta", None), "content", None) or "" for c in choices)
                if finishing:
                    yield _text_chunk(chunk, _rendered(asked, "".join(texts)), role=True)
                    yield _without_text(chunk)
                    ended = True
                continue
            if not started and choices and asked.prefix:
                yield _text_chunk(chunk, asked.prefix, role=True)
            started = started or bool(choices)
            yield chunk
            if finishing:
                ended = True
                if asked.suffix:
                    yield _text_chunk(chunk, asked.suffix)
        _note(asking, finish, tokens)


def _rendered(asked: parse_sites.Asked, text: str) -> str:
    """The constrained JSON written by the site's ``render`` (as it came, if it is not whole JSON)."""
    value = function_calls.parse_arguments(text.strip())
    return asked.render(value) if asked.render is not None and value is not None else text


def _text_chunk(template: Any, text: str, role: bool = False) -> Any:
    """A ``chat.completion.chunk`` carrying ``text``, shaped like ``template`` (id, model)."""
    from openai.types.chat.chat_completion_chunk import ChatCompletionChunk, Choice, ChoiceDelta

    delta = ChoiceDelta.construct(role="assistant", content=text) if role else ChoiceDelta.construct(content=text)
    choice = Choice.construct(index=0, finish_reason=None, logprobs=None, delta=delta)
    return ChatCompletionChunk.construct(id=getattr(template, "id", ""), object="chat.completion.chunk",
                                         created=getattr(template, "created", None) or int(time.time()),
                                         model=getattr(template, "model", ""), choices=[choice])


def _without_text(chunk: Any) -> Any:
    """The finishing chunk with its text taken out (the rendered text carried it already)."""
    from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

    choices = [Choice.construct(index=c.index, finish_reason=c.finish_reason, logprobs=None,
                                delta=ChoiceDelta.construct(content=""))
               for c in chunk.choices]
    return copy_model(chunk, choices=choices)


def forget() -> None:
    _said.clear()


def mode_status() -> str:
    chosen = os.environ.get(ENV, "").strip()
    if first_ask_constrained():
        return f"constrained from the first ask ({ENV}=first)"
    note = f"; {ENV}={chosen[:20]!r} is not 'first'" if chosen else ""
    return f"asked as MetaGPT sent it first{note}"


class FormatsFix(RequestFix):
    name = FIX_NAME
    summary = ("an answer MetaGPT cannot parse (ActionNode fills, the Data Interpreter's plan) is asked for once "
               "more, constrained to the shape MetaGPT parses, within the same attempt")
    upstream = ("an answer out of MetaGPT's format is asked for again with the same prompt: 6 times and RetryError "
                "(ActionNode), 4 plans and an exception (Data Interpreter)")
    call = staticmethod(shape_request)

    def extra_targets(self) -> tuple[Target, ...]:
        return (("OpenLLM", "aask", answer_in_shape),)

    def describe(self) -> str:
        return f"{self.summary}; {mode_status()}"

    def problem(self, module: ModuleType) -> Optional[str]:
        import inspect

        found = super().problem(module)
        if found:
            return found
        aask = inspect.unwrap(getattr(getattr(module, "OpenLLM", None), "aask", None) or (lambda: None))
        if not inspect.iscoroutinefunction(aask) or list(inspect.signature(aask).parameters)[:2] != ["self", "msg"]:
            return "OpenLLM.aask is no longer MetaGPT 0.7's coroutine aask(self, msg, ...)"
        return None

    def forget(self) -> None:
        forget()


FIX = FormatsFix()
