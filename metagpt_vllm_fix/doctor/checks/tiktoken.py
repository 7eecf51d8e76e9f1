"""``tiktoken``: where MetaGPT would count tokens with tiktoken's cl100k_base and cannot get it."""

from __future__ import annotations

from typing import Optional

from ..._activation import DISABLE
from ...report import OK, WARNING
from ...token_count import WAIT_SECONDS as TIKTOKEN_WAIT
from ...vllm_versions import Generation
from ..check import Verdict, check
from ..environment import TIKTOKEN_HOST
from ..facts import Facts


def usage_source(generation: Optional[Generation]) -> Optional[str]:
    """How the server hands a stream's token counts to the usage fix, or None when it does not (or is unknown)."""
    if generation is None:
        return None
    if generation.include_usage:
        return "it sends them when a stream asks with stream_options.include_usage"
    if generation.usage_on_finish_chunk:
        return "it sends them on each stream's finish chunk"
    return None


def tiktoken_verdict(where: str, usage_fix_on: bool, source: Optional[str], reachable: Optional[bool],
                     proxy: bool, fix_off: str = "") -> tuple[str, str]:
    """(level, message) when tiktoken's cl100k_base is not cached and ``llm.calc_usage`` is on."""
    if usage_fix_on and source:
        return OK, (f"token counting: the usage fix takes streamed answers' counts from the server ({source}); "
                    f"tiktoken's cl100k_base ({where}) is not needed")
    if usage_fix_on:
        return OK, (f"token counting: tiktoken's cl100k_base is {where}; where the server sends no usage, the usage "
                    f"fix counts with it if it loads within {TIKTOKEN_WAIT:g} s, else with an estimate (no ERROR "
                    "line, no long wait)")
    off = f" (the usage fix is off: {fix_off})" if fix_off else ""
    turn_on = ", or take usage out of " + DISABLE if fix_off.startswith("turned off by") else ""
    if reachable:
        return OK, (f"token counting: tiktoken's cl100k_base is {where}; it will be downloaded from {TIKTOKEN_HOST} "
                    f"on first use{off}")
    cond = "if this machine cannot reach" if proxy else "and this machine cannot reach"
    return WARNING, (f"token counting: llm.calc_usage is on, tiktoken's cl100k_base is {where}, {cond} "
                     f"{TIKTOKEN_HOST}: MetaGPT will log 'usage calculation failed!' on streamed calls (aask's "
                     f"default; the calls still succeed){off}. To avoid it, set calc_usage: false in the llm: block, "
                     f""
                     f"or fill a TIKTOKEN_CACHE_DIR with cl100k_base on a connected machine{turn_on}.")


@check("tiktoken", "calc_usage on and tiktoken's cl100k_base not cached: does MetaGPT need the download",
       needs=("tiktoken", "plugin", "server"))
def tiktoken(facts: Facts) -> list[Verdict]:
    found = facts.tiktoken
    if found is None:
        return []
    where = "caching is disabled (TIKTOKEN_CACHE_DIR is empty)" if found.path is None else \
        f"not cached in {found.path.parent}"
    on, why_off = facts.fix_on("usage")
    generation = facts.server.generation if facts.server is not None else None
    source = usage_source(generation.generation if generation is not None else None)
    return [tiktoken_verdict(where, on, source, found.reachable, found.proxy, why_off)]
