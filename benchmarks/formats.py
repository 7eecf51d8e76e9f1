"""What the ``formats`` fix costs and what it buys: MetaGPT's Data Interpreter and software company on a real small
model, with the fix and without it (until the run fails), per role step: wall time, generations, tokens.

Real (the default): vLLM 0.32.0 (``.venv-vllm``, CPU) serving SmolLM2-135M-Instruct under the seed's model name with
the seed's key and a 4096-token context (Llama-2-7b's), and the seed's config pointed at it (``--max-token N`` adds an
``llm.max_token`` line). Four runs, one after another so that their times are their own, each through a recording
proxy: the Data Interpreter on "Compute the sum of the integers from 1 to 100 and print it." (with the fix: until it
finishes, or MetaGPT logs "coding failed!" after three failed executions of a task, which 0.7.7 follows with a new
plan, for ever, rather than its human review; without: until the planner raises after its fourth plan) and
``metagpt "Write a command line program that prints hello world"`` (with the fix: to its end; without: until
``RetryError`` ends it, or ``--off-attempts N`` failed PRD attempts of its six). A generation is a request the
server answered 200 (a refused one costs a round trip, no tokens). ``--quick`` (CI): the same fill and plan against
the emulator playing a model that ignores formats, in milliseconds. Prints figures; asserts nothing about speed.
Run with the project's .venv (MetaGPT 0.7.7):

    .venv/bin/python benchmarks/formats.py [--quick] [--max-token N] [--off-attempts N] [--only di|company]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
KEY = "token-abc123"
MODEL = "meta-llama/Llama-2-7b-hf"
SEED_CONFIG = "llm:\n  api_type: open_llm\n  base_url: '{base_url}'\n  model: '{model}'\n  api_key: {key}\n"
# Which of MetaGPT's role steps a request belongs to: a phrase only that step's prompt (or the fix's words) holds.
# A function call (MetaGPT's, or the tools fix's constrained ask for its arguments) comes first: its messages may
# quote another step's prompt (the Data Interpreter's context holds its plan).
# The documents' steps by their node's own instruction lines: WriteCode's prompt quotes the documents themselves.
STEPS = (("code step (function call)", "You have a function to call"),
         ("WritePRD", "- Product Goals: typing.List[str]"), ("WriteDesign", "- Implementation approach: <class 'str'>"),
         ("WriteTasks", "- Required Python packages: typing.List[str]"),
         ("plan", "Output a list of jsons following the format"), ("WriteCodeReview", "Code Review"),
         ("WriteCode", "Write code"), ("WriteCode", "## Code:"))


def step_of(body: Any) -> str:
    if isinstance(body, dict) and "tools" in body:
        return "code step (function call)"
    text = json.dumps(body) if body is not None else ""
    return next((name for name, marker in STEPS if marker in text), "other")


def per_step(exchanges: list[Any]) -> dict[str, dict[str, float]]:
    """Per role step: requests, generations (answered 200), tokens, and the seconds its requests took."""
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in exchanges:
        if e.method != "POST":
            continue
        row = table[step_of(e.body)]
        row["requests"] += 1
        row["seconds"] += max(e.ended - e.started, 0.0)
        if e.status == 200:
            usage = e.usage()
            row["generations"] += 1
            row["prompt"] += usage.get("prompt_tokens", 0)
            row["completion"] += usage.get("completion_tokens", 0)
    return table


def report(name: str, result: dict[str, Any], outcome: str) -> None:
    minutes, seconds = divmod(int(result["seconds"]), 60)
    print(f"{name}: {outcome}, {minutes} min {seconds:02d} s")
    print(f"  {'step':<26} {'requests':>8} {'generations':>11} {'prompt tok':>10} {'completion tok':>14} {'s':>7}")
    for step, row in per_step(result["exchanges"]).items():
        print(f"  {step:<26} {row['requests']:>8.0f} {row['generations']:>11.0f} {row['prompt']:>10.0f} "
              f"{row['completion']:>14.0f} {row['seconds']:>7.1f}")


def di_outcome(result: dict[str, Any]) -> str:
    printed = result["printed"] or {}
    cells = printed.get("cells", [])
    ran = [c for c in cells if c["type"] == "code"]
    failed = [c for c in ran if any("Error" in o for o in c["outputs"])]
    plans = len(printed.get("invalid_plans", []))
    return (f"{printed.get('outcome', 'no result')}; {len(printed.get('tasks', []))} task(s) planned, "
            f"{plans} invalid plan(s); {len(ran)} code cell(s) run, {len(ran) - len(failed)} without an error")


def company_outcome(result: dict[str, Any], workspace: Path) -> str:
    docs = {kind: len(list(workspace.glob(f"*/docs/{kind}/*.json"))) for kind in ("prd", "system_design", "task")}
    # the code files: whatever the task list named them (a small model's may be "Main function"), in the package
    code = sorted(p.name for p in workspace.glob("*/*/*") if p.is_file() and p.stat().st_size)
    if result["stopped"]:  # MetaGPT's own log says "exp: RetryError[...]" after every failed attempt
        ended = "stopped after the failed attempts asked for"
    else:
        ended = "RetryError" if "tenacity.RetryError" in result["output"] else f"exit {result['returncode']}"
    return f"{ended}; documents {docs}, {len(code)} non-empty code file(s) {code}"


def real(args: argparse.Namespace) -> None:
    from real_vllm import formats_runs as runs
    from real_vllm import vllm_process

    extra = f"  max_token: {args.max_token}\n" if args.max_token else ""

    def setup(off: bool) -> Any:
        def write(home: Path, base_url: str) -> dict[str, str]:
            (home / ".metagpt").mkdir(parents=True, exist_ok=True)
            (home / ".metagpt" / "config2.yaml").write_text(SEED_CONFIG.format(base_url=base_url, model=MODEL,
                                                                              key=KEY) + extra)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("METAGPT_", "HTTP", "ALL_PROXY"))}
            return {**env, "HOME": str(home), **({"METAGPT_VLLM_FIX_DISABLE": "formats"} if off else {})}
        return write

    print("starting vLLM 0.32.0 serving SmolLM2-135M-Instruct (CPU; about a minute) ...", flush=True)
    server = vllm_process.start(model_dir=vllm_process.MODEL_DIRS["smollm2"], max_model_len=4096)
    root = Path(tempfile.mkdtemp(prefix="formats-bench-"))
    config = "the seed's" + (f" + {extra.strip()}" if extra else "")
    print(f"server healthy in {server.start_seconds:.0f} s; config: {config}; runs in {root}\n", flush=True)
    off_stop = (None if args.off_attempts >= 6 else
                f"this was the {_ordinal(args.off_attempts)} time calling it")
    try:
        if args.only in (None, "di"):
            for off in (False, True):
                name = "di_off" if off else "di"
                run = runs.data_interpreter(name, server.url, root, setup(off),
                                            stop_at="coding failed!" if not off else "no stop: until it raises")
                result = run.result(7200)
                report(f"Data Interpreter, {'formats off' if off else 'every fix'}", result, di_outcome(result))
                run.proxy.close()
        if args.only in (None, "company"):
            for off in (False, True):
                run = runs.company("company_off" if off else "company", server.url, root, setup(off),
                                   stop_at=off_stop if off else None, timeout=7200)
                result = run.result(7200)
                report(f"software company, {'formats off' if off else 'every fix'}", result,
                       company_outcome(result, run.workspace))
                run.proxy.close()
    finally:
        server.stop()


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def quick() -> None:
    """The emulator (a model that answers in plain words): WritePRD's fill, fix on and off, with and without a chat
    template."""
    root = Path(os.environ.setdefault("METAGPT_PROJECT_ROOT", tempfile.mkdtemp(prefix="metagpt-root-")))
    (root / "config").mkdir(exist_ok=True)  # MetaGPT's actions load a config when imported; the LLMs are built here
    (root / "config" / "config2.yaml").write_text(SEED_CONFIG.format(base_url="http://127.0.0.1:9/v1", model=MODEL,
                                                                     key=KEY))
    from per_call import quiet_metagpt

    quiet_metagpt()
    import asyncio

    from metagpt.actions.action_node import ActionNode
    from metagpt.actions.write_prd_an import WRITE_PRD_NODE
    from metagpt.configs.llm_config import LLMConfig
    from metagpt.provider.llm_provider_registry import create_llm_instance
    from tenacity import stop_after_attempt, wait_none

    import metagpt_vllm_fix
    from metagpt_vllm_fix.server import VLLMServer

    for kind in ("llama-2-chat", "none"):
        for off in (False, True):
            metagpt_vllm_fix.remove()
            os.environ["METAGPT_VLLM_FIX_DISABLE"] = "formats" if off else ""
            metagpt_vllm_fix.apply()
            with VLLMServer(api_keys=[KEY], max_model_len=8192, chat_template=kind, answers="plain") as server:
                llm = create_llm_instance(LLMConfig(api_type="open_llm", base_url=server.base_url, model=MODEL,
                                                    api_key=KEY))
                node = WRITE_PRD_NODE
                node.set_llm(llm)
                prompt = node.compile(context="## Original Requirements\nhello world", schema="json", mode="auto")
                fill = ActionNode._aask_v1.retry_with(wait=wait_none(), stop=stop_after_attempt(6))
                started = time.perf_counter()
                outcome = asyncio.run(_fill_once(fill, node, prompt, llm))
                ms = (time.perf_counter() - started) * 1e3
                posts = [r.status for r in server.requests if r.method == "POST"]
            print(f"WritePRD fill, {'no chat template' if kind == 'none' else 'chat template'}, "
                  f"{'formats off' if off else 'every fix'}: {outcome} in {ms:.0f} ms, {len(posts)} requests "
                  f"({posts.count(200)} answered), MetaGPT's waits between attempts left out")
    os.environ.pop("METAGPT_VLLM_FIX_DISABLE", None)


async def _fill_once(fill: Any, node: Any, prompt: str, llm: Any) -> str:
    """MetaGPT's six attempts at the fill: "parsed", or what they raised."""
    try:
        await fill(node, prompt, "WritePRD_AN", node.get_mapping("auto"), schema="json")
        return "parsed"
    except Exception as exc:  # noqa: BLE001 - the outcome is the figure
        return type(exc).__name__
    finally:  # within this event loop: closed after it, httpx says "Event loop is closed"
        await llm.aclient.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the emulator only (seconds; CI)")
    parser.add_argument("--max-token", type=int, default=0, help="add llm.max_token N to the seed's config")
    parser.add_argument("--off-attempts", type=int, default=6,
                        help="stop the software company without the fix after N failed PRD attempts (default: 6, "
                             "its RetryError)")
    parser.add_argument("--only", choices=("di", "company"), default=None)
    args = parser.parse_args()
    if args.quick:
        quick()
    else:
        real(args)


if __name__ == "__main__":
    main()
