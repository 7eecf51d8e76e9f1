"""Asking the server what it is: ``GET {base_url}/models`` with the key MetaGPT sends, ``/health``, ``/version``.

Everything is bounded by one deadline (``--timeout``), in a daemon thread, so that a stuck DNS lookup or a
server that accepts the connection and never answers cannot hold the doctor.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import threading
import time
from typing import Any, Optional
from urllib.parse import urlsplit

from ..fixes.api_key import unsendable as unsendable_key
from ..gate import PLACEHOLDER as PLACEHOLDER_KEY  # what MetaGPT 0.7's open_llm sends instead of the key
from .facts import Facts, ServerFacts, server_generation

OPENAI_COMPATIBLE = ("open_llm", "openai")  #: the api_types whose server the doctor can probe and ask


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _server_root(base_url: str) -> str:
    """``http://host:port`` part of ``base_url`` plus its path without a trailing ``/v1`` (where /health is)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _describe_failure(exc: BaseException, host: str, port: Optional[int], timeout: float) -> tuple[str, str]:
    """(kind, sentence) for an httpx exception, from its cause chain."""
    import httpx

    where = f"{host}:{port}" if port else host
    if isinstance(exc, httpx.ConnectTimeout):
        return "timeout", (f"no answer to the connection attempt to {where} within {timeout:g} s "
                           "(host down, wrong address, or a firewall dropping packets)")
    if isinstance(exc, httpx.TimeoutException):
        return "timeout", (f"{where} accepted the connection but sent no HTTP answer within {timeout:g} s "
                           "(is it really an OpenAI-compatible server, and not stuck?)")
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return "bad-url", f"base_url is not a usable http(s) URL ({exc})"
    cause: Optional[BaseException] = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ConnectionRefusedError):
            return "refused", f"connection refused: nothing listens on {where}. Is the server running, on this port?"
        if isinstance(cause, socket.gaierror):
            return "dns", f"cannot resolve host {host!r} (DNS lookup failed): check base_url"
        if type(cause).__name__.startswith("SSL"):
            return "tls", f"TLS error talking to {where}: {cause}"
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol", f"{where} closed the connection without a valid HTTP answer ({exc})"
    return "connect", f"cannot reach {where}: {type(exc).__name__}: {exc}"


def read_version(status: Optional[int], body: Any) -> tuple[Optional[str], str]:
    """(release, why not) from a ``GET /version`` answer: vLLM >= 0.10 says ``{"version": "0.32.0"}``."""
    if status is None:
        return None, "/version gave no answer"
    if status != 200:
        return None, f"no /version ({status})"
    version = body.get("version") if isinstance(body, dict) else None
    if isinstance(version, str) and version.strip():
        return version.strip()[:40], ""
    return None, "/version answered without a version"


def probe_server(base_url: str, key: str, proxy: Optional[str], deadline: float, timeout: float) -> dict[str, Any]:
    """``GET {base_url}/models`` with the key (``/health`` without it after a 401), then ``/version`` without it,
    all before ``deadline``."""
    import httpx

    parts = urlsplit(base_url)
    host, port = parts.hostname or "", parts.port
    result: dict[str, Any] = {"url": base_url.rstrip("/") + "/models", "reachable": None, "status": None,
                              "error": None, "message": None, "models": [], "max_model_len": {}, "health": None,
                              "version_status": None, "vllm_version": None,
                              "version_note": "/version not asked (no HTTP answer)"}

    def remaining() -> float:
        return max(0.05, deadline - time.monotonic())

    def client() -> httpx.Client:
        kwargs: dict[str, Any] = {"timeout": remaining(), "follow_redirects": False}
        if proxy:
            try:
                return httpx.Client(proxy=proxy, **kwargs)
            except TypeError:  # httpx < 0.26
                return httpx.Client(proxies=proxy, **kwargs)
        return httpx.Client(**kwargs)

    try:
        with client() as http:
            response = http.get(result["url"], headers={"Authorization": f"Bearer {key}"}, timeout=remaining())
            result["reachable"], result["status"] = True, response.status_code
            if response.status_code == 200:
                try:
                    cards = response.json().get("data", [])
                    result["models"] = [c["id"] for c in cards if isinstance(c, dict) and isinstance(c.get("id"), str)]
                    result["max_model_len"] = {c["id"]: c["max_model_len"] for c in cards if isinstance(c, dict)
                                               and isinstance(c.get("id"), str)
                                               and isinstance(c.get("max_model_len"), int)}
                except (ValueError, AttributeError):
                    result["error"] = "not-openai"
                    result["message"] = "answered 200 but not with an OpenAI model list (is base_url right?)"
            elif response.status_code == 401:
                try:
                    result["health"] = http.get(_server_root(base_url) + "/health", timeout=remaining()).status_code
                except httpx.HTTPError:
                    result["health"] = None
            body: Any = None
            try:
                answer = http.get(_server_root(base_url) + "/version", timeout=remaining())
                result["version_status"] = answer.status_code
                body = answer.json() if answer.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                pass
            result["vllm_version"], result["version_note"] = read_version(result["version_status"], body)
    except httpx.HTTPError as exc:
        result["reachable"] = False
        result["error"], result["message"] = _describe_failure(exc, host, port, timeout)
    except Exception as exc:  # noqa: BLE001  (e.g. a header the key cannot travel in: reported as a problem)
        result["reachable"] = False
        result["error"], result["message"] = "client", f"{type(exc).__name__}: {exc}"
    return result


def run_bounded(func: Any, timeout: float, *args: Any) -> tuple[bool, Any]:
    """Run ``func`` in a daemon thread; (finished, result). A stuck DNS lookup or socket cannot outlive us."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = func(*args)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="doctor-probe", daemon=True)
    thread.start()
    thread.join(max(0.0, timeout))
    if thread.is_alive():
        return False, None
    if "error" in box:
        return True, box["error"]
    return True, box.get("result")


def gather_server(facts: Facts, deadline: float, timeout: float) -> Facts:
    """The ``server`` facts, asked with the key MetaGPT's provider sends: the configured one, or MetaGPT's
    'sk-xxx' where open_llm sends that because an HTTP header cannot carry the key (not probed at all for another
    api_type, whose provider cannot send such a key)."""
    config = facts.config
    if config is None or config.api_type not in OPENAI_COMPATIBLE:
        return facts
    placeholder = unsendable_key(config.api_key)
    if placeholder and config.api_type != "open_llm":
        return facts
    key = PLACEHOLDER_KEY if placeholder else config.api_key.strip()
    started = time.monotonic()
    finished, result = run_bounded(probe_server, deadline - started + 0.5, config.base_url, key, config.proxy,
                                   deadline, timeout)
    seconds = round(time.monotonic() - started, 2)
    url = config.base_url.rstrip("/") + "/models"
    if not finished:
        result = {"url": url, "reachable": False, "error": "timeout",
                  "message": f"no answer from {urlsplit(config.base_url).netloc} within {timeout:g} s"}
    elif isinstance(result, BaseException):
        result = {"url": url, "reachable": False, "error": "client", "message": f"{type(result).__name__}: {result}"}
    lengths: dict[str, int] = result.pop("max_model_len", {})
    version, why = result.pop("vllm_version", None), result.pop("version_note", "")
    generation = server_generation(version, why) if result.get("reachable") else None
    server = ServerFacts(**{**result, "models": tuple(result.get("models") or ())},
                         max_model_len=lengths.get(config.model or ""), seconds=seconds, generation=generation,
                         placeholder=placeholder)
    return dataclasses.replace(facts, server=server)
