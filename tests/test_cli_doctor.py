"""``metagpt-vllm-fix doctor`` against ``metagpt-vllm-fix serve``, both real processes on 127.0.0.1.

Two servers play two vLLM generations: the current one (0.32.0, the default: ``/version``, max_tokens clamped)
and MetaGPT 0.7's (0.3.3: no ``/version``, prompt + max_tokens <= max_model_len). Each doctor run is
``python -m metagpt_vllm_fix doctor`` in a child of the zygote (tests/zygote.py: MetaGPT's dependencies imported
once, the plugin's .pth line run with the scenario's environment, MetaGPT imported by the doctor itself), so the
scenarios that only read the shared servers run together in a small thread pool; the two whose wall time is the
point (closed port, silent server) run alone. The verdicts themselves are pure functions of doctor.py, tested
directly at the end.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import httpx
import pytest

from conftest import clean_env, run_module, write_config
from metagpt_vllm_fix import doctor as dr
from metagpt_vllm_fix._activation import FixStatus, Status
from metagpt_vllm_fix.masking import mask
from metagpt_vllm_fix.report import OK, PROBLEM, WARNING
from metagpt_vllm_fix.server import DEFAULT_MODEL, VLLMServer
from metagpt_vllm_fix.vllm_versions import for_version

# The shared ``runs`` fixture runs about 40 doctors (each imports MetaGPT itself): its first test may need more than
# the suite's 300 s when the machine is busy.
pytestmark = pytest.mark.timeout(900)

KEY = "token-doctor-0123456789"
WRONG_KEY = "token-wrong-9876543210"
CLI = [sys.executable, "-m", "metagpt_vllm_fix"]
QUIET = "  calc_usage: false\n"  # no tiktoken hint: the verdicts below depend on the server only
FIXES_ON = {"METAGPT_VLLM_FIX_DISABLE": ""}  # whatever the caller's environment says, every fix on


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return f"rc={self.returncode} after {self.seconds:.1f} s\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def start_serve(tmp: Path, *args: str, **env: str) -> tuple[subprocess.Popen, str, Path]:
    """``serve --port 0 ...`` as a subprocess; returns (process, base_url, stdout file) once /health answers."""
    out = tmp / "serve.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen([*CLI, "serve", "--port", "0", *args], stdout=sink, stderr=subprocess.PIPE,
                                text=True, env=clean_env(tmp, **env), cwd=str(tmp))
    deadline = time.monotonic() + 30
    base_url = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"URL\s+(http://127\.0\.0\.1:\d+/v1)", out.read_text())
        if found:
            base_url = found.group(1)
            try:
                if httpx.get(base_url[:-3] + "/health", timeout=1).status_code == 200:
                    return proc, base_url, out
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"serve did not come up (url={base_url}): {out.read_text()} {proc.stderr.read()}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """One ``serve --api-key KEY --chat-template llama-2-chat`` (vLLM 0.32.0, max_model_len 4096, a model with
    Llama-2-chat's template) for the whole module; yields its base_url."""
    proc, base_url, _ = start_serve(tmp_path_factory.mktemp("serve"), "--api-key", KEY, "--chat-template",
                                    "llama-2-chat")
    yield base_url
    stop(proc)


@pytest.fixture(scope="module")
def server_none(tmp_path_factory) -> Iterator[str]:
    """``serve --api-key KEY``: vLLM 0.32.0 serving the seed's model as published, without a chat template."""
    proc, base_url, _ = start_serve(tmp_path_factory.mktemp("serve-none"), "--api-key", KEY)
    yield base_url
    stop(proc)


@pytest.fixture(scope="module")
def server_mistral(tmp_path_factory) -> Iterator[str]:
    """``serve --api-key KEY --chat-template mistral-instruct``: a template that refuses the system role."""
    proc, base_url, _ = start_serve(tmp_path_factory.mktemp("serve-mistral"), "--api-key", KEY, "--chat-template",
                                    "mistral-instruct")
    yield base_url
    stop(proc)


@pytest.fixture(scope="module")
def server_033(tmp_path_factory) -> Iterator[str]:
    """``serve --api-key KEY --vllm-version 0.3.3`` (max_model_len 4096): the seed's own setup."""
    proc, base_url, _ = start_serve(tmp_path_factory.mktemp("serve-033"), "--api-key", KEY, "--vllm-version", "0.3.3")
    yield base_url
    stop(proc)


def config_text(base_url: str, api_key: str = KEY, model: str = DEFAULT_MODEL, max_token: Optional[int] = 512,
                quiet: bool = True) -> str:
    """The seed's config, with a max_token that fits every generation's rule for 4096 tokens (None: MetaGPT's
    default 4096, which vLLM 0.3 refuses for every request) and, when ``quiet``, calc_usage off."""
    return (f"llm:\n  api_type: open_llm\n  base_url: '{base_url}'\n  model: '{model}'\n  api_key: {api_key}\n"
            + (f"  max_token: {max_token}\n" if max_token is not None else "") + (QUIET if quiet else ""))


def doctor(tmp: Path, config: Optional[str], *args: str, home: Optional[Path] = None, **env: str) -> Run:
    """Run ``python -m metagpt_vllm_fix doctor`` (a zygote child); ``config`` text goes to a file passed with
    ``--config``."""
    argv = ["doctor", *args]
    if config is not None:
        path = tmp / "config2.yaml"
        path.write_text(config)
        argv += ["--config", str(path)]
    home = home or tmp / "home"
    home.mkdir(exist_ok=True)
    started = time.monotonic()
    proc = run_module("metagpt_vllm_fix", *argv, env=clean_env(home, **env), cwd=tmp, timeout=120)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def lines(run: Run, level: str) -> list[str]:
    return [line for line in run.stdout.splitlines() if line.startswith(level + " ")]


def strings(obj) -> Iterator[str]:
    """Every key and string value in a JSON document."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield from strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from strings(value)


SCENARIOS = {
    "ok": lambda url: (config_text(url), ()),
    "ok-json": lambda url: (config_text(url), ("--json",)),
    "wrong-key": lambda url: (config_text(url, WRONG_KEY), ()),
    "wrong-key-json": lambda url: (config_text(url, WRONG_KEY), ("--json",)),
    "model-not-served": lambda url: (config_text(url, model="mistral-7b-instruct"), ()),
    "max-token-at-context": lambda url: (config_text(url, max_token=4096), ()),
    "max-token-at-context-json": lambda url: (config_text(url, max_token=4096), ("--json",)),
    "max-token-little-room": lambda url: (config_text(url, max_token=3900), ()),
    "max-token-above-context": lambda url: (config_text(url, max_token=5000), (), FIXES_ON),
    "max-token-above-context-fix-off": lambda url: (config_text(url, max_token=5000), (),
                                                    {"METAGPT_VLLM_FIX_DISABLE": "max_tokens"}),
    "api-key-fix-off": lambda url: (config_text(url), (), {"METAGPT_VLLM_FIX_DISABLE": "api_key"}),
    "disable-names-no-fix": lambda url: (config_text(url), (), {"METAGPT_VLLM_FIX_DISABLE": "usage,max-token"}),
    "yaml-error": lambda url: (f"llm:\n  api_type: open_llm\n  base_url: {url}\n   model: x\n  api_key: {KEY}\n", ()),
    "yaml-error-json": lambda url: (f"llm:\n  api_type: open_llm\n  base_url: {url}\n   model: x\n"
                                    f"  api_key: {KEY}\n", ("--json",)),
    "no-api-key": lambda url: (f"llm:\n  api_type: open_llm\n  base_url: '{url}'\n  model: m\n", ()),
    "automatic-off": lambda url: (config_text(url), (), {"METAGPT_VLLM_FIX": "0"}),
    "api-type-openai": lambda url: (config_text(url).replace("api_type: open_llm", "api_type: openai"), ()),
    "key-with-spaces": lambda url: (config_text(url, api_key=f"' {KEY} '"), ()),
    "tiktoken-not-cached": lambda url: (config_text(url, quiet=False), ("--json",),
                                        {"TIKTOKEN_CACHE_DIR": "{tmp}/empty-tiktoken-cache", **FIXES_ON}),
    "tiktoken-not-cached-usage-off": lambda url: (config_text(url, quiet=False), ("--json",),
                                                  {"TIKTOKEN_CACHE_DIR": "{tmp}/empty-tiktoken-cache",
                                                   "METAGPT_VLLM_FIX_DISABLE": "usage"}),
}

# The same doctor against the emulator playing vLLM 0.3.3 (MetaGPT 0.7's time): no /version, and
# prompt + max_tokens <= max_model_len, so the seed's config (no max_token line: 4096) is refused upstream.
SCENARIOS_033 = {
    "033-seed": lambda url: (config_text(url, max_token=None, quiet=False), (),
                             {"TIKTOKEN_CACHE_DIR": "{tmp}/empty-tiktoken-cache", **FIXES_ON}),
    "033-seed-json": lambda url: (config_text(url, max_token=None), ("--json",), FIXES_ON),
    "033-seed-fix-off": lambda url: (config_text(url, max_token=None), (),
                                     {"METAGPT_VLLM_FIX_DISABLE": "max_tokens"}),
    "033-little-room": lambda url: (config_text(url, max_token=3900), (), FIXES_ON),
    "033-little-room-fix-off": lambda url: (config_text(url, max_token=3900), (),
                                            {"METAGPT_VLLM_FIX_DISABLE": "max_tokens"}),
    "033-fits": lambda url: (config_text(url), ()),
}


# The seed's server as published today: vLLM 0.32 serving a model without a chat template (serve's default), and a
# model whose template refuses MetaGPT's system message.
SCENARIOS_TEMPLATES = {
    "none-seed": lambda url: (config_text(url), (), FIXES_ON),
    "none-fix-off": lambda url: (config_text(url), (), {"METAGPT_VLLM_FIX_DISABLE": "chat_template"}),
}
SCENARIOS_MISTRAL = {
    "mistral": lambda url: (config_text(url), (), FIXES_ON),
    "mistral-fix-off": lambda url: (config_text(url), (), {"METAGPT_VLLM_FIX_DISABLE": "system_role"}),
}


@pytest.fixture(scope="module")
def runs(server, server_033, server_none, server_mistral, tmp_path_factory) -> dict[str, Run]:
    """Every scenario of SCENARIOS, SCENARIOS_033 and the template ones, run against its shared server (two at a
    time)."""
    plan = {**{name: (make, server) for name, make in SCENARIOS.items()},
            **{name: (make, server_033) for name, make in SCENARIOS_033.items()},
            **{name: (make, server_none) for name, make in SCENARIOS_TEMPLATES.items()},
            **{name: (make, server_mistral) for name, make in SCENARIOS_MISTRAL.items()}}

    def one(name: str) -> Run:
        make, url = plan[name]
        config, args, *env = make(url)
        tmp = tmp_path_factory.mktemp(name)
        return doctor(tmp, config, *args, **{k: v.format(tmp=tmp) for k, v in (env[0] if env else {}).items()})

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(one, name) for name in plan}
    return {name: future.result() for name, future in futures.items()}


ASKED = "asked as MetaGPT does (its open_llm provider from this config, system + user message, streamed"


def ask_line(run: Run, asked: str = ASKED) -> list[str]:
    """The ``ask`` check (or the one whose line holds ``asked``): its first line (with its mark) and the continuation
    lines under it."""
    out = run.stdout.splitlines()
    (start,) = [i for i, line in enumerate(out) if asked in line]
    rest = [line.strip() for line in itertools.takewhile(lambda line: line.startswith("  "), out[start + 1:])]
    return [out[start], *rest]


def exchanges(run: Run) -> list[str]:
    """The HTTP requests the ``ask`` check lists, without the fixes' notes."""
    return [line for line in ask_line(run)[1:] if line.startswith(("POST ", "GET "))]


def fail_fast_note(run: Run) -> str:
    """What the fail_fast fix said under the ``ask`` check (it explains an error a retry cannot change)."""
    (note,) = [line for line in ask_line(run)[1:] if line.startswith("the fail_fast fix acted: ")]
    return note


def assert_clean(run: Run) -> None:
    assert "Traceback" not in run.output, run
    assert KEY not in run.output and WRONG_KEY not in run.output, run


# --- verdicts -------------------------------------------------------------------------------------------------


def test_right_key_and_served_model_is_ok_exit_0(runs):
    run = runs["ok"]
    assert run.returncode == 0, run
    assert lines(run, "problem") == [] and lines(run, "warning") == [], run
    assert "server answers with this key" in run.stdout
    assert f"with the plugin loaded, sends api_key {mask(KEY)} (the configured one)" in run.stdout
    assert "ok      server: vLLM 0.32.0, generation 0.18+: max_tokens <= max_model_len" in run.stdout
    assert "ok      fixes: api_key active, max_tokens active, usage active" in run.stdout
    first, *requests = ask_line(run)
    assert first.startswith("ok      " + ASKED) and "an answer came back, first token 'echo: '" in first
    assert requests == [f"POST /v1/chat/completions (Bearer {mask(KEY)}, max_tokens 512) -> 200"]
    assert run.stdout.rstrip().endswith("verdict: ok (exit 0): all good")
    assert run.stderr == ""
    assert_clean(run)


def test_wrong_key_is_a_problem_explaining_401_both_key_sources_and_health(runs):
    run = runs["wrong-key"]
    assert run.returncode == 1, run
    problem, ask = lines(run, "problem")
    assert ASKED in ask and "no answer. The server answered 401: Unauthorized. The server refuses" in ask
    assert "401 Unauthorized" in problem and mask(WRONG_KEY) in problem
    assert "--api-key" in problem and "VLLM_API_KEY" in problem
    assert "/health answers 200 without a key" in problem
    assert_clean(run)


def test_model_not_served_is_a_problem_with_the_served_model_name_hint(runs):
    run = runs["model-not-served"]
    assert run.returncode == 1, run
    problem, ask = lines(run, "problem")
    assert "The server answered 404: The model `mistral-7b-instruct` does not exist." in ask
    assert "'mistral-7b-instruct' is not served" in problem and DEFAULT_MODEL in problem
    assert "--served-model-name mistral-7b-instruct" in problem
    assert_clean(run)


# --- llm.max_token, by the server's generation and the max_tokens fix -------------------------------------------


def test_max_token_equal_to_max_model_len_is_ok_where_vllm_clamps(runs):
    run = runs["max-token-at-context"]
    assert run.returncode == 0, run
    assert lines(run, "problem") == [] and lines(run, "warning") == [], run
    (line,) = [line for line in lines(run, "ok") if "llm.max_token" in line]
    assert "llm.max_token 4096 fits the server's max_model_len 4096 under vLLM 0.18+'s rule" in line
    assert "clamps max_tokens" in line
    assert "verdict: ok (exit 0): all good" in run.stdout
    assert_clean(run)


def test_server_version_and_generation_are_in_the_json(runs):
    document = json.loads(runs["max-token-at-context-json"].stdout)
    server = document["server"]
    assert (server["vllm_version"], server["generation"], server["version_assumed"]) == ("0.32.0", "0.18+", False)
    assert server["version_status"] == 200 and server["max_model_len"] == 4096
    (check,) = [c for c in document["checks"] if c["id"] == "max-token"]
    assert check["level"] == "ok"
    assert [f["name"] for f in document["plugin"]["fixes"]] == ["api_key", "max_tokens", "usage", "chat_template",
                                                                "system_role", "httpx", "fail_fast", "tools", "formats"]
    assert document["plugin"]["fixes_in_effect"] == {"api_key": True, "max_tokens": True, "usage": True,
                                                     "chat_template": True, "system_role": True,
                                                     "httpx": False, "fail_fast": True,
                                                     "tools": True, "formats": True}  # httpx 0.27: idle


def test_max_token_leaving_little_room_is_ok_where_vllm_clamps(runs):
    run = runs["max-token-little-room"]
    assert run.returncode == 0, run
    assert lines(run, "warning") == [] and lines(run, "problem") == [], run
    assert "llm.max_token 3900 fits the server's max_model_len 4096" in run.stdout
    assert_clean(run)


def test_max_token_above_max_model_len_is_a_handled_warning_while_the_max_tokens_fix_is_on(runs):
    run = runs["max-token-above-context"]
    assert run.returncode == 0, run
    (warning,) = lines(run, "warning")
    assert "llm.max_token 5000 > the server's max_model_len 4096" in warning and "every request gets 400" in warning
    assert "handled: the max_tokens fix resends without max_tokens" in warning
    assert "Set llm.max_token to e.g. 1024" in warning
    first, *details = ask_line(run)
    assert first.startswith("ok      ") and "an answer came back" in first and "through the max_tokens fix" in first
    assert details[:2] == [f"POST /v1/chat/completions (Bearer {mask(KEY)}, max_tokens 5000) -> 400",
                           f"POST /v1/chat/completions (Bearer {mask(KEY)}, no max_tokens) -> 200"]
    assert details[2].startswith("the max_tokens fix acted: llm.max_token 5000 does not fit"), details
    assert "verdict: warning (exit 0)" in run.stdout
    assert_clean(run)


def test_max_token_above_max_model_len_is_a_problem_when_the_max_tokens_fix_is_disabled(runs):
    run = runs["max-token-above-context-fix-off"]
    assert run.returncode == 1, run
    problem, ask = lines(run, "problem")
    assert ("no answer. The server answered 400: max_tokens=5000 cannot be greater than max_model_len=4096. "
            "Please request fewer output tokens.") in ask
    assert "the max_tokens fix is off (turned off by METAGPT_VLLM_FIX_DISABLE). Set a smaller llm.max_token" in ask
    assert "llm.max_token 5000 > the server's max_model_len 4096" in problem
    assert "the max_tokens fix is off: turned off by METAGPT_VLLM_FIX_DISABLE" in problem
    assert "Set llm.max_token to e.g. 1024" in problem
    assert "fixes: api_key active, max_tokens off (METAGPT_VLLM_FIX_DISABLE), usage active" in run.stdout
    assert_clean(run)


def test_vllm_033_without_version_endpoint_is_named_as_an_assumption(runs):
    run = runs["033-seed"]
    assert ("ok      server: no /version (404): a vLLM of the 0.3 era or another OpenAI-compatible server; "
            "assuming vLLM 0.3's rules: prompt + max_tokens <= max_model_len") in run.stdout
    document = json.loads(runs["033-seed-json"].stdout)
    server = document["server"]
    assert (server["vllm_version"], server["generation"], server["version_assumed"]) == (None, "0.3", True)
    assert server["version_status"] == 404


def test_seed_config_on_vllm_033_is_a_handled_warning_naming_the_value_to_set(runs):
    run = runs["033-seed"]
    assert run.returncode == 0, run
    (warning,) = lines(run, "warning")
    assert "llm.max_token 4096 >= the server's max_model_len 4096" in warning
    assert "every request gets 400 under vLLM 0.3's rule (assumed)" in warning
    assert "handled: the max_tokens fix resends without max_tokens" in warning
    assert "one extra request each time" in warning
    assert "Set llm.max_token to e.g. 1024" in warning
    first, *details = ask_line(run)
    assert first.startswith("ok      ") and "through the max_tokens fix" in first, run
    assert [d.rsplit(" -> ", 1)[1] for d in details[:2]] == ["400", "200"], details
    assert "verdict: warning (exit 0)" in run.stdout
    assert run.stderr == ""
    assert_clean(run)


def test_seed_config_on_vllm_033_is_a_problem_with_the_max_tokens_fix_disabled(runs):
    run = runs["033-seed-fix-off"]
    assert run.returncode == 1, run
    problem, ask = lines(run, "problem")
    assert "no answer. The server answered 400: This model's maximum context length is 4096 tokens." in ask
    assert "Set a smaller llm.max_token (e.g. 1024)" in ask
    assert exchanges(run) == [f"POST /v1/chat/completions (Bearer {mask(KEY)}, max_tokens 4096) -> 400"]
    assert fail_fast_note(run).startswith("the fail_fast fix acted: the server refused the request (400)")
    assert "llm.max_token 4096 >= the server's max_model_len 4096" in problem and "every request gets 400" in problem
    assert "the max_tokens fix is off: turned off by METAGPT_VLLM_FIX_DISABLE" in problem
    assert "Set llm.max_token to e.g. 1024" in problem
    assert_clean(run)


def test_little_room_for_the_prompt_on_vllm_033_is_handled_with_the_fix_and_a_problem_without(runs):
    on, off = runs["033-little-room"], runs["033-little-room-fix-off"]
    assert on.returncode == 0, on
    (warning,) = lines(on, "warning")
    assert "leaves only 196 of max_model_len 4096" in warning and "prompts longer than 196 tokens get 400" in warning
    assert "handled: the max_tokens fix resends those without max_tokens" in warning
    assert "Set llm.max_token to e.g. 1024" in warning
    assert off.returncode == 1, off
    (problem,) = lines(off, "problem")
    assert "leaves only 196 of max_model_len 4096" in problem and "Set llm.max_token to e.g. 1024" in problem
    assert ask_line(off)[0].startswith("ok      "), "the doctor's short prompt fits: only longer ones get 400"
    assert_clean(on)
    assert_clean(off)


def test_max_token_that_fits_vllm_033_is_ok(runs):
    run = runs["033-fits"]
    assert run.returncode == 0, run
    assert lines(run, "warning") == [] and lines(run, "problem") == [], run
    assert "llm.max_token 512 leaves 3584 of max_model_len 4096 tokens for the prompt" in run.stdout
    assert_clean(run)


def test_a_disable_word_naming_no_fix_is_a_warning_in_the_fixes_line(runs):
    run = runs["disable-names-no-fix"]
    assert run.returncode == 0, run
    (warning,) = lines(run, "warning")
    assert warning.startswith("warning fixes: api_key active, max_tokens active, usage off (METAGPT_VLLM_FIX_DISABLE), "
                              "chat_template active, system_role active, httpx idle")
    assert ("METAGPT_VLLM_FIX_DISABLE names no fix: max_token (the fixes are api_key, max_tokens, usage, "
            "chat_template, system_role, httpx, fail_fast, tools, formats)") in warning
    assert run.stderr == ""
    assert_clean(run)


@pytest.mark.parametrize("name, message", [
    ("yaml-error", "is not valid YAML: mapping values are not allowed here (line 4, column 9)"),
    ("no-api-key", "llm.api_key: Field required"),
])
def test_malformed_config_is_a_config_error_exit_2(runs, name, message):
    run = runs[name]
    assert run.returncode == 2, run
    (problem,) = lines(run, "problem")
    assert problem.startswith("problem config error:") and message in problem
    assert "verdict: error (exit 2)" in run.stdout
    assert run.stderr == ""
    assert_clean(run)


def test_automatic_activation_off_is_a_problem_for_open_llm(runs):
    run = runs["automatic-off"]
    assert run.returncode == 1, run
    problem, ask = lines(run, "problem")
    assert "automatic activation is off (METAGPT_VLLM_FIX=0)" in problem and "'sk-xxx'" in problem
    assert "no fix, as the `metagpt` command here: automatic activation is off): no answer" in ask
    assert "MetaGPT sent its hard-coded 'sk-xxx', not llm.api_key" in ask
    assert ask_line(run)[1:] == ["POST /v1/chat/completions (Bearer sk-xxx, max_tokens 512) -> 401"]
    assert_clean(run)


def test_api_type_openai_at_a_self_hosted_server_suggests_open_llm(runs):
    run = runs["api-type-openai"]
    assert run.returncode == 0, run
    warning, function_call = lines(run, "warning")
    assert "api_type openai pointed at 127.0.0.1" in warning and "open_llm" in warning
    # the fixes act on open_llm only: the server's refusal of MetaGPT's function call stands
    assert "asked as the Data Interpreter does" in function_call and "tools fix is not in effect" in function_call
    assert "server answers with this key" in run.stdout
    (ask,) = [line for line in lines(run, "ok") if line.startswith("ok      asked as MetaGPT does")]
    assert "(its openai provider from this config" in ask and "an answer came back" in ask
    assert_clean(run)


def test_whitespace_around_the_key_is_a_warning_and_the_trimmed_key_works(runs):
    run = runs["key-with-spaces"]
    assert run.returncode == 0, run
    (warning,) = lines(run, "warning")
    assert "whitespace around it: the plugin sends it trimmed" in warning
    assert f"with the plugin loaded, sends api_key {mask(KEY)} (the configured one)" in run.stdout
    assert "server answers with this key" in run.stdout
    assert run.stderr == "", "the plugin's own log line must not leak into the doctor's output"
    assert_clean(run)


def test_empty_tiktoken_cache_is_no_warning_when_the_server_supplies_usage(runs):
    run = runs["tiktoken-not-cached"]
    assert run.returncode == 0, run
    (check,) = [c for c in json.loads(run.stdout)["checks"] if c["id"] == "tiktoken"]
    assert check["level"] == "ok"
    assert "the usage fix takes streamed answers' counts from the server" in check["message"]
    assert "stream_options.include_usage" in check["message"] and "empty-tiktoken-cache" in check["message"]
    on_033 = runs["033-seed"]
    (line,) = [line for line in on_033.stdout.splitlines() if "token counting" in line]
    assert line.startswith("ok ") and "on each stream's finish chunk" in line


def test_empty_tiktoken_cache_is_explained_when_the_usage_fix_is_off(runs):
    run = runs["tiktoken-not-cached-usage-off"]
    assert run.returncode == 0, run
    (check,) = [c for c in json.loads(run.stdout)["checks"] if c["id"] == "tiktoken"]
    assert "cl100k_base" in check["message"] and "empty-tiktoken-cache" in check["message"]
    assert "the usage fix is off: turned off by METAGPT_VLLM_FIX_DISABLE" in check["message"]
    if check["level"] == "warning":  # offline (as in CI sandboxes); online, tiktoken just downloads it once
        assert "usage calculation failed!" in check["message"] and "calc_usage: false" in check["message"]
        assert "take usage out of METAGPT_VLLM_FIX_DISABLE" in check["message"]
    else:
        assert check["level"] == "ok"


# --- the live ask: MetaGPT's own request, the fixes as this environment has them ------------------------------


def test_the_api_key_fix_switched_off_is_named_by_the_401_that_comes_back(runs):
    run = runs["api-key-fix-off"]
    assert run.returncode == 1, run
    assert "ok      server answers with this key" in run.stdout, "the model list is asked with the configured key"
    provider, ask = lines(run, "problem")
    assert "still sends 'sk-xxx'" in provider
    assert "no answer. The server answered 401: Unauthorized. MetaGPT sent its hard-coded 'sk-xxx', not " \
           "llm.api_key: the api_key fix is not in effect (turned off by METAGPT_VLLM_FIX_DISABLE)." in ask
    assert exchanges(run) == ["POST /v1/chat/completions (Bearer sk-xxx, max_tokens 512) -> 401"]
    assert "refused api_key sk-xxx, MetaGPT 0.7's hard-coded placeholder (401)" in fail_fast_note(run)
    assert_clean(run)


def test_json_ask_names_each_request_and_the_fix_that_acted(runs):
    ask = json.loads(runs["033-seed-json"].stdout)["ask"]
    assert ask["answered"] and ask["first_token"] == "echo: " and ask["fixes_acted"] == ["max_tokens"]
    assert [(r["path"], r["max_tokens"], r["status"]) for r in ask["requests"]] == [
        ("/v1/chat/completions", 4096, 400), ("/v1/chat/completions", None, 200)]
    (note,) = ask["fix_messages"]
    assert note["fix"] == "max_tokens" and "does not fit meta-llama/Llama-2-7b-hf's context of 4096" in note["message"]
    off = json.loads(runs["ok-json"].stdout)
    assert [c["id"] for c in off["checks"]].index("ask") > [c["id"] for c in off["checks"]].index("max-token")


def test_ask_stops_reading_after_the_first_token_of_a_stream_the_server_keeps_open(tmp_path):
    with VLLMServer(api_keys=[KEY], done_delay=60) as server:  # the stream's end comes a minute after its text
        run = doctor(tmp_path, config_text(server.base_url), "--timeout", "5", "--json")
    assert run.returncode == 0, run
    ask = json.loads(run.stdout)["ask"]
    assert ask["answered"] and ask["first_token"] == "echo: " and ask["seconds"] < 5, ask
    assert run.seconds < 30, run


class SilentChat:
    """Answers the model list like vLLM 0.3 (no /version) and accepts chat requests without ever answering."""

    def __init__(self) -> None:
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = json.dumps({"object": "list", "data": [{"id": DEFAULT_MODEL, "object": "model",
                                                                "max_model_len": 4096}]}).encode()
                self.send_response(200 if self.path == "/v1/models" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.release.wait(60)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def __enter__(self) -> SilentChat:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.http.shutdown()
        self.http.server_close()


def test_a_chat_request_that_gets_no_answer_is_a_problem_within_the_timeout(tmp_path):
    with SilentChat() as server:
        run = doctor(tmp_path, config_text(server.base_url), "--timeout", "3")
    assert run.returncode == 1, run
    ok_models = [line for line in lines(run, "ok") if "server answers with this key" in line]
    assert ok_models, run
    (ask,) = lines(run, "problem")
    assert ASKED in ask and "no answer. no answer within" in ask and "try a larger --timeout" in ask
    assert ask_line(run)[1:] == [f"POST /v1/chat/completions (Bearer {mask(KEY)}, max_tokens 512) -> no answer"]
    assert run.seconds < 3 + 20, run
    assert_clean(run)


def test_the_seed_server_without_a_chat_template_answers_through_the_chat_template_fix_exit_0(runs):
    run = runs["none-seed"]
    assert run.returncode == 0, run
    assert "ok      server answers with this key" in run.stdout, "the model list cannot tell: only a chat request can"
    first, *details = ask_line(run)
    assert first.startswith("warning " + ASKED) and "an answer came back" in first, run
    assert "through the chat_template fix" in first and "without the chat_template fix every request gets 400" in first
    assert details[:2] == [f"POST /v1/chat/completions (Bearer {mask(KEY)}, max_tokens 512) -> 400",
                           f"POST /v1/completions (Bearer {mask(KEY)}, max_tokens 512) -> 200"]
    assert details[2].startswith("the chat_template fix acted: ") and "has no chat template" in details[2]
    assert "/v1/completions" in details[2] and '--chat-template "$(metagpt-vllm-fix chat-template llama-2)"' \
        in details[2]
    warnings = lines(run, "warning")
    assert len(warnings) == 2 and "constrained by the formats fix from the first ask" in warnings[1], warnings
    assert "verdict: warning (exit 0): 2 warnings (ask, formats) above" in run.stdout
    assert_clean(run)


def test_the_seed_servers_function_call_line_names_every_fix_that_acted_though_the_ask_drew_their_warnings(runs):
    first, *details = ask_line(runs["none-seed"], "asked as the Data Interpreter does")
    assert first.startswith("ok ") and "a function call came back through the tools fix" in first, first
    assert details[:4] == [f"POST /v1/chat/completions (Bearer {mask(KEY)}, max_tokens 512) -> 400",
                           "GET /version -> 200",
                           f"POST /v1/chat/completions (Bearer {mask(KEY)}, max_tokens 512, constrained) -> 400",
                           f"POST /v1/completions (Bearer {mask(KEY)}, max_tokens 512, constrained) -> 200"], details
    acted = [line.split(" fix acted: ")[0] for line in details if " fix acted: " in line]
    assert acted == ["the chat_template", "the tools"], details


def test_the_chat_template_fix_switched_off_is_named_by_the_400_and_its_remedy_exit_1(runs):
    run = runs["none-fix-off"]
    assert run.returncode == 1, run
    (ask,) = lines(run, "problem")
    assert ASKED in ask and ("no answer. The server answered 400: As of transformers v4.44, default chat template is "
                             "no longer allowed") in ask
    assert "has no chat template on this server and the chat_template fix is off (turned off by " \
           "METAGPT_VLLM_FIX_DISABLE)" in ask
    assert 'Remedy: start vLLM with --chat-template "$(metagpt-vllm-fix chat-template llama-2)"' in ask
    assert exchanges(run) == [f"POST /v1/chat/completions (Bearer {mask(KEY)}, max_tokens 512) -> 400"]
    assert "As of transformers v4.44" in fail_fast_note(run)
    assert_clean(run)


def test_a_template_refusing_the_system_role_answers_through_the_system_role_fix_and_fails_without(runs):
    on, off = runs["mistral"], runs["mistral-fix-off"]
    assert on.returncode == 0, on
    first, *details = ask_line(on)
    assert first.startswith("warning ") and "through the system_role fix" in first, on
    assert [d.rsplit(" -> ", 1)[1] for d in details[:2]] == ["400", "200"]
    assert details[2].startswith("the system_role fix acted: the chat template of") and "refuses the system role" \
        in details[2]
    assert off.returncode == 1, off
    (ask,) = lines(off, "problem")
    assert "The server answered 400: Conversation roles must alternate user/assistant/user/assistant/..." in ask
    assert "refuses the system message MetaGPT 0.7 always sends first; the system_role fix is off" in ask
    assert_clean(on)
    assert_clean(off)


# --- JSON -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, verdict, code, failing", [
    ("ok-json", "ok", 0, None),
    ("wrong-key-json", "problem", 1, ["server", "ask"]),
    ("yaml-error-json", "error", 2, ["config"]),
])
def test_json_carries_the_same_verdict_and_never_the_key(runs, name, verdict, code, failing):
    run = runs[name]
    assert run.returncode == code, run
    document = json.loads(run.stdout)
    assert (document["version"], document["verdict"], document["exit_code"]) == (1, verdict, code)
    assert document["metagpt_version"] == "0.7.7"
    assert document["plugin"]["code"] == "supported"
    problems = [c["id"] for c in document["checks"] if c["level"] == "problem"]
    assert problems == (failing or [])
    assert all(c["level"] in ("ok", "warning", "problem") for c in document["checks"])
    for text in strings(document):
        assert KEY not in text and WRONG_KEY not in text, text
    if code != 2:
        assert document["config"]["api_key"] == mask(KEY if verdict == "ok" else WRONG_KEY)
        assert document["server"]["status"] == (200 if verdict == "ok" else 401)
    if verdict == "ok":
        assert document["server"]["models"] == [DEFAULT_MODEL]
        assert document["server"]["max_model_len"] == 4096
    ask = document["ask"]
    assert ask["asked"] == (code != 2) and ask["answered"] == (verdict == "ok")
    if code == 1:
        assert (ask["error"], ask["status"], ask["message"]) == ("status", 401, "Unauthorized")
        assert ask["requests"] == [{"method": "POST", "path": "/v1/chat/completions", "max_tokens": 512,
                                    "authorization": f"Bearer {mask(WRONG_KEY)}", "status": 401,
                                    "constrained": False}]
    if verdict == "ok":
        assert ask["first_token"] == "echo: " and ask["fixes_acted"] == [] and ask["error"] is None


# --- the default paths ----------------------------------------------------------------------------------------


def test_without_config_option_reads_home_metagpt_config2_yaml(server, tmp_path):
    home = tmp_path / "home"
    write_config(home, server, api_key=KEY, extra="  max_token: 512\n" + QUIET)
    run = doctor(tmp_path, None, home=home)
    assert run.returncode == 0, run
    assert "config: ~/.metagpt/config2.yaml; not present: " in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"], "the doctor must not write logs/ or workspace/"
    assert_clean(run)


def test_no_config_file_anywhere_is_a_config_error_exit_2(tmp_path):
    run = doctor(tmp_path, None)
    assert run.returncode == 2, run
    assert "no config2.yaml found" in run.stdout and "~/.metagpt/config2.yaml" in run.stdout
    assert_clean(run)


# --- bounded network checks -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_closed_port_is_a_plain_connection_refused_problem(tmp_path):
    run = doctor(tmp_path, config_text(f"http://127.0.0.1:{free_port()}/v1"), "--timeout", "3")
    assert run.returncode == 1, run
    (problem,) = lines(run, "problem")
    assert "connection refused: nothing listens on 127.0.0.1:" in problem
    assert run.stderr == ""
    assert_clean(run)


def test_server_that_accepts_and_never_answers_ends_within_the_timeout(tmp_path):
    with socket.socket() as listener:  # accepts connections (kernel backlog) and never says a word
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        run = doctor(tmp_path, config_text(f"http://127.0.0.1:{port}/v1"), "--timeout", "2", "--json")
    assert run.returncode == 1, run
    document = json.loads(run.stdout)
    (problem,) = [c["message"] for c in document["checks"] if c["level"] == "problem"]
    assert f"127.0.0.1:{port} accepted the connection but sent no HTTP answer within 2 s" in problem
    assert document["server"]["error"] == "timeout"
    assert document["server"]["seconds"] < 2 + 1, "the network checks must end within --timeout"
    assert_clean(run)


# --- the verdicts as pure functions ---------------------------------------------------------------------------

V033, V0102, V032 = for_version("0.3.3"), for_version("0.10.2"), for_version("0.32.0")
ALL_ON = tuple(FixStatus(name, "active", "") for name in ("api_key", "max_tokens", "usage"))


def plugin(fixes=ALL_ON, code: str = "supported", switch: str = "auto", pth: Optional[str] = "/x.pth") -> Status:
    return Status(True, "active", code, "", "0.7.7", True, switch, pth, tuple(fixes))


@pytest.mark.parametrize("status, body, expected", [
    (200, {"version": "0.32.0"}, ("0.32.0", "")),
    (200, {"version": " 0.10.2 "}, ("0.10.2", "")),
    (404, None, (None, "no /version (404)")),
    (401, None, (None, "no /version (401)")),
    (200, "<html>", (None, "/version answered without a version")),
    (200, {"version": 7}, (None, "/version answered without a version")),
    (None, None, (None, "/version gave no answer")),
])
def test_read_version_takes_only_a_version_string_from_a_200(status, body, expected):
    assert dr.read_version(status, body) == expected


@pytest.mark.parametrize("version, generation, assumed", [
    ("0.32.0", "0.18+", False),
    ("0.18.0", "0.18+", False),
    ("0.17.1", "0.11", False),
    ("0.10.2", "0.10.2", False),
    (None, "0.3", True),
    ("not-a-version", "0.3", True),
    ("0.2.7", "0.3", True),
])
def test_server_generation_falls_back_to_vllm_03_rules_and_says_so(version, generation, assumed):
    found = dr.server_generation(version, "no /version (404)")
    assert (found.generation.name, found.assumed) == (generation, assumed)
    line = dr.describe_server(found)
    if assumed:
        assert "assuming vLLM 0.3's rules: prompt + max_tokens <= max_model_len" in line
        assert ("no /version (404)" if version is None else repr(version)) in line
    else:
        assert line.startswith(f"server: vLLM {version}, generation {generation}: ")


@pytest.mark.parametrize("generation, max_token, fix_on, level, words", [
    # vLLM 0.18+ clamps: only max_token > max_model_len is refused
    (V032, 4096, True, OK, "clamps max_tokens"),
    (V032, 4096, False, OK, "clamps max_tokens"),
    (V032, 4000, False, OK, "clamps max_tokens"),
    (V032, 4097, True, WARNING, "handled: the max_tokens fix resends without max_tokens"),
    (V032, 4097, False, PROBLEM, "the max_tokens fix is off: why"),
    (V032, 1024, False, OK, "leaves 3072 of max_model_len 4096 tokens"),
    # up to 0.17: prompt + max_tokens <= max_model_len
    (V033, 4096, True, WARNING, "every request gets 400"),
    (V033, 4096, False, PROBLEM, "every request gets 400"),
    (V0102, 4096, False, PROBLEM, "every request gets 400 under vLLM 0.10.2's rule"),
    (V033, 3900, True, WARNING, "prompts longer than 196 tokens get 400"),
    (V033, 3900, False, PROBLEM, "prompts longer than 196 tokens get 400"),
    (V033, 3840, False, OK, "leaves 256 of max_model_len 4096 tokens"),
])
def test_max_token_verdict_follows_the_generation_and_the_fix(generation, max_token, fix_on, level, words):
    found, message = dr.max_token_verdict(generation, max_token, 4096, fix_on, "why")
    assert found == level, message
    assert words in message
    if level != OK:
        assert "Set llm.max_token to e.g. 1024" in message


def test_max_token_verdict_marks_assumed_rules():
    _, message = dr.max_token_verdict(V033, 512, 512, True, assumed=True)
    assert "under vLLM 0.3's rule (assumed): prompt + max_tokens <= max_model_len" in message
    assert "Set llm.max_token to e.g. 128" in message


@pytest.mark.parametrize("status, api_type, expected", [
    (plugin(), "open_llm", (True, "")),
    (plugin(), "openai", (False, "the fixes act on api_type open_llm only, not openai")),
    (plugin(fixes=[FixStatus("max_tokens", "off", "")]), "open_llm", (False, "turned off by METAGPT_VLLM_FIX_DISABLE")),
    (plugin(fixes=[FixStatus("max_tokens", "pending", "")]), "open_llm", (True, "")),
    (plugin(fixes=[FixStatus("max_tokens", "refused", "gate")]), "open_llm",
     (False, "the max_tokens fix is refused: gate")),
    (plugin(switch="off"), "open_llm", (False, "automatic activation is off in this environment")),
    (plugin(pth=None), "open_llm", (False, "automatic activation is off in this environment")),
    (plugin(code="fixed-upstream"), "open_llm", (False, "the plugin is inactive")),
    (None, "open_llm", (False, "the plugin is inactive")),
])
def test_a_fix_is_in_effect_only_for_open_llm_with_the_plugin_automatic_and_the_fix_on(status, api_type, expected):
    assert dr.fix_in_effect(status, "max_tokens", api_type) == expected


def test_fixes_verdict_shows_each_state_and_warns_on_refused_fixes_and_unknown_names():
    assert dr.fixes_verdict(ALL_ON, True) == (OK, "fixes: api_key active, max_tokens active, usage active")
    level, message = dr.fixes_verdict([*ALL_ON[:2], FixStatus("usage", "off", "turned off")], True)
    assert (level, message) == (OK, "fixes: api_key active, max_tokens active, usage off (METAGPT_VLLM_FIX_DISABLE)")
    level, message = dr.fixes_verdict([FixStatus("api_key", "refused", "shape changed")], False, ["typo"])
    assert level == WARNING
    assert "api_key refused (shape changed)" in message and "automatic activation is off" in message
    assert "METAGPT_VLLM_FIX_DISABLE names no fix: typo" in message


@pytest.mark.parametrize("generation, expected", [
    (V032, "stream_options.include_usage"), (V0102, "stream_options.include_usage"),
    (V033, "finish chunk"), (None, None),
])
def test_usage_source_comes_from_the_generation_table(generation, expected):
    source = dr.usage_source(generation)
    assert (source is None) if expected is None else (expected in source)


@pytest.mark.parametrize("fix_on, source, reachable, level, words", [
    (True, "it sends them", False, OK, "is not needed"),
    (True, None, False, OK, "else with an estimate"),
    (False, "it sends them", False, WARNING, "usage calculation failed!"),
    (False, None, True, OK, "it will be downloaded"),
])
def test_tiktoken_warning_only_when_the_usage_fix_cannot_spare_the_download(fix_on, source, reachable, level, words):
    found, message = dr.tiktoken_verdict("not cached in /c", fix_on, source, reachable, False,
                                         "" if fix_on else "turned off by METAGPT_VLLM_FIX_DISABLE")
    assert found == level and words in message, message


@pytest.mark.parametrize("yaml_key", ['"token-abc123\\r\\nX-Injected: 1"', '"t\u00f8ken-abc123-secret"'],
                         ids=["line-break", "non-ascii"])
def test_key_a_header_cannot_carry_is_a_problem_naming_what_is_sent_instead(tmp_path, yaml_key):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # no server: the verdict is about the config alone
    run = doctor(tmp_path, config_text(f"http://127.0.0.1:{port}/v1", api_key=yaml_key), "--json", **FIXES_ON)
    checks = {c["id"]: c for c in json.loads(run.stdout)["checks"]}
    assert checks["api-key-control"]["level"] == PROBLEM, run
    assert "cannot carry" in checks["api-key-control"]["message"] and "sk-xxx" in checks["api-key-control"]["message"]
    assert checks.get("provider", {}).get("level") != PROBLEM  # the provider builds; no second, misleading problem
    for part in ("X-Injected", "t\u00f8ken", "secret"):
        assert part not in run.output


def asked(*exchanges: tuple[str, int], **fields) -> dr.doctor_ask.AskResult:
    """An AskResult as the live check builds it, with (authorization, status) exchanges."""
    made = [dr.doctor_ask.Exchange("POST", "/v1/chat/completions", auth, 512, status) for auth, status in exchanges]
    return dr.doctor_ask.AskResult(asked=True, exchanges=made, **fields)


@pytest.mark.parametrize("result, off, words", [
    (asked(("Bearer sk-xxx", 401), error="status", status=401, message="Unauthorized"),
     {"api_key": "turned off by METAGPT_VLLM_FIX_DISABLE"},
     "401: Unauthorized. MetaGPT sent its hard-coded 'sk-xxx', not llm.api_key: the api_key fix is not in effect "
     "(turned off by METAGPT_VLLM_FIX_DISABLE)."),
    (asked(("Bearer tok...789", 401), error="status", status=401, message="Unauthorized"), {},
     "401: Unauthorized. The server refuses the configured key: see the server line above."),
    (asked(("Bearer tok...789", 404), error="status", status=404, message="The model `x` does not exist."), {},
     "404: The model `x` does not exist. The server does not serve llm.model 'm'"),
    (asked(("Bearer tok...789", 400), error="status", status=400,
           message="max_tokens=5000 cannot be greater than max_model_len=4096. Please request fewer output tokens. "
                   "(parameter=max_tokens, value=5000)"),
     {"max_tokens": "turned off by METAGPT_VLLM_FIX_DISABLE"},
     "which does not fit the context: the max_tokens fix is off (turned off by METAGPT_VLLM_FIX_DISABLE). "
     "Set a smaller llm.max_token (e.g. 1024)."),
    (asked(("Bearer tok...789", 400), error="status", status=400,
           message="Conversation roles must alternate user/assistant/user/assistant/..."), {},
     "400: Conversation roles must alternate user/assistant/user/assistant/..."),
    (asked(("Bearer tok...789", None), error="timeout", message="no answer within 2 s"), {},
     "no answer within 2 s: a model on CPU, or a busy server, may need longer for its first token"),
])
def test_a_failed_ask_is_a_problem_that_names_what_came_back_and_why(result, off, words):
    level, message = dr.doctor_ask.ask_verdict(result, off, "m")
    assert level == PROBLEM and ": no answer. " in message and words in message, message
    assert message.splitlines()[1:] == [f"  {e}" for e in result.exchanges]


def test_an_answer_is_ok_and_names_every_fix_that_acted():
    notes = [dr.doctor_ask.FixNote("max_tokens", "x"), dr.doctor_ask.FixNote("max_tokens", "y")]
    result = asked(("Bearer tok...789", 400), ("Bearer tok...789", 200), answered=True, first_token="Hi",
                   fixes=notes, seconds=0.5)
    level, message = dr.doctor_ask.ask_verdict(result, {})
    first, *rest = message.splitlines()
    assert level == OK and first.endswith("an answer came back, first token 'Hi' (the stream closed after it), "
                                          "through the max_tokens fix, in 0.5 s")
    assert rest[2:] == ["  the max_tokens fix acted: x", "  the max_tokens fix acted: y"]
    assert dr.doctor_ask.ask_verdict(asked(), {})[1].endswith("(no HTTP request was sent)")


def test_an_answer_only_through_a_fix_standing_in_for_the_servers_template_is_a_warning():
    notes = [dr.doctor_ask.FixNote("chat_template", "chat_template: no template here; Remedy: R."),
             dr.doctor_ask.FixNote("max_tokens", "m")]
    result = asked(("Bearer tok...789", 400), answered=True, first_token="Hi", fixes=notes, seconds=0.5)
    level, message = dr.doctor_ask.ask_verdict(result, {})
    first, *rest = message.splitlines()
    assert level == WARNING and "through the chat_template and max_tokens fixes, in 0.5 s. Handled" in first
    assert "without the chat_template fix every request gets 400" in first
    assert rest[1] == "  the chat_template fix acted: no template here; Remedy: R."


def test_the_ask_sends_what_aask_sends_a_system_then_a_user_message_built_by_the_provider_itself():
    from metagpt.configs.llm_config import LLMConfig
    from metagpt.provider.llm_provider_registry import create_llm_instance

    llm = create_llm_instance(LLMConfig(api_type="open_llm", base_url="http://127.0.0.1:9/v1", api_key="k", model="m"))
    system, user = dr.doctor_ask.messages_of(llm)
    assert system == llm._default_system_msg() and system["role"] == "system" and system["content"]
    assert user == {"role": "user", "content": dr.doctor_ask.PROMPT}
