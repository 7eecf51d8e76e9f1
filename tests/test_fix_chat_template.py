"""The chat_template fix against the emulator's template-less model, through the real MetaGPT 0.7.7."""

from __future__ import annotations

import logging

import openai
import pytest

import metagpt_vllm_fix
from conftest import SEED_KEY, open_llm_instance, run, seed_asks_twice, v1_paths
from metagpt_vllm_fix import chat_layout
from metagpt_vllm_fix.fixes import chat_template
from metagpt_vllm_fix.server import DEFAULT_MODEL, VLLMServer
from metagpt_vllm_fix.vllm_versions import NO_TEMPLATE_MESSAGES

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}  # MetaGPT 0.7's default system message
PROMPT = "hello from the test"
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"

def seed_asks(tmp_path, server, **env):
    return seed_asks_twice(tmp_path, server, PROMPT, **env)


def echo(layout="llama-2", messages=(SYSTEM, {"role": "user", "content": PROMPT})):
    """What the emulator answers to the conversation laid out for /v1/completions (it echoes the prompt)."""
    return "echo: " + chat_layout.render(layout, list(messages))


# (vLLM release, context, requests of the first call, of the second): 0.32 refuses max_tokens 4096 > 512 before the
# template; 0.10.2 and 0.11 apply the template first, then refuse prompt + 4096 > 4096 on /v1/completions too. The
# second call goes straight to /v1/completions, its max_tokens sent as configured first (the max_tokens fix trusts no
# context it was told before).
FIRST_CALL = [
    ("0.32.0", 4096, [(CHAT, 400), (COMPLETIONS, 200)], [(COMPLETIONS, 200)]),
    ("0.32.0", 512, [(CHAT, 400), (CHAT, 400), (COMPLETIONS, 200)], [(COMPLETIONS, 400), (COMPLETIONS, 200)]),
    ("0.11.0", 4096, [(CHAT, 400), (COMPLETIONS, 400), (COMPLETIONS, 200)], [(COMPLETIONS, 400), (COMPLETIONS, 200)]),
    ("0.10.2", 8192, [(CHAT, 400), (COMPLETIONS, 200)], [(COMPLETIONS, 200)]),
]


@pytest.mark.parametrize("version,context,first,second", FIRST_CALL)
def test_seed_config_answers_verbatim_against_a_model_without_a_chat_template(tmp_path, version, context, first,
                                                                              second):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=context, vllm_version=version, chat_template="none") as server:
        answers, stderr = seed_asks(tmp_path, server)
        seen = v1_paths(server)
    assert answers == [{"answer": echo()}, {"answer": echo()}]
    assert seen == first + second  # one template refusal per process, then straight to /v1/completions
    assert stderr.count("chat_template: ") == 1
    assert 'Remedy: start vLLM with --chat-template "$(metagpt-vllm-fix chat-template llama-2)"' in stderr


def test_turned_off_by_name_the_refusal_comes_back(tmp_path):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="none") as server:
        answers, _ = seed_asks(tmp_path, server, METAGPT_VLLM_FIX_DISABLE="chat_template")
        seen = v1_paths(server)
    assert [(a["error"], a["status"]) for a in answers] == [("BadRequestError", 400)] * 2
    assert all(NO_TEMPLATE_MESSAGES[0] in a["message"] for a in answers)
    assert seen == [(CHAT, 400), (CHAT, 400)]


def test_switch_lays_the_conversation_out_in_chatml(tmp_path):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="none") as server:
        answers, stderr = seed_asks(tmp_path, server, METAGPT_VLLM_FIX_CHAT_LAYOUT="chatml")
    assert answers == [{"answer": echo("chatml")}] * 2
    assert "in the chatml layout" in stderr and "METAGPT_VLLM_FIX_CHAT_LAYOUT=chatml" in stderr
    assert "metagpt-vllm-fix chat-template chatml" in stderr


@pytest.mark.usefixtures("fresh_fixes")
@pytest.mark.parametrize("version,chat_template_kind", [("0.3.3", "none"), ("0.32.0", "llama-2-chat")])
def test_a_server_that_answers_chat_sees_one_unchanged_request(version, chat_template_kind):
    # vLLM 0.3.3 answered a template-less model in transformers' default layout; Llama-2-chat has a template.
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, vllm_version=version,
                    chat_template=chat_template_kind) as server:
        llm = open_llm_instance(server.base_url)
        answer = run(llm.aask(PROMPT, stream=False))
        (request,) = server.requests
    assert answer == "echo: " + PROMPT
    assert (request.path, request.status) == (CHAT, 200)
    assert request.body == {"messages": [SYSTEM, {"role": "user", "content": PROMPT}], "max_tokens": 4096, "n": 1,
                            "temperature": 0.3, "model": DEFAULT_MODEL}
    assert chat_template.known_layouts() == {}


@pytest.mark.usefixtures("fresh_fixes")
def test_rerouted_request_keeps_metagpts_parameters_and_the_usage_fixs_stream_options():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="none") as server:
        llm = open_llm_instance(server.base_url)
        run(llm.aask(PROMPT, stream=True))
        refused, rerouted = (r.body for r in server.requests)
    assert refused["stream_options"] == {"include_usage": True}
    expected = {name: value for name, value in refused.items() if name != "messages"}
    # the template's text, "<s>" included, tokenized as vLLM tokenizes a chat template's output
    assert rerouted == {**expected, "prompt": chat_layout.llama_2(refused["messages"]), "add_special_tokens": False}


@pytest.mark.usefixtures("fresh_fixes")
def test_a_server_refusing_add_special_tokens_gets_the_prompt_without_its_bos_once_and_from_then_on():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="none",
                    reject_unknown_fields=True) as server:
        llm = open_llm_instance(server.base_url)
        first = run(llm.aask(PROMPT, stream=False))
        second = run(llm.aask(PROMPT, stream=False))
        seen = [(r.path, r.status, r.body.get("prompt", "")[:9]) for r in server.requests]
    messages = [SYSTEM, {"role": "user", "content": PROMPT}]
    assert first == second == "echo: " + chat_layout.completion_prompt("llama-2", messages)
    assert seen == [(CHAT, 400, ""), (COMPLETIONS, 400, "<s>[INST]"), (COMPLETIONS, 200, "[INST] <<"),
                    (COMPLETIONS, 200, "[INST] <<")]


@pytest.mark.usefixtures("fresh_fixes")
@pytest.mark.parametrize("version", ["0.10.2", "0.32.0"])
def test_answers_are_counted_with_the_usage_of_the_completion(version):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, vllm_version=version, chat_template="none") as server:
        llm = open_llm_instance(server.base_url)
        recorded = []
        update = llm._update_costs
        llm._update_costs = lambda usage: (recorded.append((usage.prompt_tokens, usage.completion_tokens)),
                                           update(usage))[1]  # an observer that calls MetaGPT's own method
        streamed = run(llm.aask(PROMPT, stream=True))  # usage from the completions stream's last chunk
        plain = run(llm.aask(PROMPT, stream=False))
        seen = v1_paths(server)
    words = len(chat_layout.llama_2([SYSTEM, {"role": "user", "content": PROMPT}]).split())
    assert streamed == plain == echo()
    assert recorded == [(words, words + 1)] * 2  # the emulator counts words; the answer is "echo:" + the prompt
    assert seen == [(CHAT, 400), (COMPLETIONS, 200), (COMPLETIONS, 200)]


@pytest.mark.usefixtures("fresh_fixes")
def test_function_call_request_is_not_rerouted_and_the_log_names_the_remedy(caplog):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="none") as server, \
            caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        llm = open_llm_instance(server.base_url)
        with pytest.raises(openai.BadRequestError) as refused:
            run(llm.aclient.chat.completions.create(model=DEFAULT_MODEL, messages=[SYSTEM], tools=tools,
                                                    tool_choice="none"))  # "auto" meets the tool-parser 400 first
        run(llm.aask(PROMPT, stream=False))  # a plain request of the same LLM is still answered
        with pytest.raises(openai.BadRequestError):  # known by now, and still not rerouted
            run(llm.aclient.chat.completions.create(model=DEFAULT_MODEL, messages=[SYSTEM], tools=tools,
                                                    tool_choice="none"))
        seen = v1_paths(server)
    assert NO_TEMPLATE_MESSAGES[0] in str(refused.value)
    assert seen == [(CHAT, 400), (CHAT, 400), (COMPLETIONS, 200), (CHAT, 400)]
    records = [r for r in caplog.records if getattr(r, "fix", None) == "chat_template"]
    assert len(records) == 2  # one for the function call, one for the reroute: not one per request
    assert "; a request with tools, tool_choice cannot be answered through /v1/completions" in records[0].getMessage()
    assert "; answering its chat requests through /v1/completions in the llama-2 layout" in records[1].getMessage()
    assert all("--chat-template" in r.getMessage() for r in records)


@pytest.mark.usefixtures("fresh_fixes")
def test_other_refusals_are_not_rerouted():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="none") as server:
        llm = open_llm_instance(server.base_url, model="not-served")
        with pytest.raises(openai.NotFoundError):
            run(llm.aask(PROMPT, stream=False))
        seen = v1_paths(server)
    assert seen == [(CHAT, 404)]


@pytest.mark.usefixtures("fresh_fixes")
def test_remove_restores_the_refusal_and_forgets_what_was_learnt():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="none") as server:
        run(open_llm_instance(server.base_url).aask(PROMPT, stream=False))
        assert list(chat_template.known_layouts().values()) == ["llama-2"]
        (line,) = [f.reason for f in metagpt_vllm_fix.status().fixes if f.name == "chat_template"]
        assert line.endswith(f"; answering {DEFAULT_MODEL} at {server.base_url}/ in the llama-2 layout")
        metagpt_vllm_fix.remove()
        assert chat_template.known_layouts() == {}
        metagpt_vllm_fix.apply()  # MetaGPT's module is loaded: the fixes go straight back on, knowing nothing
        llm = open_llm_instance(server.base_url)
        metagpt_vllm_fix.remove()  # the client built while applied is unwrapped too
        with pytest.raises(openai.BadRequestError):
            run(llm.aask(PROMPT, stream=False))
        seen = v1_paths(server)
    assert seen == [(CHAT, 400), (COMPLETIONS, 200), (CHAT, 400)]
