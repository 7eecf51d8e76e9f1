"""The doctor's report, text or ``--json``: the findings in order, the verdict and the exit code that follow."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Optional
from urllib.parse import urlsplit

from .. import __version__
from ..masking import mask
from ..report import OK, PROBLEM, WARNING, Report, scrub_obj, worst
from .check import Finding
from .facts import CHAT, FORMAT, FUNCTION_CALL, AskResult, Facts, not_asked

EXIT_OK, EXIT_PROBLEM, EXIT_CONFIG = 0, 1, 2
CONFIG_ERROR = "config"  #: the check whose finding means MetaGPT cannot load the configuration (exit 2)


def exit_code(findings: Sequence[Finding]) -> int:
    if any(f.id == CONFIG_ERROR for f in findings):
        return EXIT_CONFIG
    return EXIT_PROBLEM if worst(f.level for f in findings) == PROBLEM else EXIT_OK


def verdict(findings: Sequence[Finding]) -> str:
    return "error" if exit_code(findings) == EXIT_CONFIG else worst(f.level for f in findings)


def secrets(facts: Facts) -> list[str]:
    """What no output may show in full: the key as written and trimmed, a password in base_url."""
    if facts.config is None:
        return []
    key = facts.config.api_key
    return [key, key.strip(), urlsplit(facts.config.base_url).password or ""]


def print_text(findings: Sequence[Finding], facts: Facts, report: Report, only: Sequence[str] = ()) -> None:
    report.secret(*secrets(facts))
    report.title("metagpt-vllm-fix doctor" + (f" ({', '.join(only)})" if only else ""))
    for finding in findings:
        report.check(finding.level, finding.message)
    report.line(verdict_line(findings))


def _counted(findings: Sequence[Finding], level: str) -> str:
    """``2 warnings (function-call, formats)``: how many findings of ``level``, and from which checks."""
    ids = list(dict.fromkeys(f.id for f in findings if f.level == level))
    count = sum(f.level == level for f in findings)
    return f"{count} {level}{'s' if count != 1 else ''} ({', '.join(ids)})" if count else ""


def verdict_line(findings: Sequence[Finding]) -> str:
    """The last line: the verdict, the exit code, and every problem and warning counted by check: a warning may say
    that a part of MetaGPT cannot work (the Data Interpreter, say), so the line never sums them up as "works"."""
    code = exit_code(findings)
    if code == EXIT_CONFIG:
        return f"verdict: error (exit {code}): fix the configuration: MetaGPT 0.7 cannot load it"
    counted = [c for c in (_counted(findings, PROBLEM), _counted(findings, WARNING)) if c]
    if not counted:
        return f"verdict: {OK} (exit {code}): all good"
    fix = "; fix the problems first" if code == EXIT_PROBLEM else ""
    return f"verdict: {verdict(findings)} (exit {code}): {' and '.join(counted)} above{fix}"


def _config(facts: Facts) -> dict[str, Any]:
    document: dict[str, Any] = {"source": "--config" if facts.config_path else "default", "files": [],
                                "searched": [], "error": facts.config_error}
    found = facts.config
    if found is not None:
        document.update(files=[os.path.abspath(p) for p in found.files],
                        searched=[os.path.abspath(p) for p in found.searched], api_type=found.api_type,
                        base_url=found.base_url, model=found.model, api_key=mask(found.api_key),
                        max_token=found.max_token, calc_usage=found.calc_usage, proxy=bool(found.proxy))
    return document


def _plugin(facts: Facts) -> dict[str, Any]:
    document: dict[str, Any] = {"version": __version__}
    st = facts.status
    if st is not None:
        document.update(dataclasses.asdict(st))
        document["automatic"] = st.automatic
        document["fixes_in_effect"] = {f.name: facts.fix_on(f.name)[0] for f in st.fixes}
    return document


def _function_call(result: Optional[AskResult], facts: Facts) -> dict[str, Any]:
    """MetaGPT's aask_code request: the chat ask's fields, and whether a tool call came and what MetaGPT read."""
    if result is None:
        return not_asked("the function-call check was not run" if facts.config else "no configuration to ask with"
                         ).as_json()
    return {**result.as_json(), "tool_call": result.tool_call, "metagpt_reads": result.reads}


def _format(result: Optional[AskResult], facts: Facts) -> dict[str, Any]:
    """The ActionNode fill: the chat ask's fields, MetaGPT's parse error on the answer as sent, and what it read."""
    if result is None:
        return not_asked("the formats check was not run" if facts.config else "no configuration to ask with").as_json()
    return {**result.as_json(), "unparsed": result.unparsed, "metagpt_reads": result.reads}


def as_json(findings: Sequence[Finding], facts: Facts) -> dict[str, Any]:
    """The ``--json`` document (docs/cli.md): the verdict from the findings, the facts they were judged on."""
    asked: Optional[AskResult] = facts.asks.get(CHAT)
    payload = {
        "version": 1,
        "verdict": verdict(findings),
        "exit_code": exit_code(findings),
        "metagpt_version": facts.metagpt.version if facts.metagpt is not None else None,
        "plugin": _plugin(facts),
        "config": _config(facts),
        "server": facts.server.as_json() if facts.server is not None else {"probed": False},
        "ask": (asked or not_asked("the ask check was not run" if facts.config else "no configuration to ask with"))
        .as_json(),
        "function_call": _function_call(facts.asks.get(FUNCTION_CALL), facts),
        "format": _format(facts.asks.get(FORMAT), facts),
        "checks": [dataclasses.asdict(f) for f in findings],
    }
    scrubbed: dict[str, Any] = scrub_obj(payload, secrets(facts))
    return scrubbed
