"""The ``httpx`` fix: on an httpx without ``proxies=`` (0.28 and later), ``open_llm`` gets a client built for it.

MetaGPT 0.7 pins ``openai==1.6.0`` but not httpx. openai 1.6.0 builds its client with
``AsyncHttpxClientWrapper(..., proxies=None)``, and MetaGPT's proxy client (``OpenAILLM._make_client_kwargs``, which
the ``api_key`` fix reuses) with ``proxies=llm.proxy``: httpx 0.28 removed that argument (0.26 added ``proxy=``), so
``LLM()`` raises ``TypeError: ... unexpected keyword argument 'proxies'`` (MetaGPT #1617). This fix hands
``AsyncOpenAI`` a client built as openai 1.6.0 builds its own (its ``AsyncHttpxClientWrapper``, ``DEFAULT_TIMEOUT``
and ``DEFAULT_LIMITS``, read from openai itself), and MetaGPT's proxy parameters name ``proxy`` instead; a client
that is already there (the proxy one) is kept. On an httpx that still takes ``proxies=`` it is idle: nothing is
wrapped. It must be applied after ``api_key`` (its wrapper then sees the proxy client that fix adds).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Callable, Optional

from . import Fix, Target


def httpx_version() -> str:
    import httpx

    return str(getattr(httpx, "__version__", "unknown"))


def takes_proxies() -> bool:
    """True when the installed httpx's ``AsyncClient`` still has the ``proxies=`` argument (httpx < 0.28)."""
    import httpx

    try:
        return "proxies" in inspect.signature(httpx.AsyncClient.__init__).parameters
    except (TypeError, ValueError):  # no signature to read: assume the old API, change nothing
        return True


def proxy_argument(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``OpenLLM._get_proxy_params``: the same proxy under httpx's current name, ``proxy``."""
    params = wrapped(*args, **kwargs)
    if isinstance(params, dict) and isinstance(params.get("proxies"), str):
        params = {("proxy" if name == "proxies" else name): value for name, value in params.items()}
    return params


def default_client(base_url: Any) -> Any:
    """The client openai 1.6.0 would build for itself, without the ``proxies=None`` the installed httpx refuses."""
    from openai._base_client import AsyncHttpxClientWrapper
    from openai._constants import DEFAULT_LIMITS, DEFAULT_TIMEOUT

    return AsyncHttpxClientWrapper(base_url=base_url if isinstance(base_url, str) else "", timeout=DEFAULT_TIMEOUT,
                                   limits=DEFAULT_LIMITS)


def give_client(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``OpenLLM._make_client_kwargs``: an ``http_client`` when none is given yet."""
    result = wrapped(*args, **kwargs)
    if isinstance(result, dict) and result.get("http_client") is None:
        result = {**result, "http_client": default_client(result.get("base_url"))}
    return result


class HttpxFix(Fix):
    name = "httpx"
    summary = "on httpx 0.28+, open_llm gets an HTTP client built for it (llm.proxy through proxy=)"
    upstream = ("with httpx 0.28+, LLM() raises TypeError: AsyncClient.__init__() got an unexpected keyword argument "
                "'proxies'")

    def targets(self) -> Sequence[Target]:
        return [("OpenLLM", "_get_proxy_params", proxy_argument), ("OpenLLM", "_make_client_kwargs", give_client)]

    def problem(self, module: ModuleType) -> Optional[str]:
        found = super().problem(module)
        if found:
            return found
        try:
            from openai._base_client import AsyncHttpxClientWrapper  # noqa: F401
            from openai._constants import DEFAULT_LIMITS, DEFAULT_TIMEOUT  # noqa: F401
        except ImportError as exc:
            return f"openai no longer has the defaults of its 1.6.0 client ({exc})"
        return None

    def idle(self, module: ModuleType) -> Optional[str]:
        if takes_proxies():
            return f"httpx {httpx_version()} still takes proxies=, which openai 1.6.0 passes: nothing to fix"
        return None


FIX = HttpxFix()
