"""The doctor's frame: the registry of checks, the gathering each needs, choosing checks, and the report built from
the findings alone. Facts are built by hand (doctor_facts.py)."""

from __future__ import annotations

import json

import pytest

from doctor_facts import KEY, config, facts, server
from metagpt_vllm_fix import doctor as dr
from metagpt_vllm_fix.doctor.check import Finding
from metagpt_vllm_fix.doctor.checks import CHECKS
from metagpt_vllm_fix.doctor.facts import CHAT, AskResult, Facts, MetagptFacts
from metagpt_vllm_fix.doctor.gather import GATHERERS, Run, closure
from metagpt_vllm_fix.doctor.output import as_json, exit_code, print_text, verdict
from metagpt_vllm_fix.masking import mask
from metagpt_vllm_fix.report import OK, PROBLEM, WARNING, Report

IDS = ["metagpt", "activation", "fixes", "httpx", "config", "config-files", "llm", "api-key-whitespace",
       "api-key-control", "cleartext", "api-type", "provider", "server-version", "server", "model", "max-token", "ask",
       "tiktoken"]


def test_every_check_id_of_the_report_is_a_named_check_in_display_order():
    assert [c.name for c in CHECKS] == IDS
    assert all(c.description and "\n" not in c.description for c in CHECKS)


def test_the_slow_checks_come_last_and_the_ask_among_them_before_tiktoken():
    slow = [dr.slow(c) for c in CHECKS]
    assert slow == sorted(slow), "a fast check after a slow one"
    assert [c.name for c in CHECKS if dr.slow(c)] == ["server-version", "server", "model", "max-token", "ask",
                                                       "tiktoken"]


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
        "verdict: warning (exit 0): works; see the warnings above"]


def test_json_report_carries_the_findings_and_the_facts_never_the_key():
    found = facts(config=config(api_key=f" {KEY} "), asks={CHAT: AskResult(asked=True, answered=True, message=KEY)})
    document = as_json([Finding("server", PROBLEM, f"refuses {KEY}")], found)
    assert list(document) == ["version", "verdict", "exit_code", "metagpt_version", "plugin", "config", "server",
                              "ask", "checks"]
    assert (document["verdict"], document["exit_code"], document["metagpt_version"]) == (PROBLEM, 1, "0.7.7")
    assert document["checks"] == [{"id": "server", "level": PROBLEM, "message": f"refuses {mask(KEY)}"}]
    assert document["config"]["api_key"] == mask(f" {KEY} ") and document["server"]["generation"] == "0.18+"
    assert document["plugin"]["fixes_in_effect"]["max_tokens"] is True
    assert KEY not in json.dumps(document)
    empty = as_json([], facts(config=None, server=None, plugin=None))
    assert empty["server"] == {"probed": False} and empty["ask"]["message"] == "no configuration to ask with"
    assert empty["plugin"] == {"version": dr.output.__version__}
