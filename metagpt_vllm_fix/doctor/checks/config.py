"""``config``, ``config-files`` and ``llm``: which configuration MetaGPT reads, and whether it can."""

from __future__ import annotations

from ...masking import mask
from ...report import OK, PROBLEM
from ..check import Verdict, check
from ..config_file import show_path
from ..facts import Facts


@check("config", "only when MetaGPT cannot load the configuration: what, and where (exit 2)", needs=("config",))
def config(facts: Facts) -> list[Verdict]:
    return [(PROBLEM, f"config error: {facts.config_error}")] if facts.config_error is not None else []


@check("config-files", "the config2.yaml file(s) MetaGPT reads, and the default path that does not exist",
       needs=("config",))
def config_files(facts: Facts) -> list[Verdict]:
    found = facts.config
    if found is None:
        return []
    if facts.config_path is not None:
        where = f"{show_path(facts.config_path)} (--config)"
    else:
        missing = [p for p in found.searched if p not in found.files]
        where = ", then ".join(show_path(p) for p in found.files)
        if len(found.files) > 1:
            where += " (the later file's llm: block replaces the earlier one)"
        if missing:
            where += "; not present: " + ", ".join(show_path(p) for p in missing)
    return [(OK, f"config: {where}")]


@check("llm", "the llm: block: api_type, base_url, model, the key masked", needs=("config",))
def llm(facts: Facts) -> list[Verdict]:
    found = facts.config
    if found is None:
        return []
    return [(OK, f"llm: api_type {found.api_type}, base_url {found.base_url}, model {found.model}, "
                 f"api_key {mask(found.api_key.strip())}")]
