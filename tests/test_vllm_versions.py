"""The table of vLLM behaviour: which release belongs to which generation, and refusals recognised from any of them."""

from __future__ import annotations

import pytest

from metagpt_vllm_fix import vllm_versions as vv


@pytest.mark.parametrize("version,generation", [
    (None, "0.3"), ("0.3.3", "0.3"), ("0.8.5.post1", "0.3"), ("0.10.1", "0.3"), ("v0.10.2", "0.10.2"),
    ("0.11.0rc2+cpu", "0.11"), ("0.17.1", "0.11"), ("0.18.0", "0.18+"), ("0.32.0", "0.18+"), ("1.2", "0.18+"),
])
def test_each_release_maps_to_the_newest_generation_it_reaches(version, generation):
    assert vv.for_version(version).name == generation


@pytest.mark.parametrize("text", ["0.2.7", "latest", "", "v"])
def test_a_release_the_table_cannot_place_is_refused_with_a_message(text):
    with pytest.raises(ValueError, match="vLLM|not a vLLM version"):
        vv.for_version(text)


def test_the_default_release_is_the_current_generation():
    assert vv.for_version(vv.DEFAULT_VERSION) is vv.CURRENT is vv.GENERATIONS[-1]
    assert [g.since for g in vv.GENERATIONS] == sorted(g.since for g in vv.GENERATIONS)


@pytest.mark.parametrize("generation", vv.GENERATIONS, ids=lambda g: g.name)
def test_every_generations_max_tokens_refusal_is_recognised_and_worth_a_retry(generation):
    message = generation.max_tokens_message.format(context=512, prompt=20, completion=4096, total=4116)
    refusal = vv.classify_refusal(message)
    assert refusal is not None and refusal.kind == "max_tokens" and refusal.retry_helps
    assert (refusal.context, refusal.completion_tokens) == (512, 4096)


@pytest.mark.parametrize("generation", vv.GENERATIONS, ids=lambda g: g.name)
def test_every_generations_prompt_refusal_is_recognised_and_never_retried(generation):
    message = generation.prompt_message.format(context=512, prompt=600, completion=-88)
    refusal = vv.classify_refusal(message)
    assert refusal is not None and refusal.kind == "prompt" and not refusal.retry_helps


def test_a_max_tokens_message_whose_prompt_alone_fills_the_context_is_a_prompt_refusal():
    for generation in vv.GENERATIONS[:2]:  # the generations whose max_tokens message names the prompt's size
        message = generation.max_tokens_message.format(context=512, prompt=600, completion=16, total=616)
        assert vv.classify_refusal(message).kind == "prompt"


@pytest.mark.parametrize("message", [
    "The model `llama2` does not exist.", "Unauthorized", "",
    "This model's maximum context length is many tokens.",  # no numbers: not one of vLLM's
    "'max_tokens' or 'max_completion_tokens' is too large: 5. This model's maximum context length is 9 tokens and "
    "your request has 3 input tokens (5 > 8 - 3).",  # the repeated fields disagree: not vLLM's arithmetic
])
def test_anything_else_is_not_a_context_refusal(message):
    assert vv.classify_refusal(message) is None


@pytest.mark.parametrize("version,max_tokens,prompt,refused", [
    ("0.3.3", 4096, 10, True), ("0.3.3", 4086, 10, False), ("0.17.0", 4090, 10, True),
    ("0.32.0", 4096, 10, False), ("0.32.0", 4097, 1, True),
])
def test_the_max_tokens_rule_of_each_generation(version, max_tokens, prompt, refused):
    assert vv.for_version(version).refuses_max_tokens(max_tokens, 4096, prompt) is refused


def test_error_bodies_are_flat_until_0_10_2_and_nested_after():
    flat = vv.for_version("0.3.3").error_body(404, "m", "NotFoundError", None)
    nested = vv.for_version("0.32.0").error_body(404, "m", "NotFoundError", None)
    assert flat == {"object": "error", "message": "m", "type": "NotFoundError", "param": None, "code": 404}
    assert nested == {"error": {"message": "m", "type": "NotFoundError", "param": None, "code": 404}}
    assert vv.error_fields(flat)["message"] == vv.error_fields(nested)["message"] == "m"
