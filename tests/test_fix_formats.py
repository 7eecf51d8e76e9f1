"""The formats fix against the emulator, through the real MetaGPT 0.7.7: ActionNode fills (WritePRD's own node) and
the Data Interpreter's plan, on a model that ignores MetaGPT's formats (``answers="plain"``), one that follows them
(the echo, which repeats the node's format example), and the seed's model without a chat template.

Each test reads what the emulator answered (its recorder): the structured-output fields a request carried, and
``GET /version`` (asked only when an ask is constrained). The real-model proof is tests/real_vllm/test_formats.py.
"""

from __future__ import annotations

import json
import logging

import pytest
from tenacity import RetryError, stop_after_attempt, wait_none

import metagpt_vllm_fix
from conftest import (
    RESULT_MARK,
    SEED_KEY,
    metagpt_with_placeholder_config,
    open_llm_instance,
    run,
    run_python,
    write_config,
)
from metagpt_vllm_fix.json_bounds import bound, pattern
from metagpt_vllm_fix.server import VLLMServer

metagpt_with_placeholder_config()
from metagpt.actions.action_node import ActionNode  # noqa: E402
from metagpt.actions.write_prd_an import WRITE_PRD_NODE  # noqa: E402

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
CONTEXT = "## Original Requirements\nWrite a command line program that prints hello world"
TOLD = "Answer with one JSON object and nothing else"  # what the model is told (formats._instructions)

pytestmark = pytest.mark.usefixtures("fresh_fixes")


def serving(kind: str = "llama-2-chat", answers: str = "plain", **options) -> VLLMServer:
    return VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template=kind, answers=answers, **options)


def seen(server: VLLMServer) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in server.requests]


def posted(server: VLLMServer) -> list[dict]:
    return [r.body for r in server.requests if r.method == "POST"]


def logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "fix", None) == "formats"]


def prd_schema(budget: int = 4096) -> str:
    """The pattern the fix holds WritePRD's answer to, for MetaGPT's max_tokens (4096 by default)."""
    mapping = WRITE_PRD_NODE.get_mapping("auto")
    raw = ActionNode.create_model_class("WritePRD_AN", mapping).model_json_schema()
    return pattern(bound(raw, budget)[0], loose=True)  # MetaGPT reads it with strict=False: raw line breaks too


def fill(llm, schema: str = "json", attempts: int = 6):
    """WritePRD's node filled as WritePRD fills it, MetaGPT's retries kept but without their waits (and at most
    ``attempts``): ActionNode._aask_v1 as MetaGPT decorates it, retry_with changing only those two."""
    node = WRITE_PRD_NODE
    node.set_llm(llm)
    prompt = node.compile(context=CONTEXT, schema=schema, mode="auto")
    aask_v1 = ActionNode._aask_v1.retry_with(wait=wait_none(), stop=stop_after_attempt(attempts))
    content, parsed = run(aask_v1(node, prompt, "WritePRD_AN", node.get_mapping("auto"), schema=schema))
    return content, parsed.model_dump()


def fix_off(monkeypatch) -> None:
    metagpt_vllm_fix.remove()
    monkeypatch.setenv("METAGPT_VLLM_FIX_DISABLE", "formats")
    metagpt_vllm_fix.apply()


# --- a model that ignores formats -----------------------------------------------------------------------------

def test_an_unparseable_prd_is_asked_once_more_constrained_and_parses(caplog, capsys):
    with serving() as server, caplog.at_level(logging.INFO, logger="metagpt_vllm_fix"):
        content, prd = fill(open_llm_instance(server.base_url))
        requests, (free, constrained) = seen(server), posted(server)
    assert requests == [("POST", CHAT, 200), ("GET", "/version", 200), ("POST", CHAT, 200)]
    assert "structured_outputs" not in free and free["messages"][0]["content"] == "You are a helpful assistant."
    assert constrained["structured_outputs"] == {"regex": prd_schema()} and "guided_regex" not in constrained
    assert constrained["stream"] is True and TOLD in constrained["messages"][0]["content"]
    assert constrained["messages"][1:] == free["messages"][1:]  # MetaGPT's prompt as it was
    assert content.startswith("[CONTENT]\n{") and content.endswith("}\n[/CONTENT]")  # what MetaGPT's parser reads
    assert prd["Language"] == "echo" and prd["Product Goals"] == []  # the emulator's constrained "model"
    printed = capsys.readouterr().out
    assert printed.endswith(content + "\n")  # what MetaGPT printed is what it got, after the first answer
    (line,) = logged(caplog)
    assert "ActionNode WritePRD" in line and "JSONDecodeError" in line and "METAGPT_VLLM_FIX_FORMATS=first" in line


def usages(exchange) -> list[dict]:
    """The usage a stream reported (its last chunk, which has no choices)."""
    events = [json.loads(line[len("data: "):]) for line in exchange.response.decode().splitlines()
              if line.startswith("data: {")]
    return [event["usage"] for event in events if event.get("usage") and not event.get("choices")]


def test_metagpt_counts_the_usage_of_both_answers():
    from real_vllm.recording_proxy import RecordingProxy

    with serving() as server, RecordingProxy(server.url) as proxy:
        llm = open_llm_instance(proxy.url + "/v1")
        fill(llm)
        costs = llm.get_costs()
        (free,), (constrained,) = (usages(e) for e in proxy.posted(CHAT))
    assert costs.total_prompt_tokens == free["prompt_tokens"] + constrained["prompt_tokens"]
    assert costs.total_completion_tokens == free["completion_tokens"] + constrained["completion_tokens"] > 0


def test_turned_off_by_name_metagpt_asks_the_same_prompt_until_retry_error(monkeypatch):
    fix_off(monkeypatch)
    with serving() as server:
        with pytest.raises(RetryError):
            fill(open_llm_instance(server.base_url), attempts=3)
        requests, bodies = seen(server), posted(server)
    assert requests == [("POST", CHAT, 200)] * 3
    assert all("structured_outputs" not in body for body in bodies) and bodies[0] == bodies[1] == bodies[2]


def test_markdown_prompt_schema_is_answered_as_sections_metagpt_parses():
    with serving() as server:
        content, prd = fill(open_llm_instance(server.base_url), schema="markdown")
        requests = seen(server)
    assert requests == [("POST", CHAT, 200), ("GET", "/version", 200), ("POST", CHAT, 200)]
    assert content.startswith("[CONTENT]\n## Language\necho\n") and content.endswith("[/CONTENT]")
    assert prd["Requirement Pool"] == [] and prd["Anything UNCLEAR"] == "echo"


# --- models that need no constraint, and the seed's model -----------------------------------------------------

def test_a_model_that_follows_the_format_costs_one_request_and_no_field(caplog):
    with serving(answers="echo") as server, caplog.at_level(logging.INFO, logger="metagpt_vllm_fix"):
        content, prd = fill(open_llm_instance(server.base_url))
        requests, (body,) = seen(server), posted(server)
    assert requests == [("POST", CHAT, 200)]  # no GET /version, no second request
    assert not {"structured_outputs", "guided_regex", "guided_json"} & set(body)
    assert content.startswith("echo: ") and prd["Project Name"] == "game_2048"  # the node's example, echoed
    assert logged(caplog) == []


def test_the_seed_model_without_a_template_is_constrained_from_the_first_ask(caplog):
    with serving(kind="none") as server, caplog.at_level(logging.INFO, logger="metagpt_vllm_fix"):
        content, prd = fill(open_llm_instance(server.base_url))
        requests, completion = seen(server), posted(server)[-1]
    assert requests == [("POST", CHAT, 400), ("GET", "/version", 200), ("POST", COMPLETIONS, 200)]  # one generation
    assert completion["structured_outputs"] == {"regex": prd_schema()} and TOLD in completion["prompt"]
    assert prd["Language"] == "echo"
    (line,) = logged(caplog)
    assert "no chat template" in line and "constrained from the first ask" in line


def test_vllm_0_3_3_without_version_gets_every_field_and_reads_its_own():
    with serving(vllm_version="0.3.3") as server:
        _, prd = fill(open_llm_instance(server.base_url))
        requests, constrained = seen(server), posted(server)[-1]
    assert requests == [("POST", CHAT, 200), ("GET", "/version", 404), ("POST", CHAT, 200)]
    assert constrained["guided_regex"] == prd_schema() and constrained["structured_outputs"] == {"regex": prd_schema()}
    assert prd["Language"] == "echo"


def test_behind_a_proxy_that_hides_version_vllm_0_32_still_answers_constrained():
    from real_vllm.recording_proxy import RecordingProxy

    with serving() as server, RecordingProxy(server.url, only="/v1/") as proxy:
        _, prd = fill(open_llm_instance(proxy.url + "/v1"))
        through = [(e.method, e.path, e.status) for e in proxy.exchanges]
    assert through == [("POST", CHAT, 200), ("GET", "/version", 404), ("POST", CHAT, 200)]
    assert prd["Language"] == "echo"  # 0.32 ignores guided_regex and reads structured_outputs


def test_first_mode_constrains_the_first_ask(monkeypatch):
    monkeypatch.setenv("METAGPT_VLLM_FIX_FORMATS", "first")
    with serving() as server:
        _, prd = fill(open_llm_instance(server.base_url))
        requests = seen(server)
    assert requests == [("GET", "/version", 200), ("POST", CHAT, 200)] and prd["Language"] == "echo"


# --- bounds ---------------------------------------------------------------------------------------------------

def test_a_constrained_answer_cut_at_max_tokens_is_asked_once_more_then_metagpt_takes_over(caplog):
    """max_token 20: WritePRD's compact JSON needs more than 20 of the emulator's word "tokens" whatever its bounds,
    so the constrained answer is cut; it is asked once more, bounded for the 20 the server gave it (cut again), and
    MetaGPT then gets it and retries as it does (here: once, without its waits)."""
    from real_vllm.recording_proxy import RecordingProxy

    with serving() as server, RecordingProxy(server.url) as proxy, \
            caplog.at_level(logging.INFO, logger="metagpt_vllm_fix"):
        with pytest.raises(RetryError):
            fill(open_llm_instance(proxy.url + "/v1", max_token=20), attempts=1)
        events = [json.loads(line[len("data: "):]) for e in proxy.posted(CHAT)
                  for line in e.response.decode().splitlines() if line.startswith("data: {")]
        finishes = [c["finish_reason"] for event in events for c in event["choices"] if c.get("finish_reason")]
    assert finishes == ["length"] * 3  # free, constrained, constrained again: then MetaGPT's own path
    assert any("cut at max_tokens after 20 tokens" in line for line in logged(caplog))


# --- servers that cannot constrain ----------------------------------------------------------------------------

def test_a_server_that_refuses_every_field_leaves_metagpt_as_shipped_with_one_warning(caplog):
    with serving(reject_unknown_fields=True) as server, caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        with pytest.raises(RetryError):
            fill(open_llm_instance(server.base_url), attempts=2)
        answered = [body for body, (_, _, status) in zip(posted(server), [s for s in seen(server) if s[0] == "POST"])
                    if status == 200]
    assert len(answered) == 2 and all("structured_outputs" not in body for body in answered)  # as shipped: 2 asks
    cannot = [line for line in logged(caplog) if "cannot constrain" in line]
    assert len(cannot) == 1 and "MetaGPT gets the answer it could not parse" in cannot[0]


# --- the Data Interpreter's plan, as a user runs it -----------------------------------------------------------

PLAN_SCRIPT = """
import asyncio, json
from metagpt.strategy.planner import Planner

async def main():
    planner = Planner(goal="Compute the sum of the integers from 1 to 100 and print it.", auto_run=True)
    try:
        await planner.update_plan(goal=planner.plan.goal)
        out = {{"ok": True, "tasks": [t.model_dump(include={{"task_id", "instruction"}}) for t in planner.plan.tasks]}}
    except Exception as exc:
        out = {{"ok": False, "error": type(exc).__name__, "message": str(exc)[:300]}}
    print({mark!r} + json.dumps(out), flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("disable", ["", "formats"], ids=["fix on", "fix off"])
def test_the_data_interpreters_plan_parses_with_the_fix_and_fails_four_times_without(disable, tmp_path):
    with serving() as server:
        home = tmp_path / "home"
        write_config(home, server.base_url)
        proc = run_python(PLAN_SCRIPT.format(mark=RESULT_MARK), home=home, forked=True,
                          METAGPT_VLLM_FIX_DISABLE=disable)
        requests, bodies = seen(server), posted(server)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len(RESULT_MARK):])
    if disable:
        assert result["ok"] is False and result["error"] == "JSONDecodeError"  # upstream: 4 plans, then raises
        assert requests == [("POST", CHAT, 200)] * 4
        return
    assert result == {"ok": True, "tasks": [{"task_id": "1", "instruction": "echo"}]}  # ids are ordinals
    assert requests == [("POST", CHAT, 200), ("GET", "/version", 200), ("POST", CHAT, 200)]
    assert bodies[1]["structured_outputs"]["regex"].startswith(r"\[\{")
    assert "```json" not in bodies[1]["structured_outputs"]["regex"]


# --- wrapping ---------------------------------------------------------------------------------------------------

def test_remove_takes_the_aask_wrapper_off_and_asks_go_as_shipped():
    import metagpt.provider.open_llm_api as module

    assert "aask" in vars(module.OpenLLM)
    metagpt_vllm_fix.remove()
    assert "aask" not in vars(module.OpenLLM)  # inherited from BaseLLM again
    with VLLMServer(max_model_len=8192, answers="plain") as server:  # no key: MetaGPT's own sk-xxx gets in
        with pytest.raises(RetryError):
            fill(open_llm_instance(server.base_url), attempts=1)
        assert seen(server) == [("POST", CHAT, 200)]


def test_status_names_the_fix_and_its_mode(monkeypatch):
    (line,) = [f for f in metagpt_vllm_fix.status().fixes if f.name == "formats"]
    assert line.state == "active" and "asked as MetaGPT sent it first" in line.reason
