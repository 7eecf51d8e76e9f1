"""The emulator's "model": a deterministic echo of the prompt, counted in words, and the usage it reports."""
from __future__ import annotations

import re
from typing import Optional

from ..vllm_versions import Generation


def words(text: str) -> int:
    """Approximate token count: whitespace-separated words (no tokenizer, no model)."""
    return len(text.split())


def cut(text: str, max_tokens: int) -> tuple[list[str], str]:
    """``text`` split into word "tokens" (``"".join`` gives it back), cut at ``max_tokens`` with finish "length"."""
    pieces = re.findall(r"\S+\s*", text)
    return (pieces[:max_tokens], "length") if len(pieces) > max_tokens else (pieces, "stop")


#: How the emulated model answers an unconstrained request: "echo" repeats the prompt (which holds MetaGPT's format
#: example, so an ActionNode's answer parses), "plain" answers in plain words and never in the format asked for
#: (what a small or base model does with MetaGPT's prompts: CONTEXT.md §16).
ANSWER_STYLES = ("echo", "plain")
PLAIN = "I answer in plain words and not in the format you asked for:"


def answer(prompt: str, max_tokens: int, style: str = "echo") -> tuple[list[str], str]:
    """Deterministic reply: the prompt echoed, in word "tokens" ("plain": its words without brackets, braces or
    backticks, after a sentence, so no parser finds a format in it)."""
    if style == "plain":
        return cut(PLAIN + " " + " ".join(re.sub(r"[\[\]{}`#]", " ", prompt).split()), max_tokens)
    return cut("echo: " + prompt, max_tokens)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def usage_details(generation: Generation) -> dict[str, Optional[int]]:
    """The extra (null) usage fields a non-streamed answer of that generation carries."""
    return {"prompt_tokens_details": None, "completion_tokens_details": None} if generation.usage_details else {}
