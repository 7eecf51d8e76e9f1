"""The emulator playing vLLM 0.3.3 (MetaGPT 0.7's time), over real HTTP on 127.0.0.1 (httpx and the openai SDK).

Other generations: tests/test_emulator_generations.py."""
from __future__ import annotations

import asyncio
import json
import logging
import socket

import httpx
import openai
import pytest

from metagpt_vllm_fix.masking import mask
from metagpt_vllm_fix.server import (
    DEFAULT_MODEL,
    RecordedRequest,
    VLLMServer,
    api_key_from_env,
    authorized,
    serve,
)

KEY = "sk-vllm-test-0123456789"
OTHER_KEY = "sk-vllm-other-9876543210"
UNAUTHORIZED = b'{"error":"Unauthorized"}'
V03 = "0.3.3"


@pytest.fixture(scope="module")
def server():
    with VLLMServer(api_keys=[KEY], vllm_version=V03) as srv:
        yield srv


@pytest.fixture
def client(server):
    server.clear_requests()
    with httpx.Client(base_url=server.url, timeout=5) as c:
        yield c


def auth(key=KEY):
    return {"Authorization": f"Bearer {key}"}


def chat_body(text="hello there", **extra):
    return {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": text}], **extra}


def sse_events(raw: str):
    assert raw.endswith("\n\n"), "every event must be followed by a blank line"
    blocks = raw[:-2].split("\n\n")
    assert all(b.startswith("data: ") for b in blocks), blocks
    return [b[len("data: "):] for b in blocks]


def port_is_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# --- the key check -----------------------------------------------------------------------------

def test_wrong_key_gets_vllm_401_body(client):
    for headers in (auth("sk-wrong-key-000000"), {}):
        r = client.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert r.status_code == 401
        assert r.content == UNAUTHORIZED
        assert r.headers["content-type"] == "application/json"


def test_health_is_open_without_key(client):
    r = client.get("/health")
    assert (r.status_code, r.content) == (200, b"")
    assert client.get("/metrics").status_code == 200
    assert client.get("/not-v1").status_code == 404  # outside /v1: routed, never 401


def test_key_compare_is_exact_in_vllm_03_mode(client):
    assert authorized(f"Bearer {KEY}", [KEY], V03)
    for header in (f"bearer {KEY}", f"Bearer {KEY} ", f"Bearer  {KEY}", KEY, "Bearer", "", None,
                   f"Bearer {KEY[:-1]}", f"BEARER {KEY}"):
        assert not authorized(header, [KEY], V03), header
    # Over the wire too (trailing spaces cannot be: HTTP strips them from header values).
    for header in (f"bearer {KEY}", f"Bearer  {KEY}", f"Token {KEY}"):
        r = client.get("/v1/models", headers={"Authorization": header})
        assert (r.status_code, r.content) == (401, UNAUTHORIZED), header
    assert client.get("/v1/models", headers=auth()).status_code == 200


def test_newer_mode_accepts_case_insensitive_scheme_and_several_keys():
    assert authorized(f"bearer {KEY}", [OTHER_KEY, KEY], "0.11.0")
    assert authorized(f"BeArEr {OTHER_KEY}", [OTHER_KEY, KEY], "0.11.0")
    for header in (f"Bearer  {KEY}", f"Bearer {KEY} ", f"Basic {KEY}", KEY, None, ""):
        assert not authorized(header, [KEY], "0.11.0"), header
    with pytest.raises(ValueError):
        authorized(f"Bearer {KEY}", [KEY], "0.2.7")
    with pytest.raises(ValueError):  # 0.3 has a single --api-key
        VLLMServer(api_keys=[KEY, OTHER_KEY], vllm_version=V03)
    with VLLMServer(api_keys=[KEY, OTHER_KEY], vllm_version="0.11.0") as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/v1/models", headers={"Authorization": f"bearer {KEY}"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": f"BEARER {OTHER_KEY}"}).status_code == 200
        r = c.get("/v1/models", headers=auth("sk-wrong-key-000000"))
        assert (r.status_code, r.content) == (401, UNAUTHORIZED)
        assert c.options("/v1/models").status_code != 401  # newer vLLM lets CORS preflights through


def test_unknown_v1_path_without_key_is_401(client):
    for path in ("/v1/nope", "/v1", "/v1beta/anything"):  # vLLM checks the "/v1" prefix, not a segment
        r = client.get(path)
        assert (r.status_code, r.content) == (401, UNAUTHORIZED), path
    assert client.get("/v1/nope", headers=auth()).status_code == 404
    assert client.get("/v1/chat/completions", headers=auth()).status_code == 405


def test_no_key_configured_means_open_server():
    with VLLMServer(api_keys=["", ""], vllm_version=V03) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/v1/models").status_code == 200
        r = c.post("/v1/chat/completions", json=chat_body("hi"), headers=auth("anything"))
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "echo: hi"


def test_requests_record_authorization_header(server, client):
    client.get("/health")
    client.get("/v1/models")
    client.post("/v1/chat/completions", json=chat_body(), headers=auth())
    assert server.requests == [
        RecordedRequest("GET", "/health", None, 200),
        RecordedRequest("GET", "/v1/models", None, 401),
        RecordedRequest("POST", "/v1/chat/completions", f"Bearer {KEY}", 200, ("messages", "model")),
    ]
    assert KEY not in repr(server.requests)  # reprs mask the key
    server.clear_requests()
    assert server.requests == []


def test_api_key_from_env_follows_vllm_precedence(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    assert api_key_from_env(None, V03) is None
    assert api_key_from_env("cli", V03) == "cli"
    assert api_key_from_env("", V03) is None
    monkeypatch.setenv("VLLM_API_KEY", "env")
    assert api_key_from_env(None, V03) == "env"
    assert api_key_from_env("cli", V03) == "env"  # vLLM 0.3: os.environ.get("VLLM_API_KEY") or args.api_key
    assert api_key_from_env("cli", "0.11.0") == "cli"  # newer vLLM: --api-key wins
    assert api_key_from_env("cli") == "cli"  # the default generation is the newest
    monkeypatch.setenv("VLLM_API_KEY", "")
    assert api_key_from_env("cli", V03) == "cli"


def test_startup_log_masks_key(caplog):
    assert mask("12345678901") == "***"
    assert mask("sk-abcdefghij") == "sk-...hij"
    with caplog.at_level(logging.INFO, logger="metagpt_vllm_fix.server"):
        with VLLMServer(api_keys=[KEY]):
            pass
    assert "sk-...789" in caplog.text
    assert KEY not in caplog.text


# --- endpoints ---------------------------------------------------------------------------------

def test_models_lists_served_model_in_vllm_shape(client):
    body = client.get("/v1/models", headers=auth()).json()
    assert body["object"] == "list" and len(body["data"]) == 1
    card = body["data"][0]
    perm = card.pop("permission")[0]
    created = card.pop("created")
    assert isinstance(created, int)
    assert card == {"id": DEFAULT_MODEL, "object": "model", "owned_by": "vllm", "root": DEFAULT_MODEL,
                    "parent": None, "max_model_len": 4096}
    assert perm["id"].startswith("modelperm-") and perm["object"] == "model_permission"
    assert (perm["allow_sampling"], perm["allow_create_engine"], perm["organization"]) == (True, False, "*")


def test_chat_non_stream_shape_and_usage(client):
    r = client.post("/v1/chat/completions", headers=auth(), json={
        "model": DEFAULT_MODEL, "max_tokens": 50,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi  you\nall"}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "chat.completion" and body["model"] == DEFAULT_MODEL
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "echo: hi  you\nall"},
                                "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


def test_unknown_model_gets_vllm_404_shape(client):
    r = client.post("/v1/chat/completions", headers=auth(), json={**chat_body(), "model": "gpt-4"})
    assert r.status_code == 404
    assert r.json() == {"object": "error", "message": "The model `gpt-4` does not exist.",
                        "type": "NotFoundError", "param": None, "code": 404}
    r = client.post("/v1/completions", headers=auth(), json={"model": "x", "prompt": "p"})
    assert (r.status_code, r.json()["type"]) == (404, "NotFoundError")


def test_bad_requests_get_400_in_vllm_shape(client):
    bad = [b"{not json", json.dumps({"model": DEFAULT_MODEL}).encode(),
           json.dumps({"model": "gpt-4"}).encode(),  # field validation precedes the model check
           json.dumps(chat_body(max_tokens="many")).encode(), json.dumps(chat_body(max_tokens=0)).encode()]
    for content in bad:
        r = client.post("/v1/chat/completions", headers={**auth(), "Content-Type": "application/json"},
                        content=content)
        assert r.status_code == 400, content
        body = r.json()
        assert {k: body[k] for k in ("object", "type", "param", "code")} == {
            "object": "error", "type": "BadRequestError", "param": None, "code": 400}
        assert body["message"]


def test_context_overflow_gets_400(client):
    # MetaGPT 0.7 sends max_tokens=4096 by default: with a 4096-token model that overflows.
    r = client.post("/v1/chat/completions", headers=auth(), json=chat_body("a b c", max_tokens=4096))
    assert r.status_code == 400
    assert r.json() == {"object": "error", "type": "BadRequestError", "param": None, "code": 400, "message": (
        "This model's maximum context length is 4096 tokens. However, you requested 4099 tokens "
        "(3 in the messages, 4096 in the completion). Please reduce the length of the messages or completion.")}
    assert client.post("/v1/chat/completions", headers=auth(),
                       json=chat_body("a b c", max_tokens=4093)).status_code == 200


def test_max_tokens_truncates_with_length_finish(client):
    r = client.post("/v1/chat/completions", headers=auth(), json=chat_body("one two three", max_tokens=2))
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("echo: one ", "length")


def test_stream_ends_with_done(client):
    with client.stream("POST", "/v1/chat/completions", headers=auth(),
                       json=chat_body("stream me please", stream=True)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == DEFAULT_MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
    middle = chunks[1:-1]
    assert len(middle) == 4
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == "echo: stream me please"
    assert all(c["choices"][0]["finish_reason"] is None for c in middle)
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_completions_plain_and_stream(client):
    r = client.post("/v1/completions", headers=auth(), json={"model": DEFAULT_MODEL, "prompt": "say it"})
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": "echo: say it", "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    long_prompt = " ".join(["w"] * 30)  # vLLM 0.3 defaults completions to max_tokens=16
    choice = client.post("/v1/completions", headers=auth(),
                         json={"model": DEFAULT_MODEL, "prompt": long_prompt}).json()["choices"][0]
    assert (len(choice["text"].split()), choice["finish_reason"]) == (16, "length")
    with client.stream("POST", "/v1/completions", headers=auth(),
                       json={"model": DEFAULT_MODEL, "prompt": ["a", "b c"], "stream": True}) as r:
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    texts = {i: "".join(c["text"] for c in chunks if c["index"] == i) for i in (0, 1)}
    assert texts == {0: "echo: a", 1: "echo: b c"}
    assert [c["finish_reason"] for c in chunks if c["finish_reason"]] == ["stop", "stop"]


def test_openai_sdk_parses_chat_and_stream(server):
    server.clear_requests()
    sdk = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0, timeout=5)
    rsp = sdk.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi sdk"}])
    assert rsp.choices[0].message.content == "echo: hi sdk"
    assert rsp.usage.total_tokens == rsp.usage.prompt_tokens + rsp.usage.completion_tokens == 2 + 3
    pieces = [c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi stream"}], stream=True)]
    assert "".join(pieces) == "echo: hi stream"
    assert [r.authorization for r in server.requests] == [f"Bearer {KEY}"] * 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="sk-xxx", base_url=server.base_url, max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        sdk.completions.create(model="nope", prompt="x")


# --- lifecycle ---------------------------------------------------------------------------------

def test_stop_is_idempotent_and_frees_port():
    srv = VLLMServer(api_keys=[KEY]).start()
    port = srv.port
    assert port != 0 and srv.url == f"http://127.0.0.1:{port}" and srv.base_url == srv.url + "/v1"
    assert not port_is_free(port)
    assert httpx.get(srv.url + "/health").status_code == 200
    srv.stop()
    srv.stop()
    assert port_is_free(port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health")
    with VLLMServer(port=port) as again:  # the same port can be served again at once
        assert httpx.get(again.url + "/health").status_code == 200


def test_start_reports_bind_errors():
    with VLLMServer() as srv:
        with pytest.raises(OSError):
            VLLMServer(port=srv.port).start()


def test_serve_runs_until_cancelled():
    async def scenario():
        ready = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(serve(port=0, api_keys=[KEY], ready=ready.set_result))
        url = await asyncio.wait_for(ready, 5)
        async with httpx.AsyncClient(base_url=url) as c:
            assert (await c.get("/v1/models")).status_code == 401
            assert (await c.get("/v1/models", headers=auth())).json()["data"][0]["id"] == DEFAULT_MODEL
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(url.rsplit(":", 1)[1])

    port = asyncio.run(scenario())
    assert port_is_free(port)


# --- the served model's chat template, by kind (every generation) ---------------------------------------------

SEED_MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": "hello from the test"}]


def chat_status(kind, version, messages=SEED_MESSAGES, path="/v1/chat/completions", **extra):
    with VLLMServer(vllm_version=version, chat_template=kind) as srv, httpx.Client(base_url=srv.url) as c:
        body = {"model": DEFAULT_MODEL, "messages": messages, **extra} if "chat" in path else \
            {"model": DEFAULT_MODEL, "prompt": "[INST] hi [/INST]", **extra}
        response = c.post(path, json=body)
    return response.status_code, response.json() if not extra.get("stream") else response.text


@pytest.mark.parametrize("version, body", [
    ("0.10.2", {"error": {"message": "As of transformers v4.44, default chat template is no longer allowed, so you "
                                     "must provide a chat template if the tokenizer does not define one. None",
                          "type": "BadRequestError", "param": None, "code": 400}}),
    ("0.32.0", {"error": {"message": "As of transformers v4.44, default chat template is no longer allowed, so you "
                                     "must provide a chat template if the tokenizer does not define one.",
                          "type": "BadRequestError", "param": None, "code": 400}}),
])
def test_model_without_a_template_refuses_chat_in_its_generations_words_and_answers_completions(version, body):
    assert chat_status("none", version) == (400, body)
    assert chat_status("none", version, stream=True)[0] == 400  # before any streamed chunk
    status, answer = chat_status("none", version, path="/v1/completions")
    assert status == 200 and answer["choices"][0]["text"] == "echo: [INST] hi [/INST]"


def test_model_without_a_template_answers_in_the_default_layout_on_0_3_3():
    status, body = chat_status("none", V03)
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: hello from the test"
    # the prompt is what transformers <= 4.43 laid out for a Llama tokenizer: [INST] <<SYS>> ... (words counted)
    assert body["usage"]["prompt_tokens"] == len("[INST] <<SYS>> You are a helpful assistant. <</SYS>> hello from "
                                                 "the test [/INST]".split())


@pytest.mark.parametrize("kind, message", [
    ("mistral-instruct", "Conversation roles must alternate user/assistant/user/assistant/..."),
    ("gemma", "System role not supported"),
])
@pytest.mark.parametrize("version", [V03, "0.10.2", "0.32.0"])
def test_templates_refusing_the_system_role_answer_400_in_the_templates_words(kind, message, version):
    status, body = chat_status(kind, version)
    fields = body.get("error", body)
    assert status == 400 and (fields["type"], fields["param"]) == ("BadRequestError", None)
    assert fields["message"] == (f"{message} {message}" if version == "0.10.2" else message)
    assert ("object" in body) is (version == V03)  # flat bodies before 0.10.2
    assert chat_status(kind, version, [{"role": "user", "content": "hi"}])[0] == 200


@pytest.mark.parametrize("messages, status", [
    (SEED_MESSAGES, 200),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}], 200),
    ([*SEED_MESSAGES, {"role": "user", "content": "again"}], 400),  # roles must alternate
    ([{"role": "system", "content": "a"}, *SEED_MESSAGES], 400),  # a second system message
])
def test_llama_2_chat_template_takes_one_system_message_then_alternating_turns(messages, status):
    assert chat_status("llama-2-chat", "0.32.0", messages)[0] == status


def test_0_32_refuses_max_tokens_above_the_context_before_applying_the_template():
    with VLLMServer(max_model_len=512, chat_template="none") as srv, httpx.Client(base_url=srv.url) as c:
        body = c.post("/v1/chat/completions", json={"model": DEFAULT_MODEL, "messages": SEED_MESSAGES,
                                                    "max_tokens": 4096}).json()
    assert body["error"]["message"].startswith("max_tokens=4096 cannot be greater than max_model_len=512.")


def test_completions_stream_ends_with_a_usage_chunk_when_asked_for_it():
    status, raw = chat_status("none", "0.32.0", path="/v1/completions", stream=True,
                              stream_options={"include_usage": True})
    events = [json.loads(e) for e in sse_events(raw)[:-1]]
    assert status == 200 and events[-1]["choices"] == [] and events[-1]["usage"]["prompt_tokens"] == 3
    assert all("usage" not in e for e in events[:-1])


def test_an_unknown_template_kind_is_refused():
    with pytest.raises(ValueError, match="chat_template: 'vicuna' is not one of none, llama-2-chat"):
        VLLMServer(chat_template="vicuna")
