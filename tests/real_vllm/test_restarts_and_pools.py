"""Every request is sent as MetaGPT sent it, whatever an earlier one met: real vLLM 0.32.0 servers that change
behind one URL, through one MetaGPT 0.7.7 process with the seed's config (key, model name) verbatim.

- One port, two lives: the template-less model answers through ``/v1/completions``; the same port restarted with
  ``--chat-template`` and the shipped ``llama-2.jinja`` answers the same process's next request by chat. The same
  for ``system_role``: a Mistral-style template (refuses the system role), then Llama-2-chat's (takes it).
- A pool: vLLM's own router (``vllm-router``, round robin, a real process on 127.0.0.1) in front of two backends
  that differ, both with ``--api-key``: the template-less tiny-llama and tiny-llama-chat.

What each server saw is read from its own access log (vLLM's uvicorn lines: method, path, status); where the body
matters (folded or not) a recording proxy sits between MetaGPT and the port, across the restart. All servers have
Llama-2's 4096-token context, so ``max_tokens`` 4096 is clamped, not refused: only the template walls are in play.
The tests run in file order so that the pool reuses the servers the restarts leave running (four starts in all).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest

from . import router_process
from .metagpt_runs import CHAT, COMPLETIONS, AccessLog, MetaGPTSession, seed_home
from .recording_proxy import RecordingProxy
from .vllm_process import SHIPPED_LLAMA_2_TEMPLATE, START_TIMEOUT

CONTEXT = 4096
# a test may start two servers one after the other (a restart, or the pool's two backends)
pytestmark = pytest.mark.timeout(int(2 * START_TIMEOUT) + 600)
WITH_TEMPLATE = ("--chat-template", str(SHIPPED_LLAMA_2_TEMPLATE))


def answered(results: list[dict]) -> bool:
    return all(r["ok"] for r in results)


# --- one port, two lives ------------------------------------------------------------------------------------------

def two_lives(lives, tmp_path: Path, port: str, first: tuple, second: tuple, request_counts: dict,
              label: str) -> tuple[list, list, RecordingProxy, str]:
    """One MetaGPT process asks (streamed, then not) the server on ``port`` started as ``first``; the port is then
    served as ``second`` and the same process asks once more (streamed). Each life's POSTs from its access log, the
    proxy between MetaGPT and the port (it outlives the restart), and MetaGPT's stderr."""
    before = lives.serve(port, *first)
    with RecordingProxy(before.url) as proxy, MetaGPTSession(seed_home(tmp_path, proxy.url + "/v1")) as metagpt:
        log = AccessLog(before.log_path)
        results = metagpt.ask((True, False))
        first_posts = log.posts()
        after = lives.serve(port, *second)  # stopped, and started again on the same port
        assert after.url == before.url
        log = AccessLog(after.log_path)
        results += metagpt.ask((True,))
        stderr = metagpt.stderr()
    request_counts[f"one process, port restarted: {label[0]}, aask stream, not"] = first_posts
    request_counts[f"one process, port restarted: then {label[1]}, aask stream"] = log.posts()
    assert answered(results), (results, stderr[-3000:])
    return first_posts, log.posts(), proxy, stderr


def test_a_server_restarted_with_a_template_taking_the_system_role_gets_the_same_process_next_request_unfolded(
        lives, tmp_path, request_counts):
    first, second, proxy, stderr = two_lives(lives, tmp_path, "a", ("mistral-instruct", CONTEXT),
                                             ("llama-2-chat", CONTEXT), request_counts,
                                             ("mistral-instruct", "llama-2-chat"))
    assert first == [(CHAT, 400), (CHAT, 200)] * 2  # each call refused, then folded
    assert second == [(CHAT, 200)]  # sent once
    sent = proxy.exchanges[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]  # unfolded: MetaGPT's messages as it sent them
    assert stderr.count("refuses the system role") == 1


# --- a pool behind vLLM's own router ------------------------------------------------------------------------------

def _per_backend(logs: dict[str, AccessLog]) -> dict[str, Counter]:
    return {name: Counter(log.posts()) for name, log in logs.items()}


def _check_pool(seen: dict[str, Counter], calls: int, why: str) -> None:
    """Each call's first request is MetaGPT's own chat request; the template-less backend refuses every chat request
    it gets, and each refusal, only that, is followed by one completions request (wherever the router sends it); the
    chat backend answers every chat request it gets, as sent."""
    plain, chat = seen["tiny-llama"], seen["tiny-llama-chat"]
    assert set(plain) <= {(CHAT, 400), (COMPLETIONS, 200)}, (seen, why)
    assert set(chat) <= {(CHAT, 200), (COMPLETIONS, 200)}, (seen, why)
    refused = plain[(CHAT, 400)]
    # one chat request per call: none rewritten before it was asked
    assert refused + chat[(CHAT, 200)] == calls, (seen, why)
    # one completions request per refusal, and only after one
    assert plain[(COMPLETIONS, 200)] + chat[(COMPLETIONS, 200)] == refused, (seen, why)


def test_a_pool_of_differing_backends_behind_vllm_router_answers_every_request_each_as_its_backend_can(
        lives, tmp_path, request_counts):
    chat = lives.serve("a", "llama-2-chat", CONTEXT)
    plain = lives.serve("b", "none", CONTEXT)
    # Round robin alternates over every request, whatever its path, and a call that meets the template-less backend
    # takes two turns (its refusal, then the completions request): one call after another, the sequence settles
    # into "chat to tiny-llama, completions to tiny-llama-chat" within two calls. Calls made at once interleave and
    # reach both backends with chat requests. Answers are capped at 64 tokens (llm.max_token): 32 generations at
    # once on a shared 2-core machine would otherwise outlast MetaGPT's 60 s request timeout, and openai's retries
    # of those would be extra requests in the logs.
    with router_process.start((chat.url, plain.url)) as router, \
            MetaGPTSession(seed_home(tmp_path, router.base_url, extra="  max_token: 64\n")) as metagpt:
        logs = {"tiny-llama-chat": AccessLog(chat.log_path), "tiny-llama": AccessLog(plain.log_path)}
        one_by_one = metagpt.ask((True, False) * 10)
        sequential = _per_backend(logs)
        logs = {"tiny-llama-chat": AccessLog(chat.log_path), "tiny-llama": AccessLog(plain.log_path)}
        together = metagpt.ask((True, False) * 16, together=True)
        gathered = _per_backend(logs)
        stderr = metagpt.stderr()
        router_log = Path(router.log_path).read_text(errors="replace")
        why = f"MetaGPT's stderr:\n{stderr[-2000:]}\nthe router's log:\n{router_log[-2000:]}"
        wrong_key = httpx.post(router.base_url + "/chat/completions", headers={"Authorization": "Bearer wrong"},
                               json={"model": chat.model, "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    for label, seen in (("20 aask one by one", sequential), ("32 aask at once (asyncio.gather)", gathered)):
        for backend, counts in seen.items():
            request_counts[f"pool behind vllm-router, {label}: {backend}"] = [
                (path, status) for (path, status), n in sorted(counts.items()) for _ in range(n)]
    assert answered(one_by_one), (one_by_one, stderr[-3000:])
    assert answered(together), (together, stderr[-3000:], router_log[-3000:])
    _check_pool(sequential, 20, why)
    _check_pool(gathered, 32, why)
    # at once, each backend got MetaGPT's chat requests: the chat backend answered all of its own as sent
    assert gathered["tiny-llama-chat"][(CHAT, 200)] >= 1 and gathered["tiny-llama"][(CHAT, 400)] >= 1, gathered
    # every answer came from a backend started with --api-key: the router passed MetaGPT's key through, and the
    # backends still check it behind the router
    assert wrong_key.status_code == 401, wrong_key.text
    assert stderr.count("has no chat template") == 1  # once per URL and model


# --- one port, two lives, again: the chat_template fix (reuses the pool's template-less server) -----------------

def test_a_server_restarted_with_the_shipped_template_answers_the_same_process_next_request_by_chat(
        lives, tmp_path, request_counts):
    first, second, proxy, stderr = two_lives(lives, tmp_path, "b", ("none", CONTEXT),
                                             ("none", CONTEXT, WITH_TEMPLATE), request_counts,
                                             ("no template", "--chat-template llama-2.jinja"))
    assert first == [(CHAT, 400), (COMPLETIONS, 200)] * 2  # each call refused, then rerouted
    assert second == [(CHAT, 200)]  # one chat 200, no completions request
    assert [m["role"] for m in proxy.exchanges[-1].body["messages"]] == ["system", "user"]  # as MetaGPT sent it
    assert stderr.count("has no chat template") == 1
