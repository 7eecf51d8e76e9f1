"""``doctor`` against a real vLLM 0.32.0 started the seed's way: its ``ask`` check is MetaGPT's own request, so exit 0
means the real server answered it (through the fix that server needs), and with that fix switched off the doctor
names the failure the real server gives (exit 1). What the doctor reports is checked against the server's own
access log: its ``ask`` requests, then (where the chat request was answered) its ``function-call`` requests, then its
``formats`` fill's. On the 512-token server the doctor is asked for the chat checks only: MetaGPT's ActionNode prompts
do not fit there at all (tests/real_vllm/test_metagpt_end_to_end.py says what the formats line then says).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from .metagpt_runs import CHAT, COMPLETIONS, NO_TEMPLATE, AccessLog, doctor, seed_home

TIMEOUT = "60"  # a first token from the tiny model on a busy 2-core machine
CHAT_CHECKS = ("server-version", "server", "model", "max-token", "ask", "function-call")


def ask_of(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    document = json.loads(proc.stdout)
    ask: dict[str, Any] = document["ask"]
    ask["exit_code"], ask["verdict"] = document["exit_code"], document["verdict"]
    (check,) = [c for c in document["checks"] if c["id"] == "ask"]
    ask["check"] = check
    ask["function_call"] = document["function_call"]
    ask["format"] = document["format"]
    return ask


def posts(section: dict[str, Any]) -> list[tuple[str, int]]:
    """The POSTs a doctor's ask reports (the tools fix's GET /version is not in vLLM's POST lines)."""
    return [(r["path"], r["status"]) for r in section["requests"] if r["method"] == "POST"]


def seen_by_the_server(ask: dict[str, Any]) -> list[tuple[str, int]]:
    """What the doctor says it sent, in order: MetaGPT's chat request, its function call, its ActionNode fill."""
    return posts(ask) + posts(ask["function_call"]) + posts(ask["format"])


def test_doctor_gets_an_answer_from_the_template_less_server_through_the_chat_template_fix(real_vllm, tmp_path):
    log = AccessLog(real_vllm.log_path)
    ask = ask_of(doctor(seed_home(tmp_path, real_vllm.base_url, extra="  max_token: 64\n"), *CHAT_CHECKS,
                        "--timeout", TIMEOUT, "--json"))
    assert (ask["exit_code"], ask["verdict"], ask["check"]["level"]) == (0, "warning", "warning"), ask
    assert ask["answered"] and ask["first_token"] and ask["fixes_acted"] == ["chat_template"], ask
    assert [(r["path"], r["status"]) for r in ask["requests"]] == [(CHAT, 400), (COMPLETIONS, 200)]
    assert log.posts() == seen_by_the_server(ask), "the doctor reports what the server saw"
    # the function call: refused for its tools, then the constrained request through /v1/completions
    assert posts(ask["function_call"]) == [(CHAT, 400), (CHAT, 400), (COMPLETIONS, 200)], ask["function_call"]
    assert '--chat-template "$(metagpt-vllm-fix chat-template llama-2)"' in ask["check"]["message"]


def test_doctor_with_the_chat_template_fix_off_names_the_real_servers_400_and_the_remedy(real_vllm, tmp_path):
    log = AccessLog(real_vllm.log_path)
    ask = ask_of(doctor(seed_home(tmp_path, real_vllm.base_url, extra="  max_token: 64\n"), *CHAT_CHECKS,
                        "--timeout", TIMEOUT, "--json", METAGPT_VLLM_FIX_DISABLE="chat_template"))
    assert (ask["exit_code"], ask["check"]["level"], ask["answered"]) == (1, "problem", False), ask
    assert (ask["error"], ask["status"]) == ("status", 400) and NO_TEMPLATE in ask["message"]
    assert "the chat_template fix is off (turned off by METAGPT_VLLM_FIX_DISABLE)" in ask["check"]["message"]
    assert "Remedy: start vLLM with --chat-template" in ask["check"]["message"]
    assert log.posts() == [(CHAT, 400)]  # the chat request got no answer: no function call is sent


def test_doctor_on_the_seed_config_verbatim_answers_through_both_fixes_the_512_token_server_needs(real_vllm, tmp_path):
    log = AccessLog(real_vllm.log_path)
    ask = ask_of(doctor(seed_home(tmp_path, real_vllm.base_url), *CHAT_CHECKS, "--timeout", TIMEOUT, "--json"))
    assert ask["exit_code"] == 0 and ask["answered"], ask
    assert sorted(ask["fixes_acted"]) == ["chat_template", "max_tokens"]
    assert [(r["path"], r["max_tokens"], r["status"]) for r in ask["requests"]] == [
        (CHAT, 4096, 400), (CHAT, None, 400), (COMPLETIONS, None, 200)]
    assert log.posts() == seen_by_the_server(ask)
    assert posts(ask)[-1] == (COMPLETIONS, 200)


def test_doctor_against_a_template_refusing_the_system_role_answers_with_the_fix_and_fails_without(
        real_vllm_mistral, tmp_path):
    home = seed_home(tmp_path, real_vllm_mistral.base_url, extra="  max_token: 64\n")
    log = AccessLog(real_vllm_mistral.log_path)
    on = ask_of(doctor(home, "--timeout", TIMEOUT, "--json"))
    assert (on["exit_code"], on["check"]["level"]) == (0, "warning") and on["fixes_acted"] == ["system_role"], on
    assert [(r["path"], r["status"]) for r in on["requests"]] == [(CHAT, 400), (CHAT, 200)]
    assert log.posts() == seen_by_the_server(on)
    log = AccessLog(real_vllm_mistral.log_path)
    off = ask_of(doctor(home, "--timeout", TIMEOUT, "--json", METAGPT_VLLM_FIX_DISABLE="system_role"))
    assert (off["exit_code"], off["status"]) == (1, 400), off
    assert "Conversation roles must alternate user/assistant/user/assistant/..." in off["message"]
    assert "the system_role fix is off" in off["check"]["message"]
    assert log.posts() == [(CHAT, 400)]  # the chat request got no answer: no function call is sent
