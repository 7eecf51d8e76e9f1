#!/usr/bin/env python3
"""Make a tiny Llama model that a real vLLM can serve on CPU, without any network or model hub.

The machines this project runs on cannot download weights, yet the real-vLLM tests need a model vLLM loads the
ordinary way (``--model DIR``). So we build one: a ``LlamaForCausalLM`` with random weights (fixed seed) and a
byte-level BPE tokenizer trained on Python's own standard-library sources (always present), saved with a chat
template so ``/v1/chat/completions`` works. Its answers are gibberish: tests assert on statuses, headers,
structure and usage, never on text.

Sizes: hidden 128 with 4 heads (head_dim 32, which vLLM's CPU attention accepts), 2 layers, intermediate 256,
vocab 2048, 4096 positions (Llama-2-7b's context; RoPE has no position weights, so this costs nothing and lets a
server take any --max-model-len up to 4096, e.g. 4096 for MetaGPT's own long prompts): about 0.85 M parameters,
float32, a few MB on disk.

Usage: python scripts/make_tiny_model.py OUT_DIR      (run with the vLLM venv's python; takes a few seconds)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

VOCAB_SIZE = 2048
MAX_POSITIONS = 4096
SEED = 20240307
TRAIN_BYTES = 4_000_000  # enough text for 2048 merges, small enough to train in about a second
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, in this order

# Llama-2's chat layout ([INST] ... [/INST], <<SYS>> block), written out simply.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


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


def make_tokenizer():
    """Train a byte-level BPE tokenizer and wrap it as a transformers fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=MAX_POSITIONS,
        chat_template=CHAT_TEMPLATE,
    )


def make_model(tokenizer):
    """A randomly initialised (seeded) Llama small enough to load in a second on CPU."""
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
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(torch.float32).eval()  # config.json then records dtype float32


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to create (must not exist, unless --force)")
    parser.add_argument("--force", action="store_true", help="replace an existing directory")
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    if out.exists() and not args.force:
        print(f"make_tiny_model: {out} exists (use --force to replace it)", file=sys.stderr)
        return 1

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    tokenizer = make_tokenizer()
    if len(tokenizer) > VOCAB_SIZE:
        print(f"make_tiny_model: tokenizer has {len(tokenizer)} tokens > {VOCAB_SIZE}", file=sys.stderr)
        return 1
    model = make_model(tokenizer)

    # Build beside the target and rename, so an interrupted run never leaves a half-written model behind.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    params = sum(p.numel() for p in model.parameters())
    print(f"make_tiny_model: wrote {out} ({params / 1e6:.2f} M parameters, vocab {len(tokenizer)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
