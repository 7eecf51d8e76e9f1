"""The usage fix: streamed answers counted with the server's own usage, quietly, offline, without waiting long."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import openai
import pytest

from conftest import SEED_KEY, ask_metagpt, open_llm_instance, run, write_config
from loopback_proxy import SilentProxy
from metagpt_vllm_fix import token_count
from metagpt_vllm_fix.server import VLLMServer

STREAM_NOISE = ("Warning: model not found", "usage calculation failed", "ERROR")


pytestmark = pytest.mark.usefixtures("fresh_fixes")


def costs(llm):
    c = llm.get_costs()
    return c.total_prompt_tokens, c.total_completion_tokens


def counted(llm, prompt, stream):
    before = costs(llm)
    run(llm.aask(prompt, stream=stream))
    after = costs(llm)
    return after[0] - before[0], after[1] - before[1]


@pytest.mark.parametrize("version", ["0.3.3", "0.10.2", "0.32.0"])
def test_streamed_answer_is_counted_with_the_servers_own_usage(version):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, vllm_version=version) as server:
        llm = open_llm_instance(server.base_url)
        streamed = counted(llm, "count these five words please", stream=True)
        plain = counted(llm, "count these five words please", stream=False)  # the server's usage, upstream's path
        fields = [r.fields for r in server.requests if r.path == "/v1/chat/completions"]
    assert streamed == plain == (10, 6)  # the emulator counts words: 5 system + 5 prompt; "echo:" + 5
    assert "stream_options" in fields[0] and "stream_options" not in fields[1]


def test_server_refusing_stream_options_is_asked_again_without_them_once_and_never_again(caplog):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, reject_unknown_fields=True) as server:
        llm = open_llm_instance(server.base_url)
        first = counted(llm, "one two three", stream=True)
        second = counted(llm, "one two three", stream=True)
        seen = [(r.status, "stream_options" in r.fields) for r in server.requests]
    assert seen == [(400, True), (200, False), (200, False)]
    assert first == second and first[0] > 0 and first[1] > 0  # counted locally: no usage from this server
    (record,) = [r for r in caplog.records if "refused stream_options" in r.getMessage()]
    assert record.fix == "usage"  # how the doctor tells which fix acted


def test_two_concurrent_streams_of_one_llm_keep_their_own_counts():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192) as server:
        llm = open_llm_instance(server.base_url)
        recorded = []
        update = llm._update_costs
        llm._update_costs = lambda usage: (recorded.append((usage.prompt_tokens, usage.completion_tokens)),
                                           update(usage))[1]  # an observer that calls MetaGPT's own method

        async def both():
            short = [{"role": "user", "content": "a"}]
            long = [{"role": "user", "content": "b " * 40}]
            return await asyncio.gather(llm.acompletion_text(short, stream=True),
                                        llm.acompletion_text(long, stream=True))

        run(both())
    assert sorted(recorded) == [(1, 2), (40, 41)]


def test_calc_usage_off_counts_nothing():
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192) as server:
        llm = open_llm_instance(server.base_url, calc_usage=False)
        assert counted(llm, "hello", stream=True) == (0, 0)


def test_local_count_without_tiktoken_is_an_estimate_and_never_waits_twice(monkeypatch):
    token_count.reset()
    monkeypatch.setattr(token_count, "_load", lambda: time.sleep(30))  # a download that hangs
    started = time.monotonic()
    first = token_count.count([{"role": "user", "content": "abcdefgh"}], "abcd", "m")
    waited = time.monotonic() - started
    started = time.monotonic()
    second = token_count.count([{"role": "user", "content": "abcdefgh"}], "abcd", "m")
    assert first == second == (1 + 2 + 3, 1, "an estimate (4 characters per token)")  # "user", "abcdefgh", reply
    assert waited < token_count.WAIT_SECONDS + 2 and time.monotonic() - started < 0.5
    token_count.reset()


def offline_home(tmp_path, base_url):
    home = tmp_path / "home"
    write_config(home, base_url)
    cache = tmp_path / "empty-tiktoken-cache"
    cache.mkdir()
    return home, str(cache)


def test_offline_stream_without_server_usage_finishes_quickly_and_quietly(tmp_path):
    """No usage from the server, no tiktoken cache, a network that swallows the download: answer, then move on."""
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, reject_unknown_fields=True) as server, \
            SilentProxy() as proxy:
        home, cache = offline_home(tmp_path, server.base_url)
        started = time.monotonic()
        result = ask_metagpt(home, stream=True, TIKTOKEN_CACHE_DIR=cache, HTTPS_PROXY=proxy.url,
                             HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
        elapsed = time.monotonic() - started
    assert result["ok"], result
    assert elapsed < 30, f"the call waited {elapsed:.0f} s for tiktoken"  # upstream waits until killed
    output = result["stdout"] + result["stderr"]
    assert not [noise for noise in STREAM_NOISE if noise in output], output
    assert "counting with an estimate" in result["stderr"]


def test_offline_stream_with_server_usage_never_touches_tiktoken(tmp_path):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192) as server, SilentProxy() as proxy:
        home, cache = offline_home(tmp_path, server.base_url)
        result = ask_metagpt(home, stream=True, TIKTOKEN_CACHE_DIR=cache, HTTPS_PROXY=proxy.url,
                             HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
        assert not proxy.held, "something tried to download through the proxy"
    assert result["ok"], result
    output = result["stdout"] + result["stderr"]
    assert not [noise for noise in STREAM_NOISE + ("counting with",) if noise in output], output


def test_usage_disabled_by_name_brings_back_upstreams_print_and_error(tmp_path):
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192) as server:
        home, cache = offline_home(tmp_path, server.base_url)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()  # nothing listens: the download is refused at once
        result = ask_metagpt(home, stream=True, TIKTOKEN_CACHE_DIR=cache, HTTPS_PROXY=f"http://127.0.0.1:{port}",
                             NO_PROXY="127.0.0.1", METAGPT_VLLM_FIX_DISABLE="usage")
    assert result["ok"], result
    assert "Warning: model not found. Using cl100k_base encoding." in result["stdout"]
    assert "usage calculation failed!" in result["stderr"]


def test_concurrent_streams_of_one_messages_list_keep_their_own_counts():
    """Two LLMs (answers truncated at 2 and at 40 tokens) streaming the very same messages list at once; the server
    holds each stream's [DONE] back, so each stream's usage arrives while the other is still open."""
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, done_delay=0.3) as server:
        short, long = open_llm_instance(server.base_url, max_token=2), open_llm_instance(server.base_url, max_token=40)
        messages = [{"role": "user", "content": "w " * 60}]

        async def both():
            return await asyncio.gather(short.acompletion_text(messages, stream=True),
                                        long.acompletion_text(messages, stream=True))

        run(both())
    assert (costs(short), costs(long)) == ((60, 2), (60, 40))


@pytest.fixture
def loadable_tiktoken(monkeypatch):
    """A real tiktoken Encoding with ``<|endoftext|>`` as a special token, found by ``tiktoken.get_encoding``.

    cl100k_base itself cannot be loaded here (no network to tiktoken's host, no cache), so tiktoken's own registry
    is given a small byte-level encoding under that name: the real ``Encoding.encode``, which raises on special-token
    text unless told otherwise, is what the count runs."""
    import tiktoken
    import tiktoken.registry

    enc = tiktoken.Encoding(name=token_count.ENCODING, pat_str=r"\S+|\s+",
                            mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={"<|endoftext|>": 256})
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode("<|endoftext|>")  # what tiktoken does by default
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, token_count.ENCODING, enc)
    token_count.reset()
    yield enc
    token_count.reset()


def test_special_token_text_in_a_stream_without_server_usage_is_counted_as_text(loadable_tiktoken, caplog):
    """A server that sends no usage, tiktoken at hand, ``<|endoftext|>`` in the prompt and the answer: it answers."""
    prompt = "why does my tokenizer stop at <|endoftext|> here"
    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, reject_unknown_fields=True) as server:
        llm = open_llm_instance(server.base_url)
        assert run(llm.aask(prompt, stream=True)) == "echo: " + prompt
    expected_prompt = sum(len(loadable_tiktoken.encode(text, disallowed_special=()))
                          for text in ("system", "You are a helpful assistant.", "user", prompt)) + 3
    assert costs(llm) == (expected_prompt, len(("echo: " + prompt).encode()))
    assert "counting with tiktoken cl100k_base" in caplog.text


def test_a_count_that_tiktoken_cannot_make_is_estimated_with_one_warning(loadable_tiktoken, monkeypatch, caplog):
    def broken(text, **kwargs):
        raise RuntimeError("tokenizer crashed")

    monkeypatch.setattr(loadable_tiktoken, "encode", broken)
    for _ in range(2):
        assert token_count.count([{"role": "user", "content": "abcdefgh"}], "abcd", "m") == \
            (1 + 2 + 3, 1, "tiktoken cl100k_base")
    assert len([r for r in caplog.records if "could not count" in r.getMessage()]) == 1


def test_a_stream_cancelled_after_its_usage_chunk_leaves_nothing_behind():
    """The server sends every chunk, usage included, then holds [DONE] back; the caller gives up meanwhile."""
    from metagpt_vllm_fix.fixes import usage

    with VLLMServer(api_keys=[SEED_KEY], max_model_len=8192, done_delay=1.5) as server:
        llm = open_llm_instance(server.base_url)

        async def give_up():
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(llm.aask("one two three", stream=True), timeout=0.5)
            await asyncio.sleep(1.2)  # the server's handler finishes its delay before the server stops

        run(give_up())
        assert "stream_options" in server.requests[-1].fields  # the usage chunk was asked for, and sent
    assert costs(llm) == (0, 0)
    assert not usage._captured


class EchoingValidationServer(VLLMServer):
    """The emulator behind a FastAPI-style model validator, as other OpenAI-compatible servers have: a max_tokens
    above 2048 gets pydantic's 422, whose ``input`` echoes the whole request (``stream_options`` included) and whose
    ``loc`` names the body, not that field. With ``forbid_extra``, ``stream_options`` is refused as pydantic's
    ``extra="forbid"`` does it: ``loc`` ``["body", "stream_options"]``."""

    LIMIT = 2048

    def __init__(self, forbid_extra=False, **kwargs):
        from aiohttp import web

        super().__init__(**kwargs)

        @web.middleware
        async def validate(request, handler):
            if request.method == "POST" and request.path == "/v1/chat/completions":
                body = await request.json()  # cached by aiohttp: the emulator reads it again
                if isinstance(body, dict) and (body.get("max_tokens") or 0) > self.LIMIT:
                    detail = [{"type": "value_error", "loc": ["body"], "input": body,
                               "msg": f"Value error, max_tokens must be at most {self.LIMIT}"}]
                    return web.json_response({"detail": detail}, status=422)
                if forbid_extra and isinstance(body, dict) and "stream_options" in body:
                    detail = [{"type": "extra_forbidden", "loc": ["body", "stream_options"], "input": body,
                               "msg": "Extra inputs are not permitted"}]
                    return web.json_response({"detail": detail}, status=422)
            return await handler(request)

        self._app.middlewares.append(validate)  # innermost: after the emulator's key check


def test_a_validation_error_that_echoes_stream_options_is_not_taken_for_refusing_them(caplog):
    with EchoingValidationServer(api_keys=[SEED_KEY], max_model_len=8192) as server:
        too_long = open_llm_instance(server.base_url, max_token=3000)
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            run(too_long.aask("one two three", stream=True))
        fitting = open_llm_instance(server.base_url, max_token=1000)
        assert counted(fitting, "one two three", stream=True) == (8, 4)  # the server's own usage
        seen = [(r.status, "stream_options" in r.fields) for r in server.requests]
    assert seen[0][0] == 422 and seen[1:] == [(200, True)]  # the refused request was not sent again
    assert "stream_options" in str(caught.value.body)  # echoed, though the error is about max_tokens
    assert "refused stream_options" not in caplog.text


def test_a_validation_error_whose_loc_names_stream_options_is_a_refusal_asked_again_without_them():
    with EchoingValidationServer(forbid_extra=True, api_keys=[SEED_KEY], max_model_len=8192) as server:
        llm = open_llm_instance(server.base_url, max_token=1000)
        for _ in range(2):
            assert run(llm.aask("one two three", stream=True)) == "echo: one two three"
        seen = [(r.status, "stream_options" in r.fields) for r in server.requests]
    assert [status for status, _ in seen] == [422, 200, 200] and seen[1:] == [(200, False)] * 2


def test_a_server_that_refused_stream_options_is_asked_with_them_again_after_a_failed_request(caplog):
    # the field is left out (the request then goes exactly as MetaGPT sends it) only until a request to that server
    # fails: a restarted or replaced server behind the URL may take it
    with EchoingValidationServer(forbid_extra=True, api_keys=[SEED_KEY], max_model_len=8192) as server, \
            caplog.at_level(logging.WARNING, logger="metagpt_vllm_fix"):
        fitting = open_llm_instance(server.base_url, max_token=1000)
        assert run(fitting.aask("one two three", stream=True)) == "echo: one two three"
        with pytest.raises(openai.UnprocessableEntityError):  # max_tokens 3000 > the server's limit: a failure
            run(open_llm_instance(server.base_url, max_token=3000).aask("one two three", stream=True))
        assert run(fitting.aask("one two three", stream=True)) == "echo: one two three"
        seen = [(r.status, "stream_options" in r.fields) for r in server.requests]
    # refused, asked without; the failure (max_tokens); asked with them again, refused, asked without
    assert [status for status, _ in seen] == [422, 200, 422, 422, 200]
    assert [fields for status, fields in seen if status == 200] == [False, False]
    assert caplog.text.count("refused stream_options") == 1  # said once per server
