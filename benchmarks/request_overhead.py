"""What the fixes cost per request: the wrappers alone (µs per call) and against a real request over loopback.

Prints figures; asserts nothing about speed. Run with the project's .venv (MetaGPT 0.7.7):

    .venv/bin/python benchmarks/request_overhead.py [--quick]

1. The wrappers alone: ``fit_max_tokens`` and ``ask_for_usage`` around an async no-op, and ``use_server_usage``
   around a function returning a value, median over many calls.
2. MetaGPT's ``LLM.aask`` against the emulator (vLLM 0.32.0, no key, a context large enough that nothing is
   refused), streamed and not, with every fix removed and with every fix applied: median request time and the
   difference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("METAGPT_PROJECT_ROOT", tempfile.mkdtemp(prefix="metagpt-root-"))


def per_call_us(run: Callable[[], Any], calls: int, rounds: int = 7) -> float:
    """Median over ``rounds`` of the mean time of ``calls`` calls, in microseconds."""
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            run()
        results.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(results)


def wrappers_alone(calls: int) -> None:
    from metagpt_vllm_fix.fixes.chat_template import answer_without_template
    from metagpt_vllm_fix.fixes.max_tokens import fit_max_tokens
    from metagpt_vllm_fix.fixes.system_role import fold_refused_system
    from metagpt_vllm_fix.fixes.usage import ask_for_usage, use_server_usage

    async def create(**kwargs: Any) -> Any:
        return kwargs

    loop = asyncio.new_event_loop()
    kwargs = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "model": "m", "stream": False}
    baseline = per_call_us(lambda: loop.run_until_complete(create(**kwargs)), calls)
    max_tokens = per_call_us(lambda: loop.run_until_complete(fit_max_tokens(create, None, (), kwargs)), calls)
    stream_kwargs = {**kwargs, "stream": True}
    usage = per_call_us(lambda: loop.run_until_complete(ask_for_usage(create, None, (), stream_kwargs)), calls)
    template = per_call_us(lambda: loop.run_until_complete(answer_without_template(create, None, (), kwargs)), calls)
    system_kwargs = {**kwargs, "messages": [{"role": "system", "content": "s"}, *kwargs["messages"]]}
    system = per_call_us(lambda: loop.run_until_complete(fold_refused_system(create, None, (), system_kwargs)), calls)
    loop.close()

    class Config:
        calc_usage = False

    class Instance:
        config = Config()

    plain = per_call_us(lambda: (lambda messages, rsp: None)([], ""), calls)
    calc = per_call_us(lambda: use_server_usage(lambda messages, rsp: None, Instance(), ([], ""), {}), calls)
    print("1. the wrappers alone (median of 7 rounds)")
    print(f"   async no-op create() run to completion        {baseline:8.2f} µs per call")
    print(f"   + max_tokens wrapper (request that fits)       {max_tokens - baseline:+8.2f} µs")
    print(f"   + usage wrapper (streamed request)             {usage - baseline:+8.2f} µs")
    print(f"   + chat_template wrapper (request answered)     {template - baseline:+8.2f} µs")
    print(f"   + system_role wrapper (request answered)       {system - baseline:+8.2f} µs")
    print(f"   + usage wrapper on _calc_usage (calc_usage off){calc - plain:+8.2f} µs")


async def paired_asks(first: Any, second: Any, stream: bool, calls: int) -> list[list[float]]:
    """Alternate the two LLMs call by call, so that load on the machine falls on both alike; ms per call."""
    times: list[list[float]] = [[], []]
    for i in range(calls):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            llm = (first, second)[which]
            started = time.perf_counter()
            await llm.aask("measure me", stream=stream)
            times[which].append((time.perf_counter() - started) * 1e3)
    return times


def against_requests(calls: int) -> None:
    from metagpt.logs import set_llm_stream_logfunc

    import metagpt_vllm_fix
    from metagpt_vllm_fix.server import VLLMServer

    # isort: split
    from loguru import logger
    from metagpt.configs.llm_config import LLMConfig
    from metagpt.provider.llm_provider_registry import create_llm_instance

    logger.remove()
    set_llm_stream_logfunc(lambda message: None)
    print(f"2. MetaGPT's aask against the emulator over loopback ({calls} calls each, alternating, median)")
    with VLLMServer(max_model_len=1 << 20) as server:
        def build() -> Any:
            return create_llm_instance(LLMConfig(api_type="open_llm", base_url=server.base_url, api_key="any",
                                                 model=server.model, calc_usage=False))  # counting aside: see below

        metagpt_vllm_fix.remove()
        shipped = build()  # a client without the fixes' wrappers
        metagpt_vllm_fix.apply()
        fixed = build()
        loop = asyncio.new_event_loop()
        for stream in (False, True):
            loop.run_until_complete(paired_asks(shipped, fixed, stream, 5))  # warm both connection pools
            before, after = map(statistics.median, loop.run_until_complete(paired_asks(shipped, fixed, stream, calls)))
            kind = "streamed " if stream else "non-stream"
            print(f"   {kind}: as shipped {before:6.2f} ms, with every fix {after:6.2f} ms "
                  f"({(after - before) * 1e3:+.0f} µs, {(after - before) / before:+.1%})")
        loop.close()
    print("   (calc_usage off in both, so upstream's tiktoken counting -- a failed download per streamed call on an")
    print("   offline machine -- is not what is measured; the usage fix removes that cost altogether)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (CI)")
    args = parser.parse_args()
    import metagpt.provider.open_llm_api  # noqa: F401  (patched on import, as in a user's process)

    wrappers_alone(2000 if args.quick else 20000)
    against_requests(30 if args.quick else 200)


if __name__ == "__main__":
    main()
