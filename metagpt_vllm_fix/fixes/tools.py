"""The ``tools`` fix: MetaGPT's function calls (``aask_code``: the Data Interpreter) answered by a vLLM started without
tool flags, as the JSON-schema-constrained answers every vLLM since 0.3.3 can give.

``OpenAILLM.aask_code`` sends ``tools=[execute]`` (the code step) or a named ``tool_choice`` (plan, tool selection,
debugging) and reads ``message.tool_calls[0].function.arguments``. A vLLM started as the seed starts it refuses
``tools`` (0.4.2 - 0.4.3 as an extra field, 0.6 on for want of ``--enable-auto-tool-choice``; a named choice from
0.14 for want of ``--tool-call-parser``), or ignores them (0.3.3 - 0.4.1: content that MetaGPT records as markdown,
or a KeyError where a named call was needed), or answers ``tool_calls: []`` (0.5 - 0.23: an IndexError in MetaGPT).

Only where MetaGPT could not use the answer does this fix act, for that request alone (nothing is remembered): it
asks the same server, with the same client and parameters, for the function's arguments constrained by the
function's ``parameters`` schema, with that generation's own field (``vllm_versions.structured_output``: read from
``GET /version`` at that moment), the function described in the system message as a tool-calling server's template
would (``function_calls``). That request goes through the inner fixes like any other: a model without a chat
template is answered through ``/v1/completions`` (``chat_template``), a template that refuses the system role gets
it folded (``system_role``), a ``max_tokens`` that does not fit is left out (``max_tokens``). MetaGPT gets the
``ChatCompletion`` OpenAI would have sent: one tool call, ``content`` None, the server's usage.

An answer MetaGPT can use passes untouched; ``tool_calls: []`` beside content only becomes ``tool_calls=None`` (so
MetaGPT's own content path runs); a server that handles tools itself (started with the tool flags) is never
rewritten. Where the server cannot constrain (it refuses the field, or ignores it), MetaGPT gets the plain answer
vLLM 0.3 gave, and one warning names the server-side remedy. Streamed requests are left alone (MetaGPT never
streams a function call).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Optional

from .. import function_calls
from . import Once, RequestFix, error_message, refuses_field, server_of, status_code
from .chat_template import refuses_for_template

if TYPE_CHECKING:
    from ..vllm_versions import Generation

log = logging.getLogger("metagpt_vllm_fix")

FIX_NAME = "tools"  # every record this fix logs carries extra={"fix": FIX_NAME}: the doctor says which fix acted
VERSION_TIMEOUT = 2.0  #: seconds for the GET /version that tells which field constrains an answer
_said = Once()  # (server, model, what): each warning once


def remedy() -> str:
    """The server-side cure, in words."""
    return ("start vLLM with --enable-auto-tool-choice and a --tool-call-parser that fits the model (e.g. hermes, "
            "mistral, llama3_json), so that it calls tools itself")


def refuses_tools(exc: BaseException) -> bool:
    """A 400 refusing ``tools`` / ``tool_choice`` for want of tool flags (any generation's words)."""
    if status_code(exc) != 400:
        return False
    from ..vllm_versions import is_tools_refusal  # only once a request has failed: patching stays cheap

    return is_tools_refusal(error_message(exc))


def _say(key: tuple[str, str], what: str, message: str, *args: Any) -> None:
    if _said.first((*key, what)):
        log.warning(message, *args, extra={"fix": FIX_NAME})


def _http_client(instance: Any, wrapped: Any) -> Any:
    owner = instance if instance is not None else getattr(wrapped, "__self__", None)
    return getattr(getattr(owner, "_client", None), "_client", None)


async def server_generation(instance: Any, wrapped: Any, server: str) -> Generation:
    """The generation of the server at ``server``, asked now (``GET /version``, vLLM 0.4.0 and later; without it,
    vLLM 0.3's rules). Asked per request, never kept: the server behind a URL may have changed."""
    from ..vllm_versions import for_version

    http, root = _http_client(instance, wrapped), server.rstrip("/")
    root = root[: -len("/v1")] if root.endswith("/v1") else root
    try:
        answer = await http.get(root + "/version", timeout=VERSION_TIMEOUT)
        body = answer.json() if answer.status_code == 200 else None
        version = body.get("version") if isinstance(body, dict) else None
        return for_version(version if isinstance(version, str) else None)
    except Exception:  # noqa: BLE001  (no usable /version: the rules of MetaGPT 0.7's time)
        return for_version(None)


def _no_tool_call(answer: Any) -> Optional[str]:
    """Why MetaGPT cannot read a function call from this answer ("forced" checks are the caller's), or None.

    Returns "empty" for ``tool_calls: []``, "none" for no ``tool_calls`` at all, "unreadable" for neither content
    nor a call; None when ``tool_calls[0]`` carries a function with arguments.
    """
    choices = getattr(answer, "choices", None) or []
    message = getattr(choices[0], "message", None) if choices else None
    if message is None:
        return "unreadable"
    calls = getattr(message, "tool_calls", None)
    if calls:
        function = getattr(calls[0], "function", None)
        return None if getattr(function, "arguments", None) is not None else "unreadable"
    if getattr(message, "content", None) is None:
        return "unreadable"
    return "empty" if calls == [] else "none"


def _copy(model: Any, **update: Any) -> Any:
    """A pydantic model (openai's types, pydantic 1 or 2) with some fields replaced; the original is untouched."""
    copy = getattr(model, "model_copy", None) or model.copy
    return copy(update=update)


def _without_empty_calls(answer: Any) -> Any:
    """The answer with ``tool_calls: []`` as ``None``: MetaGPT reads the content instead of indexing an empty list."""
    first = answer.choices[0]
    return _copy(answer, choices=[_copy(first, message=_copy(first.message, tool_calls=None)), *answer.choices[1:]])


async def _constrained(wrapped: Callable[..., Any], instance: Any, kwargs: dict[str, Any],
                       chosen: function_calls.Plan, key: tuple[str, str], why: str,
                       generation: Optional[Generation] = None) -> Any:
    """Ask for the function's arguments constrained by its schema; MetaGPT gets them as OpenAI's tool call.
    ``generation``: the server's, when this request already asked it."""
    from ..vllm_versions import structured_output

    generation = generation or await server_generation(instance, wrapped, key[0])
    constraint = structured_output(generation, chosen.schema)
    plain = function_calls.without_function_calls(kwargs)
    extra = plain.get("extra_body")
    if extra is not None and not isinstance(extra, dict):
        return None  # a caller's extra_body we cannot add to: the server's own answer stands
    asked = {**plain, "messages": function_calls.told(kwargs["messages"], function_calls.instructions(chosen)),
             "extra_body": {**(extra or {}), **constraint}}
    field = next(iter(constraint))
    try:
        answer = await wrapped(**asked)
    except Exception as exc:
        if refuses_field(exc, field):  # a server that cannot constrain: the plain answer vLLM 0.3 gave
            _say(key, "unconstrained", "tools: %s refuses %s for %s (%s); MetaGPT gets the model's plain answer "
                 "instead of a function call, as from vLLM 0.3. Remedy: %s.", key[0], field, key[1],
                 error_message(exc)[:160], remedy())
            return await wrapped(**plain)
        _say(key, f"refused {status_code(exc)}", "tools: %s refused the constrained request for %s's arguments "
             "(%s %s); MetaGPT gets that error.", key[0], ", ".join(chosen.names), status_code(exc) or
             type(exc).__name__, error_message(exc)[:200])
        raise
    finish = getattr(answer.choices[0], "finish_reason", None) if answer.choices else None
    text = answer.choices[0].message.content if answer.choices else None
    if finish != "length" and function_calls.parse_arguments((text or "").strip()) is None:
        _say(key, "ignored", "tools: %s answered %s without keeping to the function's schema (%s does not constrain "
             "answers there); MetaGPT gets the model's plain answer. Remedy: %s.", key[0], key[1], field, remedy())
        return answer
    if finish == "length":
        _say(key, "cut", "tools: the arguments of %s were cut off at max_tokens (%s); MetaGPT gets them as they "
             "came. A random or small model pads JSON: raise llm.max_token, or leave the room to the server.",
             ", ".join(chosen.names), kwargs.get("max_tokens", "the server's default"))
    _say(key, "answered", "tools: %s %s; %s's arguments were asked for as JSON constrained by its schema (%s, "
         "vLLM %s's field), and MetaGPT gets them as a tool call. Remedy: %s.", key[0], why,
         ", ".join(chosen.names), field, generation.name, remedy())
    return function_calls.tool_call_answer(answer, chosen)


async def answer_function_call(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                               kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``chat.completions.create``: a function call MetaGPT could not use, asked again
    constrained."""
    chosen = None
    if not args and not kwargs.get("stream") and kwargs.get("n") in (None, 1) and isinstance(kwargs.get("messages"),
                                                                                             list):
        chosen = function_calls.plan(kwargs)
    if chosen is None:
        return await wrapped(*args, **kwargs)
    key = (server_of(wrapped, instance), str(kwargs.get("model")))
    try:
        answer = await wrapped(**kwargs)
    except Exception as exc:
        if refuses_tools(exc):
            why = f"refuses function calls ({error_message(exc)[:120]})"
        elif refuses_for_template(exc):  # vLLM 0.5.5 - 0.6.3 apply the template before they look at tools
            why = "has no chat template and looks at tools only after it (vLLM 0.5.5 - 0.6.3)"
        else:
            raise
        answered = await _constrained(wrapped, instance, kwargs, chosen, key, why)
        if answered is None:
            raise
        return answered
    missing = _no_tool_call(answer)
    if missing is None:
        return answer
    if not chosen.forced and missing == "empty":
        return _without_empty_calls(answer)
    generation = None
    if not chosen.forced and missing == "none":
        if function_calls.code_fenced(answer.choices[0].message.content):
            return answer  # MetaGPT reads a fenced answer as python code
        generation = await server_generation(instance, wrapped, key[0])
        if not generation.ignores_tools:
            return answer  # it understood tools and chose to answer in words: its tool handling is the server's
    said = {"empty": "an empty tool_calls list", "none": "content and no tool_calls", "unreadable": "no readable "
            "function call"}
    why = f"answered without the function call MetaGPT reads ({said.get(missing or '', missing)})"
    answered = await _constrained(wrapped, instance, kwargs, chosen, key, why, generation)
    return answer if answered is None else answered


class ToolsFix(RequestFix):
    name = FIX_NAME
    summary = ("a function call (aask_code: the Data Interpreter) to a vLLM without tool flags is answered as JSON "
               "constrained by the function's schema, as a tool call")
    upstream = ("every aask_code to a vLLM started without tool flags gets 400 (0.4.2+) or an answer MetaGPT cannot "
                "read (0.3.3 - 0.5: markdown, KeyError, IndexError)")
    call = staticmethod(answer_function_call)

    def forget(self) -> None:
        _said.clear()


FIX = ToolsFix()
