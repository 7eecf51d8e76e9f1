"""The seed's scenario end to end: config2.yaml -> MetaGPT 0.7's LLM().aask -> a key-checking server on loopback.

Every MetaGPT call runs in a child of the zygote (tests/zygote.py), which runs the installed .pth's line with the
call's environment as start-up does, so the .pth is what activates the plugin (the child never imports
metagpt_vllm_fix unless the test says so)."""

from __future__ import annotations

import pytest

from conftest import SEED_KEY, ask_metagpt, write_config
from loopback_proxy import LoopbackProxy


def auth_headers(server):
    return [r.authorization for r in server.requests if r.path.startswith("/v1")]


def test_upstream_bug_is_real_without_the_plugin(vllm_server, user_home):
    result = ask_metagpt(user_home, METAGPT_VLLM_FIX="0")
    assert result["ok"] is False
    assert result["error"] == "AuthenticationError" and result["status"] == 401
    assert auth_headers(vllm_server) == ["Bearer sk-xxx"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_configured_key_reaches_server(vllm_server, user_home, stream):
    result = ask_metagpt(user_home, stream=stream)
    assert result["ok"] is True, result
    assert "hello from the test" in result["answer"]
    assert auth_headers(vllm_server) == [f"Bearer {SEED_KEY}"]


def test_off_switch_leaves_upstream_behaviour(vllm_server, user_home):
    result = ask_metagpt(user_home, stream=True, METAGPT_VLLM_FIX="0")
    assert (result["ok"], result["status"]) == (False, 401)
    assert auth_headers(vllm_server) == ["Bearer sk-xxx"]


@pytest.mark.parametrize("prelude", [
    "import metagpt_vllm_fix",
    "import metagpt.provider.open_llm_api\nimport metagpt_vllm_fix",
    "import metagpt.provider.open_llm_api\nimport metagpt_vllm_fix\nmetagpt_vllm_fix.apply()",
], ids=["import-before-metagpt", "import-after-metagpt", "apply-after-metagpt"])
def test_explicit_activation_works_with_automatic_off(vllm_server, user_home, prelude):
    result = ask_metagpt(user_home, prelude=prelude, METAGPT_VLLM_FIX="0")
    assert result["ok"] is True, result
    assert auth_headers(vllm_server) == [f"Bearer {SEED_KEY}"]


def test_remove_brings_back_upstream_behaviour(vllm_server, user_home):
    result = ask_metagpt(user_home, prelude="import metagpt_vllm_fix\nmetagpt_vllm_fix.remove()")
    assert (result["ok"], result["status"]) == (False, 401)
    assert auth_headers(vllm_server) == ["Bearer sk-xxx"]


def test_llm_proxy_is_honoured(vllm_server, tmp_path):
    home = tmp_path / "home"
    with LoopbackProxy() as proxy:
        write_config(home, vllm_server.base_url, extra=f"  proxy: '{proxy.url}'\n")
        result = ask_metagpt(home)
    assert result["ok"] is True, result
    assert [(m, url) for m, url, _ in proxy.seen] == [("POST", f"{vllm_server.base_url}/chat/completions")]
    assert proxy.seen[0][2] == f"Bearer {SEED_KEY}"
    assert auth_headers(vllm_server) == [f"Bearer {SEED_KEY}"]
