"""Masking of secrets: the one place that decides how much of an API key may ever be shown."""

from __future__ import annotations

from typing import Optional

#: Keys shorter than this are shown as ``***`` only: 3 + 3 visible characters would give most of them away.
MIN_LEN_TO_HINT = 12


def mask(secret: Optional[str]) -> str:
    """Return a printable hint of ``secret``: at most its first 3 and last 3 characters."""
    if secret is None:
        return "(none)"
    text = str(secret)
    if not text:
        return "(empty)"
    if len(text) < MIN_LEN_TO_HINT:
        return "***"
    shown = text[:3] + "..." + text[-3:]
    return "".join(ch if ch.isprintable() else "?" for ch in shown)


def show_authorization(header: Optional[str]) -> str:
    """An ``Authorization`` header fit for printing: MetaGPT's public placeholder ``sk-xxx`` in full, a key masked."""
    if header is None:
        return "(no Authorization header)"
    scheme, sep, credential = header.partition(" ")
    from .gate import PLACEHOLDER  # what MetaGPT 0.7's open_llm sends instead of the key: public, shown in full

    if not sep:
        return mask(header)
    return f"{scheme} {credential if credential == PLACEHOLDER else mask(credential)}"
