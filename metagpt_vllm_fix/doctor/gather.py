"""Gathering the facts, in order: each gatherer reads the facts before it and returns them with its own added.

Only the gatherers that the chosen checks need (and what those need in turn) run. The slow ones wait on the
network, all within one deadline (``--timeout``) that starts with the first of them; a probe a gatherer starts in
the background (tiktoken's) is finished after the last one, within the same deadline.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Callable, Optional

from ..metagpt_env import quiet_loguru
from .asking import gather_ask
from .config_file import gather_config
from .environment import gather_metagpt, gather_plugin, gather_provider, gather_tiktoken
from .facts import Facts
from .format_ask import gather_format
from .function_call import gather_function_call
from .probe import gather_server

Finish = Callable[[Facts, float], Facts]


class Run:
    """One gathering: the scratch project root MetaGPT is imported into, the timeout and its deadline."""

    def __init__(self, config_path: Optional[Path], timeout: float) -> None:
        self.config_path = config_path
        self.timeout = timeout
        self.scratch = Path(tempfile.mkdtemp(prefix="metagpt-vllm-fix-doctor-"))
        self.finishing: list[Finish] = []
        self._deadline: Optional[float] = None

    @property
    def deadline(self) -> float:
        """When the network checks must be done: ``timeout`` after the first of them asked for it."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.timeout
        return self._deadline

    def close(self) -> None:
        quiet_loguru()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _tiktoken(facts: Facts, run: Run) -> Facts:
    facts, finish = gather_tiktoken(facts, run.timeout)
    if finish is not None:
        run.finishing.append(finish)
    return facts


@dataclasses.dataclass(frozen=True)
class Gatherer:
    name: str
    needs: tuple[str, ...]  #: gatherers whose facts this one reads (they run first)
    slow: bool  #: waits on the network (within --timeout)
    gather: Callable[[Facts, Run], Facts]
    failed: Optional[Callable[[Facts], bool]] = None  #: nothing could be gathered past this point ...
    explained_by: str = ""  #: ... and this check says why (it runs whenever a chosen check needed this gatherer)


GATHERERS = (  # in the order they run
    Gatherer("metagpt", (), False, lambda f, r: gather_metagpt(f, r.scratch),
             lambda f: f.metagpt is None or not f.metagpt.usable, "metagpt"),
    Gatherer("config", ("metagpt",), False, lambda f, r: gather_config(f, r.config_path),
             lambda f: f.config_error is not None, "config"),
    Gatherer("provider", ("config",), False, lambda f, r: gather_provider(f, r.scratch),
             lambda f: f.provider is not None and f.provider.error is not None, "provider"),
    # after the provider's import, which applies the fixes: their states are then what a MetaGPT run gets
    Gatherer("plugin", ("provider",), False, lambda f, r: gather_plugin(f)),
    Gatherer("tiktoken", ("config", "plugin"), True, _tiktoken),
    Gatherer("server", ("config",), True, lambda f, r: gather_server(f, r.deadline, r.timeout),
             lambda f: f.config is not None and (f.server is None or not f.server.reachable), "server"),
    Gatherer("ask", ("server", "plugin"), True, lambda f, r: gather_ask(f, r.scratch, r.deadline)),
    # after the chat ask: a function call may take a constrained generation (seconds on a CPU)
    Gatherer("function_call", ("server", "plugin"), True,
             lambda f, r: gather_function_call(f, r.scratch, r.deadline)),
    # last: an ActionNode fill is a whole generation (a minute or more on a CPU)
    Gatherer("format", ("server", "plugin"), True, lambda f, r: gather_format(f, r.scratch, r.deadline)),
)
BY_NAME = {gatherer.name: gatherer for gatherer in GATHERERS}


def closure(names: Iterable[str]) -> list[Gatherer]:
    """The gatherers ``names`` need, with everything they need, in running order."""
    wanted: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(BY_NAME[name].needs)
    return [gatherer for gatherer in GATHERERS if gatherer.name in wanted]


def gather(names: Iterable[str], run: Run) -> Facts:
    """The facts of the gatherers ``names`` need (see :func:`closure`)."""
    facts = Facts(config_path=run.config_path)
    for gatherer in closure(names):
        facts = gatherer.gather(facts, run)
    for finish in run.finishing:
        facts = finish(facts, run.deadline)
    return facts
