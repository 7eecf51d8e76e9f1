"""The ``max_tokens`` fix: a request whose ``max_tokens`` does not fit the server's context is sent again without it.

MetaGPT 0.7 always sends ``max_tokens = llm.max_token`` (4096 by default). vLLM up to 0.17 refuses
prompt + max_tokens > context with 400, vLLM 0.18+ refuses max_tokens > context; without ``max_tokens`` every
generation answers with the room left. So on exactly that 400 (recognised by the messages in
``vllm_versions``, any generation) the same request goes once more without ``max_tokens``. Nothing else is
retried: not 401 or 404, not a prompt too long by itself, never twice.

Every request is sent as configured first, even after the server has named its context: what a server said
once is not trusted for later requests. Leaving ``max_tokens`` out at once would change an answer that would
have succeeded as shipped whenever the server at that URL has changed (restarted with a larger
``--max-model-len``: the user's cap on the answer's length would silently be gone), and capping it at the
learnt context would cut such an answer short. Only the server knows its context now, and its refusal costs one
quick round trip with no generation; the warning names the ``llm.max_token`` that avoids it. The retry without
``max_tokens`` never exceeds the user's cap: the room it leaves is below the context the server just named,
which is below ``llm.max_token``.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import Once, RequestFix, error_message, mentions, server_of, status_code

if TYPE_CHECKING:
    from ..vllm_versions import Refusal

log = logging.getLogger("metagpt_vllm_fix")

FIX_NAME = "max_tokens"  # every record this fix logs carries extra={"fix": FIX_NAME}: the doctor says which fix acted
_Key = tuple[str, str]  # (server base URL, model)
_contexts: dict[_Key, int] = {}  # the context each server last said when refusing max_tokens: reported, not trusted
_said = Once()  # (server, model, kind): each warning once
_lock = threading.Lock()


def refusal_of(exc: BaseException) -> Optional[Refusal]:
    """The context refusal this exception reports, if it is one (a 400 with a known vLLM message)."""
    if status_code(exc) != 400:
        return None
    from ..vllm_versions import classify_refusal  # only once a request has failed: patching stays cheap

    return classify_refusal(error_message(exc))


def _warn_once(key: _Key, kind: str, message: str) -> None:
    if _said.first((key, kind)):
        log.warning(message, extra={"fix": FIX_NAME})


def _remember(key: _Key, requested: int, refusal: Refusal) -> None:
    """Note what the refusal taught and say it once, with the value that would avoid it."""
    model, context = key[1], refusal.context
    if context is not None and requested >= context:
        with _lock:
            _contexts[key] = context
        _warn_once(key, "context",
                   f"llm.max_token {requested} does not fit {model}'s context of {context} tokens; each request is "
                   f"sent again without max_tokens so the server uses the room left (one extra request each time). "
                   f"Set llm.max_token below {context} to avoid it.")
        return
    room = f"{model}'s context of {context} tokens" if context is not None else f"{model}'s context"
    _warn_once(key, "prompt",
               f"llm.max_token {requested} plus a prompt of {refusal.prompt_tokens or 'many'} tokens does not fit "
               f"{room}; sent again without max_tokens so the server uses the room left (one extra request each "
               "time). A lower llm.max_token avoids the extra request.")


def _without_max_tokens(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in kwargs.items() if name != "max_tokens"}


async def fit_max_tokens(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``chat.completions.create``: the request as configured, then at most once without
    ``max_tokens``."""
    requested = kwargs.get("max_tokens")
    if not isinstance(requested, int) or isinstance(requested, bool):
        return await wrapped(*args, **kwargs)
    try:
        return await wrapped(*args, **kwargs)
    except Exception as exc:
        refusal = refusal_of(exc)
        if refusal is None or not refusal.retry_helps:
            raise
    _remember((server_of(wrapped, instance), str(kwargs.get("model"))), requested, refusal)
    return await wrapped(*args, **_without_max_tokens(kwargs))


def known_contexts() -> dict[_Key, int]:
    """The contexts servers named when refusing: (server, model) -> size (for status and tests; never acted on)."""
    with _lock:
        return dict(_contexts)


def forget() -> None:
    """Drop what was learnt (``remove()`` calls it, so a re-applied fix starts afresh)."""
    _said.clear()
    with _lock:
        _contexts.clear()


class MaxTokensFix(RequestFix):
    name = FIX_NAME
    summary = "a max_tokens that does not fit the server's context is left out, so the server uses the room left"
    upstream = "every request asks for max_tokens = llm.max_token (4096): 400 when it does not fit the context"
    call = staticmethod(fit_max_tokens)

    def problem(self, module: ModuleType) -> Optional[str]:
        found = super().problem(module)
        if found:
            return found
        cons = getattr(getattr(module, "OpenAILLM", None), "_cons_kwargs", None)
        if not mentions(cons, "max_tokens"):
            return "OpenAILLM._cons_kwargs no longer sends max_tokens as MetaGPT 0.7 does"
        return None

    def forget(self) -> None:
        forget()


FIX = MaxTokensFix()
