"""The doctor's frame: the registry of checks, the gathering each needs, choosing checks, and the report built from
the findings alone. Facts are built by hand (doctor_facts.py); the runs at the end are real CLI processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import clean_env
from doctor_facts import KEY, MODEL, config, facts, server
from metagpt_vllm_fix import doctor as dr
from metagpt_vllm_fix.doctor.check import Finding
from metagpt_vllm_fix.doctor.checks import CHECKS
from metagpt_vllm_fix.doctor.facts import CHAT, AskResult, Facts, MetagptFacts
from metagpt_vllm_fix.doctor.gather import GATHERERS, Run, closure
from metagpt_vllm_fix.doctor.output import as_json, exit_code, print_text, verdict, verdict_line
from metagpt_vllm_fix.masking import mask
from metagpt_vllm_fix.report import OK, PROBLEM, WARNING, Report
from metagpt_vllm_fix.server import VLLMServer

CLI = [sys.executable, "-m", "metagpt_vllm_fix"]
IDS = ["metagpt", "activation", "fixes", "httpx", "config", "config-files", "llm", "api-key-whitespace",
       "api-key-control", "cleartext", "api-type", "provider", "server-version", "server", "model", "max-token", "ask",
       "function-call", "formats", "tiktoken"]


def test_every_check_id_of_the_report_is_a_named_check_in_display_order():
    assert [c.name for c in CHECKS] == IDS
    assert all(c.description and "\n" not in c.description for c in CHECKS)


def test_the_slow_checks_come_last_and_the_ask_among_them_before_tiktoken():
    slow = [dr.slow(c) for c in CHECKS]
    assert slow == sorted(slow), "a fast check after a slow one"
    assert [c.name for c in CHECKS if dr.slow(c)] == ["server-version", "server", "model", "max-token", "ask",
                                                       "function-call", "formats", "tiktoken"]


def test_every_check_needs_only_known_gatherers_and_gets_them_in_order():
    names = {g.name for g in GATHERERS}
    for check in CHECKS:
        assert set(check.needs) <= names, check.name
    assert [g.name for g in closure(["ask"])] == ["metagpt", "config", "provider", "plugin", "server", "ask"]
    assert [g.name for g in closure(["config"])] == ["metagpt", "config"]
    assert not any(g.slow for g in closure(["plugin", "config"]))


def test_choosing_a_check_also_runs_the_one_that_says_why_its_facts_are_missing():
    unreachable = facts(server=server(reachable=False, error="refused", message="connection refused"))
    assert [f.id for f in dr.judge(unreachable, ["model"])] == ["server"]
    assert [f.id for f in dr.judge(facts(), ["model"])] == ["model"]
    broken = facts(config=None, config_error="c.yaml: llm.api_key: Field required")
    found = dr.judge(broken, ["max-token"])
    assert [f.id for f in found] == ["config"] and exit_code(found) == 2


@pytest.mark.parametrize("metagpt", [MetagptFacts(None, "metagpt-absent", False, "py"),
                                     MetagptFacts("0.7.7", "supported", True, "py", "ImportError: x")],
                         ids=["absent", "broken"])
def test_without_an_importable_metagpt_nothing_past_it_is_gathered_and_the_metagpt_check_says_why(metagpt, tmp_path):
    run = Run(None, 1.0)
    try:
        found = Facts(metagpt=metagpt)
        for gatherer in GATHERERS[1:]:
            found = gatherer.gather(found, run)
    finally:
        run.close()
    assert found == Facts(metagpt=metagpt)
    findings = dr.judge(found, ["ask"])
    assert [(f.id, f.level) for f in findings] == [("metagpt", PROBLEM)] and exit_code(findings) == 1


def test_the_whole_list_is_judged_when_no_check_is_chosen():
    found = dr.judge(facts())
    assert [f.id for f in found] == ["metagpt", "activation", "fixes", "config-files", "llm", "provider",
                                     "server-version", "server", "model", "max-token"]
    assert {f.level for f in found} == {OK}


@pytest.mark.parametrize("levels, code, word", [
    ([], 0, OK), ([OK, WARNING], 0, WARNING), ([OK, PROBLEM, WARNING], 1, PROBLEM),
])
def test_exit_code_and_verdict_follow_the_worst_finding(levels, code, word):
    found = [Finding("llm", level, "m") for level in levels]
    assert (exit_code(found), verdict(found)) == (code, word)


def test_a_config_finding_is_exit_2_and_verdict_error():
    found = [Finding("metagpt", OK, "m"), Finding("config", PROBLEM, "config error: x")]
    assert (exit_code(found), verdict(found)) == (2, "error")


def test_text_report_is_the_findings_then_the_verdict_with_the_key_masked(capsys):
    found = [Finding("llm", OK, f"has {KEY}"), Finding("ask", WARNING, "first\n  POST x -> 200")]
    print_text(found, facts(), Report(use_rich=False))
    assert capsys.readouterr().out.splitlines() == [
        "metagpt-vllm-fix doctor", f"ok      has {mask(KEY)}", "warning first", "          POST x -> 200",
        "verdict: warning (exit 0): 1 warning (ask) above"]


@pytest.mark.parametrize("levels, line", [
    ([("ask", OK)], "verdict: ok (exit 0): all good"),
    ([("function-call", WARNING), ("formats", WARNING), ("formats", WARNING)],
     "verdict: warning (exit 0): 3 warnings (function-call, formats) above"),
    ([("ask", PROBLEM), ("function-call", WARNING)],
     "verdict: problem (exit 1): 1 problem (ask) and 1 warning (function-call) above; fix the problems first"),
])
def test_the_verdict_line_counts_every_checks_warnings_and_never_says_works(levels, line):
    """A warning may say that a part of MetaGPT cannot work (the Data Interpreter, with the tools fix off): the
    verdict counts them by check instead of summing them up as "works"."""
    assert verdict_line([Finding(name, level, "m") for name, level in levels]) == line


def test_json_report_carries_the_findings_and_the_facts_never_the_key():
    found = facts(config=config(api_key=f" {KEY} "), asks={CHAT: AskResult(asked=True, answered=True, message=KEY)})
    document = as_json([Finding("server", PROBLEM, f"refuses {KEY}")], found)
    assert list(document) == ["version", "verdict", "exit_code", "metagpt_version", "plugin", "config", "server",
                              "ask", "function_call", "format", "checks"]
    assert (document["verdict"], document["exit_code"], document["metagpt_version"]) == (PROBLEM, 1, "0.7.7")
    assert document["checks"] == [{"id": "server", "level": PROBLEM, "message": f"refuses {mask(KEY)}"}]
    assert document["config"]["api_key"] == mask(f" {KEY} ") and document["server"]["generation"] == "0.18+"
    assert document["plugin"]["fixes_in_effect"]["max_tokens"] is True
    assert KEY not in json.dumps(document)
    empty = as_json([], facts(config=None, server=None, plugin=None))
    assert empty["server"] == {"probed": False} and empty["ask"]["message"] == "no configuration to ask with"
    assert empty["plugin"] == {"version": dr.output.__version__}


# --- the command line ---------------------------------------------------------------------------------------


def cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=clean_env(tmp_path), cwd=str(tmp_path),
                          timeout=120)


def doctor_on(tmp_path, base_url: str, api_key: str, *args: str) -> subprocess.CompletedProcess:
    """``doctor --config`` on the seed's config with ``api_key`` (a YAML scalar) and a max_token that fits."""
    path = tmp_path / "config2.yaml"
    path.write_text(f"llm:\n  api_type: open_llm\n  base_url: '{base_url}'\n  model: '{MODEL}'\n  api_key: {api_key}\n"
                    "  max_token: 512\n  calc_usage: false\n", encoding="utf-8")
    return cli(tmp_path, "doctor", "--config", str(path), *args)


def test_list_checks_prints_every_check_in_order_with_its_line_and_marks_the_slow_ones(tmp_path):
    run = cli(tmp_path, "doctor", "--list-checks")
    assert run.returncode == 0 and run.stderr == "", run
    rows = run.stdout.splitlines()
    assert [row.split()[0] for row in rows[:-1]] == IDS
    for row, check in zip(rows, CHECKS):
        assert row.endswith(check.description) and (" slow " in row) == dr.slow(check), row
    assert rows[-1].startswith("slow: waits on the server")


def test_an_unknown_check_name_is_a_usage_error_exit_2_naming_it(tmp_path):
    run = cli(tmp_path, "doctor", "server", "max_token")
    assert run.returncode == 2 and run.stdout == ""
    assert "no check named 'max_token'" in run.stderr and "--list-checks" in run.stderr


def test_chosen_checks_run_alone_with_only_the_gathering_they_need(tmp_path):
    with VLLMServer(api_keys=[KEY]) as server:
        run = doctor_on(tmp_path, server.base_url, KEY, "server", "model")
        paths = [r.path for r in server.requests]
    assert run.returncode == 0, run
    assert run.stdout.splitlines() == [
        "metagpt-vllm-fix doctor (server, model)",
        f"ok      server answers with this key: {server.base_url}/models -> 200, serves {MODEL}",
        f"ok      llm.model {MODEL} is served",
        "verdict: ok (exit 0): all good"]
    assert "/v1/chat/completions" not in paths, "the ask was not chosen: MetaGPT's request is not sent"


NON_ASCII_KEY = '"t\\u00f8ken-doctor-0123456789"'  # YAML for a key no HTTP header can carry


@pytest.mark.parametrize("keys", [[KEY], []], ids=["keyed-server", "server-without-key"])
def test_a_non_ascii_key_is_reported_with_the_server_probed_as_open_llm_sends_it(tmp_path, keys):
    with VLLMServer(api_keys=keys) as server:
        run = doctor_on(tmp_path, server.base_url, NON_ASCII_KEY, "--json")
        sent = {r.authorization for r in server.requests if r.authorization is not None}  # /version goes without
    assert run.returncode == 1 and "Traceback" not in run.stderr, run
    assert sent == {"Bearer sk-xxx"}, "the doctor sends what MetaGPT's open_llm sends, never the key"
    document = json.loads(run.stdout)
    checks = {c["id"]: (c["level"], c["message"]) for c in document["checks"]}
    assert checks["api-key-control"][0] == PROBLEM and "cannot carry" in checks["api-key-control"][1]
    assert "provider" not in checks, "api-key-control says why 'sk-xxx' is sent"
    level, message = checks["server"]
    ask_level, ask = checks["ask"]
    assert document["server"]["reachable"] and "MetaGPT's placeholder 'sk-xxx'" in message
    if keys:
        assert level == PROBLEM and message.startswith(f"401 Unauthorized from {server.base_url}/models: the server "
                                                       "requires a key") and document["server"]["status"] == 401
        assert ask_level == PROBLEM and "not llm.api_key, which an HTTP header cannot carry" in ask
    else:
        assert level == OK and "as it checks no key" in message
        assert ask_level == OK and "an answer came back" in ask
    assert "\u00f8ken" not in run.stdout and "\\u00f8ken" not in run.stdout and "0123456789" not in run.stdout
