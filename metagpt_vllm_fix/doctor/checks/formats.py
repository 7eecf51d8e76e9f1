"""``formats``: one ActionNode fill as MetaGPT sends it (format_ask.py): can MetaGPT parse the answer, and, where it
cannot, does the formats fix get one it can.

ok when MetaGPT parses the answer as sent; a warning when only the fix's constrained ask gets one (it works, at a
second generation per fill: the fix's line says how to save it); a problem when MetaGPT cannot parse what comes
back (its fills end in RetryError: every role built on ActionNode stops at its first step).
"""

from __future__ import annotations

from ...report import OK, PROBLEM, WARNING
from ..check import Verdict, check
from ..facts import FORMAT, AskResult, Facts
from .ask import explain, request_lines

WHAT = "an ActionNode fill as MetaGPT sends it (WritePRD's WP_ISSUE_TYPE node: [CONTENT] JSON, one attempt)"


def format_verdict(result: AskResult, facts: Facts) -> Verdict:
    from ...fixes.formats import ENV, remedy

    config = facts.config
    model = (config.model or "") if config is not None else ""
    off = facts.fixes_off()
    if not result.answered:
        why = explain(result, off, model, shown=facts.shown)  # (its key is the ask line's to judge)
        if result.error == "timeout":
            return WARNING, (f"{WHAT}: no answer. {why} (a fill is a whole generation; `metagpt-vllm-fix doctor "
                             f"formats --timeout 600` waits for it){request_lines(result)}")
        return PROBLEM, f"{WHAT}: no answer. {why}{request_lines(result)}"
    if result.unparsed:
        fix = f": the formats fix is not in effect ({off['formats']})" if "formats" in off else ""
        return PROBLEM, (f"{WHAT}: MetaGPT cannot parse the answer ({result.unparsed}){fix}. MetaGPT asks the same "
                         f"prompt 6 times and ends in RetryError: WritePRD, WriteDesign and WriteTasks stop at their "
                         f"first step. Remedy: let the formats fix act, or {remedy()}.{request_lines(result)}")
    answered = [e for e in result.exchanges if e.method == "POST" and e.status == 200]
    if answered and answered[0].constrained:  # the free answer was never asked for
        if "formats" in result.fixes_acted:  # the model has no chat template: a base model (the fix says so below)
            return WARNING, (f"{WHAT}: MetaGPT parses the answer, constrained by the formats fix from the first ask; "
                             f"it reads {result.reads}, in {result.seconds:g} s. The fix's line below says why: a "
                             f"base model does not answer in MetaGPT's formats{request_lines(result)}")
        return OK, (f"{WHAT}: MetaGPT parses the answer, constrained from the first ask ({ENV}=first); it reads "
                    f"{result.reads}, in {result.seconds:g} s{request_lines(result)}")
    if any(e.constrained for e in answered):
        return WARNING, (f"{WHAT}: MetaGPT could not parse the answer as sent; the formats fix asked once more, "
                         f"constrained to the node's shape, and MetaGPT parses that: two generations per fill "
                         f"({ENV}=first saves the first). MetaGPT reads {result.reads}, in {result.seconds:g} s"
                         f"{request_lines(result)}")
    return OK, f"{WHAT}: MetaGPT parses the answer as sent; it reads {result.reads}, in {result.seconds:g} s" \
               f"{request_lines(result)}"


@check("formats", "one ActionNode fill as MetaGPT sends it ([CONTENT] JSON): can MetaGPT parse the answer, and if "
                  "not, does the formats fix get one it can", needs=("config", "plugin", "format"))
def formats(facts: Facts) -> list[Verdict]:
    result = facts.asks.get(FORMAT)
    if result is None or facts.config is None or not result.asked:
        return []
    return [format_verdict(result, facts)]
