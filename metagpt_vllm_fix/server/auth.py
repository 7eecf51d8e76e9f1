"""The API key, as each vLLM release reads it (``--api-key`` or ``VLLM_API_KEY``) and checks it on ``/v1`` paths."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from typing import Optional

from aiohttp import web

from ..vllm_versions import DEFAULT_VERSION
from .errors import Handler, Middleware
from .recorder import BODY
from .served import generation_of

UNAUTHORIZED = b'{"error":"Unauthorized"}'  # starlette's compact JSONResponse rendering


def authorized(header: Optional[str], keys: Sequence[str], vllm_version: str = DEFAULT_VERSION) -> bool:
    """Would that vLLM release accept this ``Authorization`` header value?

    vLLM 0.3 -- 0.10: ``header == "Bearer " + key``, plain case-sensitive string equality, nothing trimmed.
    0.11 and later: the scheme is split at the first space and compared case-insensitively; the rest is matched
    against every key in constant time (sha256 digests + ``hmac.compare_digest``).
    No keys means nothing matches; whether to check at all is the caller's choice.
    """
    generation = generation_of(vllm_version)
    if header is None:
        return False
    if not generation.key_scheme_any_case:
        return any(header == "Bearer " + key for key in keys)
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    digest = hashlib.sha256(credential.encode("utf-8")).digest()
    match = False
    for key in keys:  # no early exit: timing must not reveal which key matched
        match |= hmac.compare_digest(digest, hashlib.sha256(key.encode("utf-8")).digest())
    return match


def api_key_from_env(cli_value: Optional[str], vllm_version: str = DEFAULT_VERSION) -> Optional[str]:
    """Resolve the server key as that vLLM release does.

    vLLM 0.3 reads ``os.environ.get("VLLM_API_KEY") or args.api_key`` -- the environment variable wins; newer
    vLLM lets ``--api-key`` win. Empty strings count as unset in both.
    """
    env = os.environ.get("VLLM_API_KEY")
    first, second = (env, cli_value) if generation_of(vllm_version).env_key_wins else (cli_value, env)
    return first or second or None


def middleware(keys: Sequence[str], vllm_version: str) -> Middleware:
    """vLLM's key check: every ``/v1`` path, before routing; an empty ``keys`` leaves the server open."""
    any_case = generation_of(vllm_version).key_scheme_any_case

    @web.middleware
    async def authentication(request: web.Request, handler: Handler) -> web.StreamResponse:
        # aiohttp runs middlewares even when routing failed, so unknown /v1 paths get 401
        # first, like vLLM's middleware.  Newer vLLM lets CORS preflights (OPTIONS) through.
        checked = keys and request.path.startswith("/v1")
        if checked and not (any_case and request.method == "OPTIONS"):
            if not authorized(request.headers.get("Authorization"), keys, vllm_version):
                if request.can_read_body:  # only for the recorder: what the refused request asked for
                    try:
                        request[BODY] = json.loads(await request.read())
                    except ValueError:
                        pass
                return web.Response(body=UNAUTHORIZED, status=401, content_type="application/json")
        return await handler(request)

    return authentication
