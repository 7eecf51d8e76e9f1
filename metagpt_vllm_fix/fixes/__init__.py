"""The fixes, one module each, all of one small shape (OpenTelemetry's instrumentors are the model).

A fix names what it wraps in MetaGPT 0.7's ``metagpt.provider.open_llm_api``, checks that the code there is
still the code it was written for (its gate), and wraps and unwraps symmetrically and idempotently. The
activation (``_activation.py``) applies and removes them together; ``METAGPT_VLLM_FIX_DISABLE`` names the ones
to leave off.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Awaitable, Hashable, Iterator, Sequence
from contextvars import ContextVar
from types import ModuleType
from typing import Any, Callable, Optional

from .. import wrapping

Target = tuple[str, str, wrapping.Wrapper]  # (class name in the module, attribute, our wrapper)

#: What an outer fix does to a request that ``chat_template`` is about to answer through ``/v1/completions`` (the
#: model has no chat template): set by that fix around its own request, for that request only. ``formats`` uses it
#: to constrain such an ask from the first time (a base model's free answer runs to max_tokens).
REROUTE: ContextVar[Optional[Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]] = ContextVar(
    "metagpt_vllm_fix_reroute", default=None)


class Once:
    """What a fix has already said in this process (one warning per server and model, say). Nothing kept here steers
    a request; ``clear()`` when the fix forgets."""

    def __init__(self) -> None:
        self._said: set[Hashable] = set()
        self._lock = threading.Lock()

    def first(self, key: Hashable) -> bool:
        """True the first time ``key`` comes, False every time after."""
        with self._lock:
            if key in self._said:
                return False
            self._said.add(key)
            return True

    def clear(self) -> None:
        with self._lock:
            self._said.clear()


class Fix:
    """Base of every fix: ``targets`` are wrapped on apply and unwrapped on remove, nothing else is touched."""

    name: str = ""  #: the name users switch it by (METAGPT_VLLM_FIX_DISABLE)
    summary: str = ""  #: one line: what the user gets
    upstream: str = ""  #: one line: what MetaGPT 0.7 does without it

    def __init__(self) -> None:
        # Every (owner, attribute, wrapper) this fix wrapped, weakly: after importlib.reload() the module holds new
        # classes, but instances of the old ones (IPython's autoreload, test runners) still use theirs.
        self._wrapped: list[tuple[weakref.ref[Any], str, wrapping.Wrapper]] = []

    def targets(self) -> Sequence[Target]:
        raise NotImplementedError

    def describe(self) -> str:
        """The status line of an active fix: its summary, plus what it decides at run time (if anything)."""
        return self.summary

    def problem(self, module: ModuleType) -> Optional[str]:
        """Why this fix does not fit the imported module (its gate), or None when it does."""
        for class_name, attribute, _ in self.targets():
            cls = getattr(module, class_name, None)
            if not isinstance(cls, type):
                return f"{module.__name__} has no class {class_name}"
            if not callable(getattr(cls, attribute, None)):
                return f"{class_name} has no method {attribute}"
        return None

    def idle(self, module: ModuleType) -> Optional[str]:
        """Why this fix has nothing to do in this environment (it is then not applied), or None."""
        return None

    def forget(self) -> None:
        """Drop what the fix said and learnt in this process (a subclass's state), so it starts afresh."""

    def _owners(self, module: ModuleType) -> Sequence[tuple[Any, str, wrapping.Wrapper]]:
        return [(getattr(module, c, None), a, w) for c, a, w in self.targets()]

    def is_applied(self, module: Optional[ModuleType]) -> bool:
        """Every target of this fix carries our wrapper."""
        if module is None:
            return False
        return all(isinstance(owner, type) and wrapping.is_wrapped(owner, attribute, wrapper)
                   for owner, attribute, wrapper in self._owners(module))

    def apply(self, module: ModuleType) -> None:
        """Wrap every target (idempotent); on a failure, nothing of this fix stays applied."""
        try:
            for owner, attribute, wrapper in self._owners(module):
                wrapping.wrap(owner, attribute, wrapper)
                if not any(ref() is owner and (a, w) == (attribute, wrapper) for ref, a, w in self._wrapped):
                    self._wrapped.append((weakref.ref(owner), attribute, wrapper))
        except BaseException:
            self.remove(module)
            raise

    def remove(self, module: Optional[ModuleType]) -> bool:
        """Unwrap every target, and every class this fix ever wrapped (idempotent); True when something was."""
        owners = [(ref(), attribute, wrapper) for ref, attribute, wrapper in self._wrapped]
        self._wrapped = []
        if module is not None:
            owners += self._owners(module)
        removed = False
        for owner, attribute, wrapper in owners:
            if isinstance(owner, type):
                removed = wrapping.unwrap(owner, attribute, wrapper) or removed
        return removed


class RequestFix(Fix):
    """A fix on every chat-completion request an ``OpenLLM`` makes: ``aask`` streamed or not, function calls.

    All of them go through ``self.aclient.chat.completions.create(...)``. ``OpenLLM._init_client`` is wrapped so
    that each new client's ``create`` (an instance attribute, nothing shared with other providers) carries
    ``call``; ``remove()`` takes those off again too.
    """

    CLIENT_INIT = ("OpenLLM", "_init_client")

    def __init__(self) -> None:
        super().__init__()
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._applied = False
        self.on_init_client = self._make_init_wrapper()  # one function object, so wrapping can recognise it

    @staticmethod
    async def call(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The wrapper of ``create``: a subclass's job."""
        raise NotImplementedError

    def extra_targets(self) -> Sequence[Target]:
        return ()

    def targets(self) -> Sequence[Target]:
        return [(*self.CLIENT_INIT, self.on_init_client), *self.extra_targets()]

    def _make_init_wrapper(self) -> wrapping.Wrapper:
        fix = self

        def wrap_new_client(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                            kwargs: dict[str, Any]) -> Any:
            result = wrapped(*args, **kwargs)
            completions = getattr(getattr(getattr(instance, "aclient", None), "chat", None), "completions", None)
            if callable(getattr(completions, "create", None)):
                with fix._lock:
                    if fix._applied:  # a remove() that ran while this client was built leaves it alone
                        wrapping.wrap(completions, "create", type(fix).call)
                        fix._clients.add(completions)
            return result

        wrap_new_client.__qualname__ = f"{type(self).__name__}.wrap_new_client"
        return wrap_new_client

    def apply(self, module: ModuleType) -> None:
        with self._lock:
            self._applied = True
        super().apply(module)

    def remove(self, module: Optional[ModuleType]) -> bool:
        removed = super().remove(module)
        with self._lock:
            self._applied = False
            for completions in list(self._clients):
                removed = wrapping.unwrap(completions, "create", type(self).call) or removed
            self._clients = weakref.WeakSet()
        self.forget()
        return removed


def server_of(wrapped: Any, instance: Any) -> str:
    """The base URL a ``create`` call goes to (instance of AsyncCompletions, or the bound method's owner)."""
    owner = instance if instance is not None else getattr(wrapped, "__self__", None)
    url = getattr(getattr(owner, "_client", None), "base_url", None)
    if url is None:
        return ""
    if getattr(url, "userinfo", b""):  # never keep (or log) a password given in the URL
        url = url.copy_with(username=None, password=None)
    return str(url)


def status_code(exc: BaseException) -> Optional[int]:
    """The HTTP status of an openai ``APIStatusError`` (duck-typed: openai is imported by MetaGPT, not by us)."""
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def error_message(exc: BaseException) -> str:
    """The server's own error message from an openai ``APIStatusError``, in any vLLM body shape."""
    from ..vllm_versions import error_fields

    message = error_fields(getattr(exc, "body", None)).get("message")
    return message if isinstance(message, str) else str(exc)


def retry_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what each tenacity ``RetryError`` in turn ended on (MetaGPT nests its loops: the JSON parse's
    inside ``_aask_v1``'s), a few levels at most (duck-typed: tenacity is MetaGPT's)."""
    for _ in range(8):
        yield exc
        attempt = getattr(exc, "last_attempt", None)
        try:
            inner = attempt.exception() if attempt is not None and getattr(attempt, "failed", False) else None
        except Exception:  # noqa: BLE001  (a cancelled attempt: nothing further in)
            return
        if not isinstance(inner, BaseException):
            return
        exc = inner


def innermost(exc: BaseException) -> BaseException:
    """What a tenacity ``RetryError`` ended on, or ``exc`` itself (:func:`retry_chain`'s last)."""
    *_, last = retry_chain(exc)
    return last


def usage_counts(usage: Any) -> Optional[tuple[int, int]]:
    """(prompt, completion) tokens from a usage dict (openai 1.6 keeps a chunk's unknown ``usage`` raw) or object,
    or None when either count is missing."""
    get: Callable[[str], Any] = usage.get if isinstance(usage, dict) else (lambda name: getattr(usage, name, None))
    prompt, completion = get("prompt_tokens"), get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return None


def copy_model(model: Any, **update: Any) -> Any:
    """A pydantic model (openai's types, pydantic 1 or 2) with some fields replaced; the original is untouched."""
    copy = getattr(model, "model_copy", None) or model.copy
    return copy(update=update)


def _names_field(field: Any, name: str) -> bool:
    """``"name"``, ``"body.name"``, ``["body", "name", ...]``: an error's field that is ``name``."""
    parts = field.split(".") if isinstance(field, str) else field if isinstance(field, (list, tuple)) else ()
    return name in parts


def refuses_field(exc: BaseException, name: str) -> bool:
    """A 400/422 whose error names the request field ``name``: a server that does not take that field.

    Decided by the field the error names (``param``, as vLLM's bodies do, or FastAPI's ``detail[].loc``), not by
    the word anywhere in the body: servers that echo the request in a validation error would otherwise look like
    refusing it. Only an error naming no field at all is judged by its message (not by the echoed input).
    """
    if status_code(exc) not in (400, 422):
        return False
    from ..vllm_versions import error_fields

    body = getattr(exc, "body", None)
    fields = error_fields(body)
    details = body.get("detail") if isinstance(body, dict) else None
    details = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
    named = [f for f in (fields.get("param"), fields.get("loc"), *(d.get("loc") for d in details)) if f]
    if named:
        return any(_names_field(field, name) for field in named)
    messages = [error_message(exc), *(str(d.get("msg", "")) for d in details)]
    return any(name in message for message in messages)


def mentions(function: Any, text: str) -> bool:
    """True when ``text`` is among the function's constants (dict keys sit in a tuple there, so look inside)."""
    import inspect

    code = getattr(inspect.unwrap(function), "__code__", None) if callable(function) else None
    pending = list(code.co_consts) if code is not None else []
    while pending:
        const = pending.pop()
        if const == text:
            return True
        if isinstance(const, tuple):
            pending.extend(const)
    return False


def all_fixes() -> tuple[Fix, ...]:
    """Every fix, in the order of NAMES (how status lists them; imported here so nothing loads before it is needed)."""
    from . import api_key, chat_template, fail_fast, formats, httpx_client, max_tokens, system_role, tools, usage

    return (api_key.FIX, max_tokens.FIX, usage.FIX, chat_template.FIX, system_role.FIX, httpx_client.FIX,
            fail_fast.FIX, tools.FIX, formats.FIX)


def wrapping_order() -> tuple[Fix, ...]:
    """The order the fixes are applied in: on a client's ``create`` a later fix's wrapper sits outside an earlier one's.

    ``httpx`` comes after ``api_key`` (it keeps the proxy client that fix adds). ``chat_template`` and
    ``system_role`` go inside ``max_tokens`` and ``usage``: the request they send instead (to ``/v1/completions``,
    or with the system message folded in) still gets usage's ``stream_options``, and its ``max_tokens`` refusal
    reaches the max_tokens fix like the chat request's own. ``tools`` goes outside all of those: the constrained
    request it sends instead of a refused function call is a chat request like any other, which they then fit to
    the server. ``formats`` goes outside ``chat_template`` and ``system_role`` (its constrained request is theirs to fit
    to the template, and a reroute of its first ask to ``/v1/completions`` is constrained through ``REROUTE``) and
    ``max_tokens`` (which leaves out a ``max_tokens`` that does not fit), and inside ``usage``: usage then counts each
    answer under the messages MetaGPT sent, which formats adds the shape to. ``fail_fast`` comes last: its wrapper is
    then the outermost and sees only the errors every other fix left unhandled.
    """
    by_name = {fix.name: fix for fix in all_fixes()}
    return tuple(by_name[name] for name in ("api_key", "httpx", "chat_template", "system_role", "max_tokens",
                                            "formats", "usage", "tools", "fail_fast"))


NAMES = ("api_key", "max_tokens", "usage", "chat_template", "system_role", "httpx", "fail_fast", "tools", "formats")
