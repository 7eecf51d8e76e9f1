"""Suites that run only when asked for: pytest pointed at their directory or at something in it (tests/real_vllm,
which starts real vLLM servers, and tests/installers, which builds whole environments twice). A plain ``pytest``
(``make test``) deselects them, so its summary line says how many it left out."""

from __future__ import annotations

from pathlib import Path

import pytest


def _within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def asked_for(config: pytest.Config, directory: Path) -> bool:
    """True when a command-line argument names ``directory`` or something in it."""
    base = Path(config.invocation_params.dir)
    return any(_within((base / arg.split("::", 1)[0]).resolve(), directory) for arg in config.args)


def items_if_asked(config: pytest.Config, items: list[pytest.Item], directory: Path) -> list[pytest.Item]:
    """The collected items under ``directory`` when the command line asked for them; otherwise they are deselected
    (taken out of ``items`` and reported) and none are returned."""
    mine = [item for item in items if _within(Path(str(item.path)).resolve(), directory)]
    if mine and not asked_for(config, directory):
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if item not in mine]
        return []
    return mine
