"""Function calls: which tool call a chat request is answered with, by generation and by the server's tool flags.

Without tool flags, vLLM 0.5 - 0.11.0 answer a named ``tool_choice`` with a call whose arguments are constrained by
the function's parameters (``Generation.named_tool_call_guided``); 0.3 ignores tools; 0.6 on refuse "auto", 0.14 on
a named choice (``chat.refuse_tools``). A server started with ``--tool-call-parser`` answers a named choice with a
call, and with ``--enable-auto-tool-choice`` as well, tools without a choice with whatever its model decides: the
emulator's "model" always calls, and calls the first tool offered (vllm-tools-facts.md §2, §3).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Optional

from .served import Served


@dataclass(frozen=True)
class Call:
    """The call a request is answered with."""

    name: str
    parameters: Any  #: the function's parameters schema: the arguments are an instance of it
    forced: bool  #: a named ``tool_choice``: ``content`` "" and finish "stop" (else None and "tool_calls")


def _functions(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    functions = [tool.get("function") for tool in tools if isinstance(tool, dict)] if isinstance(tools, list) else []
    return [f for f in functions if isinstance(f, dict) and isinstance(f.get("name"), str)]


def called(served: Served, body: dict[str, Any]) -> Optional[Call]:
    """The tool call this request gets (after the refusals), or None for a plain answer."""
    functions = _functions(body)
    if served.generation.ignores_tools or not functions:
        return None
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        if not (served.generation.named_tool_call_guided or served.tool_parser):
            return None
        name = choice.get("function", {}).get("name") if isinstance(choice.get("function"), dict) else None
        chosen = [f for f in functions if f["name"] == name]
        return Call(chosen[0]["name"], chosen[0].get("parameters", {}), True) if chosen else None
    if choice in ("auto", None) and served.auto_tool_choice:
        return Call(functions[0]["name"], functions[0].get("parameters", {}), False)
    return None


def finish_reason(call: Call, finish: str) -> str:
    """vLLM 0.6.3+: "stop" for a named call, "tool_calls" for a chosen one; "length" when cut (facts §3)."""
    if finish == "length":
        return finish
    return "stop" if call.forced else "tool_calls"


def tool_call(served: Served, call: Call, arguments: str) -> dict[str, Any]:
    """One entry of ``message.tool_calls``, its id as the generation makes it."""
    return {"id": f"chatcmpl-tool-{uuid.uuid4().hex[:served.generation.tool_call_id_hex]}", "type": "function",
            "function": {"name": call.name, "arguments": arguments}}


def message(served: Served, call: Optional[Call], text: str) -> dict[str, Any]:
    """The answer's ``message``: a tool call, or the text (with ``tool_calls: []`` on 0.5 - 0.23)."""
    if call is not None:
        return {"role": "assistant", "content": "" if call.forced else None,
                "tool_calls": [tool_call(served, call, text)]}
    plain: dict[str, Any] = {"role": "assistant", "content": text}
    if served.generation.empty_tool_calls:
        plain["tool_calls"] = []
    return plain
