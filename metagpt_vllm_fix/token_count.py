"""Counting tokens locally when the server sent no usage: tiktoken if it is at hand within seconds, else an estimate.

MetaGPT 0.7 counts an ``open_llm`` answer with tiktoken's cl100k_base, which tiktoken downloads on first use
with no timeout: offline that fails on every call, and behind a network that drops packets it hangs. Here the
encoding is loaded once per process on a background thread; a request path waits for it at most
``WAIT_SECONDS`` once, and after a failure or a timeout never again (an estimate of 4 characters per token
stands in). The arithmetic is upstream's for "open-llm-model" (no per-message overhead, 3 for the reply).
Text that looks like a special token (``<|endoftext|>``, common in code about LLMs) is counted as ordinary text:
tiktoken's default would raise, and a count must never fail an answer that arrived.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

log = logging.getLogger("metagpt_vllm_fix")

WAIT_SECONDS = 3.0
ENCODING = "cl100k_base"
CHARS_PER_TOKEN = 4

_lock = threading.Lock()
_state: dict[str, Any] = {"encoding": None, "error": None, "thread": None, "announced": False, "failed": False}


def _load() -> None:
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(ENCODING)
    except BaseException as exc:  # noqa: BLE001 - offline, proxy, broken cache: all mean "not available"
        with _lock:
            _state["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return
    with _lock:
        _state["encoding"] = encoding


def encoding(wait: float = WAIT_SECONDS) -> Optional[Any]:
    """cl100k_base if it loaded; the first caller waits up to ``wait`` seconds, later callers not at all."""
    with _lock:
        if _state["encoding"] is not None or _state["error"] is not None:
            return _state["encoding"]
        thread = _state["thread"]
        if thread is None:
            thread = _state["thread"] = threading.Thread(target=_load, name="metagpt-vllm-fix-tiktoken", daemon=True)
            thread.start()
    thread.join(wait)
    with _lock:
        if _state["encoding"] is None and _state["error"] is None:
            _state["error"] = f"tiktoken's {ENCODING} did not load within {wait:g} s (download blocked?)"
        return _state["encoding"]


def _estimate(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def _text(value: Any) -> str:
    """A message field as text; OpenAI vision-style content lists count their text parts (as upstream does)."""
    if isinstance(value, list):
        return "".join(item.get("text", "") for item in value if isinstance(item, dict) and item.get("type") == "text")
    return value if isinstance(value, str) else str(value)


def _tiktoken_measure(enc: Any) -> Callable[[str], int]:
    """tiktoken's count of a text, special-token text included as plain text; the estimate if tiktoken fails."""

    def measure(text: str) -> int:
        try:
            return len(enc.encode(text, disallowed_special=()))
        except Exception as exc:  # noqa: BLE001 - a count is never worth an exception on the request path
            with _lock:
                first = not _state["failed"]
                _state["failed"] = True
            if first:
                log.warning("usage: tiktoken could not count a text (%s: %s); estimating it (%d characters per "
                            "token) instead.", type(exc).__name__, str(exc)[:120], CHARS_PER_TOKEN)
            return _estimate(text)

    return measure


def _values(message: Any) -> list[Any]:
    return list(message.values()) if isinstance(message, dict) else [message]


def count(messages: list[dict[str, Any]], answer: str, model: str = "") -> tuple[int, int, str]:
    """(prompt tokens, completion tokens, how they were counted) without printing, waiting long or raising."""
    enc = encoding()
    measure: Callable[[str], int] = _tiktoken_measure(enc) if enc is not None else _estimate
    how = f"tiktoken {ENCODING}" if enc is not None else f"an estimate ({CHARS_PER_TOKEN} characters per token)"
    prompt = sum(measure(_text(value)) for message in messages for value in _values(message)) + 3
    completion = measure(answer)
    with _lock:
        announce = not _state["announced"]
        _state["announced"] = True
    if announce:
        why = "" if enc is not None else f": tiktoken's {ENCODING} is not available ({_state['error']})"
        log.warning("usage: the server sent no token counts for %s; counting with %s%s. The server's own counts "
                    "are exact (newer vLLM sends them when asked).", model or "this model", how, why)
    return prompt, completion, how


def reset() -> None:
    """Forget the loaded encoding and any failure (for tests; a running load thread finishes on its own)."""
    with _lock:
        _state.update(encoding=None, error=None, thread=None, announced=False, failed=False)
