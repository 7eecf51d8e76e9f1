"""``/health``, ``/version`` and ``/metrics``: what the server says about itself, without a key."""
from __future__ import annotations

from aiohttp import web

from .responses import json_response
from .served import Served


async def health(served: Served, request: web.Request) -> web.Response:
    return web.Response(status=200, body=b"", headers={"Content-Type": ""})  # vLLM's is empty and untyped


async def version(served: Served, request: web.Request) -> web.Response:
    """Routed only where the generation has it (``Generation.version_endpoint``): vLLM 0.3 answers 404."""
    return json_response({"version": served.version})


async def metrics(served: Served, request: web.Request) -> web.Response:
    text = f'vllm:num_requests_running{{model_name="{served.model}"}} 0.0\n'
    return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=1.0.0; charset=utf-8"})
