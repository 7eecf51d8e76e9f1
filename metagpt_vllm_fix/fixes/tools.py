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
from typing import Any, Callable, Optional

from .. import constrained, function_calls, json_bounds
from . import Once, RequestFix, copy_model, error_message, server_of, status_code
from .chat_template import refuses_for_template

log = logging.getLogger("metagpt_vllm_fix")

FIX_NAME = "tools"  # every record this fix logs carries extra={"fix": FIX_NAME}: the doctor says which fix acted
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


def _without_empty_calls(answer: Any) -> Any:
    """The answer with ``tool_calls: []`` as ``None``: MetaGPT reads the content instead of indexing an empty list."""
    first = answer.choices[0]
    return copy_model(answer, choices=[copy_model(first, message=copy_model(first.message, tool_calls=None)),
                                       *answer.choices[1:]])


async def _ask_streamed(wrapped: Callable[..., Any], asked: dict[str, Any]) -> constrained.Collected:
    """The request streamed (a slow server's long answer then never meets the request timeout) and put back
    together, with the server's usage (see ``constrained.streamed``)."""
    return await constrained.collect(await wrapped(**constrained.streamed(asked)))


async def _constrained(wrapped: Callable[..., Any], instance: Any, kwargs: dict[str, Any],
                       chosen: function_calls.Plan, key: tuple[str, str], why: str,
                       fields: Optional[tuple[str, ...]] = None) -> Any:
    """Ask for the function's arguments constrained to its schema, bounded for the budget; MetaGPT gets them as
    OpenAI's tool call. ``fields``: the structured-output fields, when this request already asked ``/version``.
    An answer cut at max_tokens is asked for once more, bounded for the room the server gave it."""
    plain = function_calls.without_function_calls(kwargs)
    extra = plain.get("extra_body")
    if extra is not None and not isinstance(extra, dict):
        return None  # a caller's extra_body we cannot add to: the server's own answer stands
    if fields is None:
        fields = constrained.fields_for(await constrained.server_generation(instance, wrapped, key[0]))
    budget, room = constrained.budget(kwargs), None
    for _ in range(2):
        schema, bounds = json_bounds.bound(chosen.schema, min(budget, room) if room else budget)
        constraint = constrained.Constraint.of(schema, fields, loose=True)  # MetaGPT: json.loads(strict=False)
        told = function_calls.told(kwargs["messages"], function_calls.instructions(chosen, schema))
        try:
            while True:
                try:
                    collected = await _ask_streamed(wrapped, {**plain, "messages": told,
                                                              "extra_body": {**(extra or {}), **constraint.body()}})
                    break
                except Exception as exc:
                    left = constraint.after(exc)
                    if left is None:
                        raise
                    constraint = left
        except constrained.CannotConstrain as exc:  # a server that cannot constrain: the plain answer of vLLM 0.3
            _say(key, "unconstrained", "tools: %s cannot constrain answers for %s (%s); MetaGPT gets the model's "
                 "plain answer instead of a function call, as from vLLM 0.3. Remedy: %s.", key[0], key[1],
                 str(exc)[:160], remedy())
            return await wrapped(**plain)
        except Exception as exc:
            _say(key, f"refused {status_code(exc)}", "tools: %s refused the constrained request for %s's arguments "
                 "(%s %s); MetaGPT gets that error.", key[0], ", ".join(chosen.names), status_code(exc) or
                 type(exc).__name__, error_message(exc)[:200])
            raise
        fields = constraint.fields
        if collected.finish_reason != "length":
            break
        usage = getattr(collected.answer, "usage", None)
        tokens = getattr(usage, "completion_tokens", None)
        if room is not None or not isinstance(tokens, int) or tokens <= 0:
            break
        room = tokens  # the room the server gave it, with the same words asked again
        _say(key, "cut", "tools: the arguments of %s were cut off at max_tokens after %s tokens (%s); asked once "
             "more, bounded for that room.", ", ".join(chosen.names), tokens, bounds.describe())
    answer = collected.answer
    if collected.finish_reason != "length" and function_calls.parse_arguments(collected.text.strip()) is None:
        _say(key, "ignored", "tools: %s answered %s without keeping to the function's schema (%s does not constrain "
             "answers there); MetaGPT gets the model's plain answer. Remedy: %s.", key[0], key[1],
             constraint.describe(), remedy())
        return answer
    if collected.finish_reason == "length":
        _say(key, "cut for good", "tools: the arguments of %s were cut off at max_tokens even bounded for the "
             "server's room; MetaGPT gets them as they came. Raise llm.max_token, or the server's context.",
             ", ".join(chosen.names))
    _say(key, "answered", "tools: %s %s; %s's arguments were asked for as JSON constrained to its schema (%s; %s), "
         "and MetaGPT gets them as a tool call. Remedy: %s.", key[0], why, ", ".join(chosen.names),
         constraint.describe(), bounds.describe(), remedy())
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
    fields = None
    if not chosen.forced and missing == "none":
        if function_calls.code_fenced(answer.choices[0].message.content):
            return answer  # MetaGPT reads a fenced answer as python code
        generation = await constrained.server_generation(instance, wrapped, key[0])
        if generation is not None and not generation.ignores_tools:
            return answer  # it understood tools and chose to answer in words: its tool handling is the server's
        fields = constrained.fields_for(generation)
    said = {"empty": "an empty tool_calls list", "none": "content and no tool_calls", "unreadable": "no readable "
            "function call"}
    why = f"answered without the function call MetaGPT reads ({said.get(missing or '', missing)})"
    answered = await _constrained(wrapped, instance, kwargs, chosen, key, why, fields)
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
