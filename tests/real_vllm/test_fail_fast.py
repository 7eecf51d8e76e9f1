"""The fail_fast and httpx fixes against a real vLLM 0.32.0, through MetaGPT 0.7.7's own ``metagpt`` command.

A wrong key (401, vLLM's auth middleware) and an unknown model (404, ``_check_model``) are answered before vLLM
looks at the chat template or at max_tokens (``render_chat_request`` checks the model first), so these tests hold
whatever model the server has.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RESULT_MARK, clean_env, run_python, write_config
from real_vllm.metagpt_runs import CALLS, AccessLog

WRONG_KEY = "token-wrong-999"
HTTPX_028 = "0.28.1"


def metagpt_command(home: Path, **env: str) -> subprocess.CompletedProcess:
    metagpt = Path(sys.executable).with_name("metagpt")
    return subprocess.run([str(metagpt), "write a hello world cli", "--n-round", "2"], capture_output=True, text=True,
                          env=clean_env(home, METAGPT_PROJECT_ROOT=str(home), **env), cwd=str(home), timeout=600)


CASES = {  # name -> (config fields, what fail_fast says, status)
    "wrong-key": ({"api_key": WRONG_KEY}, "the server refused api_key tok...999 (401)", 401),
    "unknown-model": ({"model": "no-such-model"},
                      "the server does not serve model no-such-model; it serves meta-llama/Llama-2-7b-hf (404)", 404),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refused_request_is_sent_once_by_the_metagpt_command_and_six_times_without_fail_fast(case, real_vllm,
                                                                                                tmp_path):
    fields, says, status = CASES[case]
    home = tmp_path / "home"
    write_config(home, real_vllm.base_url, **fields)

    log = AccessLog(real_vllm.log_path)
    proc = metagpt_command(home)
    assert log.chat_statuses() == [status], proc.stderr[-3000:]
    assert says in proc.stderr, proc.stderr[-3000:]
    assert not [path for _, path, _ in log.seen() if path == "/v1/models"]  # vLLM 0.32's 404 names them
    assert WRONG_KEY not in proc.stdout + proc.stderr

    log = AccessLog(real_vllm.log_path)
    shipped = metagpt_command(home, METAGPT_VLLM_FIX_DISABLE="fail_fast")
    assert log.chat_statuses() == [status] * 6, shipped.stderr[-3000:]
    assert "so they stop here" not in shipped.stderr


@pytest.fixture(scope="module")
def httpx_028(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("httpx-028")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                           str(target), f"httpx=={HTTPX_028}"], capture_output=True, text=True, env=clean_env())
    if proc.returncode != 0:
        pytest.fail(f"pip could not install httpx=={HTTPX_028}:\n{proc.stderr[-2000:]}")
    return target


def ask(home: Path, **env: str) -> list[dict]:
    code = CALLS.format(streams=(True, False), prompt="Say hello.", mark=RESULT_MARK)
    code = "import httpx, sys\nprint('httpx', httpx.__version__, file=sys.stderr)\n" + code
    proc = run_python(code, home=home, timeout=300, **env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:  # the LLM() of a broken client raises before any call: say what it raised
        return [{"ok": False, "error": proc.stderr.strip().splitlines()[-1].split(":")[0], "httpx": proc.stderr}]
    return [{**call, "httpx": proc.stderr} for call in json.loads(lines[-1][len(RESULT_MARK):])]


def test_seed_config_on_httpx_028_gets_what_it_gets_on_httpx_027_and_a_type_error_without_the_fix(real_vllm,
                                                                                                  httpx_028, tmp_path):
    """Whatever the server's model makes of the seed's requests (tests/real_vllm/test_metagpt_end_to_end.py shows
    the answers), httpx 0.28 with the plugin sends the same requests and gets the same outcome as the venv's 0.27."""
    home = tmp_path / "home"
    write_config(home, real_vllm.base_url)
    log = AccessLog(real_vllm.log_path)
    old = ask(home)
    old_statuses = log.chat_statuses()
    assert all("httpx 0.27" in call["httpx"] for call in old)

    log = AccessLog(real_vllm.log_path)
    new = ask(home, PYTHONPATH=str(httpx_028))
    assert all(f"httpx {HTTPX_028}" in call["httpx"] for call in new)
    assert log.chat_statuses() == old_statuses and old_statuses
    outcome = [(c["ok"], c.get("error"), c.get("status")) for c in new]
    assert outcome == [(c["ok"], c.get("error"), c.get("status")) for c in old]

    log = AccessLog(real_vllm.log_path)
    shipped = ask(home, PYTHONPATH=str(httpx_028), METAGPT_VLLM_FIX_DISABLE="httpx")
    assert [c["error"] for c in shipped] == ["TypeError"], shipped
    assert "unexpected keyword argument 'proxies'" in shipped[0]["httpx"]
    assert log.chat_statuses() == []
