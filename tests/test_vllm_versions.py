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


@pytest.mark.parametrize("generation", vv.GENERATIONS, ids=lambda g: g.name)
def test_every_generations_refusal_of_a_model_without_a_chat_template_is_recognised(generation):
    if generation.no_template_message is None:  # 0.3.3 with transformers <= 4.43 answered in the default layout
        assert generation.name == "0.3"
        return
    message = generation.chat_error(generation.no_template_message)
    assert vv.is_template_missing(message) and not vv.is_system_role_refusal(message)
    assert message.endswith(" None") is generation.chat_error_cause  # 0.10.2 - 0.17: f"{e} {e.__cause__}"


@pytest.mark.parametrize("message", [
    # vLLM 0.3.3 (or any vLLM before 0.5.5) with transformers 4.44 .. 4.5x, and with transformers 5, flat 400
    "Cannot use apply_chat_template() because tokenizer.chat_template is not set and no template argument was passed! "
    "For information about writing templates and setting the tokenizer.chat_template attribute, please see the "
    "documentation at https://huggingface.co/docs/transformers/main/en/chat_templating",
    "Cannot use chat template functions because tokenizer.chat_template is not set and no template argument was "
    "passed! For information about writing templates and setting the tokenizer.chat_template attribute, please see "
    "the documentation at https://huggingface.co/docs/transformers/main/en/chat_templating",
])
def test_transformers_own_refusal_passed_on_by_older_vllm_is_recognised(message):
    assert vv.is_template_missing(message)


@pytest.mark.parametrize("generation", vv.GENERATIONS, ids=lambda g: g.name)
@pytest.mark.parametrize("text", vv.SYSTEM_ROLE_MESSAGES)
def test_every_generations_report_of_a_template_refusing_the_system_role_is_recognised(generation, text):
    message = generation.chat_error(text, text)
    assert vv.is_system_role_refusal(message) and not vv.is_template_missing(message)
    assert vv.classify_refusal(message) is None


@pytest.mark.parametrize("message", [
    "Chat template is passed with request, but --trust-request-chat-template is not set. Refused request with "
    "untrusted chat template.",
    "Only user and assistant roles are supported!", "The model `x` does not exist.", "",
])
def test_other_chat_refusals_are_neither(message):
    assert not vv.is_template_missing(message) and not vv.is_system_role_refusal(message)
