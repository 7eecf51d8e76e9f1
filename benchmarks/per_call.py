"""What the per-request benchmarks (``ask_first.py``, ``function_calls.py``) share: the clock and the real server.

Imported by those scripts from their own directory (``python benchmarks/NAME.py`` puts it first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]


async def timed(calls: int, make: Callable[[], Any]) -> tuple[float, float]:
    """Median wall ms and mean client CPU ms of ``calls`` awaits of ``make()`` (two warm-up calls first)."""
    for _ in range(2):
        await make()
    walls, cpu = [], time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        await make()
        walls.append((time.perf_counter() - started) * 1e3)
    return statistics.median(walls), (time.process_time() - cpu) * 1e3 / calls


@contextmanager
def real_vllm(kind: str, extra_args: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """A real vLLM 0.32.0 (``.venv-vllm``) serving the tiny model of ``kind`` with a 4096-token context, started as
    ``tests/real_vllm`` starts it; yields (base_url, served model name) and stops it."""
    sys.path.insert(0, str(REPO / "tests"))
    from real_vllm import vllm_process  # stdlib only: the MetaGPT environment can start it

    server = vllm_process.start(model_dir=vllm_process.MODEL_DIRS[kind], max_model_len=4096, extra_args=extra_args)
    try:
        yield server.base_url, server.model
    finally:
        server.stop()


def arguments(doc: str, real_calls: int, quick_real_calls: int) -> argparse.Namespace:
    """``--quick``, ``--real`` and ``--calls`` as both benchmarks take them (200 and 20 calls on the emulator)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (CI)")
    parser.add_argument("--real", action="store_true", help="also against real vLLM 0.32.0 (.venv-vllm)")
    parser.add_argument("--calls", type=int, help=f"calls per figure (default 200 on the emulator, {real_calls} on "
                                                  f"real vLLM; --quick: 20 and {quick_real_calls})")
    return parser.parse_args()


def quiet_metagpt() -> None:
    """Import MetaGPT's provider (the plugin patches it, as in a user's process) and silence its logs and the
    fixes' one warning each: the figures are the output."""
    import metagpt.provider.open_llm_api  # noqa: F401
    from loguru import logger
    from metagpt.logs import set_llm_stream_logfunc

    logger.remove()
    set_llm_stream_logfunc(lambda message: None)
    logging.getLogger("metagpt_vllm_fix").setLevel(logging.ERROR)
