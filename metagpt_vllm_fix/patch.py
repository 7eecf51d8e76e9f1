"""The patch itself: a wrapt wrapper on ``OpenLLM._make_client_kwargs`` that puts back what the override drops.

MetaGPT 0.7's override returns ``api_key="sk-xxx"`` and no proxy client. The wrapper keeps whatever the
wrapped method returns and takes the key and the proxy ``http_client`` from the parent ``OpenAILLM``'s own
method, so the fix is upstream's logic rather than a copy of it. Only our own wrapper is ever removed.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

try:
    import wrapt

    WRAPT_ERROR = ""
except ImportError as exc:  # reported by status() and by the hook's warning; MetaGPT still imports
    wrapt = None
    WRAPT_ERROR = f"{type(exc).__name__}: {exc}"

from .gate import METHOD_NAME
from .masking import mask

log = logging.getLogger("metagpt_vllm_fix")
# wrapt 2.x moved FunctionWrapper onto BaseObjectProxy; wrapt 1.x has only ObjectProxy.
_PROXY = (getattr(wrapt, "BaseObjectProxy", None) or wrapt.ObjectProxy) if wrapt is not None else ()


class InvalidApiKey(ValueError):
    """The configured key cannot travel in an HTTP header (it would break or inject headers)."""


def _clean_key(key: Any) -> Any:
    """Trim surrounding whitespace (with a warning); refuse what an HTTP header cannot carry inside the key."""
    if not isinstance(key, str):
        return key
    clean = key.strip()
    if any(not 32 <= ord(ch) < 127 for ch in clean):
        raise InvalidApiKey(
            f"llm.api_key ({mask(clean)}) contains a line break, control or non-ASCII character, which an HTTP "
            "Authorization header cannot carry; fix the key in your config2.yaml."
        )
    if clean != key:
        log.warning("llm.api_key (%s) has whitespace around it; sending it trimmed. Check your config2.yaml.",
                    mask(clean))
    return clean


def _send_configured_key(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    """wrapt wrapper: the wrapped kwargs, with the key and proxy client that ``OpenAILLM`` would use."""
    result = wrapped(*args, **kwargs)
    owner = _owner_of_ours(type(instance)) if instance is not None else None
    if owner is None or not isinstance(result, dict):
        return result
    upstream = getattr(super(owner, instance), METHOD_NAME)()
    fixed = dict(result)
    fixed["api_key"] = _clean_key(upstream.get("api_key"))
    if "http_client" in upstream and "http_client" not in fixed:
        fixed["http_client"] = upstream["http_client"]
    return fixed


def _is_ours(obj: Any) -> bool:
    return isinstance(obj, _PROXY) and getattr(obj, "_self_wrapper", None) is _send_configured_key


def _chain(obj: Any):
    """Yield ``obj`` and every object it wraps, outermost first."""
    while obj is not None:
        yield obj
        obj = getattr(obj, "__wrapped__", None) if isinstance(obj, _PROXY) else None


def _owner_of_ours(cls: type) -> Optional[type]:
    """The class in ``cls``'s MRO whose own attribute carries our wrapper."""
    for klass in cls.__mro__:
        if any(_is_ours(node) for node in _chain(klass.__dict__.get(METHOD_NAME))):
            return klass
    return None


def is_patched(cls: Any) -> bool:
    """True when ``cls`` itself defines the method and our wrapper is in its wrapper chain."""
    return isinstance(cls, type) and any(_is_ours(node) for node in _chain(cls.__dict__.get(METHOD_NAME)))


def patch(cls: type) -> bool:
    """Wrap ``cls.<method>`` once; return False when it was already wrapped by us."""
    if is_patched(cls):
        return False
    if wrapt is None:
        raise ImportError(f"wrapt cannot be imported ({WRAPT_ERROR})")
    wrapt.wrap_function_wrapper(cls, METHOD_NAME, _send_configured_key)
    return True


def unpatch(cls: type) -> bool:
    """Take our wrapper out of ``cls.<method>``, leaving any other wrapper in place; False if ours was absent."""
    current = cls.__dict__.get(METHOD_NAME)
    if _is_ours(current):
        setattr(cls, METHOD_NAME, current.__wrapped__)
        return True
    outer = None
    for node in _chain(current):
        if _is_ours(node) and outer is not None:
            outer.__wrapped__ = node.__wrapped__  # someone wrapped on top of us: splice ours out of their chain
            return True
        outer = node
    return False
