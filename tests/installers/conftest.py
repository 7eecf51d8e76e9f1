"""The installers' suite (``make test-installers``): it builds whole environments, with uv and with pip, so it only
runs when pytest is pointed at this directory (as tests/real_vllm does); a plain ``pytest`` (``make test``)
deselects it and says so in its summary line."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BUILD_TIMEOUT = 1200  # a pip build of MetaGPT's 180 pins takes 2.5-3.5 minutes here, more under load


def _under_here(path: Path) -> bool:
    return path == HERE or HERE in path.parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if _under_here(Path(str(item.path)).resolve())]
    base = Path(config.invocation_params.dir)
    if not mine or any(_under_here((base / arg.split("::", 1)[0]).resolve()) for arg in config.args):
        for item in mine:
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT))
        return
    config.hook.pytest_deselected(items=mine)
    items[:] = [item for item in items if item not in mine]
