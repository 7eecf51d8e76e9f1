"""The ``fail_fast`` fix: an ``open_llm`` error that the same request cannot change ends MetaGPT's retry loops at once.

MetaGPT 0.7 (0.7.0 to 0.7.7 alike) wraps its LLM calls in tenacity loops that retry every exception:
``ActionNode._aask_v1`` and ``WriteCode.write_code`` and ``WriteCodeReview.write_code_review_and_rewrite`` 6 times,
``SummarizeCode.summarize_code`` twice, with random waits of up to 20 or 60 s. A 401 (wrong key), 403, 404 (model
not served) or a 400 that no fix of the plugin handled comes back identical each time: a wrong key costs 20 s and
six tracebacks. (``OpenAILLM.acompletion_text`` retries ``APIConnectionError`` only, which a status error never is:
left alone.)

How: the client's ``create`` (wrapped outermost, so it sees only what escaped the other fixes) marks such an
exception with its cause and logs the cause once. Each loop's tenacity ``Retrying`` object gets a ``stop`` strategy
that stops at a marked exception and otherwise asks the loop's own ``stop``: the loop then ends exactly as upstream's
does after its last attempt (its ``after`` log, ``RetryError`` or its ``retry_error_callback``), only at once. The
loops live in modules MetaGPT imports later than ``open_llm_api``; a loop can only fail while its module is loaded,
so the fix reaches the loaded ones when applied and again at each marked error (nothing at import, no hook).
Connection errors, timeouts, 408, 429, 5xx and every other provider's errors carry no mark: retried as upstream
does. ``remove()`` puts every loop's own ``stop`` back.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional

from ..gate import PLACEHOLDER
from ..masking import mask
from . import RequestFix, error_message, retry_chain, server_of, status_code

log = logging.getLogger("metagpt_vllm_fix")

#: MetaGPT 0.7.0-0.7.7's tenacity loops that retry every exception around an LLM call (module, class, method).
LOOPS: tuple[tuple[str, str, str], ...] = (
    ("metagpt.actions.action_node", "ActionNode", "_aask_v1"),
    ("metagpt.actions.write_code", "WriteCode", "write_code"),
    ("metagpt.actions.write_code_review", "WriteCodeReview", "write_code_review_and_rewrite"),
    ("metagpt.actions.summarize_code", "SummarizeCode", "summarize_code"),
)
FINAL_STATUSES = frozenset({400, 401, 403, 404})  #: a retry of the same request gets the same answer
MODELS_TIMEOUT = 2.0  #: seconds for the one GET /v1/models that names the served models after a 404
MARK = "_metagpt_vllm_fix_final"  #: the attribute a marked exception carries (its Cause)

_lock = threading.Lock()
_enabled = False  # set by apply(), cleared by remove(): a request still in flight then arms nothing
_armed: list[tuple[Any, StopAtFinal, str]] = []  # (tenacity Retrying object, the stop we gave it, Class.method)
_logged: set[tuple[str, str, int, str]] = set()  # (server, model, status, masked key) already explained
_served: dict[str, Optional[list[str]]] = {}  # server -> the model ids its /v1/models listed (None: unknown)


@dataclass(frozen=True)
class Cause:
    """Why a request will fail the same way again: its status and one sentence for people (no key in it)."""

    status: int
    sentence: str


def cause_of(exc: Optional[BaseException]) -> Optional[Cause]:
    """The mark of an exception (or of the last attempt of a nested loop's ``RetryError``), if it has one."""
    if exc is None:
        return None
    marks = (getattr(level, MARK, None) for level in retry_chain(exc))
    return next((cause for cause in marks if isinstance(cause, Cause)), None)


class StopAtFinal:
    """A tenacity stop strategy: stop at a marked exception, otherwise ask the loop's own ``stop``."""

    def __init__(self, original: Callable[[Any], bool]) -> None:
        self.original = original
        self.active = True  # False once removed while someone else's stop sat on top of ours

    def __call__(self, retry_state: Any) -> bool:
        outcome = getattr(retry_state, "outcome", None)
        if self.active and outcome is not None and outcome.failed and cause_of(outcome.exception()) is not None:
            return True
        return bool(self.original(retry_state))

    def __repr__(self) -> str:
        return f"<metagpt_vllm_fix StopAtFinal, else {self.original!r}>"


def retrying_of(module: ModuleType, class_name: str, method: str) -> Optional[Any]:
    """The tenacity ``Retrying`` object of a decorated method, or None when the code is not shaped as expected."""
    cls = getattr(module, class_name, None)
    function = vars(cls).get(method) if isinstance(cls, type) else None
    retrying = getattr(function, "retry", None)
    if not type(retrying).__module__.startswith("tenacity") or not callable(getattr(retrying, "stop", None)):
        return None
    return retrying


def arm_loaded() -> list[str]:
    """Give every loop of a loaded module our stop (once); returns the loops armed now."""
    armed: list[str] = []
    with _lock:
        if not _enabled:
            return armed
        for module_name, class_name, method in LOOPS:
            module = sys.modules.get(module_name)
            retrying = retrying_of(module, class_name, method) if module is not None else None
            if retrying is None or any(r is retrying for r, _, _ in _armed):
                continue
            ours = StopAtFinal(retrying.stop)
            retrying.stop = ours
            _armed.append((retrying, ours, f"{class_name}.{method}"))
            armed.append(f"{class_name}.{method}")
    return armed


def disarm() -> bool:
    """Put each loop's own ``stop`` back (ours is only switched off where someone has put theirs on top)."""
    global _enabled
    with _lock:
        _enabled = False
        for retrying, ours, _ in _armed:
            if retrying.stop is ours:
                retrying.stop = ours.original
            else:
                ours.active = False
        removed = bool(_armed)
        _armed.clear()
        _logged.clear()
        _served.clear()
    return removed


def armed_loops() -> list[str]:
    """``Class.method`` of every loop that carries our stop now (for status and tests)."""
    with _lock:
        return [name for _, _, name in _armed]


async def _served_models(instance: Any, wrapped: Any, message: str) -> Optional[list[str]]:
    """The models the server serves: from vLLM 0.18+'s 404 message, else one short GET /v1/models (cached)."""
    from ..vllm_versions import served_models

    found = served_models(message)
    if found is not None:
        return found
    server = server_of(wrapped, instance)
    if server in _served:
        return _served[server]
    owner = instance if instance is not None else getattr(wrapped, "__self__", None)
    client = getattr(owner, "_client", None)
    served: Optional[list[str]] = None
    try:
        page = await client.with_options(timeout=MODELS_TIMEOUT, max_retries=0).models.list()  # type: ignore[union-attr]
        served = [str(model.id) for model in page.data]
    except Exception:  # noqa: BLE001  (any failure just means the sentence names no models)
        served = None
    with _lock:
        _served[server] = served
    return served


async def _cause(exc: BaseException, status: int, wrapped: Any, instance: Any, kwargs: dict[str, Any]) -> Cause:
    """The sentence for the log; never raises (the server's own error is what the caller gets, whatever happens)."""
    try:
        return await _explain(exc, status, wrapped, instance, kwargs)
    except Exception:  # noqa: BLE001
        return Cause(status, f"the server answered {status}: {str(exc)[:300]}")


async def _explain(exc: BaseException, status: int, wrapped: Any, instance: Any, kwargs: dict[str, Any]) -> Cause:
    owner = instance if instance is not None else getattr(wrapped, "__self__", None)
    raw_key = getattr(getattr(owner, "_client", None), "api_key", None)
    key = mask(raw_key)
    model, message = str(kwargs.get("model")), error_message(exc)[:300]
    if status == 401 and raw_key == PLACEHOLDER:
        return Cause(status, f"the server refused api_key {PLACEHOLDER}, MetaGPT 0.7's hard-coded placeholder (401); "
                             "the api_key fix sends llm.api_key instead")
    if status == 401:
        return Cause(status, f"the server refused api_key {key} (401); check llm.api_key in your config2.yaml")
    if status == 403:
        return Cause(status, f"the server forbids api_key {key} this request (403): {message}")
    if status == 404:
        served = await _served_models(instance, wrapped, message)
        if served is not None and model not in served:
            return Cause(status, f"the server does not serve model {model}; it serves {', '.join(served) or 'none'} "
                                 "(404); set llm.model to one of those")
        if served is not None:
            return Cause(status, f"the server serves model {model} but answered 404 ({message}); llm.base_url "
                                 "usually ends in /v1")
        return Cause(status, f"the server answered 404 for model {model}: {message}")
    return Cause(status, f"the server refused the request (400): {message}")


async def mark_final(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``chat.completions.create``: mark (and explain once) what a retry cannot change."""
    try:
        return await wrapped(*args, **kwargs)
    except Exception as exc:
        status = status_code(exc)
        if status not in FINAL_STATUSES or not _enabled or not hasattr(exc, "__dict__"):
            raise
        cause = await _cause(exc, status, wrapped, instance, kwargs)
        setattr(exc, MARK, cause)
        arm_loaded()
        owner = instance if instance is not None else getattr(wrapped, "__self__", None)
        seen = (server_of(wrapped, instance), str(kwargs.get("model")), status,
                mask(getattr(getattr(owner, "_client", None), "api_key", None)))
        with _lock:
            first = seen not in _logged
            _logged.add(seen)
        if first:
            log.error("%s; MetaGPT's retries would send the same request again, so they stop here.", cause.sentence,
                      extra={"fix": "fail_fast"})
        raise


class FailFastFix(RequestFix):
    name = "fail_fast"
    summary = ("an open_llm 401, 403, 404 or unhandled 400 ends MetaGPT's retry loops at once, with one log line "
               "naming the cause")
    upstream = ("ActionNode._aask_v1, WriteCode, WriteCodeReview and SummarizeCode send the same refused request up "
                "to 6 times over 20 s or more, an ERROR traceback each")
    call = staticmethod(mark_final)

    def problem(self, module: ModuleType) -> Optional[str]:
        found = super().problem(module)
        if found:
            return found
        if retrying_of(module, "OpenAILLM", "acompletion_text") is None:  # the one loop open_llm_api already has
            return "OpenAILLM.acompletion_text carries no tenacity Retrying with a stop strategy as in MetaGPT 0.7"
        return None

    def apply(self, module: ModuleType) -> None:
        global _enabled
        super().apply(module)
        with _lock:
            _enabled = True
        arm_loaded()

    def remove(self, module: Optional[ModuleType]) -> bool:
        removed = super().remove(module)
        return disarm() or removed

    def loops(self) -> Sequence[str]:
        return armed_loops()


FIX = FailFastFix()
