"""The installers' suite (``make test-installers``): it builds whole environments, with uv and with pip, so it only
runs when pytest is pointed at this directory (tests/opt_in.py, as for tests/real_vllm); a plain ``pytest``
(``make test``) deselects it and says so in its summary line."""

from __future__ import annotations

from pathlib import Path

import pytest

from opt_in import items_if_asked

HERE = Path(__file__).resolve().parent
BUILD_TIMEOUT = 1200  # a pip build of MetaGPT's 180 pins takes 2.5-3.5 minutes here, more under load


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items_if_asked(config, items, HERE):
        item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT))
