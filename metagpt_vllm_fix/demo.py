"""``metagpt-vllm-fix demo``: the seed's config2.yaml, verbatim, against a vLLM of MetaGPT 0.7's time.

A server playing vLLM 0.3.3 (Llama-2's 4096-token context, a random ``--api-key``) runs on loopback. MetaGPT 0.7
loads the seed's config with its own loader -- no ``max_token`` line, so MetaGPT asks for 4096, and
``calc_usage`` on -- and asks three times through its ``open_llm`` provider, streamed as ``aask`` does by
default: as upstream ships it (401), with the ``api_key`` fix alone (400: prompt + 4096 > 4096), and with every
fix (an answer, counted with the server's own usage). The server records what it saw each time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .fixes import NAMES
from .gate import PLACEHOLDER as PLACEHOLDER_KEY  # what MetaGPT 0.7 sends instead of the key
from .masking import mask
from .report import OK, PROBLEM, Report

PROMPT = "Say hello to the vLLM server."
CALL_TIMEOUT = 20.0  # seconds per call: MetaGPT retries connection errors for minutes, the demo must not hang
VLLM_VERSION = "0.3.3"  # the vLLM of MetaGPT 0.7's time, which refuses prompt + max_tokens > context
CONTEXT = 4096  # Llama-2-7b's

# The seed's config, exactly as the write-up has it (the key is this run's).
SEED_CONFIG = """\
llm:
  api_type: open_llm
  base_url: '{base_url}'
  model: '{model}'
  api_key: {api_key}
"""


@dataclass
class Attempt:
    """One ``aask`` through MetaGPT's open_llm provider, and what the server saw."""

    headers: list[Optional[str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    max_tokens: list[Optional[int]] = field(default_factory=list)
    answer: Optional[str] = None
    error: Optional[str] = None
    status: Optional[int] = None
    message: Optional[str] = None  #: the server's error message
    said: list[str] = field(default_factory=list)  #: what the plugin logged during the call
    usage: Optional[tuple[int, int]] = None  #: (prompt, completion) tokens MetaGPT's cost manager recorded

    @property
    def ok(self) -> bool:
        return self.answer is not None


def _yaml_scalar(text: str) -> str:
    """``text`` as written in the seed (plain) when YAML reads it back unchanged, else quoted (``--api-key 1234``)."""
    import json

    import yaml

    try:
        plain = yaml.safe_load(f"k: {text}")
    except yaml.YAMLError:
        plain = None
    return text if isinstance(plain, dict) and plain.get("k") == text else json.dumps(text)


def show_header(header: Optional[str], key: str) -> str:
    """An Authorization header fit for printing: MetaGPT's public placeholder in full, any key masked."""
    if header is None:
        return "(no Authorization header)"
    scheme, sep, credential = header.partition(" ")
    if not sep:
        return mask(header)
    if credential == PLACEHOLDER_KEY:
        return f"{scheme} {PLACEHOLDER_KEY}"
    return f"{scheme} {mask(credential)}"


async def _ask(llm_config: Any, server: Any) -> Attempt:
    attempt = Attempt()
    server.clear_requests()
    listener = _Collect(attempt.said)
    plugin_log = logging.getLogger("metagpt_vllm_fix")
    plugin_log.addHandler(listener)
    plugin_log.propagate, propagate = False, plugin_log.propagate
    try:
        return await _ask_once(llm_config, server, attempt)
    finally:
        plugin_log.removeHandler(listener)
        plugin_log.propagate = propagate


class _Collect(logging.Handler):
    """Keeps the plugin's messages for the report instead of letting them reach stderr."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.into.append(record.getMessage())


async def _ask_once(llm_config: Any, server: Any, attempt: Attempt) -> Attempt:
    import openai
    from metagpt.llm import LLM

    from .vllm_versions import error_fields

    llm = LLM(llm_config=llm_config)
    try:
        attempt.answer = await asyncio.wait_for(llm.aask(PROMPT), CALL_TIMEOUT)  # streamed, aask's default
        costs = llm.get_costs()
        attempt.usage = (costs.total_prompt_tokens, costs.total_completion_tokens)
    except openai.APIStatusError as exc:
        attempt.error, attempt.status = f"openai.{type(exc).__name__}", exc.status_code
        attempt.message = str(error_fields(exc.body).get("message") or "")
    except asyncio.TimeoutError:
        attempt.error = f"no answer within {CALL_TIMEOUT:g} s"
    except Exception as exc:  # noqa: BLE001 - reported, scrubbed of the key by the report
        attempt.error = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    seen = [r for r in server.requests if r.path.startswith("/v1")]
    attempt.headers = [r.authorization for r in seen]
    attempt.statuses = [r.status for r in seen]
    attempt.max_tokens = [r.max_tokens for r in seen]
    return attempt


# Step 2 keeps the httpx fix too (idle on httpx < 0.28; without it there is no client at all on 0.28).
KEY_ONLY_DISABLE = ",".join(name for name in NAMES if name not in ("api_key", "httpx"))


async def _story(llm_config: Any, server: Any) -> tuple[Attempt, Attempt, Attempt]:
    """Upstream (plugin removed), the api_key fix alone, every fix; one event loop for the three calls."""
    from . import apply, remove
    from ._activation import DISABLE

    saved = os.environ.get(DISABLE)
    remove()
    try:
        upstream = await _ask(llm_config, server)
        os.environ[DISABLE] = KEY_ONLY_DISABLE
        apply()
        key_only = await _ask(llm_config, server)
    finally:
        remove()
        if saved is None:
            os.environ.pop(DISABLE, None)
        else:
            os.environ[DISABLE] = saved
        apply()
    return upstream, key_only, await _ask(llm_config, server)


def _describe(report: Report, attempt: Attempt, key: str) -> None:
    for header, status, max_tokens in zip(attempt.headers, attempt.statuses, attempt.max_tokens):
        note = ("   <- MetaGPT's hard-coded placeholder, not the configured key"
                if header == f"Bearer {PLACEHOLDER_KEY}" else "")
        asked = f"max_tokens {max_tokens}" if max_tokens is not None else "no max_tokens"
        report.field("server saw", f"Authorization: {show_header(header, key)}, {asked} -> {status}{note}",
                     indent="   ")
    if not attempt.headers:
        report.field("server saw", "no request", indent="   ")
    if attempt.ok:
        report.field("result", f"MetaGPT returned {attempt.answer!r}", indent="   ")
        if attempt.usage:
            report.field("usage", f"{attempt.usage[0]} prompt + {attempt.usage[1]} completion tokens, the "
                                  "server's own count", indent="   ")
    else:
        code = f"{attempt.status} " if attempt.status else ""
        said = f": {attempt.message}" if attempt.message else ""
        report.field("result", f"{code}{attempt.error}{said}", indent="   ")
    for message in attempt.said:
        report.field("plugin said", message, indent="   ")


def _differences(upstream: Attempt, key_only: Attempt, fixed: Attempt, key: str) -> list[str]:
    """Everything that differs from the story: 401 for 'sk-xxx', then 400 for max_tokens, then an answer."""
    found = []
    placeholder, configured = f"Bearer {PLACEHOLDER_KEY}", f"Bearer {key}"
    if upstream.ok or upstream.status != 401 or upstream.headers != [placeholder]:
        found.append(f"MetaGPT as shipped should get exactly one 401 for '{placeholder}'; it got "
                     f"{upstream.statuses} with {[show_header(h, key) for h in upstream.headers]}")
    if key_only.ok or key_only.status != 400 or key_only.headers != [configured]:
        found.append(f"with the api_key fix alone the configured key should get one 400 (max_tokens "
                     f"{CONTEXT} does not fit); it got {key_only.statuses}: {key_only.error}")
    if not fixed.ok:
        found.append(f"with every fix the call failed: {fixed.status or ''} {fixed.error}".replace("  ", " "))
    if fixed.headers != [configured, configured] or fixed.statuses != [400, 200] or fixed.max_tokens[1:] != [None]:
        found.append(f"with every fix the server should see the key twice: 400 for max_tokens {CONTEXT}, then 200 "
                     f"without max_tokens; it saw {list(zip(fixed.statuses, fixed.max_tokens))}")
    if fixed.ok and not (fixed.usage and all(fixed.usage)):
        found.append(f"with every fix MetaGPT should record the server's token counts; it recorded {fixed.usage}")
    return found


def run(api_key: Optional[str] = None, report: Optional[Report] = None) -> int:
    """The ``demo`` command; returns 0 when the story is exactly 401, then 400, then an answer, else 1."""
    from .gate import installed_version

    report = report or Report()
    started = time.monotonic()
    version = installed_version()
    if version.code == "metagpt-absent":
        report.check(PROBLEM, "MetaGPT is not installed in this Python; the demo runs MetaGPT 0.7 itself "
                              "(`make venv` builds an environment with it).")
        return 1
    key = api_key or secrets.token_urlsafe(24)
    report.secret(key)
    scratch = Path(tempfile.mkdtemp(prefix="metagpt-vllm-fix-demo-"))
    captured: list[str] = []
    try:
        from .doctor import import_metagpt, quiet_loguru
        from .server import DEFAULT_MODEL, VLLMServer

        with VLLMServer(api_keys=[key], model=DEFAULT_MODEL, max_model_len=CONTEXT,
                        vllm_version=VLLM_VERSION) as server:
            report.title(f"metagpt-vllm-fix demo: MetaGPT {version.metagpt_version}'s open_llm provider, the seed's "
                         "config2.yaml as written, a vLLM of MetaGPT 0.7's time")
            report.field("server", f"{server.base_url}  answers as vLLM {VLLM_VERSION}, model {DEFAULT_MODEL} "
                                   f"(context {CONTEXT}), --api-key {mask(key)} "
                                   f"({'given' if api_key else 'random, this run only'})")
            config_path = scratch / "config" / "config2.yaml"
            config_path.parent.mkdir(parents=True)
            config_path.write_text(SEED_CONFIG.format(base_url=server.base_url, model=DEFAULT_MODEL,
                                                      api_key=_yaml_scalar(key)), encoding="utf-8")
            try:
                import_metagpt(scratch, ["metagpt.config2", "metagpt.llm", "metagpt.logs"])
                from loguru import logger
                from metagpt.config2 import Config
                from metagpt.logs import set_llm_stream_logfunc

                llm_config = Config.from_yaml_file(config_path).llm
            except Exception as exc:  # noqa: BLE001 - a broken MetaGPT install: say so in one line
                report.check(PROBLEM, f"MetaGPT {version.metagpt_version} cannot be imported or load the demo's "
                                      f"config2.yaml: {type(exc).__name__}: {exc}")
                return 1
            imported = time.monotonic()
            logger.add(lambda message: captured.append(str(message).rstrip()), level="WARNING",
                       format="{level}: {message}")
            streamed: list[str] = []
            set_llm_stream_logfunc(streamed.append)  # the streamed answer is shown once, below
            report.field("config", f"the seed's, verbatim: api_type open_llm, this server, api_key {mask(key)}; no "
                                   f"max_token line (MetaGPT asks for {llm_config.max_token}), calc_usage "
                                   f"{str(llm_config.calc_usage).lower()}")
            report.field("asks", "MetaGPT's own Config.from_yaml_file(...).llm -> LLM(llm_config).aask(...), "
                                 "streamed, three times")
            report.line()

            upstream, key_only, fixed = asyncio.run(_story(llm_config, server))
            report.line("1. MetaGPT as shipped (plugin removed)")
            _describe(report, upstream, key)
            report.line(f"2. With the api_key fix alone (METAGPT_VLLM_FIX_DISABLE={KEY_ONLY_DISABLE})")
            _describe(report, key_only, key)
            report.line("3. With metagpt-vllm-fix (every fix)")
            _describe(report, fixed, key)
            report.line()

        differences = _differences(upstream, key_only, fixed, key)
        elapsed = time.monotonic() - imported
        if not differences:
            report.check(OK, f"The seed's config works as written: the key is sent, max_tokens fits, usage comes "
                             f"from the server. ({elapsed:.1f} s after MetaGPT's import, "
                             f"{time.monotonic() - started:.1f} s in all)")
            return 0
        report.check(PROBLEM, "The demo did not go as expected:\n" + "\n".join(f"- {d}" for d in differences))
        for line in captured[-10:]:
            report.dim(f"  MetaGPT log: {line}")
        return 1
    finally:
        quiet_loguru()
        shutil.rmtree(scratch, ignore_errors=True)
