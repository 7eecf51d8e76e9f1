"""What the ``tools`` fix adds to a function call: MetaGPT's ``aask_code`` (the Data Interpreter's code step).

On a vLLM started without tool flags (as the seed starts it) MetaGPT's function-call request is refused; the fix
then asks ``GET /version`` (which field constrains an answer on this generation) and the same server for the
function's arguments as a constrained answer. On a server started with ``--enable-auto-tool-choice`` and a
``--tool-call-parser`` the request is answered as sent and the fix does nothing. This prints, per server, the median
ms per call:

- ``aask_code``: MetaGPT 0.7's ``OpenAILLM.aask_code`` with every fix, as the Data Interpreter waits for it;
- ``refused``: MetaGPT's function-call request alone (the same messages, ``tools`` and parameters, through openai
  1.6, the client MetaGPT uses), which such a server refuses: the cost of asking first;
- ``version``: the fix's ``GET /version``;
- ``answer``: the rest (``aask_code`` - ``refused`` - ``version``): the constrained request that answers,
  generation included. The fix's added time is ``refused + version`` (the issue's goal: 20 ms or less on loopback).

On the server with tool flags: ``aask_code`` with every fix beside ``aask_code`` with every fix but ``tools`` (the
same single request; the difference is the fix's wrapper). Servers play vLLM 0.32.0 with Llama-2-chat's template, so no
template wall is met and only the tools fix acts. Against the emulator always (answers without a model: the round
trips' own cost); with ``--real``, against real vLLM 0.32.0 serving tiny-llama-chat (``.venv-vllm``), without and
with ``--enable-auto-tool-choice --tool-call-parser hermes``, one at a time; ``llm.max_token`` 64 there, so a
random-weight model's constrained answer is cut short (it is timed, not read). Prints figures; asserts nothing about
speed. Run with the project's .venv (MetaGPT 0.7.7):

    .venv/bin/python benchmarks/function_calls.py [--quick] [--real] [--calls N]
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from per_call import arguments, quiet_metagpt, real_vllm, timed

os.environ.setdefault("METAGPT_PROJECT_ROOT", tempfile.mkdtemp(prefix="metagpt-root-"))
REPO = Path(__file__).resolve().parents[1]
KEY = "token-abc123"
TASK = "Print the first ten square numbers."
TOOL_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


def llm_for(base_url: str, model: str, max_token: int) -> Any:
    from metagpt.configs.llm_config import LLMConfig
    from metagpt.provider.llm_provider_registry import create_llm_instance

    return create_llm_instance(LLMConfig(api_type="open_llm", base_url=base_url, api_key=KEY, model=model,
                                         max_token=max_token))


def messages() -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are Code Interpreter, a world-class programmer."},
            {"role": "user", "content": TASK}]




async def aask_code(llm: Any) -> None:
    """The code step's call; what MetaGPT makes of a cut or unparseable answer does not matter to the clock."""
    try:
        await llm.aask_code(messages())
    except Exception:  # noqa: BLE001 - timed, not judged (tests/real_vllm judges the answers)
        pass


class Refused:
    """MetaGPT's function-call request exactly as ``aask_code`` sends it (openai 1.6, no fix), expected refused."""

    def __init__(self, base_url: str, model: str, max_token: int) -> None:
        import openai
        from metagpt.provider.constant import GENERAL_FUNCTION_SCHEMA
        from metagpt.utils.common import create_func_call_config

        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY)
        self.kwargs = {"model": model, "max_tokens": max_token, "n": 1, "temperature": 0.3,
                       **create_func_call_config(GENERAL_FUNCTION_SCHEMA)}

    async def __call__(self) -> None:
        import openai

        try:
            await self.client.chat.completions.create(messages=messages(), **self.kwargs)
        except openai.BadRequestError:
            return
        raise RuntimeError("the server answered MetaGPT's function call as sent: nothing to measure")


class Version:
    """The fix's ``GET /version``, on one client kept open (the fix uses the provider's own)."""

    def __init__(self, base_url: str) -> None:
        import httpx

        self.http, self.url = httpx.AsyncClient(), base_url.rstrip("/").removesuffix("/v1") + "/version"

    async def __call__(self) -> None:
        (await self.http.get(self.url, timeout=5)).raise_for_status()


def without_tools_fix(make: Callable[[], Any]) -> Any:
    """``make()`` with every fix but ``tools`` (METAGPT_VLLM_FIX_DISABLE=tools, applied again), then every fix."""
    from metagpt_vllm_fix import apply, remove
    from metagpt_vllm_fix._activation import DISABLE

    remove()
    os.environ[DISABLE] = "tools"
    apply()
    try:
        return make()
    finally:
        remove()
        del os.environ[DISABLE]
        apply()


def measure(name: str, base_url: str, model: str, calls: int, max_token: int, takes_tools: bool) -> None:
    loop = asyncio.new_event_loop()
    llm = llm_for(base_url, model, max_token)
    with_fix, with_fix_cpu = loop.run_until_complete(timed(calls, lambda: aask_code(llm)))
    print(f"   {name}")
    if takes_tools:
        def bare_run() -> tuple[float, float]:
            bare_llm = llm_for(base_url, model, max_token)
            figures = loop.run_until_complete(timed(calls, lambda: aask_code(bare_llm)))
            loop.run_until_complete(bare_llm.aclient.close())
            return figures

        bare, bare_cpu = without_tools_fix(bare_run)
        print(f"     aask_code {with_fix:9.2f} ms (client CPU {with_fix_cpu:6.2f} ms) with every fix; "
              f"{bare:9.2f} ms (CPU {bare_cpu:6.2f} ms) with every fix but tools: {with_fix - bare:+7.2f} ms")
    else:
        refused = Refused(base_url, model, max_token)
        asked, asked_cpu = loop.run_until_complete(timed(calls, refused))
        loop.run_until_complete(refused.client.close())
        version = Version(base_url)
        read, read_cpu = loop.run_until_complete(timed(calls, version))
        loop.run_until_complete(version.http.aclose())
        added = asked + read
        print(f"     aask_code {with_fix:9.2f} ms (client CPU {with_fix_cpu:6.2f} ms)   refused {asked:7.2f} ms "
              f"(CPU {asked_cpu:5.2f})   version {read:6.2f} ms (CPU {read_cpu:5.2f})   added {added:7.2f} ms "
              f"({added / with_fix:6.1%})   answer {with_fix - added:9.2f} ms")
    loop.run_until_complete(llm.aclient.close())
    loop.close()


def real_server(tool_flags: bool) -> Any:
    return real_vllm("llama-2-chat", TOOL_FLAGS if tool_flags else ())


@contextmanager
def emulator(tool_flags: bool) -> Iterator[tuple[str, str]]:
    from metagpt_vllm_fix.server import VLLMServer

    flags: dict[str, Any] = {"tool_parser": "hermes", "enable_auto_tool_choice": True} if tool_flags else {}
    with VLLMServer(api_keys=[KEY], max_model_len=8192, chat_template="llama-2-chat", **flags) as server:
        yield server.base_url, server.model

def main() -> None:
    args = arguments(__doc__, 5, 2)
    quiet_metagpt()
    runs = [("the emulator (vLLM 0.32.0 rules, answers without a model)", emulator, 4096,
             args.calls or (20 if args.quick else 200))]
    if args.real:
        runs.append(("real vLLM 0.32.0, tiny-llama-chat, 4096-token context, llm.max_token 64", real_server, 64,
                     args.calls or (2 if args.quick else 5)))
    for title, serve, max_token, calls in runs:
        print(f"{title}: median of {calls} calls each, MetaGPT aask_code (the code step: tools=[execute])")
        for tool_flags in (False, True):
            name = ("started with --enable-auto-tool-choice --tool-call-parser hermes: answered as sent"
                    if tool_flags else "started as the seed starts vLLM (no tool flags): refused, then constrained")
            with serve(tool_flags) as (base_url, model):
                measure(name, base_url, model, calls, max_token, takes_tools=tool_flags)
    print("(wall times on a shared machine; CPU is this process's user+sys per call: MetaGPT's client, and for the")
    print(" emulator its server thread too; a real vLLM's own CPU is not in it)")


if __name__ == "__main__":
    main()
