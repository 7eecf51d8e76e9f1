"""The ``chat_template`` fix: a model served without a chat template answers MetaGPT through ``/v1/completions``.

``meta-llama/Llama-2-7b-hf``, the seed's model, has no chat template. vLLM 0.3 answered its chat requests anyway,
in transformers' default layout for the tokenizer's class (transformers <= 4.43); vLLM 0.5.5 and later, and any
vLLM with transformers >= 4.44, refuse every chat request with 400 (the wordings are in ``vllm_versions``). On
that refusal this fix lays the conversation out as transformers did (``chat_layout``) and asks the same server's
``/v1/completions`` with the same client and the same parameters, then hands MetaGPT the chat objects it reads.
A function-call request is not rerouted (a completion cannot call tools): the ``tools`` fix, outside this one, answers
MetaGPT's function calls; any other gets the server's error, and the log the remedy. A server with no
``/v1/completions`` (404 or 405: not vLLM) leaves MetaGPT the server's own 400, the clearer error.

Every request is sent as MetaGPT sent it first, even after the server refused an earlier one: what a server said
once is not trusted for later requests. The server at that URL may since have been restarted with
``--chat-template`` (the remedy the log names), upgraded in place, or be one of several behind a router or a
Kubernetes Service; rerouting at once would answer a request that server answers as sent with the client's guess
of a layout instead of the server's template. Only the request's own refusal reroutes it, at the cost of one quick
round trip with no generation; the warning (once per server and model) names the remedy that avoids it. What is
kept is only which servers' ``/v1/completions`` refused ``add_special_tokens``: it decides how a rerouted prompt is
sent, never whether a request is rerouted, and it is dropped after any failed request to that server, so a server
replaced behind the URL is asked again.

It wraps ``create`` inside the ``max_tokens`` and ``usage`` fixes, so a rerouted request still carries usage's
``stream_options`` and a ``max_tokens`` refusal of ``/v1/completions`` reaches the max_tokens fix as the refusal of
the chat request it answers (both are openai exceptions).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from .. import chat_layout
from ..function_calls import FUNCTION_CALL_FIELDS
from . import REROUTE, Once, RequestFix, error_message, refuses_field, server_of, status_code

log = logging.getLogger("metagpt_vllm_fix")

_Key = tuple[str, str]  # (server base URL, model)
_said = Once()  # (server, model, what): what the log said once
# Servers whose /v1/completions refused add_special_tokens: how a rerouted prompt is sent, never whether a request is
# rerouted. A server leaves it after any failed request to it (another server may answer at that URL now).
_plain_servers: set[str] = set()
_NO_ENDPOINT = (404, 405)  # no /v1/completions there: a server that is not vLLM
TEXT_AS_TEMPLATE = {"add_special_tokens": False}  # vLLM: tokenize the prompt as a chat template's output
_lock = threading.Lock()

# create() arguments that mean the same to /v1/completions; any other argument (tools, functions, response_format,
# logprobs ...) has no completion counterpart, so such a request is left to the server's refusal.
_CARRIED = frozenset({
    "model", "max_tokens", "n", "temperature", "top_p", "stop", "stream", "presence_penalty", "frequency_penalty",
    "logit_bias", "user", "seed", "timeout", "extra_headers", "extra_query", "extra_body",
})


def refuses_for_template(exc: BaseException) -> bool:
    """A 400 saying the model has no chat template (any vLLM generation's words, or transformers')."""
    if status_code(exc) != 400:
        return False
    from ..vllm_versions import is_template_missing  # only once a request has failed: patching stays cheap

    return is_template_missing(error_message(exc))


def remedy(layout: str) -> str:
    """The server-side cure, in words (the shipped template that lays conversations out the same way)."""
    return (f"start vLLM with --chat-template \"$(metagpt-vllm-fix chat-template {layout})\" (a template file this "
            "package ships), or serve a model that has a chat template")


def _reroutable(kwargs: dict[str, Any]) -> bool:
    return isinstance(kwargs.get("messages"), list) and all(name in _CARRIED for name in kwargs if name != "messages")


def _warn(key: _Key, layout: str, why: str, message: str) -> None:
    if not _said.first((key, "rerouted")):
        return
    log.warning("chat_template: %s has no chat template for %s (%s); answering its chat requests through "
                "/v1/completions in the %s layout (%s), each after its own refusal (one extra round trip per "
                "request). Remedy: %s.",
                key[0], key[1], message[:160], layout, why, remedy(layout), extra={"fix": "chat_template"})


def _replaced(server: str) -> None:
    """A request to ``server`` failed: forget how its /v1/completions took a prompt (it may be another server now)."""
    with _lock:
        _plain_servers.discard(server)


def _chunk(completion_chunk: Any, first: bool) -> Any:
    """A ``/v1/completions`` stream chunk as the ``chat.completion.chunk`` MetaGPT reads (usage kept as it came)."""
    from openai.types.chat.chat_completion_chunk import ChatCompletionChunk, Choice, ChoiceDelta

    def delta(text: str) -> Any:
        return ChoiceDelta.construct(role="assistant", content=text) if first else ChoiceDelta.construct(content=text)

    choices = [Choice.construct(index=choice.index, finish_reason=choice.finish_reason, logprobs=None,
                                delta=delta(choice.text))
               for choice in (getattr(completion_chunk, "choices", None) or [])]
    extra = {"usage": completion_chunk.usage} if getattr(completion_chunk, "usage", None) is not None else {}
    return ChatCompletionChunk.construct(id=completion_chunk.id, object="chat.completion.chunk",
                                         created=getattr(completion_chunk, "created", None) or int(time.time()),
                                         model=completion_chunk.model, choices=choices, **extra)


def _completion(completion: Any) -> Any:
    """A ``/v1/completions`` answer as the ``chat.completion`` MetaGPT reads (message.content, usage ...)."""
    from openai.types.chat.chat_completion import ChatCompletion, Choice
    from openai.types.chat.chat_completion_message import ChatCompletionMessage

    choices = [Choice.construct(index=choice.index, finish_reason=choice.finish_reason, logprobs=None,
                                message=ChatCompletionMessage.construct(role="assistant", content=choice.text))
               for choice in completion.choices]
    return ChatCompletion.construct(id=completion.id, object="chat.completion", created=completion.created,
                                    model=completion.model, choices=choices, usage=completion.usage)


class ChatStream:
    """A completions stream read as a chat stream: ``async for`` gives ``ChatCompletionChunk`` objects."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.response = getattr(stream, "response", None)  # what openai's AsyncStream offers besides iteration

    def __aiter__(self) -> Any:
        return self._chunks()

    async def _chunks(self) -> Any:
        first = True
        async for chunk in self._stream:
            converted = _chunk(chunk, first)
            first = first and not converted.choices
            yield converted

    async def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            await close()


def _completions_of(instance: Any, wrapped: Callable[..., Any]) -> Any:
    """The ``completions`` resource of the client this chat ``create`` belongs to (None if it has none)."""
    owner = instance if instance is not None else getattr(wrapped, "__self__", None)
    completions = getattr(getattr(owner, "_client", None), "completions", None)
    return completions if callable(getattr(completions, "create", None)) else None


async def _ask_completions(completions: Any, server: str, layout: str, kwargs: dict[str, Any]) -> Any:
    """The conversation as one prompt to ``/v1/completions``, answered as the chat objects MetaGPT reads.

    The prompt is the template's text, sent with vLLM's ``add_special_tokens: false``: tokenized exactly as vLLM
    tokenizes a chat template's output, ``<s>`` included. A server that refuses that field gets the text without
    its leading ``<s>``, which its own BOS then replaces (token ids may then differ at a turn's start, as
    tokenizers that prefix a space to the text's start do), and is not asked with it again until a request to it
    fails.
    """
    carried = {name: value for name, value in kwargs.items() if name != "messages"}
    messages, extra = kwargs["messages"], carried.get("extra_body")
    with _lock:
        plain = server in _plain_servers
    try:
        if not plain and (extra is None or isinstance(extra, dict)):
            try:
                answer = await completions.create(prompt=chat_layout.render(layout, messages),
                                                  **{**carried, "extra_body": {**(extra or {}), **TEXT_AS_TEMPLATE}})
                return ChatStream(answer) if kwargs.get("stream") else _completion(answer)
            except Exception as exc:
                if not refuses_field(exc, "add_special_tokens"):  # not vLLM's CompletionRequest
                    raise
                with _lock:
                    _plain_servers.add(server)
        answer = await completions.create(prompt=chat_layout.completion_prompt(layout, messages), **carried)
    except Exception:
        _replaced(server)
        raise
    return ChatStream(answer) if kwargs.get("stream") else _completion(answer)


async def answer_without_template(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                                  kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``chat.completions.create``: the request as MetaGPT sent it; after its own no-template
    400, ``/v1/completions`` (or, where the server has none, that 400)."""
    if args:  # openai's create() takes keywords only; anything else is not MetaGPT's call
        return await wrapped(*args, **kwargs)
    try:
        return await wrapped(*args, **kwargs)
    except Exception as exc:
        server = server_of(wrapped, instance)
        completions = _completions_of(instance, wrapped)
        if not refuses_for_template(exc) or completions is None:
            _replaced(server)
            raise
        key = (server, str(kwargs.get("model")))
        layout, why = chat_layout.choose(key[1])
        if not _reroutable(kwargs):
            if _said.first((key, "not rerouted")):
                calls = [name for name in FUNCTION_CALL_FIELDS if name in kwargs] or \
                    sorted(set(kwargs) - _CARRIED - {"messages"})
                log.warning("chat_template: %s has no chat template for %s; a request with %s is not sent to "
                            "/v1/completions (a completion cannot call tools): MetaGPT's function calls are the "
                            "tools fix's to answer, any other such request gets the server's 400. Remedy: %s.",
                            key[0], key[1], ", ".join(calls), remedy(layout), extra={"fix": "chat_template"})
            raise
        refusal = exc
    adjust = REROUTE.get()  # an outer fix's say in how this request is asked instead (formats: constrained)
    if adjust is not None:
        kwargs = await adjust(kwargs)
    try:
        answer = await _ask_completions(completions, server, layout, kwargs)
    except Exception as exc:
        if status_code(exc) not in _NO_ENDPOINT:  # the server's answer to the rerouted request (max_tokens ...)
            _warn(key, layout, why, error_message(refusal))
            raise
        if _said.first((key, "no completions")):
            log.warning("chat_template: %s has no chat template for %s and no /v1/completions to answer through "
                        "instead (%s: not vLLM), so its 400 stands. Remedy: serve the model with a chat template.",
                        server, key[1], status_code(exc), extra={"fix": "chat_template"})
        raise refusal from None  # MetaGPT gets the chat request's own 400, the clearer error
    _warn(key, layout, why, error_message(refusal))
    return answer


def forget() -> None:
    """Drop what was said and noted (``remove()`` calls it, so a re-applied fix starts afresh)."""
    _said.clear()
    with _lock:
        _plain_servers.clear()


def layout_status() -> str:
    """The layout decision as status shows it (the model is not known before a request)."""
    chosen = os.environ.get(chat_layout.ENV, "").strip()
    if chosen and chosen.lower() != "auto":
        try:
            return f"layout {chat_layout.layout_name(chosen)} ({chat_layout.ENV})"
        except ValueError:
            return f"layout by model name ({chat_layout.ENV}={chosen[:20]!r} is not llama-2, chatml or auto)"
    return "layout by model name: Llama-2's for Llama-family names, ChatML otherwise"


class ChatTemplateFix(RequestFix):
    name = "chat_template"
    summary = ("each chat request refused for want of a chat template is answered through /v1/completions, laid out "
               "as transformers <= 4.43 did (one refused round trip per request)")
    upstream = ("every chat request to a model without a chat template gets 400 (vLLM 0.5.5+, or transformers "
                ">= 4.44)")
    call = staticmethod(answer_without_template)

    def describe(self) -> str:
        return f"{self.summary}; {layout_status()}"

    def forget(self) -> None:
        forget()


FIX = ChatTemplateFix()

