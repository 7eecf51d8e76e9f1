"""A function call asked of a server that does not call tools itself: which function, what the model is told, and
the answer as the OpenAI tool call MetaGPT reads.

A function call is a JSON object constrained by the function's ``parameters`` schema. A vLLM started without
``--enable-auto-tool-choice`` / ``--tool-call-parser`` refuses ``tools`` (0.4.2 and later) or ignores them, but every
vLLM since 0.3.3 can constrain an answer to a JSON schema (``structured_outputs``); the ``tools`` fix asks for that.
This module holds the pure parts, one small function each, so that each can be tested on its own:

- :func:`plan`: which function the request asks for (a named ``tool_choice``; the only tool; or, among several, a
  schema that names one of them with its arguments, as llama.cpp's generic tool format does);
- :func:`instructions` and :func:`told`: the function's name, description and parameters in the prompt, as a
  tool-calling server puts them into its chat template (a constraint alone gives valid but uninformed arguments);
- :func:`tool_call_answer`: the constrained text as a ``ChatCompletion`` whose ``message.tool_calls[0]`` carries
  the function's name and its arguments as a JSON string, ``content`` None, ``finish_reason`` as OpenAI gives it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["FUNCTION_CALL_FIELDS", "Plan", "code_fenced", "instructions", "parse_arguments", "plan", "told",
           "tool_call_answer", "without_function_calls"]

#: ``create()`` arguments that ask for a function call; the constrained request goes without them.
FUNCTION_CALL_FIELDS = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls")
_FENCE = "```"


@dataclass(frozen=True)
class Plan:
    """What a function-call request asks for, as a JSON schema the server can constrain an answer to."""

    functions: tuple[Mapping[str, Any], ...]  #: the candidate functions (OpenAI ``function`` objects)
    forced: bool  #: ``tool_choice`` named the function (OpenAI then finishes with "stop", else "tool_calls")
    schema: Mapping[str, Any]  #: the schema of the answer asked for: the arguments, or {"name", "arguments"}

    @property
    def picks(self) -> bool:
        """The answer names the function (several candidates) rather than being its arguments."""
        return len(self.functions) > 1

    @property
    def names(self) -> list[str]:
        return [str(function.get("name", "")) for function in self.functions]


def _functions(kwargs: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The request's functions: ``tools`` of type function, else the legacy ``functions``."""
    tools = kwargs.get("tools")
    found: list[Mapping[str, Any]] = []
    if isinstance(tools, Sequence) and not isinstance(tools, (str, bytes)):
        for tool in tools:
            function = tool.get("function") if isinstance(tool, Mapping) else None
            if isinstance(tool, Mapping) and tool.get("type", "function") == "function" and isinstance(function,
                                                                                                      Mapping):
                found.append(function)
    legacy = kwargs.get("functions")
    if not found and isinstance(legacy, Sequence) and not isinstance(legacy, (str, bytes)):
        found = [function for function in legacy if isinstance(function, Mapping)]
    return [function for function in found if isinstance(function.get("name"), str)]


def _named_choice(kwargs: Mapping[str, Any]) -> Optional[str]:
    """The function a ``tool_choice`` (or legacy ``function_call``) names, if it names one."""
    for field in ("tool_choice", "function_call"):
        choice = kwargs.get(field)
        if isinstance(choice, Mapping):
            function = choice.get("function") if field == "tool_choice" else choice
            name = function.get("name") if isinstance(function, Mapping) else None
            if isinstance(name, str):
                return name
    return None


def _parameters(function: Mapping[str, Any]) -> Mapping[str, Any]:
    parameters = function.get("parameters")
    return parameters if isinstance(parameters, Mapping) else {"type": "object", "properties": {}}


def plan(kwargs: Mapping[str, Any]) -> Optional[Plan]:
    """The function call a ``create()`` request asks for; None when it asks for none the fix can answer.

    A named choice: that function. No choice and one function (MetaGPT's code step): that function. Several and no
    choice: one of them, by name. ``tool_choice`` "none" asks for no call, and a name no tool has is the server's
    to refuse: both None.
    """
    functions = _functions(kwargs)
    if not functions or kwargs.get("tool_choice") == "none" or kwargs.get("function_call") == "none":
        return None
    name = _named_choice(kwargs)
    if name is not None:
        chosen = [function for function in functions if function["name"] == name]
        return Plan((chosen[0],), True, _parameters(chosen[0])) if chosen else None
    if len(functions) == 1:
        return Plan((functions[0],), False, _parameters(functions[0]))
    options = [{"type": "object",
                "properties": {"name": {"type": "string", "enum": [function["name"]]},
                               "arguments": _parameters(function)},
                "required": ["name", "arguments"]}
               for function in functions]
    return Plan(tuple(functions), False, {"anyOf": options})


def _describe(function: Mapping[str, Any], parameters: Optional[Mapping[str, Any]] = None) -> str:
    """A function as a tool-calling template lists it; ``parameters``: as bounded (its descriptions kept)."""
    schema = json.dumps(parameters if parameters is not None else _parameters(function), ensure_ascii=False)
    description = function.get("description")
    about = f"\nDescription: {description}" if isinstance(description, str) and description.strip() else ""
    return f"Function: {function['name']}{about}\nParameters (JSON schema): {schema}"


def instructions(chosen: Plan, bounded: Optional[Mapping[str, Any]] = None) -> str:
    """What the model is told: the function(s) it calls and the answer's form (the server constrains the rest).
    ``bounded``: the answer's schema as the server holds it to (``json_bounds``), whose bounds the model then sees."""
    if bounded is not None and not chosen.picks:
        listed = _describe(chosen.functions[0], bounded)
    else:
        listed = "\n\n".join(_describe(function) for function in chosen.functions)
    from .json_bounds import how_to_write

    rules = f" {how_to_write(True)}" if bounded is not None else ""  # MetaGPT reads arguments with strict=False
    if chosen.picks:
        return (f"You have these functions to call:\n\n{listed}\n\nCall one of them: answer with a JSON object "
                '{"name": <the function\'s name>, "arguments": <an object of its arguments>} and nothing else.'
                + rules)
    name = chosen.functions[0]["name"]
    return (f"You have a function to call:\n\n{listed}\n\nCall {name}: answer with a JSON object of its arguments "
            f"and nothing else.{rules}")


def told(messages: Sequence[Any], text: str) -> list[Any]:
    """The messages with ``text`` at the end of the leading system message (a new one first if there is none).

    A tool-calling server's chat template puts the tool definitions in the system turn; a template that refuses
    the system role is the ``system_role`` fix's to fold, as for any request.
    """
    out = list(messages)
    first = out[0] if out else None
    if isinstance(first, Mapping) and first.get("role") == "system" and isinstance(first.get("content"), str):
        out[0] = {**first, "content": f"{first['content']}\n\n{text}" if first["content"] else text}
        return out
    return [{"role": "system", "content": text}, *out]


def without_function_calls(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The request's arguments without those that ask for a function call."""
    return {name: value for name, value in kwargs.items() if name not in FUNCTION_CALL_FIELDS}


def parse_arguments(text: str) -> Optional[Any]:
    """The answer's JSON value, or None when it is not JSON (cut by max_tokens, or an unconstrained answer)."""
    try:
        return json.loads(text, strict=False)  # as MetaGPT reads arguments
    except ValueError:
        return None


def code_fenced(content: Any) -> bool:
    """MetaGPT 0.7 reads a content answer as code only when it starts and ends with a code fence."""
    return isinstance(content, str) and content.startswith(_FENCE) and content.endswith(_FENCE)


def _finish_reason(chosen: Plan, finish: Optional[str]) -> Optional[str]:
    """OpenAI finishes a forced function call with "stop" and a chosen one with "tool_calls"; a cut one with
    "length"."""
    if finish == "length":
        return "length"
    return "stop" if chosen.forced else "tool_calls"


def tool_call_answer(answer: Any, chosen: Plan) -> Any:
    """A constrained ``ChatCompletion`` (its content the JSON text) as the tool call OpenAI would have answered.

    Arguments that parse are handed over as compact JSON; arguments that do not (cut off by ``max_tokens``) are
    handed over as they came, for MetaGPT's own fallback. When several functions were offered, the answer's
    ``name`` picks one; an answer that does not parse cannot say which, and keeps the first.
    """
    from openai.types.chat.chat_completion import ChatCompletion, Choice
    from openai.types.chat.chat_completion_message import ChatCompletionMessage
    from openai.types.chat.chat_completion_message_tool_call import ChatCompletionMessageToolCall, Function

    choice = answer.choices[0]
    text = choice.message.content or ""
    value = parse_arguments(text.strip())
    name = chosen.names[0]
    arguments = text
    if chosen.picks and isinstance(value, Mapping) and value.get("name") in chosen.names:
        name, value = str(value["name"]), value.get("arguments")
        arguments = json.dumps(value, ensure_ascii=False)
    elif value is not None:
        arguments = json.dumps(value, ensure_ascii=False)
    call = ChatCompletionMessageToolCall.construct(id=f"call_{uuid.uuid4().hex[:24]}", type="function",
                                                   function=Function.construct(name=name, arguments=arguments))
    message = ChatCompletionMessage.construct(role="assistant", content=None, tool_calls=[call])
    choices = [Choice.construct(index=0, finish_reason=_finish_reason(chosen, choice.finish_reason), logprobs=None,
                                message=message)]
    return ChatCompletion.construct(id=answer.id, object="chat.completion", created=answer.created,
                                    model=answer.model, choices=choices, usage=answer.usage)
