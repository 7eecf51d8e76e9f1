"""Fixtures for the suite that runs against a real vLLM (``make test-vllm``).

The tests run in the MetaGPT environment (``.venv``) and talk HTTP to a real ``vllm.entrypoints.openai.api_server``
running from ``.venv-vllm`` (vLLM's dependencies conflict with MetaGPT 0.7's). Starting that server costs about 45 s
and 3 GB of memory, so the suite only runs when pytest is pointed at this directory (``pytest tests/real_vllm``);
a plain ``pytest`` (``make test``) deselects it and says so in its summary line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import vllm_process
from .vllm_process import RealVLLM

HERE = Path(__file__).resolve().parent
TEST_TIMEOUT = int(vllm_process.START_TIMEOUT) + 180  # the first test also pays for the server's start


def _under_here(path: Path) -> bool:
    return path == HERE or HERE in path.parents


def _asked_for_explicitly(config: pytest.Config) -> bool:
    """True when a command-line argument names this directory or something in it."""
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        target = (base / arg.split("::", 1)[0]).resolve()
        if _under_here(target):
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if _under_here(Path(str(item.path)).resolve())]
    if not mine:
        return
    if not _asked_for_explicitly(config):
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if item not in mine]
        return
    for item in mine:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


def _serving(max_model_len: int) -> Iterator[RealVLLM]:
    """A real server for the session. Fails (never skips) when ``.venv-vllm`` is missing: a suite that quietly
    tests nothing proves nothing."""
    problem = vllm_process.missing_setup()
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        server = vllm_process.start(max_model_len=max_model_len)
    except vllm_process.VLLMStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def real_vllm() -> Iterator[RealVLLM]:
    """One real vLLM server for the session: the seed's key and model name, a 512-token context, on CPU."""
    yield from _serving(vllm_process.MAX_MODEL_LEN)


@pytest.fixture(scope="session")
def real_vllm_4k() -> Iterator[RealVLLM]:
    """A second real server with Llama-2-7b's 4096-token context, for MetaGPT's own (long) prompts; started only
    by the tests that need it."""
    yield from _serving(4096)
