"""Facts about this Python environment: MetaGPT, the plugin, MetaGPT's provider as built here, tiktoken's cache."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

from .. import gate
from .._activation import disabled as disabled_fixes
from .._activation import status as plugin_status
from ..metagpt_env import import_metagpt
from .facts import Facts, MetagptFacts, PluginFacts, ProviderFacts, TiktokenFacts
from .probe import OPENAI_COMPATIBLE

TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
TIKTOKEN_HOST = "openaipublic.blob.core.windows.net"
TIKTOKEN_PROBE_SECONDS = 1.5  #: at most, for the connection attempt to TIKTOKEN_HOST


@contextlib.contextmanager
def quiet_plugin_log() -> Iterator[None]:
    """Keep the plugin's own warnings (e.g. trimmed key) off stderr: the doctor reports them itself."""
    logger = logging.getLogger("metagpt_vllm_fix")
    previous = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = previous


def gather_metagpt(facts: Facts, scratch: Path) -> Facts:
    """The installed MetaGPT (the gate's decision), imported against ``scratch`` (metagpt_env)."""
    version = gate.installed_version()
    found = MetagptFacts(version.metagpt_version, version.code, version.supported, sys.executable)
    if found.code != "metagpt-absent":
        try:
            import_metagpt(scratch, ["metagpt.config2"])
        except Exception as exc:  # noqa: BLE001  (a broken MetaGPT install is a finding, not a crash)
            found = dataclasses.replace(found, import_error=f"{type(exc).__name__}: {exc}")
    return dataclasses.replace(facts, metagpt=found)


def gather_provider(facts: Facts, scratch: Path) -> Facts:
    """The key MetaGPT's own open_llm provider, built from this config here (the plugin applies its fixes during
    this import), would send."""
    if facts.config is None or facts.api_type != "open_llm" or facts.metagpt is None or not facts.metagpt.supported:
        return facts
    try:
        with quiet_plugin_log():
            import_metagpt(scratch, ["metagpt.provider"])
            from metagpt.provider.llm_provider_registry import create_llm_instance

            found = ProviderFacts(create_llm_instance(facts.config.llm).aclient.api_key)
    except Exception as exc:  # noqa: BLE001  (whatever MetaGPT's provider raises is reported as a problem)
        found = ProviderFacts(None, f"{type(exc).__name__}: {exc}")
    return dataclasses.replace(facts, provider=found)


def gather_plugin(facts: Facts) -> Facts:
    """The plugin's status in this process, the switches as set, and an httpx that no longer takes proxies=."""
    if facts.metagpt is None or not facts.metagpt.usable:
        return facts
    from ..fixes.httpx_client import httpx_version, takes_proxies

    found = PluginFacts(plugin_status(), os.environ.get("METAGPT_VLLM_FIX"), tuple(disabled_fixes()[1]),
                        None if takes_proxies() else httpx_version())
    return dataclasses.replace(facts, plugin=found)


def tiktoken_cache() -> tuple[Optional[Path], bool]:
    """(cl100k_base cache file or None when caching is disabled, whether it is there), as tiktoken decides."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        directory = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        directory = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        directory = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if directory == "":
        return None, False
    path = Path(directory) / hashlib.sha1(TIKTOKEN_URL.encode()).hexdigest()
    return path, path.is_file()


def _can_reach(host: str, port: int, timeout: float) -> bool:
    with socket.create_connection((host, port), timeout=timeout):
        return True


def _proxy_env() -> bool:
    return any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


def gather_tiktoken(facts: Facts, timeout: float) -> tuple[Facts, Optional[Callable[[Facts, float], Facts]]]:
    """The ``tiktoken`` facts when MetaGPT would need to download cl100k_base, and, where only the download host
    can say whether it will come, a connection attempt started in the background: the second value finishes it
    (``finish(facts, deadline)``) once the network checks are done."""
    config = facts.config
    if config is None or not config.calc_usage or config.api_type not in OPENAI_COMPATIBLE:
        return facts, None
    path, cached = tiktoken_cache()
    if cached:
        return facts, None
    found = TiktokenFacts(path, _proxy_env())
    facts = dataclasses.replace(facts, tiktoken=found)
    if found.proxy or facts.fix_on("usage")[0]:  # with the usage fix, no request waits on the download
        return facts, None
    box: dict[str, bool] = {}

    def target() -> None:
        try:
            box["ok"] = _can_reach(TIKTOKEN_HOST, 443, min(TIKTOKEN_PROBE_SECONDS, timeout))
        except OSError:
            box["ok"] = False

    thread = threading.Thread(target=target, name="doctor-tiktoken", daemon=True)
    thread.start()

    def finish(facts: Facts, deadline: float) -> Facts:
        thread.join(max(0.0, min(deadline - time.monotonic(), TIKTOKEN_PROBE_SECONDS)))
        return dataclasses.replace(facts, tiktoken=dataclasses.replace(found, reachable=box.get("ok")))

    return facts, finish
