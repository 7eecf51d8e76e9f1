"""Chat conversations laid out as one prompt, the way transformers <= 4.43 did when a tokenizer had no template.

A model served without a chat template (``meta-llama/Llama-2-7b-hf``, the seed's model, is one) answered chat
requests in vLLM 0.3 because transformers fell back to a default for the tokenizer's class: Llama-2's
``[INST]``/``<<SYS>>`` layout for ``LlamaTokenizer(Fast)`` -- the class of Llama, Llama-2, CodeLlama and Mistral
-- and ChatML for every other class. transformers 4.44 dropped those defaults and vLLM now refuses such requests
(vllm_versions). The ``chat_template`` fix sends the conversation laid out here to ``/v1/completions`` instead;
``templates/`` holds the same layouts as Jinja files for vLLM's ``--chat-template``, the server-side remedy.

Where transformers' default refused a conversation (roles not alternating user/assistant after one system
message) these layouts go on: several leading system messages are joined by a blank line, and every turn is laid
out by its role. For the conversations the default accepted the text is the default's, character for character.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable

__all__ = ["ENV", "LAYOUTS", "TEMPLATE_NAMES", "auto_layout", "chatml", "choose", "completion_prompt", "layout_name",
           "llama_2", "render", "template_path"]

ENV = "METAGPT_VLLM_FIX_CHAT_LAYOUT"  #: llama-2 or chatml; unset (or "auto") decides by the model's name
BOS, EOS = "<s>", "</s>"  #: Llama tokenizers' special tokens, which Llama-2's layout writes as text


def _text(content: Any) -> str:
    """A message's content as the text a string-content template sees (vLLM joins text parts with newlines)."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(part["text"] for part in content
                         if isinstance(part, Mapping) and isinstance(part.get("text"), str))
    return ""


def llama_2(messages: Sequence[Mapping[str, Any]], *, bos: str = BOS, eos: str = EOS) -> str:
    """``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] {user} [/INST]``.

    The leading system message is embedded in the first turn; each turn's text is trimmed. There is no
    generation prompt: the prompt ends with the last ``[/INST]``, where the model's answer begins.
    """
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for message in messages:
        role, text = str(message.get("role", "")), _text(message.get("content"))
        if role == "system" and not turns:
            system.append(text)
        else:
            turns.append((role, text))
    if system and not turns:  # a system message alone still becomes a prompt
        turns.append(("user", ""))
    out = []
    for index, (role, text) in enumerate(turns):
        if index == 0 and system:
            text = "<<SYS>>\n" + "\n\n".join(system) + "\n<</SYS>>\n\n" + text
        if role == "assistant":
            out.append(" " + text.strip() + " " + eos)
        elif role == "system":
            out.append("<<SYS>>\n" + text.strip() + "\n<</SYS>>\n\n")
        else:  # user, and any other role (tool, function) as the user's turn
            out.append(bos + "[INST] " + text.strip() + " [/INST]")
    return "".join(out)


def chatml(messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
    """``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then ``<|im_start|>assistant\\n``.

    Nothing is trimmed. vLLM's chat requests ask for the generation prompt unless told otherwise.
    """
    out = [f"<|im_start|>{message.get('role', '')}\n{_text(message.get('content'))}<|im_end|>\n"
           for message in messages]
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


LAYOUTS: dict[str, Callable[[Sequence[Mapping[str, Any]]], str]] = {"llama-2": llama_2, "chatml": chatml}
TEMPLATE_NAMES = tuple(LAYOUTS)  #: the files in templates/, by layout name
_ALIASES = {"llama-2": "llama-2", "llama2": "llama-2", "llama_2": "llama-2", "chatml": "chatml"}

# LlamaTokenizer(Fast) models: Llama 1 and 2, CodeLlama, TinyLlama, Vicuna, Mistral and Mixtral. Llama 3 and
# later have another tokenizer class (PreTrainedTokenizerFast), for which transformers used ChatML.
_LLAMA_FAMILY = re.compile(r"llama|mistral|mixtral|vicuna", re.IGNORECASE)
_LATER_LLAMA = re.compile(r"llama[-_ ]?[3-9](?!\d*b)", re.IGNORECASE)  # Llama-3.1-8B, llama3; not Llama-7b


def layout_name(text: str) -> str:
    """``llama-2`` or ``chatml`` for a name as users write it; ValueError for anything else."""
    name = _ALIASES.get(text.strip().lower())
    if name is None:
        raise ValueError(f"not a chat layout: {text[:40]!r} (use one of {', '.join(TEMPLATE_NAMES)})")
    return name


def auto_layout(model: str) -> str:
    """The layout transformers <= 4.43 used for this served model name's tokenizer class, as far as a name tells."""
    name = model.rsplit("/", 1)[-1]
    return "llama-2" if _LLAMA_FAMILY.search(name) and not _LATER_LLAMA.search(name) else "chatml"


def choose(model: str) -> tuple[str, str]:
    """(layout name, why in a few words) for a served model name; ``METAGPT_VLLM_FIX_CHAT_LAYOUT`` decides first."""
    chosen = os.environ.get(ENV, "").strip()
    note = ""
    if chosen and chosen.lower() != "auto":
        try:
            return layout_name(chosen), f"{ENV}={chosen[:20]}"
        except ValueError:
            note = f"; {ENV}={chosen[:20]!r} is not llama-2, chatml or auto"
    name = model.rsplit("/", 1)[-1][:60]
    if auto_layout(model) == "llama-2":
        return "llama-2", (f"{name!r} is a Llama-family name (LlamaTokenizer), for which transformers <= 4.43 used "
                           f"Llama-2's layout{note}")
    return "chatml", f"{name!r} is not a Llama-family name; transformers <= 4.43 used ChatML for those{note}"


def render(layout: str, messages: Sequence[Mapping[str, Any]]) -> str:
    """The conversation in a layout: exactly what ``templates/<layout>.jinja`` renders, ``<s>`` included."""
    return LAYOUTS[layout](messages)


def completion_prompt(layout: str, messages: Sequence[Mapping[str, Any]]) -> str:
    """The layout's text for a ``/v1/completions`` that adds the tokenizer's BOS itself (special tokens on).

    vLLM tokenizes a chat template's output without adding special tokens, the template writing ``<s>`` as text;
    asked with ``add_special_tokens: false``, ``/v1/completions`` does the same with :func:`render`'s text. A
    server that adds special tokens regardless gets this text, whose leading ``<s>`` is left to the server.
    """
    text = render(layout, messages)
    return text[len(BOS):] if layout == "llama-2" and text.startswith(BOS) else text


def template_path(name: str) -> str:
    """Absolute path of the shipped Jinja file for a layout (``--chat-template`` takes it)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", f"{layout_name(name)}.jinja")
