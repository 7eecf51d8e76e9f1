"""``api-key-whitespace``, ``api-key-control`` and ``provider``: the key as written, and as MetaGPT sends it."""

from __future__ import annotations

from ...fixes.api_key import unsendable as unsendable_key
from ...gate import PLACEHOLDER as PLACEHOLDER_KEY
from ...masking import mask
from ...report import OK, PROBLEM, WARNING
from ..check import Verdict, check
from ..facts import Facts


@check("api-key-whitespace", "whitespace around llm.api_key", needs=("config",))
def api_key_whitespace(facts: Facts) -> list[Verdict]:
    key = facts.config.api_key if facts.config is not None else ""
    if key == key.strip():
        return []
    return [(WARNING, "llm.api_key has whitespace around it: the plugin sends it trimmed (and logs a warning); "
                      "without the plugin, or with another api_type, it would not match. Remove it from config2.yaml.")]


@check("api-key-control", "a line break, control or non-ASCII character in llm.api_key, which no header can carry",
       needs=("config",))
def api_key_control(facts: Facts) -> list[Verdict]:
    found = facts.config
    if found is None or not unsendable_key(found.api_key):
        return []
    what = "llm.api_key contains a line break, control or non-ASCII character, which an HTTP Authorization header " \
           "cannot carry"
    if found.api_type != "open_llm":
        return [(PROBLEM, f"{what}: MetaGPT's {found.api_type} provider fails on every request (the plugin acts on "
                          "open_llm only). Fix the key.")]
    return [(PROBLEM, f"{what}: the plugin sends MetaGPT's placeholder 'sk-xxx' instead (a vLLM started with "
                      "--api-key answers 401). Fix the key.")]


@check("provider", "the key MetaGPT's own open_llm provider, built here from this config, sends",
       needs=("provider", "plugin"))
def provider(facts: Facts) -> list[Verdict]:
    found, config = facts.provider, facts.config
    if found is None or config is None:
        return []
    if found.error is not None:
        return [(PROBLEM, f"MetaGPT's open_llm provider cannot be built from this config: {found.error}")]
    sent = found.sent
    if sent is None or unsendable_key(config.api_key):  # api-key-control says why 'sk-xxx' is sent
        return []
    if sent == config.api_key.strip():
        return [(OK, f"MetaGPT's open_llm provider, built here from this config with the plugin loaded, sends "
                     f"api_key {mask(sent)} (the configured one)")]
    if sent == PLACEHOLDER_KEY:
        why = facts.status.reason if facts.status is not None else "no plugin status"
        return [(PROBLEM, f"MetaGPT's open_llm provider built from this config still sends 'sk-xxx': the patch did "
                          f"not take ({why})")]
    return [(PROBLEM, f"MetaGPT's open_llm provider sends {mask(sent)}, not the configured key")]
