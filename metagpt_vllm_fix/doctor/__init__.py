"""``metagpt-vllm-fix doctor``: MetaGPT's configuration as MetaGPT reads it, the plugin, the server, and MetaGPT's
own request to it, as a list of small named checks (like Homebrew's ``brew doctor`` and ``flutter doctor``).

It goes in two steps. **Gathering** (gather.py) finds things out, once, in order: MetaGPT imported against a
scratch project root (metagpt_env), its config loaded by its own loader (config_file.py), the provider it builds
from it and the plugin's status (environment.py), then, within one ``--timeout``, the server's model list and
version (probe.py) and MetaGPT's own streamed request to it (asking.py). The result is one read-only
:class:`~.facts.Facts`. **Judging**: each check (checks/) reads the facts and returns nothing, or a few
``(level, message)`` verdicts; the report (output.py), text or ``--json``, is built from those findings alone.
``doctor --list-checks`` lists the checks in the order they are shown; ``doctor NAME...`` runs only those, with
the gathering they need.

Adding a check (a new wall): write ``checks/NAME.py`` with a function decorated by
``@check("name", "one line for --list-checks", needs=(gatherers...))`` that takes the facts and returns a list of
``(level, message)``; put it in ``checks.CHECKS`` where it should show (slow ones, i.e. those that need a slow
gatherer, after the fast ones); test it on facts built by hand (tests/test_doctor_checks*.py) and end to end.
When it needs a fact nobody gathers yet, add a field to :class:`~.facts.Facts` and a gatherer to
``gather.GATHERERS`` (its ``needs``, and ``slow=True`` when it waits on the network: it then runs within the
deadline). MetaGPT's other requests go into ``Facts.asks`` under a name of their own, next to ``"chat"``: e.g. an
``aask_code`` gatherer sending MetaGPT's function-call request (tools=[execute]) as asking.py sends the chat one,
and a check that says whether the server took it as sent and whether a fix got an answer.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..metagpt_env import import_metagpt, metagpt_root, quiet_loguru
from ..report import Report
from . import doctor_ask, output
from .check import Check, Finding
from .checks import BY_NAME, CHECKS
from .checks.fixes import fixes_verdict, httpx_verdict
from .checks.max_token import max_token_verdict, suggested_max_token
from .checks.server import describe_server
from .checks.tiktoken import tiktoken_verdict, usage_source
from .config_file import ConfigError, load_config
from .facts import Facts, ServerGeneration, fix_in_effect, server_generation
from .gather import Run, closure, gather
from .output import EXIT_CONFIG, EXIT_OK, EXIT_PROBLEM, exit_code, print_text
from .probe import is_loopback, probe_server, read_version

__all__ = [
    "CHECKS", "EXIT_CONFIG", "EXIT_OK", "EXIT_PROBLEM", "Check", "ConfigError", "Facts", "Finding", "ServerGeneration",
    "describe_server", "doctor_ask", "fix_in_effect", "fixes_verdict", "httpx_verdict", "import_metagpt",
    "is_loopback", "list_checks", "load_config", "max_token_verdict", "metagpt_root", "probe_server", "quiet_loguru",
    "read_version", "run", "server_generation", "slow", "suggested_max_token", "tiktoken_verdict", "unknown",
    "usage_source",
]


def slow(check: Check) -> bool:
    """The check waits on the network: one of the gatherers it needs does."""
    return any(gatherer.slow for gatherer in closure(check.needs))


def unknown(names: Sequence[str]) -> list[str]:
    """The names that are no check's."""
    return [name for name in names if name not in BY_NAME]


def list_checks(report: Optional[Report] = None) -> int:
    """``doctor --list-checks``: every check in the order it is shown, with its line; slow ones marked."""
    report = report or Report()
    width = max(len(c.name) for c in CHECKS)
    for check in CHECKS:
        report.line(f"{check.name:<{width}}  {'slow' if slow(check) else '    '}  {check.description}")
    report.line("slow: waits on the server (all within --timeout). `doctor NAME...` runs only the checks named.")
    return EXIT_OK


def judge(facts: Facts, names: Sequence[str] = ()) -> list[Finding]:
    """The findings of the checks ``names`` (all when empty), in display order, and of the check that says why
    a gatherer they needed could go no further (e.g. ``server`` when the server did not answer)."""
    chosen = [c for c in CHECKS if not names or c.name in names]
    wanted = {c.name for c in chosen}
    for gatherer in closure(n for c in chosen for n in c.needs):
        if gatherer.failed is not None and gatherer.failed(facts):
            wanted.add(gatherer.explained_by)
    shown = dataclasses.replace(facts, shown=frozenset(wanted))  # a line may point only at lines the report has
    return [finding for c in CHECKS if c.name in wanted for finding in c.run(shown)]


def run(config: Optional[str] = None, timeout: float = 5.0, as_json: bool = False, report: Optional[Report] = None,
        checks: Sequence[str] = ()) -> int:
    """The ``doctor`` command; returns its exit code. ``checks``: run only these (the CLI rejects unknown names)."""
    chosen = [BY_NAME[name] for name in checks]
    gathering = Run(Path(config).expanduser() if config else None, timeout)
    try:
        facts = gather({n for c in (chosen or CHECKS) for n in c.needs}, gathering)
    finally:
        gathering.close()
    findings = judge(facts, checks)
    if as_json:
        sys.stdout.write(json.dumps(output.as_json(findings, facts), indent=2) + "\n")
        sys.stdout.flush()
    else:
        print_text(findings, facts, report or Report(), checks)
    return exit_code(findings)

