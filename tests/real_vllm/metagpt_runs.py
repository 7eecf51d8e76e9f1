"""Running MetaGPT 0.7.7 the way users do, against a real server, and reading what the server saw.

Each run is a fresh interpreter of the MetaGPT environment (``.venv``), so the plugin acts through its ``.pth``
start-up path as installed; the seed's config is written to a temporary HOME. The server's access log (vLLM's
uvicorn log) gives the path and status of every request, in order.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import RESULT_MARK, clean_env, run_python, write_config

# Several aask calls in one process, as a MetaGPT program makes them; prints one JSON line.
CALLS = """
import asyncio, json
from metagpt.llm import LLM

async def main():
    llm = LLM()
    calls = []
    for stream in {streams}:
        before = llm.get_costs()
        try:
            answer = await llm.aask({prompt!r}, stream=stream)
            after = llm.get_costs()
            calls.append({{"ok": True, "prompt_tokens": after.total_prompt_tokens - before.total_prompt_tokens,
                          "completion_tokens": after.total_completion_tokens - before.total_completion_tokens,
                          "answer": answer}})
        except Exception as exc:
            calls.append({{"ok": False, "error": type(exc).__name__, "status": getattr(exc, "status_code", None),
                          "message": str(exc)[:600]}})
    print({mark!r} + json.dumps(calls), flush=True)

asyncio.run(main())
"""


# The Data Interpreter's function-call steps (MetaGPT 0.7.4+ paths), each as its caller runs it; prints one JSON
# object: name -> what the step returned, or the error. Each step is one aask_code (CONTEXT.md §14).
DI_STEPS = """
import asyncio, json, sys
from metagpt.schema import Message
from metagpt.actions.di.write_analysis_code import WriteCodeWithoutTools, WriteCodeWithTools
from metagpt.actions.di.write_plan import WritePlan
from metagpt.actions.di.debug_code import DebugCode

STEPS = {{
    "code": lambda: WriteCodeWithoutTools().run([Message(content="Print the first ten square numbers.",
                                                         role="user")]),
    "task_type": lambda: WritePlan().assign_task_type([{{"task_id": "1", "instruction": "Load the iris data set."}},
                                                      {{"task_id": "2", "instruction": "Train a classifier."}}]),
    "recommend_tools": lambda: WriteCodeWithTools()._recommend_tool(
        "Fill the missing values of the data set.",
        {{"FillMissingValue": "Completing missing values with simple strategies."}}),
    "improved_impl": lambda: DebugCode().run(
        context=[Message(content="Write a function add(a, b) returning the sum.", role="user")],
        code="def add(a, b):\\n    return a - b", runtime_result="AssertionError: add(1, 2) == -1"),
}}

async def main():
    out = {{}}
    for name in {steps!r}:
        try:
            out[name] = {{"ok": True, "result": await STEPS[name]()}}
        except Exception as exc:
            out[name] = {{"ok": False, "error": type(exc).__name__, "status": getattr(exc, "status_code", None),
                         "message": str(exc)[:600]}}
    print({mark!r} + json.dumps(out, default=str), flush=True)

asyncio.run(main())
"""
DI_STEP_NAMES = ("code", "task_type", "recommend_tools", "improved_impl")

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
NO_TEMPLATE = ("As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
               "template if the tokenizer does not define one.")


class AccessLog:
    """The server's access log from now on: (method, path, status) of every request it answered."""

    LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/1\.1" (\d{3})')

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, path.stat().st_size

    def seen(self) -> list[tuple[str, str, int]]:
        text = self.path.read_bytes()[self.offset:].decode("utf-8", "replace")
        return [(method, path, int(status)) for method, path, status in self.LINE.findall(text)]

    def chat_statuses(self) -> list[int]:
        return [status for _, path, status in self.seen() if path == CHAT]

    def completion_statuses(self) -> list[int]:
        return [status for _, path, status in self.seen() if path == COMPLETIONS]

    def posts(self) -> list[tuple[str, int]]:
        """(path, status) of every POST, in order: what MetaGPT asked and what it got."""
        return [(path, status) for method, path, status in self.seen() if method == "POST"]


def seed_home(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    home = tmp_path / "home"
    write_config(home, base_url, extra=extra)
    return home


def ask(home: Path, streams: tuple[bool, ...], prompt: str = "Say hello.", **env: str) -> dict[str, Any]:
    proc = run_python(CALLS.format(streams=streams, prompt=prompt, mark=RESULT_MARK), home=home, timeout=300, **env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert lines, f"no result (rc={proc.returncode})\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    stdout = "".join(line + "\n" for line in proc.stdout.splitlines() if not line.startswith(RESULT_MARK))
    return {"calls": json.loads(lines[-1][len(RESULT_MARK):]), "stdout": stdout, "stderr": proc.stderr}


def data_interpreter(home: Path, steps: tuple[str, ...] = DI_STEP_NAMES, **env: str) -> dict[str, Any]:
    """The Data Interpreter's function-call steps in a fresh interpreter configured by ``home``."""
    proc = run_python(DI_STEPS.format(steps=steps, mark=RESULT_MARK), home=home, timeout=600, **env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert lines, f"no result (rc={proc.returncode})\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return {"steps": json.loads(lines[-1][len(RESULT_MARK):]), "stderr": proc.stderr}


def offline(tmp_path: Path, proxy_url: str) -> dict[str, str]:
    cache = tmp_path / "empty-tiktoken-cache"
    cache.mkdir(exist_ok=True)
    return {"TIKTOKEN_CACHE_DIR": str(cache), "HTTPS_PROXY": proxy_url, "HTTP_PROXY": proxy_url,
            "NO_PROXY": "127.0.0.1"}


def doctor(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metagpt_vllm_fix", "doctor", *args], capture_output=True, text=True,
                          env=clean_env(home, **env), cwd=str(home), timeout=180)


def metagpt_command(home: Path, **env: str) -> subprocess.CompletedProcess:
    metagpt = Path(sys.executable).with_name("metagpt")
    return subprocess.run([str(metagpt), "write a hello world command line program", "--n-round", "2"],
                          capture_output=True, text=True, env=clean_env(home, METAGPT_PROJECT_ROOT=str(home), **env),
                          cwd=str(home), timeout=600)
