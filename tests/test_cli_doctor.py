"""``metagpt-vllm-fix doctor`` against ``metagpt-vllm-fix serve``, both real processes on 127.0.0.1.

Each doctor run imports MetaGPT (~2-3 s), so the scenarios that only read the shared server run together in a
small thread pool; the two whose wall time is the point (closed port, silent server) run alone.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import httpx
import pytest

from conftest import clean_env, write_config
from metagpt_vllm_fix.masking import mask
from metagpt_vllm_fix.server import DEFAULT_MODEL

KEY = "token-doctor-0123456789"
WRONG_KEY = "token-wrong-9876543210"
CLI = [sys.executable, "-m", "metagpt_vllm_fix"]
QUIET = "  calc_usage: false\n"  # no tiktoken hint: the verdicts below depend on the server only


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


def start_serve(tmp: Path, *args: str, **env: str) -> "tuple[subprocess.Popen, str, Path]":
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


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> "tuple[int, str]":
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """One ``serve --api-key KEY`` (max_model_len 4096) for the whole module; yields its base_url."""
    proc, base_url, _ = start_serve(tmp_path_factory.mktemp("serve"), "--api-key", KEY)
    yield base_url
    stop(proc)


def config_text(base_url: str, api_key: str = KEY, model: str = DEFAULT_MODEL, max_token: int = 512) -> str:
    """The seed's config, with a max_token that fits the server's 4096 tokens (MetaGPT's default does not)."""
    return (f"llm:\n  api_type: open_llm\n  base_url: '{base_url}'\n  model: '{model}'\n  api_key: {api_key}\n"
            f"  max_token: {max_token}\n" + QUIET)


def doctor(tmp: Path, config: Optional[str], *args: str, home: Optional[Path] = None, **env: str) -> Run:
    """Run ``doctor`` in a fresh interpreter; ``config`` text goes to a file passed with ``--config``."""
    argv = [*CLI, "doctor", *args]
    if config is not None:
        path = tmp / "config2.yaml"
        path.write_text(config)
        argv += ["--config", str(path)]
    home = home or tmp / "home"
    home.mkdir(exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=clean_env(home, **env), cwd=str(tmp),
                          timeout=120)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def lines(run: Run, level: str) -> List[str]:
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
    "max-token-too-large": lambda url: (config_text(url, max_token=4096), ()),
    "max-token-little-room": lambda url: (config_text(url, max_token=3900), ()),
    "yaml-error": lambda url: (f"llm:\n  api_type: open_llm\n  base_url: {url}\n   model: x\n  api_key: {KEY}\n", ()),
    "yaml-error-json": lambda url: (f"llm:\n  api_type: open_llm\n  base_url: {url}\n   model: x\n"
                                    f"  api_key: {KEY}\n", ("--json",)),
    "no-api-key": lambda url: (f"llm:\n  api_type: open_llm\n  base_url: '{url}'\n  model: m\n", ()),
    "automatic-off": lambda url: (config_text(url), (), {"METAGPT_VLLM_FIX": "0"}),
    "api-type-openai": lambda url: (config_text(url).replace("api_type: open_llm", "api_type: openai"), ()),
    "key-with-spaces": lambda url: (config_text(url, api_key=f"' {KEY} '"), ()),
    "tiktoken-not-cached": lambda url: (config_text(url).replace(QUIET, ""), ("--json",),
                                        {"TIKTOKEN_CACHE_DIR": "{tmp}/empty-tiktoken-cache"}),
}


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory) -> Dict[str, Run]:
    """Every scenario of SCENARIOS, run against the shared server (two at a time)."""
    def one(name: str) -> Run:
        config, args, *env = SCENARIOS[name](server)
        tmp = tmp_path_factory.mktemp(name)
        return doctor(tmp, config, *args, **{k: v.format(tmp=tmp) for k, v in (env[0] if env else {}).items()})

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(one, name) for name in SCENARIOS}
    return {name: future.result() for name, future in futures.items()}


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
    assert run.stdout.rstrip().endswith("verdict: ok (exit 0): all good")
    assert run.stderr == ""
    assert_clean(run)


def test_wrong_key_is_a_problem_explaining_401_both_key_sources_and_health(runs):
    run = runs["wrong-key"]
    assert run.returncode == 1, run
    (problem,) = lines(run, "problem")
    assert "401 Unauthorized" in problem and mask(WRONG_KEY) in problem
    assert "--api-key" in problem and "VLLM_API_KEY" in problem
    assert "/health answers 200 without a key" in problem
    assert_clean(run)


def test_model_not_served_is_a_problem_with_the_served_model_name_hint(runs):
    run = runs["model-not-served"]
    assert run.returncode == 1, run
    (problem,) = lines(run, "problem")
    assert "'mistral-7b-instruct' is not served" in problem and DEFAULT_MODEL in problem
    assert "--served-model-name mistral-7b-instruct" in problem
    assert_clean(run)


def test_max_token_at_max_model_len_is_flagged_as_every_request_400(runs):
    run = runs["max-token-too-large"]
    assert run.returncode == 1, run
    (problem,) = lines(run, "problem")
    assert "llm.max_token 4096 >= the server's max_model_len 4096" in problem and "400" in problem
    assert_clean(run)


def test_max_token_leaving_little_room_for_the_prompt_is_a_warning_exit_0(runs):
    run = runs["max-token-little-room"]
    assert run.returncode == 0, run
    (warning,) = lines(run, "warning")
    assert "leaves only 196 of max_model_len 4096" in warning
    assert "verdict: warning (exit 0)" in run.stdout
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
    (problem,) = lines(run, "problem")
    assert "automatic activation is off (METAGPT_VLLM_FIX=0)" in problem and "'sk-xxx'" in problem
    assert_clean(run)


def test_api_type_openai_at_a_self_hosted_server_suggests_open_llm(runs):
    run = runs["api-type-openai"]
    assert run.returncode == 0, run
    (warning,) = lines(run, "warning")
    assert "api_type openai pointed at 127.0.0.1" in warning and "open_llm" in warning
    assert "server answers with this key" in run.stdout
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


def test_calc_usage_with_an_empty_tiktoken_cache_is_explained(runs):
    run = runs["tiktoken-not-cached"]
    assert run.returncode == 0, run
    (check,) = [c for c in json.loads(run.stdout)["checks"] if c["id"] == "tiktoken"]
    assert "cl100k_base" in check["message"] and "empty-tiktoken-cache" in check["message"]
    if check["level"] == "warning":  # offline (as in CI sandboxes); online, tiktoken just downloads it once
        assert "usage calculation failed!" in check["message"] and "calc_usage: false" in check["message"]
    else:
        assert check["level"] == "ok"


# --- JSON -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, verdict, code, failing", [
    ("ok-json", "ok", 0, None),
    ("wrong-key-json", "problem", 1, "server"),
    ("yaml-error-json", "error", 2, "config"),
])
def test_json_carries_the_same_verdict_and_never_the_key(runs, name, verdict, code, failing):
    run = runs[name]
    assert run.returncode == code, run
    document = json.loads(run.stdout)
    assert (document["version"], document["verdict"], document["exit_code"]) == (1, verdict, code)
    assert document["metagpt_version"] == "0.7.7"
    assert document["plugin"]["code"] == "supported"
    problems = [c["id"] for c in document["checks"] if c["level"] == "problem"]
    assert problems == ([failing] if failing else [])
    assert all(c["level"] in ("ok", "warning", "problem") for c in document["checks"])
    for text in strings(document):
        assert KEY not in text and WRONG_KEY not in text, text
    if code != 2:
        assert document["config"]["api_key"] == mask(KEY if verdict == "ok" else WRONG_KEY)
        assert document["server"]["status"] == (200 if verdict == "ok" else 401)
    if verdict == "ok":
        assert document["server"]["models"] == [DEFAULT_MODEL]
        assert document["server"]["max_model_len"] == 4096


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
    assert run.seconds < 2 + 20, f"2 s of network plus MetaGPT's import should not take {run.seconds:.1f} s"
    assert_clean(run)
