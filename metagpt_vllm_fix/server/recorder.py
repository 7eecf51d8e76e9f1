"""What each client sent and got back, recorded as the answer leaves, for tests, the demo and ``serve``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

from aiohttp import web

from ..masking import mask

BODY = "metagpt_vllm_fix.body"  # where a handler (or the key check) leaves the parsed request body for the recorder


@dataclass(frozen=True, repr=False)
class RecordedRequest:
    """What a client actually sent (and what it got back)."""

    method: str
    path: str
    authorization: Optional[str]
    status: int
    fields: tuple[str, ...] = ()  #: top-level fields of the JSON body, when it was one
    max_tokens: Optional[int] = None  #: the body's max_tokens, when sent
    body: Any = dataclasses.field(default=None, compare=False)  #: the parsed JSON body, when it was one

    def __repr__(self) -> str:  # masked, so a failing assert or a print never leaks a key
        auth = self.authorization
        if auth is not None:
            scheme, sep, cred = auth.partition(" ")
            auth = scheme + sep + mask(cred) if sep else mask(auth)
        return f"RecordedRequest({self.method} {self.path} auth={auth!r} fields={self.fields} -> {self.status})"


def recording(recorder: Optional[list[RecordedRequest]]) -> Callable[[web.Request, web.StreamResponse], Any]:
    """An ``on_response_prepare`` callback appending every answered request to ``recorder`` (None: none kept)."""

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        # Runs before the first response byte is sent, so a client that has its answer
        # always finds the record.  list.append is atomic under the GIL: safe across threads.
        if recorder is not None:
            body = request.get(BODY)
            recorder.append(RecordedRequest(request.method, request.path, request.headers.get("Authorization"),
                                            response.status, tuple(sorted(body)) if isinstance(body, dict) else (),
                                            body.get("max_tokens") if isinstance(body, dict) else None, body))

    return record
