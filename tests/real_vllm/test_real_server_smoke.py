"""The real vLLM answers as the project assumes: the key guards ``/v1``, the seed's model name is served; a model
without a chat template (the seed's, as published) refuses every chat request and answers completions with usage;
a model with one (Llama-2-chat's) answers chat with usage. If these fail, the rest of the real-vLLM suite cannot
mean anything."""

from __future__ import annotations

import httpx

from .vllm_process import RealVLLM


def auth(server: RealVLLM) -> dict:
    return {"Authorization": f"Bearer {server.api_key}"}


def test_health_needs_no_key(real_vllm: RealVLLM) -> None:
    assert httpx.get(real_vllm.url + "/health", timeout=10).status_code == 200


def test_version_needs_no_key(real_vllm: RealVLLM) -> None:
    resp = httpx.get(real_vllm.url + "/version", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == {"version": "0.32.0"}


def test_models_needs_the_key(real_vllm: RealVLLM) -> None:
    resp = httpx.get(real_vllm.base_url + "/models", timeout=10)
    assert resp.status_code == 401
    assert resp.headers["content-type"].startswith("application/json")


def test_models_with_the_key_lists_the_seed_model(real_vllm: RealVLLM) -> None:
    resp = httpx.get(real_vllm.base_url + "/models", headers=auth(real_vllm), timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    [model] = body["data"]
    assert model["id"] == real_vllm.model == "meta-llama/Llama-2-7b-hf"
    assert model["max_model_len"] == real_vllm.max_model_len == 512
    assert model["owned_by"] == "vllm"


def assert_usage(usage: dict, most: int) -> None:
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= most
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_model_without_chat_template_refuses_chat(real_vllm: RealVLLM) -> None:
    payload = {"model": real_vllm.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    resp = httpx.post(real_vllm.base_url + "/chat/completions", json=payload, headers=auth(real_vllm), timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"] == (
        "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat template "
        "if the tokenizer does not define one.")


def test_a_model_without_chat_template_answers_completions_with_usage(real_vllm: RealVLLM) -> None:
    payload = {"model": real_vllm.model, "prompt": "hello", "max_tokens": 8}
    resp = httpx.post(real_vllm.base_url + "/completions", json=payload, headers=auth(real_vllm), timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["object"], body["model"]) == ("text_completion", real_vllm.model)
    assert isinstance(body["choices"][0]["text"], str)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert_usage(body["usage"], 8)


def test_the_tokenizer_is_llama_2s_kind_bos_first_no_pad_and_no_space_after_a_special_token(real_vllm) -> None:
    """tokenizer_config as Llama-2-7b-hf publishes it (LlamaTokenizer, add_bos_token, legacy false), loaded by
    transformers 5 as vLLM 0.32 loads it: every prompt gets <s> (id 1) in front; the text's start gets a "▁"
    (SentencePiece's space) but the text right after a special token does not; "<s>" in the text is the special
    token. So "[INST]" and "<s>[INST]" differ by more than one <s>: the token-id proof depends on it."""
    def tokens(prompt: str, **extra: bool) -> list[str]:
        resp = httpx.post(real_vllm.url + "/tokenize", headers=auth(real_vllm), timeout=30,
                          json={"model": real_vllm.model, "prompt": prompt, "return_token_strs": True, **extra})
        assert resp.status_code == 200, resp.text
        return resp.json()["token_strs"]

    assert tokens("[INST] hello")[:2] == ["<s>", "▁["]
    assert tokens("<s>[INST] hello")[:3] == ["<s>", "<s>", "["]
    assert tokens("<s>[INST] hello", add_special_tokens=False)[:2] == ["<s>", "["]
    assert "<pad>" not in tokens("hello") and tokens("hello")[0] == "<s>"


def test_a_model_with_llama_2_chats_template_answers_chat_with_usage(real_vllm_chat: RealVLLM) -> None:
    payload = {"model": real_vllm_chat.model, "max_tokens": 8, "messages": [
        {"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "hello"}]}
    resp = httpx.post(real_vllm_chat.base_url + "/chat/completions", json=payload, headers=auth(real_vllm_chat),
                      timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == real_vllm_chat.model
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert_usage(body["usage"], 8)


def test_a_template_refusing_the_system_role_refuses_metagpts_messages(real_vllm_mistral: RealVLLM) -> None:
    payload = {"model": real_vllm_mistral.model, "max_tokens": 8, "messages": [
        {"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "hello"}]}
    resp = httpx.post(real_vllm_mistral.base_url + "/chat/completions", json=payload,
                      headers=auth(real_vllm_mistral), timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"] == "Conversation roles must alternate user/assistant/user/assistant/..."


def test_chat_completion_with_a_wrong_key_is_401(real_vllm: RealVLLM) -> None:
    payload = {"model": real_vllm.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    resp = httpx.post(real_vllm.base_url + "/chat/completions", json=payload,
                      headers={"Authorization": "Bearer sk-xxx"}, timeout=60)
    assert resp.status_code == 401
