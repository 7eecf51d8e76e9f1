"""The real vLLM answers as the project assumes: the key guards ``/v1``, the seed's model name is served, and a
chat completion comes back with usage. If these fail, the rest of the real-vLLM suite cannot mean anything."""

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


def test_chat_completion_answers_with_usage(real_vllm: RealVLLM) -> None:
    payload = {"model": real_vllm.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    resp = httpx.post(real_vllm.base_url + "/chat/completions", json=payload, headers=auth(real_vllm), timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == real_vllm.model
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_completion_with_a_wrong_key_is_401(real_vllm: RealVLLM) -> None:
    payload = {"model": real_vllm.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    resp = httpx.post(real_vllm.base_url + "/chat/completions", json=payload,
                      headers={"Authorization": "Bearer sk-xxx"}, timeout=60)
    assert resp.status_code == 401
