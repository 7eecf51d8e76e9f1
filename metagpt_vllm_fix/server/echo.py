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


def answer(prompt: str, max_tokens: int) -> tuple[list[str], str]:
    """Deterministic reply: the prompt echoed, in word "tokens"."""
    return cut("echo: " + prompt, max_tokens)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def usage_details(generation: Generation) -> dict[str, Optional[int]]:
    """The extra (null) usage fields a non-streamed answer of that generation carries."""
    return {"prompt_tokens_details": None, "completion_tokens_details": None} if generation.usage_details else {}
