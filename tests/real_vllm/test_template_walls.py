"""The walls after the key, on real vLLM 0.32.0, through MetaGPT 0.7.7 with the seed's config verbatim.

- A template that refuses MetaGPT's system message (tiny-mistral-instruct, 4096 tokens): every request is refused
  as MetaGPT sent it, then answers with the system text folded into the first user message (the ``system_role``
  fix): one refused round trip per request.
- A model whose template answers (tiny-llama-chat, Llama-2-chat's own template): the plugin changes nothing.
- The token-id proof: the ``chat_template`` fix's prompt to ``/v1/completions`` of a template-less server reaches
  the model as the same token ids as MetaGPT's messages sent to the same model served with
  ``--chat-template`` and the shipped ``llama-2.jinja`` (the server-side remedy).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx

from .metagpt_runs import CHAT, COMPLETIONS, AccessLog, ask, metagpt_command, seed_home
from .recording_proxy import RecordingProxy
from .vllm_process import MODEL_DIRS, PYTHON, SHIPPED_LLAMA_2_TEMPLATE, RealVLLM

ROLES_MUST_ALTERNATE = "Conversation roles must alternate user/assistant/user/assistant/..."


def auth(server: RealVLLM) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


# --- a template that refuses the system role ---------------------------------------------------------------------

def test_seed_config_answers_a_template_refusing_the_system_role_stream_and_not(real_vllm_mistral, tmp_path,
                                                                               request_counts):
    log = AccessLog(real_vllm_mistral.log_path)
    result = ask(seed_home(tmp_path, real_vllm_mistral.base_url), (True, False, True, False))
    request_counts["aask stream, not, stream, not; mistral-instruct, 4096"] = log.posts()
    assert [c["ok"] for c in result["calls"]] == [True] * 4, result
    # Each call: MetaGPT's request refused as sent, then the folded one answered.
    assert log.posts() == [(CHAT, 400), (CHAT, 200)] * 4
    assert len({c["prompt_tokens"] for c in result["calls"]}) == 1 and result["calls"][0]["prompt_tokens"] > 0
    assert result["stderr"].count("refuses the system role") == 1


def test_system_role_disabled_by_name_brings_back_the_400(real_vllm_mistral, tmp_path, request_counts):
    log = AccessLog(real_vllm_mistral.log_path)
    result = ask(seed_home(tmp_path, real_vllm_mistral.base_url), (True, False), METAGPT_VLLM_FIX_DISABLE="system_role")
    request_counts["aask stream, not; mistral-instruct, 4096; system_role off"] = log.posts()
    assert [(c["error"], c["status"]) for c in result["calls"]] == [("BadRequestError", 400)] * 2
    assert all(ROLES_MUST_ALTERNATE in c["message"] for c in result["calls"])
    assert log.posts() == [(CHAT, 400)] * 2


def test_the_metagpt_command_gets_answers_from_a_template_refusing_the_system_role(real_vllm_mistral, tmp_path,
                                                                                  request_counts):
    log = AccessLog(real_vllm_mistral.log_path)
    proc = metagpt_command(seed_home(tmp_path, real_vllm_mistral.base_url))
    posts = log.posts()
    request_counts["`metagpt` command; mistral-instruct, 4096; with the plugin"] = posts
    assert len(posts) >= 2 and posts == [(CHAT, 400), (CHAT, 200)] * (len(posts) // 2), (posts, proc.stderr[-3000:])
    assert ROLES_MUST_ALTERNATE not in proc.stdout


# --- a template that answers: nothing changes ---------------------------------------------------------------------

def _through_proxy(server: RealVLLM, tmp_path: Path, name: str, **env: str) -> tuple[dict[str, Any], RecordingProxy]:
    with RecordingProxy(server.url) as proxy:
        result = ask(seed_home(tmp_path / name, proxy.url + "/v1"), (True, False), **env)
    return result, proxy


def test_a_response_that_would_have_succeeded_is_never_changed(real_vllm_chat, tmp_path, request_counts):
    """Llama-2-chat's own template answers MetaGPT's messages (and max_token 4096 == context: vLLM clamps). With
    every fix on, MetaGPT gets exactly the text the server sent, after exactly the requests it would send with the
    two template fixes off: chat only, each answered at once."""
    fixed, fixed_proxy = _through_proxy(real_vllm_chat, tmp_path, "fixed")
    plain, plain_proxy = _through_proxy(real_vllm_chat, tmp_path, "plain",
                                        METAGPT_VLLM_FIX_DISABLE="chat_template,system_role")
    request_counts["aask stream, not; llama-2-chat, 4096; with the plugin"] = [
        (e.path, e.status) for e in fixed_proxy.exchanges if e.method == "POST"]
    for result, proxy in ((fixed, fixed_proxy), (plain, plain_proxy)):
        posts = [(e.path, e.status) for e in proxy.exchanges if e.method == "POST"]
        assert posts == [(CHAT, 200)] * 2, posts
        assert [c["ok"] for c in result["calls"]] == [True, True], result
        # what MetaGPT returned is what the server said, stream and not
        assert [c["answer"] for c in result["calls"]] == [e.answer_text() for e in proxy.posted(CHAT)]
    assert [e.body for e in fixed_proxy.posted(CHAT)] == [e.body for e in plain_proxy.posted(CHAT)]
    assert fixed_proxy.posted(CHAT)[0].body["messages"][0]["role"] == "system"  # MetaGPT's messages, untouched
    assert "chat_template:" not in fixed["stderr"] and "system_role:" not in fixed["stderr"]


# --- the token-id proof -------------------------------------------------------------------------------------------

def _prompt_ids(server: RealVLLM, path: str, body: dict[str, Any]) -> tuple[list[int], int]:
    """The prompt's token ids as the model received them (``return_token_ids``), and the usage's prompt_tokens."""
    request = {**body, "max_tokens": 1, "stream": False, "return_token_ids": True}
    request.pop("stream_options", None)
    resp = httpx.post(server.base_url + path, json=request, headers=auth(server), timeout=120)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    ids = answer.get("prompt_token_ids") or answer["choices"][0].get("prompt_token_ids")
    return list(ids), answer["usage"]["prompt_tokens"]


def _tokenized(server: RealVLLM, body: dict[str, Any]) -> tuple[list[int], list[str]]:
    """vLLM's /tokenize of a prompt or of messages (as its completions / chat paths tokenize them), with strings."""
    resp = httpx.post(server.url + "/tokenize", json={"model": server.model, "return_token_strs": True, **body},
                      headers=auth(server), timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["tokens"], resp.json()["token_strs"]


def test_the_fallbacks_prompt_reaches_the_model_as_the_same_token_ids_as_the_shipped_llama_2_template(
        real_vllm, real_vllm_llama_2_jinja, tmp_path, request_counts):
    with RecordingProxy(real_vllm.url) as proxy:
        result = ask(seed_home(tmp_path, proxy.url + "/v1"), (False, True))
    assert [c["ok"] for c in result["calls"]] == [True, True], result
    messages = proxy.posted(CHAT)[0].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]  # MetaGPT's, as it sent them
    completions = proxy.posted(COMPLETIONS)
    # Each call: max_tokens 4096 refused on the chat request, then the chat request without it refused for want of a
    # template, then the fallback (without max_tokens) answered. One prompt for both.
    assert [c.status for c in completions] == [200, 200], completions
    assert len({c.body["prompt"] for c in completions}) == 1
    fallback = {k: v for k, v in completions[0].body.items() if k != "stream"}

    fallback_ids, fallback_count = _prompt_ids(real_vllm, "/completions", fallback)
    remedy_ids, remedy_count = _prompt_ids(real_vllm_llama_2_jinja, "/chat/completions",
                                           {"model": real_vllm.model, "messages": messages})
    tokenized = {"add_special_tokens": fallback["add_special_tokens"]} if "add_special_tokens" in fallback else {}
    fallback_tokens = _tokenized(real_vllm, {"prompt": fallback["prompt"], **tokenized})
    remedy_tokens = _tokenized(real_vllm_llama_2_jinja, {"messages": messages, "add_generation_prompt": True})
    first = next((i for i, (a, b) in enumerate(zip(fallback_ids, remedy_ids)) if a != b),
                 None if len(fallback_ids) == len(remedy_ids) else min(len(fallback_ids), len(remedy_ids)))
    request_counts["token ids: fallback prompt vs --chat-template llama-2.jinja"] = [(
        f"the same {len(fallback_ids)} ids" if first is None else
        f"differ from index {first}: fallback {fallback_tokens[1][:first + 2]} vs template "
        f"{remedy_tokens[1][:first + 2]}", len(fallback_ids))]
    assert (fallback_tokens[0], remedy_tokens[0]) == (fallback_ids, remedy_ids)  # /tokenize agrees with the model
    assert (fallback_count, remedy_count) == (len(fallback_ids), len(remedy_ids))
    assert result["calls"][0]["prompt_tokens"] == fallback_count  # what MetaGPT's cost manager was told
    assert fallback_ids == remedy_ids, (completions[0].body, fallback_tokens[1][:8], remedy_tokens[1][:8])


RENDER = """
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
shipped = open(sys.argv[2]).read()
out = {}
for name, messages in json.loads(sys.argv[3]).items():
    out[name] = {"own": tok.apply_chat_template(messages, tokenize=False),
                 "shipped": tok.apply_chat_template(messages, tokenize=False, chat_template=shipped)}
print(json.dumps(out))
"""


def test_the_shipped_llama_2_template_lays_out_metagpt_messages_as_llama_2_chat_does():
    """transformers (as vLLM uses it) renders MetaGPT's conversations with Llama-2-chat's own template and with the
    shipped llama-2.jinja to the same text: the remedy gives what Llama-2-chat users get."""
    conversations = {
        "system, user": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "Say hello."}],
        "user": [{"role": "user", "content": "Say hello."}],
        "system, user, assistant, user": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Hi."},
                                          {"role": "user", "content": "Again."}],
    }
    proc = subprocess.run([str(PYTHON), "-c", RENDER, str(MODEL_DIRS["llama-2-chat"]), str(SHIPPED_LLAMA_2_TEMPLATE),
                           json.dumps(conversations)], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rendered = json.loads(proc.stdout.splitlines()[-1])
    assert {name: r["shipped"] for name, r in rendered.items()} == {name: r["own"] for name, r in rendered.items()}
