"""The pure parts of a function call asked as a constrained answer (metagpt_vllm_fix.function_calls).

The schemas are MetaGPT 0.7.7's own (GENERAL_FUNCTION_SCHEMA and the Data Interpreter's), read from the installed
package, and the answers are openai 1.6.0's own types, read back the way MetaGPT reads them
(``OpenAILLM.get_choice_function_arguments``).
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai.types.chat.chat_completion import ChatCompletion, Choice
from openai.types.chat.chat_completion_message import ChatCompletionMessage
from openai.types.completion_usage import CompletionUsage

from conftest import metagpt_with_placeholder_config
from metagpt_vllm_fix import function_calls as fc

metagpt_with_placeholder_config()  # the Data Interpreter's modules load MetaGPT's config when imported
from metagpt.actions.di.write_plan import ASSIGN_TASK_TYPE_CONFIG  # noqa: E402
from metagpt.provider.constant import GENERAL_FUNCTION_SCHEMA  # noqa: E402
from metagpt.utils.common import create_func_call_config  # noqa: E402

CODE_STEP = {"tools": [{"type": "function", "function": GENERAL_FUNCTION_SCHEMA}]}  # aask_code without a choice
PLAN_STEP = create_func_call_config(ASSIGN_TASK_TYPE_CONFIG)  # tools + a named tool_choice
OTHER = {"name": "lookup", "description": "Look a word up.",
         "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}


def completion(text: str, finish: str = "stop") -> ChatCompletion:
    """A chat answer whose content is ``text``, as openai 1.6.0 builds it from a server's JSON."""
    return ChatCompletion(id="cmpl-1", object="chat.completion", created=1, model="m",
                          choices=[Choice(index=0, finish_reason=finish, logprobs=None,
                                          message=ChatCompletionMessage(role="assistant", content=text))],
                          usage=CompletionUsage(prompt_tokens=7, completion_tokens=5, total_tokens=12))


def metagpt_reads(answer: ChatCompletion) -> dict:
    """What MetaGPT 0.7's aask_code returns for this answer (its own method, on a provider-free instance)."""
    from metagpt.provider.openai_api import OpenAILLM

    return OpenAILLM.get_choice_function_arguments(object.__new__(OpenAILLM), answer)


def test_the_code_step_asks_for_executes_arguments_unforced():
    chosen = fc.plan(CODE_STEP)
    assert chosen is not None and chosen.names == ["execute"] and not chosen.forced and not chosen.picks
    assert chosen.schema == GENERAL_FUNCTION_SCHEMA["parameters"]


def test_a_named_tool_choice_asks_for_that_function_forced():
    chosen = fc.plan({**PLAN_STEP, "tools": [{"type": "function", "function": OTHER}, *PLAN_STEP["tools"]]})
    assert chosen is not None and chosen.names == ["assign_task_type"] and chosen.forced
    assert chosen.schema == ASSIGN_TASK_TYPE_CONFIG["parameters"]


def test_several_tools_without_a_choice_ask_for_a_name_and_its_arguments():
    chosen = fc.plan({"tools": [{"type": "function", "function": OTHER}, *CODE_STEP["tools"]]})
    assert chosen is not None and chosen.picks and chosen.names == ["lookup", "execute"]
    jsonschema.validate({"name": "lookup", "arguments": {"word": "vLLM"}}, chosen.schema)
    jsonschema.validate({"name": "execute", "arguments": {"language": "python", "code": "1"}}, chosen.schema)
    with pytest.raises(jsonschema.ValidationError):  # a name with the other function's arguments
        jsonschema.validate({"name": "lookup", "arguments": {"language": "python", "code": "1"}}, chosen.schema)


@pytest.mark.parametrize("request_kwargs", [
    {}, {"tools": []}, {**CODE_STEP, "tool_choice": "none"},
    {**CODE_STEP, "tool_choice": {"type": "function", "function": {"name": "not_offered"}}},
], ids=["no-tools", "empty-tools", "choice-none", "unknown-name"])
def test_requests_that_ask_for_no_answerable_call_get_no_plan(request_kwargs):
    assert fc.plan(request_kwargs) is None


def test_the_legacy_functions_argument_is_understood_too():
    chosen = fc.plan({"functions": [OTHER], "function_call": {"name": "lookup"}})
    assert chosen is not None and chosen.names == ["lookup"] and chosen.forced


def test_the_model_is_told_the_functions_name_description_and_parameters():
    text = fc.instructions(fc.plan(CODE_STEP))
    assert "execute" in text and GENERAL_FUNCTION_SCHEMA["description"] in text
    assert json.dumps(GENERAL_FUNCTION_SCHEMA["parameters"]) in text
    several = fc.instructions(fc.plan({"tools": [{"type": "function", "function": OTHER}, *CODE_STEP["tools"]]}))
    assert "lookup" in several and "execute" in several and '"name"' in several


def test_instructions_join_the_leading_system_message_or_open_the_conversation():
    messages = [{"role": "system", "content": "You are Code Interpreter."}, {"role": "user", "content": "Go."}]
    told = fc.told(messages, "TOOLS")
    assert told == [{"role": "system", "content": "You are Code Interpreter.\n\nTOOLS"}, messages[1]]
    assert messages[0]["content"] == "You are Code Interpreter."  # the caller's list is left as it was
    assert fc.told([{"role": "user", "content": "Go."}], "TOOLS") == [{"role": "system", "content": "TOOLS"},
                                                                       {"role": "user", "content": "Go."}]


def test_the_request_goes_without_the_arguments_that_ask_for_a_call():
    kwargs = {**PLAN_STEP, "model": "m", "max_tokens": 9, "parallel_tool_calls": False}
    assert fc.without_function_calls(kwargs) == {"model": "m", "max_tokens": 9}


def test_a_constrained_answer_reaches_metagpt_as_the_named_tool_call_openai_would_send():
    chosen = fc.plan(PLAN_STEP)
    answer = fc.tool_call_answer(completion('  {"task_type":\n ["eda"]}  \n'), chosen)
    message = answer.choices[0].message
    assert message.content is None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "assign_task_type"
    assert json.loads(call.function.arguments) == {"task_type": ["eda"]}
    assert answer.choices[0].finish_reason == "stop"  # OpenAI ends a forced call with "stop"
    assert answer.usage.completion_tokens == 5  # the server's own usage
    assert metagpt_reads(answer) == {"task_type": ["eda"]}


def test_an_unforced_call_finishes_with_tool_calls_and_metagpt_reads_the_code():
    answer = fc.tool_call_answer(completion('{"language": "python", "code": "print(1)"}'), fc.plan(CODE_STEP))
    assert answer.choices[0].finish_reason == "tool_calls"
    assert metagpt_reads(answer) == {"language": "python", "code": "print(1)"}


def test_arguments_cut_off_by_max_tokens_are_handed_over_as_they_came():
    cut = '{ \n"language": "python", "code": "print(1 \n\t'  # a random model pads JSON with whitespace
    answer = fc.tool_call_answer(completion(cut, "length"), fc.plan(CODE_STEP))
    assert answer.choices[0].message.tool_calls[0].function.arguments == cut
    assert answer.choices[0].finish_reason == "length"
    assert metagpt_reads(answer)["language"] == "python"  # MetaGPT's own fallback reads what it can


def test_the_picked_function_names_the_tool_call():
    chosen = fc.plan({"tools": [{"type": "function", "function": OTHER}, *CODE_STEP["tools"]]})
    answer = fc.tool_call_answer(completion('{"name": "lookup", "arguments": {"word": "x"}}'), chosen)
    call = answer.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("lookup", {"word": "x"})


@pytest.mark.parametrize("content, fenced", [("```python\nprint(1)\n```", True), ("Here:\n```py\n1\n```", False),
                                             ("print(1)", False), (None, False)])
def test_code_fenced_is_what_metagpt_reads_as_code(content, fenced):
    assert fc.code_fenced(content) is fenced
    if content is not None:
        language = metagpt_reads(completion(content))["language"]
        assert (language == "python") is fenced
