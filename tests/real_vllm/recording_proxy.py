"""A reverse proxy on 127.0.0.1 that passes every request to one real server and records what MetaGPT sent.

vLLM's access log says which path answered with which status, but not what was asked. For the token-id proof we
need the exact body the plugin's fallback sent to ``/v1/completions`` (its prompt) and the messages MetaGPT sent
to ``/v1/chat/completions``; this proxy keeps both and changes nothing on the way (responses, streams included,
are relayed as they arrive, chunk by chunk).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade", "te",
              "trailer"}


@dataclass
class Exchange:
    method: str
    path: str
    body: Any  # the JSON body, or None
    status: int = 0
    response: bytes = b""  # the body as the server sent it (for a stream, every event)
    started: float = 0.0  # time.monotonic() when the request came in
    ended: float = 0.0  # ... and when its answer's last byte went out

    def usage(self) -> dict[str, int]:
        """The usage the answer reported (a stream's last usage, or the body's), or {}."""
        if self.response.lstrip().startswith(b"data:"):
            found: dict[str, int] = {}
            for line in self.response.decode(errors="replace").splitlines():
                if line.startswith("data: {"):
                    found = json.loads(line[len("data: "):]).get("usage") or found
            return found
        try:
            return json.loads(self.response).get("usage") or {}
        except ValueError:
            return {}

    def answer_text(self) -> str:
        """The text an answer carried: ``message.content`` or ``text``, or a stream's pieces joined."""
        if not self.response.lstrip().startswith(b"data:"):  # a chat answer's message, a completion's text
            return "".join((c["message"]["content"] if "message" in c else c.get("text")) or ""
                           for c in json.loads(self.response)["choices"])
        text = []
        for line in self.response.decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[len("data: "):]).get("choices") or []:
                    text.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
        return "".join(text)


class RecordingProxy:
    """``RecordingProxy(upstream_url)``; give MetaGPT ``proxy.url + "/v1"`` as its base_url; read ``exchanges``.

    ``only="/v1/"`` plays a reverse proxy that forwards only that prefix (nginx's ``location /v1/``, a gateway):
    any other path is answered 404 by the proxy itself (``GET /version`` among them)."""

    def __init__(self, upstream: str, only: str = "") -> None:
        self.exchanges: list[Exchange] = []
        target = urlsplit(upstream)
        assert target.hostname == "127.0.0.1", "loopback only"
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                exchange = Exchange(self.command, self.path, body, started=time.monotonic())
                proxy.exchanges.append(exchange)
                if only and not self.path.startswith(only):
                    exchange.status, exchange.response = 404, b"<html>404 Not Found</html>"
                    exchange.ended = time.monotonic()
                    self.send_response(404)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(exchange.response)))
                    self.end_headers()
                    self.wfile.write(exchange.response)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=600)
                try:
                    conn.request(self.command, self.path, body=raw or None, headers=headers)
                    resp = conn.getresponse()
                    exchange.status = resp.status
                    self.send_response(resp.status)
                    for key, value in resp.getheaders():
                        if key.lower() not in HOP_BY_HOP:
                            self.send_header(key, value)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    while True:
                        chunk = resp.read1(65536)
                        if not chunk:
                            break
                        exchange.response += chunk
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a run the test stopped); closing conn makes vLLM abort the answer
                finally:
                    exchange.ended = time.monotonic()
                    conn.close()

            do_GET = do_POST = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def posted(self, path: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST" and e.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RecordingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
