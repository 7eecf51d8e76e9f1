"""Asking a vLLM server for an answer constrained to a JSON schema: what the ``tools`` and ``formats`` fixes share.

Which field constrains depends on the server's vLLM release (``vllm_versions``): ``guided_json`` up to 0.11,
``structured_outputs`` from 0.11 on. ``GET /version`` (vLLM 0.4.0 and later, no key needed) names the release, and
then only its field is sent. Where it does not answer -- vLLM 0.3, or a reverse proxy that forwards only ``/v1/...``
-- every field is sent at once: each release reads the one it knows and ignores the other, except 0.4.2 - 0.6.4,
which refuse a field they do not know with a 400 naming it; that field is dropped and the request sent again, before
any generation. So the field is chosen by what the server does with the request, ``/version`` only saving a
warning in the server's log. A server that refuses every field cannot constrain (:class:`CannotConstrain`).

A constrained answer can be long, and a CPU server makes 10-20 tokens a second: asked in one piece it would run
into MetaGPT's request timeout (``llm.timeout``, 60 s in 0.7) and be generated again by the client's retries. So
the fixes ask for it streamed, where the timeout is a wait between two tokens, and :func:`collect` puts the pieces
back together when MetaGPT wants a whole answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from .fixes import error_message, refuses_field, status_code, usage_counts

if TYPE_CHECKING:
    from .vllm_versions import Generation

__all__ = ["CannotConstrain", "Collected", "Constraint", "budget", "collect", "fields_for", "server_generation",
           "streamed"]

VERSION_TIMEOUT = 2.0  #: seconds for the GET /version that names the server's release
DEFAULT_BUDGET = 1024  #: tokens a constrained answer is sized for when the request names no max_tokens


class CannotConstrain(Exception):
    """The server refused every field that constrains an answer (or the schema itself): no constrained answer."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


def _http_client(instance: Any, wrapped: Any) -> Any:
    owner = instance if instance is not None else getattr(wrapped, "__self__", None)
    return getattr(getattr(owner, "_client", None), "_client", None)


async def server_generation(instance: Any, wrapped: Any, server: str) -> Optional[Generation]:
    """The generation of the server at ``server``, asked now (``GET /version``); None when it does not say (vLLM
    0.3, or a proxy that forwards only ``/v1``). Asked per request, never kept: the server behind a URL may change."""
    from .vllm_versions import for_version

    http, root = _http_client(instance, wrapped), server.rstrip("/")
    root = root[: -len("/v1")] if root.endswith("/v1") else root
    try:
        answer = await http.get(root + "/version", timeout=VERSION_TIMEOUT)
        body = answer.json() if answer.status_code == 200 else None
        version = body.get("version") if isinstance(body, dict) else None
        return for_version(version) if isinstance(version, str) else None
    except Exception:  # noqa: BLE001  (no usable /version: the server's answers decide)
        return None


def fields_for(generation: Optional[Generation]) -> tuple[str, ...]:
    """The fields to send first: the generation's own, or every one when the generation is not known."""
    from .vllm_versions import structured_output_fields

    return (generation.structured_output,) if generation is not None else structured_output_fields()


def _cannot_compile(exc: BaseException) -> bool:
    """A 400 refusing the constraint itself (a keyword the server's grammar backend does not implement)."""
    from .vllm_versions import is_schema_refusal

    return status_code(exc) == 400 and is_schema_refusal(error_message(exc))


@dataclass(frozen=True)
class Constraint:
    """What an answer is held to, and in which request fields: the bounded schema's compact-JSON pattern where
    there is one (:func:`json_bounds.pattern`: no free whitespace, a known longest answer), else the schema."""

    fields: tuple[str, ...]  #: of ``vllm_versions.structured_output_fields()``
    schema: Mapping[str, Any]  #: strict and bounded
    regex: Optional[str]

    @classmethod
    def of(cls, schema: Mapping[str, Any], fields: Sequence[str], loose: bool = False) -> Constraint:
        """``loose``: the reader takes raw line breaks in strings (``json.loads(strict=False)``)."""
        from .json_bounds import Unsupported, pattern

        try:
            regex: Optional[str] = pattern(schema, loose=loose)
        except Unsupported:
            regex = None
        return cls(tuple(fields), schema, regex)

    def body(self) -> dict[str, Any]:
        """The request fields, for ``extra_body``."""
        from .vllm_versions import constraint

        return constraint(self.fields, schema=self.schema, regex=self.regex)

    def sent(self) -> list[str]:
        from .vllm_versions import sent_field

        return [sent_field(field, self.regex is not None) for field in self.fields]

    def describe(self) -> str:
        """``structured_outputs (regex)``, for the log."""
        return f"{' / '.join(self.sent())} ({'regex' if self.regex is not None else 'JSON schema'})"

    def after(self, exc: BaseException) -> Optional[Constraint]:
        """After ``exc`` answered a request so constrained: the constraint to ask with again (the server refused
        some fields, naming them), or None when the error is not about the constraint (it is the other fixes' or
        MetaGPT's, and passes unchanged). Raises :class:`CannotConstrain` when the server refused every field, or
        the constraint itself."""
        refused = [field for field, sent in zip(self.fields, self.sent()) if refuses_field(exc, sent)]
        if refused and len(refused) < len(self.fields):
            return Constraint(tuple(f for f in self.fields if f not in refused), self.schema, self.regex)
        if refused or _cannot_compile(exc):
            raise CannotConstrain(error_message(exc)[:300], status_code(exc)) from exc
        return None


def budget(kwargs: dict[str, Any]) -> int:
    """The tokens a constrained answer must fit: the request's ``max_tokens``, or :data:`DEFAULT_BUDGET`."""
    asked = kwargs.get("max_tokens")
    return asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else DEFAULT_BUDGET


def streamed(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request streamed. The ``usage`` fix, inside the fixes that ask constrained, asks a stream for the server's
    usage (``stream_options``) and asks again without it where a server refuses it; vLLM 0.3 puts usage on the
    finish chunk anyway. With that fix off, a constrained answer from vLLM 0.10.2 or later carries no usage."""
    return {**kwargs, "stream": True}


@dataclass(frozen=True)
class Collected:
    """A streamed chat answer put back together."""

    answer: Any  #: a ``ChatCompletion`` as the non-streamed request would have had it (usage when the stream had it)
    text: str
    finish_reason: Optional[str]


async def collect(stream: Any) -> Collected:
    """Read a chat stream (openai's, or the ``chat_template`` fix's) to its end and build the ``ChatCompletion``."""
    from openai.types.chat.chat_completion import ChatCompletion, Choice
    from openai.types.chat.chat_completion_message import ChatCompletionMessage

    texts: list[str] = []
    finish, usage, first = None, None, None
    async for chunk in stream:
        first = first or chunk
        usage = getattr(chunk, "usage", None) or usage
        for choice in getattr(chunk, "choices", None) or []:
            if getattr(choice, "index", 0) != 0:
                continue
            delta = getattr(choice, "delta", None)
            texts.append(getattr(delta, "content", None) or "")
            finish = getattr(choice, "finish_reason", None) or finish
    text = "".join(texts)
    message = ChatCompletionMessage.construct(role="assistant", content=text)
    choice = Choice.construct(index=0, finish_reason=finish, logprobs=None, message=message)
    answer = ChatCompletion.construct(id=getattr(first, "id", "") or "", object="chat.completion",
                                      created=getattr(first, "created", 0) or 0, model=getattr(first, "model", ""),
                                      choices=[choice], usage=_usage(usage))
    return Collected(answer=answer, text=text, finish_reason=finish)


def _usage(usage: Any) -> Any:
    """A stream's usage (openai 1.6 keeps a chunk's unknown ``usage`` as a dict) as ``CompletionUsage``, or None."""
    if usage is None:
        return None
    from openai.types import CompletionUsage

    counts = usage_counts(usage)
    if counts is None:
        return None
    prompt, completion = counts
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
