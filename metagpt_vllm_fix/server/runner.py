"""Running the emulator: on a background thread with its own loop (:class:`VLLMServer`), or in the foreground."""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional

from aiohttp import web

from ..masking import mask
from ..vllm_versions import DEFAULT_VERSION
from .app import build_app
from .recorder import RecordedRequest
from .served import DEFAULT_MODEL

log = logging.getLogger("metagpt_vllm_fix.server")  # the package's name: what a caller filters the start-up line by


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _describe_keys(api_keys: Sequence[str], vllm_version: str) -> str:
    keys = [k for k in api_keys if k]
    if not keys:
        return f"vLLM {vllm_version}, no API key (open server)"
    return f"vLLM {vllm_version}, keys " + ", ".join(mask(k) for k in keys)


class VLLMServer:
    """The emulator on a background thread with its own event loop (tests, demo).

    ``chat_template`` defaults to ``"llama-2-chat"``, a model whose template takes MetaGPT's system + user
    messages, so a test that is not about chat templates tests what it says; ``"none"`` is the seed's model as
    published (and the ``serve`` command's default). ``tool_parser="hermes"`` plays a server started with
    ``--enable-auto-tool-choice --tool-call-parser hermes`` (see :func:`.build_app`). ``answers="plain"`` plays a
    model that ignores MetaGPT's formats (answers MetaGPT cannot parse unless they are constrained).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_keys: Sequence[str] = (),
                 model: str = DEFAULT_MODEL, max_model_len: int = 4096, vllm_version: str = DEFAULT_VERSION,
                 reject_unknown_fields: bool = False, done_delay: float = 0.0,
                 chat_template: str = "llama-2-chat", tool_parser: Optional[str] = None,
                 enable_auto_tool_choice: Optional[bool] = None, answers: str = "echo") -> None:
        self.host, self.port, self.model = host, port, model
        self.max_model_len, self.vllm_version, self.chat_template = max_model_len, vllm_version, chat_template
        self._recorded: list[RecordedRequest] = []
        self._app = build_app(api_keys=api_keys, model=model, max_model_len=max_model_len, vllm_version=vllm_version,
                              reject_unknown_fields=reject_unknown_fields, done_delay=done_delay,
                              chat_template=chat_template, tool_parser=tool_parser,
                              enable_auto_tool_choice=enable_auto_tool_choice, answers=answers,
                              recorder=self._recorded)  # validates arguments early
        self._banner = _describe_keys(api_keys, vllm_version)
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self._recorded)

    def clear_requests(self) -> None:
        self._recorded.clear()

    def start(self) -> VLLMServer:
        """Return once the socket listens; a bind error is raised here, not lost in the thread."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("server already started")
            started = threading.Event()
            failure: list[BaseException] = []
            self._thread = threading.Thread(target=self._run, args=(started, failure),
                                            name="vllm-emulator", daemon=True)
            self._thread.start()
            started.wait()
            if failure:
                self._thread.join()
                self._thread = None
                raise failure[0]
        return self

    def _run(self, started: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._app, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, self.host, self.port).start())
            self.port = runner.addresses[0][1]
            self._loop = loop
            log.info("vLLM emulator listening on %s (model %s, %s)", self.url, self.model, self._banner)
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            failure.append(exc)
            loop.run_until_complete(runner.cleanup())
            loop.close()
            started.set()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        """Idempotent; returns after the port is closed and the loop is gone."""
        with self._lock:
            thread, loop = self._thread, self._loop
            self._thread = self._loop = None
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def serve(*, host: str = "127.0.0.1", port: int = 8000, api_keys: Sequence[str] = (),
                model: str = DEFAULT_MODEL, max_model_len: int = 4096, vllm_version: str = DEFAULT_VERSION,
                reject_unknown_fields: bool = False, chat_template: str = "none",
                tool_parser: Optional[str] = None, enable_auto_tool_choice: Optional[bool] = None,
                answers: str = "echo", ready: Optional[Callable[[str], None]] = None,
                recorder: Optional[list[RecordedRequest]] = None) -> None:
    """Serve until cancelled, then close the socket; ``ready(url)`` is called once listening.

    ``recorder`` receives every answered request (see :func:`build_app`); the ``serve`` command prints them.
    ``chat_template`` defaults to ``"none"``: the seed's model as published has no chat template.
    """
    app = build_app(api_keys=api_keys, model=model, max_model_len=max_model_len, vllm_version=vllm_version,
                    reject_unknown_fields=reject_unknown_fields, chat_template=chat_template,
                    tool_parser=tool_parser, enable_auto_tool_choice=enable_auto_tool_choice, answers=answers,
                    recorder=recorder)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        url = _url(host, runner.addresses[0][1])
        log.info("vLLM emulator listening on %s (model %s, %s)", url, model, _describe_keys(api_keys, vllm_version))
        if ready is not None:
            ready(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(**kwargs: Any) -> None:
    """Blocking :func:`serve` that exits cleanly on Ctrl-C or SIGTERM."""

    async def main() -> None:
        task = asyncio.ensure_future(serve(**kwargs))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, task.cancel)
            except (NotImplementedError, RuntimeError):  # Windows / not the main thread
                pass
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # where signal handlers could not be installed
        pass
