"""Running MetaGPT 0.7.7 the way users do, against a real server, and reading what the server saw.

Each run is a fresh interpreter of the MetaGPT environment (``.venv``), so the plugin acts through its ``.pth``
start-up path as installed; the seed's config is written to a temporary HOME. The server's access log (vLLM's
uvicorn log) gives the path and status of every request, in order.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

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

# One MetaGPT program that asks whenever the test says so (a JSON line on stdin: the calls' stream flags, and whether
# they run one after another or together with asyncio.gather); prints one JSON line per order. Its LLM, client and
# plugin state live across the orders, as in a long-running MetaGPT program.
SESSION = """
import asyncio, json, sys
from metagpt.llm import LLM

async def call(llm, stream, prompt):
    try:
        return {{"ok": True, "answer": await llm.aask(prompt, stream=stream)}}
    except Exception as exc:
        return {{"ok": False, "error": type(exc).__name__, "status": getattr(exc, "status_code", None),
                "message": str(exc)[:600]}}

async def main():
    llm = LLM()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            return
        order = json.loads(line)
        if order["together"]:
            results = await asyncio.gather(*(call(llm, s, order["prompt"]) for s in order["streams"]))
        else:
            results = [await call(llm, s, order["prompt"]) for s in order["streams"]]
        print({mark!r} + json.dumps(results), flush=True)

asyncio.run(main())
"""


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


class MetaGPTSession:
    """One MetaGPT process (a fresh interpreter of ``.venv``, the config in ``home``, the plugin through its ``.pth``)
    that asks when told to: what one of its requests met can only reach the next through that process."""

    def __init__(self, home: Path, **env: str) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen([sys.executable, "-c", SESSION.format(mark=RESULT_MARK)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                      env=clean_env(home, **env), cwd=str(home))
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def ask(self, streams: tuple[bool, ...], together: bool = False, prompt: str = "Say hello.",
            timeout: float = 600) -> list[dict[str, Any]]:
        """``aask`` once per flag (streamed or not), one after another or all at once; each call's result."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"streams": streams, "together": together, "prompt": prompt}) + "\n")
        self._proc.stdin.flush()
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no answer from MetaGPT within {timeout:.0f} s:\n"
                                     f"{self.stderr()[-3000:]}") from None
            if line is None:
                raise AssertionError(f"MetaGPT exited ({self._proc.wait()}):\n{self.stderr()[-3000:]}")
            if line.startswith(RESULT_MARK):
                return list(json.loads(line[len(RESULT_MARK):]))

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def close(self) -> str:
        """End the process (an empty order); return everything it wrote to stderr."""
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write("\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        text = self.stderr()
        self._stderr.close()
        return text

    def __enter__(self) -> MetaGPTSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
