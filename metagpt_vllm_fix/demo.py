"""``metagpt-vllm-fix demo``: the bug and the fix, end to end, in one command and a few seconds.

A vLLM-compatible server with a random ``--api-key`` runs on loopback; MetaGPT 0.7 loads a temporary
config2.yaml with its own loader and asks the server twice through its ``open_llm`` provider: as upstream
ships it (plugin removed) and patched. The server records which ``Authorization`` header it saw each time.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

from .gate import PLACEHOLDER as PLACEHOLDER_KEY  # what MetaGPT 0.7 sends instead of the key
from .masking import mask
from .report import OK, PROBLEM, Report

PROMPT = "Say hello to the vLLM server."
CALL_TIMEOUT = 20.0  # seconds per call: MetaGPT retries connection errors for minutes, the demo must not hang

DEMO_CONFIG = """\
llm:
  api_type: open_llm
  base_url: '{base_url}'
  model: '{model}'
  api_key: '{api_key}'
  max_token: 512
  calc_usage: false
"""


@dataclass
class Attempt:
    """One ``aask`` through MetaGPT's open_llm provider, and what the server saw."""

    client_key: Optional[str] = None
    headers: List[Optional[str]] = field(default_factory=list)
    statuses: List[int] = field(default_factory=list)
    answer: Optional[str] = None
    error: Optional[str] = None
    status: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.answer is not None


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
    import openai
    from metagpt.llm import LLM

    attempt = Attempt()
    server.clear_requests()
    llm = LLM(llm_config=llm_config)
    attempt.client_key = llm.aclient.api_key
    try:
        attempt.answer = await asyncio.wait_for(llm.aask(PROMPT, stream=False), CALL_TIMEOUT)
    except openai.APIStatusError as exc:
        attempt.error, attempt.status = f"openai.{type(exc).__name__}", exc.status_code
    except asyncio.TimeoutError:
        attempt.error = f"no answer within {CALL_TIMEOUT:g} s"
    except Exception as exc:  # noqa: BLE001 - reported, scrubbed of the key by the report
        attempt.error = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    seen = [r for r in server.requests if r.path.startswith("/v1")]
    attempt.headers = [r.authorization for r in seen]
    attempt.statuses = [r.status for r in seen]
    return attempt


async def _story(llm_config: Any, server: Any) -> Tuple[Attempt, Attempt]:
    """Upstream first (plugin removed), then patched; one event loop for both calls."""
    from . import apply, remove

    remove()
    try:
        before = await _ask(llm_config, server)
    finally:
        apply()
    return before, await _ask(llm_config, server)


def _describe(report: Report, attempt: Attempt, key: str) -> None:
    for header, status in zip(attempt.headers, attempt.statuses):
        note = ("   <- MetaGPT's hard-coded placeholder, not the configured key"
                if header == f"Bearer {PLACEHOLDER_KEY}" else
                "   <- the configured api_key" if header == f"Bearer {key}" else "")
        report.field("server saw", f"Authorization: {show_header(header, key)} -> {status}{note}", indent="   ")
    if not attempt.headers:
        report.field("server saw", "no request", indent="   ")
    if attempt.ok:
        report.field("result", f"200 OK, MetaGPT returned {attempt.answer!r}", indent="   ")
    elif attempt.status == 401:
        report.field("result", f"401 Unauthorized: MetaGPT raised {attempt.error}", indent="   ")
    else:
        status = f"{attempt.status}: " if attempt.status else ""
        report.field("result", f"{status}{attempt.error}", indent="   ")


def _differences(before: Attempt, after: Attempt, key: str) -> List[str]:
    """Everything that differs from the story: upstream gets 401 for 'sk-xxx', the patched call gets 200."""
    found = []
    placeholder = f"Bearer {PLACEHOLDER_KEY}"
    if before.ok:
        found.append("MetaGPT as shipped got an answer: this MetaGPT does not have the bug (or the plugin was not "
                     "removed)")
    elif before.status != 401:
        found.append(f"MetaGPT as shipped failed, but not with 401: {before.error}")
    if before.headers != [placeholder]:
        found.append("without the plugin the server should have seen exactly one 'Bearer sk-xxx'; it saw: "
                     + (", ".join(show_header(h, key) for h in before.headers) or "nothing"))
    if not after.ok:
        found.append(f"the patched call failed: {after.status or ''} {after.error}".replace("  ", " "))
    if after.headers != [f"Bearer {key}"]:
        found.append("with the plugin the server should have seen the configured key once; it saw: "
                     + (", ".join(show_header(h, key) for h in after.headers) or "nothing"))
    return found


def run(api_key: Optional[str] = None, report: Optional[Report] = None) -> int:
    """The ``demo`` command; returns 0 when the story is exactly 401-then-200, else 1."""
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
    captured: List[str] = []
    try:
        from .doctor import import_metagpt, quiet_loguru
        from .server import DEFAULT_MODEL, VLLMServer

        with VLLMServer(api_keys=[key], model=DEFAULT_MODEL, max_model_len=4096) as server:
            report.title(f"metagpt-vllm-fix demo: MetaGPT {version.metagpt_version}'s open_llm provider "
                         "vs. a vLLM server started with --api-key")
            report.field("server", f"{server.base_url}  model {DEFAULT_MODEL}  --api-key {mask(key)} "
                                   f"({'given' if api_key else 'random, this run only'})")
            config_path = scratch / "config" / "config2.yaml"
            config_path.parent.mkdir(parents=True)
            config_path.write_text(DEMO_CONFIG.format(base_url=server.base_url, model=DEFAULT_MODEL, api_key=key),
                                   encoding="utf-8")
            try:
                import_metagpt(scratch, ["metagpt.config2", "metagpt.llm"])
                from loguru import logger
                from metagpt.config2 import Config

                llm_config = Config.from_yaml_file(config_path).llm
            except Exception as exc:  # noqa: BLE001 - a broken MetaGPT install: say so in one line
                report.check(PROBLEM, f"MetaGPT {version.metagpt_version} cannot be imported or load the demo's "
                                      f"config2.yaml: {type(exc).__name__}: {exc}")
                return 1
            imported = time.monotonic()
            logger.add(lambda message: captured.append(str(message).rstrip()), level="WARNING",
                       format="{level}: {message}")
            report.field("config", f"a temporary config2.yaml: api_type open_llm, this server, api_key {mask(key)}")
            report.field("", "calc_usage: false (else MetaGPT downloads tiktoken's encoding to count tokens)")
            report.field("asks", "MetaGPT's own Config.from_yaml_file(...).llm -> LLM(llm_config).aask(...), twice")
            report.line()

            before, after = asyncio.run(_story(llm_config, server))
            report.line("1. MetaGPT as shipped (plugin removed)")
            _describe(report, before, key)
            report.line("2. With metagpt-vllm-fix")
            _describe(report, after, key)
            report.line()

        differences = _differences(before, after, key)
        elapsed = time.monotonic() - imported
        if not differences:
            report.check(OK, f"The plugin fixes it: open_llm now sends llm.api_key. "
                             f"({elapsed:.1f} s after MetaGPT's import, {time.monotonic() - started:.1f} s in all)")
            return 0
        report.check(PROBLEM, "The demo did not go as expected:\n" + "\n".join(f"- {d}" for d in differences))
        for line in captured[-10:]:
            report.dim(f"  MetaGPT log: {line}")
        return 1
    finally:
        quiet_loguru()
        shutil.rmtree(scratch, ignore_errors=True)
