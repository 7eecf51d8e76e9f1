"""The tools fix against the emulator, through the real MetaGPT 0.7.7 provider (``aask_code``, as the Data
Interpreter calls it), by vLLM generation and by the served model's chat template.

Each test counts the requests the emulator answered (its recorder), ``GET /version`` included: the fix asks it
once per request it acts on, to know which field constrains (vllm-tools-facts.md §1, §4); without an answer there,
it sends every field. The arguments are held to the compact JSON of the function's schema, bounded for the request's
max_tokens (json_bounds), and asked for streamed. The real-vLLM proof is tests/real_vllm/test_function_calls.py.
"""

from __future__ import annotations

import json
import logging

import jsonschema
import openai
import pytest

import metagpt_vllm_fix
from conftest import SEED_KEY, metagpt_with_placeholder_config, open_llm_instance, run
from metagpt_vllm_fix.json_bounds import bound, pattern
from metagpt_vllm_fix.server import VLLMServer
from metagpt_vllm_fix.server.structured import instance

metagpt_with_placeholder_config()  # the Data Interpreter's modules load MetaGPT's config when imported
from metagpt.prompts.di.write_analysis_code import ASSIGN_TASK_TYPE_CONFIG  # noqa: E402
from metagpt.provider.constant import GENERAL_FUNCTION_SCHEMA  # noqa: E402
from metagpt.utils.common import create_func_call_config  # noqa: E402

CODE_STEP = [{"role": "system", "content": "You are Code Interpreter."},  # WriteCodeWithoutTools' shape
             {"role": "user", "content": "Plot the data."}]
PLAN_STEP = [{"role": "user", "content": "Assign a task type to each task."}]  # WritePlan.assign_task_type's
NAMED = create_func_call_config(ASSIGN_TASK_TYPE_CONFIG)  # tools + a named tool_choice
EXECUTE = GENERAL_FUNCTION_SCHEMA["parameters"]
TASK_TYPE = ASSIGN_TASK_TYPE_CONFIG["parameters"]
LOOKUP = {"name": "lookup", "description": "Look a word up.",
          "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
ASKED = "You have a function to call"  # what the model is told (function_calls.instructions)

pytestmark = pytest.mark.usefixtures("fresh_fixes")


def held_to(schema: dict, budget: int = 4096) -> str:
    """The pattern the fix holds a function's arguments to, for MetaGPT's max_tokens (4096 by default); raw line
    breaks in strings too, as MetaGPT reads arguments with json.loads(strict=False)."""
    return pattern(bound(schema, budget)[0], loose=True)


def serving(version: str = "0.32.0", kind: str = "llama-2-chat", **options) -> VLLMServer:
    """The emulator with room for MetaGPT's max_tokens 4096 (the max_tokens fix is not what these tests are about)."""
    return VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, vllm_version=version, chat_template=kind, **options)


def seen(server: VLLMServer) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in server.requests]


def bodies(server: VLLMServer) -> list[dict]:
    return [r.body for r in server.requests if r.method == "POST"]


def logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "fix", None) == "tools"]


def fix_off(monkeypatch) -> None:
    metagpt_vllm_fix.remove()
    monkeypatch.setenv("METAGPT_VLLM_FIX_DISABLE", "tools")
    metagpt_vllm_fix.apply()


def create(llm, **kwargs):
    """One ``chat.completions.create`` of MetaGPT's client, with MetaGPT's own parameters (``_cons_kwargs``)."""
    return run(llm.aclient.chat.completions.create(**llm._cons_kwargs(**kwargs)))


def metagpt_reads(llm, answer) -> dict:
    return llm.get_choice_function_arguments(answer)


# --- by generation --------------------------------------------------------------------------------------------

def test_0_3_3_a_markdown_answer_to_the_code_step_is_asked_again_constrained_in_every_field(caplog):
    with serving("0.3.3") as server, caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        code = run(open_llm_instance(server.base_url).aask_code(CODE_STEP))
        requests, (first, second) = seen(server), bodies(server)
    assert code == instance(EXECUTE)  # the constrained answer, as the tool call MetaGPT reads
    assert requests == [("POST", CHAT, 200), ("GET", "/version", 404), ("POST", CHAT, 200)]
    assert "tools" in first and "tools" not in second and "tool_choice" not in second
    # 0.3.3 has no /version: every field goes, and 0.3.3 reads guided_regex
    assert second["guided_regex"] == held_to(EXECUTE) and second["structured_outputs"] == {"regex": held_to(EXECUTE)}
    assert second["stream"] is True and ASKED in second["messages"][0]["content"]
    assert second["messages"][1:] == CODE_STEP[1:]
    assert len(logged(caplog)) == 1 and "guided_regex / structured_outputs (regex)" in logged(caplog)[0]


def test_0_3_3_a_named_calls_content_answer_is_asked_again_constrained():
    with serving("0.3.3") as server:
        answer = run(open_llm_instance(server.base_url).aask_code(PLAN_STEP, **NAMED))
        requests, second = seen(server), bodies(server)[-1]
    assert answer == instance(TASK_TYPE) and "task_type" in answer  # what assign_task_type reads
    assert requests == [("POST", CHAT, 200), ("GET", "/version", 404), ("POST", CHAT, 200)]
    assert second["guided_regex"] == held_to(TASK_TYPE)


def test_0_10_2_refuses_the_code_step_and_answers_it_constrained_with_guided_regex():
    with serving("0.10.2") as server:
        code = run(open_llm_instance(server.base_url).aask_code(CODE_STEP))
        requests, second = seen(server), bodies(server)[-1]
    assert code == instance(EXECUTE)
    assert requests == [("POST", CHAT, 400), ("GET", "/version", 200), ("POST", CHAT, 200)]
    assert second["guided_regex"] == held_to(EXECUTE) and "structured_outputs" not in second


def test_0_10_2_a_named_choices_guided_tool_call_passes_untouched(caplog):
    with serving("0.10.2") as server, caplog.at_level(logging.INFO, logger="metagpt_vllm_fix"):
        llm = open_llm_instance(server.base_url)
        answer = create(llm, messages=PLAN_STEP, **NAMED)
        requests = seen(server)
    (call,) = answer.choices[0].message.tool_calls
    assert call.id.startswith("chatcmpl-tool-") and answer.choices[0].message.content == ""  # the server's own
    assert metagpt_reads(llm, answer) == instance(TASK_TYPE)
    assert requests == [("POST", CHAT, 200)] and logged(caplog) == []


def test_0_10_2_empty_tool_calls_beside_content_become_none_without_another_request(monkeypatch):
    """vLLM 0.5 - 0.23 answer ``tool_calls: []`` when no tool was called (here: legacy ``functions``, which 0.10.2
    ignores): MetaGPT then reads the content instead of raising IndexError."""
    with serving("0.10.2") as server:
        llm = open_llm_instance(server.base_url)
        answer = create(llm, messages=CODE_STEP, functions=[GENERAL_FUNCTION_SCHEMA])
        requests = seen(server)
        fix_off(monkeypatch)
        upstream = create(open_llm_instance(server.base_url), messages=CODE_STEP, functions=[GENERAL_FUNCTION_SCHEMA])
    assert answer.choices[0].message.tool_calls is None
    assert metagpt_reads(llm, answer) == {"language": "markdown", "code": "echo: Plot the data."}
    assert requests == [("POST", CHAT, 200)]
    assert upstream.choices[0].message.tool_calls == []
    with pytest.raises(IndexError):
        metagpt_reads(llm, upstream)


def test_0_32_refuses_the_code_step_and_answers_it_constrained_with_structured_outputs(caplog):
    with serving() as server, caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        llm = open_llm_instance(server.base_url)
        answer = run(llm._achat_completion_function(CODE_STEP))
        requests, second = seen(server), bodies(server)[-1]
    message = answer.choices[0].message
    (call,) = message.tool_calls
    assert (message.content, call.type, call.function.name, answer.choices[0].finish_reason) == (
        None, "function", "execute", "tool_calls")  # OpenAI's shape for a chosen call
    assert json.loads(call.function.arguments) == instance(EXECUTE)
    assert answer.usage.completion_tokens > 0  # the server's own usage, from the stream's end
    assert requests == [("POST", CHAT, 400), ("GET", "/version", 200), ("POST", CHAT, 200)]
    assert second["structured_outputs"] == {"regex": held_to(EXECUTE)} and "guided_regex" not in second
    assert second["stream"] is True and second["stream_options"] == {"include_usage": True}
    (line,) = logged(caplog)
    assert "refuses function calls" in line and "--enable-auto-tool-choice" in line


def test_0_32_a_named_choice_is_answered_with_a_forced_call():
    with serving() as server:
        llm = open_llm_instance(server.base_url)
        answer = run(llm._achat_completion_function(PLAN_STEP, **NAMED))
        requests = seen(server)
    assert answer.choices[0].finish_reason == "stop"  # OpenAI ends a forced call with "stop"
    assert answer.choices[0].message.tool_calls[0].function.name == "assign_task_type"
    assert metagpt_reads(llm, answer) == instance(TASK_TYPE)
    assert requests == [("POST", CHAT, 400), ("GET", "/version", 200), ("POST", CHAT, 200)]


# --- by template kind (vLLM 0.32) -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind,answered_by", [
    ("none", [("POST", CHAT, 400), ("POST", COMPLETIONS, 200)]),  # no chat template: /v1/completions
    ("mistral-instruct", [("POST", CHAT, 400), ("POST", CHAT, 200)]),  # the system message refused, then folded
    ("llama-2-chat", [("POST", CHAT, 200)]),
])
def test_the_constrained_request_goes_through_the_template_fixes(kind, answered_by):
    with serving(kind=kind) as server:
        code = run(open_llm_instance(server.base_url).aask_code(CODE_STEP))
        requests, last = seen(server), bodies(server)[-1]
    assert code == instance(EXECUTE)
    assert requests == [("POST", CHAT, 400), ("GET", "/version", 200), *answered_by]
    assert last["structured_outputs"] == {"regex": held_to(EXECUTE)}
    told = last["prompt"] if kind == "none" else "\n".join(m["content"] for m in last["messages"])
    assert ASKED in told and GENERAL_FUNCTION_SCHEMA["description"] in told and "Plot the data." in told
    if kind == "mistral-instruct":
        assert [m["role"] for m in last["messages"]] == ["user"]


def test_several_tools_without_a_choice_are_asked_for_a_name_and_its_arguments():
    tools = [{"type": "function", "function": LOOKUP}, {"type": "function", "function": GENERAL_FUNCTION_SCHEMA}]
    with serving() as server:
        answer = create(open_llm_instance(server.base_url), messages=CODE_STEP, tools=tools)
        regex = bodies(server)[-1]["structured_outputs"]["regex"]
    (call,) = answer.choices[0].message.tool_calls
    assert regex.startswith('(?:\\{"name": (?:"lookup"), "arguments": ') and '(?:"execute")' in regex
    assert call.function.name == "lookup"  # the emulator's constrained model takes the first branch
    jsonschema.validate(json.loads(call.function.arguments), LOOKUP["parameters"])


# --- servers and requests the fix leaves alone ----------------------------------------------------------------

def test_a_server_with_tool_flags_is_never_rewritten(caplog):
    with serving(tool_parser="hermes") as server, caplog.at_level(logging.INFO, logger="metagpt_vllm_fix"):
        llm = open_llm_instance(server.base_url)
        code = run(llm._achat_completion_function(CODE_STEP))
        plan = run(llm._achat_completion_function(PLAN_STEP, **NAMED))
        requests, sent = seen(server), bodies(server)
    assert requests == [("POST", CHAT, 200)] * 2 and all("tools" in body for body in sent)
    assert [a.choices[0].message.tool_calls[0].id[:14] for a in (code, plan)] == ["chatcmpl-tool-"] * 2
    assert logged(caplog) == []


def test_a_streamed_request_with_tools_passes_untouched(caplog):
    with serving() as server, caplog.at_level(logging.INFO, logger="metagpt_vllm_fix"):
        llm = open_llm_instance(server.base_url)
        with pytest.raises(openai.BadRequestError, match="auto\" tool choice requires"):
            create(llm, messages=CODE_STEP, tools=[{"type": "function", "function": GENERAL_FUNCTION_SCHEMA}],
                   stream=True)
        requests = seen(server)
    assert requests == [("POST", CHAT, 400)] and logged(caplog) == []


# With the fix off by name: what each generation gives MetaGPT's Data Interpreter steps, as upstream.
@pytest.mark.parametrize("version,code_step,plan_step", [
    ("0.3.3", {"language": "markdown", "code": "echo: Plot the data."}, KeyError),  # rsp["task_type"] on content
    ("0.10.2", openai.BadRequestError, instance(TASK_TYPE)),  # "auto" refused; named: vLLM's own guided call
    ("0.32.0", openai.BadRequestError, openai.BadRequestError),
])
def test_turned_off_by_name_each_generation_fails_as_upstream(monkeypatch, version, code_step, plan_step):
    fix_off(monkeypatch)
    with serving(version) as server:
        llm = open_llm_instance(server.base_url)
        found = []
        for messages, kwargs in ((CODE_STEP, {}), (PLAN_STEP, NAMED)):
            try:
                answer = run(llm.aask_code(messages, **kwargs))
                found.append(answer["task_type"] if kwargs and version == "0.3.3" else answer)
            except Exception as exc:  # noqa: BLE001 - what upstream raises is the subject
                found.append(type(exc))
        posts = [status for method, _, status in seen(server) if method == "POST"]
    assert found == [code_step, plan_step]
    assert len(posts) == 2  # one request per step: nothing asked again


# --- bad input ------------------------------------------------------------------------------------------------

def test_arguments_cut_by_max_tokens_are_asked_once_more_for_the_room_then_handed_over_with_a_warning(caplog):
    with serving() as server, caplog.at_level(logging.INFO, logger="metagpt_vllm_fix"):
        llm = open_llm_instance(server.base_url, max_token=3)
        answer = run(llm._achat_completion_function(CODE_STEP))
        requests = seen(server)
        cut = [r for r in server.requests if r.method == "POST" and r.status == 200]
    assert requests == [("POST", CHAT, 400), ("GET", "/version", 200), ("POST", CHAT, 200), ("POST", CHAT, 200)]
    assert [r.body["max_tokens"] for r in cut] == [3, 3]
    assert cut[0].body["structured_outputs"] == {"regex": held_to(EXECUTE, 3)}  # the room the server showed: 3 again
    arguments = answer.choices[0].message.tool_calls[0].function.arguments
    assert answer.choices[0].finish_reason == "length"
    assert arguments == '{"language": "python", "code": '  # the server's text, three "tokens" of it
    lines = logged(caplog)
    assert any("cut off at max_tokens after 3 tokens" in line and "asked once more" in line for line in lines)
    assert sum("Raise llm.max_token" in line for line in lines) == 1


def test_a_keyword_the_server_cannot_compile_is_left_out_of_the_constraint():
    """vLLM 0.32 refuses a whole request whose schema holds ``uniqueItems`` (a set, in pydantic); the pattern the
    fix sends has no such keyword, and the answer keeps to the rest of the schema."""
    tags = {"name": "tag", "parameters": {"type": "object", "required": ["tags"], "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}}}
    with serving() as server:
        answer = run(open_llm_instance(server.base_url).aask_code(PLAN_STEP, **create_func_call_config(tags)))
        requests = seen(server)
    assert answer == {"tags": []}
    assert requests == [("POST", CHAT, 400), ("GET", "/version", 200), ("POST", CHAT, 200)]


def test_a_server_refusing_the_structured_output_field_gives_the_plain_answer_and_one_warning(caplog):
    """An OpenAI-compatible server that is not vLLM refuses ``stream_options`` and ``structured_outputs``: the usage
    fix asks without the first, the tools fix cannot do without the second, and MetaGPT gets what vLLM 0.3 gave, the
    model's plain answer."""
    with serving(reject_unknown_fields=True) as server, caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        llm = open_llm_instance(server.base_url)
        code = run(llm.aask_code(CODE_STEP))
        requests, sent = seen(server), bodies(server)
    assert code == {"language": "markdown", "code": "echo: Plot the data."}
    assert requests == [("POST", CHAT, 400), ("GET", "/version", 200), ("POST", CHAT, 400), ("POST", CHAT, 400),
                        ("POST", CHAT, 200)]
    assert "stream_options" in sent[1] and "stream_options" not in sent[2] and "structured_outputs" in sent[2]
    assert sent[3]["messages"] == CODE_STEP and "tools" not in sent[3]
    (line,) = logged(caplog)
    assert "cannot constrain answers" in line and "Remedy: start vLLM with --enable-auto-tool-choice" in line


def test_remove_restores_the_refusal_and_apply_brings_the_fix_back():
    with serving() as server:
        llm = open_llm_instance(server.base_url)
        metagpt_vllm_fix.remove()  # the client built while applied is unwrapped too
        with pytest.raises(openai.BadRequestError):
            run(llm.aask_code(CODE_STEP))
        metagpt_vllm_fix.apply()
        code = run(open_llm_instance(server.base_url).aask_code(CODE_STEP))
        requests = seen(server)
    assert code == instance(EXECUTE)
    assert requests == [("POST", CHAT, 400), ("POST", CHAT, 400), ("GET", "/version", 200), ("POST", CHAT, 200)]


def test_behind_a_proxy_that_hides_version_vllm_0_32_still_answers_the_call_constrained():
    """A reverse proxy forwarding only /v1/... answers GET /version 404: the fix then sends every field, and vLLM
    0.32 reads structured_outputs (before, 0.3's guided_json alone went, which 0.12 and later ignore)."""
    from real_vllm.recording_proxy import RecordingProxy

    with serving() as server, RecordingProxy(server.url, only="/v1/") as proxy:
        code = run(open_llm_instance(proxy.url + "/v1").aask_code(CODE_STEP))
        through = [(e.method, e.path, e.status) for e in proxy.exchanges]
        constrained = proxy.posted(CHAT)[-1].body
    assert code == instance(EXECUTE)
    assert through == [("POST", CHAT, 400), ("GET", "/version", 404), ("POST", CHAT, 200)]
    assert constrained["structured_outputs"] == {"regex": held_to(EXECUTE)} and "guided_regex" in constrained
