"""The ``usage`` fix: a streamed answer is counted with the server's own token counts, quietly and offline.

MetaGPT 0.7 counts every streamed ``open_llm`` answer with tiktoken (``OpenLLM._calc_usage``): it prints
"Warning: model not found" on stdout each time, downloads cl100k_base with no timeout, and logs an ERROR
offline. vLLM counts exactly, with the served model's own tokenizer, and says so in the stream: on the finish
chunk (0.3) or, asked with ``stream_options.include_usage`` (newer vLLM, 0.10.2+ in our table; openai 1.6 passes
it through ``extra_body``), on a last chunk with no choices. This fix asks for it, watches the stream for it, and
hands it to ``_calc_usage``'s caller. Without it (a server that sends none) ``token_count`` counts locally, never
waiting long. A server that refuses the extra field (its error names it) gets the request again without it,
once, and, when that is answered, not again until a request to it fails (another server may answer at that URL
by then: a restart, an upgrade, a pool). Leaving the field out sends the request exactly as MetaGPT does: only
the count's source can differ, never the answer.
Non-streamed answers already carry the server's usage: untouched.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Callable, Optional

from .. import token_count, wrapping
from . import Once, RequestFix, Target, error_message, refuses_field, server_of, usage_counts

log = logging.getLogger("metagpt_vllm_fix")

FIX_NAME = "usage"  # every record this fix logs carries extra={"fix": FIX_NAME}: the doctor says which fix acted
STREAM_OPTIONS = {"include_usage": True}
_KEEP = 256  # streams whose usage waits for _calc_usage at once; a bound, not a cache

_lock = threading.Lock()
_refusers: set[str] = set()  # servers that answered 400/422 to stream_options, until a request to them fails
_said = Once()  # the servers the log has named as refusing them: once each
# (id(messages), id(task)) -> (messages, counts): the stream is read in the task that then calls _calc_usage, so two
# concurrent streams of the same messages list (two LLMs, or a gather) keep their own counts.
_captured: OrderedDict[tuple[int, int], tuple[Any, tuple[int, int]]] = OrderedDict()


def _key(messages: Any) -> tuple[int, int]:
    try:
        task = id(asyncio.current_task())
    except RuntimeError:  # no running event loop: a synchronous caller
        task = 0
    return id(messages), task


def _record(messages: Any, counts: tuple[int, int]) -> None:
    with _lock:
        _captured[_key(messages)] = (messages, counts)  # the list itself is kept, so its id cannot be reused
        while len(_captured) > _KEEP:
            _captured.popitem(last=False)


def _take(messages: Any) -> Optional[tuple[int, int]]:
    key = _key(messages)
    with _lock:
        entry = _captured.get(key)
        if entry is None or entry[0] is not messages:
            return None
        del _captured[key]
        return entry[1]


def _watcher_class() -> Any:
    """A wrapt proxy class whose iteration notes usage; built once, on first use (wrapt is imported late)."""
    global _WATCHER
    if _WATCHER is None:

        class UsageWatcher(wrapping.wrapt.ObjectProxy):  # type: ignore[misc]
            def __init__(self, stream: Any, messages: Any) -> None:
                super().__init__(stream)
                self._self_messages = messages

            def __aiter__(self) -> Any:
                return self._self_chunks()

            async def _self_chunks(self) -> Any:
                counts = None
                async for chunk in self.__wrapped__:
                    counts = usage_counts(getattr(chunk, "usage", None)) or counts
                    yield chunk
                if counts is not None:  # only a stream read to its end is counted: a cancelled one leaves nothing
                    _record(self._self_messages, counts)

        _WATCHER = UsageWatcher
    return _WATCHER


_WATCHER: Any = None


def _watched(stream: Any, messages: Any) -> Any:
    """The stream, unchanged for its reader; read to its end, it notes the last usage a chunk carried."""
    if wrapping.wrapt is None or messages is None:
        return stream
    return _watcher_class()(stream, messages)


async def ask_for_usage(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``chat.completions.create``: streams ask for usage and are watched for it."""
    if not kwargs.get("stream"):
        return await wrapped(*args, **kwargs)
    server = server_of(wrapped, instance)
    extra = kwargs.get("extra_body")
    if server in _refusers:
        try:
            stream = await wrapped(*args, **kwargs)
        except Exception:
            with _lock:
                _refusers.discard(server)  # asked with the field again next time
            raise
        return _watched(stream, kwargs.get("messages"))
    if (isinstance(extra, dict) and "stream_options" in extra) or (extra is not None and not isinstance(extra, dict)):
        return _watched(await wrapped(*args, **kwargs), kwargs.get("messages"))
    try:
        stream = await wrapped(*args, **{**kwargs, "extra_body": {**(extra or {}), "stream_options": STREAM_OPTIONS}})
    except Exception as exc:
        if not refuses_field(exc, "stream_options"):
            raise
        stream = await wrapped(*args, **kwargs)  # remembered only once the request without the field is answered
        with _lock:
            _refusers.add(server)
        if _said.first(server):
            log.warning("usage: %s refused stream_options (%s); asking it without them until a request to it fails.",
                        server, error_message(exc)[:120], extra={"fix": FIX_NAME})
    return _watched(stream, kwargs.get("messages"))


def use_server_usage(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``OpenLLM._calc_usage(messages, rsp)``: the server's counts, else a quiet local count."""
    messages = kwargs["messages"] if "messages" in kwargs else (args[0] if args else None)
    answer = kwargs["rsp"] if "rsp" in kwargs else (args[1] if len(args) > 1 else "")
    counts = _take(messages)
    config = getattr(instance, "config", None)
    if not getattr(config, "calc_usage", True) or not isinstance(messages, list):
        return wrapped(*args, **kwargs)  # upstream: zeros when calc_usage is off
    from openai.types import CompletionUsage

    if counts is None:
        try:
            prompt, completion, _ = token_count.count(messages, answer if isinstance(answer, str) else "",
                                                      getattr(instance, "model", ""))
        except Exception:  # never expected; upstream's own count then, which logs and counts 0
            log.debug("usage: the local count failed", exc_info=True)
            return wrapped(*args, **kwargs)
        counts = (prompt, completion)
    return CompletionUsage(prompt_tokens=counts[0], completion_tokens=counts[1], total_tokens=sum(counts))


def forget() -> None:
    _said.clear()
    with _lock:
        _refusers.clear()
        _captured.clear()


class UsageFix(RequestFix):
    name = FIX_NAME
    summary = "streamed answers are counted with the server's own usage; no stdout print, no tiktoken download wait"
    upstream = ("every streamed answer prints 'Warning: model not found' and counts with tiktoken, which "
                "downloads with no timeout (offline: an ERROR each call)")
    call = staticmethod(ask_for_usage)

    def extra_targets(self) -> Sequence[Target]:
        return [("OpenLLM", "_calc_usage", use_server_usage)]

    def problem(self, module: ModuleType) -> Optional[str]:
        import inspect

        found = super().problem(module)
        if found:
            return found
        calc = inspect.unwrap(vars(module.OpenLLM).get("_calc_usage", None) or (lambda: None))
        if not inspect.isfunction(calc) or list(inspect.signature(calc).parameters) != ["self", "messages", "rsp"]:
            return "OpenLLM no longer defines _calc_usage(self, messages, rsp) as MetaGPT 0.7 does"
        stream = inspect.unwrap(getattr(getattr(module, "OpenAILLM", None), "_achat_completion_stream", None)
                                or (lambda: None))
        if not inspect.isasyncgenfunction(stream):
            return "OpenAILLM._achat_completion_stream is no longer MetaGPT 0.7's async generator"
        return None

    def forget(self) -> None:
        forget()


FIX = UsageFix()

