"""How answers go on the wire: compact JSON bodies, and server-sent event streams ending in ``[DONE]``."""
from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type="application/json")


async def sse(request: web.Request, events: list[dict[str, Any]], done_delay: float = 0.0) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    for event in events:
        await resp.write(b"data: " + dumps(event) + b"\n\n")
    if done_delay:  # a stream left open after its last chunk: lets tests overlap concurrent streams
        await asyncio.sleep(done_delay)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp
