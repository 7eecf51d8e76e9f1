"""The client-side layouts, the shipped templates that render them for vLLM, and the choice between them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jinja2
import jinja2.sandbox
import pytest

from metagpt_vllm_fix import chat_layout
from metagpt_vllm_fix.chat_layout import chatml, choose, completion_prompt, llama_2, template_path

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}  # MetaGPT 0.7's default system message

# Conversations as MetaGPT 0.7 sends them: aask (system + user), with history, a user message alone, several
# system messages (aask's system_msgs), and text with whitespace at its ends (the Llama-2 layout trims each turn).
CONVERSATIONS = {
    "system+user": [SYSTEM, {"role": "user", "content": "hello from the test"}],
    "system+user+assistant+user": [SYSTEM, {"role": "user", "content": "Write a haiku."},
                                   {"role": "assistant", "content": "Autumn moonlight -\na worm digs silently"},
                                   {"role": "user", "content": "Another one."}],
    "user only": [{"role": "user", "content": "hello"}],
    "two system messages": [{"role": "system", "content": "You are a Product Manager."},
                            {"role": "system", "content": "Answer in English."},
                            {"role": "user", "content": "## Requirement\nwrite a cli"}],
    "untrimmed": [{"role": "system", "content": "\n  Be brief.  \n"}, {"role": "user", "content": "  q  \n"}],
    "system only": [SYSTEM],
}


def test_llama_2_lays_out_metagpts_conversation_as_transformers_did():
    assert llama_2(CONVERSATIONS["system+user"]) == (
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nhello from the test [/INST]")
    assert llama_2(CONVERSATIONS["system+user+assistant+user"]) == (
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nWrite a haiku. [/INST] "
        "Autumn moonlight -\na worm digs silently </s><s>[INST] Another one. [/INST]")
    assert llama_2(CONVERSATIONS["user only"]) == "<s>[INST] hello [/INST]"


def test_llama_2_trims_the_ends_of_each_turn_whose_first_opens_with_the_system_block():
    # as transformers did: the system block is put in front of the first turn's text, then the whole is trimmed
    assert llama_2(CONVERSATIONS["untrimmed"]) == "<s>[INST] <<SYS>>\n\n  Be brief.  \n\n<</SYS>>\n\n  q [/INST]"
    assert llama_2([{"role": "user", "content": "  q  "}, {"role": "assistant", "content": " a\n"}]) == \
        "<s>[INST] q [/INST] a </s>"


def test_llama_2_joins_several_system_messages_where_transformers_refused_them():
    assert llama_2(CONVERSATIONS["two system messages"]) == (
        "<s>[INST] <<SYS>>\nYou are a Product Manager.\n\nAnswer in English.\n<</SYS>>\n\n"
        "## Requirement\nwrite a cli [/INST]")
    assert llama_2(CONVERSATIONS["system only"]) == "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>> [/INST]"


def test_chatml_keeps_every_message_verbatim_and_asks_for_the_assistant():
    assert chatml(CONVERSATIONS["system+user"]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhello from the test<|im_end|>\n<|im_start|>assistant\n")
    assert chatml(CONVERSATIONS["user only"], add_generation_prompt=False) == "<|im_start|>user\nhello<|im_end|>\n"


def test_content_parts_are_joined_as_vllm_joins_them_for_a_string_template():
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"},
                                          {"type": "text", "text": "b"}]}]
    assert llama_2(parts) == "<s>[INST] a\nb [/INST]"
    assert chatml([{"role": "assistant", "content": None}]).startswith("<|im_start|>assistant\n<|im_end|>\n")


def _render(name: str, messages: list, **env_options) -> str:
    # transformers compiles chat templates in an ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks,
    # and vLLM passes the tokenizer's bos_token / eos_token and add_generation_prompt (true by default).
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(**env_options)
    template = env.from_string(Path(template_path(name)).read_text(encoding="utf-8"))
    return template.render(messages=messages, bos_token="<s>", eos_token="</s>", add_generation_prompt=True)


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", ["llama-2", "chatml"])
@pytest.mark.parametrize("options", [{"trim_blocks": True, "lstrip_blocks": True}, {}], ids=["transformers", "plain"])
def test_shipped_template_renders_exactly_what_the_layout_function_lays_out(name, conversation, options):
    messages = CONVERSATIONS[conversation]
    assert _render(name, messages, **options) == chat_layout.LAYOUTS[name](messages)


def test_completions_prompt_leaves_the_first_bos_to_the_server():
    # vLLM's /v1/completions adds BOS itself; a template's "<s>" is text that vLLM's chat path tokenizes as BOS.
    messages = CONVERSATIONS["system+user+assistant+user"]
    prompt = completion_prompt("llama-2", messages)
    assert "<s>" + prompt == llama_2(messages)
    assert prompt.startswith("[INST] <<SYS>>") and prompt.count("<s>") == 1  # the second turn's BOS stays
    assert completion_prompt("chatml", messages) == chatml(messages)


@pytest.mark.parametrize("model, layout", [
    ("meta-llama/Llama-2-7b-hf", "llama-2"),
    ("meta-llama/Llama-2-13b-chat-hf", "llama-2"),
    ("codellama/CodeLlama-7b-hf", "llama-2"),
    ("huggyllama/llama-7b", "llama-2"),
    ("meta-llama/Llama-2-70b-hf", "llama-2"),
    ("mistralai/Mistral-7B-v0.1", "llama-2"),
    ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "llama-2"),
    ("meta-llama/Meta-Llama-3-8B", "chatml"),
    ("meta-llama/Llama-3.1-8B", "chatml"),
    ("meta-llama/Llama-4-Scout-17B-16E", "chatml"),
    ("Qwen/Qwen2-7B", "chatml"),
    ("my-model", "chatml"),
])
def test_layout_follows_the_tokenizer_class_the_model_name_implies(model, layout, monkeypatch):
    monkeypatch.delenv(chat_layout.ENV, raising=False)
    chosen, why = choose(model)
    assert chosen == layout
    assert model.rsplit("/", 1)[-1] in why and "transformers <= 4.43" in why


def test_the_switch_chooses_the_layout_and_a_wrong_value_is_named(monkeypatch):
    monkeypatch.setenv(chat_layout.ENV, "ChatML")
    assert choose("meta-llama/Llama-2-7b-hf") == ("chatml", f"{chat_layout.ENV}=ChatML")
    monkeypatch.setenv(chat_layout.ENV, "auto")
    assert choose("meta-llama/Llama-2-7b-hf")[0] == "llama-2"
    monkeypatch.setenv(chat_layout.ENV, "vicuna")
    layout, why = choose("meta-llama/Llama-2-7b-hf")
    assert layout == "llama-2" and "'vicuna' is not llama-2, chatml or auto" in why


@pytest.mark.parametrize("name", ["llama-2", "chatml"])
def test_cli_prints_the_path_of_a_shipped_template(name):
    proc = subprocess.run([sys.executable, "-m", "metagpt_vllm_fix", "chat-template", name], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path.is_absolute() and path.name == f"{name}.jinja"
    assert path.read_text(encoding="utf-8") == Path(template_path(name)).read_text(encoding="utf-8")


def test_cli_refuses_a_template_it_does_not_ship():
    proc = subprocess.run([sys.executable, "-m", "metagpt_vllm_fix", "chat-template", "vicuna"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "invalid choice: 'vicuna' (choose from 'llama-2', 'chatml')" in proc.stderr
