"""A fork server ("zygote") for the suite's runs of MetaGPT: a child per run instead of a fresh interpreter.

Why: most of the suite's runs start a Python that imports MetaGPT 0.7 (2.7 s on an idle core, mostly numpy, scipy,
sklearn, openai, pydantic and their kin) to look at what the plugin does to one request. The zygote imports those
third-party modules once; each run is then a fork that imports MetaGPT itself (about 0.3 s) and runs.

What a child is, and why a run in it still proves what a fresh interpreter would:
- The zygote is the test environment's own interpreter, started like a fresh ``python -c`` but with
  METAGPT_VLLM_FIX=0, so the plugin's .pth line installed nothing there. It never imports ``metagpt``,
  ``metagpt_vllm_fix`` or ``_metagpt_vllm_fix_boot`` (checked), so every run imports them itself.
- A child takes the run's stdin, stdout and stderr (fds 0-2), its cwd, its environment (os.environ wholly
  replaced), its argv and sys.path[0], then executes the plugin's real .pth file from site-packages with
  ``site.addpackage``, as site.py does at start-up: with METAGPT_VLLM_FIX unset the start-up hook is installed
  and patches MetaGPT when it is imported; with METAGPT_VLLM_FIX=0 nothing is. Then it runs the code (``-c``
  code, ``-m module`` or a script, as the interpreter would) and exits as the interpreter does: SystemExit's code,
  1 and the traceback for an uncaught exception, atexit handlers and non-daemon threads as usual.
- Only modules whose import is silent are preloaded: the zygote learns, in a forked probe that imports
  ``metagpt.llm``, which modules warned or wrote while imported (today google.api_core and google.auth's grpc
  transport: two FutureWarnings), and leaves them and whatever imports them to the children, so a child shows
  what a fresh interpreter shows. The preload itself is checked for silence (fds 1 and 2).
- The environment: the zygote records which variables the preloaded modules read by name while imported, and a
  run whose environment differs in one of them, or in any PYTHON*, LANG, LANGUAGE or LC_* variable that the
  interpreter reads at start-up, is refused (ZygoteRefused): such a run needs a fresh interpreter. HOME is the
  one exception, reviewed: it is read at import for IPython's and jedi's caches,
  google-auth's gcloud config path and sysconfig's user base (no user site in a venv), none of which a run uses.
  The variables the preloaded imports set (sklearn's KMP_* defaults) are set again in the child unless the run
  sets them; a run may carry the very values they set (a test process that imported MetaGPT itself does).
- PYTHONPATH: start-up puts its entries right after sys.path[0], so a child puts them there too, which is what a
  fresh interpreter does as long as the zygote imported nothing a fresh interpreter would have found in them. So
  the entries must be absolute directories holding no top-level name the zygote imported (their packages,
  modules, and the names their dist-info declares), nor sitecustomize or usercustomize; a fake, damaged or other
  MetaGPT, or a wrapt that fails, qualify. A PYTHONPATH that does hold such names (httpx 0.28 in
  test_version_matrix) gets a zygote of its own, started with that PYTHONPATH like a fresh interpreter (conftest).
  The preload's own additions to sys.path (GitPython inserts its git/ext/gitdb, absent here) are reported; a run
  with PYTHONPATH is refused if one of them exists.
- The garbage collector: a child's starts from the zygote's state after the preload, as a fresh interpreter's
  would be at that point; the heap is not frozen (gc.freeze() makes collections far more frequent, and changed
  when openai's clients of a finished event loop were collected: the demo printed what no fresh run printed).

What stays in fresh interpreters (by the caller's choice): anything about start-up itself (what it imports, -S,
-I, -X importtime), any run of another interpreter or venv, and the install flows. Also not reproduced in a
child: warnings that the default filters hide, raised by a preloaded module at import, are not raised again (no
moved run turns them on).

``ZYGOTE=0`` in the test process's environment turns the zygote off: every run is a fresh interpreter again, the
way to check that a moved run proves the same either way.
"""

from __future__ import annotations

import json
import locale
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import zygote_server

STARTUP_PREFIXES = ("PYTHON", "LC_")
STARTUP_NAMES = ("LANG", "LANGUAGE")
REVIEWED = {"HOME"}  # read at import by modules no run uses through it (see the module docstring)
START_TIMEOUT = 600


class ZygoteRefused(ValueError):
    """This run needs a fresh interpreter (its environment differs where start-up or the preload read it)."""


def enabled() -> bool:
    return os.environ.get("ZYGOTE", "1") != "0"


class Zygote:
    """One zygote process of ``python`` (the test environment's), started with ``env`` plus METAGPT_VLLM_FIX=0."""

    def __init__(self, env: dict, python: str = sys.executable) -> None:
        self.python = python
        self.workdir = Path(tempfile.mkdtemp(prefix="zygote-"))
        (self.workdir / "home").mkdir()
        self.env = {**env, "METAGPT_VLLM_FIX": "0", "HOME": str(self.workdir / "home")}
        self.socket = str(self.workdir / "socket")
        self.process: Optional[subprocess.Popen] = None
        self.info: dict = {}
        self.lock = threading.Lock()

    def start(self) -> dict:
        """Start the zygote (once) and wait until it has preloaded; returns what it reported."""
        with self.lock:
            if self.process is None:
                log = open(self.workdir / "zygote.log", "wb")
                self.process = subprocess.Popen(
                    [self.python, "-c", zygote_server.BOOT, zygote_server.__file__, self.socket, str(self.workdir)],
                    stdin=subprocess.PIPE, stdout=log, stderr=log, env=self.env, cwd=str(self.workdir / "home"))
                log.close()
                ready = self.workdir / "ready.json"
                deadline = time.monotonic() + START_TIMEOUT
                while not ready.exists():
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the zygote did not start:\n{self.log()[-5000:]}")
                    time.sleep(0.05)
                self.info = json.loads(ready.read_text())
        return self.info

    def log(self) -> str:
        return (self.workdir / "zygote.log").read_text(errors="replace")

    def check(self, env: dict) -> list[str]:
        """Refuse a run whose environment the zygote cannot stand for (see the module docstring); else return the
        PYTHONPATH entries the child must put on sys.path itself (those the zygote did not start with)."""
        own, theirs = self.env.get("PYTHONPATH"), env.get("PYTHONPATH")
        extra = []
        if theirs != own:
            if own is not None or not theirs:
                raise ZygoteRefused(f"this zygote started with PYTHONPATH={own!r}, the run has {theirs!r}")
            extra = theirs.split(os.pathsep)
            why = self.shadowing(extra)
            if why:
                raise ZygoteRefused(f"PYTHONPATH={theirs}: {why}")
        names = {n for n in {*env, *self.env} if n.startswith(STARTUP_PREFIXES) or n in STARTUP_NAMES}
        names -= {"PYTHONPATH"}
        names |= set(self.info["env_reads"]) - REVIEWED
        written = self.info["env_writes"]  # the preload's own setdefault: a run that has its value reads the same
        differ = sorted(n for n in names if env.get(n) != self.env.get(n)
                        and not (n in written and n not in self.env and env.get(n) == written[n]))
        if differ:
            readers = {n: self.info["env_reads"].get(n, "start-up") for n in differ}
            raise ZygoteRefused(f"this run sets {differ}, read at start-up or by the preload's imports ({readers}): "
                                "run it in a fresh interpreter")
        return extra

    def shadowing(self, entries: list[str]) -> Optional[str]:
        """Why directories put first on sys.path would change what the zygote already imported (a fresh interpreter
        would have found some of those modules, or metadata for them, there), or None. ``sitecustomize`` and
        ``usercustomize`` count too: a fresh interpreter imports them at start-up."""
        loaded = set(self.info["top_level"]) | {"sitecustomize", "usercustomize"}
        added = [p for p in self.info["path_added"] if os.path.isdir(p)]  # GitPython's git/ext/gitdb, if it exists
        if added:
            return f"the preload put {added} on sys.path, ahead of where start-up puts PYTHONPATH"
        for entry in entries:
            if not entry or not os.path.isabs(entry) or (os.path.exists(entry) and not os.path.isdir(entry)):
                return f"{entry!r} is not an absolute directory"
            found = provided(Path(entry)) & loaded
            if found:
                return f"{entry} holds {sorted(found)}, which the zygote imported already"
        return None

    def run(self, kind: str, target: str, args: tuple = (), *, env: dict, cwd: str,
            timeout: float) -> subprocess.CompletedProcess:
        """Run ``python -c target``, ``-m target`` or ``target`` (a script) with ``args`` in a child; like
        ``subprocess.run(..., capture_output=True, text=True, timeout=timeout)``."""
        self.start()
        path = self.check(env)
        argv = {"code": ["-c", target], "module": ["-m", target], "script": [target]}[kind]
        cmd = [self.python, *argv, *args]
        request = json.dumps({"kind": kind, "target": target, "args": list(args), "env": env, "cwd": str(cwd),
                              "path": path, "timeout": timeout}).encode()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdin = os.open(os.devnull, os.O_RDONLY)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.socket)
            payload = struct.pack("!I", len(request)) + request
            sent = socket.send_fds(conn, [payload[:1 << 15]], [stdin, out_w, err_w])
            conn.sendall(payload[sent:])
        finally:
            for fd in (stdin, out_w, err_w):
                os.close(fd)
        try:
            out, err, status = self._collect(conn, out_r, err_r, timeout + 30)
        finally:
            conn.close()
        stdout, stderr = _text(out), _text(err)
        if status.get("timed_out"):
            raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr)
        return subprocess.CompletedProcess(cmd, status["returncode"], stdout, stderr)

    @staticmethod
    def _collect(conn: socket.socket, out_r: int, err_r: int, limit: float) -> tuple[bytes, bytes, dict]:
        """Read the child's stdout and stderr to their end and the zygote's last word on it."""
        chunks: dict = {out_r: [], err_r: []}
        messages, open_fds = b"", {out_r, err_r}
        with selectors.DefaultSelector() as selector:
            for fd in (out_r, err_r):
                selector.register(fd, selectors.EVENT_READ)
            selector.register(conn, selectors.EVENT_READ)
            deadline = time.monotonic() + limit
            status: Optional[dict] = None
            while selector.get_map() and time.monotonic() < deadline:
                for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                    if key.fileobj is conn:
                        data = conn.recv(1 << 16)
                        messages += data
                        if not data:
                            selector.unregister(conn)
                        continue
                    data = os.read(key.fd, 1 << 16)
                    if data:
                        chunks[key.fd].append(data)
                    else:
                        selector.unregister(key.fd)
                        os.close(key.fd)
                        open_fds.discard(key.fd)
        for fd in open_fds:
            os.close(fd)
        for line in messages.splitlines():
            message = json.loads(line)
            if "returncode" in message:
                status = message
        if status is None:
            raise RuntimeError(f"the zygote did not report on the run within {limit:.0f} s")
        return b"".join(chunks[out_r]), b"".join(chunks[err_r]), status

    def close(self) -> None:
        """Stop the zygote (it kills runs still going) and delete its directory."""
        with self.lock:
            if self.process is not None:
                assert self.process.stdin is not None
                self.process.stdin.close()  # EOF: the zygote kills its children and exits
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                self.process = None
            shutil.rmtree(self.workdir, ignore_errors=True)


def provided(directory: Path) -> set[str]:
    """The top-level module names a directory on sys.path provides: its packages (namespace ones too), modules and
    extension modules, and the names its distributions' metadata (top_level.txt, else RECORD) names."""
    names: set[str] = set()
    if not directory.is_dir():
        return names
    for path in directory.iterdir():
        if path.suffix in (".dist-info", ".egg-info"):
            top_level = path / "top_level.txt"
            if top_level.is_file():
                names.update(line.strip() for line in top_level.read_text().splitlines() if line.strip())
            elif (path / "RECORD").is_file():
                for row in (path / "RECORD").read_text().splitlines():
                    first = row.split(",")[0].split("/")[0]
                    if first and not first.endswith((".dist-info", ".data")) and first not in ("..", "__pycache__"):
                        names.add(first.split(".")[0])
        elif path.is_dir():
            names.add(path.name)
        elif path.suffix in (".py", ".pyc", ".so", ".pyd"):
            names.add(path.name.split(".")[0])
    return names


def _text(data: bytes) -> str:
    """What ``subprocess.run(..., text=True)`` makes of the bytes (locale encoding, universal newlines)."""
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")
