"""``function-call``: MetaGPT's function-call request (``aask_code``: the Data Interpreter), as sent and with the fixes.

A vLLM started without tool flags refuses it (or answers what MetaGPT cannot read); the ``tools`` fix then asks for
the function's arguments as schema-constrained JSON. An answer through that fix is ok (a constrained answer is a
function call in full, unlike a conversation laid out by guess; and a user who never runs the Data Interpreter
loses nothing), with the requests it took and the server-side remedy in the fix's line.
"""

from __future__ import annotations

from ...fixes.api_key import unsendable as unsendable_key
from ...report import OK, PROBLEM, WARNING
from ..check import Verdict, check
from ..facts import FUNCTION_CALL, AskResult, Facts
from .ask import explain, request_lines

WHAT = "asked as the Data Interpreter does (aask_code: tools=[execute], not streamed)"


def function_call_verdict(result: AskResult, facts: Facts) -> Verdict:
    """ok for a function call, made by the server or got by the tools fix; a warning for content MetaGPT reads as
    markdown, for a tools refusal the fix does not answer (chat still works), or for no answer in time; a problem for
    no answer otherwise (with why, and the remedy)."""
    from ...fixes.tools import remedy

    config = facts.config
    model = (config.model or "") if config is not None else ""
    what = WHAT + (f" ({result.note})" if result.note else "")
    if not result.answered:
        off = facts.fixes_off()
        why = explain(result, off, model, config is not None and unsendable_key(config.api_key), facts.shown)
        from ...vllm_versions import is_tools_refusal

        if result.status == 400 and is_tools_refusal(result.message or ""):
            # chat works (the ask line says so): only the function calls fail, the Data Interpreter's every step
            off_why = f" ({off['tools']})" if "tools" in off else ""
            return WARNING, (f"{what}: no answer. {why} The server was started without tool flags and the tools fix "
                             f"is not in effect{off_why}: MetaGPT's chat answers, but the Data Interpreter cannot take "
                             f"a step. Remedy: let the fix act, or {remedy()}.{request_lines(result)}")
        if result.error == "timeout":
            return WARNING, (f"{what}: no answer. {why} (a constrained answer takes a whole generation)"
                             f"{request_lines(result)}")
        return PROBLEM, f"{what}: no answer. {why}{request_lines(result)}"
    got = f"MetaGPT reads {result.reads}" if result.reads else "an answer came back"
    if result.tool_call and "tools" in result.fixes_acted:
        sent = len(result.exchanges)
        return OK, (f"{what}: a function call came back through the tools fix, {got}, in {result.seconds:g} s, at "
                    f"{sent} request{'s' if sent != 1 else ''} for this one call (the server does not call tools "
                    f"itself; the fix's line below says what to change on the server for it to)"
                    f"{request_lines(result)}")
    if result.tool_call:
        return OK, (f"{what}: the server calls the function itself; {got}, in {result.seconds:g} s"
                    f"{request_lines(result)}")
    return WARNING, (f"{what}: the answer carries no function call; {got} (MetaGPT reads content as code only inside "
                     f"one code fence, else as a markdown cell that ran). Remedy: {remedy()}.{request_lines(result)}")

@check("function-call", "MetaGPT's function-call request (aask_code, the Data Interpreter's code step), through its "
                        "provider and the fixes as installed: does a function call come back",
       needs=("config", "plugin", "function_call"))
def function_call(facts: Facts) -> list[Verdict]:
    result = facts.asks.get(FUNCTION_CALL)
    if result is None or facts.config is None or not result.asked:
        return []
    return [function_call_verdict(result, facts)]
