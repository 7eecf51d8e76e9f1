"""The seed's config, verbatim, through MetaGPT 0.7.7 against a real vLLM 0.32.0 serving the seed's model as
published (no chat template; 512-token context), as a user runs it.

Real vLLM does not say which key it received, so everything is proven by what a user sees (answers, errors,
stdout, stderr) and by the paths and statuses in the server's own access log. Every chat request to this server is
refused (no chat template); with the plugin, each request is refused as MetaGPT sent it, then ``/v1/completions``
answers it.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

from loopback_proxy import SilentProxy

from .metagpt_runs import CHAT, COMPLETIONS, NO_TEMPLATE, AccessLog, ask, doctor, metagpt_command, offline, seed_home

NOISE = ("Warning: model not found", "usage calculation failed", "ERROR")


def test_seed_config_gets_401_from_real_vllm_as_metagpt_ships(real_vllm, tmp_path):
    log = AccessLog(real_vllm.log_path)
    result = ask(seed_home(tmp_path, real_vllm.base_url), (True, False), METAGPT_VLLM_FIX="0")
    assert [(c["error"], c["status"]) for c in result["calls"]] == [("AuthenticationError", 401)] * 2
    assert log.chat_statuses() == [401, 401]


def test_seed_config_answers_a_model_without_chat_template_stream_and_not_twice_in_one_process(real_vllm, tmp_path,
                                                                                             request_counts):
    log = AccessLog(real_vllm.log_path)
    result = ask(seed_home(tmp_path, real_vllm.base_url), (True, False, True, False))
    request_counts["aask stream, not, stream, not; no template, 512"] = log.posts()
    assert [c["ok"] for c in result["calls"]] == [True] * 4, result
    # Each call: max_tokens 4096 refused, then the missing template, then /v1/completions answers.
    assert log.posts() == [(CHAT, 400), (CHAT, 400), (COMPLETIONS, 200)] * 4
    counts = {(c["prompt_tokens"], c["completion_tokens"] > 0) for c in result["calls"]}
    assert len(counts) == 1 and next(iter(counts))[0] > 0 and next(iter(counts))[1]  # the server's count each time
    assert "does not fit meta-llama/Llama-2-7b-hf's context of 512 tokens" in result["stderr"]
    assert result["stderr"].count("has no chat template") == 1  # one warning, with the remedy
    assert "--chat-template" in result["stderr"]


@pytest.mark.parametrize("fix,failure", [
    ("api_key", ("AuthenticationError", 401)),
    ("max_tokens", ("BadRequestError", 400)),
])
def test_each_request_fix_disabled_by_name_brings_back_its_upstream_failure(real_vllm, tmp_path, fix, failure):
    log = AccessLog(real_vllm.log_path)
    result = ask(seed_home(tmp_path, real_vllm.base_url), (True, False), METAGPT_VLLM_FIX_DISABLE=fix)
    assert [(c["error"], c["status"]) for c in result["calls"]] == [failure] * 2
    assert log.chat_statuses() == [failure[1]] * 2 and log.completion_statuses() == []
    if fix == "max_tokens":
        assert "max_tokens=4096 cannot be greater than max_model_len=512" in result["calls"][0]["message"]


def test_chat_template_disabled_by_name_brings_back_the_400_for_a_model_without_chat_template(real_vllm, tmp_path,
                                                                                             request_counts):
    log = AccessLog(real_vllm.log_path)
    result = ask(seed_home(tmp_path, real_vllm.base_url), (True, False), METAGPT_VLLM_FIX_DISABLE="chat_template")
    request_counts["aask stream, not; no template, 512; chat_template off"] = log.posts()
    assert [(c["error"], c["status"]) for c in result["calls"]] == [("BadRequestError", 400)] * 2
    assert all(NO_TEMPLATE in c["message"] for c in result["calls"]), result["calls"]
    # each call: max_tokens 4096 refused, then the template refusal; nothing asks /v1/completions
    assert log.posts() == [(CHAT, 400)] * 4


def test_offline_streamed_calls_are_quiet_and_counted_by_the_server(real_vllm, tmp_path):
    log = AccessLog(real_vllm.log_path)
    proxy = SilentProxy()
    try:
        result = ask(seed_home(tmp_path, real_vllm.base_url), (True, False, True), **offline(tmp_path, proxy.url))
        assert not proxy.held, "something tried to download through the proxy"
    finally:
        proxy.close()
    calls = result["calls"]
    assert all(c["ok"] for c in calls), calls
    assert calls[0]["prompt_tokens"] == calls[1]["prompt_tokens"] == calls[2]["prompt_tokens"] > 0
    # each call's fallback goes without max_tokens: the chat request's max_tokens refusal came first
    assert log.completion_statuses() == [200] * 3
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
    # max_tokens 4096 refused, then the missing template, then the prompt itself by /v1/completions: no fourth
    assert log.posts() == [(CHAT, 400), (CHAT, 400), (COMPLETIONS, 400)]


# The checks of a doctor run about the chat request and the context, not the formats check: MetaGPT's ActionNode
# prompts do not fit this server's 512 tokens at all (the test below says what the formats line then says).
CHAT_CHECKS = ("server-version", "server", "model", "max-token", "ask", "function-call")


def test_doctor_names_the_real_servers_version_and_passes_max_token_equal_to_its_context(real_vllm, tmp_path):
    home = seed_home(tmp_path, real_vllm.base_url, extra="  max_token: 512\n")
    proc = doctor(home, *CHAT_CHECKS, "--timeout", "30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vLLM 0.32.0" in proc.stdout
    document = json.loads(doctor(home, *CHAT_CHECKS, "--timeout", "30", "--json").stdout)
    assert (document["server"]["vllm_version"], document["server"]["version_assumed"]) == ("0.32.0", False)


def test_doctor_says_metagpts_actionnode_prompts_do_not_fit_a_512_token_server(real_vllm, tmp_path):
    home = seed_home(tmp_path, real_vllm.base_url, extra="  max_token: 64\n")
    proc = doctor(home, "--timeout", "60")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("problem ") and "ActionNode fill" in line]
    assert "no answer. The server answered 400: This model's maximum context length is 512 tokens" in line
    assert "verdict: problem (exit 1): 1 problem (formats)" in proc.stdout


def test_doctor_on_the_seed_config_warns_with_the_fix_and_fails_without_it(real_vllm, tmp_path):
    home = seed_home(tmp_path, real_vllm.base_url)
    handled = doctor(home, *CHAT_CHECKS, "--timeout", "30")
    assert handled.returncode == 0, handled.stdout + handled.stderr
    assert "handled: the max_tokens fix" in handled.stdout
    refused = doctor(home, *CHAT_CHECKS, "--timeout", "30", METAGPT_VLLM_FIX_DISABLE="max_tokens")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert re.search(r"problem\s+llm.max_token 4096", refused.stdout)


def test_the_metagpt_command_itself_talks_to_real_vllm_only_with_the_plugin(real_vllm_4k, tmp_path, request_counts):
    """MetaGPT's own prompts need more than 512 tokens: this server has Llama-2's 4096 (and no chat template). The
    tiny model's answers are gibberish, so MetaGPT's roles fail to parse them after their retries; what counts is
    that the server answered them at all: each request refused for want of a template, then answered through
    /v1/completions."""
    home = seed_home(tmp_path, real_vllm_4k.base_url)
    log = AccessLog(real_vllm_4k.log_path)
    metagpt_command(home, METAGPT_VLLM_FIX="0")
    shipped, shipped_posts = log.chat_statuses(), log.posts()
    assert shipped and set(shipped) == {401}, shipped
    log = AccessLog(real_vllm_4k.log_path)
    proc = metagpt_command(home)
    posts = log.posts()
    # max_token 4096 == context: clamped, never refused
    assert len(posts) >= 2 and posts == [(CHAT, 400), (COMPLETIONS, 200)] * (len(posts) // 2), \
        (posts, proc.stderr[-3000:])
    assert "Unauthorized" not in proc.stdout + proc.stderr
    request_counts["`metagpt` command, no template, 4096: as shipped"] = shipped_posts
    request_counts["`metagpt` command, no template, 4096: with the plugin"] = posts
