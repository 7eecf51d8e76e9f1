"""vLLM's error answers: the ``ErrorResponse`` a handler raises, in its generation's shape, and routing errors."""
from __future__ import annotations

from collections.abc import Awaitable
from typing import Callable, Optional

from aiohttp import web

from ..vllm_versions import Generation
from .responses import json_response, sse

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


class APIError(Exception):
    """Raised by handlers; rendered in vLLM's ``ErrorResponse`` shape."""

    def __init__(self, message: str, err_type: str = "BadRequestError", status: int = 400,
                 param: Optional[str] = None) -> None:
        super().__init__(message)
        self.message, self.err_type, self.status, self.param = message, err_type, status, param


def invalid(generation: Generation, field: str, kind: str, text: str, items: int = 0) -> APIError:
    """A request-validation 400: newer vLLM reports FastAPI's error ("Bad Request", param ``body.<field>``)."""
    if not generation.request_checks:
        return APIError(text)
    detail = {"type": kind, "loc": f"body.{field}", "msg": text, "input": f"<dict of {items} items>"}
    return APIError(f"1 validation error:\n  {detail}", "Bad Request", param=f"body.{field}")


async def sse_error(request: web.Request, generation: Generation, error: APIError,
                    done_delay: float = 0.0) -> web.StreamResponse:
    """A stream refused once it has begun (vLLM 0.32 for a schema it cannot compile): one error event, then
    ``[DONE]``, under status 200."""
    return await sse(request, [generation.error_body(error.status, error.message, error.err_type, error.param)],
                     done_delay)


def middleware(generation: Generation) -> Middleware:
    """Renders :class:`APIError` as the generation's error body, and routing errors as FastAPI's ``{"detail"}``."""

    @web.middleware
    async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:  # routing: FastAPI's {"detail": ...} bodies
            if exc.status not in (404, 405):
                raise
            return json_response({"detail": "Not Found" if exc.status == 404 else "Method Not Allowed"}, exc.status)
        except APIError as exc:
            return json_response(generation.error_body(exc.status, exc.message, exc.err_type, exc.param), exc.status)

    return api_errors
