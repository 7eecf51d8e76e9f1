"""What asking first costs: the refused round trip every request pays on a server that needs a template fix.

The ``chat_template`` and ``system_role`` fixes send each request as MetaGPT sent it and act only on that
request's own refusal, so on a server that needs them every request pays one refused round trip (no generation in
it) before the request that answers. This prints, per server, streamed and not (median ms per request):

- ``aask``: MetaGPT 0.7's ``LLM.aask`` with every fix, the whole request as a user's program waits for it;
- ``refused``: MetaGPT's own chat request alone (the same messages and parameters, through openai 1.6, the client
  MetaGPT uses), which such a server refuses: the cost of asking first;
- ``answer``: the rest (``aask`` - ``refused``): the request that answers, generation included.

Servers: (a) no chat template (the seed's model: rerouted to ``/v1/completions``), (b) a Mistral-style template
that refuses the system role (folded), (c) Llama-2-chat's template (answered as sent: nothing refused). Against the
emulator always (it answers without a model, so it shows the round trips' own cost); with ``--real``, against real
vLLM 0.32.0 servers of the tiny models (``.venv-vllm``, started one at a time as ``tests/real_vllm`` starts them;
4096-token context, so ``max_tokens`` 4096 is clamped and only the template walls are met). Prints figures; asserts
nothing about speed. Run with the project's .venv (MetaGPT 0.7.7):

    .venv/bin/python benchmarks/ask_first.py [--quick] [--real] [--calls N]
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from per_call import arguments, quiet_metagpt, real_vllm, timed

os.environ.setdefault("METAGPT_PROJECT_ROOT", tempfile.mkdtemp(prefix="metagpt-root-"))
REPO = Path(__file__).resolve().parents[1]
KEY = "token-abc123"
PROMPT = "Say hello."
# (label, emulator template kind = tiny model kind in .venv-vllm, what the fixes do there)
SERVERS = (
    ("(a) no chat template", "none", "chat 400, then /v1/completions"),
    ("(b) template refuses the system role", "mistral-instruct", "chat 400, then chat folded"),
    ("(c) template takes MetaGPT's messages", "llama-2-chat", "chat, as sent"),
)


def llm_for(base_url: str, model: str) -> Any:
    from metagpt.configs.llm_config import LLMConfig
    from metagpt.provider.llm_provider_registry import create_llm_instance

    return create_llm_instance(LLMConfig(api_type="open_llm", base_url=base_url, api_key=KEY, model=model))




async def refused_round_trip(base_url: str, model: str, stream: bool) -> None:
    """MetaGPT's chat request exactly as ``aask`` sends it (openai 1.6, no fix), expected to be refused."""
    import openai

    client = refused_round_trip.clients.get(base_url)  # type: ignore[attr-defined]
    if client is None:
        client = refused_round_trip.clients[base_url] = openai.AsyncOpenAI(  # type: ignore[attr-defined]
            base_url=base_url, api_key=KEY)
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": PROMPT}]
    try:
        answer = await client.chat.completions.create(messages=messages, max_tokens=4096, n=1, temperature=0.3,
                                                      model=model, stream=stream)
    except openai.BadRequestError:
        return
    if stream:
        async for _ in answer:
            pass
    raise RuntimeError(f"{base_url} answered MetaGPT's request as sent: nothing to measure")


refused_round_trip.clients = {}  # type: ignore[attr-defined]


def measure(name: str, base_url: str, model: str, calls: int, needs_fix: bool) -> None:
    loop = asyncio.new_event_loop()
    llm = llm_for(base_url, model)
    print(f"   {name}")
    for stream in (False, True):
        aask, aask_cpu = loop.run_until_complete(timed(calls, lambda stream=stream: llm.aask(PROMPT, stream=stream)))
        kind = "streamed  " if stream else "non-stream"
        if not needs_fix:
            print(f"     {kind}  aask {aask:9.2f} ms (client CPU {aask_cpu:6.2f} ms)   nothing refused")
            continue
        refused, refused_cpu = loop.run_until_complete(
            timed(calls, lambda stream=stream: refused_round_trip(base_url, model, stream)))
        print(f"     {kind}  aask {aask:9.2f} ms (client CPU {aask_cpu:6.2f} ms)   refused "
              f"{refused:7.2f} ms (CPU {refused_cpu:5.2f} ms, {refused / aask:6.1%} of the request)   answer "
              f"{aask - refused:9.2f} ms")
    clients = [llm.aclient, refused_round_trip.clients.pop(base_url, None)]  # type: ignore[attr-defined]
    for client in filter(None, clients):  # closed on their own loop, before it goes
        loop.run_until_complete(client.close())
    loop.close()


@contextmanager
def emulator(kind: str) -> Iterator[tuple[str, str]]:
    from metagpt_vllm_fix.server import VLLMServer

    # 8192 tokens: max_tokens 4096 fits, only the template wall is met
    with VLLMServer(api_keys=[KEY], max_model_len=8192, chat_template=kind) as server:
        yield server.base_url, server.model

def main() -> None:
    args = arguments(__doc__, 10, 3)
    quiet_metagpt()
    runs = [("the emulator (vLLM 0.32.0 rules, answers without a model)", emulator,
             args.calls or (20 if args.quick else 200))]
    if args.real:
        runs.append(("real vLLM 0.32.0, tiny models, 4096-token context", real_vllm,
                     args.calls or (3 if args.quick else 10)))
    for title, serve, calls in runs:
        print(f"{title}: median of {calls} calls each, MetaGPT aask with every fix; MetaGPT's refused request alone")
        for name, kind, what in SERVERS:
            with serve(kind) as (base_url, model):
                measure(f"{name}: {what}", base_url, model, calls, needs_fix=kind != "llama-2-chat")
    print("(wall times on a shared machine; CPU is this process's user+sys per call: MetaGPT's client, and for the")
    print(" emulator its server thread too; a real vLLM's own CPU is not in it)")


if __name__ == "__main__":
    main()
