"""Version matrix: the seed's scenario on every published MetaGPT 0.7.x, and the plugin on every Python 3.9-3.11 here.

How a MetaGPT version is swapped in: only the ``metagpt`` wheel changes. Each release is installed with
``pip install --no-deps --target <dir>`` (uv's when it can be had; a session cache), and a process of ``.venv``
(which holds MetaGPT 0.7.7's pinned dependencies and this plugin) runs with ``PYTHONPATH=<dir>``, so that
``import metagpt`` and ``importlib.metadata.version("metagpt")`` both find that release first. Every child reports
what it really imported, and the test checks it before it looks at the answer. The processes are zygote children
(tests/zygote.py), which put PYTHONPATH where start-up does: the main zygote's for a MetaGPT release (it never
imported metagpt), one started with httpx 0.28's directory on PYTHONPATH for httpx 0.28 (the main one imported
httpx 0.27 already).

The full Python matrix (a MetaGPT 0.7.7 environment per interpreter, ~70 s each) is ``scripts/python-matrix``;
here every other 3.9-3.11 on the machine gets the cheap part (the wheel installs, the start-up hook loads, the
package works); the test environment's own Python gets it from tests/test_startup.py's ``bare_venv``.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (
    REPO,
    RESULT_MARK,
    SEED_KEY,
    ask_metagpt,
    clean_env,
    imported_at_startup,
    install_into,
    new_venv,
    run_module,
    run_python,
    write_config,
)
from loopback_proxy import LoopbackProxy
from metagpt_vllm_fix.server import VLLMServer

#: Every MetaGPT 0.7.x on the index. 0.7.5 was never published (the index goes 0.7.4 -> 0.7.6).
PUBLISHED_07 = ["0.7.0", "0.7.1", "0.7.2", "0.7.3", "0.7.4", "0.7.6", "0.7.7"]
NEVER_PUBLISHED = "0.7.5"
IDENTITY_MARK = "@@IDENTITY@@ "

# Runs before LLM() in the child: says which metagpt it imported, on stderr (ask_metagpt returns stderr).
IDENTITY_PRELUDE = f"""
import importlib.metadata as _md, metagpt as _mg
print({IDENTITY_MARK!r} + json.dumps({{"file": _mg.__file__, "version": _md.version("metagpt")}}), file=sys.stderr)
"""


def _pip(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout, env=clean_env())


@pytest.fixture(scope="session")
def metagpt_release(tmp_path_factory):
    """``metagpt_release("0.7.3")`` -> a directory holding that wheel alone (installed once per session)."""
    root = tmp_path_factory.mktemp("metagpt-releases")
    cache = {}

    def install(version: str) -> Path:
        if version not in cache:
            target = root / version
            proc = install_into(sys.executable, "--no-deps", f"metagpt=={version}", target=target, timeout=300)
            if proc.returncode != 0:
                pytest.fail(f"could not install metagpt=={version} (is PyPI reachable?):\n{proc.stderr[-2000:]}")
            cache[version] = target
        return cache[version]

    return install


def _identity(stderr: str) -> dict:
    lines = [line for line in stderr.splitlines() if line.startswith(IDENTITY_MARK)]
    assert lines, f"the child did not say which metagpt it imported:\n{stderr[-3000:]}"
    return json.loads(lines[-1][len(IDENTITY_MARK):])


def test_the_index_has_exactly_these_07_releases():
    """Ask the index itself which 0.7.x exist: 0.7.5 is absent and every other one is there."""
    proc = _pip("index", "versions", "metagpt", timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"`pip index versions metagpt` failed (no access to PyPI?): {proc.stderr.strip()[-500:]}")
    match = re.search(r"Available versions:\s*(.+)", proc.stdout)
    assert match, proc.stdout
    available = {v.strip() for v in match.group(1).split(",")}
    assert sorted(v for v in available if v.startswith("0.7.")) == PUBLISHED_07
    assert NEVER_PUBLISHED not in available


def test_0_7_5_cannot_be_installed_because_it_was_never_published(tmp_path):
    proc = _pip("install", "--no-deps", "--target", str(tmp_path / "t"), f"metagpt=={NEVER_PUBLISHED}")
    assert proc.returncode != 0
    assert f"No matching distribution found for metagpt=={NEVER_PUBLISHED}" in proc.stderr, proc.stderr[-2000:]


def test_open_llm_module_is_the_same_file_in_every_07_release(metagpt_release):
    """One patch fits all: the file that holds the bug is byte-identical across 0.7.0-0.7.7."""
    digests = {v: hashlib.sha256((metagpt_release(v) / "metagpt/provider/open_llm_api.py").read_bytes()).hexdigest()
               for v in PUBLISHED_07}
    assert len(set(digests.values())) == 1, digests
    assert 'api_key="sk-xxx"' in (metagpt_release("0.7.7") / "metagpt/provider/open_llm_api.py").read_text()


def test_the_function_call_path_is_the_same_file_in_every_07_release(metagpt_release):
    """aask_code's request and its reading (openai_api.py) and the default function (constant.py) are
    byte-identical across 0.7.0-0.7.7: the tools fix fits them all."""
    for path in ("metagpt/provider/openai_api.py", "metagpt/provider/constant.py"):
        digests = {v: hashlib.sha256((metagpt_release(v) / path).read_bytes()).hexdigest() for v in PUBLISHED_07}
        assert len(set(digests.values())) == 1, (path, digests)
    assert "GENERAL_FUNCTION_SCHEMA" in (metagpt_release("0.7.0") / "metagpt/provider/openai_api.py").read_text()


def auth_headers(server):
    return [r.authorization for r in server.requests if r.path.startswith("/v1")]


@pytest.fixture(scope="module")
def seed_era_server():
    """The seed's server as of MetaGPT 0.7's time: vLLM 0.3.3, Llama-2-7b's 4096-token context, --api-key."""
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=4096, vllm_version="0.3.3") as server:
        yield server


@pytest.mark.parametrize("version", PUBLISHED_07)
def test_every_07_release_fails_the_seed_config_and_the_plugin_makes_it_answer(version, metagpt_release,
                                                                                seed_era_server, tmp_path):
    """The seed's config verbatim, streamed (aask's default): 401 as shipped; an answer with the plugin, after
    one refusal of max_tokens 4096, counted with the server's usage (no tiktoken: its cache is empty here)."""
    target = metagpt_release(version)
    home = tmp_path / "home"
    write_config(home, seed_era_server.base_url)
    cache = tmp_path / "empty-tiktoken-cache"
    cache.mkdir()
    env = {"PYTHONPATH": str(target), "TIKTOKEN_CACHE_DIR": str(cache)}

    seed_era_server.clear_requests()
    upstream = ask_metagpt(home, stream=True, prelude=IDENTITY_PRELUDE, METAGPT_VLLM_FIX="0", **env)
    identity = _identity(upstream["stderr"])
    assert Path(identity["file"]).resolve().is_relative_to(target.resolve()), identity
    assert identity["version"] == version
    assert (upstream["ok"], upstream.get("error"), upstream.get("status")) == (False, "AuthenticationError", 401)
    assert auth_headers(seed_era_server) == ["Bearer sk-xxx"]

    seed_era_server.clear_requests()
    patched = ask_metagpt(home, stream=True, prelude=IDENTITY_PRELUDE, **env)
    identity = _identity(patched["stderr"])
    assert Path(identity["file"]).resolve().is_relative_to(target.resolve()), identity
    assert identity["version"] == version
    assert patched["ok"] is True, patched
    assert "hello from the test" in patched["answer"]
    seen = [(r.authorization, r.status, r.max_tokens) for r in seed_era_server.requests if r.path.startswith("/v1")]
    assert seen == [(f"Bearer {SEED_KEY}", 400, 4096), (f"Bearer {SEED_KEY}", 200, None)]
    assert "Warning: model not found" not in patched["stdout"]
    assert "usage calculation failed" not in patched["stderr"]


# The Data Interpreter's code step (aask_code: tools=[execute], no tool_choice) in one child: with every fix, then
# with the tools fix off by name (remove, the switch, apply: what a process started with it would have).
AASK_CODE_SCRIPT = """
import asyncio, json, os, sys
{prelude}
import metagpt_vllm_fix
from metagpt.llm import LLM

MESSAGES = [{{"role": "system", "content": "You are Code Interpreter."}}, {{"role": "user", "content": "Plot it."}}]


async def code_step():
    try:
        return {{"ok": True, "answer": await LLM().aask_code(MESSAGES)}}
    except Exception as exc:
        return {{"ok": False, "error": type(exc).__name__, "status": getattr(exc, "status_code", None),
                 "message": str(exc)}}


async def main():
    on = await code_step()
    metagpt_vllm_fix.remove()
    os.environ["METAGPT_VLLM_FIX_DISABLE"] = "tools"
    metagpt_vllm_fix.apply()
    print({mark!r} + json.dumps({{"on": on, "off": await code_step()}}), flush=True)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def seed_server_032():
    """The seed's server on today's vLLM: 0.32.0 started without tool flags, the seed's model (no chat template)."""
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=4096, vllm_version="0.32.0", chat_template="none") as server:
        yield server


@pytest.mark.parametrize("version", PUBLISHED_07)
def test_every_07_releases_aask_code_gets_a_tool_call_with_the_tools_fix_and_400_without(version, metagpt_release,
                                                                                      seed_server_032, tmp_path):
    target = metagpt_release(version)
    home = tmp_path / "home"
    write_config(home, seed_server_032.base_url)
    seed_server_032.clear_requests()
    proc = run_python(AASK_CODE_SCRIPT.format(prelude=IDENTITY_PRELUDE, mark=RESULT_MARK), home=home,
                      PYTHONPATH=str(target), TIKTOKEN_CACHE_DIR=str(tmp_path))
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert lines, proc.stderr[-3000:]
    identity = _identity(proc.stderr)
    assert Path(identity["file"]).resolve().is_relative_to(target.resolve()) and identity["version"] == version
    result = json.loads(lines[-1][len(RESULT_MARK):])
    assert result["on"]["ok"] is True, result
    assert set(result["on"]["answer"]) == {"language", "code"} and result["on"]["answer"]["language"] == "python"
    assert (result["off"]["error"], result["off"]["status"]) == ("BadRequestError", 400)
    assert '"auto" tool choice requires --enable-auto-tool-choice' in result["off"]["message"]
    seen = [(r.method, r.path, r.status) for r in seed_server_032.requests]
    assert seen == [("POST", "/v1/chat/completions", 400), ("GET", "/version", 200),  # with the fix: refused, then
                    ("POST", "/v1/chat/completions", 400), ("POST", "/v1/completions", 200),  # no template: completions
                    ("POST", "/v1/chat/completions", 400)]  # without it: upstream's 400


# --- MetaGPT 0.7.7 with httpx 0.28 (CONTEXT §12: any package that needs a current httpx brings it in) -----------

HTTPX_028 = "0.28.1"
HTTPX_PRELUDE = f"""
import httpx as _hx
print({IDENTITY_MARK!r} + json.dumps({{"file": _hx.__file__, "version": _hx.__version__}}), file=sys.stderr)
"""
PROXIES_ERROR = "TypeError"  # AsyncClient.__init__() got an unexpected keyword argument 'proxies'


@pytest.fixture(scope="session")
def httpx_028(tmp_path_factory) -> Path:
    """A directory holding httpx 0.28.1 alone, put first on the child's path (the venv keeps its 0.27)."""
    target = tmp_path_factory.mktemp("httpx-028")
    proc = _pip("install", "-q", "--no-deps", "--no-compile", "--target", str(target), f"httpx=={HTTPX_028}")
    if proc.returncode != 0:
        pytest.fail(f"pip could not install httpx=={HTTPX_028} (is PyPI reachable?):\n{proc.stderr[-2000:]}")
    return target


def ask_with_httpx_028(home: Path, target: Path, stream: bool, **env: str) -> dict:
    cache = home.parent / "empty-tiktoken-cache"
    cache.mkdir(exist_ok=True)
    result = ask_metagpt(home, stream=stream, prelude=HTTPX_PRELUDE, PYTHONPATH=str(target),
                         TIKTOKEN_CACHE_DIR=str(cache), **env)
    identity = _identity(result["stderr"])
    assert Path(identity["file"]).resolve().is_relative_to(target.resolve()), identity
    assert identity["version"] == HTTPX_028
    return result


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "llm.proxy"])
def test_httpx_028_seed_config_answers_with_the_plugin_and_fails_at_llm_without_it(stream, proxied, httpx_028,
                                                                                    seed_era_server, tmp_path):
    home = tmp_path / "home"
    with LoopbackProxy() as proxy:
        write_config(home, seed_era_server.base_url, extra=f"  proxy: '{proxy.url}'\n" if proxied else "")
        seed_era_server.clear_requests()
        shipped = ask_with_httpx_028(home, httpx_028, stream, METAGPT_VLLM_FIX="0")
        assert (shipped["ok"], shipped.get("error")) == (False, PROXIES_ERROR), shipped
        assert seed_era_server.requests == []  # it never got as far as a request

        fixed = ask_with_httpx_028(home, httpx_028, stream)
    assert fixed["ok"] is True, fixed
    assert "hello from the test" in fixed["answer"]
    assert [(r.authorization, r.status) for r in seed_era_server.requests] == [(f"Bearer {SEED_KEY}", 400),
                                                                               (f"Bearer {SEED_KEY}", 200)]
    through_proxy = [(method, url) for method, url, _ in proxy.seen]
    assert through_proxy == ([("POST", f"{seed_era_server.base_url}/chat/completions")] * 2 if proxied else [])


# What each fix turned off by name gives on httpx 0.28 (streamed, the seed's config, a vLLM of MetaGPT 0.7's time).
HTTPX_028_EACH_OFF = {
    "api_key": (False, "AuthenticationError"),
    "max_tokens": (False, "BadRequestError"),
    "usage": (True, None),  # answers; counted by tiktoken, which prints and fails offline
    "chat_template": (True, None),  # this server's model has a chat template (or 0.3.3's default layout answers)
    "system_role": (True, None),
    "httpx": (False, PROXIES_ERROR),
    "fail_fast": (True, None),
    "tools": (True, None),  # aask sends no tools
    "formats": (True, None),  # a plain aask is no parse site
}


def test_httpx_028_table_names_every_fix():
    from metagpt_vllm_fix.fixes import NAMES

    assert sorted(HTTPX_028_EACH_OFF) == sorted(NAMES)


@pytest.mark.parametrize("fix", sorted(HTTPX_028_EACH_OFF))
def test_httpx_028_each_fix_off_by_name_gives_its_upstream_behaviour(fix, httpx_028, seed_era_server, tmp_path):
    home = tmp_path / "home"
    write_config(home, seed_era_server.base_url)
    result = ask_with_httpx_028(home, httpx_028, True, METAGPT_VLLM_FIX_DISABLE=fix)
    assert (result["ok"], result.get("error")) == HTTPX_028_EACH_OFF[fix], result
    if fix == "usage":
        assert "Warning: model not found" in result["stdout"]
    else:
        assert "Warning: model not found" not in result["stdout"]


HTTPX_REMOVE_PROBE = """
import json, metagpt.provider.open_llm_api as m
import metagpt_vllm_fix
from metagpt_vllm_fix.fixes import httpx_client
own = lambda: {name: type(vars(m.OpenLLM).get(name)).__name__ for name in ("_get_proxy_params", "_make_client_kwargs")}
applied = own()
metagpt_vllm_fix.remove()
removed = own()
original = vars(m.OpenLLM)["_make_client_kwargs"]
metagpt_vllm_fix.apply()
metagpt_vllm_fix.remove()
print(json.dumps({"applied": applied, "removed": removed, "same": vars(m.OpenLLM)["_make_client_kwargs"] is original,
                  "state": {f.name: f.state for f in metagpt_vllm_fix.status().fixes}}))
"""


def test_httpx_028_remove_restores_openllms_own_attributes(httpx_028, tmp_path):
    proc = run_python(HTTPX_REMOVE_PROBE, cwd=tmp_path, forked=True, PYTHONPATH=str(httpx_028))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["applied"] == {"_get_proxy_params": "FunctionWrapper", "_make_client_kwargs": "FunctionWrapper"}
    assert result["removed"] == {"_get_proxy_params": "NoneType", "_make_client_kwargs": "function"}  # inherited again
    assert result["same"] is True


def doctor_checks(home: Path, config: str, **env: str) -> dict:
    path = home / "config2.yaml"
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(config)
    proc = run_module("metagpt_vllm_fix", "doctor", "--config", str(path), "--json", env=clean_env(home, **env),
                      cwd=home, timeout=300)
    document = json.loads(proc.stdout)
    return {check["id"]: (check["level"], check["message"]) for check in document["checks"]}


@pytest.mark.parametrize("disable,level", [("", "ok"), ("httpx", "problem")])
def test_doctor_names_httpx_028_and_whether_the_httpx_fix_covers_it(disable, level, httpx_028, seed_era_server,
                                                                    tmp_path):
    config = (f"llm:\n  api_type: open_llm\n  base_url: '{seed_era_server.base_url}'\n  model: "
              f"'meta-llama/Llama-2-7b-hf'\n  api_key: {SEED_KEY}\n  max_token: 512\n")
    checks = doctor_checks(tmp_path / "home", config, PYTHONPATH=str(httpx_028), METAGPT_VLLM_FIX_DISABLE=disable)
    found, message = checks["httpx"]
    assert found == level, message
    assert message.startswith(f"httpx {HTTPX_028} no longer takes proxies=, which openai 1.6.0")
    old = doctor_checks(tmp_path / "home-027", config, METAGPT_VLLM_FIX_DISABLE=disable)
    assert "httpx" not in old  # an httpx that still takes proxies= does not matter: no line


# --- Python matrix, the cheap part (the MetaGPT environments are scripts/python-matrix's job) -------------------

PYENV = Path("/root/.pyenv/versions")


def _find_python(minor: str):
    """An interpreter for 3.<minor> on this machine: python3.X on PATH, else pyenv's, else None."""
    import shutil

    for candidate in [shutil.which(f"python3.{minor}"), *sorted(PYENV.glob(f"3.{minor}.*/bin/python"))]:
        if candidate and Path(candidate).exists():
            proc = subprocess.run([str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                  capture_output=True, text=True)
            if proc.returncode == 0 and proc.stdout.strip() == f"3.{minor}":
                return str(candidate)
    return None


PLUGIN_PROBE = """
import json, sys
import _metagpt_vllm_fix_boot as boot
hook_at_startup = boot.installed()
import metagpt_vllm_fix
s = metagpt_vllm_fix.status()
print(json.dumps({"hook_at_startup": hook_at_startup, "code": s.code, "state": s.state, "pth": bool(s.pth_file),
                  "python": "%d.%d" % sys.version_info[:2]}))
"""


OTHER_MINORS = [m for m in ("9", "10", "11") if m != str(sys.version_info[1])]  # this one: test_startup's bare_venv


@pytest.mark.parametrize("minor", OTHER_MINORS)
def test_plugin_wheel_installs_and_hooks_on_each_supported_python(minor, built_wheel, tmp_path):
    python = _find_python(minor)
    if python is None:
        pytest.skip(f"Python 3.{minor} is not on this machine (no python3.{minor} on PATH, nothing in {PYENV})")
    vpy = new_venv(tmp_path / "venv", python)
    proc = install_into(vpy, str(built_wheel), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = subprocess.run([str(vpy), "-c", PLUGIN_PROBE], capture_output=True, text=True, env=clean_env(),
                         cwd=str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status == {"hook_at_startup": True, "code": "metagpt-absent", "state": "inactive", "pth": True,
                      "python": f"3.{minor}"}
    modules = imported_at_startup(vpy)
    assert "_metagpt_vllm_fix_boot" in modules
    assert not {"wrapt", "metagpt_vllm_fix", "importlib.metadata", "packaging"} & modules


@pytest.mark.parametrize("minor", ["9", "10", "11"])
def test_each_python_on_this_machine_has_a_metagpt_lock_file(minor):
    """scripts/bootstrap refuses a Python without requirements/metagpt-0.7.7-pyXY.txt."""
    if _find_python(minor) is None:
        pytest.skip(f"Python 3.{minor} is not on this machine")
    lock = REPO / "requirements" / f"metagpt-0.7.7-py3{minor}.txt"
    assert lock.is_file(), f"{lock.relative_to(REPO)} is missing: `PYTHON=python3.{minor} ./scripts/bootstrap` fails"
