"""The Data Interpreter's function calls (``aask_code``) on real vLLM 0.32.0 started as the seed starts it: no tool
flags. MetaGPT 0.7.7's own steps run in a fresh interpreter with the seed's config, through a recording proxy that
keeps what the server answered, so that each argument object is validated against its function's schema by a
JSON-schema validator (jsonschema), not by hand.

- With the ``tools`` fix: every step returns what its caller reads; the server's access log shows the refused
  function call, then exactly one answered generation per step (through ``/v1/completions`` for the template-less
  model, folded for the Mistral-style template, chat for Llama-2-chat's).
- With the fix off by name: every step fails as upstream does, with the server's 400.
- A server started with the tool flags calls tools itself: each step is sent once, as MetaGPT sent it.

The random-weight model pads JSON with whitespace: it needs room (CONTEXT.md §14), which MetaGPT's default
``max_token`` of 4096 on a 4096-token context gives (vLLM 0.18+ clamps it to the room the prompt leaves).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from conftest import metagpt_with_placeholder_config

from .metagpt_runs import CHAT, COMPLETIONS, DI_STEP_NAMES, data_interpreter, seed_home
from .recording_proxy import Exchange, RecordingProxy
from .vllm_process import RealVLLM

TOOLS_REFUSED = ('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                 'tool_choice=function "{name}" requires --tool-call-parser to be set')


def schemas() -> dict[str, dict[str, Any]]:
    """Each step's function, as MetaGPT 0.7.7 defines it (step name = the key its caller reads)."""
    metagpt_with_placeholder_config()
    from metagpt.actions.di.debug_code import CODE_REFLECTION
    from metagpt.prompts.di.write_analysis_code import ASSIGN_TASK_TYPE_CONFIG, SELECT_FUNCTION_TOOLS
    from metagpt.provider.constant import GENERAL_FUNCTION_SCHEMA

    return {"code": GENERAL_FUNCTION_SCHEMA, "task_type": ASSIGN_TASK_TYPE_CONFIG,
            "recommend_tools": SELECT_FUNCTION_TOOLS, "improved_impl": CODE_REFLECTION}


def run_steps(server: RealVLLM, tmp_path: Path, **env: str) -> tuple[dict[str, Any], list[Exchange]]:
    with RecordingProxy(server.url) as proxy:
        result = data_interpreter(seed_home(tmp_path, proxy.url + "/v1"), **env)
    return result, [e for e in proxy.exchanges if e.method == "POST"]


def per_step(posts: list[Exchange]) -> list[list[Exchange]]:
    """The POSTs split after each answered one: each step's requests, in order (a step ends with its answer)."""
    steps: list[list[Exchange]] = [[]]
    for exchange in posts:
        steps[-1].append(exchange)
        if exchange.status == 200:
            steps.append([])
    return [step for step in steps if step]


def assert_answered(result: dict[str, Any], posts: list[Exchange], answered_by: list[tuple[str, int]]) -> None:
    """Every step returned what its caller reads; each asked the refused function call first, then got exactly one
    answered generation whose text validates against the step's function schema."""
    steps = result["steps"]
    assert all(steps[name]["ok"] for name in DI_STEP_NAMES), (steps, result["stderr"][-3000:])
    functions = schemas()
    groups = per_step(posts)
    assert len(groups) == len(DI_STEP_NAMES), [(e.path, e.status) for e in posts]
    arguments = {}
    for name, group in zip(DI_STEP_NAMES, groups):
        first, answer = group[0], group[-1]
        assert (first.path, first.status) == (CHAT, 400) and "tools" in first.body, name
        assert [(e.path, e.status) for e in group[1:]] == answered_by, (name, [(e.path, e.status) for e in group])
        assert "tools" not in answer.body and "tool_choice" not in answer.body
        arguments[name] = json.loads(answer.answer_text(), strict=False)  # as MetaGPT reads arguments
        jsonschema.validate(arguments[name], functions[name]["parameters"])
    # What each caller read is the server's constrained answer.
    assert steps["code"]["result"] == arguments["code"]
    typed = [task["task_type"] for task in json.loads(steps["task_type"]["result"]) if "task_type" in task]
    assert typed == arguments["task_type"]["task_type"][:2]  # assign_task_type zips the tasks with the types
    assert isinstance(steps["recommend_tools"]["result"], dict)  # it read rsp["recommend_tools"], then validated
    assert steps["improved_impl"]["result"] == {"code": arguments["improved_impl"]["improved_impl"]}


def test_data_interpreter_steps_answer_from_the_seeds_template_less_model(real_vllm_4k, tmp_path, request_counts):
    result, posts = run_steps(real_vllm_4k, tmp_path)
    request_counts["Data Interpreter's 4 aask_code; no chat template, 4096"] = [(e.path, e.status) for e in posts]
    assert_answered(result, posts, [(CHAT, 400), (COMPLETIONS, 200)])  # tools refused, then no template
    # the fix's warning, once (its lines start with its name; MetaGPT's own log lines hold the model's text)
    warnings = [line for line in result["stderr"].splitlines() if line.startswith("tools: ")]
    assert len(warnings) == 1 and "Remedy: start vLLM with --enable-auto-tool-choice" in warnings[0], warnings


def test_data_interpreter_steps_fail_as_upstream_with_the_tools_fix_off(real_vllm_4k, tmp_path, request_counts):
    result, posts = run_steps(real_vllm_4k, tmp_path, METAGPT_VLLM_FIX_DISABLE="tools")
    request_counts["Data Interpreter's 4 aask_code; no chat template, 4096; tools off"] = [(e.path, e.status)
                                                                                          for e in posts]
    steps = result["steps"]
    assert [(steps[n]["error"], steps[n]["status"]) for n in DI_STEP_NAMES] == [("BadRequestError", 400)] * 4
    assert TOOLS_REFUSED[0] in steps["code"]["message"]
    assert TOOLS_REFUSED[1].format(name="assign_task_type") in steps["task_type"]["message"]
    assert [(e.path, e.status) for e in posts] == [(CHAT, 400)] * 4


def test_data_interpreter_steps_answer_from_a_template_refusing_the_system_role(real_vllm_mistral, tmp_path,
                                                                                request_counts):
    result, posts = run_steps(real_vllm_mistral, tmp_path)
    request_counts["Data Interpreter's 4 aask_code; mistral-instruct, 4096"] = [(e.path, e.status) for e in posts]
    assert_answered(result, posts, [(CHAT, 400), (CHAT, 200)])  # tools refused, then the system role; folded
    first_user = [e for e in posts if e.status == 200][0].body["messages"][0]
    assert first_user["role"] == "user" and "You have a function to call" in first_user["content"]


def test_data_interpreter_steps_answer_from_llama_2_chat(real_vllm_chat, tmp_path, request_counts):
    result, posts = run_steps(real_vllm_chat, tmp_path)
    request_counts["Data Interpreter's 4 aask_code; llama-2-chat, 4096"] = [(e.path, e.status) for e in posts]
    assert_answered(result, posts, [(CHAT, 200)])


def test_a_server_with_tool_flags_is_never_rewritten(real_vllm_chat_tools, tmp_path, request_counts):
    """Started with --enable-auto-tool-choice --tool-call-parser hermes, vLLM calls tools itself (the random model's
    arguments may be nonsense: that is the server's answer, and MetaGPT gets it as it came)."""
    result, posts = run_steps(real_vllm_chat_tools, tmp_path)
    request_counts["Data Interpreter's 4 aask_code; llama-2-chat with tool flags"] = [(e.path, e.status)
                                                                                     for e in posts]
    assert [(e.path, e.status) for e in posts] == [(CHAT, 200)] * 4, result
    assert all("tools" in e.body for e in posts)  # each sent as MetaGPT sent it
    assert "tools: " not in result["stderr"]
