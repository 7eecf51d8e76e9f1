"""``metagpt-vllm-fix doctor``: read the configuration the way MetaGPT 0.7 does, probe the server, explain.

MetaGPT is imported against a scratch root and a scratch HOME (metagpt_env); the doctor then runs MetaGPT's own
``Config.default()`` against the real paths, so it can report a broken file as a config error and leaves the
user's directories alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from . import __version__, doctor_ask, gate
from ._activation import DISABLE, FixStatus, Status
from ._activation import disabled as disabled_fixes
from ._activation import status as plugin_status
from .fixes.api_key import unsendable as unsendable_key
from .gate import PLACEHOLDER as PLACEHOLDER_KEY  # what MetaGPT 0.7 sends instead of the key
from .masking import mask
from .metagpt_env import import_metagpt, metagpt_root, quiet_loguru
from .report import OK, PROBLEM, WARNING, Report, scrub_obj, worst
from .token_count import WAIT_SECONDS as TIKTOKEN_WAIT
from .vllm_versions import GENERATIONS, Generation, for_version

EXIT_OK, EXIT_PROBLEM, EXIT_CONFIG = 0, 1, 2
TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
TIKTOKEN_HOST = "openaipublic.blob.core.windows.net"
MIN_PROMPT_ROOM = 256  # tokens a prompt needs at the very least next to llm.max_token


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


# --- reading the configuration ------------------------------------------------------------------------------


class ConfigError(Exception):
    """The configuration cannot be loaded by MetaGPT 0.7; the message is safe to print."""


def _show_path(path: Path) -> str:
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _yaml_error(path: Path, exc: Exception) -> str:
    """A YAML error without the offending line's text (it could hold the key)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{_show_path(path)} is not valid YAML: {problem}{where}"


def _validation_error(exc: Exception) -> str:
    """pydantic's errors as ``field: message``, never with the input values (they may hold secrets)."""
    try:
        errors = exc.errors()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001  (not a pydantic error after all: its type name is all we show)
        return type(exc).__name__
    parts = []
    for error in errors:
        loc = ".".join(str(part) for part in error.get("loc", ())) or "(top level)"
        parts.append(f"{loc}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def _read_yaml(config_cls: Any, path: Path) -> Any:
    import yaml

    try:
        return config_cls.read_yaml(path)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{_show_path(path)} cannot be read: {exc.__class__.__name__}: {exc}") from None


def load_config(config2: Any, explicit: Optional[Path]) -> tuple[Any, list[Path], list[Path]]:
    """MetaGPT's own loader: ``Config.from_yaml_file(explicit)`` or ``Config.default()`` on the real paths.

    Returns ``(config, files used, files searched)``; raises :class:`ConfigError`.
    """
    from pydantic import ValidationError

    config_cls = config2.Config
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: no such file")
        data = _read_yaml(config_cls, explicit)
        if not isinstance(data, dict):
            raise ConfigError(f"{_show_path(explicit)} is empty or not a YAML mapping")
        try:
            return config_cls.from_yaml_file(explicit), [explicit], [explicit]
        except ValidationError as exc:
            raise ConfigError(f"{_show_path(explicit)}: {_validation_error(exc)}") from None
    root = metagpt_root()
    searched = [root / "config" / "config2.yaml", Path.home() / ".metagpt" / "config2.yaml"]
    used = [path for path in searched if path.exists()]
    if not used:
        raise ConfigError("no config2.yaml found: MetaGPT 0.7 reads " + " and ".join(_show_path(p) for p in searched)
                          + "; neither exists (create ~/.metagpt/config2.yaml, or pass --config PATH)")
    llm_from: Optional[Path] = None
    for path in used:
        data = _read_yaml(config_cls, path)
        if not isinstance(data, dict):
            raise ConfigError(f"{_show_path(path)} is empty or not a YAML mapping; MetaGPT 0.7 cannot start with it")
        if "llm" in data:
            llm_from = path
    saved_root = config2.METAGPT_ROOT
    config2.METAGPT_ROOT = root  # Config.default() reads this module global; the import used a scratch root
    try:
        return config_cls.default(), used, searched
    except ValidationError as exc:
        where = _show_path(llm_from) if llm_from else " and ".join(_show_path(p) for p in used) + " (no llm: block)"
        raise ConfigError(f"{where}: {_validation_error(exc)}") from None
    except Exception as exc:  # noqa: BLE001  (whatever else Config.default() trips on: reported, never raised)
        raise ConfigError(f"MetaGPT cannot load {', '.join(_show_path(p) for p in used)}: "
                          f"{type(exc).__name__}") from None
    finally:
        config2.METAGPT_ROOT = saved_root


# --- probing the server -------------------------------------------------------------------------------------


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


# --- tiktoken (token counting) ------------------------------------------------------------------------------


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


# --- judging by the server's generation and by the plugin's fixes (pure functions, one verdict each) --------


@dataclasses.dataclass(frozen=True)
class ServerGeneration:
    """Which vLLM rules the doctor applies to the server, and whether it knows or assumes them."""

    version: Optional[str]  #: what ``/version`` said, if anything
    generation: Generation
    assumed: bool  #: no usable ``/version``: the rules of vLLM 0.3 (MetaGPT 0.7's time) are assumed
    why: str = ""  #: why the version is assumed

    def as_json(self) -> dict[str, Any]:
        return {"vllm_version": self.version, "generation": self.generation.name, "version_assumed": self.assumed,
                "context_rule": self.generation.context_rule}


def server_generation(version: Optional[str], why: str = "no /version") -> ServerGeneration:
    """The generation whose rules apply: the one ``version`` belongs to, else (absent, unknown) vLLM 0.3's."""
    if version is not None:
        try:
            return ServerGeneration(version, for_version(version), False)
        except ValueError:
            why = f"/version says {version!r}, which is not a vLLM release this doctor knows"
    return ServerGeneration(version, GENERATIONS[0], True, why)


def describe_server(server: ServerGeneration) -> str:
    """The doctor's ``server`` line: which release answered, and the ``max_tokens`` rule that follows."""
    rule = server.generation.context_rule
    if not server.assumed:
        return f"server: vLLM {server.version}, generation {server.generation.name}: {rule}"
    return (f"server: {server.why}: a vLLM of the {server.generation.name} era or another OpenAI-compatible "
            f"server; assuming vLLM {server.generation.name}'s rules: {rule}")


def fix_in_effect(st: Optional[Status], name: str, api_type: Optional[str]) -> tuple[bool, str]:
    """(on, why not): does the named fix act on the MetaGPT runs this config drives, in this environment?"""
    if api_type != "open_llm":
        return False, f"the fixes act on api_type open_llm only, not {api_type}"
    if st is None or st.code not in ("supported", "removed"):
        return False, "the plugin is inactive"
    fix = next((f for f in st.fixes if f.name == name), None)
    if fix is None:
        return False, f"this plugin has no {name} fix"
    if fix.state == "off":
        return False, f"turned off by {DISABLE}"
    if fix.state not in ("active", "pending"):
        return False, f"the {name} fix is {fix.state}: {fix.reason}"
    if not st.automatic:
        return False, "automatic activation is off in this environment"
    return True, ""


def fixes_verdict(fixes: Sequence[FixStatus], automatic: bool, unknown: Sequence[str] = ()) -> tuple[str, str]:
    """The ``fixes`` line: each fix and its state; a warning for a refused fix or a word naming no fix."""
    parts = []
    for fix in fixes:
        if fix.state == "off":
            parts.append(f"{fix.name} off ({DISABLE})")
        elif fix.state == "refused":
            parts.append(f"{fix.name} refused ({fix.reason})")
        else:
            parts.append(f"{fix.name} {fix.state}")
    message = "fixes: " + (", ".join(parts) or "none")
    if not automatic:
        message += " (in processes that `import metagpt_vllm_fix`; automatic activation is off)"
    if unknown:
        message += (f"; {DISABLE} names no fix: {', '.join(w[:20] for w in unknown[:5])} "
                    f"(the fixes are {', '.join(f.name for f in fixes)})")
    level = WARNING if unknown or any(f.state == "refused" for f in fixes) else OK
    return level, message


def httpx_verdict(version: str, fix_on: bool, why_not: str = "") -> tuple[str, str]:
    """The ``httpx`` line, for an httpx that no longer takes ``proxies=`` (0.28+)."""
    what = f"httpx {version} no longer takes proxies=, which openai 1.6.0 (MetaGPT 0.7's pin) passes"
    if fix_on:
        return OK, f"{what}; the httpx fix builds open_llm's HTTP client for it"
    return PROBLEM, (f"{what}: LLM() raises TypeError: AsyncClient.__init__() got an unexpected keyword argument "
                     f"'proxies' (the httpx fix is not in effect: {why_not}). Let the fix act, or install httpx<0.28.")


def suggested_max_token(max_len: int) -> int:
    """A ``llm.max_token`` that leaves three quarters of the context for the prompt."""
    return max(1, max_len // 4)


def max_token_verdict(generation: Generation, max_token: int, max_len: int, fix_on: bool,
                      fix_off: str = "", assumed: bool = False) -> tuple[str, str]:
    """(level, message) for ``llm.max_token`` against the server's ``max_model_len``, by ``generation``'s rule.

    MetaGPT 0.7 always asks for ``max_tokens = llm.max_token``. A refusal the ``max_tokens`` fix handles (it sends
    the request again without ``max_tokens``) is a warning; with the fix off it is a problem. Where vLLM clamps
    (0.18+), ``max_token == max_len`` is fine. Every warning and problem names the value to set.
    """
    value = suggested_max_token(max_len)
    rule = f"under vLLM {generation.name}'s rule{' (assumed)' if assumed else ''}: {generation.context_rule}"
    room = max_len - max_token
    if generation.refuses_max_tokens(max_token, max_len, prompt_tokens=1):
        relation = ">" if generation.clamps_max_tokens else ">="
        what = (f"llm.max_token {max_token} {relation} the server's max_model_len {max_len}: MetaGPT 0.7 always "
                f"asks for max_tokens = llm.max_token, so every request gets 400 {rule}")
        if fix_on:
            return WARNING, (f"{what}; handled: the max_tokens fix resends without max_tokens so the server uses "
                             f"the room left (one extra request each time). Set llm.max_token to e.g. {value} to "
                             "avoid it.")
        return PROBLEM, (f"{what} (the max_tokens fix is off: {fix_off or 'not applied'}). Set llm.max_token to "
                         f"e.g. {value}, or start vLLM with a larger --max-model-len.")
    if generation.refuses_max_tokens(max_token, max_len, prompt_tokens=MIN_PROMPT_ROOM):
        what = (f"llm.max_token {max_token} leaves only {room} of max_model_len {max_len} tokens for the prompt: "
                f"MetaGPT 0.7 always asks for max_tokens = llm.max_token, so prompts longer than {room} tokens get "
                f"400 {rule}")
        if fix_on:
            return WARNING, (f"{what}; handled: the max_tokens fix resends those without max_tokens (one extra "
                             f"request each). Set llm.max_token to e.g. {value} to avoid it.")
        return PROBLEM, (f"{what} (the max_tokens fix is off: {fix_off or 'not applied'}). Set llm.max_token to "
                         f"e.g. {value}.")
    if generation.clamps_max_tokens and room < MIN_PROMPT_ROOM:
        return OK, (f"llm.max_token {max_token} fits the server's max_model_len {max_len} under vLLM "
                    f"{generation.name}'s rule{' (assumed)' if assumed else ''}: it clamps max_tokens to the room the "
                    "prompt leaves, so requests succeed")
    return OK, f"llm.max_token {max_token} leaves {room} of max_model_len {max_len} tokens for the prompt"


def usage_source(generation: Optional[Generation]) -> Optional[str]:
    """How the server hands a stream's token counts to the usage fix, or None when it does not (or is unknown)."""
    if generation is None:
        return None
    if generation.include_usage:
        return "it sends them when a stream asks with stream_options.include_usage"
    if generation.usage_on_finish_chunk:
        return "it sends them on each stream's finish chunk"
    return None


def tiktoken_verdict(where: str, usage_fix_on: bool, source: Optional[str], reachable: Optional[bool],
                     proxy: bool, fix_off: str = "") -> tuple[str, str]:
    """(level, message) when tiktoken's cl100k_base is not cached and ``llm.calc_usage`` is on."""
    if usage_fix_on and source:
        return OK, (f"token counting: the usage fix takes streamed answers' counts from the server ({source}); "
                    f"tiktoken's cl100k_base ({where}) is not needed")
    if usage_fix_on:
        return OK, (f"token counting: tiktoken's cl100k_base is {where}; where the server sends no usage, the usage "
                    f"fix counts with it if it loads within {TIKTOKEN_WAIT:g} s, else with an estimate (no ERROR "
                    "line, no long wait)")
    off = f" (the usage fix is off: {fix_off})" if fix_off else ""
    turn_on = ", or take usage out of " + DISABLE if fix_off.startswith("turned off by") else ""
    if reachable:
        return OK, (f"token counting: tiktoken's cl100k_base is {where}; it will be downloaded from {TIKTOKEN_HOST} "
                    f"on first use{off}")
    cond = "if this machine cannot reach" if proxy else "and this machine cannot reach"
    return WARNING, (f"token counting: llm.calc_usage is on, tiktoken's cl100k_base is {where}, {cond} "
                     f"{TIKTOKEN_HOST}: MetaGPT will log 'usage calculation failed!' on streamed calls (aask's "
                     f"default; the calls still succeed){off}. To avoid it, set calc_usage: false in the llm: block, "
                     f""
                     f"or fill a TIKTOKEN_CACHE_DIR with cl100k_base on a connected machine{turn_on}.")


# --- the doctor ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    id: str
    level: str
    message: str


class Doctor:
    """Collects checks in display order, then prints them (text or JSON) and returns the exit code."""

    def __init__(self, config_path: Optional[Path], timeout: float) -> None:
        self.config_path = config_path
        self.timeout = timeout
        self.checks: list[Check] = []
        self.secrets: list[str] = []
        self.config_info: dict[str, Any] = {"source": "--config" if config_path else "default", "files": [],
                                            "searched": [], "error": None}
        self.server_info: dict[str, Any] = {"probed": False}
        self.config_error = False
        self.status: Optional[Status] = None
        self.api_type: Optional[str] = None
        self.server: Optional[ServerGeneration] = None  #: the rules the server plays by, once it has answered
        self.ask_info: dict[str, Any] = doctor_ask.not_asked("no configuration to ask with").as_json()

    def add(self, check_id: str, level: str, message: str) -> None:
        self.checks.append(Check(check_id, level, message))

    # the sequence of checks

    def run(self) -> None:
        version = gate.installed_version()
        self.metagpt_version = version.metagpt_version
        if version.code == "metagpt-absent":
            self.add("metagpt", PROBLEM, f"MetaGPT is not installed in this Python ({sys.executable}); "
                                         "there is no configuration to check.")
            return
        scratch = Path(tempfile.mkdtemp(prefix="metagpt-vllm-fix-doctor-"))
        try:
            self._run_with_metagpt(version, scratch)
        finally:
            quiet_loguru()
            shutil.rmtree(scratch, ignore_errors=True)

    def _run_with_metagpt(self, version: gate.Decision, scratch: Path) -> None:
        try:
            import_metagpt(scratch, ["metagpt.config2"])
        except Exception as exc:  # noqa: BLE001  (a broken MetaGPT install is a finding, not a crash)
            self.add("metagpt", PROBLEM, f"MetaGPT {version.metagpt_version} cannot be imported: "
                                         f"{type(exc).__name__}: {exc}")
            return
        import metagpt.config2 as config2

        try:
            config, used, searched = load_config(config2, self.config_path)
        except ConfigError as exc:
            self._plugin_checks(version, None)
            self.config_error = True
            self.config_info["error"] = str(exc)
            self.add("config", PROBLEM, f"config error: {exc}")
            return
        llm = config.llm
        self.secrets += [llm.api_key, llm.api_key.strip(), urlsplit(llm.base_url).password or ""]
        api_type = getattr(llm.api_type, "value", str(llm.api_type))
        sent, error = self._provider_key(version, llm, api_type, scratch)
        self._plugin_checks(version, api_type)
        self._config_checks(llm, api_type, used, searched)
        if error is not None:
            self.add("provider", PROBLEM, f"MetaGPT's open_llm provider cannot be built from this config: {error}")
        elif sent is not None:
            self._provider_check(llm, sent)
        tiktoken_probe = self._start_tiktoken_probe(llm, api_type)
        deadline = time.monotonic() + self.timeout
        self._server_checks(llm, api_type, deadline)
        self._ask_check(llm, api_type, scratch, deadline)
        self._tiktoken_check(tiktoken_probe, deadline)

    def _provider_key(self, version: gate.Decision, llm: Any, api_type: str,
                      scratch: Path) -> tuple[Optional[str], Optional[str]]:
        """(key, error): what MetaGPT's own open_llm provider, built from this config here, would send."""
        if api_type != "open_llm" or not version.supported:
            return None, None
        try:
            with quiet_plugin_log():  # the fixes are applied during this import; the doctor reports them itself
                import_metagpt(scratch, ["metagpt.provider"])
                from metagpt.provider.llm_provider_registry import create_llm_instance

                return create_llm_instance(llm).aclient.api_key, None
        except Exception as exc:  # noqa: BLE001  (whatever MetaGPT's provider raises is reported as a problem)
            return None, f"{type(exc).__name__}: {exc}"

    def _plugin_checks(self, version: gate.Decision, api_type: Optional[str]) -> None:
        st = plugin_status()
        self.status, self.api_type = st, api_type
        open_llm = api_type == "open_llm"
        if st.code in ("supported", "removed"):
            self.add("metagpt", OK, f"MetaGPT {st.metagpt_version}: supported; the plugin makes open_llm send "
                                    "llm.api_key instead of the hard-coded 'sk-xxx'")
        elif st.code == "fixed-upstream":
            self.add("metagpt", OK, f"{st.reason} The plugin stays inactive.")
        else:
            level = PROBLEM if open_llm else WARNING
            tail = " api_type open_llm will send 'sk-xxx'." if open_llm and st.code != "unsupported-old" else ""
            self.add("metagpt", level, f"plugin inactive: {st.reason}{tail}")
        if not version.supported:
            return
        raw = os.environ.get("METAGPT_VLLM_FIX")
        switch = f"METAGPT_VLLM_FIX={raw}" if raw is not None else "METAGPT_VLLM_FIX unset"
        level = PROBLEM if open_llm else WARNING
        consequence = ("MetaGPT run without `import metagpt_vllm_fix` (e.g. the `metagpt` command) "
                       "sends api_key 'sk-xxx' and vLLM answers 401")
        if st.pth_file is None:
            self.add("activation", level, "automatic activation is not installed (no metagpt-vllm-fix.pth in this "
                                          f"environment's site-packages): {consequence}. Reinstall with pip.")
        elif st.switch == "off":
            self.add("activation", level, f"automatic activation is off ({switch}): {consequence}.")
        elif st.switch == "unknown":
            self.add("activation", WARNING, f"{switch} is not a known value (1, 0, strict, on, off, ...); it is "
                                            f"treated as 1 (automatic activation on, {st.pth_file}).")
        else:
            strict = "; strict: a failure to patch raises" if st.switch == "strict" else ""
            self.add("activation", OK, f"automatic activation on in this environment ({_show_path(Path(st.pth_file))}, "
                                       f"{switch}{strict})")
        if st.code in ("supported", "removed"):
            self.add("fixes", *fixes_verdict(st.fixes, st.automatic, disabled_fixes()[1]))
        if open_llm:
            from .fixes.httpx_client import httpx_version, takes_proxies

            if not takes_proxies():  # only then does the installed httpx matter
                self.add("httpx", *httpx_verdict(httpx_version(), *self.fix_on("httpx")))

    def fix_on(self, name: str) -> tuple[bool, str]:
        """(on, why not) for the named fix, as the plugin checks found it."""
        return fix_in_effect(self.status, name, self.api_type)

    def _config_checks(self, llm: Any, api_type: str, used: list[Path], searched: list[Path]) -> None:
        self.config_info.update(files=[os.path.abspath(p) for p in used],
                                searched=[os.path.abspath(p) for p in searched],
                                api_type=api_type, base_url=llm.base_url, model=llm.model,
                                api_key=mask(llm.api_key), max_token=llm.max_token, calc_usage=llm.calc_usage,
                                proxy=bool(llm.proxy))
        if self.config_path is not None:
            where = f"{_show_path(self.config_path)} (--config)"
        else:
            missing = [p for p in searched if p not in used]
            where = ", then ".join(_show_path(p) for p in used)
            if len(used) > 1:
                where += " (the later file's llm: block replaces the earlier one)"
            if missing:
                where += "; not present: " + ", ".join(_show_path(p) for p in missing)
        self.add("config-files", OK, f"config: {where}")
        self.add("llm", OK, f"llm: api_type {api_type}, base_url {llm.base_url}, model {llm.model}, "
                            f"api_key {mask(llm.api_key.strip())}")
        key = llm.api_key
        if key != key.strip():
            self.add("api-key-whitespace", WARNING,
                     "llm.api_key has whitespace around it: the plugin sends it trimmed (and logs a warning); "
                     "without the plugin, or with another api_type, it would not match. Remove it from config2.yaml.")
        if unsendable_key(key):
            self.add("api-key-control", PROBLEM, "llm.api_key contains a line break, control or non-ASCII character, "
                                                 "which an HTTP Authorization header cannot carry: the plugin sends "
                                                 "MetaGPT's placeholder 'sk-xxx' instead (a vLLM started with "
                                                 "--api-key answers 401). Fix the key.")
        parts = urlsplit(llm.base_url)
        host = parts.hostname or ""
        if parts.scheme == "http" and host and not is_loopback(host):
            self.add("cleartext", WARNING, f"base_url uses plain http:// to {host}, which is not this machine: the "
                                           "key travels in clear text. Prefer https (a TLS proxy in front of vLLM) "
                                           "or an SSH tunnel to 127.0.0.1.")
        if api_type == "openai" and host and host != "api.openai.com":
            self.add("api-type", WARNING, f"api_type openai pointed at {host} (not OpenAI): it works with vLLM, but "
                                          "MetaGPT counts tokens and costs with OpenAI's tables ('model not found' "
                                          "warnings). api_type: open_llm is meant for self-hosted servers.")
        if api_type == "open_llm" and not llm.model:
            self.add("model", PROBLEM, "llm.model is not set: MetaGPT sends no model name and the server rejects "
                                       "the request. Set it to the served model's name.")

    def _provider_check(self, llm: Any, sent: str) -> None:
        if unsendable_key(llm.api_key):
            return  # api-key-control says why 'sk-xxx' is sent
        if sent == llm.api_key.strip():
            self.add("provider", OK, f"MetaGPT's open_llm provider, built here from this config with the plugin "
                                     f"loaded, sends api_key {mask(sent)} (the configured one)")
        elif sent == PLACEHOLDER_KEY:
            why = self.status.reason if self.status is not None else "no plugin status"
            self.add("provider", PROBLEM, f"MetaGPT's open_llm provider built from this config still sends "
                                          f"'sk-xxx': the patch did not take ({why})")
        else:
            self.add("provider", PROBLEM, f"MetaGPT's open_llm provider sends {mask(sent)}, not the configured key")

    def _server_checks(self, llm: Any, api_type: str, deadline: float) -> None:
        key = llm.api_key.strip()
        if api_type not in ("open_llm", "openai"):
            self.add("server", WARNING, f"server not probed: the doctor checks OpenAI-compatible servers "
                                        f"(api_type open_llm or openai), not {api_type}.")
            return
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
            return
        started = time.monotonic()
        finished, result = run_bounded(probe_server, deadline - started + 0.5, llm.base_url, key,
                                       llm.proxy, deadline, self.timeout)
        seconds = round(time.monotonic() - started, 2)
        url = llm.base_url.rstrip("/") + "/models"
        if not finished:
            parts = urlsplit(llm.base_url)
            result = {"url": url, "reachable": False, "status": None, "error": "timeout", "models": [],
                      "max_model_len": {}, "health": None,
                      "message": f"no answer from {parts.netloc} within {self.timeout:g} s"}
        elif isinstance(result, BaseException):
            result = {"url": url, "reachable": False, "status": None, "error": "client", "models": [],
                      "max_model_len": {}, "health": None, "message": f"{type(result).__name__}: {result}"}
        lengths: dict[str, int] = result.pop("max_model_len", {})
        version, why = result.pop("vllm_version", None), result.pop("version_note", "")
        self.server_info = {"probed": True, **result, "max_model_len": lengths.get(llm.model or ""),
                            "seconds": seconds, "vllm_version": None, "generation": None, "version_assumed": None}
        status, error = result.get("status"), result.get("error")
        if not result.get("reachable"):
            self.add("server", PROBLEM, f"server unreachable: {result['message']}")
            return
        self.server = server_generation(version, why)
        self.server_info.update(self.server.as_json())
        self.add("server-version", OK, describe_server(self.server))
        if status == 401:
            health = result.get("health")
            if health == 200:
                up = "The server itself is up: /health answers 200 without a key, so only the key is refused."
            elif health is None:
                up = "(/health did not answer either.)"
            else:
                up = f"(/health answers {health}.)"
            if urlsplit(llm.base_url).hostname == "api.openai.com":
                self.add("server", PROBLEM, f"401 Unauthorized from {url}: OpenAI refuses api_key {mask(key)}.")
                return
            self.add("server", PROBLEM,
                     f"401 Unauthorized from {url}: the server refuses api_key {mask(key)}. It does not match the "
                     "key the server was started with: its --api-key option, or its VLLM_API_KEY environment "
                     "variable (vLLM 0.3 uses VLLM_API_KEY when both are set). Fix llm.api_key or the server's "
                     f"key. {up}")
            return
        if status == 404:
            self.add("server", PROBLEM, f"404 from {url}: no model list there. vLLM serves the OpenAI API under "
                                        "/v1: base_url should look like http://HOST:8000/v1")
            return
        if status != 200 or error:
            detail = result.get("message") or f"HTTP {status}"
            self.add("server", PROBLEM, f"{url} answered {status}: {detail}")
            return
        models: list[str] = result.get("models") or []
        max_len = lengths.get(llm.model or "")
        shown = ", ".join(models) if models else "(none)"
        self.add("server", OK, f"server answers with this key: {url} -> 200, serves {shown}")
        if llm.model and llm.model not in models:
            self.add("model", PROBLEM, f"llm.model {llm.model!r} is not served (the server serves: {shown}): "
                                       "requests get 404. Set llm.model to a served name, or start vLLM with "
                                       f"--served-model-name {llm.model}")
        elif llm.model:
            self.add("model", OK, f"llm.model {llm.model} is served")
        if max_len is not None and self.server is not None:
            on, why_off = self.fix_on("max_tokens")
            self.add("max-token", *max_token_verdict(self.server.generation, llm.max_token, max_len, on, why_off,
                                                     self.server.assumed))

    def _ask_check(self, llm: Any, api_type: str, scratch: Path, deadline: float) -> None:
        """MetaGPT's own request, as MetaGPT runs in this environment do (doctor_ask): ok only for an answer."""
        result, note = self._ask(llm, api_type, scratch, deadline)
        self.ask_info = result.as_json()
        if not result.asked:
            return
        off = {}
        for fix in self.status.fixes if self.status is not None else ():
            on, why = self.fix_on(fix.name)
            if not on:
                off[fix.name] = why
        self.add("ask", *doctor_ask.ask_verdict(result, off, llm.model or "", note, api_type))


    def _ask(self, llm: Any, api_type: str, scratch: Path, deadline: float) -> tuple[doctor_ask.AskResult, str]:
        """(result, note): the provider built as MetaGPT builds it, the fixes as this environment applies them."""
        if api_type not in ("open_llm", "openai"):
            return doctor_ask.not_asked(f"api_type {api_type} is not an OpenAI-compatible provider"), ""
        if not self.server_info.get("reachable"):
            return doctor_ask.not_asked("the server did not answer the model list"), ""
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in llm.api_key.strip()):
            return doctor_ask.not_asked("llm.api_key cannot travel in an HTTP header"), ""
        seconds = deadline - time.monotonic()
        if seconds < 0.1:
            return doctor_ask.not_asked("--timeout was used up by the checks before"), ""
        st = self.status
        plain = api_type == "open_llm" and st is not None and st.code in ("supported", "removed") and not st.automatic
        note = "no fix, as the `metagpt` command here: automatic activation is off" if plain else ""
        from . import apply, remove

        try:
            with quiet_plugin_log():
                import_metagpt(scratch, ["metagpt.provider"])
                if plain:
                    remove()
                from metagpt.provider.llm_provider_registry import create_llm_instance

                try:
                    provider = create_llm_instance(llm)
                except Exception as exc:  # noqa: BLE001  (the provider check reports it)
                    return doctor_ask.not_asked(f"the provider cannot be built: {type(exc).__name__}"), note
            return doctor_ask.ask(provider, seconds), note
        finally:
            if plain:
                with quiet_plugin_log():
                    apply()

    def _start_tiktoken_probe(self, llm: Any, api_type: str) -> Optional[dict[str, Any]]:
        """When MetaGPT would need to download tiktoken's encoding, test (in the background) if it could."""
        if not llm.calc_usage or api_type not in ("open_llm", "openai"):
            return None
        path, cached = tiktoken_cache()
        if cached:
            return None
        probe: dict[str, Any] = {"path": path, "proxy": _proxy_env(), "thread": None, "box": {}}
        if not probe["proxy"] and not self.fix_on("usage")[0]:  # with the usage fix, no request waits on it
            box = probe["box"]

            def target() -> None:
                try:
                    box["ok"] = _can_reach(TIKTOKEN_HOST, 443, min(1.5, self.timeout))
                except OSError:
                    box["ok"] = False

            probe["thread"] = threading.Thread(target=target, name="doctor-tiktoken", daemon=True)
            probe["thread"].start()
        return probe

    def _tiktoken_check(self, probe: Optional[dict[str, Any]], deadline: float) -> None:
        if probe is None:
            return
        thread = probe["thread"]
        if thread is not None:
            thread.join(max(0.0, min(deadline - time.monotonic(), 1.5)))
        where = "caching is disabled (TIKTOKEN_CACHE_DIR is empty)" if probe["path"] is None else \
            f"not cached in {probe['path'].parent}"
        on, why_off = self.fix_on("usage")
        source = usage_source(self.server.generation if self.server is not None else None)
        self.add("tiktoken", *tiktoken_verdict(where, on, source, probe["box"].get("ok"), probe["proxy"], why_off))

    # verdict and output

    @property
    def exit_code(self) -> int:
        if self.config_error:
            return EXIT_CONFIG
        return EXIT_PROBLEM if worst(c.level for c in self.checks) == PROBLEM else EXIT_OK

    @property
    def verdict(self) -> str:
        return "error" if self.config_error else worst(c.level for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        st = self.status
        plugin: dict[str, Any] = {"version": __version__}
        if st is not None:
            plugin.update(dataclasses.asdict(st))
            plugin["automatic"] = st.automatic
            plugin["fixes_in_effect"] = {f.name: self.fix_on(f.name)[0] for f in st.fixes}
        payload = {
            "version": 1,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "metagpt_version": getattr(self, "metagpt_version", None),
            "plugin": plugin,
            "config": self.config_info,
            "server": self.server_info,
            "ask": self.ask_info,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }
        scrubbed: dict[str, Any] = scrub_obj(payload, self.secrets)
        return scrubbed

    def print_text(self, report: Report) -> None:
        report.secret(*self.secrets)
        report.title("metagpt-vllm-fix doctor")
        for check in self.checks:
            report.check(check.level, check.message)
        code = self.exit_code
        advice = {EXIT_OK: "all good" if self.verdict == OK else "works; see the warnings above",
                  EXIT_PROBLEM: "fix the problems above",
                  EXIT_CONFIG: "fix the configuration: MetaGPT 0.7 cannot load it"}[code]
        report.line(f"verdict: {self.verdict} (exit {code}): {advice}")


def run(config: Optional[str] = None, timeout: float = 5.0, as_json: bool = False,
        report: Optional[Report] = None) -> int:
    """The ``doctor`` command; returns its exit code."""
    doctor = Doctor(Path(config).expanduser() if config else None, timeout)
    doctor.run()
    if as_json:
        sys.stdout.write(json.dumps(doctor.as_json(), indent=2) + "\n")
        sys.stdout.flush()
    else:
        doctor.print_text(report or Report())
    return doctor.exit_code
