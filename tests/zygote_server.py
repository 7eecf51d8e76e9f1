"""The zygote's own process (see tests/zygote.py for what it is for and what it keeps): standard library only.

Started as ``python -c BOOT zygote_server.py SOCKET WORKDIR [EXCLUDED]`` with METAGPT_VLLM_FIX=0, so the plugin's
.pth line installs nothing here. It learns which modules ``import metagpt.llm`` loads (in a forked probe), imports
the third-party ones that import silently (never metagpt, metagpt_vllm_fix or _metagpt_vllm_fix_boot), then forks
one child per run. A child takes the run's stdin/stdout/stderr, cwd, environment and argv, runs the plugin's .pth
line as site.py does at start-up, runs the code, and exits as an interpreter does; the zygote reports its status.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import selectors
import signal
import site
import socket
import struct
import sys
import tempfile
import time
import traceback
import types
import warnings

PTH = "metagpt-vllm-fix.pth"
NEVER = ("metagpt", "metagpt_vllm_fix", "_metagpt_vllm_fix_boot")  # what every run must import for itself
PROBE_CONFIG = "llm:\n  api_type: open_llm\n  base_url: 'http://127.0.0.1:9/v1'\n  model: m\n  api_key: k\n"
MAX_RESTARTS = 8
HEADER = struct.Struct("!I")


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _executing() -> list:
    """Names of the modules whose top-level code is running now, innermost first (the import stack)."""
    frame, names = sys._getframe(1), []
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            names.append(frame.f_globals.get("__name__"))
        frame = frame.f_back
    return [name for name in names if name]


class Noise:
    """Whatever imports show: bytes on fds 1 and 2 (sys.stdout, sys.stderr, warnings, C libraries), and with
    ``attribute`` (the probe only) each warning or write with the modules being imported at that moment.

    A module whose import makes noise is not preloaded: in a child it would stay silent (imported already) where a
    fresh interpreter speaks, and a test asserting a clean stderr would prove less. The preload itself replaces no
    object a module could keep (loguru keeps the sys.stderr it finds at import): it only points fds 1 and 2 at files."""

    def __init__(self, workdir: str, attribute: bool = False) -> None:
        self.stacks: list = []
        self.files = [tempfile.TemporaryFile(dir=workdir) for _ in (1, 2)]
        self.saved = [os.dup(1), os.dup(2)]
        for fd, sink in zip((1, 2), self.files):
            os.dup2(sink.fileno(), fd)
        self.show, self.streams = warnings.showwarning, (sys.stdout, sys.stderr)
        if attribute:
            warnings.showwarning = self._warned
            sys.stdout, sys.stderr = _Recorder(sys.stdout, self), _Recorder(sys.stderr, self)

    def _warned(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.stacks.append(("warning", f"{category.__name__}: {message}", _executing()))

    def shown(self) -> bytes:
        """Everything shown so far (sys.stdout and sys.stderr flushed first)."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        out = b""
        for f in self.files:
            f.seek(0)
            out += f.read()
        return out + "".join(text for _, text, _ in self.stacks).encode()

    def close(self) -> None:
        self.shown()
        warnings.showwarning = self.show
        sys.stdout, sys.stderr = self.streams
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        for f in self.files:
            f.close()


class _Recorder:
    def __init__(self, inner, noise: Noise) -> None:
        self.inner, self.noise = inner, noise

    def write(self, text: str) -> int:
        if text:
            self.noise.stacks.append(("output", text[:200], _executing()))
        return len(text)

    def flush(self) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class EnvReads:
    """Records which variables module-level code reads by name while it is imported, and what it writes; the
    environment itself is left as it is. A module that copies the whole environment (GitPython, for the `git
    version` it runs at import) is listed as a copier instead: its reads cannot be told from the copy."""

    def __init__(self) -> None:
        self.by_module: dict = {}
        self.copiers: set = set()
        self.writes: dict = {}
        self.base = type(os.environ)
        owner = self

        class Recording(self.base):  # type: ignore[misc, valid-type]
            bulk = 0

            def __getitem__(self, key):
                if not Recording.bulk:
                    for module in _executing()[:1]:
                        owner.by_module.setdefault(module, set()).add(key)
                return super().__getitem__(key)

            def __setitem__(self, key, value):
                owner.writes[key] = value
                super().__setitem__(key, value)

            def __iter__(self):
                owner.copiers.update(_executing()[:1])
                Recording.bulk += 1
                try:
                    yield from super().__iter__()
                finally:
                    Recording.bulk -= 1

        os.environ.__class__ = Recording

    def reads(self) -> dict:
        """variable -> the modules that read it by name at import (copiers and our own __main__ left out)."""
        out: dict = {}
        for module, keys in self.by_module.items():
            if module not in self.copiers and module != "__main__":
                for key in keys:
                    out.setdefault(key, []).append(module)
        return {key: sorted(modules) for key, modules in sorted(out.items())}

    def close(self) -> None:
        os.environ.__class__ = self.base


def probe(workdir: str) -> dict:
    """In a forked child: ``import metagpt.llm`` as a run would, noting each module's first import and importer,
    and the modules on the import stack whenever something was shown. Returns the plan for the preload."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            first: list = []

            class Recorder:
                def find_spec(self, name, path=None, target=None):
                    importer = next(iter(_executing()), "")
                    first.append((name, importer))
                    return None

            root = os.path.join(workdir, "probe-root")
            os.makedirs(os.path.join(root, "config"), exist_ok=True)
            with open(os.path.join(root, "config", "config2.yaml"), "w") as f:
                f.write(PROBE_CONFIG)
            os.environ["METAGPT_PROJECT_ROOT"] = root
            noise = Noise(workdir, attribute=True)
            sys.meta_path.insert(0, Recorder())
            importlib.import_module("metagpt.llm")
            noise.close()
            first = [(name, importer) for name, importer in first if name in sys.modules]  # not failed attempts
            noisy = sorted({m for _, _, stack in noise.stacks for m in stack if not _within(m, NEVER)})
            os.write(write, json.dumps({"first": first, "noisy": noisy}).encode())
            os._exit(0)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            os._exit(1)
    os.close(write)
    chunks = []
    while True:
        chunk = os.read(read, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"the probe's `import metagpt.llm` failed (status {status}): see the zygote's log")
    found = json.loads(b"".join(chunks))
    noisy = set(found["noisy"])
    # A module is an entry point of the preload when no preloaded module imports it first: MetaGPT's own imports of
    # third-party modules, and the imports of modules left out (a noisy one's quiet dependencies).
    held_back = set(NEVER) | noisy
    entries = [name for name, importer in found["first"]
               if not _within(name, held_back) and (not importer or importer == "__main__"
                                                     or _within(importer, held_back))]
    return {"entries": list(dict.fromkeys(entries)), "noisy": sorted(noisy), "modules": len(found["first"])}


class Restart(Exception):
    """A module's import made noise or failed in the preload: start again without it."""


def preload(plan: dict, excluded: set) -> dict:
    """Import the plan's entry points in order, each silently, else raise Restart naming it."""
    env = EnvReads()
    noise = Noise(plan["workdir"])
    try:
        for name in plan["entries"]:
            if name in sys.modules or _within(name, excluded):
                continue
            before = len(noise.shown())
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001
                raise Restart(name, f"import failed: {type(exc).__name__}: {exc}") from None
            shown = noise.shown()[before:]
            if shown:
                raise Restart(name, f"its import showed {shown[:300]!r}")
    finally:
        noise.close()
        env.close()
    leaked = sorted(m for m in sys.modules if _within(m, NEVER))
    if leaked:
        raise RuntimeError(f"the preload imported {leaked}: a run would not import them itself")
    return {"reads": env.reads(), "copiers": sorted(env.copiers - {"__main__"}), "writes": env.writes}


# --- the runs ----------------------------------------------------------------------------------------------------


def receive(conn: socket.socket) -> tuple:
    """One request: a length-prefixed JSON document, with the run's stdin, stdout and stderr as SCM_RIGHTS fds."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack_from(data)[0]:
        more = conn.recv(1 << 16)
        if not more:
            raise ConnectionError("the client went away mid-request")
        data += more
    (size,) = HEADER.unpack_from(data)
    return json.loads(data[HEADER.size:HEADER.size + size]), fds


def send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the client is gone


def child(request: dict, fds: list, info: dict) -> None:
    """Become the run: its fds, cwd, environment and argv; the .pth line; then the code. Ends in SystemExit."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd, target in zip(fds, (0, 1, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for key, value in info["env_writes"].items():  # what the preload's imports set (sklearn's KMP_* defaults)
        os.environ.setdefault(key, value)
    sys.path_importer_cache.pop("", None)  # '' meant the zygote's cwd
    importlib.invalidate_caches()
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=sys.modules["builtins"], __loader__=importlib.machinery.BuiltinImporter,
                         __spec__=None, __package__=None, __annotations__={})
    sys.modules["__main__"] = main
    kind, args = request["kind"], request["args"]
    if kind == "code":
        sys.argv, sys.path[0] = ["-c", *args], ""
    elif kind == "module":
        sys.argv, sys.path[0] = ["-m", *args], os.getcwd()
    else:
        sys.argv, sys.path[0] = [request["target"], *args], os.path.dirname(os.path.realpath(request["target"]))
    sys.path[1:1] = request["path"]  # the run's PYTHONPATH entries (beyond the zygote's own), where start-up puts them
    site.addpackage(info["pth_dir"], PTH, set())  # as site.py does at start-up, now with the run's environment
    try:
        if kind == "code":
            exec(compile(request["target"], "<string>", "exec"), main.__dict__)
        elif kind == "module":
            import runpy

            runpy._run_module_as_main(request["target"], alter_argv=True)  # what `python -m` calls
        else:
            with open(request["target"], "rb") as f:
                source = f.read()
            main.__file__ = request["target"]
            exec(compile(source, request["target"], "exec"), main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001  (what the interpreter does with an uncaught exception)
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        if isinstance(exc, KeyboardInterrupt):
            sys.stdout.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        raise SystemExit(1) from None
    raise SystemExit(0)


class Server:
    """One thread, one selector: new connections, each child's exit (a pidfd), each client's hang-up, deadlines."""

    def __init__(self, listener: socket.socket, info: dict) -> None:
        self.listener, self.info = listener, info
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, ("accept", None))
        self.selector.register(0, selectors.EVENT_READ, ("parent", None))  # EOF: the test process is gone
        self.runs: dict = {}  # pid -> {"conn", "pidfd", "deadline", "timed_out"}

    def loop(self):
        while True:
            now = time.monotonic()
            deadlines = [run["deadline"] - now for run in self.runs.values() if not run["timed_out"]]
            timeout = max(0.0, min(deadlines)) if deadlines else None
            for key, _ in self.selector.select(timeout):
                what, pid = key.data
                if what == "accept":
                    job = self.accept()
                    if job is not None:
                        return job
                elif what == "exit":
                    self.reap(pid)
                elif what == "hangup":
                    run = self.runs.get(pid)
                    if run is not None and not run["conn"].recv(1, socket.MSG_PEEK):
                        self.kill(pid)
                elif what == "parent" and not os.read(0, 1 << 10):
                    for pid in list(self.runs):
                        self.kill(pid)
                    raise SystemExit(0)
            now = time.monotonic()
            for pid, run in list(self.runs.items()):
                if not run["timed_out"] and now >= run["deadline"]:
                    run["timed_out"] = True
                    self.kill(pid)

    def accept(self):
        conn, _ = self.listener.accept()
        try:
            request, fds = receive(conn)
        except (OSError, ValueError):
            conn.close()
            return None
        pid = os.fork()
        if pid == 0:
            self.selector.close()
            self.listener.close()
            for run in self.runs.values():
                run["conn"].close()
                os.close(run["pidfd"])
            conn.close()
            return request, fds
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.runs[pid] = {"conn": conn, "pidfd": pidfd, "deadline": time.monotonic() + request["timeout"],
                          "timed_out": False}
        self.selector.register(pidfd, selectors.EVENT_READ, ("exit", pid))
        self.selector.register(conn, selectors.EVENT_READ, ("hangup", pid))
        send(conn, {"pid": pid})
        return None

    def kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self, pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        run = self.runs.pop(pid)
        self.selector.unregister(run["pidfd"])
        self.selector.unregister(run["conn"])
        os.close(run["pidfd"])
        send(run["conn"], {"returncode": os.waitstatus_to_exitcode(status), "timed_out": run["timed_out"]})
        run["conn"].close()


def main(argv: list) -> None:
    sock_path, workdir = argv[0], argv[1]
    excluded = set(filter(None, argv[2].split(","))) if len(argv) > 2 else set()
    if "_metagpt_vllm_fix_boot" in sys.modules:
        raise RuntimeError("the plugin's .pth line ran at start-up: start the zygote with METAGPT_VLLM_FIX=0")
    (pth_dir,) = [d for d in site.getsitepackages() if os.path.exists(os.path.join(d, PTH))]
    started, cpu, environ, path = time.monotonic(), time.process_time(), dict(os.environ), list(sys.path)
    plan_file = os.path.join(workdir, "plan.json")
    if os.path.exists(plan_file):
        with open(plan_file) as f:
            plan = json.load(f)
    else:
        plan = probe(workdir)
        plan["workdir"] = workdir
        with open(plan_file, "w") as f:
            json.dump(plan, f)
    try:
        env = preload(plan, excluded)
    except Restart as restart:
        name, why = restart.args
        print(f"zygote: not preloading {name}: {why}", file=sys.stderr, flush=True)
        if len(excluded) >= MAX_RESTARTS:
            raise RuntimeError(f"more than {MAX_RESTARTS} modules left out of the preload") from None
        os.execve(sys.executable, [sys.executable, "-c", BOOT, __file__, sock_path, workdir,
                                   ",".join(sorted(excluded | {name}))], environ)
    # No gc.collect() or gc.freeze() here: the children's collections must come when a fresh interpreter's would.
    # A frozen heap made them far more frequent, and the demo printed "Task exception was never retrieved" (openai's
    # AsyncClient of a finished asyncio.run collected while the next loop ran), which no fresh interpreter did.
    info = {"pid": os.getpid(), "pth_dir": pth_dir, "env_reads": env["reads"], "env_copiers": env["copiers"],
            "env_writes": env["writes"],
            "preloaded": len(sys.modules), "top_level": sorted({name.split(".")[0] for name in sys.modules}),
            "entries": len(plan["entries"]), "noisy": plan["noisy"],
            "path_added": [entry for entry in sys.path if entry not in path],
            "excluded": sorted(excluded), "seconds": round(time.monotonic() - started, 2),
            "cpu_seconds": round(time.process_time() - cpu, 2),
            "native_threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(64)
    with open(os.path.join(workdir, "ready.json.tmp"), "w") as f:
        json.dump(info, f)
    os.replace(os.path.join(workdir, "ready.json.tmp"), os.path.join(workdir, "ready.json"))
    sys.stdout.flush()
    sys.stderr.flush()
    request, fds = Server(listener, info).loop()
    child(request, fds, info)


# How the client starts this file (and how it restarts itself): load it by path, without putting tests/ on sys.path.
BOOT = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('_zygote_server', sys.argv[1]); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); module.main(sys.argv[2:])")
