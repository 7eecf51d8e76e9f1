"""The ``formats`` check on facts built by hand: one ActionNode fill as MetaGPT sends it, parsed as sent, through the
formats fix, or not at all; and a check run alone that does not point at lines it does not show."""

from __future__ import annotations

import dataclasses

import doctor_facts
from doctor_facts import facts, one
from metagpt_vllm_fix.doctor import judge
from metagpt_vllm_fix.doctor.checks.ask import ask
from metagpt_vllm_fix.doctor.checks.formats import formats
from metagpt_vllm_fix.doctor.facts import CHAT, FORMAT, AskResult, Exchange, FixNote, not_asked
from metagpt_vllm_fix.report import OK, PROBLEM, WARNING

CHAT_PATH, AUTH = "/v1/chat/completions", "Bearer tok...789"
READS = '{"issue_type": "BUG", "reason": "crash"}'


def post(status: int, constrained: bool = False, path: str = CHAT_PATH) -> Exchange:
    return Exchange("POST", path, AUTH, 4096, status, constrained=constrained)


def filled(*exchanges: Exchange, **changes) -> AskResult:
    return dataclasses.replace(AskResult(asked=True, answered=True, exchanges=list(exchanges), reads=READS,
                                         seconds=1.5), **changes)


def with_fill(result: AskResult, **changes):
    return facts(asks={FORMAT: result}, **changes)


def test_says_nothing_when_it_did_not_fill():
    assert formats.run(facts()) == []
    assert formats.run(with_fill(not_asked("MetaGPT's chat request got no answer (the ask line says why)"))) == []


def test_an_answer_metagpt_parses_as_sent_is_ok():
    level, message = one(formats, with_fill(filled(post(200))))
    assert level == OK and "MetaGPT parses the answer as sent" in message and READS in message


def test_an_answer_parsed_only_through_the_fix_is_a_warning_naming_the_second_generation_and_first():
    note = FixNote("formats", "formats: m answered ActionNode WP_ISSUE_TYPE in a form MetaGPT cannot parse (...); "
                              "asked once more ... Remedy: ..., or set METAGPT_VLLM_FIX_FORMATS=first to constrain "
                              "them from the first ask")
    level, message = one(formats, with_fill(filled(post(200), Exchange("GET", "/version", "", None, 200),
                                                   post(200, constrained=True), fixes=[note])))
    assert level == WARNING and "could not parse the answer as sent" in message
    assert "two generations per fill (METAGPT_VLLM_FIX_FORMATS=first saves the first)" in message
    assert "POST /v1/chat/completions (Bearer tok...789, max_tokens 4096, constrained) -> 200" in message


def test_a_base_model_constrained_from_the_first_ask_is_a_warning_that_points_at_the_fixs_line():
    note = FixNote("formats", "formats: s has no chat template for m, so MetaGPT's formatted asks (...) are "
                              "constrained from the first ask there")
    level, message = one(formats, with_fill(filled(post(400), post(200, True, "/v1/completions"), fixes=[note])))
    assert level == WARNING and "constrained by the formats fix from the first ask" in message
    assert "base model" in message and "the formats fix acted: " in message


def test_first_mode_is_ok_the_users_choice():
    level, message = one(formats, with_fill(filled(post(200, constrained=True))))
    assert level == OK and "constrained from the first ask (METAGPT_VLLM_FIX_FORMATS=first)" in message


def test_an_answer_metagpt_cannot_parse_is_a_problem_naming_why_the_fix_did_not_act():
    fixes = [dataclasses.replace(f, state="off") if f.name == "formats" else f
             for f in doctor_facts.status().fixes]
    found = with_fill(filled(post(200), unparsed="JSONDecodeError: Expecting value: line 1 column 1 (char 0)"),
                      plugin=dataclasses.replace(facts().plugin, status=doctor_facts.status(fixes=fixes)))
    level, message = one(formats, found)
    assert level == PROBLEM and "MetaGPT cannot parse the answer (JSONDecodeError: Expecting value" in message
    assert "the formats fix is not in effect (turned off by METAGPT_VLLM_FIX_DISABLE)" in message
    assert "ends in RetryError" in message


def test_a_fill_that_did_not_finish_in_time_is_a_warning_with_the_longer_timeout():
    level, message = one(formats, with_fill(filled(answered=False, error="timeout", message="no answer within 5 s",
                                                   exchanges=[post(None)])))  # type: ignore[arg-type]
    assert level == WARNING and "doctor formats --timeout 600" in message


def test_a_check_run_alone_explains_a_refused_key_itself():
    refused = AskResult(asked=True, error="status", status=401, message="Unauthorized", exchanges=[post(401)])
    alone = judge(facts(asks={CHAT: refused}), ["ask"])
    (found,) = [f for f in alone if f.id == "ask"]
    assert "see the server line above" not in found.message and "doctor server" in found.message
    with_server = [f for f in judge(facts(asks={CHAT: refused})) if f.id == "ask"]
    assert "see the server line above" in with_server[0].message
    assert ask.name == "ask"
