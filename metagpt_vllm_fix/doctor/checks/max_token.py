"""``max-token``: does ``llm.max_token`` (MetaGPT's ``max_tokens`` on every request) fit the server's context?"""

from __future__ import annotations

from ...report import OK, PROBLEM, WARNING
from ...vllm_versions import Generation
from ..check import Verdict, check
from ..facts import Facts
from .model import answered

MIN_PROMPT_ROOM = 256  # tokens a prompt needs at the very least next to llm.max_token


def suggested_max_token(max_len: int) -> int:
    """A ``llm.max_token`` that leaves three quarters of the context for the prompt."""
    return max(1, max_len // 4)


def max_token_verdict(generation: Generation, max_token: int, max_len: int, fix_on: bool,
                      fix_off: str = "", assumed: bool = False) -> tuple[str, str]:
    """(level, message) for ``llm.max_token`` against the server's ``max_model_len``, by ``generation``'s rule.

    MetaGPT 0.7 always asks for ``max_tokens = llm.max_token``. A refusal the ``max_tokens`` fix handles (it sends
    the request again without ``max_tokens``) is a warning; with the fix off it is a problem. Where vLLM clamps
    (0.18+), ``max_token == max_len`` is fine. Every warning and problem names the value to set.
    """
    value = suggested_max_token(max_len)
    rule = f"under vLLM {generation.name}'s rule{' (assumed)' if assumed else ''}: {generation.context_rule}"
    room = max_len - max_token
    if generation.refuses_max_tokens(max_token, max_len, prompt_tokens=1):
        relation = ">" if generation.clamps_max_tokens else ">="
        what = (f"llm.max_token {max_token} {relation} the server's max_model_len {max_len}: MetaGPT 0.7 always "
                f"asks for max_tokens = llm.max_token, so every request gets 400 {rule}")
        if fix_on:
            return WARNING, (f"{what}; handled: the max_tokens fix resends without max_tokens so the server uses "
                             f"the room left (one extra request each time). Set llm.max_token to e.g. {value} to "
                             "avoid it.")
        return PROBLEM, (f"{what} (the max_tokens fix is off: {fix_off or 'not applied'}). Set llm.max_token to "
                         f"e.g. {value}, or start vLLM with a larger --max-model-len.")
    if generation.refuses_max_tokens(max_token, max_len, prompt_tokens=MIN_PROMPT_ROOM):
        what = (f"llm.max_token {max_token} leaves only {room} of max_model_len {max_len} tokens for the prompt: "
                f"MetaGPT 0.7 always asks for max_tokens = llm.max_token, so prompts longer than {room} tokens get "
                f"400 {rule}")
        if fix_on:
            return WARNING, (f"{what}; handled: the max_tokens fix resends those without max_tokens (one extra "
                             f"request each). Set llm.max_token to e.g. {value} to avoid it.")
        return PROBLEM, (f"{what} (the max_tokens fix is off: {fix_off or 'not applied'}). Set llm.max_token to "
                         f"e.g. {value}.")
    if generation.clamps_max_tokens and room < MIN_PROMPT_ROOM:
        return OK, (f"llm.max_token {max_token} fits the server's max_model_len {max_len} under vLLM "
                    f"{generation.name}'s rule{' (assumed)' if assumed else ''}: it clamps max_tokens to the room the "
                    "prompt leaves, so requests succeed")
    return OK, f"llm.max_token {max_token} leaves {room} of max_model_len {max_len} tokens for the prompt"


@check("max-token", "llm.max_token against the served max_model_len, by the server's vLLM rule and the max_tokens fix",
       needs=("config", "plugin", "server"))
def max_token(facts: Facts) -> list[Verdict]:
    config, found = facts.config, facts.server
    if config is None or found is None or not answered(found) or found.generation is None:
        return []
    if found.max_model_len is None:
        return []
    on, why_off = facts.fix_on("max_tokens")
    return [max_token_verdict(found.generation.generation, config.max_token, found.max_model_len, on, why_off,
                              found.generation.assumed)]
