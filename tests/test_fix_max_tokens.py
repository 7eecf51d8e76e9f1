"""The max_tokens fix against the emulator in each vLLM generation, through the real MetaGPT 0.7.7 in this process."""

from __future__ import annotations

import logging
import re

import openai
import pytest

import metagpt_vllm_fix
from conftest import SEED_KEY, open_llm_instance, run
from metagpt_vllm_fix.fixes import max_tokens
from metagpt_vllm_fix.server import DEFAULT_MODEL, VLLMServer

# (vLLM release, context): each refuses MetaGPT's default max_tokens 4096 upstream.
REFUSING = [("0.3.3", 4096), ("0.10.2", 4096), ("0.32.0", 512)]


pytestmark = pytest.mark.usefixtures("fresh_fixes")


def ask(llm, prompt="hello from the test", stream=True):
    """One aask on the test's event loop (a client's pooled connections belong to the loop that opened them)."""
    return run(llm.aask(prompt, stream=stream))


def v1(server):
    return [r for r in server.requests if r.path.startswith("/v1")]


@pytest.mark.parametrize("version,context", REFUSING)
def test_seed_config_answers_each_request_after_one_refusal_with_one_warning(version, context, caplog):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=context, vllm_version=version) as server, \
            caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        llm = open_llm_instance(server.base_url)
        assert llm.config.max_token == 4096  # MetaGPT's default: the seed's config has no max_token line
        for stream in (True, False, True, False):
            assert ask(llm, stream=stream).startswith("echo: ")
        seen = v1(server)
    assert [(r.status, r.max_tokens) for r in seen] == [(400, 4096), (200, None)] * 4
    warnings = [r.getMessage() for r in caplog.records if "does not fit" in r.getMessage()]
    assert {r.fix for r in caplog.records if "does not fit" in r.getMessage()} == {"max_tokens"}  # for the doctor
    assert warnings == [f"llm.max_token 4096 does not fit {DEFAULT_MODEL}'s context of {context} tokens; each "
                        f"request is sent again without max_tokens so the server uses the room left (one extra "
                        f"request each time). Set llm.max_token below {context} to avoid it."]


def test_a_context_once_named_is_checked_again_after_a_restart_with_a_larger_one():
    """A 2048-token server refuses llm.max_token 3000; restarted on the same URL with 32768 tokens, it gets the
    user's 3000 again, as MetaGPT ships it, so the answer's cap is the user's."""
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=2048) as small:
        port, base_url = small.port, small.base_url
        llm = open_llm_instance(base_url, max_token=3000)
        ask(llm)
        assert [(r.status, r.max_tokens) for r in v1(small)] == [(400, 3000), (200, None)]
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=32768, port=port) as large:
        assert large.base_url == base_url
        ask(llm)
        ask(open_llm_instance(base_url, max_token=3000))
        assert [(r.status, r.max_tokens) for r in v1(large)] == [(200, 3000), (200, 3000)]


@pytest.mark.parametrize("version", ["0.3.3", "0.32.0"])
def test_a_request_that_fits_is_sent_once_and_unchanged(version):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, vllm_version=version) as server:
        llm = open_llm_instance(server.base_url)
        ask(llm, stream=True)
        ask(llm, stream=False)
        assert [(r.status, r.max_tokens) for r in v1(server)] == [(200, 4096), (200, 4096)]


def test_context_equal_to_max_token_on_a_clamping_vllm_is_not_touched():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=4096, vllm_version="0.32.0") as server:
        ask(open_llm_instance(server.base_url))
        assert [(r.status, r.max_tokens) for r in v1(server)] == [(200, 4096)]


@pytest.mark.parametrize("version,context", REFUSING)
def test_disabled_by_name_brings_the_upstream_400_back(version, context, monkeypatch):
    monkeypatch.setenv("METAGPT_VLLM_FIX_DISABLE", "max_tokens")
    metagpt_vllm_fix.remove()
    metagpt_vllm_fix.apply()
    assert {f.name: f.state for f in metagpt_vllm_fix.status().fixes}["max_tokens"] == "off"
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=context, vllm_version=version) as server:
        llm = open_llm_instance(server.base_url)
        for stream in (True, False):
            with pytest.raises(openai.BadRequestError):
                ask(llm, stream=stream)
        assert [r.status for r in v1(server)] == [400, 400]


@pytest.mark.parametrize("version,context,requests", [("0.3.3", 512, 1), ("0.10.2", 512, 1), ("0.32.0", 512, 2)])
def test_a_prompt_too_long_by_itself_gets_the_servers_error_after_at_most_one_retry(version, context, requests):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=context, vllm_version=version) as server:
        llm = open_llm_instance(server.base_url)
        with pytest.raises(openai.BadRequestError) as caught:
            ask(llm, "word " * 600)
        assert len(v1(server)) == requests
    # the server's own message, naming the prompt's size (600 words + 5 system; vLLM 0.18+ counts up to context + 1)
    assert re.search(r"(605|at least 513) (input tokens|in the messages)", str(caught.value)), str(caught.value)


def test_a_prompt_too_long_after_the_context_is_known_still_gets_the_message_naming_its_size():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=512, vllm_version="0.3.3") as server:
        llm = open_llm_instance(server.base_url)
        ask(llm)  # the server names its context
        with pytest.raises(openai.BadRequestError) as caught:
            ask(llm, "word " * 600)
        assert [(r.status, r.max_tokens) for r in v1(server)] == [(400, 4096), (200, None), (400, 4096)]
    assert "(605 in the messages, 4096 in the completion)" in str(caught.value)  # not "max_tokens must be at least 1"


def test_a_long_prompt_under_a_small_max_token_is_resent_each_time_without_being_remembered(caplog):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=512, vllm_version="0.3.3") as server, \
            caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        llm = open_llm_instance(server.base_url, max_token=256)
        ask(llm, "word " * 300)
        ask(llm, "word " * 300)
        ask(llm, "short")
        assert [(r.status, r.max_tokens) for r in v1(server)] == [(400, 256), (200, None), (400, 256), (200, None),
                                                                 (200, 256)]
    assert max_tokens.known_contexts() == {}
    (record,) = [r for r in caplog.records if "plus a prompt of" in r.getMessage()]
    assert record.fix == "max_tokens"


@pytest.mark.parametrize("status,key,model", [(401, "wrong-key", DEFAULT_MODEL), (404, SEED_KEY, "llama2")])
def test_401_and_404_are_never_retried(status, key, model):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=512) as server:
        llm = open_llm_instance(server.base_url, api_key=key, model=model)
        with pytest.raises(openai.APIStatusError) as caught:
            ask(llm)
        assert caught.value.status_code == status
        assert [r.status for r in v1(server)] == [status]


# (status, max_tokens, tools sent) of each request: the max_tokens fix handles MetaGPT's function call and the
# tools fix's constrained request alike (the tools fix wraps it: each of its requests is fitted to the context).
FUNCTION_CALL_PATH = {
    # 0.3 ignores tools: the plain answer (after the max_tokens retry) is markdown, asked again constrained
    "0.3.3": [(400, 4096, True), (200, None, True), (400, 4096, False), (200, None, False)],
    # 0.10.2 refuses "auto" before it looks at the context
    "0.10.2": [(400, 4096, True), (400, 4096, False), (200, None, False)],
    # 0.18+ checks max_tokens > context first, then refuses "auto"
    "0.32.0": [(400, 4096, True), (400, None, True), (400, 4096, False), (200, None, False)],
}


@pytest.mark.parametrize("version,context", REFUSING)
def test_function_call_path_is_fixed_too(version, context):
    """MetaGPT's aask_code sends ``tools`` without ``tool_choice`` and max_tokens 4096, which does not fit."""
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=context, vllm_version=version) as server:
        llm = open_llm_instance(server.base_url)
        answer = run(llm.aask_code([{"role": "user", "content": "write hello world"}]))
        seen = [(r.status, r.max_tokens, "tools" in r.fields) for r in v1(server)]
    assert answer == {"language": "python", "code": "echo"}  # the emulator's constrained answer, as a tool call
    assert seen == FUNCTION_CALL_PATH[version]


def test_remove_restores_every_original_object_and_unwraps_live_clients():
    from metagpt.provider.open_llm_api import OpenAILLM, OpenLLM

    llm = open_llm_instance("http://127.0.0.1:9/v1")
    completions = llm.aclient.chat.completions
    assert "create" in vars(completions)  # our wrappers, on this client only
    metagpt_vllm_fix.remove()
    assert "create" not in vars(completions)
    assert "_init_client" not in vars(OpenLLM)  # inherited again, as shipped
    assert OpenLLM._init_client is OpenAILLM._init_client
    assert not hasattr(vars(OpenLLM)["_calc_usage"], "__wrapped__")
    other = openai.AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:9/v1")
    assert "create" not in vars(other.chat.completions)  # never touched: only OpenLLM's clients are wrapped
