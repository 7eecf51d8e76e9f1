"""apply() / remove() / status() in this interpreter, against the real MetaGPT 0.7 classes."""

from __future__ import annotations

import inspect
import logging
import threading

import pytest
import wrapt

import metagpt_vllm_fix
from metagpt_vllm_fix import wrapping
from metagpt_vllm_fix.fixes.api_key import send_configured_key

KEY = "token-abc123"


@pytest.fixture
def open_llm():
    """MetaGPT's OpenLLM class; the plugin is put back to its default (applied) state afterwards."""
    from metagpt.provider.open_llm_api import OpenLLM

    yield OpenLLM
    metagpt_vllm_fix.remove()
    metagpt_vllm_fix.apply()


def make_llm(api_key=KEY, **extra):
    from metagpt.configs.llm_config import LLMConfig
    from metagpt.provider.llm_provider_registry import create_llm_instance

    return create_llm_instance(LLMConfig(api_type="open_llm", base_url="http://127.0.0.1:9/v1",
                                         model="m", api_key=api_key, **extra))


def our_wrappers(cls):
    return [node for node in wrapping.chain(cls.__dict__["_make_client_kwargs"])
            if wrapping.is_ours(node, send_configured_key)]


def test_patched_client_carries_configured_key(open_llm):
    metagpt_vllm_fix.apply()
    assert make_llm().aclient.api_key == KEY
    metagpt_vllm_fix.remove()
    assert make_llm().aclient.api_key == "sk-xxx"


def test_apply_and_remove_are_idempotent_and_restore_the_original_object(open_llm):
    original = inspect.unwrap(open_llm.__dict__["_make_client_kwargs"])
    assert inspect.isfunction(original)
    for _ in range(3):
        metagpt_vllm_fix.apply()
    assert len(our_wrappers(open_llm)) == 1
    for _ in range(3):
        metagpt_vllm_fix.remove()
    assert open_llm.__dict__["_make_client_kwargs"] is original


def test_status_tells_state_and_reason(open_llm):
    active = metagpt_vllm_fix.apply()
    assert (active.active, active.state, active.code, active.metagpt_version) == (True, "active", "supported", "0.7.7")
    removed = metagpt_vllm_fix.remove()
    assert (removed.active, removed.state, removed.code) == (False, "inactive", "removed")
    assert removed.hook_installed is False
    assert "remove()" in str(removed)


def test_concurrent_apply_patches_exactly_once(open_llm):
    metagpt_vllm_fix.remove()
    barrier = threading.Barrier(16)

    def worker():
        barrier.wait()
        metagpt_vllm_fix.apply()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(our_wrappers(open_llm)) == 1


def _their_wrapper(wrapped, instance, args, kwargs):
    result = wrapped(*args, **kwargs)
    return {**result, "default_headers": {"X-Theirs": "1"}}


def test_theirs_below_ours_composes_and_survives_remove(open_llm):
    metagpt_vllm_fix.remove()
    original = open_llm.__dict__["_make_client_kwargs"]
    wrapt.wrap_function_wrapper(open_llm, "_make_client_kwargs", _their_wrapper)
    try:
        theirs = open_llm.__dict__["_make_client_kwargs"]
        metagpt_vllm_fix.apply()
        client = make_llm().aclient
        assert client.api_key == KEY and client.default_headers["X-Theirs"] == "1"
        metagpt_vllm_fix.remove()
        assert open_llm.__dict__["_make_client_kwargs"] is theirs
        assert make_llm().aclient.api_key == "sk-xxx"
    finally:
        open_llm._make_client_kwargs = original


def test_theirs_above_ours_keeps_working_when_ours_is_removed(open_llm):
    metagpt_vllm_fix.apply()
    original = inspect.unwrap(open_llm.__dict__["_make_client_kwargs"])
    wrapt.wrap_function_wrapper(open_llm, "_make_client_kwargs", _their_wrapper)
    try:
        theirs = open_llm.__dict__["_make_client_kwargs"]
        metagpt_vllm_fix.remove()
        assert open_llm.__dict__["_make_client_kwargs"] is theirs
        assert theirs.__wrapped__ is original
        client = make_llm().aclient
        assert client.api_key == "sk-xxx" and client.default_headers["X-Theirs"] == "1"
    finally:
        open_llm._make_client_kwargs = original


def test_key_with_surrounding_whitespace_is_trimmed_and_never_logged(open_llm, caplog):
    secret = "token-abc123-secret"
    with caplog.at_level(logging.DEBUG, logger="metagpt_vllm_fix"):
        client = make_llm(api_key=f"  {secret}\n").aclient
    assert client.api_key == secret
    ours = [r.getMessage() for r in caplog.records if r.name == "metagpt_vllm_fix"]
    assert any("whitespace" in message and "tok...ret" in message for message in ours), ours
    assert not any(secret in message for message in ours)


def test_key_a_header_cannot_carry_leaves_metagpts_request_with_one_warning_and_no_echo(open_llm, caplog):
    secret = "token-abc\r\nX-Injected: 1"
    with caplog.at_level(logging.DEBUG, logger="metagpt_vllm_fix"):
        clients = [make_llm(api_key=secret).aclient for _ in range(2)]
    assert [c.api_key for c in clients] == ["sk-xxx", "sk-xxx"]  # MetaGPT 0.7's own request
    ours = [r.getMessage() for r in caplog.records if r.name == "metagpt_vllm_fix" and "cannot carry" in r.getMessage()]
    assert len(ours) == 1 and "sk-xxx" in ours[0] and "config2.yaml" in ours[0] and "tok...: 1" in ours[0], ours
    assert not any("X-Injected" in m or "token-abc" in m for m in (r.getMessage() for r in caplog.records))


def test_key_a_header_cannot_carry_is_refused_in_strict_mode(open_llm, monkeypatch):
    monkeypatch.setenv("METAGPT_VLLM_FIX", "strict")
    with pytest.raises(metagpt_vllm_fix.InvalidApiKey) as caught:
        make_llm(api_key="t\u00f8ken-abc123-secret")
    message = str(caught.value)
    assert "non-ASCII" in message and "config2.yaml" in message and "secret" not in message
