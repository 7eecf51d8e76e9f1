"""The seed's config, verbatim, through MetaGPT 0.7.7 against a real vLLM 0.32.0 (512-token context), as a user runs it.

Real vLLM does not say which key it received, so everything is proven by what a user sees (answers, errors,
stdout, stderr) and by the statuses in the server's own access log.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import RESULT_MARK, clean_env, run_python, write_config
from loopback_proxy import SilentProxy

NOISE = ("Warning: model not found", "usage calculation failed", "ERROR")

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
            await llm.aask({prompt!r}, stream=stream)
            after = llm.get_costs()
            calls.append({{"ok": True, "prompt_tokens": after.total_prompt_tokens - before.total_prompt_tokens,
                          "completion_tokens": after.total_completion_tokens - before.total_completion_tokens}})
        except Exception as exc:
            calls.append({{"ok": False, "error": type(exc).__name__, "status": getattr(exc, "status_code", None),
                          "message": str(exc)[:600]}})
    print({mark!r} + json.dumps(calls), flush=True)

asyncio.run(main())
"""


class AccessLog:
    """The server's access log from now on: (method, path, status) of every request it answered."""

    LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/1\.1" (\d{3})')

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, path.stat().st_size

    def seen(self) -> list[tuple[str, str, int]]:
        text = self.path.read_bytes()[self.offset:].decode("utf-8", "replace")
        return [(method, path, int(status)) for method, path, status in self.LINE.findall(text)]

    def chat_statuses(self) -> list[int]:
        return [status for _, path, status in self.seen() if path == "/v1/chat/completions"]


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


def offline(tmp_path: Path, proxy_url: str) -> dict[str, str]:
    cache = tmp_path / "empty-tiktoken-cache"
    cache.mkdir(exist_ok=True)
    return {"TIKTOKEN_CACHE_DIR": str(cache), "HTTPS_PROXY": proxy_url, "HTTP_PROXY": proxy_url,
            "NO_PROXY": "127.0.0.1"}


def test_seed_config_gets_401_from_real_vllm_as_metagpt_ships(real_vllm, tmp_path):
    log = AccessLog(real_vllm.log_path)
    result = ask(seed_home(tmp_path, real_vllm.base_url), (True, False), METAGPT_VLLM_FIX="0")
    assert [(c["error"], c["status"]) for c in result["calls"]] == [("AuthenticationError", 401)] * 2
    assert log.chat_statuses() == [401, 401]


def test_seed_config_answers_stream_and_not_twice_in_one_process(real_vllm, tmp_path):
    log = AccessLog(real_vllm.log_path)
    result = ask(seed_home(tmp_path, real_vllm.base_url), (True, False, True, False))
    assert [c["ok"] for c in result["calls"]] == [True] * 4, result
    # each request as configured first (max_tokens 4096, refused), then without max_tokens
    assert log.chat_statuses() == [400, 200] * 4
    counts = {(c["prompt_tokens"], c["completion_tokens"] > 0) for c in result["calls"]}
    assert len(counts) == 1 and next(iter(counts))[0] > 0 and next(iter(counts))[1]  # the server's count each time
    assert "does not fit meta-llama/Llama-2-7b-hf's context of 512 tokens" in result["stderr"]


@pytest.mark.parametrize("fix,failure", [
    ("api_key", ("AuthenticationError", 401)),
    ("max_tokens", ("BadRequestError", 400)),
])
def test_each_request_fix_disabled_by_name_brings_back_its_upstream_failure(real_vllm, tmp_path, fix, failure):
    log = AccessLog(real_vllm.log_path)
    result = ask(seed_home(tmp_path, real_vllm.base_url), (True, False), METAGPT_VLLM_FIX_DISABLE=fix)
    assert [(c["error"], c["status"]) for c in result["calls"]] == [failure] * 2
    assert log.chat_statuses() == [failure[1]] * 2
    if fix == "max_tokens":
        assert "max_tokens=4096 cannot be greater than max_model_len=512" in result["calls"][0]["message"]


def test_offline_streamed_calls_are_quiet_and_counted_by_the_server(real_vllm, tmp_path):
    proxy = SilentProxy()
    try:
        result = ask(seed_home(tmp_path, real_vllm.base_url), (True, False, True), **offline(tmp_path, proxy.url))
        assert not proxy.held, "something tried to download through the proxy"
    finally:
        proxy.close()
    calls = result["calls"]
    assert all(c["ok"] for c in calls), calls
    assert calls[0]["prompt_tokens"] == calls[1]["prompt_tokens"] == calls[2]["prompt_tokens"] > 0
    output = result["stdout"] + result["stderr"]
    assert not [noise for noise in NOISE if noise in output], output[-3000:]


def test_usage_disabled_by_name_brings_back_the_print_and_the_error_offline(real_vllm, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # closed again at once: the download is refused
    env = offline(tmp_path, f"http://127.0.0.1:{port}")
    result = ask(seed_home(tmp_path, real_vllm.base_url), (True,), METAGPT_VLLM_FIX_DISABLE="usage", **env)
    assert result["calls"][0]["ok"], result
    assert "Warning: model not found. Using cl100k_base encoding." in result["stdout"]
    assert "usage calculation failed!" in result["stderr"]


def test_a_prompt_too_long_by_itself_gets_real_vllms_error_after_one_retry(real_vllm, tmp_path):
    log = AccessLog(real_vllm.log_path)
    result = ask(seed_home(tmp_path, real_vllm.base_url), (False,), prompt="hello " * 600)
    (call,) = result["calls"]
    assert (call["ok"], call["status"]) == (False, 400)
    assert "your prompt contains at least 513 input tokens" in call["message"]
    assert log.chat_statuses() == [400, 400]  # max_tokens 4096 refused, then the prompt itself: no third request


def doctor(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metagpt_vllm_fix", "doctor", *args], capture_output=True, text=True,
                          env=clean_env(home, **env), cwd=str(home), timeout=180)


def test_doctor_names_the_real_servers_version_and_passes_max_token_equal_to_its_context(real_vllm, tmp_path):
    home = seed_home(tmp_path, real_vllm.base_url, extra="  max_token: 512\n")
    proc = doctor(home, "--timeout", "30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vLLM 0.32.0" in proc.stdout
    document = json.loads(doctor(home, "--timeout", "30", "--json").stdout)
    assert (document["server"]["vllm_version"], document["server"]["version_assumed"]) == ("0.32.0", False)


def test_doctor_on_the_seed_config_warns_with_the_fix_and_fails_without_it(real_vllm, tmp_path):
    home = seed_home(tmp_path, real_vllm.base_url)
    handled = doctor(home, "--timeout", "30")
    assert handled.returncode == 0, handled.stdout + handled.stderr
    assert "handled: the max_tokens fix" in handled.stdout
    refused = doctor(home, "--timeout", "30", METAGPT_VLLM_FIX_DISABLE="max_tokens")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert re.search(r"problem\s+llm.max_token 4096", refused.stdout)


def metagpt_command(home: Path, **env: str) -> subprocess.CompletedProcess:
    metagpt = Path(sys.executable).with_name("metagpt")
    return subprocess.run([str(metagpt), "write a hello world command line program", "--n-round", "2"],
                          capture_output=True, text=True, env=clean_env(home, METAGPT_PROJECT_ROOT=str(home), **env),
                          cwd=str(home), timeout=600)


def test_the_metagpt_command_itself_talks_to_real_vllm_only_with_the_plugin(real_vllm_4k, tmp_path):
    """MetaGPT's own prompts need more than 512 tokens: this server has Llama-2's 4096. The tiny model's answers
    are gibberish, so MetaGPT's roles fail to parse them after their retries; what counts is that the server
    answered them at all."""
    home = seed_home(tmp_path, real_vllm_4k.base_url)
    log = AccessLog(real_vllm_4k.log_path)
    metagpt_command(home, METAGPT_VLLM_FIX="0")
    shipped = log.chat_statuses()
    assert shipped and set(shipped) == {401}, shipped
    log = AccessLog(real_vllm_4k.log_path)
    proc = metagpt_command(home)
    fixed = log.chat_statuses()
    assert fixed and set(fixed) == {200}, (fixed, proc.stderr[-3000:])  # max_token 4096 == context: vLLM clamps
    assert "Unauthorized" not in proc.stdout + proc.stderr
