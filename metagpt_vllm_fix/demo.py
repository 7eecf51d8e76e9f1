"""``metagpt-vllm-fix demo``: the seed's config2.yaml, verbatim, against vLLM of MetaGPT 0.7's time and of today.

Two servers run on loopback, each with a random ``--api-key`` and the seed's model, meta-llama/Llama-2-7b-hf (4096
tokens of context): one plays vLLM 0.3.3 (MetaGPT 0.7's time), the other vLLM 0.32 started with the seed's command as
published (the base model has no chat template). MetaGPT 0.7 loads the seed's config with its own loader -- no
``max_token`` line, so MetaGPT asks for 4096, and ``calc_usage`` on -- and asks each server three times through its
``open_llm`` provider, streamed as ``aask`` does by default: as upstream ships it (401: "sk-xxx"), with the
``api_key`` fix alone (400: on 0.3.3 prompt + 4096 > 4096, on 0.32 no chat template), and with every fix (an
answer). A third scene is MetaGPT 0.7's Data Interpreter taking a code step on the second server: its own
``WriteCodeWithoutTools`` asks through ``aask_code``, a function call, which vLLM started without tool flags refuses
(400) until the ``tools`` fix asks for the function's arguments as a constrained answer. A fourth is WritePRD's
ActionNode fill on a server started the same way whose model answers in plain words, not in the ``[CONTENT]`` JSON
MetaGPT asks for (as the seed's base model, and small instruct models, do): MetaGPT asks the same prompt six times and
ends in RetryError, as shipped and with every fix but ``formats`` (MetaGPT's waits between its attempts left out, to
keep the demo short); with every fix, the answer is constrained from the first ask and parses. The servers record
what they saw each time. On httpx 0.28, which openai 1.6.0 cannot build a client with,
MetaGPT as shipped fails at ``LLM()`` before any request, as upstream does there; the ``httpx`` fix stays on for
the other two calls.
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
from typing import TYPE_CHECKING, Any, Optional

from .gate import PLACEHOLDER as PLACEHOLDER_KEY  # what MetaGPT 0.7 sends instead of the key
from .masking import mask, show_authorization
from .report import OK, PROBLEM, Report
from .vllm_versions import constraining_fields

if TYPE_CHECKING:
    from .server.recorder import RecordedRequest

PROMPT = "Say hello to the vLLM server."
CODE_TASK = "Print the first ten square numbers."  #: the Data Interpreter scene's user message
PRD_TASK = "Write a command line program that prints hello world."  #: the WritePRD scene's requirement
CALL_TIMEOUT = 20.0  # seconds per call: MetaGPT retries connection errors for minutes, the demo must not hang
CONTEXT = 4096  # Llama-2-7b's
SEED_COMMAND = "python -m vllm.entrypoints.openai.api_server --model meta-llama/Llama-2-7b-hf --api-key KEY"

# The seed's config, exactly as the write-up has it (the key is this run's).
SEED_CONFIG = """\
llm:
  api_type: open_llm
  base_url: '{base_url}'
  model: '{model}'
  api_key: {api_key}
"""


@dataclass(frozen=True)
class Scene:
    """One server, and the status codes it answers MetaGPT's three calls with (as shipped, key fix alone, every fix)."""

    title: str
    vllm_version: str
    server: dict[str, Any]  #: VLLMServer's other arguments
    expect: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    why_key_only_fails: str
    step: str = "aask"  #: "aask": ``LLM().aask`` streamed; "code": the Data Interpreter's code step (``aask_code``);
    #: "fill": WritePRD's ActionNode fill (six attempts, no waits)
    middle: tuple[str, ...] = ("api_key", "httpx")  #: the fixes left on in the second step (httpx: see key_fix_alone)

    @property
    def middle_step(self) -> str:
        """The second step's title."""
        if self.middle == ("api_key", "httpx"):
            return "With the api_key fix alone"
        from .fixes import NAMES

        left_out = [name for name in NAMES if name not in self.middle]
        return f"With every fix but {', '.join(left_out)}"


SCENES = (
    Scene("MetaGPT 0.7's time: vLLM 0.3.3", "0.3.3", {},
          ((401,), (400,), (400, 200)), f"max_tokens {CONTEXT} does not fit the context"),
    Scene("Today: vLLM 0.32.0, started with the seed's command as published (the base model has no chat template)",
          "0.32.0", {"chat_template": "none"}, ((401,), (400,), (400, 200)), "the model has no chat template"),
    Scene("The Data Interpreter's code step, on a server started the same way (MetaGPT's WriteCodeWithoutTools: a "
          "function call, and vLLM started without tool flags)", "0.32.0", {"chat_template": "none"},
          ((401,), (400,), (400, 400, 200)), "vLLM refuses tools without --enable-auto-tool-choice", step="code"),
    Scene("WritePRD's ActionNode on a server started the same way, whose model answers in plain words, not in the "
          "[CONTENT] JSON MetaGPT asks for (as the seed's base model does)", "0.32.0",
          {"chat_template": "none", "answers": "plain"}, ((401,) * 6, (400, 200) * 6, (400, 200)),
          "the answers are not in MetaGPT's format", step="fill",
          middle=("api_key", "max_tokens", "usage", "chat_template", "system_role", "httpx", "fail_fast", "tools")),
)
FILL_ATTEMPTS = 6  #: ActionNode._aask_v1's own stop_after_attempt(6)
PROXIES_TYPE_ERROR = "unexpected keyword argument 'proxies'"  # LLM() as shipped on httpx 0.28 (MetaGPT #1617)
STEPS = ("MetaGPT as shipped (plugin removed)", "{middle} ({disable})", "With metagpt-vllm-fix (every fix)")


@dataclass
class Attempt:
    """One ``aask`` through MetaGPT's open_llm provider, and what the server saw."""

    seen: list[RecordedRequest] = field(default_factory=list)  #: what the server saw, in order
    answer: Any = None  #: aask's text, or the code step's dict ({"language": ..., "code": ...})
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


async def _ask(llm_config: Any, server: Any, step: str) -> Attempt:
    attempt = Attempt()
    server.clear_requests()
    listener = _Collect(attempt.said)
    plugin_log = logging.getLogger("metagpt_vllm_fix")
    plugin_log.addHandler(listener)
    plugin_log.propagate, propagate = False, plugin_log.propagate
    try:
        return await _ask_once(llm_config, server, attempt, step)
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


async def _ask_once(llm_config: Any, server: Any, attempt: Attempt, step: str) -> Attempt:
    from metagpt.llm import LLM

    try:
        llm = LLM(llm_config=llm_config)  # as shipped on httpx 0.28 this raises (MetaGPT #1617): the step's result
    except Exception as exc:  # noqa: BLE001 - reported as what upstream does, scrubbed of the key by the report
        where = "" if type(exc).__module__ == "builtins" else f"{type(exc).__module__}."
        attempt.error = f"LLM() raised {where}{type(exc).__name__}: {exc}"
    else:
        await _aask(llm, attempt, step)
    # MetaGPT's requests, and the tools fix's GET /version (the only other request a fix makes)
    seen = [r for r in server.requests if r.path.startswith("/v1") or r.path == "/version"]
    attempt.seen = seen
    return attempt


async def _code_step(llm: Any) -> Any:
    """The Data Interpreter's code step as MetaGPT takes it: its own ``WriteCodeWithoutTools`` (0.7.4 and later;
    ``mi`` in 0.7.1-0.7.3) with ``llm`` as its LLM; on a MetaGPT without it, the same ``aask_code`` call directly."""
    import importlib

    from metagpt.schema import Message

    for module in ("metagpt.actions.di.write_analysis_code", "metagpt.actions.mi.write_analysis_code"):
        try:
            action = importlib.import_module(module).WriteCodeWithoutTools()
        except (ImportError, AttributeError):
            continue
        action.llm = llm
        return await action.run([Message(content=CODE_TASK, role="user")])
    return await llm.aask_code([{"role": "user", "content": CODE_TASK}])


async def _fill(llm: Any) -> Any:
    """WritePRD's ActionNode fill as WritePRD makes it (``WRITE_PRD_NODE.fill``: json, every attempt of
    ``_aask_v1``), its waits between attempts left out; the PRD MetaGPT parsed."""
    from metagpt.actions.action_node import ActionNode
    from metagpt.actions.write_prd_an import WRITE_PRD_NODE
    from tenacity import stop_after_attempt, wait_none

    node = WRITE_PRD_NODE
    node.set_llm(llm)
    prompt = node.compile(context=f"## Original Requirements\n{PRD_TASK}", schema="json", mode="auto")
    attempts = ActionNode._aask_v1.retry_with(wait=wait_none(), stop=stop_after_attempt(FILL_ATTEMPTS))
    _, parsed = await attempts(node, prompt, f"{node.key}_AN", node.get_mapping("auto"), schema="json")
    return parsed.model_dump()


async def _aask(llm: Any, attempt: Attempt, step: str = "aask") -> None:
    import openai
    from tenacity import RetryError

    from .vllm_versions import error_fields

    try:
        asked = _code_step(llm) if step == "code" else _fill(llm) if step == "fill" else llm.aask(PROMPT)
        attempt.answer = await asyncio.wait_for(asked, CALL_TIMEOUT)  # aask above: streamed, its default
        costs = llm.get_costs()
        attempt.usage = (costs.total_prompt_tokens, costs.total_completion_tokens)
    except openai.APIStatusError as exc:
        attempt.error, attempt.status = f"openai.{type(exc).__name__}", exc.status_code
        attempt.message = str(error_fields(exc.body).get("message") or "")
    except RetryError as exc:  # the fill: MetaGPT's six attempts failed; the last one says how
        from .fixes import innermost

        last = innermost(exc)
        status = getattr(last, "status_code", None)
        attempt.error = f"tenacity.RetryError after {exc.last_attempt.attempt_number} attempts, the last: " + \
            (f"{status} openai.{type(last).__name__}" if status else f"{type(last).__name__}: {last}")[:200]
    except asyncio.TimeoutError:
        attempt.error = f"no answer within {CALL_TIMEOUT:g} s"
    except Exception as exc:  # noqa: BLE001 - reported, scrubbed of the key by the report
        attempt.error = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    finally:  # here, in its own loop: openai's client sits in reference cycles, and the garbage collector could
        # close it later while the next scene's loop runs ("Event loop is closed" on stderr, seen on httpx 0.28)
        await llm.aclient.close()


def _leave_out_half_built_client(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The demo's event-loop error handler: all but one error go to asyncio's own.

    openai 1.6.0's client closes itself in a task when collected; the one ``LLM()`` left half built on httpx 0.28
    fails there (``AttributeError: ... '_state'``), which is the step's TypeError, already reported, told again.
    """
    task = context.get("future")
    coroutine = task.get_coro() if isinstance(task, asyncio.Task) else None
    if not (isinstance(context.get("exception"), AttributeError)
            and getattr(coroutine, "__qualname__", "") == "AsyncClient.aclose"):
        loop.default_exception_handler(context)


def key_fix_alone(keep: tuple[str, ...] = ("api_key", "httpx")) -> str:
    """``METAGPT_VLLM_FIX_DISABLE``'s value that leaves only ``keep`` on: by default the api_key fix alone.

    The httpx fix stays too: idle on httpx < 0.28, and on 0.28 without it there is no client at all.
    """
    from .fixes import NAMES

    return ",".join(name for name in NAMES if name not in keep)


async def _story(llm_config: Any, server: Any, scene: Scene) -> tuple[Attempt, Attempt, Attempt]:
    """Upstream (plugin removed), the scene's middle step, every fix; one event loop for the three calls."""
    from . import apply, remove
    from ._activation import DISABLE

    asyncio.get_running_loop().set_exception_handler(_leave_out_half_built_client)
    saved = os.environ.get(DISABLE)
    remove()
    try:
        upstream = await _ask(llm_config, server, scene.step)
        os.environ[DISABLE] = key_fix_alone(scene.middle)
        apply()
        key_only = await _ask(llm_config, server, scene.step)
    finally:
        remove()
        if saved is None:
            os.environ.pop(DISABLE, None)
        else:
            os.environ[DISABLE] = saved
        apply()
    return upstream, key_only, await _ask(llm_config, server, scene.step)


def _seen_line(r: RecordedRequest) -> str:
    if r.method == "GET":  # the tools and formats fixes ask which field constrains an answer on this vLLM: no key
        return f"GET {r.path} -> {r.status}"
    note = ("   <- MetaGPT's hard-coded placeholder, not the configured key"
            if r.authorization == f"Bearer {PLACEHOLDER_KEY}" else "")
    asked = f"max_tokens {r.max_tokens}" if r.max_tokens is not None else "no max_tokens"
    held = [name for name in constraining_fields() if name in r.fields]
    constrained = f", constrained ({', '.join(held)})" if held else ""
    return f"{r.path}, Authorization: {show_authorization(r.authorization)}, {asked}{constrained} -> {r.status}{note}"


def _repeats(lines: list[str]) -> tuple[list[str], int]:
    """(block, times) when ``lines`` is one block said ``times`` over (MetaGPT's attempts), else (lines, 1)."""
    for size in range(1, len(lines) // 2 + 1):
        times, rest = divmod(len(lines), size)
        if not rest and lines == lines[:size] * times:
            return lines[:size], times
    return lines, 1


def _describe(report: Report, attempt: Attempt) -> None:
    block, times = _repeats([_seen_line(r) for r in attempt.seen])
    for line in block:
        report.field("server saw", line, indent="     ")
    if times > 1:
        report.field("server saw", f"... that, {times} times in all: MetaGPT asking the same prompt again",
                     indent="     ")
    if not attempt.seen:
        report.field("server saw", "no request", indent="     ")
    if attempt.ok:
        usage = (f" ({attempt.usage[0]} prompt + {attempt.usage[1]} completion tokens, the server's own count)"
                 if attempt.usage and all(attempt.usage) else "")
        report.field("result", f"MetaGPT returned {attempt.answer!r}{usage}", indent="     ")
    else:
        code = f"{attempt.status} " if attempt.status else ""
        said = f": {attempt.message}" if attempt.message else ""
        report.field("result", f"{code}{attempt.error}{said}", indent="     ")
    for message in attempt.said:
        report.field("plugin said", message, indent="     ")


def _shipped_fails_at_llm() -> bool:
    """True on httpx 0.28+: openai 1.6.0 passes it ``proxies=``, so MetaGPT as shipped raises at ``LLM()``."""
    from .fixes.httpx_client import takes_proxies

    return not takes_proxies()


def _differences(scene: Scene, attempts: tuple[Attempt, Attempt, Attempt], key: str) -> list[str]:
    """Everything that differs from the scene: 401 for 'sk-xxx' (on httpx 0.28 no request: upstream's TypeError at
    ``LLM()``), then a 400, then an answer."""
    found = []
    placeholder, configured = f"Bearer {PLACEHOLDER_KEY}", f"Bearer {key}"
    expect = ((), *scene.expect[1:]) if _shipped_fails_at_llm() else scene.expect
    if expect[0] == () and PROXIES_TYPE_ERROR not in (attempts[0].error or ""):
        found.append(f"{scene.vllm_version}, step 1: MetaGPT as shipped should raise openai's TypeError at LLM() "
                     f"on this httpx; it gave {attempts[0].error or attempts[0].answer!r}")
    for number, (step, attempt, statuses) in enumerate(zip(STEPS, attempts, expect), 1):
        what = f"{scene.vllm_version}, step {number} ({step.split(' (')[0].lower()})"
        sent = placeholder if number == 1 else configured
        posts = [(r.status, r.authorization) for r in attempt.seen if r.method == "POST"]
        if tuple(s for s, _ in posts) != statuses or any(h != sent for _, h in posts):
            found.append(f"{what}: the server should answer {list(statuses)} to {show_authorization(sent)}; it "
                         f"answered {[s for s, _ in posts]} to {[show_authorization(h) for _, h in posts]}")
        if attempt.ok != (number == 3):
            found.append(f"{what}: " + (f"MetaGPT should fail; it returned {attempt.answer!r}" if attempt.ok else
                                        f"MetaGPT should answer; it failed: {attempt.status or ''} {attempt.error}"))
    fixed = attempts[2]
    if fixed.ok and scene.step == "fill" and not (isinstance(fixed.answer, dict) and "Product Goals" in fixed.answer):
        found.append(f"{scene.vllm_version}, WritePRD: MetaGPT should parse a PRD; it returned {fixed.answer!r}")
    if fixed.ok and scene.step == "code" and not (isinstance(fixed.answer, dict) and fixed.answer.get("code")):
        found.append(f"{scene.vllm_version}, the code step: MetaGPT should read a function call's code; it read "
                     f"{fixed.answer!r}")
    if fixed.ok and not (fixed.usage and all(fixed.usage)):
        found.append(f"{scene.vllm_version}: with every fix MetaGPT should record the server's token counts; it "
                     f"recorded {fixed.usage}")
    return found


def _play(scene: Scene, key: str, scratch: Path, report: Report) -> list[str]:
    """One scene: its server, the seed's config pointed at it, three calls; returns what differed."""
    from metagpt.config2 import Config

    from .server import DEFAULT_MODEL, VLLMServer

    with VLLMServer(api_keys=[key], model=DEFAULT_MODEL, max_model_len=CONTEXT, vllm_version=scene.vllm_version,
                    **scene.server) as server:
        config_path = scratch / f"{scene.vllm_version}-{scene.step}" / "config2.yaml"
        config_path.parent.mkdir(parents=True)
        config_path.write_text(SEED_CONFIG.format(base_url=server.base_url, model=DEFAULT_MODEL,
                                                  api_key=_yaml_scalar(key)), encoding="utf-8")
        llm_config = Config.from_yaml_file(config_path).llm
        report.line(f"{scene.title}")
        report.field("server", f"{server.base_url}  answers as vLLM {scene.vllm_version}, model {DEFAULT_MODEL} "
                               f"(context {CONTEXT}), --api-key {mask(key)}")
        attempts = asyncio.run(_story(llm_config, server, scene))
    for number, (step, attempt) in enumerate(zip(STEPS, attempts), 1):
        report.line(f"  {number}. " + step.format(middle=scene.middle_step,
                                                  disable="METAGPT_VLLM_FIX_DISABLE=" + key_fix_alone(scene.middle)))
        _describe(report, attempt)
    report.line()
    return _differences(scene, attempts, key)


def run(api_key: Optional[str] = None, report: Optional[Report] = None) -> int:
    """The ``demo`` command; returns 0 when each scene is exactly 401 (on httpx 0.28: upstream's TypeError at
    ``LLM()``), then 400, then an answer, else 1."""
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
        from .metagpt_env import import_metagpt, quiet_loguru

        (scratch / "config").mkdir()
        (scratch / "config" / "config2.yaml").write_text(SEED_CONFIG.format(
            base_url="http://127.0.0.1:9/v1", model="m", api_key="placeholder-for-the-import"), encoding="utf-8")
        try:
            import_metagpt(scratch, ["metagpt.config2", "metagpt.llm", "metagpt.logs"])
            from loguru import logger
            from metagpt.logs import set_llm_stream_logfunc
        except Exception as exc:  # noqa: BLE001 - a broken MetaGPT install: say so in one line
            report.check(PROBLEM, f"MetaGPT {version.metagpt_version} cannot be imported: {type(exc).__name__}: "
                                  f"{exc}")
            return 1
        imported = time.monotonic()
        logger.add(lambda message: captured.append(str(message).rstrip()), level="WARNING",
                   format="{level}: {message}")
        streamed: list[str] = []
        set_llm_stream_logfunc(streamed.append)  # the streamed answer is shown once, in the result line
        report.title(f"metagpt-vllm-fix demo: MetaGPT {version.metagpt_version}'s open_llm provider and the seed's "
                     "config2.yaml as written, against vLLM of MetaGPT 0.7's time and of today")
        report.field("config", f"the seed's, verbatim: api_type open_llm, api_key {mask(key)} "
                               f"({'given' if api_key else 'random, this run only'}); no max_token line (MetaGPT asks "
                               f"for {CONTEXT}), calc_usage true")
        report.field("asks", "MetaGPT's own Config.from_yaml_file(...).llm -> LLM(llm_config).aask(...), streamed, "
                             "three times per scene; the Data Interpreter's scene: WriteCodeWithoutTools().run(...), "
                             "which asks through aask_code; WritePRD's scene: WRITE_PRD_NODE's fill, MetaGPT's six "
                             "attempts without the waits between them")
        report.field("seed's vLLM", SEED_COMMAND.replace("KEY", mask(key)))
        if _shipped_fails_at_llm():
            from .fixes.httpx_client import httpx_version

            report.field("httpx", f"{httpx_version()}, which no longer takes the proxies= openai 1.6.0 passes: MetaGPT "
                                  "as shipped fails at LLM(), before any request (MetaGPT #1617); the httpx fix, on in "
                                  "steps 2 and 3, builds the client")
        report.line()
        differences = [d for scene in SCENES for d in _play(scene, key, scratch, report)]
        elapsed = time.monotonic() - imported
        if not differences:
            report.check(OK, f"The seed's config works as written, on vLLM 0.3.3 and on vLLM 0.32: the key is sent, "
                             f"max_tokens fits, a model without a chat template answers, usage comes from the server, "
                             f"the Data Interpreter's code step gets its function call, and WritePRD gets a PRD it "
                             f"parses from a model that ignores MetaGPT's format. "
                             f"({elapsed:.1f} s after MetaGPT's import, {time.monotonic() - started:.1f} s in all)")
            return 0
        report.check(PROBLEM, "The demo did not go as expected:\n" + "\n".join(f"- {d}" for d in differences))
        for line in captured[-10:]:
            report.dim(f"  MetaGPT log: {line}")
        return 1
    finally:
        quiet_loguru()
        shutil.rmtree(scratch, ignore_errors=True)
