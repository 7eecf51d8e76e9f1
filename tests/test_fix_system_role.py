"""The system_role fix against the emulator's system-refusing templates, through the real MetaGPT 0.7.7."""

from __future__ import annotations

import logging

import openai
import pytest

import metagpt_vllm_fix
from conftest import SEED_KEY, open_llm_instance, run, seed_asks_twice, v1_paths
from metagpt_vllm_fix.fixes import system_role
from metagpt_vllm_fix.fixes.system_role import fold_system
from metagpt_vllm_fix.server import VLLMServer

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}  # MetaGPT 0.7's default system message
PROMPT = "hello from the test"
CHAT = "/v1/chat/completions"

FOLDED = [{"role": "user", "content": f"{SYSTEM['content']}\n\n{PROMPT}"}]
ALTERNATE = "Conversation roles must alternate user/assistant/user/assistant/..."

def seed_asks(tmp_path, server, **env):
    return seed_asks_twice(tmp_path, server, PROMPT, **env)


# (template kind, vLLM release, context, the requests of each call): every call is sent as MetaGPT sent it, so each
# pays for its own refusal. 0.32 refuses max_tokens 4096 > 512 before the template; 0.10.2 applies the template
# first, then refuses prompt + 4096 > 4096.
EACH_CALL = [
    ("mistral-instruct", "0.32.0", 4096, [(CHAT, 400), (CHAT, 200)]),
    ("mistral-instruct", "0.32.0", 512, [(CHAT, 400), (CHAT, 400), (CHAT, 200)]),
    ("gemma", "0.10.2", 4096, [(CHAT, 400), (CHAT, 400), (CHAT, 400), (CHAT, 200)]),
    ("gemma", "0.11.0", 8192, [(CHAT, 400), (CHAT, 200)]),
]


@pytest.mark.parametrize("kind,version,context,each_call", EACH_CALL)
def test_seed_config_answers_verbatim_against_a_template_refusing_the_system_role(tmp_path, kind, version, context,
                                                                                  each_call):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=context, vllm_version=version, chat_template=kind) as server:
        answers, stderr = seed_asks(tmp_path, server)
        seen = v1_paths(server)
        last = server.requests[-1].body
        first = server.requests[len(each_call)].body  # the second call's first request: as MetaGPT sent it
    assert answers == [{"answer": "echo: " + FOLDED[0]["content"]}] * 2
    assert seen == each_call * 2  # the second call is refused first again: one refused round trip per request
    assert first["messages"] == [SYSTEM, {"role": "user", "content": PROMPT}]
    assert last["messages"] == FOLDED
    assert stderr.count("system_role: ") == 1  # the log says it once per server and model


def test_turned_off_by_name_the_refusal_comes_back(tmp_path):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="mistral-instruct") as server:
        answers, _ = seed_asks(tmp_path, server, METAGPT_VLLM_FIX_DISABLE="system_role")
        seen = v1_paths(server)
    assert [(a["error"], a["status"]) for a in answers] == [("BadRequestError", 400)] * 2
    assert all(ALTERNATE in a["message"] for a in answers)
    assert seen == [(CHAT, 400), (CHAT, 400)]


pytestmark = pytest.mark.usefixtures("fresh_fixes")


def test_the_log_record_names_the_fix_once(caplog):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="gemma") as server, \
            caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        for _ in range(3):
            run(open_llm_instance(server.base_url).aask(PROMPT, stream=False))
    (record,) = [r for r in caplog.records if getattr(r, "fix", None) == "system_role"]
    assert "(System role not supported)" in record.getMessage()
    assert v1_paths(server) == [(CHAT, 400), (CHAT, 200)] * 3
    (line,) = [f.reason for f in metagpt_vllm_fix.status().fixes if f.name == "system_role"]
    assert line == system_role.FIX.summary  # no server's state in it


def test_a_server_restarted_with_a_template_taking_the_system_role_gets_the_next_request_unfolded():
    """One process, one LLM; the server at its URL is restarted serving a template that takes the system role: the
    next request goes as MetaGPT sent it, once, and is answered."""
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="mistral-instruct") as before:
        llm = open_llm_instance(before.base_url)
        assert run(llm.aask(PROMPT, stream=False)) == "echo: " + FOLDED[0]["content"]
        port, first = before.port, v1_paths(before)
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="llama-2-chat", port=port) as after:
        streamed, plain = run(llm.aask(PROMPT, stream=True)), run(llm.aask(PROMPT, stream=False))
        second = [(r.path, r.status, r.body["messages"]) for r in after.requests]
    assert first == [(CHAT, 400), (CHAT, 200)]
    assert streamed == plain == "echo: " + PROMPT
    assert second == [(CHAT, 200, [SYSTEM, {"role": "user", "content": PROMPT}])] * 2


@pytest.mark.parametrize("kind", ["mistral-instruct", "llama-2-chat"])
def test_a_request_the_fold_does_not_cure_is_sent_twice_at_most_and_says_nothing(kind, caplog):
    # two user messages in a row: the template refuses the folded request too, and that refusal is the answer
    messages = [SYSTEM, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template=kind) as server, \
            caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        llm = open_llm_instance(server.base_url)
        with pytest.raises(openai.BadRequestError, match="Conversation roles must alternate"):
            run(llm.acompletion_text(messages, stream=False))
        assert not [r for r in caplog.records if getattr(r, "fix", None) == "system_role"]
        run(llm.aask(PROMPT, stream=False))
        seen = v1_paths(server)
    if kind == "llama-2-chat":  # its template takes a system message: MetaGPT's next request goes unchanged
        assert seen == [(CHAT, 400), (CHAT, 400), (CHAT, 200)]
        assert server.requests[-1].body["messages"][0] == SYSTEM
    else:
        assert seen == [(CHAT, 400), (CHAT, 400), (CHAT, 400), (CHAT, 200)]


def test_other_refusals_are_not_retried(tmp_path):
    # with the max_tokens fix off, vLLM 0.32's max_tokens refusal (before the template) is the answer
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=512, chat_template="mistral-instruct") as server:
        answers, _ = seed_asks(tmp_path, server, METAGPT_VLLM_FIX_DISABLE="max_tokens")
        seen = v1_paths(server)
    assert all("max_tokens=4096 cannot be greater than max_model_len=512" in a["message"] for a in answers)
    assert seen == [(CHAT, 400), (CHAT, 400)]


def test_a_request_without_a_system_message_is_left_alone():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="gemma") as server:
        llm = open_llm_instance(server.base_url)
        assert run(llm.acompletion_text([{"role": "user", "content": PROMPT}], stream=False)) == "echo: " + PROMPT
        assert run(llm.aask(PROMPT, stream=False)) == "echo: " + FOLDED[0]["content"]
        (alone,) = [r.body["messages"] for r in server.requests[:1]]
        seen = v1_paths(server)
    assert alone == [{"role": "user", "content": PROMPT}]
    assert seen == [(CHAT, 200), (CHAT, 400), (CHAT, 200)]


def test_a_server_whose_template_takes_the_system_role_sees_one_unchanged_request():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="llama-2-chat") as server:
        assert run(open_llm_instance(server.base_url).aask(PROMPT, stream=True)) == "echo: " + PROMPT
        (request,) = server.requests
    assert (request.path, request.status, request.body["messages"]) == (CHAT, 200, [SYSTEM, {"role": "user",
                                                                                              "content": PROMPT}])


def test_fold_puts_every_system_message_before_the_first_user_message():
    messages = [{"role": "system", "content": "A"}, {"role": "system", "content": "B"},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": "q", "name": "alice"}]
    assert fold_system(messages) == [{"role": "assistant", "content": "hi"},
                                     {"role": "user", "content": "A\n\nB\n\nq", "name": "alice"}]
    assert fold_system([{"role": "system", "content": "A"}]) == [{"role": "user", "content": "A"}]
    parts = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    assert fold_system([SYSTEM, {"role": "user", "content": parts}]) == [
        {"role": "user", "content": [{"type": "text", "text": SYSTEM["content"]}, *parts]}]
    assert messages[0] == {"role": "system", "content": "A"}  # the caller's list is left as it was
