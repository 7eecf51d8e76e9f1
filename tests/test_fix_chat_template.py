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


# (vLLM release, context, the requests of each call): every call is sent as MetaGPT sent it, so each pays for its
# own refusal. 0.32 refuses max_tokens 4096 > 512 before the template; 0.10.2 and 0.11 apply the template first,
# then 0.11 refuses prompt + 4096 > 4096 on /v1/completions too, and the max_tokens fix's retry without it is, again,
# sent as MetaGPT sent it: chat first.
EACH_CALL = [
    ("0.32.0", 4096, [(CHAT, 400), (COMPLETIONS, 200)]),
    ("0.32.0", 512, [(CHAT, 400), (CHAT, 400), (COMPLETIONS, 200)]),
    ("0.11.0", 4096, [(CHAT, 400), (COMPLETIONS, 400), (CHAT, 400), (COMPLETIONS, 200)]),
    ("0.10.2", 8192, [(CHAT, 400), (COMPLETIONS, 200)]),
]


@pytest.mark.parametrize("version,context,each_call", EACH_CALL)
def test_seed_config_answers_verbatim_against_a_model_without_a_chat_template(tmp_path, version, context, each_call):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=context, vllm_version=version, chat_template="none") as server:
        answers, stderr = seed_asks(tmp_path, server)
        seen = v1_paths(server)
    assert answers == [{"answer": echo()}, {"answer": echo()}]
    assert seen == each_call * 2  # the second call asks chat first again: one refused round trip per request
    assert stderr.count("chat_template: ") == 1  # the log says it once per server and model
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


@pytest.mark.usefixtures("fresh_fixes")
def test_a_server_restarted_with_a_chat_template_on_the_same_port_answers_the_next_request_as_sent(caplog):
    """One process, one LLM; the server at its URL is restarted with the remedy (``--chat-template``): the next
    request goes to /v1/chat/completions as MetaGPT sent it, and is answered there."""
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="none") as before, \
            caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        llm = open_llm_instance(before.base_url)
        assert run(llm.aask(PROMPT, stream=False)) == echo()
        port, first = before.port, v1_paths(before)
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="llama-2-chat", port=port) as after:
        streamed, plain = run(llm.aask(PROMPT, stream=True)), run(llm.aask(PROMPT, stream=False))
        second = [(r.path, r.status, r.body["messages"]) for r in after.requests]
    assert first == [(CHAT, 400), (COMPLETIONS, 200)]
    assert streamed == plain == "echo: " + PROMPT  # the server's own template's answer, not the client's layout
    assert second == [(CHAT, 200, [SYSTEM, {"role": "user", "content": PROMPT}])] * 2
    assert len([r for r in caplog.records if getattr(r, "fix", None) == "chat_template"]) == 1


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
def test_a_server_refusing_add_special_tokens_gets_the_prompt_without_its_bos_until_a_request_to_it_fails():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="none",
                    reject_unknown_fields=True) as server:
        llm = open_llm_instance(server.base_url)
        first = run(llm.aask(PROMPT, stream=False))
        second = run(llm.aask(PROMPT, stream=False))
        with pytest.raises(openai.NotFoundError):  # a failed request: the server may have been replaced since
            run(open_llm_instance(server.base_url, model="not-served").aask(PROMPT, stream=False))
        third = run(llm.aask(PROMPT, stream=False))
        seen = [(r.path, r.status, r.body.get("prompt", "")[:9]) for r in server.requests]
    messages = [SYSTEM, {"role": "user", "content": PROMPT}]
    assert first == second == third == "echo: " + chat_layout.completion_prompt("llama-2", messages)
    asked = [(CHAT, 400, ""), (COMPLETIONS, 400, "<s>[INST]"), (COMPLETIONS, 200, "[INST] <<")]
    assert seen == asked + [(CHAT, 400, ""), (COMPLETIONS, 200, "[INST] <<")] + [(CHAT, 404, "")] + asked


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
    assert seen == [(CHAT, 400), (COMPLETIONS, 200)] * 2


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
        with pytest.raises(openai.BadRequestError):  # refused again, and again not rerouted
            run(llm.aclient.chat.completions.create(model=DEFAULT_MODEL, messages=[SYSTEM], tools=tools,
                                                    tool_choice="none"))
        seen = v1_paths(server)
    assert NO_TEMPLATE_MESSAGES[0] in str(refused.value)
    assert seen == [(CHAT, 400), (CHAT, 400), (COMPLETIONS, 200), (CHAT, 400)]
    records = [r for r in caplog.records if getattr(r, "fix", None) == "chat_template"]
    assert len(records) == 2  # one for the function call, one for the reroute: not one per request
    assert "; a request with tools, tool_choice is not sent to /v1/completions" in records[0].getMessage()
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
def test_remove_restores_the_refusal_and_a_reapplied_fix_warns_afresh(caplog):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, chat_template="none") as server, \
            caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        run(open_llm_instance(server.base_url).aask(PROMPT, stream=False))
        (line,) = [f.reason for f in metagpt_vllm_fix.status().fixes if f.name == "chat_template"]
        assert line == f"{chat_template.FIX.summary}; {chat_template.layout_status()}"  # no server's state in it
        metagpt_vllm_fix.remove()
        metagpt_vllm_fix.apply()  # MetaGPT's module is loaded: the fixes go straight back on
        run(open_llm_instance(server.base_url).aask(PROMPT, stream=False))
        llm = open_llm_instance(server.base_url)
        metagpt_vllm_fix.remove()  # the client built while applied is unwrapped too
        with pytest.raises(openai.BadRequestError):
            run(llm.aask(PROMPT, stream=False))
        seen = v1_paths(server)
    assert seen == [(CHAT, 400), (COMPLETIONS, 200)] * 2 + [(CHAT, 400)]
    assert len([r for r in caplog.records if getattr(r, "fix", None) == "chat_template"]) == 2  # once per apply()


class NoCompletionsServer:
    """A server that is not vLLM, on 127.0.0.1: its chat endpoint refuses for want of a chat template in
    transformers' own words (as a server built on ``apply_chat_template`` says it), and it has no
    ``/v1/completions`` at all (aiohttp's own 404 for a route it does not have)."""

    def __init__(self) -> None:
        from aiohttp import web

        self.seen: list[tuple[str, int]] = []

        @web.middleware
        async def record(request, handler):
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self.seen.append((request.path, exc.status))
                raise
            self.seen.append((request.path, response.status))
            return response

        async def chat(request):
            await request.json()
            return web.json_response({"error": {"message": NO_TEMPLATE_MESSAGES[1], "type": "BadRequestError",
                                                "param": None, "code": 400}}, status=400)

        app = web.Application(middlewares=[record])
        app.router.add_post("/v1/chat/completions", chat)
        self._runner = web.AppRunner(app, access_log=None)

    async def __aenter__(self) -> NoCompletionsServer:
        from aiohttp import web

        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


@pytest.mark.usefixtures("fresh_fixes")
def test_a_server_without_v1_completions_leaves_metagpt_its_own_no_template_400_with_one_log_line(caplog):
    async def ask_twice():
        async with NoCompletionsServer() as server:
            llm = open_llm_instance(server.base_url)
            errors = []
            for stream in (True, False):
                with pytest.raises(openai.BadRequestError) as refused:
                    await llm.aask(PROMPT, stream=stream)
                errors.append(refused.value)
            return errors, server.seen

    with caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        errors, seen = run(ask_twice())
    assert seen == [(CHAT, 400), (COMPLETIONS, 404)] * 2  # asked each time: the server might have changed
    assert all(NO_TEMPLATE_MESSAGES[1] in str(e) and e.status_code == 400 for e in errors)  # not the 404
    (record,) = [r for r in caplog.records if getattr(r, "fix", None) == "chat_template"]
    assert "no /v1/completions to answer through instead (404: not vLLM), so its 400 stands" in record.getMessage()
