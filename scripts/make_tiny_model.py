#!/usr/bin/env python3
"""Make tiny Llama models that a real vLLM serves on CPU as users serve theirs, without any network or model hub.

The machines this project runs on cannot download weights, yet the real-vLLM tests need models vLLM loads the
ordinary way (``--model DIR``) and that behave like the ones users serve, down to the tokenizer config. So we
build them: a ``LlamaForCausalLM`` with random weights (fixed seed) and a tokenizer trained on Python's own
standard-library sources (always present), in three variants that share weights and tokenizer (template kinds as
the project names them):

- ``tiny-llama`` (kind ``none``): meta-llama/Llama-2-7b-hf as published, the seed's model. NO chat template.
- ``tiny-llama-chat`` (kind ``llama-2-chat``): Llama-2-7b-chat-hf's own template ([INST] / <<SYS>>).
- ``tiny-mistral-instruct`` (kind ``mistral-instruct``): Mistral-7B-Instruct v0.1/v0.2's template, which refuses
  a system message ("Conversation roles must alternate user/assistant/user/assistant/...").

The tokenizer imitates Llama-2's: a SentencePiece-style BPE (``▁`` for spaces, a ``▁`` put before the text, byte
fallback through the 256 tokens ``<0x00>``..``<0xFF>``), ids 0/1/2 = ``<unk>``/``<s>``/``</s>``, no pad token,
``<s>`` added in front of every encoded text (``add_bos_token: true``), and ``tokenizer_config.json`` written in
the published shape with ``tokenizer_class: LlamaTokenizer`` (transformers 5 loads its ``LlamaTokenizer``, the
fast one, from ``tokenizer.json``; the script checks it encodes exactly as the file does). Only the vocabulary is
small: 2048 instead of 32000. Its answers are gibberish: tests assert on statuses, structure, usage and token
ids, never on text.

Sizes: hidden 128 with 4 heads (head_dim 32, which vLLM's CPU attention accepts), 2 layers, intermediate 256,
vocab 2048, 4096 positions (Llama-2-7b's context; RoPE has no position weights, so this costs nothing and lets a
server take any --max-model-len up to 4096): about 0.85 M parameters, float32, a few MB on disk per variant.

Usage: python scripts/make_tiny_model.py [--force] ROOT   (the vLLM venv's python; writes ROOT/tiny-llama,
ROOT/tiny-llama-chat, ROOT/tiny-mistral-instruct; each is built beside its target and renamed into place)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

VOCAB_SIZE = 2048
MAX_POSITIONS = 4096
SEED = 20240307
TRAIN_BYTES = 4_000_000  # enough text for the merges, small enough to train in a few seconds
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2, as in Llama-2's vocabulary
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]  # ids 3..258, SentencePiece's byte fallback
HUGE = 1000000000000000019884624838656  # what the published configs say for "no model_max_length"

# meta-llama/Llama-2-7b-chat-hf's layout: an optional leading system message folded into the first user turn
# inside <<SYS>>; every user turn "<s>[INST] ... [/INST]" (contents stripped), every answer " ... </s>"; roles
# must alternate starting with user.
LLAMA_2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# mistralai/Mistral-7B-Instruct-v0.1 / v0.2: user and assistant only, alternating from user; a system message
# first (as MetaGPT always sends) fails the alternation check.
MISTRAL_INSTRUCT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)

# directory name -> (template kind, chat template or None, extra tokenizer_config fields of the imitated repo)
VARIANTS: dict[str, tuple[str, Optional[str], dict[str, Any]]] = {
    "tiny-llama": ("none", None, {}),
    "tiny-llama-chat": ("llama-2-chat", LLAMA_2_CHAT_TEMPLATE, {"use_default_system_prompt": False}),
    "tiny-mistral-instruct": ("mistral-instruct", MISTRAL_INSTRUCT_TEMPLATE,
                              {"use_default_system_prompt": False, "spaces_between_special_tokens": False}),
}


def training_text() -> Iterator[str]:
    """Yield the standard library's top-level modules, in a fixed order, up to TRAIN_BYTES characters."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    left = TRAIN_BYTES
    for path in sorted(stdlib.glob("*.py")):
        if left <= 0:
            return
        text = path.read_text(encoding="utf-8", errors="replace")[:left]
        left -= len(text)
        yield text


def make_tokenizer() -> Any:
    """Train a Llama-2-style BPE (metaspace, byte fallback) and return it as a ``tokenizers.Tokenizer``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    # Train with the text split at spaces (SentencePiece never merges across one either), the byte tokens held
    # as specials so they get ids 3..258; then rebuild the model from the learnt vocabulary and merges so that
    # only <unk>, <s>, </s> are special, as in Llama-2's tokenizer.json.
    trainee = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainee.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS + BYTE_TOKENS,
                                  limit_alphabet=120, show_progress=False)
    trainee.train_from_iterator(training_text(), trainer=trainer)
    learnt = json.loads(trainee.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learnt["merges"]]

    tok = Tokenizer(models.BPE(vocab=learnt["vocab"], merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2], "special token ids moved"
    assert tok.get_vocab_size() <= VOCAB_SIZE
    return tok


def tokenizer_config(chat_template: Optional[str], extra: dict[str, Any]) -> dict[str, Any]:
    """``tokenizer_config.json`` in the shape meta-llama / mistralai publish (a chat template only if given)."""
    def special(content: str) -> dict[str, Any]:
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False}

    config: dict[str, Any] = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": special("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": special("</s>"),
        "legacy": False,
        "model_max_length": HUGE,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": special("<unk>"),
        **extra,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return dict(sorted(config.items()))


def make_model() -> Any:
    """A randomly initialised (seeded) Llama small enough to load in a second on CPU; Llama-2-7b's config keys."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(torch.float32).eval()  # config.json then records dtype float32


def write_variant(out: Path, model: Any, tok: Any, chat_template: Optional[str], extra: dict[str, Any]) -> None:
    """Build the model directory beside ``out`` and rename it into place, so an interrupted run (or a server
    started meanwhile) never sees a half-written model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(chat_template, extra), indent=2)
                                                   + "\n")
        (tmp / "special_tokens_map.json").write_text(json.dumps(
            {name: {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
             for name, t in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}, indent=2) + "\n")
        check(tmp, tok, chat_template)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=out.name + ".old.", dir=out.parent))
            out.rename(old / out.name)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check(model_dir: Path, tok: Any, chat_template: Optional[str]) -> None:
    """Load the directory the way vLLM does (AutoTokenizer) and check it is the tokenizer we meant."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(model_dir))
    assert type(loaded).__name__ == "LlamaTokenizer" and loaded.is_fast, type(loaded)
    for text in ("Say hello.", "<s>[INST] <<SYS>>\nYou are a helper.\n<</SYS>>\n\nHi [/INST]", " ünï ☃ 中"):
        assert loaded(text)["input_ids"] == tok.encode(text).ids, text
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id, loaded.pad_token) == (1, 2, 0, None)
    assert loaded.chat_template == chat_template


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="directory to write the model directories into")
    parser.add_argument("--force", action="store_true", help="replace existing model directories")
    args = parser.parse_args(argv)
    root: Path = args.root
    existing = [name for name in VARIANTS if (root / name).exists()]
    if existing and not args.force:
        print(f"make_tiny_model: {', '.join(str(root / n) for n in existing)} exist (use --force to replace them)",
              file=sys.stderr)
        return 1

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    tok = make_tokenizer()
    model = make_model()
    params = sum(p.numel() for p in model.parameters())
    for name, (kind, template, extra) in VARIANTS.items():
        write_variant(root / name, model, tok, template, extra)
        print(f"make_tiny_model: wrote {root / name} (template kind {kind}; {params / 1e6:.2f} M parameters, "
              f"vocab {tok.get_vocab_size()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
