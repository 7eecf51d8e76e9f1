"""The doctor's checks of this environment and of the config (checks/metagpt, fixes, config, api_key, base_url),
each judged on facts built by hand: no MetaGPT import, no network. The end-to-end runs are in test_cli_doctor.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from doctor_facts import KEY, config, facts, one, status, verdicts
from metagpt_vllm_fix._activation import FixStatus
from metagpt_vllm_fix.doctor.checks import api_key, base_url, fixes
from metagpt_vllm_fix.doctor.checks import config as config_checks
from metagpt_vllm_fix.doctor.checks import metagpt as metagpt_checks
from metagpt_vllm_fix.doctor.facts import MetagptFacts, PluginFacts, ProviderFacts
from metagpt_vllm_fix.masking import mask
from metagpt_vllm_fix.report import OK, PROBLEM, WARNING

# --- metagpt, activation ------------------------------------------------------------------------------------


def test_metagpt_absent_is_a_problem_naming_the_python_checked():
    found = facts(metagpt=MetagptFacts(None, "metagpt-absent", False, "/somewhere/bin/python"), config=None,
                  plugin=None)
    level, message = one(metagpt_checks.metagpt, found)
    assert level == PROBLEM and "not installed in this Python (/somewhere/bin/python)" in message


def test_metagpt_that_cannot_be_imported_is_a_problem_with_the_error():
    found = facts(metagpt=MetagptFacts("0.7.7", "supported", True, "py", "ImportError: no lancedb"), plugin=None)
    assert one(metagpt_checks.metagpt, found) == (PROBLEM, "MetaGPT 0.7.7 cannot be imported: ImportError: no lancedb")


@pytest.mark.parametrize("code, api_type, level, words", [
    ("supported", "open_llm", OK, "MetaGPT 0.7.7: supported; the plugin makes open_llm send llm.api_key"),
    ("fixed-upstream", "open_llm", OK, "R. The plugin stays inactive."),
    ("shape-changed", "open_llm", PROBLEM, "plugin inactive: R. api_type open_llm will send 'sk-xxx'."),
    ("unsupported-old", "open_llm", PROBLEM, "plugin inactive: R."),
    ("shape-changed", "openai", WARNING, "plugin inactive: R."),
])
def test_metagpt_line_follows_the_gate_and_weighs_by_api_type(code, api_type, level, words):
    found = facts(plugin=PluginFacts(status(code=code, reason="R."), None), config=config(api_type=api_type))
    found_level, message = one(metagpt_checks.metagpt, found)
    assert found_level == level and words in message, message
    if code == "unsupported-old":
        assert "sk-xxx" not in message


@pytest.mark.parametrize("switch, raw, pth, api_type, level, words", [
    ("auto", None, "/v/x.pth", "open_llm", OK, "automatic activation on in this environment (/v/x.pth, "
                                                "METAGPT_VLLM_FIX unset)"),
    ("strict", "strict", "/v/x.pth", "open_llm", OK, "METAGPT_VLLM_FIX=strict; strict: a failure to patch raises"),
    ("auto", None, None, "open_llm", PROBLEM, "no metagpt-vllm-fix.pth"),
    ("auto", None, None, "openai", WARNING, "no metagpt-vllm-fix.pth"),
    ("off", "0", "/v/x.pth", "open_llm", PROBLEM, "automatic activation is off (METAGPT_VLLM_FIX=0)"),
    ("unknown", "maybe", "/v/x.pth", "open_llm", WARNING, "METAGPT_VLLM_FIX=maybe is not a known value"),
])
def test_activation_says_whether_every_metagpt_run_gets_the_plugin(switch, raw, pth, api_type, level, words):
    found = facts(plugin=PluginFacts(status(switch=switch, pth=pth), raw), config=config(api_type=api_type))
    found_level, message = one(metagpt_checks.activation, found)
    assert found_level == level and words in message, message


def test_activation_and_fixes_say_nothing_for_a_metagpt_the_plugin_does_not_patch():
    found = facts(metagpt=MetagptFacts("0.8.0", "fixed-upstream", False, "py"),
                  plugin=PluginFacts(status(code="fixed-upstream"), None))
    assert verdicts(metagpt_checks.activation, found) == []
    assert verdicts(fixes.fixes, found) == []
    assert verdicts(fixes.httpx, found) == []


# --- fixes, httpx -------------------------------------------------------------------------------------------


def test_fixes_line_lists_each_state_and_warns_on_words_naming_no_fix():
    found = facts(plugin=PluginFacts(status(fixes=[FixStatus("api_key", "active", ""),
                                                   FixStatus("usage", "off", "")]), None, ("max_token",)))
    level, message = one(fixes.fixes, found)
    assert level == WARNING and message.startswith("fixes: api_key active, usage off (METAGPT_VLLM_FIX_DISABLE)")
    assert "METAGPT_VLLM_FIX_DISABLE names no fix: max_token (the fixes are api_key, usage)" in message


@pytest.mark.parametrize("httpx_fix, level", [("active", OK), ("off", PROBLEM)])
def test_httpx_without_proxies_is_ok_only_while_the_httpx_fix_acts(httpx_fix, level):
    found = facts(plugin=PluginFacts(status(fixes=[FixStatus("httpx", httpx_fix, "")]), None, (), "0.28.1"))
    found_level, message = one(fixes.httpx, found)
    assert found_level == level and message.startswith("httpx 0.28.1 no longer takes proxies=")
    assert verdicts(fixes.httpx, dataclasses.replace(found, config=config(api_type="openai"))) == []
    assert verdicts(fixes.httpx, dataclasses.replace(found, plugin=PluginFacts(status(), None))) == [], \
        "an httpx that takes proxies= is not worth a line"


# --- config, config-files, llm ------------------------------------------------------------------------------


def test_a_config_error_is_the_config_checks_only_line():
    found = facts(config=None, config_error="x.yaml: llm.api_key: Field required")
    assert one(config_checks.config, found) == (PROBLEM, "config error: x.yaml: llm.api_key: Field required")
    assert verdicts(config_checks.config_files, found) == verdicts(config_checks.llm, found) == []
    assert verdicts(config_checks.config, facts()) == []


def test_config_files_name_the_explicit_file_or_the_default_ones_with_the_missing_one(tmp_path):
    explicit = facts(config_path=Path("/etc/c.yaml"))
    assert one(config_checks.config_files, explicit) == (OK, "config: /etc/c.yaml (--config)")
    root, home = tmp_path / "config" / "config2.yaml", tmp_path / "home.yaml"
    default = facts(config=config(files=(home,), searched=(root, home)))
    assert one(config_checks.config_files, default) == (OK, f"config: {home}; not present: {root}")
    both = facts(config=config(files=(root, home), searched=(root, home)))
    assert "(the later file's llm: block replaces the earlier one)" in one(config_checks.config_files, both)[1]


def test_llm_line_masks_the_key():
    level, message = one(config_checks.llm, facts(config=config(api_key=f"  {KEY} ")))
    assert level == OK and message.endswith(f"api_key {mask(KEY)}") and KEY not in message


# --- api-key-whitespace, api-key-control, provider ----------------------------------------------------------


def test_whitespace_around_the_key_is_a_warning():
    assert verdicts(api_key.api_key_whitespace, facts()) == []
    level, message = one(api_key.api_key_whitespace, facts(config=config(api_key=f" {KEY}\t")))
    assert level == WARNING and "the plugin sends it trimmed" in message


@pytest.mark.parametrize("key", ["tok\r\nX-Injected: 1", "t\u00f8ken-abc123", "tok\x00en"])
def test_a_key_no_header_can_carry_is_a_problem_saying_what_each_provider_does(key):
    level, message = one(api_key.api_key_control, facts(config=config(api_key=key)))
    assert level == PROBLEM and "the plugin sends MetaGPT's placeholder 'sk-xxx' instead" in message
    level, message = one(api_key.api_key_control, facts(config=config(api_key=key, api_type="openai")))
    assert level == PROBLEM and "MetaGPT's openai provider fails on every request" in message
    assert "sk-xxx" not in message, "the plugin does not act on api_type openai"
    assert verdicts(api_key.api_key_control, facts()) == []


@pytest.mark.parametrize("sent, error, level, words", [
    (KEY, None, OK, f"sends api_key {mask(KEY)} (the configured one)"),
    ("sk-xxx", None, PROBLEM, "still sends 'sk-xxx': the patch did not take (patched)"),
    ("token-other-0000000000", None, PROBLEM, "sends tok...000, not the configured key"),
    (None, "TypeError: proxies", PROBLEM, "cannot be built from this config: TypeError: proxies"),
])
def test_provider_line_says_which_key_metagpts_own_provider_sends(sent, error, level, words):
    found_level, message = one(api_key.provider, facts(provider=ProviderFacts(sent, error)))
    assert found_level == level and words in message, message


def test_provider_says_nothing_of_the_placeholder_sent_for_a_key_no_header_can_carry():
    found = facts(config=config(api_key="t\u00f8ken-abc123"), provider=ProviderFacts("sk-xxx"))
    assert verdicts(api_key.provider, found) == [], "api-key-control already says why"
    assert verdicts(api_key.provider, facts(provider=None)) == []  # not open_llm, or MetaGPT not 0.7


# --- cleartext, api-type ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, warned", [
    ("http://gpu-box.lan:8000/v1", True), ("http://10.0.0.7:8000/v1", True), ("http://127.0.0.1:8000/v1", False),
    ("http://localhost:8000/v1", False), ("http://[::1]:8000/v1", False), ("https://gpu-box.lan/v1", False),
])
def test_cleartext_warns_only_for_plain_http_off_this_machine(url, warned):
    found = verdicts(base_url.cleartext, facts(config=config(base_url=url)))
    assert (found != []) == warned
    if warned:
        assert found[0][0] == WARNING and "the key travels in clear text" in found[0][1]


def test_api_type_openai_at_a_self_hosted_server_suggests_open_llm():
    level, message = one(base_url.api_type, facts(config=config(api_type="openai")))
    assert level == WARNING and "api_type openai pointed at 127.0.0.1" in message
    assert verdicts(base_url.api_type, facts(config=config(api_type="openai", base_url="https://api.openai.com/v1"))) \
        == []
    assert verdicts(base_url.api_type, facts()) == []
