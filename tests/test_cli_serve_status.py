"""``serve`` (the embedded server as a command) and ``status`` (one line), as subprocesses."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from conftest import clean_env, run_python
from metagpt_vllm_fix.doctor import is_loopback
from metagpt_vllm_fix.masking import mask
from test_cli_doctor import start_serve, stop

CLI = [sys.executable, "-m", "metagpt_vllm_fix"]
KEY = "token-serve-0123456789"
ENV_KEY = "token-from-env-0123456789"


def test_serve_enforces_the_key_prints_a_masked_config_and_stops_on_sigint(tmp_path):
    proc, base_url, out = start_serve(tmp_path, "--api-key", KEY, "--model", "my-model", "--max-model-len", "2048")
    wrong = httpx.get(base_url + "/models", headers={"Authorization": "Bearer nope"}, timeout=5)
    right = httpx.get(base_url + "/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    code, stderr = stop(proc, signal.SIGINT)
    assert (wrong.status_code, wrong.content) == (401, b'{"error":"Unauthorized"}')
    assert right.status_code == 200 and right.json()["data"][0]["id"] == "my-model"
    text = out.read_text()
    assert code == 0 and "Traceback" not in stderr, stderr
    assert f"URL          {base_url}   (loopback only" in text
    assert f"API key      {mask(KEY)} (from --api-key)" in text
    assert "answers as vLLM 0.32.0 does" in text and "rules        vLLM 0.18+ generation" in text
    for line in ("  llm:", "    api_type: open_llm", f"    base_url: '{base_url}'", "    model: 'my-model'",
                 f"    api_key: '{mask(KEY)}'"):
        assert line + "\n" in text or line + " " in text, (line, text)
    assert "GET /v1/models  Authorization: Bearer *** -> 401" in text.replace("  -> ", " -> ")
    assert f"GET /v1/models  Authorization: Bearer {mask(KEY)}  -> 200" in text
    assert KEY not in text + stderr
    assert text.rstrip().endswith("stopped.")


def test_serve_as_vllm_03_prefers_vllm_api_key_and_stops_on_sigterm(tmp_path):
    proc, base_url, out = start_serve(tmp_path, "--api-key", KEY, "--vllm-version", "0.3.3", VLLM_API_KEY=ENV_KEY)
    by_env = httpx.get(base_url + "/models", headers={"Authorization": f"Bearer {ENV_KEY}"}, timeout=5)
    by_option = httpx.get(base_url + "/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    code, stderr = stop(proc, signal.SIGTERM)
    assert (by_env.status_code, by_option.status_code) == (200, 401)
    assert code == 0 and "Traceback" not in stderr, stderr
    text = out.read_text()
    assert f"{mask(ENV_KEY)} from VLLM_API_KEY, which wins over --api-key in vLLM 0.3.3" in text
    assert ENV_KEY not in text and KEY not in text


def test_serve_as_current_vllm_prefers_the_api_key_option(tmp_path):
    proc, base_url, out = start_serve(tmp_path, "--api-key", KEY, VLLM_API_KEY=ENV_KEY)
    by_env = httpx.get(base_url + "/models", headers={"Authorization": f"Bearer {ENV_KEY}"}, timeout=5)
    by_option = httpx.get(base_url + "/models", headers={"Authorization": f"bearer {KEY}"}, timeout=5)
    version = httpx.get(base_url[:-len("/v1")] + "/version", timeout=5)
    code, stderr = stop(proc, signal.SIGTERM)
    assert (by_env.status_code, by_option.status_code) == (401, 200)
    assert version.json() == {"version": "0.32.0"}
    assert code == 0 and "Traceback" not in stderr, stderr
    assert f"{mask(KEY)} from --api-key, which wins over VLLM_API_KEY in vLLM 0.32.0" in out.read_text()


SEED_CHAT = {"model": "meta-llama/Llama-2-7b-hf", "messages": [{"role": "system", "content": "You are helpful."},
                                                                {"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("args, status, message, line", [
    ((), 400, "As of transformers v4.44, default chat template is no longer allowed",
     "template     none (every chat request gets 400, as from vLLM 0.5.5 on)"),
    (("--vllm-version", "0.3.3"), 200, None,
     "template     none (chat requests are answered in transformers' old default layout, as vLLM 0.3.3 did)"),
    (("--chat-template", "mistral-instruct"), 400, "Conversation roles must alternate",
     "template     mistral-instruct (refuses a system message with 400)"),
])
def test_serve_plays_the_seeds_model_without_a_chat_template_unless_told_otherwise(tmp_path, args, status, message,
                                                                                  line):
    proc, base_url, out = start_serve(tmp_path, *args)
    chat = httpx.post(base_url + "/chat/completions", json=SEED_CHAT, timeout=5)
    completion = httpx.post(base_url + "/completions", json={"model": SEED_CHAT["model"], "prompt": "hi"}, timeout=5)
    code, stderr = stop(proc, signal.SIGTERM)
    assert code == 0 and "Traceback" not in stderr, stderr
    assert (chat.status_code, completion.status_code) == (status, 200)
    if message:
        assert message in chat.text
    text = out.read_text()
    assert line in text
    assert ("the plugin's chat_template fix answers" in text) is (not args)
    assert ("the plugin's system_role fix" in text) is ("mistral-instruct" in args)


EXECUTE = {"name": "execute", "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                                            "required": ["code"]}}
CODE_STEP = {**SEED_CHAT, "tools": [{"type": "function", "function": EXECUTE}]}  # MetaGPT's aask_code: no tool_choice


@pytest.mark.parametrize("args, status, line", [
    ((), 400, "tools        no tool flags (function calls are refused or ignored, as the release did)"),
    (("--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--chat-template", "llama-2-chat"), 200,
     "tools        --tool-call-parser hermes --enable-auto-tool-choice: tools with or without a tool_choice answered "
     "with a call"),
])
def test_serve_with_vllms_tool_flags_answers_metagpts_function_call_with_a_tool_call(tmp_path, args, status, line):
    proc, base_url, out = start_serve(tmp_path, *args)
    answer = httpx.post(base_url + "/chat/completions", json=CODE_STEP, timeout=5)
    code, stderr = stop(proc, signal.SIGTERM)
    assert code == 0 and "Traceback" not in stderr, stderr
    assert answer.status_code == status, answer.text
    if status == 200:
        (call,) = answer.json()["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "execute" and json.loads(call["function"]["arguments"]) == {"code": "echo"}
    else:  # refused before the (missing) chat template is looked at
        assert answer.json()["error"]["message"].startswith('"auto" tool choice requires --enable-auto-tool-choice')
    assert line in out.read_text()
    assert ("the plugin's tools fix answers MetaGPT's function calls" in out.read_text()) is (status == 400)


@pytest.mark.parametrize("args, message", [
    (("--enable-auto-tool-choice",), "--enable-auto-tool-choice requires --tool-call-parser"),
    (("--tool-call-parser", "hermes", "--vllm-version", "0.3.3"), "vLLM 0.3.3 has no tool calling"),
])
def test_serve_refuses_tool_flags_vllm_would_refuse(tmp_path, args, message):
    proc = subprocess.run([*CLI, "serve", *args], capture_output=True, text=True, env=clean_env(tmp_path),
                          cwd=str(tmp_path), timeout=30)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_serve_refuses_a_vllm_version_it_cannot_place(tmp_path):
    proc = subprocess.run([*CLI, "serve", "--vllm-version", "0.2.7"], capture_output=True, text=True,
                          env=clean_env(tmp_path), cwd=str(tmp_path), timeout=30)
    assert proc.returncode == 2
    assert "vLLM 0.2.7 is older than any generation this project knows (0.3.0)" in proc.stderr


def test_serve_on_a_busy_port_fails_with_one_clear_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run([*CLI, "serve", "--port", str(port)], capture_output=True, text=True,
                              env=clean_env(tmp_path), cwd=str(tmp_path), timeout=30)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"problem cannot listen on 127.0.0.1:{port}" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("0.0.0.0", False), ("192.168.1.20", False), ("gpu-box", False)])
def test_loopback_addresses_are_told_apart_for_the_serve_warning(host, loopback):
    assert is_loopback(host) is loopback


def run_cli(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "metagpt_vllm_fix", *args], capture_output=True,
                          text=True, env=clean_env(tmp_path, **env), cwd=str(tmp_path), timeout=60)


def imported(proc: subprocess.CompletedProcess) -> set:
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("switch, automatic", [
    (None, "Automatic activation: on ("),
    ("0", "Automatic activation: off (METAGPT_VLLM_FIX=0): only programs that `import metagpt_vllm_fix` are patched."),
])
def test_status_prints_one_line_about_this_process_and_automatic_activation(tmp_path, switch, automatic):
    proc = run_cli(tmp_path, "status", **({"METAGPT_VLLM_FIX": switch} if switch else {}))
    assert proc.returncode == 0
    line, *fixes = proc.stdout.splitlines()
    assert line.startswith("pending: will patch when metagpt.provider.open_llm_api is imported (MetaGPT 0.7.7; "
                           "fixes api_key, max_tokens, usage, chat_template, system_role, httpx, fail_fast, tools, "
                           "formats).")
    assert automatic in line
    assert [f.split()[:2] for f in fixes] == [["api_key", "pending"], ["max_tokens", "pending"], ["usage", "pending"],
                                              ["chat_template", "pending"], ["system_role", "pending"],
                                              ["httpx", "pending"], ["fail_fast", "pending"], ["tools", "pending"],
                                              ["formats", "pending"]]
    assert "layout by model name: Llama-2's for Llama-family names, ChatML otherwise" in fixes[3]


def test_status_names_each_fix_and_the_ones_disabled_by_name(tmp_path):
    import json

    proc = run_cli(tmp_path, "status", "--json", METAGPT_VLLM_FIX_DISABLE="usage, MAX-TOKENS,system-role")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert [(f["name"], f["state"]) for f in document["fixes"]] == [
        ("api_key", "pending"), ("max_tokens", "off"), ("usage", "off"), ("chat_template", "pending"),
        ("system_role", "off"), ("httpx", "pending"), ("fail_fast", "pending"), ("tools", "pending"),
        ("formats", "pending")]
    assert "fixes api_key, chat_template, httpx, fail_fast, tools, formats)" in document["line"]


def test_status_warns_once_about_a_name_that_is_no_fix(tmp_path):
    code = ("import metagpt.provider.open_llm_api, metagpt_vllm_fix; "
            "print([(f.name, f.state) for f in metagpt_vllm_fix.status().fixes])")
    proc = run_python(code, home=tmp_path, forked=True, METAGPT_VLLM_FIX_DISABLE="usage,tiktoken")
    assert proc.returncode == 0, proc.stderr
    assert ("[('api_key', 'active'), ('max_tokens', 'active'), ('usage', 'off'), ('chat_template', 'active'), "
            "('system_role', 'active'), ('httpx', 'idle'), ('fail_fast', 'active'), ('tools', 'active'), "
            "('formats', 'active')]"
            ) in proc.stdout
    assert proc.stderr.count("METAGPT_VLLM_FIX_DISABLE names no fix: tiktoken") == 1


@pytest.mark.parametrize("args", [("status",), ("--help",), ("doctor", "--help")])
def test_status_and_help_do_not_import_metagpt_or_http_libraries(tmp_path, args):
    proc = run_cli(tmp_path, *args)
    assert proc.returncode == 0
    heavy = {m for m in imported(proc) if m.split(".")[0] in ("metagpt", "httpx", "aiohttp", "rich", "openai")}
    assert heavy == set()
