"""What a check is: a name, a line saying what it looks at, the facts it reads, and a judgement of them.

A check returns nothing (nothing to say) or one or a few ``(level, message)`` verdicts; each becomes a
:class:`Finding` carrying the check's name as its id (the ``id`` of ``--json``). Checks never do I/O: everything
they read was gathered before (see gather.py), so a check is tested with facts built by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Callable

from .facts import Facts

Verdict = tuple[str, str]  #: (level, message); level is report.OK, WARNING or PROBLEM
Judge = Callable[[Facts], Iterable[Verdict]]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line of the report: the check that found it, ok / warning / problem, and what to say."""

    id: str
    level: str
    message: str


@dataclasses.dataclass(frozen=True)
class Check:
    name: str  #: the id of its findings, and what ``doctor NAME`` runs
    description: str  #: one line, for ``doctor --list-checks``
    needs: tuple[str, ...]  #: the gatherers whose facts it reads (gather.GATHERERS)
    judge: Judge

    def run(self, facts: Facts) -> list[Finding]:
        return [Finding(self.name, level, message) for level, message in self.judge(facts)]


def check(name: str, description: str, needs: Iterable[str]) -> Callable[[Judge], Check]:
    """Decorator: the function (facts -> verdicts) becomes the :class:`Check` ``name``."""

    def make(judge: Judge) -> Check:
        return Check(name, description, tuple(needs), judge)

    return make
