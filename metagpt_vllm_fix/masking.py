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
