"""MetaGPT's Data Interpreter and software company run as users run them against a real server, each through a
recording proxy of its own (so that what each run asked can be told apart while they run at once), stopped where
the test has seen what it came for.

A run is a fresh interpreter of ``.venv`` (the plugin through its ``.pth``), with the HOME and environment its
caller gives (the seed's config in that HOME). Standard library only beside the proxy: ``make test-vllm``, the
benchmark (benchmarks/formats.py) and ``make demo-real`` (scripts/demo-real) all run MetaGPT through it.
The Data Interpreter's script prints what MetaGPT made of the run -- the plan, each cell the notebook ran -- when
the run ends or MetaGPT logs "coding failed!" (three failed executions of a task: 0.7.7 then skips its human review
under auto_run and plans again, for ever with a model whose code never runs), or, with the formats fix off, when the
planner logs its first invalid plan (upstream asks 3 more times, each a whole generation, then raises).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .recording_proxy import Exchange, RecordingProxy

MARK = "@@RESULT@@ "  #: the line the Data Interpreter's script prints its result on

DI_TASK = "Compute the sum of the integers from 1 to 100 and print it."
COMPANY_IDEA = "Write a command line program that prints hello world"
PLAN_INVALID = "The generated plan is not valid with error"  # Planner.update_plan's warning (0.7.x)
FILL_FAILED = "Finished call to 'metagpt.actions.action_node.ActionNode._aask_v1'"  # tenacity's after-log, a failure

# The Data Interpreter as a user runs it (DataInterpreter().run), watched through MetaGPT's own log.
DI_SCRIPT = """
import asyncio, json, os
from loguru import logger
from metagpt.roles.di.data_interpreter import DataInterpreter

STOP_AT = {stop!r}

async def main():
    di = DataInterpreter()
    seen = []
    logger.add(lambda message: seen.append(str(message)), level="INFO", format="{{message}}")
    run = asyncio.ensure_future(di.run({task!r}))
    outcome = None
    while outcome is None:
        await asyncio.sleep(0.5)
        if any(STOP_AT in line for line in seen):
            outcome = "stopped: " + STOP_AT
        elif run.done():
            outcome = "finished" if run.exception() is None else "raised " + type(run.exception()).__name__
    if not run.done():
        run.cancel()
    cells = [{{"type": c.cell_type, "source": c.source[:300],
               "outputs": [str(o.get("text") or o.get("ename") or "")[:200] for o in c.get("outputs", [])]}}
             for c in di.execute_code.nb.cells]
    tasks = [t.model_dump(include={{"task_id", "dependent_task_ids", "instruction", "is_success", "is_finished"}})
             for t in di.planner.plan.tasks]
    invalid = [line.strip()[:300] for line in seen if "{invalid}" in line]
    print({mark!r} + json.dumps({{"outcome": outcome, "tasks": tasks, "cells": cells, "invalid_plans": invalid}}),
          flush=True)
    os._exit(0)  # the notebook's kernel would otherwise keep the process waiting

asyncio.run(main())
"""


@dataclass
class Run:
    """One MetaGPT run in the background; ``result()`` waits for it and returns what it printed and asked."""

    name: str
    proxy: RecordingProxy
    process: subprocess.Popen
    output: Path
    workspace: Path
    stop_at: Optional[str] = None  #: a line of its output after which the run is stopped (the test has seen enough)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    stopped: bool = False
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        """The run has ended (by itself, or stopped)."""
        return self._done.is_set()

    def watch(self, timeout: float) -> None:
        deadline = self.started + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if self.stop_at and self.stop_at in self.output.read_text(errors="replace"):
                self.stopped = True
                break
            time.sleep(1.0)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.seconds = round(time.monotonic() - self.started, 1)
        self._done.set()

    def result(self, timeout: float) -> dict[str, Any]:
        assert self._done.wait(timeout), f"{self.name} did not end within {timeout:.0f} s"
        text = self.output.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith(MARK)]
        printed = json.loads(lines[-1][len(MARK):]) if lines else None
        return {"printed": printed, "output": text, "returncode": self.process.returncode, "stopped": self.stopped,
                "seconds": self.seconds, "exchanges": list(self.proxy.exchanges)}


Setup = Callable[[Path, str], dict[str, str]]  #: (HOME, base_url) -> the run's environment; writes the config


def start(name: str, server_url: str, root: Path, argv: list[str], setup: Setup, *, stop_at: Optional[str] = None,
          timeout: float = 2400) -> Run:
    """Start ``argv`` (a .venv command) in HOME ``root/name``, its config pointed at a recording proxy of
    ``server_url`` by ``setup``, which returns the environment (METAGPT_PROJECT_ROOT is set to HOME)."""
    proxy = RecordingProxy(server_url)
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    env = {**setup(home, proxy.url + "/v1"), "METAGPT_PROJECT_ROOT": str(home), "PYTHONUNBUFFERED": "1"}
    output = home / "output.txt"
    with open(output, "wb") as handle:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                   cwd=str(home), env=env, start_new_session=True)
    run = Run(name, proxy, process, output, home / "workspace", stop_at)
    threading.Thread(target=run.watch, args=(timeout,), daemon=True).start()
    return run


def data_interpreter(name: str, server_url: str, root: Path, setup: Setup, stop_at: str = "coding failed!",
                     timeout: float = 2400) -> Run:
    script = DI_SCRIPT.format(stop=stop_at, task=DI_TASK, mark=MARK, invalid=PLAN_INVALID)
    return start(name, server_url, root, [sys.executable, "-c", script], setup, stop_at=None, timeout=timeout)


def company(name: str, server_url: str, root: Path, setup: Setup, stop_at: Optional[str] = None,
            timeout: float = 2400, options: tuple[str, ...] = ()) -> Run:
    """``metagpt IDEA [options]``: MetaGPT's software company, its default rounds."""
    return start(name, server_url, root, [str(Path(sys.executable).with_name("metagpt")), COMPANY_IDEA, *options],
                 setup, stop_at=stop_at, timeout=timeout)


def constrained(exchange: Exchange) -> bool:
    body = exchange.body if isinstance(exchange.body, dict) else {}
    return any(name in body for name in ("structured_outputs", "guided_regex", "guided_json"))


def generations(exchanges: list[Exchange], marker: str) -> list[tuple[int, bool]]:
    """(status, constrained) of each chat request whose prompt holds ``marker`` (one MetaGPT ask's requests)."""
    found = []
    for e in exchanges:
        body = e.body if isinstance(e.body, dict) else {}
        text = json.dumps(body.get("messages") or body.get("prompt") or "")
        if e.method == "POST" and marker in text:
            found.append((e.status, constrained(e)))
    return found
