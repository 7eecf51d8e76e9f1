"""What one emulated server serves -- its model, context and chat template -- and the vLLM release it plays."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .. import vllm_versions
from ..vllm_versions import Generation

DEFAULT_MODEL = "meta-llama/Llama-2-7b-hf"

# The served model's chat template, by kind: "none" (no template: meta-llama/Llama-2-7b-hf as published, the
# seed's model), "llama-2-chat" (Llama-2-7b-chat-hf's: one leading system message, then user/assistant
# alternating), "mistral-instruct" (Mistral-7B-Instruct v0.1/v0.2: user/assistant alternating from the first
# message, so no system message), "gemma" (no system role, then alternating).
TEMPLATE_KINDS = ("none", "llama-2-chat", "mistral-instruct", "gemma")


def generation_of(version: str) -> Generation:
    """The generation of ``version``, with a clear message for a version the table cannot place."""
    try:
        return vllm_versions.for_version(version)
    except ValueError as exc:
        raise ValueError(f"vllm_version: {exc}") from None


@dataclass(frozen=True)
class Served:
    """The settings every endpoint reads: one instance per app, fixed when the server is built."""

    model: str
    max_model_len: int
    version: str  #: the release ``/version`` names
    generation: Generation  #: that release's rules (:mod:`metagpt_vllm_fix.vllm_versions`)
    chat_template: str  #: a kind of :data:`TEMPLATE_KINDS`
    reject_unknown_fields: bool  #: play an OpenAI-compatible server that refuses fields it does not know
    done_delay: float  #: seconds a stream stays open after its last chunk
    tool_parser: Optional[str] = None  #: ``--tool-call-parser NAME``: named tool choices are answered with a call
    auto_tool_choice: bool = False  #: ``--enable-auto-tool-choice``: tools without a choice are answered with a call
    answers: str = "echo"  #: how the "model" answers an unconstrained request (:data:`.echo.ANSWER_STYLES`)
