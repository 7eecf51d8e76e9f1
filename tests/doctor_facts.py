"""Facts built by hand for the doctor's check tests: a seed-like setup that works, to change one thing at a time."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from metagpt_vllm_fix._activation import FixStatus, Status
from metagpt_vllm_fix.doctor.check import Check
from metagpt_vllm_fix.doctor.facts import (
    ConfigFacts,
    Facts,
    MetagptFacts,
    PluginFacts,
    ProviderFacts,
    ServerFacts,
    server_generation,
)

KEY = "token-doctor-0123456789"
MODEL = "meta-llama/Llama-2-7b-hf"
BASE_URL = "http://127.0.0.1:8000/v1"
FIX_NAMES = ("api_key", "max_tokens", "usage", "chat_template", "system_role", "httpx", "fail_fast", "tools", "formats")


def status(code: str = "supported", switch: str = "auto", pth: Optional[str] = "/venv/site-packages/x.pth",
           fixes: Any = None, reason: str = "patched") -> Status:
    fixes = tuple(FixStatus(name, "active", "") for name in FIX_NAMES) if fixes is None else tuple(fixes)
    return Status(True, "active", code, reason, "0.7.7", True, switch, pth, fixes)


def config(**changes: Any) -> ConfigFacts:
    seed = ConfigFacts(api_type="open_llm", base_url=BASE_URL, model=MODEL, api_key=KEY, max_token=512,
                       calc_usage=False, proxy=None)
    return dataclasses.replace(seed, **changes)


def server(**changes: Any) -> ServerFacts:
    seed = ServerFacts(url=BASE_URL + "/models", reachable=True, status=200, models=(MODEL,), version_status=200,
                       max_model_len=4096, seconds=0.01, generation=server_generation("0.32.0"))
    return dataclasses.replace(seed, **changes)


def facts(**changes: Any) -> Facts:
    """A working setup (MetaGPT 0.7.7, every fix active, the server answering the key), changed by ``changes``."""
    seed = Facts(metagpt=MetagptFacts("0.7.7", "supported", True, "/venv/bin/python"), config=config(),
                 plugin=PluginFacts(status(), None), provider=ProviderFacts(KEY), server=server())
    return dataclasses.replace(seed, **changes)


def verdicts(check: Check, found: Facts) -> list[tuple[str, str]]:
    """What ``check`` says about ``found``, as (level, message) pairs, every finding carrying the check's name."""
    findings = check.run(found)
    assert all(f.id == check.name for f in findings)
    return [(f.level, f.message) for f in findings]


def one(check: Check, found: Facts) -> tuple[str, str]:
    (verdict,) = verdicts(check, found)
    return verdict
