"""The doctor's second live ask: MetaGPT's own function-call request (``aask_code``, the Data Interpreter's code step).

A server that answers chat may still refuse ``tools`` (a vLLM started without tool flags), and only a function call
shows it. So the doctor sends what ``OpenAILLM.aask_code`` sends for the code step -- its ``_achat_completion_function``
with MetaGPT's own ``execute`` tool, not streamed -- through the provider built from the user's config with the fixes
as installed, and notes what came back: a tool call, content (which MetaGPT reads as code only inside one code fence),
or the error. The requests and the fixes' records are collected as for the chat ask (asking.py). Where MetaGPT's chat
request was sent and got no answer (a wrong key, a model not served, no time left), the function call is not sent:
it would meet the same wall, and the ``ask`` line already says which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .asking import AASK_TIMEOUT, SHOWN_CHARS, gather_after_chat, shortened
from .facts import FUNCTION_CALL, AskResult, Facts

PROMPT = "Write Python code that prints the first ten square numbers."


def _shown(rsp: Any) -> str:
    """The answer as MetaGPT reads it, in a few characters: ``execute({"language": ...`` or the content."""
    message = rsp.choices[0].message
    calls = message.tool_calls or []
    if calls and calls[0].function is not None:
        return f"{calls[0].function.name}({calls[0].function.arguments or ''}"[:SHOWN_CHARS]
    return (message.content or "")[:SHOWN_CHARS]


async def _ask_code(llm: Any, result: AskResult) -> None:
    """What ``aask_code`` does for the code step, split where the doctor looks: the request, then MetaGPT's reading."""
    messages = [llm._default_system_msg(), llm._user_msg(PROMPT)]
    rsp = await llm._achat_completion_function(messages, timeout=AASK_TIMEOUT)
    message = rsp.choices[0].message
    result.first_token = _shown(rsp)
    read = llm.get_choice_function_arguments(rsp)  # raises where MetaGPT would (IndexError on tool_calls: [])
    result.answered = True
    result.tool_call = bool(message.tool_calls)
    if isinstance(read, dict):
        result.reads = shortened(read, SHOWN_CHARS * 2)


def gather_function_call(facts: Facts, scratch: Path, deadline: float) -> Facts:
    """``asks["aask_code"]``: MetaGPT's function-call request, as MetaGPT runs in this environment send it."""
    return gather_after_chat(facts, scratch, deadline, _ask_code, FUNCTION_CALL)
