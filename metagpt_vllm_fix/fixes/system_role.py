"""The ``system_role`` fix: a chat template that refuses the system role gets the system text in the first user turn.

MetaGPT 0.7 starts every conversation with a system message. Mistral-7B-Instruct v0.1/v0.2's template refuses it
("Conversation roles must alternate user/assistant/user/assistant/..."), Gemma's too ("System role not
supported"); vLLM returns the template's words as a 400 (``vllm_versions``). On exactly that 400, for a request
that has a system message, the same request goes once more with the system message(s) folded into the first user
message, the way such models' own instructions are written. No other 400 is touched, and a request is never sent a
third time.

Every request is sent as MetaGPT sent it first, even after the server refused an earlier one: what a server said
once is not trusted for later requests. The server at that URL may since have been restarted with a template that
takes the system role, upgraded, or be one of several behind a router; folding at once would change a
conversation that server answers as sent. Only the request's own refusal folds it, at the cost of one quick round
trip with no generation; the warning (once per server and model) says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Callable

from . import Once, RequestFix, error_message, server_of, status_code

log = logging.getLogger("metagpt_vllm_fix")

_Key = tuple[str, str]  # (server base URL, model)
_said = Once()  # the (server, model) pairs the log has named


def refuses_system_role(exc: BaseException) -> bool:
    """A 400 in a chat template's words refusing the system role (Mistral-Instruct's, Gemma's)."""
    if status_code(exc) != 400:
        return False
    from ..vllm_versions import is_system_role_refusal  # only once a request has failed: patching stays cheap

    return is_system_role_refusal(error_message(exc))


def _has_system(messages: Any) -> bool:
    return isinstance(messages, list) and any(isinstance(m, Mapping) and m.get("role") == "system" for m in messages)


def _text(content: Any) -> str:
    return content if isinstance(content, str) else ""


def fold_system(messages: list[Any]) -> list[Any]:
    """The messages without system messages, their text (blank-line separated) opening the first user message.

    With no user message, the system text becomes one. Nothing else changes; the caller's list is not modified.
    """
    system = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "system"]
    rest = [m for m in messages if not (isinstance(m, Mapping) and m.get("role") == "system")]
    text = "\n\n".join(_text(m.get("content")) for m in system)
    for index, message in enumerate(rest):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                merged: Any = f"{text}\n\n{content}" if content else text
            elif isinstance(content, list):  # content parts (images): the system text goes first, as a text part
                merged = [{"type": "text", "text": text}, *content]
            else:
                merged = text
            return [*rest[:index], {**message, "content": merged}, *rest[index + 1:]]
    return [{"role": "user", "content": text}, *rest]


async def fold_refused_system(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                              kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``chat.completions.create``: after a system-role refusal, once more with it folded in."""
    messages: Any = kwargs.get("messages")
    if args or not _has_system(messages):
        return await wrapped(*args, **kwargs)
    try:
        return await wrapped(*args, **kwargs)
    except Exception as exc:
        if not refuses_system_role(exc):
            raise
        refusal = error_message(exc)
    key = (server_of(wrapped, instance), str(kwargs.get("model")))
    try:
        answer = await wrapped(*args, **{**kwargs, "messages": fold_system(messages)})
    except Exception as exc:
        # Refused in the same words again: the roles were the trouble, not the system message (Llama-2-chat's
        # template says the same of two user turns in a row), and that refusal is the answer. Anything else (a
        # max_tokens 400 ...) means the folded request got past the template.
        if not refuses_system_role(exc):
            _warn(key, refusal)
        raise
    _warn(key, refusal)
    return answer


def _warn(key: _Key, refusal: str) -> None:
    if _said.first(key):
        log.warning("system_role: the chat template of %s on %s refuses the system role (%s); each request it refuses "
                    "for that is sent once more with MetaGPT's system message as the start of the first user message "
                    "(one extra round trip per request).", key[1], key[0], refusal[:120], extra={"fix": "system_role"})


class SystemRoleFix(RequestFix):
    name = "system_role"
    summary = ("a request whose chat template refuses the system role is sent once more with MetaGPT's system text in "
               "the first user message (one refused round trip per request)")
    upstream = ("every request to a model whose template refuses the system role (Mistral-Instruct v0.1/v0.2, "
                "Gemma) gets 400: MetaGPT always sends a system message first")
    call = staticmethod(fold_refused_system)

    def forget(self) -> None:
        _said.clear()


FIX = SystemRoleFix()
