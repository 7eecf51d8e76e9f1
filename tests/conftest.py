"""Shared fixtures: a vLLM-0.3-compatible server on 127.0.0.1, a temporary HOME with the seed's config2.yaml,
and runners for processes of the test environment in which the .pth start-up path is what is tested.

Two kinds of process run the plugin as a user's interpreter would (tests/zygote.py says why both prove the same):
- a fresh interpreter (``run_python``, and ``forked=False`` wherever a helper takes it): for what is about start-up
  itself (-S, -I, -X importtime, what start-up imports), another interpreter or venv, and the install flows;
- a child of this worker's zygote (``forked=True``; the default of ``ask_metagpt``, ``ask_metagpt_twice``,
  ``seed_asks_twice``, ``run_module`` and ``run_script``), which has MetaGPT's third-party dependencies imported
  already and runs the plugin's .pth line with the run's environment, as start-up does: for runs about what the
  plugin does once MetaGPT is imported (MetaGPT's requests, the doctor, the demo, the metagpt command), with or
  without a PYTHONPATH (a fake, damaged or other MetaGPT, a broken or newer wrapt; httpx 0.28 gets a zygote started
  with its PYTHONPATH, see ``zygote_for``).

Which runs are zygote children, by file (every other run of the suite is a fresh interpreter, as before):
- test_cli_doctor.py: every doctor run (the ``serve`` servers it asks stay processes of their own).
- test_auth_end_to_end.py, test_fix_usage.py, test_fix_chat_template.py, test_fix_system_role.py: every ask.
- test_faults.py: every run but the -S and -I ones.
- test_fix_fail_fast.py: the ``metagpt`` command and the loops' probe. test_cli_demo.py: the demo.
- test_version_matrix.py: the asks, probes and doctors of each MetaGPT 0.7 release and of httpx 0.28 (the other
  Pythons' venvs stay fresh). test_gate.py, test_wrapt_versions.py, test_upstream_untouched.py: every run.
- test_cli_serve_status.py, test_entry_point.py: the one run of each that imports MetaGPT (status with a word that
  names no fix, wrapt's hook discovery).
- test_zygote.py: the zygote itself, each child compared with a fresh interpreter.

``ZYGOTE=0`` turns the zygote off: every run is then a fresh interpreter, as before.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Optional

import pytest
from filelock import FileLock

import zygote as zygote_module

# MetaGPT 0.7 writes logs/ and workspace/ under its project root, which is the current directory when the
# package is not a checkout: keep this interpreter's in a temporary directory, not in the repo.
os.environ["METAGPT_PROJECT_ROOT"] = tempfile.mkdtemp(prefix="metagpt-root-")
atexit.register(shutil.rmtree, os.environ["METAGPT_PROJECT_ROOT"], ignore_errors=True)

import _metagpt_vllm_fix_boot  # noqa: E402  (installed at the top of site-packages by the wheel or editable install)
from metagpt_vllm_fix.server import DEFAULT_MODEL, VLLMServer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# An editable install copies boot/ into site-packages: refuse to test a stale copy of the start-up hook.
if Path(_metagpt_vllm_fix_boot.__file__).read_bytes() != (REPO / "boot" / "_metagpt_vllm_fix_boot.py").read_bytes():
    pytest.exit("the installed _metagpt_vllm_fix_boot.py differs from boot/: run `make venv` (or `make test`)", 2)

SEED_KEY = "token-abc123"
RESULT_MARK = "@@RESULT@@ "

SEED_CONFIG = """\
llm:
  api_type: open_llm
  base_url: '{base_url}'
  model: '{model}'
  api_key: {api_key}
"""

# Asks MetaGPT 0.7 the way a user does: config2.yaml -> metagpt.llm.LLM() -> aask. Prints one JSON result line.
ASK_SCRIPT = """
import asyncio, json, sys
{prelude}
from metagpt.llm import LLM

async def main():
    try:
        answer = await LLM().aask("hello from the test", stream={stream})
        result = {{"ok": True, "answer": answer}}
    except Exception as exc:
        result = {{"ok": False, "error": type(exc).__name__, "status": getattr(exc, "status_code", None)}}
    print({mark!r} + json.dumps(result), flush=True)

asyncio.run(main())
"""


@pytest.fixture
def vllm_server():
    """A key-checking server started like the seed's: ``--api-key token-abc123``.

    Its context is 8192 tokens because MetaGPT 0.7 always asks for ``max_tokens = llm.max_token`` (4096 by
    default), which a 4096-token model rejects with 400 whatever the key (``doctor`` warns about that)."""
    with VLLMServer(api_keys=[SEED_KEY], model=DEFAULT_MODEL, max_model_len=8192) as server:
        yield server


def write_config(home: Path, base_url: str, api_key: str = SEED_KEY, model: str = DEFAULT_MODEL,
                 extra: str = "") -> Path:
    path = home / ".metagpt" / "config2.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SEED_CONFIG.format(base_url=base_url, model=model, api_key=api_key) + extra)
    return path


@pytest.fixture
def user_home(tmp_path, vllm_server):
    """A temporary HOME whose ~/.metagpt/config2.yaml is the seed's, pointed at ``vllm_server``."""
    home = tmp_path / "home"
    write_config(home, vllm_server.base_url)
    return home


def clean_env(home: Optional[Path] = None, **extra: str) -> dict[str, str]:
    """The test process's environment without proxies or our switch, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "METAGPT_VLLM_FIX",
                                "METAGPT_PROJECT_ROOT", "VLLM_API_KEY", "PYTHONPATH", "METAGPT_VLLM_FIX_DISABLE"}}
    if home is not None:
        env["HOME"] = str(home)
    env.update(extra)
    return env


_ZYGOTES: dict[str, zygote_module.Zygote] = {}
_ZYGOTES_LOCK = threading.Lock()


def zygote(pythonpath: str = "") -> zygote_module.Zygote:
    """This worker's zygote, started on first use with the test environment's clean environment (with
    ``pythonpath``: another one, started with that PYTHONPATH)."""
    with _ZYGOTES_LOCK:
        if pythonpath not in _ZYGOTES:
            _ZYGOTES[pythonpath] = zygote_module.Zygote(clean_env(**({"PYTHONPATH": pythonpath} if pythonpath else {})))
        return _ZYGOTES[pythonpath]


def zygote_for(env: dict[str, str]) -> zygote_module.Zygote:
    """The zygote for a run: the main one, whose child puts the run's PYTHONPATH first on sys.path, unless that
    PYTHONPATH holds modules the main one imported already (httpx 0.28): then one started with it."""
    main, pythonpath = zygote(), env.get("PYTHONPATH", "")
    if pythonpath:
        main.start()
        if main.shadowing(pythonpath.split(os.pathsep)):
            return zygote(pythonpath)
    return main


# `make test` runs one file per pytest-xdist worker at a time (--dist loadfile), in collection order: the files that
# take longest go first, so that no worker starts one of them while the other has nothing left (measured by
# --durations, 2026-12-03). The rest keep their order.
LONGEST_FIRST = ("test_lifecycle.py", "test_version_matrix.py", "test_faults.py", "test_cli_doctor.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = Path(str(item.path)).name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the others, the order stays


def pytest_sessionfinish(session: pytest.Session) -> None:
    for started in _ZYGOTES.values():
        started.close()


def run_process(kind: str, target: str, args: tuple = (), *, env: dict[str, str], cwd: Path, timeout: float,
                forked: bool = True) -> subprocess.CompletedProcess:
    """``python -c CODE``, ``python -m MODULE`` or a console script of the test environment, with ``args``: in a
    child of the zygote when ``forked`` (unless ZYGOTE=0), else as a fresh process."""
    if forked and zygote_module.enabled():
        return zygote_for(env).run(kind, target, args, env=env, cwd=str(cwd), timeout=timeout)
    argv = {"code": [sys.executable, "-c", target], "module": [sys.executable, "-m", target], "script": [target]}
    return subprocess.run([*argv[kind], *args], capture_output=True, text=True, env=env, cwd=str(cwd),
                          timeout=timeout)


def run_python(code: str, *, home: Optional[Path] = None, cwd: Optional[Path] = None, python: str = sys.executable,
               args: tuple = (), timeout: float = 120, forked: bool = False, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (start-up hooks included), or with ``forked`` in a child of the zygote
    (which runs the .pth line as start-up does); return the completed process. ``args`` are interpreter options."""
    where = cwd or home or Path.cwd()
    if forked:
        if python != sys.executable or args:
            raise ValueError("another interpreter or interpreter options: a fresh interpreter's business")
        return run_process("code", textwrap.dedent(code), env=clean_env(home, **env), cwd=where, timeout=timeout)
    return subprocess.run([python, *args, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=clean_env(home, **env), cwd=str(where), timeout=timeout)


def run_module(module: str, *args: str, env: dict[str, str], cwd: Path, timeout: float = 120,
               forked: bool = True) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` of the test environment (a zygote child unless ``forked`` is false)."""
    return run_process("module", module, args, env=env, cwd=cwd, timeout=timeout, forked=forked)


def run_script(name: str, *args: str, env: dict[str, str], cwd: Path, timeout: float = 120,
               forked: bool = True) -> subprocess.CompletedProcess:
    """The test environment's console script NAME (``metagpt``) with ARGS (a zygote child unless ``forked``)."""
    script = str(Path(sys.executable).with_name(name))
    return run_process("script", script, args, env=env, cwd=cwd, timeout=timeout, forked=forked)


def ask_metagpt(home: Path, *, stream: bool = False, prelude: str = "", forked: bool = True, **env: str) -> dict:
    """Run MetaGPT's ``LLM().aask`` in a zygote child (``forked=False``: a fresh interpreter, which a run with
    PYTHONPATH needs) configured by ``home``; return its JSON result."""
    proc = run_python(ASK_SCRIPT.format(prelude=prelude, stream=stream, mark=RESULT_MARK), home=home, forked=forked,
                      **env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert lines, f"no result from the child (rc={proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(lines[-1][len(RESULT_MARK):])
    result["stderr"] = proc.stderr
    result["stdout"] = "".join(line for line in proc.stdout.splitlines(keepends=True)
                               if not line.startswith(RESULT_MARK))
    return result


def _run_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory every pytest-xdist worker of this run shares (this session's basetemp without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from this checkout the way pip builds it for users (once per run, all workers)."""
    out = _run_shared(tmp_path_factory) / "shared-wheel"
    with FileLock(str(out) + ".lock"):
        if not list(out.glob("metagpt_vllm_fix-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
                           check=True, capture_output=True)
    (wheel,) = out.glob("metagpt_vllm_fix-*.whl")
    return wheel


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


# --- environments the tests need (not the subject of the test): built with uv when it can be had -------------

UV = REPO / "scripts" / "uv"


@functools.cache
def uv_available() -> bool:
    """Whether scripts/uv can run here (the uv that scripts/bootstrap uses; not with BOOTSTRAP_INSTALLER=pip)."""
    proc = subprocess.run([str(UV), "--which"], capture_output=True, text=True, timeout=300,
                          env=clean_env(PYTHON=sys.executable))
    return proc.returncode == 0


def require_uv() -> None:
    """For a test whose subject is uv: skip when uv was refused on purpose (BOOTSTRAP_INSTALLER=pip), else fail
    when it cannot be had; such a test never quietly checks nothing."""
    if uv_available():
        return
    if os.environ.get("BOOTSTRAP_INSTALLER") == "pip":
        pytest.skip("BOOTSTRAP_INSTALLER=pip: uv refused on purpose")
    pytest.fail("uv cannot be had here (`scripts/uv --which` says why)")


def install_into(python, *args: str, target: Optional[Path] = None,
                 timeout: float = 600) -> subprocess.CompletedProcess:
    """``pip install -q ARGS`` into ``python``'s environment (or ``--target``), without byte-compiling: by uv
    (told pip's sources by scripts/uv) when it can be had, else by pip. For environments a test needs; where the
    installer itself is under test (tests/test_lifecycle.py), the test names its tool."""
    where = ["--target", str(target)] if target is not None else []
    if uv_available():
        cmd = [str(UV), "pip", "install", "-q", "--python", str(python), *where, *args]
    else:
        cmd = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile", *where, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(PYTHON=sys.executable))


def new_venv(venv: Path, python: str = sys.executable) -> Path:
    """A fresh ``python -m venv`` (without pip when uv will fill it: it needs none); returns its interpreter."""
    subprocess.run([python, "-m", "venv", *(["--without-pip"] if uv_available() else []), str(venv)], check=True,
                   capture_output=True)
    return venv_python(venv)


@pytest.fixture(scope="session")
def bare_venv(tmp_path_factory, built_wheel) -> Path:
    """A fresh venv holding the plugin and its own dependencies, but no MetaGPT; returns its python (shared)."""
    venv = _run_shared(tmp_path_factory) / "shared-bare-venv"
    python = venv_python(venv)
    with FileLock(str(venv) + ".lock"):
        if not (venv / ".ready").exists():
            shutil.rmtree(venv, ignore_errors=True)
            new_venv(venv)
            proc = install_into(python, str(built_wheel), "wrapt==1.15.0", "packaging==23.2")
            assert proc.returncode == 0, proc.stderr[-3000:]
            (venv / ".ready").touch()
    return python


def imported_at_startup(python, *args: str, env: Optional[dict[str, str]] = None) -> set:
    """Names of the modules ``python -c pass`` imports, from ``-X importtime``."""
    proc = subprocess.run([str(python), *args, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                          env=env or clean_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


def metagpt_with_placeholder_config() -> None:
    """Give this process's MetaGPT project root a config2.yaml, so that modules which load MetaGPT's config when
    imported (the Data Interpreter's actions) import; the provider tests build their LLMs from their own config."""
    path = Path(os.environ["METAGPT_PROJECT_ROOT"]) / "config" / "config2.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SEED_CONFIG.format(base_url="http://127.0.0.1:9/v1", model=DEFAULT_MODEL, api_key=SEED_KEY))


def open_llm_instance(base_url: str, api_key: str = SEED_KEY, model: str = DEFAULT_MODEL, **extra):
    """MetaGPT 0.7's provider for the seed's ``llm:`` block (plus ``extra`` fields), built as ``LLM()`` builds it."""
    from metagpt.configs.llm_config import LLMConfig
    from metagpt.provider.llm_provider_registry import create_llm_instance

    return create_llm_instance(LLMConfig(api_type="open_llm", base_url=base_url, model=model, api_key=api_key,
                                         **extra))


_loop: Optional[asyncio.AbstractEventLoop] = None


def run(awaitable):
    """Run ``awaitable`` on one event loop per test (openai's pooled connections belong to the loop that opened them;
    a new loop per call would make the client reconnect and retry behind the test's back)."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(awaitable)


@pytest.fixture(autouse=True)
def _one_event_loop_per_test():
    yield
    global _loop
    if _loop is not None:
        _loop.close()
        _loop = None


@pytest.fixture
def fresh_fixes(monkeypatch):
    """Every fix applied to this process's MetaGPT with nothing learnt yet; the default state is put back after."""
    import metagpt_vllm_fix

    monkeypatch.delenv("METAGPT_VLLM_FIX_DISABLE", raising=False)
    import metagpt.provider.open_llm_api  # noqa: F401  (the hook patches it)

    metagpt_vllm_fix.remove()
    metagpt_vllm_fix.apply()
    yield
    metagpt_vllm_fix.remove()
    monkeypatch.delenv("METAGPT_VLLM_FIX_DISABLE", raising=False)
    metagpt_vllm_fix.apply()


# Two aask calls of one LLM() (streamed, then not) in one fresh interpreter: what one process learns from the first
# (a fix's one refusal) shows in the second. Prints a JSON list: each answer, or the error.
ASK_TWICE_SCRIPT = """
import asyncio, json
from metagpt.llm import LLM

async def main():
    llm = LLM()
    out = []
    for stream in (True, False):
        try:
            out.append({{"answer": await llm.aask({prompt!r}, stream=stream)}})
        except Exception as exc:
            out.append({{"error": type(exc).__name__, "status": getattr(exc, "status_code", None),
                         "message": str(exc)}})
    print({mark!r} + json.dumps(out), flush=True)

asyncio.run(main())
"""


def ask_metagpt_twice(home: Path, prompt: str = "hello from the test", **env: str) -> tuple[list, str]:
    """(results of a streamed and a plain ``aask`` in one zygote child configured by ``home``, its stderr)."""
    proc = run_python(ASK_TWICE_SCRIPT.format(prompt=prompt, mark=RESULT_MARK), home=home, forked=True, **env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert lines, f"no result from the child (rc={proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(lines[-1][len(RESULT_MARK):]), proc.stderr


def seed_asks_twice(tmp_path: Path, server: VLLMServer, prompt: str = "hello from the test",
                    **env: str) -> tuple[list, str]:
    """The seed's config2.yaml pointed at ``server``; a streamed and a plain ``aask`` in one zygote child."""
    home = tmp_path / "home"
    write_config(home, server.base_url)
    return ask_metagpt_twice(home, prompt, **env)


def v1_paths(server: VLLMServer) -> list[tuple[str, int]]:
    """(path, status) of each ``/v1`` request the emulator answered, in order."""
    return [(r.path, r.status) for r in server.requests if r.path.startswith("/v1")]
