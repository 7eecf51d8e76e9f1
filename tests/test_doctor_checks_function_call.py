"""The ``function-call`` check on facts built by hand: MetaGPT's aask_code as sent, through the tools fix, or not."""

from __future__ import annotations

import dataclasses

from doctor_facts import facts, one, status
from metagpt_vllm_fix._activation import FixStatus
from metagpt_vllm_fix.doctor.checks.function_call import function_call
from metagpt_vllm_fix.doctor.facts import FUNCTION_CALL, AskResult, Exchange, FixNote, not_asked
from metagpt_vllm_fix.fixes import NAMES
from metagpt_vllm_fix.report import OK, PROBLEM, WARNING

AUTO_REFUSED = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
POST = "/v1/chat/completions"


def asked(**changes) -> AskResult:
    return dataclasses.replace(AskResult(asked=True, exchanges=[Exchange("POST", POST, "Bearer tok...789", 512, 200)],
                                         seconds=0.5), **changes)


def with_ask(result: AskResult, **changes):
    return facts(asks={FUNCTION_CALL: result}, **changes)


def test_function_call_says_nothing_when_it_did_not_ask():
    assert function_call.run(facts()) == []
    assert function_call.run(with_ask(not_asked("the server did not answer the model list"))) == []


def test_a_tool_call_the_server_made_itself_is_ok():
    level, message = one(function_call, with_ask(asked(answered=True, tool_call=True,
                                                       reads='{"language": "python", "code": "print(1)"}')))
    assert level == OK and "the server calls the function itself" in message and "print(1)" in message


def test_a_tool_call_through_the_tools_fix_is_ok_counting_the_requests_and_listing_each_one():
    exchanges = [Exchange("POST", POST, "Bearer tok...789", 512, 400), Exchange("GET", "/version", "", None, 200),
                 Exchange("POST", "/v1/completions", "Bearer tok...789", 512, 200)]
    note = FixNote("tools", "tools: http://x refuses function calls (...); Remedy: start vLLM with ...")
    level, message = one(function_call, with_ask(asked(answered=True, tool_call=True, exchanges=exchanges,
                                                       fixes=[note], reads='{"language": "python"}')))
    assert level == OK and "a function call came back through the tools fix, MetaGPT reads" in message
    assert "at 3 requests for this one call (the server does not call tools itself" in message.splitlines()[0]
    assert message.splitlines()[1:] == [f"  POST {POST} (Bearer tok...789, max_tokens 512) -> 400",
                                        "  GET /version -> 200",
                                        "  POST /v1/completions (Bearer tok...789, max_tokens 512) -> 200",
                                        "  the tools fix acted: http://x refuses function calls (...); Remedy: start "
                                        "vLLM with ..."]


def test_content_instead_of_a_call_is_a_warning_that_metagpt_reads_it_as_markdown():
    level, message = one(function_call, with_ask(asked(answered=True, reads='{"language": "markdown"}')))
    assert level == WARNING and "carries no function call" in message and "--enable-auto-tool-choice" in message


def test_the_refusal_with_the_tools_fix_off_is_a_warning_that_the_data_interpreter_cannot_step_naming_both_remedies():
    fixes = [FixStatus(name, "off" if name == "tools" else "active", "") for name in NAMES]
    refused = asked(error="status", status=400, message=AUTO_REFUSED,
                    exchanges=[Exchange("POST", POST, "Bearer tok...789", 512, 400)])
    found = with_ask(refused)
    found = dataclasses.replace(found, plugin=dataclasses.replace(found.plugin, status=status(fixes=fixes)))
    level, message = one(function_call, found)
    assert level == WARNING and AUTO_REFUSED in message
    assert "the tools fix is not in effect (turned off by METAGPT_VLLM_FIX_DISABLE)" in message
    assert "the Data Interpreter cannot take a step" in message
    assert "--tool-call-parser" in message


def test_any_other_refusal_is_a_problem_with_the_servers_words():
    refused = asked(error="status", status=400, message="This model's maximum context length is 512 tokens.",
                    exchanges=[Exchange("POST", POST, "Bearer tok...789", 512, 400)])
    level, message = one(function_call, with_ask(refused))
    assert level == PROBLEM and "maximum context length is 512 tokens" in message


def test_no_answer_in_time_is_a_warning_that_a_constrained_answer_takes_a_generation():
    level, message = one(function_call, with_ask(asked(error="timeout", message="no answer within 5 s")))
    assert level == WARNING and "--timeout" in message and "a whole generation" in message
