"""The ``api_key`` fix: ``open_llm`` sends ``llm.api_key`` (and honours ``llm.proxy``), not ``"sk-xxx"``.

MetaGPT 0.7's ``OpenLLM._make_client_kwargs`` returns ``api_key="sk-xxx"`` and no proxy client. The wrapper keeps
whatever the wrapped method returns and takes the key and the proxy ``http_client`` from the parent
``OpenAILLM``'s own method, so the fix is upstream's logic rather than a copy of it. A key that an HTTP header
cannot carry is not sent (it would break the request or inject a header): MetaGPT's own ``sk-xxx`` goes instead,
with one warning, which is what MetaGPT 0.7 sends anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Callable, Optional

from .. import gate, wrapping
from ..masking import mask
from . import Fix, Once, Target

log = logging.getLogger("metagpt_vllm_fix")
METHOD = gate.METHOD_NAME


class InvalidApiKey(ValueError):
    """The configured key cannot travel in an HTTP header; raised only with ``METAGPT_VLLM_FIX=strict``."""


_said = Once()  # hashes of the unsendable keys already warned about (the key itself is never kept)


def unsendable(key: str) -> bool:
    """A line break, control or non-ASCII character inside: an HTTP header cannot carry it (or it injects one)."""
    return any(not 32 <= ord(ch) < 127 for ch in key.strip())


def clean_key(key: Any) -> Any:
    """The key to send: trimmed of surrounding whitespace (with a warning), or None when a header cannot carry it.

    None leaves MetaGPT's own ``sk-xxx`` in place, with one warning: a vLLM started without ``--api-key`` answers
    that as it did before the plugin, so a broken key never turns a working setup into a crash. In
    ``METAGPT_VLLM_FIX=strict`` mode it raises :class:`InvalidApiKey` instead.
    """
    if not isinstance(key, str):
        return key
    clean = key.strip()
    if unsendable(clean):
        import _metagpt_vllm_fix_boot as boot

        problem = (f"llm.api_key ({mask(clean)}) contains a line break, control or non-ASCII character, which an "
                   "HTTP Authorization header cannot carry")
        if boot.mode() == "strict":
            raise InvalidApiKey(f"{problem}; fix the key in your config2.yaml.")
        if _said.first(hash(clean)):
            log.warning("%s: sending MetaGPT's placeholder 'sk-xxx' instead, as MetaGPT 0.7 does (a vLLM started "
                        "with --api-key answers 401). Fix the key in your config2.yaml.", problem)
        return None
    if clean != key:
        log.warning("llm.api_key (%s) has whitespace around it; sending it trimmed. Check your config2.yaml.",
                    mask(clean), extra={"fix": "api_key"})
    return clean


def send_configured_key(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper: the wrapped kwargs, with the key and proxy client that ``OpenAILLM`` would use."""
    result = wrapped(*args, **kwargs)
    owner = _owner_of_ours(type(instance)) if instance is not None else None
    if owner is None or not isinstance(result, dict):
        return result
    upstream = getattr(super(owner, instance), METHOD)()
    fixed = dict(result)
    key = clean_key(upstream.get("api_key"))
    if key is not None:  # else MetaGPT's own key stays: the request as shipped
        fixed["api_key"] = key
    if "http_client" in upstream and "http_client" not in fixed:
        fixed["http_client"] = upstream["http_client"]
    return fixed


def is_ours(obj: Any) -> bool:
    """True when ``obj`` is this fix's wrapper (anywhere in a chain of wrappers)."""
    return wrapping.is_ours(obj, send_configured_key)


def _owner_of_ours(cls: type) -> Optional[type]:
    """The class in ``cls``'s MRO whose own attribute carries our wrapper."""
    return next((klass for klass in cls.__mro__ if wrapping.is_wrapped(klass, METHOD, send_configured_key)), None)


def is_patched(cls: Any) -> bool:
    """True when ``cls`` itself defines the method and our wrapper is in its wrapper chain."""
    return isinstance(cls, type) and wrapping.is_wrapped(cls, METHOD, send_configured_key)


class ApiKeyFix(Fix):
    name = "api_key"
    summary = "open_llm sends llm.api_key and honours llm.proxy"
    upstream = "every request carries 'Authorization: Bearer sk-xxx' (401 from a vLLM started with --api-key)"

    def targets(self) -> Sequence[Target]:
        return [(gate.CLASS_NAME, METHOD, send_configured_key)]

    def problem(self, module: ModuleType) -> Optional[str]:
        return gate._shape_problem(module)


FIX = ApiKeyFix()
