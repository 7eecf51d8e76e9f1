"""A chat request's prompt as the served model's chat template makes it: the template's refusal, or its size."""
from __future__ import annotations

from typing import Any, Optional

from .. import chat_layout, vllm_versions
from .echo import words
from .errors import APIError
from .served import Served

_ALTERNATE, _NO_SYSTEM = vllm_versions.SYSTEM_ROLE_MESSAGES


def content_text(content: Any) -> str:
    """Message content is a string, null, or (OpenAI vision style) a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def template_exception(kind: str, messages: list[dict[str, Any]]) -> Optional[str]:
    """The exception text a chat template of ``kind`` raises for these messages (None: it renders them)."""
    roles = [m.get("role") for m in messages]
    if kind == "gemma" and roles[:1] == ["system"]:
        return _NO_SYSTEM
    if kind == "llama-2-chat" and roles[:1] == ["system"]:
        roles = roles[1:]
    if any((role == "user") != (index % 2 == 0) for index, role in enumerate(roles)):
        return _ALTERNATE
    if kind == "mistral-instruct" and any(role not in ("user", "assistant") for role in roles):
        return "Only user and assistant roles are supported!"
    return None


def prompt_tokens(served: Served, messages: list[dict[str, Any]], texts: list[str], body: dict[str, Any]) -> int:
    """Apply the chat template (as far as it shows): its refusal as vLLM reports it, else the prompt's size."""
    gen = served.generation
    if isinstance(body.get("chat_template"), str) and gen.no_template_message is not None:
        return sum(words(t) for t in texts)  # 0.5.1 - 0.10 use a request's own template (0.3 ignores it)
    if served.chat_template == "none":
        if gen.no_template_message is not None:
            raise APIError(gen.chat_error(gen.no_template_message), gen.bad_request_type)
        # 0.3.3 with transformers <= 4.43: the tokenizer class's default layout (chat_layout has both); the
        # Llama default refused roles that do not alternate (after one system message) as Llama-2-chat's does
        layout = chat_layout.auto_layout(served.model)
        refused = template_exception("llama-2-chat", messages) if layout == "llama-2" else None
        if refused is not None:
            raise APIError(gen.chat_error(refused, refused), gen.bad_request_type)
        return words(chat_layout.LAYOUTS[layout](messages))
    refused = template_exception(served.chat_template, messages)
    if refused is not None:
        raise APIError(gen.chat_error(refused, refused), gen.bad_request_type)
    return sum(words(t) for t in texts)
