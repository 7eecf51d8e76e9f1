"""The fail_fast fix against the emulator, through the real MetaGPT 0.7.7: its own retry loops, its own command."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import tenacity

import metagpt_vllm_fix
from conftest import SEED_KEY, clean_env, open_llm_instance, run, run_python, run_script, write_config
from metagpt_vllm_fix.fixes import RequestFix, fail_fast, wrapping_order
from metagpt_vllm_fix.server import DEFAULT_MODEL, VLLMServer

WRONG_KEY = "token-wrong-999"

pytestmark = pytest.mark.usefixtures("fresh_fixes", "loop_modules")


@pytest.fixture(scope="module")
def loop_modules():
    """The modules of MetaGPT's loops, imported in this process. They load MetaGPT's global config at import, which
    needs an ``llm`` block: one is put in this process's (temporary) METAGPT_PROJECT_ROOT for the import only."""
    import importlib
    import os

    path = Path(os.environ["METAGPT_PROJECT_ROOT"]) / "config" / "config2.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("llm:\n  api_type: open_llm\n  base_url: 'http://127.0.0.1:9/v1'\n  model: m\n  api_key: k\n")
    try:
        for name, _, _ in fail_fast.LOOPS:
            importlib.import_module(name)
    finally:
        path.unlink()


def chats(server):
    return [r.status for r in server.requests if r.path.endswith("/chat/completions")]


def metagpt_command(home: Path, **env: str) -> subprocess.CompletedProcess:
    """The ``metagpt`` console script as a user runs it (in a zygote child: its start-up ran the .pth line)."""
    return run_script("metagpt", "write a hello world cli", "--n-round", "2",
                      env=clean_env(home, METAGPT_PROJECT_ROOT=str(home), **env), cwd=home, timeout=600)


@pytest.fixture
def key_server():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192) as server:
        yield server


# --- the metagpt command, as a user runs it ----------------------------------------------------------------------

def test_a_wrong_key_ends_the_metagpt_command_after_one_request_with_the_cause(key_server, tmp_path):
    home = tmp_path / "home"
    write_config(home, key_server.base_url, api_key=WRONG_KEY)
    proc = metagpt_command(home)
    assert chats(key_server) == [401]
    assert "the server refused api_key tok...999 (401)" in proc.stderr, proc.stderr[-3000:]
    assert "openai.AuthenticationError" in proc.stderr  # MetaGPT still reports the error itself, as it does upstream
    assert WRONG_KEY not in proc.stdout + proc.stderr


def test_fail_fast_off_by_name_brings_back_six_identical_requests(key_server, tmp_path):
    home = tmp_path / "home"
    write_config(home, key_server.base_url, api_key=WRONG_KEY)
    proc = metagpt_command(home, METAGPT_VLLM_FIX_DISABLE="fail_fast")
    assert chats(key_server) == [401] * 6
    assert proc.stderr.count("this was the 6th time calling it") == 1
    assert "so they stop here" not in proc.stderr


def test_loops_imported_after_the_fix_are_reached_at_the_first_refusal(key_server, tmp_path):
    home = tmp_path / "home"
    write_config(home, key_server.base_url, api_key=WRONG_KEY)
    code = """
        import asyncio, json, sys
        from metagpt.llm import LLM
        from metagpt_vllm_fix.fixes import fail_fast as ff
        loaded = [name for name, _, _ in ff.LOOPS if name in sys.modules]
        before = ff.armed_loops()
        from metagpt.actions.write_code import WriteCode
        try:
            asyncio.run(WriteCode().write_code("write hello world"))
            error = None
        except Exception as exc:
            error = [type(exc).__name__, type(exc.last_attempt.exception()).__name__]
        print("@@" + json.dumps({"loaded": loaded, "before": before, "after": ff.armed_loops(), "error": error}))
    """
    proc = run_python(code, home=home, METAGPT_PROJECT_ROOT=str(home), timeout=300, forked=True)
    lines = [line[2:] for line in proc.stdout.splitlines() if line.startswith("@@")]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert (result["loaded"], result["before"]) == ([], [])  # MetaGPT's LLM() imports none of the loops' modules
    assert "WriteCode.write_code" in result["after"]
    assert result["error"] == ["RetryError", "AuthenticationError"]  # how upstream's loop ends, only at once
    assert chats(key_server) == [401]


# --- in this process: which errors end a loop, what is said ----------------------------------------------------


def node_ask(llm, prompt="hello"):
    """ActionNode._aask_v1, MetaGPT's busiest loop (6 attempts, every exception), with ``llm``."""
    from metagpt.actions.action_node import ActionNode

    node = ActionNode(key="Answer", expected_type=str, instruction="answer", example="")
    node.llm = llm
    return run(node._aask_v1(prompt, "Answer", {"Answer": (str, ...)}))


def causes(caplog):
    return [(r.getMessage(), getattr(r, "fix", None)) for r in caplog.records if "so they stop here" in r.getMessage()]


@pytest.mark.parametrize("version,extra_get", [("0.32.0", []), ("0.3.3", [200])])
def test_an_unknown_model_is_one_request_and_names_the_served_models(version, extra_get, caplog):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, vllm_version=version) as server, \
            caplog.at_level(logging.ERROR, logger="metagpt_vllm_fix"):
        with pytest.raises(tenacity.RetryError) as raised:
            node_ask(open_llm_instance(server.base_url, model="no-such-model"))
        models = [r.status for r in server.requests if r.path == "/v1/models"]
    assert raised.value.last_attempt.exception().status_code == 404
    assert chats(server) == [404]
    assert models == extra_get  # vLLM 0.18+ names them in the 404; older ones are asked once
    assert causes(caplog) == [(f"the server does not serve model no-such-model; it serves {DEFAULT_MODEL} (404); set "
                               "llm.model to one of those; MetaGPT's retries would send the same request again, so "
                               "they stop here.", "fail_fast")]


def test_the_cause_is_said_once_for_the_same_server_model_and_key(key_server, caplog):
    llm = open_llm_instance(key_server.base_url, api_key=WRONG_KEY)
    with caplog.at_level(logging.ERROR, logger="metagpt_vllm_fix"):
        for _ in range(2):
            with pytest.raises(tenacity.RetryError):
                node_ask(llm)
    assert chats(key_server) == [401, 401]
    assert [message.split(";")[0] for message, _ in causes(caplog)] == ["the server refused api_key tok...999 (401)"]


def test_a_400_the_max_tokens_fix_handles_is_neither_marked_nor_said(caplog):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=4096, vllm_version="0.3.3") as server, \
            caplog.at_level(logging.ERROR, logger="metagpt_vllm_fix"):
        assert run(open_llm_instance(server.base_url).aask("hello", stream=False)).startswith("echo: ")
    assert chats(server) == [400, 200]
    assert causes(caplog) == []


def test_a_prompt_too_long_by_itself_ends_the_loop_after_the_max_tokens_retry(caplog):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=512) as server, \
            caplog.at_level(logging.ERROR, logger="metagpt_vllm_fix"):
        with pytest.raises(tenacity.RetryError):
            node_ask(open_llm_instance(server.base_url), prompt="hello " * 600)
    assert chats(server) == [400, 400]  # max_tokens 4096 (handled), then the prompt itself (escaped): no third
    ((message, _),) = causes(caplog)
    assert message.startswith("the server refused the request (400): ") and "513 input tokens" in message


class StatusServer:
    """Answers every request to ``/<status>/v1/...`` with that status and an OpenAI-style error body."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = int(self.path.split("/")[1])
                body = json.dumps({"error": {"message": f"status {status}", "type": "x", "code": status}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_error(llm):
    """The exception of one real chat request through the provider's (wrapped) client, without openai's retries."""
    llm.aclient.max_retries = 0
    try:
        run(llm.aclient.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "hi"}]))
    except Exception as exc:  # noqa: BLE001  (any failure is what the test looks at)
        return exc
    raise AssertionError("the request succeeded")


def loops():
    """Every loop's Retrying object (their modules are loaded, so an applied fix has reached them)."""
    return {f"{c}.{m}": fail_fast.retrying_of(sys.modules[name], c, m) for name, c, m in fail_fast.LOOPS}


def first_failure(retrying, exc):
    state = tenacity.RetryCallState(retry_object=retrying, fn=None, args=(), kwargs={})
    state.set_exception((type(exc), exc, exc.__traceback__))
    return state


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_errors_a_retry_can_change_keep_every_loops_own_stop(status):
    server = StatusServer()
    try:
        exc = create_error(open_llm_instance(f"{server.url}/{status}/v1"))
    finally:
        server.close()
    assert exc.status_code == status and fail_fast.cause_of(exc) is None
    for name, retrying in loops().items():
        state = first_failure(retrying, exc)
        assert retrying.stop(state) is retrying.stop.original(state) is False, name


def test_connection_errors_and_other_providers_refusals_keep_every_loops_own_stop(key_server):
    from metagpt.configs.llm_config import LLMConfig
    from metagpt.provider.llm_provider_registry import create_llm_instance

    refused = create_error(open_llm_instance(f"http://127.0.0.1:{closed_port()}/v1"))
    openai_provider = create_llm_instance(LLMConfig(api_type="openai", base_url=key_server.base_url,
                                                    api_key=WRONG_KEY, model=DEFAULT_MODEL))
    other = create_error(openai_provider)
    assert type(refused).__name__ == "APIConnectionError" and other.status_code == 401
    for exc in (refused, other):
        assert fail_fast.cause_of(exc) is None
        for name, retrying in loops().items():
            assert retrying.stop(first_failure(retrying, exc)) is False, name


def test_a_marked_error_stops_every_loop_and_its_retry_error_too(key_server):
    exc = create_error(open_llm_instance(key_server.base_url, api_key=WRONG_KEY))
    assert fail_fast.cause_of(exc).status == 401
    for name, retrying in loops().items():
        assert retrying.stop(first_failure(retrying, exc)) is True, name
        wrapped = tenacity.RetryError(first_failure(retrying, exc).outcome)  # a loop inside a loop
        assert retrying.stop(first_failure(retrying, wrapped)) is True, name


def test_remove_restores_every_loops_own_stop_and_apply_wraps_once():
    metagpt_vllm_fix.remove()
    originals = {name: retrying.stop for name, retrying in loops().items()}
    assert fail_fast.armed_loops() == []
    for _ in range(2):
        metagpt_vllm_fix.apply()
        armed = loops()
        assert sorted(fail_fast.armed_loops()) == sorted(originals)
        for name, retrying in armed.items():
            assert isinstance(retrying.stop, fail_fast.StopAtFinal) and retrying.stop.original is originals[name]
        metagpt_vllm_fix.remove()
        assert {name: retrying.stop for name, retrying in loops().items()} == originals
        assert all(loops()[name].stop is stop for name, stop in originals.items())
    metagpt_vllm_fix.apply()


def test_a_stop_put_on_top_of_ours_stays_after_remove_and_ours_steps_aside(key_server):
    retrying = loops()["WriteCode.write_code"]
    ours = retrying.stop
    theirs = tenacity.stop_any(ours)
    retrying.stop = theirs
    try:
        exc = create_error(open_llm_instance(key_server.base_url, api_key=WRONG_KEY))
        metagpt_vllm_fix.remove()
        assert retrying.stop is theirs
        assert retrying.stop(first_failure(retrying, exc)) is False  # ours now asks the loop's own stop only
    finally:
        retrying.stop = ours.original


def test_fail_fast_off_by_name_leaves_every_loop_alone(monkeypatch):
    metagpt_vllm_fix.remove()
    originals = {name: retrying.stop for name, retrying in loops().items()}
    monkeypatch.setenv("METAGPT_VLLM_FIX_DISABLE", "fail_fast")
    metagpt_vllm_fix.apply()
    assert {name: retrying.stop for name, retrying in loops().items()} == originals
    assert {f.name: f.state for f in metagpt_vllm_fix.status().fixes}["fail_fast"] == "off"


def test_fail_fast_is_applied_after_every_other_request_fix():
    """Its create wrapper is then the outermost: it sees only the errors the other fixes left unhandled."""
    order = [fix.name for fix in wrapping_order()]
    requests = [fix.name for fix in wrapping_order() if isinstance(fix, RequestFix)]
    assert order[-1] == requests[-1] == "fail_fast"


@pytest.mark.parametrize("version", ["0.3.3", "0.10.2", "0.32.0"])
def test_the_served_names_are_read_from_the_404s_that_list_them(version):
    from metagpt_vllm_fix.vllm_versions import for_version, served_models

    message = for_version(version).unknown_model_message.format(model="x", served="org/m-1.5b, other.v2")
    expected = ["org/m-1.5b", "other.v2"] if "{served}" in for_version(version).unknown_model_message else None
    assert served_models(message) == expected


def test_with_the_api_key_fix_off_the_cause_names_metagpts_placeholder(key_server, caplog, monkeypatch):
    metagpt_vllm_fix.remove()
    monkeypatch.setenv("METAGPT_VLLM_FIX_DISABLE", "api_key")
    metagpt_vllm_fix.apply()
    with caplog.at_level(logging.ERROR, logger="metagpt_vllm_fix"), pytest.raises(tenacity.RetryError):
        node_ask(open_llm_instance(key_server.base_url))
    assert chats(key_server) == [401]
    ((message, _),) = causes(caplog)
    assert message.startswith("the server refused api_key sk-xxx, MetaGPT 0.7's hard-coded placeholder (401)")
