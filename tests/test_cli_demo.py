"""``metagpt-vllm-fix demo`` as users run it: ``python -m metagpt_vllm_fix demo`` (in a zygote child: its start-up
ran the .pth line, it imports MetaGPT itself; tests/zygote.py), MetaGPT 0.7 for real, servers on 127.0.0.1."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import clean_env, run_module
from metagpt_vllm_fix.masking import mask
from test_version_matrix import HTTPX_028, httpx_028  # noqa: F401 - the fixture: httpx 0.28.1 alone, in a directory

KEY = "demo-key-for-the-test-0123456789"
NOISE = ("Package root set to", "PROJECT_ROOT set", "usage calculation failed", "FutureWarning", "Traceback",
         "Warning: model not found")
TODAY = "Today: vLLM 0.32.0, started with the seed's command as published (the base model has no chat template)"
DATA_INTERPRETER = "The Data Interpreter's code step, on a server started the same way"
WRITE_PRD = "WritePRD's ActionNode on a server started the same way, whose model answers in plain words"


def run_demo(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The demo in an empty directory with an empty HOME: it must need neither a config nor a clean CWD."""
    home = tmp_path / "home"
    home.mkdir()
    return run_module("metagpt_vllm_fix", "demo", *args, env=clean_env(home, **env), cwd=tmp_path, timeout=120)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One demo run with a known key, in a directory of its own; the tests below each read one part of it."""
    where = tmp_path_factory.mktemp("demo")
    return where, run_demo(where, "--api-key", KEY)


def scene(out: str, title: str) -> str:
    """One scene's lines: from its title to the blank line that ends it."""
    return out.split(title)[1].split("\n\n")[0]


def steps(scene: str) -> tuple[str, str, str]:
    """A scene's three calls: as shipped, with the api_key fix alone (or the scene's middle step), with every fix."""
    _, upstream, middle, fixed = re.split(r"\n  [123]\. ", scene)
    assert upstream.startswith("MetaGPT as shipped (plugin removed)") and fixed.startswith("With metagpt-vllm-fix")
    return upstream, middle, fixed


def test_demo_tells_the_401_then_400_then_answer_story_on_vllm_033_with_the_seed_config(keyed):
    _, proc = keyed
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    then, today = out.split("MetaGPT 0.7's time: vLLM 0.3.3")[1].split(TODAY)
    upstream, key_only, fixed = steps(then)
    assert "answers as vLLM 0.3.3" in then and "no max_token line (MetaGPT asks for 4096), calc_usage true" in out
    assert "/v1/chat/completions, Authorization: Bearer sk-xxx, max_tokens 4096 -> 401" in upstream
    assert "401 openai.AuthenticationError" in upstream
    assert "(METAGPT_VLLM_FIX_DISABLE=max_tokens,usage" in key_only
    assert f"Authorization: Bearer {mask(KEY)}, max_tokens 4096 -> 400" in key_only
    assert "This model's maximum context length is 4096 tokens" in key_only
    assert fixed.count(f"Authorization: Bearer {mask(KEY)}") == 2
    assert "max_tokens 4096 -> 400" in fixed and "no max_tokens -> 200" in fixed
    assert "MetaGPT returned 'echo: " in fixed and "the server's own count" in fixed
    assert "Set llm.max_token below 4096 to avoid it" in fixed
    assert "ok      The seed's config works as written, on vLLM 0.3.3 and on vLLM 0.32" in out
    assert "\n  httpx " not in out, "httpx < 0.28 takes proxies=: nothing to say about it"


def test_demo_shows_the_seed_server_of_today_401_then_no_chat_template_400_then_an_answer(keyed):
    _, proc = keyed
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert f"python -m vllm.entrypoints.openai.api_server --model meta-llama/Llama-2-7b-hf --api-key {mask(KEY)}" \
        in out
    today = scene(out, TODAY)
    upstream, key_only, fixed = steps(today)
    assert "answers as vLLM 0.32.0" in today
    assert "/v1/chat/completions, Authorization: Bearer sk-xxx, max_tokens 4096 -> 401" in upstream
    assert f"/v1/chat/completions, Authorization: Bearer {mask(KEY)}, max_tokens 4096 -> 400" in key_only
    assert "400 openai.BadRequestError: As of transformers v4.44, default chat template is no longer allowed" \
        in key_only
    assert f"/v1/chat/completions, Authorization: Bearer {mask(KEY)}, max_tokens 4096 -> 400" in fixed
    assert re.search(rf"/v1/completions, Authorization: Bearer {re.escape(mask(KEY))}, [^\n]*-> 200", fixed), fixed
    assert "MetaGPT returned '" in fixed and "the server's own count" in fixed
    assert "--chat-template" in fixed, "the chat_template fix's warning names the server-side remedy"


def test_demo_shows_the_data_interpreters_code_step_refused_for_tools_then_answered_as_a_function_call(keyed):
    _, proc = keyed
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    upstream, key_only, fixed = steps(scene(out, DATA_INTERPRETER))
    assert "/v1/chat/completions, Authorization: Bearer sk-xxx, max_tokens 4096 -> 401" in upstream
    assert '400 openai.BadRequestError: "auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser' \
        in key_only
    # the function call refused, its constrained request refused for want of a template, then answered
    chat_400 = rf"/v1/chat/completions, Authorization: Bearer {re.escape(mask(KEY))}, max_tokens 4096(, constrained " \
        r"\(structured_outputs\))? -> 400"
    assert len(re.findall(chat_400, fixed)) == 2 and "server saw   GET /version -> 200" in fixed, fixed
    assert re.search(rf"/v1/completions, Authorization: Bearer {re.escape(mask(KEY))}, [^\n]*-> 200", fixed), fixed
    # what MetaGPT's own WriteCodeWithoutTools returned: the execute function's arguments, read from a tool call
    assert re.search(r"MetaGPT returned \{'language': 'python', 'code': '[^']+'\} \(\d+ prompt", fixed), fixed
    assert "tools: " in fixed and "--enable-auto-tool-choice" in fixed, "the tools fix names the server-side remedy"


def test_demo_shows_writeprds_fill_ending_in_retry_error_until_the_formats_fix_constrains_it(keyed):
    _, proc = keyed
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    upstream, all_but_formats, fixed = steps(scene(out, WRITE_PRD))
    assert "... that, 6 times in all: MetaGPT asking the same prompt again" in upstream
    assert "tenacity.RetryError after 6 attempts, the last: 401 openai.AuthenticationError" in upstream
    assert all_but_formats.startswith("With every fix but formats (METAGPT_VLLM_FIX_DISABLE=formats)")
    assert re.search(r"/v1/completions, [^\n]*max_tokens 4096 -> 200\n\s+server saw   \.\.\. that, 6 times in all",
                     all_but_formats), all_but_formats
    assert "the last: JSONDecodeError: Expecting value" in all_but_formats
    assert "GET /version -> 200" in fixed and "max_tokens 4096, constrained (structured_outputs) -> 200" in fixed
    assert fixed.count("server saw   /v1/completions") == 1, "one generation: constrained from the first ask"
    assert re.search(r"MetaGPT returned \{'Language': 'echo', [^\n]*'Product Goals': \[\]", fixed), fixed
    assert "constrained from the first ask there (a base model's free answer runs to max_tokens)" in fixed


def test_demo_never_prints_the_key_and_stays_quiet(keyed):
    where, proc = keyed
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert KEY not in proc.stdout + proc.stderr
    assert mask(KEY) in proc.stdout
    assert proc.stderr == ""
    assert not [noise for noise in NOISE if noise in proc.stdout]
    assert sorted(p.name for p in where.iterdir()) == ["home"], "MetaGPT's logs/ and workspace/ leaked into CWD"


def test_demo_random_key_is_shown_masked_only(tmp_path):
    proc = run_demo(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (masked,) = set(re.findall(r"api_key (\S+) \(random", proc.stdout))
    assert re.fullmatch(r"[\w-]{3}\.\.\.[\w-]{3}", masked)
    # secrets.token_urlsafe(24) is 32 characters of [A-Za-z0-9_-]; nothing that long may appear
    long_words = set(re.findall(r"[A-Za-z0-9_-]{24,}", proc.stdout + proc.stderr))
    assert not long_words - {"METAGPT_VLLM_FIX_DISABLE", "--enable-auto-tool-choice"}


def test_demo_on_httpx_028_shows_upstreams_typeerror_at_llm_then_goes_on(tmp_path, httpx_028):  # noqa: F811
    proc = run_demo(tmp_path, "--api-key", KEY, PYTHONPATH=str(httpx_028))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert proc.stderr == "", "the half-built client's failed close is the same failure, not told twice"
    assert f"httpx        {HTTPX_028}, which no longer takes the proxies= openai 1.6.0 passes" in out
    then, today = scene(out, "MetaGPT 0.7's time: vLLM 0.3.3"), scene(out, TODAY)
    for told in (then, today, scene(out, DATA_INTERPRETER)):
        upstream, key_only, fixed = steps(told)
        assert "server saw   no request" in upstream
        assert "LLM() raised TypeError: AsyncClient.__init__() got an unexpected keyword argument 'proxies'" \
            in upstream
        assert f"/v1/chat/completions, Authorization: Bearer {mask(KEY)}, max_tokens 4096 -> 400" in key_only
        assert "MetaGPT returned " in fixed and "the server's own count" in fixed
    assert "This model's maximum context length is 4096 tokens" in steps(then)[1]
    assert "default chat template is no longer allowed" in steps(today)[1]
    assert "ok      The seed's config works as written, on vLLM 0.3.3 and on vLLM 0.32" in out
