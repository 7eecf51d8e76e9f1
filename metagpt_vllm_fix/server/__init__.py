"""A GPU-free stand-in for vLLM's OpenAI-compatible API server, playing a chosen vLLM release.

It answers deterministic echo text so tests and the demo can prove, over real HTTP, what MetaGPT's ``open_llm``
provider sends and what vLLM answers. Everything that differs between vLLM generations -- the key check, error
bodies, ``/version``, the ``max_tokens`` rule, streamed usage, the refusal of a model without a chat template,
function calls and structured outputs -- is read from :mod:`metagpt_vllm_fix.vllm_versions`; a conformance test
holds the default generation to a real vLLM (docs/proof.md). The served model's chat template is chosen by kind
(:data:`TEMPLATE_KINDS`).

One module per endpoint (``status``: /health, /version, /metrics; ``models``; ``chat``; ``completions``), on the
shared pieces: ``served`` (the settings), ``parsing`` (vLLM's request validation), ``budget`` (the context rule),
``chat_prompt`` (the chat template's verdict), ``echo`` (the answer), ``structured`` (an answer constrained to a
JSON schema), ``tool_calls`` (function calls, by generation and tool flags), ``errors``, ``responses`` (JSON and SSE),
``auth`` (the key), ``recorder``, ``app`` (routes and middlewares) and ``runner`` (threads, ``serve``, ``run``).
"""
from __future__ import annotations

from ..vllm_versions import DEFAULT_VERSION
from .app import build_app
from .auth import api_key_from_env, authorized
from .recorder import RecordedRequest
from .runner import VLLMServer, run, serve
from .served import DEFAULT_MODEL, TEMPLATE_KINDS

__all__ = [
    "DEFAULT_MODEL", "DEFAULT_VERSION", "TEMPLATE_KINDS", "RecordedRequest", "VLLMServer",
    "api_key_from_env", "authorized", "build_app", "run", "serve",
]
