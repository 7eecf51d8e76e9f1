"""The doctor's checks of what the server said (checks/server, model, max_token, ask, tiktoken), each judged on
facts built by hand: no server, no MetaGPT. The end-to-end runs are in test_cli_doctor.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from doctor_facts import BASE_URL, KEY, MODEL, config, facts, one, server, status, verdicts
from metagpt_vllm_fix._activation import FixStatus
from metagpt_vllm_fix.doctor.checks import ask, max_token, model, tiktoken
from metagpt_vllm_fix.doctor.checks import server as server_checks
from metagpt_vllm_fix.doctor.facts import CHAT, AskResult, Exchange, FixNote, PluginFacts, TiktokenFacts, not_asked
from metagpt_vllm_fix.doctor.facts import server_generation as generation
from metagpt_vllm_fix.masking import mask
from metagpt_vllm_fix.report import OK, PROBLEM, WARNING

NON_ASCII_KEY = "t\u00f8ken-doctor-0123456789"

# --- server-version, server ---------------------------------------------------------------------------------


def test_server_version_names_the_release_or_the_assumption():
    assert one(server_checks.server_version, facts()) == (
        OK, "server: vLLM 0.32.0, generation 0.18+: max_tokens <= max_model_len (larger sums are clamped to the room "
            "left)")
    level, message = one(server_checks.server_version, facts(server=server(generation=generation(None, "no /version "
                                                                                                       "(404)"))))
    assert level == OK and message.startswith("server: no /version (404): a vLLM of the 0.3 era")
    assert verdicts(server_checks.server_version, facts(server=server(reachable=False, generation=None))) == []


@pytest.mark.parametrize("found, level, words", [
    (server(), OK, f"server answers with this key: {BASE_URL}/models -> 200, serves {MODEL}"),
    (server(reachable=False, error="refused", message="connection refused: nothing listens on 127.0.0.1:8000."),
     PROBLEM, "server unreachable: connection refused: nothing listens on 127.0.0.1:8000."),
    (server(status=401, health=200), PROBLEM, f"the server refuses api_key {mask(KEY)}. It does not match"),
    (server(status=401, health=200), PROBLEM, "/health answers 200 without a key, so only the key is refused"),
    (server(status=401, health=None), PROBLEM, "(/health did not answer either.)"),
    (server(status=401, health=503), PROBLEM, "(/health answers 503.)"),
    (server(status=404), PROBLEM, "base_url should look like http://HOST:8000/v1"),
    (server(status=500, message=None), PROBLEM, f"{BASE_URL}/models answered 500: HTTP 500"),
    (server(error="not-openai", message="answered 200 but not with an OpenAI model list"), PROBLEM,
     "answered 200: answered 200 but not with an OpenAI model list"),
])
def test_server_line_says_what_the_model_list_answered(found, level, words):
    found_level, message = one(server_checks.server, facts(server=found))
    assert found_level == level and words in message, message


def test_server_not_probed_for_an_api_type_that_is_not_openai_compatible():
    found = facts(config=config(api_type="ollama"), server=None)
    assert one(server_checks.server, found) == (
        WARNING, "server not probed: the doctor checks OpenAI-compatible servers (api_type open_llm or openai), "
                 "not ollama.")


def test_server_probed_with_the_placeholder_says_so_whatever_it_answered():
    """open_llm sends 'sk-xxx' for a key no header can carry: the doctor probes with that, and says it did."""
    found = facts(config=config(api_key=NON_ASCII_KEY), server=server(status=401, health=200, placeholder=True))
    level, message = one(server_checks.server, found)
    assert level == PROBLEM and "the server requires a key, and got MetaGPT's placeholder 'sk-xxx'" in message
    assert "see the api-key-control line" in message and "does not match" not in message
    found = facts(config=config(api_key=NON_ASCII_KEY), server=server(placeholder=True))
    level, message = one(server_checks.server, found)
    assert level == OK and message.startswith("server answers MetaGPT's placeholder 'sk-xxx'") and "checks no key" \
        in message


def test_server_not_probed_when_the_provider_cannot_send_the_key_at_all():
    found = facts(config=config(api_key=NON_ASCII_KEY, api_type="openai"), server=None)
    level, message = one(server_checks.server, found)
    assert level == WARNING and "MetaGPT's openai provider cannot send llm.api_key" in message


# --- model, max-token ---------------------------------------------------------------------------------------


def test_model_served_not_served_or_not_set():
    assert one(model.model, facts()) == (OK, f"llm.model {MODEL} is served")
    level, message = one(model.model, facts(config=config(model="llama2")))
    assert level == PROBLEM and f"'llama2' is not served (the server serves: {MODEL})" in message
    assert "--served-model-name llama2" in message
    level, message = one(model.model, facts(config=config(model=None)))
    assert level == PROBLEM and message.startswith("llm.model is not set")
    assert verdicts(model.model, facts(server=server(status=401))) == [], "what is served is not known"


def test_max_token_is_judged_by_the_servers_generation_and_the_fix():
    found = facts(config=config(max_token=5000))
    level, message = one(max_token.max_token, found)
    assert level == WARNING and "handled: the max_tokens fix resends without max_tokens" in message
    off = facts(config=config(max_token=5000),
                plugin=PluginFacts(status(fixes=[FixStatus("max_tokens", "off", "")]), None))
    level, message = one(max_token.max_token, off)
    assert level == PROBLEM and "the max_tokens fix is off: turned off by METAGPT_VLLM_FIX_DISABLE" in message
    assumed = facts(config=config(max_token=4096), server=server(generation=generation(None)))
    assert "under vLLM 0.3's rule (assumed)" in one(max_token.max_token, assumed)[1]
    assert verdicts(max_token.max_token, facts(server=server(max_model_len=None))) == []


# --- ask ----------------------------------------------------------------------------------------------------


def asked(*exchanges: tuple[str, int], **fields) -> AskResult:
    made = [Exchange("POST", "/v1/chat/completions", auth, 512, status) for auth, status in exchanges]
    return AskResult(asked=True, exchanges=made, **fields)


def test_ask_says_nothing_when_it_did_not_ask():
    assert verdicts(ask.ask, facts(asks={CHAT: not_asked("the server did not answer the model list")})) == []
    assert verdicts(ask.ask, facts()) == []


def test_ask_ok_names_the_fix_it_came_through():
    result = asked((f"Bearer {mask(KEY)}", 400), (f"Bearer {mask(KEY)}", 200), answered=True, first_token="Hi",
                   fixes=[FixNote("max_tokens", "max_tokens: resent")], seconds=0.2)
    level, message = one(ask.ask, facts(asks={CHAT: result}))
    assert level == OK and "an answer came back, first token 'Hi'" in message and "through the max_tokens fix" \
        in message
    assert message.splitlines()[1:] == [f"  POST /v1/chat/completions (Bearer {mask(KEY)}, max_tokens 512) -> 400",
                                        f"  POST /v1/chat/completions (Bearer {mask(KEY)}, max_tokens 512) -> 200",
                                        "  the max_tokens fix acted: resent"]


def test_ask_a_401_to_the_placeholder_names_the_fix_off_or_the_key_no_header_can_carry():
    result = asked(("Bearer sk-xxx", 401), error="status", status=401, message="Unauthorized")
    off = facts(asks={CHAT: result}, plugin=PluginFacts(status(fixes=[FixStatus("api_key", "off", "")]), None))
    assert "the api_key fix is not in effect (turned off by METAGPT_VLLM_FIX_DISABLE)" in one(ask.ask, off)[1]
    unsendable = facts(asks={CHAT: result}, config=config(api_key=NON_ASCII_KEY))
    level, message = one(ask.ask, unsendable)
    assert level == PROBLEM and "not llm.api_key, which an HTTP header cannot carry: see the api-key-control line" \
        in message
    assert "fix is not in effect" not in message


def test_ask_note_and_api_type_are_in_its_line():
    result = asked((f"Bearer {mask(KEY)}", 200), answered=True, first_token="x", note="no fix, as here")
    _, message = one(ask.ask, facts(asks={CHAT: result}, config=config(api_type="openai")))
    assert message.startswith("asked as MetaGPT does (its openai provider from this config, system + user message, "
                              "streamed; no fix, as here): an answer came back")


# --- tiktoken -----------------------------------------------------------------------------------------------


def test_tiktoken_says_nothing_when_not_needed_and_takes_the_usage_source_from_the_generation():
    assert verdicts(tiktoken.tiktoken, facts()) == []
    found = facts(tiktoken=TiktokenFacts(Path("/c/abc"), False))
    level, message = one(tiktoken.tiktoken, found)
    assert level == OK and "stream_options.include_usage" in message and "not cached in /c" in message
    on_033 = facts(tiktoken=TiktokenFacts(None, False), server=server(generation=generation(None)))
    level, message = one(tiktoken.tiktoken, on_033)
    assert "on each stream's finish chunk" in message and "caching is disabled (TIKTOKEN_CACHE_DIR is empty)" in message


@pytest.mark.parametrize("reachable, level", [(False, WARNING), (None, WARNING), (True, OK)])
def test_tiktoken_without_the_usage_fix_depends_on_reaching_the_download_host(reachable, level):
    found = facts(tiktoken=TiktokenFacts(Path("/c/abc"), False, reachable),
                  plugin=PluginFacts(status(fixes=[FixStatus("usage", "off", "")]), None))
    found_level, message = one(tiktoken.tiktoken, found)
    assert found_level == level and "the usage fix is off: turned off by METAGPT_VLLM_FIX_DISABLE" in message
