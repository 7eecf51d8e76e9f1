"""The emulator answers the probe set as each vLLM generation does, for each template kind of served model.

0.32.0: compared with the fingerprints recorded from real vLLM 0.32.0 servers, one per template kind
(``tests/real_vllm/`` re-records them live and checks the recording is current). 0.3.3: compared with what vLLM
0.3.3's source does with transformers <= 4.43 (CONTEXT.md §5, §8, §10): there is no installable vLLM 0.3 on a
CPU-only machine today.
"""

from __future__ import annotations

import json
from pathlib import Path

import probes

RECORDED = Path(__file__).parent / "real_vllm" / "fingerprints-vllm-0.32.0.json"
FLAT = "{code,message,object,param,type}"
UNAUTHORIZED = "{error:str}"
DETAIL = "{detail:str}"
FINISH_USAGE = {"ends_with_done": True, "usage_chunk_without_choices": False, "usage_on_a_chunk_with_choices": True,
                "finish_reason_sent": True, "objects": ["chat.completion.chunk"], "text_in": ["delta"]}
FINISH_USAGE_TEXT = {**FINISH_USAGE, "objects": ["text_completion"], "text_in": ["text"]}

# vLLM 0.3.3: exact "Bearer KEY" on every /v1 path and method; flat ErrorResponse bodies with param null; one
# context rule (prompt + max_tokens <= context, max_tokens defaulting to the room left); the model is checked
# first; unknown fields ignored (stream_options, tools, a request's chat_template); usage on the stream's finish
# chunk; FastAPI's {"detail"} for routing errors. A model without a chat template answers chat in transformers'
# default layout for its tokenizer class (Llama-2's for the seed's model), which like Llama-2-chat's own refuses
# roles that do not alternate; a template's exception is a flat 400.
EXPECTED_0_3_3 = {
    "health": (200, None), "version": (404, DETAIL),
    "models, no key": (401, UNAUTHORIZED), "models, Bearer key": (200, None),
    "models, bearer key (lower case)": (401, UNAUTHORIZED), "models, BEARER key (upper case)": (401, UNAUTHORIZED),
    "models, Bearer + two spaces": (401, UNAUTHORIZED),
    "models, Bearer sk-xxx (MetaGPT 0.7's key)": (401, UNAUTHORIZED),
    "models, Basic key": (401, UNAUTHORIZED), "models, key without scheme": (401, UNAUTHORIZED),
    "chat, no key": (401, UNAUTHORIZED), "chat, max_tokens 16": (200, None),
    "chat, max_tokens > context": (400, FLAT), "chat, max_tokens == context": (400, FLAT),
    "chat, prompt + max_tokens > context": (400, FLAT), "chat, max_tokens 4096 (MetaGPT's default)": (400, FLAT),
    "chat, no max_tokens": (200, None), "chat, max_tokens 0": (400, FLAT),
    "chat, prompt alone > context, max_tokens 16": (400, FLAT),
    "chat, prompt alone > context, no max_tokens": (400, FLAT),
    "chat, unknown model": (404, FLAT), "chat, unknown model and max_tokens 4096": (404, FLAT),
    "chat, no messages": (400, FLAT), "chat, invalid JSON": (400, FLAT),
    "chat, stream_options without stream": (200, None),
    "chat, stream": (200, FINISH_USAGE), "chat, stream + include_usage": (200, FINISH_USAGE),
    "chat, stream, max_tokens > context": (400, FLAT), "chat, stream, prompt alone > context": (400, FLAT),
    "chat, MetaGPT's messages (system first)": (200, None),
    "chat, stream, MetaGPT's messages (system first)": (200, FINISH_USAGE),
    "chat, stream + include_usage, MetaGPT's messages": (200, FINISH_USAGE),
    "chat, request-level chat_template": (200, None), "chat, stream, request-level chat_template": (200, FINISH_USAGE),
    "chat, tools, tool_choice left out (MetaGPT's aask_code)": (200, None),
    "chat, tools, tool_choice none": (200, None), "chat, tools, a named tool_choice": (200, None),
    "chat, assistant message first": (400, FLAT),
    "chat, structured_outputs (no chat template)": (200, None),
    "chat, structured_outputs beside a named tool_choice": (200, None),
    "chat, response_format json_schema without its json_schema": (200, None),
    "completions, max_tokens 8": (200, None), "completions, max_tokens > context": (400, FLAT),
    "completions, max_tokens == context": (400, FLAT), "completions, max_tokens 4096 (MetaGPT's default)": (400, FLAT),
    "completions, prompt + max_tokens > context": (400, FLAT), "completions, no max_tokens": (200, None),
    "completions, Llama-2 layout of MetaGPT's messages": (200, None),
    "completions, prompt alone > context": (400, FLAT),
    "completions, prompt alone > context, no max_tokens": (400, FLAT),
    "completions, stream_options without stream": (200, None), "completions, stream": (200, FINISH_USAGE_TEXT),
    "completions, stream + include_usage": (200, FINISH_USAGE_TEXT),
    "completions, stream, max_tokens > context": (400, FLAT),
    "completions, stream, prompt alone > context": (400, FLAT),
    "completions, no key": (401, UNAUTHORIZED), "completions, unknown model": (404, FLAT),
    "completions, no prompt": (400, FLAT),
    "completions, structured_outputs, a schema with uniqueItems": (200, None),
    "completions, stream, a schema with uniqueItems": (200, FINISH_USAGE_TEXT),
    "unknown /v1 path, no key": (401, UNAUTHORIZED), "unknown /v1 path, key": (404, DETAIL),
    "wrong method on chat": (405, DETAIL), "OPTIONS models, no key": (401, UNAUTHORIZED),
    "mistral-instruct: chat, MetaGPT's messages (system first)": (400, FLAT),
    "mistral-instruct: chat, stream, MetaGPT's messages": (400, FLAT),
    "mistral-instruct: chat, MetaGPT's messages, max_tokens 4096": (400, FLAT),
    "mistral-instruct: chat, system folded into the user message": (200, None),
    "mistral-instruct: chat, stream, system folded into the user message": (200, FINISH_USAGE),
    "mistral-instruct: chat, user, user": (400, FLAT),
    "mistral-instruct: chat, request-level chat_template": (400, FLAT),
    "mistral-instruct: chat, tools, a named tool_choice": (400, FLAT),
    "mistral-instruct: chat, no key": (401, UNAUTHORIZED),
    "llama-2-chat: chat, MetaGPT's messages (system first)": (200, None),
    "llama-2-chat: chat, MetaGPT's messages, max_tokens > context": (400, FLAT),
    "llama-2-chat: chat, stream + include_usage, MetaGPT's messages": (200, FINISH_USAGE),
    "llama-2-chat: chat, assistant message first": (400, FLAT),
    "llama-2-chat: completions, max_tokens 8": (200, None),
    "llama-2-chat: chat, structured_outputs": (200, None),
    "llama-2-chat: chat, stream, structured_outputs": (200, FINISH_USAGE),
    "llama-2-chat: chat, response_format json_schema": (200, None),
    "llama-2-chat: chat, response_format json_schema over structured_outputs": (200, None),
    "llama-2-chat: chat, guided_json (removed in 0.12: ignored)": (200, None),
    "llama-2-chat: chat, structured_outputs, max_tokens 3": (200, None),
    "llama-2-chat: chat, structured_outputs, a schema with uniqueItems": (200, None),
    "llama-2-chat: chat, stream, a schema with uniqueItems": (200, FINISH_USAGE),
    "llama-2-chat: completions, structured_outputs": (200, None),
    "llama-2-chat: completions, response_format json_schema": (200, None),
    "llama-2-chat: completions, guided_json (removed in 0.12: ignored)": (200, None),
    "llama-2-chat: chat, structured_outputs regex": (200, None),
    "llama-2-chat: chat, stream, structured_outputs regex": (200, FINISH_USAGE),
    "llama-2-chat: chat, guided_regex and structured_outputs regex (every field)": (200, None),
    "llama-2-chat: chat, guided_regex (removed in 0.12: ignored)": (200, None),
    "completions, structured_outputs regex (no chat template)": (200, None),
    "completions, stream, structured_outputs regex (no chat template)": (200, FINISH_USAGE_TEXT),
}
# vLLM 0.3.3 constrains with guided_json and guided_regex alone (chat and completions); structured_outputs and
# response_format did not exist (vllm-tools-facts.md §1a, §1b).
CONSTRAINED_0_3_3 = {"llama-2-chat: chat, guided_json (removed in 0.12: ignored)",
                     "llama-2-chat: completions, guided_json (removed in 0.12: ignored)",
                     "llama-2-chat: chat, guided_regex and structured_outputs regex (every field)",
                     "llama-2-chat: chat, guided_regex (removed in 0.12: ignored)"}
ROLES = "Conversation roles must alternate user/assistant/user/assistant/..."


def test_the_0_3_3_expectations_cover_the_whole_probe_set():
    assert set(EXPECTED_0_3_3) == {probe.name for probe in probes.PROBES}


def test_emulator_as_vllm_0_3_3_answers_as_its_source_does():
    observed = probes.emulated("0.3.3")
    found = {name: (facts["status"], facts.get("stream") or facts.get("shape")) for name, facts in observed.items()}
    assert found == EXPECTED_0_3_3
    errors = [facts for facts in observed.values() if facts.get("shape") == FLAT]
    assert {facts["param"] for facts in errors} == {None}
    assert {facts["type"] for facts in errors} == {"BadRequestError", "NotFoundError"}
    # a template's own exception, as the 400's message (the system role refused, roles not alternating)
    assert {name for name, facts in observed.items() if facts.get("message") == ROLES} == {
        name for name in EXPECTED_0_3_3 if name.startswith("mistral-instruct: chat") and "folded" not in name
        and "no key" not in name} | {"chat, assistant message first", "llama-2-chat: chat, assistant message first"}
    assert {name for name, facts in observed.items() if facts.get("validates")} == CONSTRAINED_0_3_3


def test_emulator_as_vllm_0_32_0_matches_the_recorded_real_servers():
    recorded = json.loads(RECORDED.read_text())
    assert set(recorded) == {probe.name for probe in probes.PROBES}, "re-record: RECORD_VLLM=1 (tests/real_vllm)"
    assert probes.differences(recorded, probes.emulated("0.32.0")) == {}
