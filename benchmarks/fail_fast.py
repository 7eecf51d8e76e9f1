"""What a wrong key (or model name) costs the ``metagpt`` command, with and without the ``fail_fast`` fix.

Prints figures; asserts nothing. Run with the project's .venv (MetaGPT 0.7.7):

    .venv/bin/python benchmarks/fail_fast.py [--real-vllm] [--runs N]

Runs ``metagpt "write a hello world cli" --n-round 2`` in a fresh HOME whose config2.yaml is the seed's with a key
the server refuses (then with a model it does not serve), once with ``METAGPT_VLLM_FIX_DISABLE=fail_fast`` (MetaGPT's
own retries) and once with every fix, against the emulator (vLLM 0.32.0 rules) or, with ``--real-vllm``, a real
vLLM 0.32.0 from ``.venv-vllm`` (about 45 s to start). For each: the chat requests the server answered (and their
statuses), the seconds from the first to the last of them, from the first to fail_fast's log line, the command's
wall time (MetaGPT's import included), and its ERROR lines. Times are stamped by 10 ms polls.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
KEY, WRONG_KEY, MODEL = "token-abc123", "token-wrong-999", "meta-llama/Llama-2-7b-hf"
CONFIG = "llm:\n  api_type: open_llm\n  base_url: '{base_url}'\n  model: '{model}'\n  api_key: {api_key}\n"
ACCESS = re.compile(r'"POST /v1/chat/completions HTTP/1\.1" (\d{3})')


CAUSE = b"so they stop here"


def run_metagpt(base_url: str, api_key: str, model: str, disable: str,
                poll: Callable[[], object]) -> tuple[float, str, Optional[float]]:
    """(wall seconds, stderr, when fail_fast's line appeared) of the command in a fresh HOME; ``poll`` is called
    every 10 ms while it runs."""
    with tempfile.TemporaryDirectory(prefix="fail-fast-bench-") as tmp:
        home = Path(tmp)
        (home / ".metagpt").mkdir()
        (home / ".metagpt" / "config2.yaml").write_text(CONFIG.format(base_url=base_url, model=model,
                                                                      api_key=api_key))
        env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and
               not k.startswith("METAGPT_")}
        env.update(HOME=str(home), METAGPT_PROJECT_ROOT=str(home), METAGPT_VLLM_FIX_DISABLE=disable)
        metagpt = Path(sys.executable).with_name("metagpt")
        started = time.monotonic()
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([str(metagpt), "write a hello world cli", "--n-round", "2"],
                                    stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=str(home))
            said: Optional[float] = None
            while proc.poll() is None:
                poll()
                if said is None:
                    err.seek(0)
                    if CAUSE in err.read():
                        said = time.monotonic()
                time.sleep(0.01)
            wall = time.monotonic() - started
            poll()
            err.seek(0)
            return wall, err.read().decode("utf-8", "replace"), said


def measure(label: str, base_url: str, statuses: Callable[[], list[tuple[float, int]]], runs: int) -> None:
    cases = [("wrong key", WRONG_KEY, MODEL), ("unknown model", KEY, "no-such-model")]
    print(f"{label}: metagpt \"write a hello world cli\" --n-round 2")
    print(f"  {'case':<14} {'fixes':<14} {'requests':<11} {'first->last s':>13} {'request->cause s':>16} "
          f"{'wall s':>7} {'ERROR lines':>11}")
    for case, key, model in cases:
        for fixes, disable in (("fail_fast off", "fail_fast"), ("every fix", "")):
            for _ in range(runs):
                before = len(statuses())
                wall, stderr, said = run_metagpt(base_url, key, model, disable, statuses)
                seen = statuses()[before:]
                codes = [code for _, code in seen]
                span = seen[-1][0] - seen[0][0] if seen else 0.0
                summary = f"{len(codes)} x {sorted(set(codes))}"
                cause = f"{said - seen[0][0]:.2f}" if said is not None and seen else "-"
                errors = sum(1 for line in stderr.splitlines() if "| ERROR" in line)
                print(f"  {case:<14} {fixes:<14} {summary:<11} {span:>13.1f} {cause:>16} {wall:>7.1f} {errors:>11}")
                lines = [line for line in stderr.splitlines() if CAUSE.decode() in line]
                if lines:
                    print(f"  {'':<14} plugin said: {lines[0][:150]}")


def emulator(runs: int) -> None:
    from metagpt_vllm_fix.server import VLLMServer

    with VLLMServer(api_keys=[KEY], model=MODEL, max_model_len=8192) as server:
        times: list[tuple[float, int]] = []
        seen = 0

        def statuses() -> list[tuple[float, int]]:
            nonlocal seen
            requests = server.requests
            for request in requests[seen:]:  # the emulator keeps no times: stamped when first seen (10 ms polls)
                if request.path.endswith("/chat/completions"):
                    times.append((time.monotonic(), request.status))
            seen = len(requests)
            return times

        measure("emulator (vLLM 0.32.0 rules)", server.base_url, statuses, runs)


def real(runs: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from real_vllm import vllm_process

    problem = vllm_process.missing_setup()
    if problem:
        sys.exit(problem)
    server = vllm_process.start()
    try:
        stamps: list[tuple[float, int]] = []
        offset = server.log_path.stat().st_size

        def statuses() -> list[tuple[float, int]]:
            nonlocal offset
            text = server.log_path.read_bytes()[offset:].decode("utf-8", "replace")
            offset += len(text.encode("utf-8", "replace"))
            stamps.extend((time.monotonic(), int(code)) for code in ACCESS.findall(text))
            return stamps

        statuses()
        measure(f"real vLLM 0.32.0 ({server.model}, {server.max_model_len} tokens)", server.base_url, statuses, runs)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-vllm", action="store_true", help="measure against a real vLLM 0.32.0 too")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    emulator(args.runs)
    if args.real_vllm:
        real(args.runs)


if __name__ == "__main__":
    main()
