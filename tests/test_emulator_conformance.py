"""The emulator answers the probe set as each vLLM generation does.

0.32.0: compared with the fingerprints recorded from a real vLLM 0.32.0 (``tests/real_vllm/`` re-records them
live and checks the recording is current). 0.3.3: compared with what vLLM 0.3.3's source does (CONTEXT.md §5, §8):
there is no installable vLLM 0.3 on a CPU-only machine today.
"""

from __future__ import annotations

import json
from pathlib import Path

import probes
from metagpt_vllm_fix.server import VLLMServer

RECORDED = Path(__file__).parent / "real_vllm" / "fingerprints-vllm-0.32.0.json"
FLAT = "{code,message,object,param,type}"
UNAUTHORIZED = "{error:str}"
DETAIL = "{detail:str}"
FINISH_USAGE = {"ends_with_done": True, "usage_chunk_without_choices": False, "usage_on_a_chunk_with_choices": True,
                "finish_reason_sent": True}

# vLLM 0.3.3: exact "Bearer KEY" on every /v1 path and method; flat ErrorResponse bodies with param null; one
# context rule (prompt + max_tokens <= context, max_tokens defaulting to the room left); the model is checked
# first; unknown fields ignored; usage on the stream's finish chunk; FastAPI's {"detail"} for routing errors.
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
    "completions, max_tokens 8": (200, None), "completions, max_tokens > context": (400, FLAT),
    "unknown /v1 path, no key": (401, UNAUTHORIZED), "unknown /v1 path, key": (404, DETAIL),
    "wrong method on chat": (405, DETAIL), "OPTIONS models, no key": (401, UNAUTHORIZED),
}


def emulator_fingerprints(version: str) -> dict:
    with VLLMServer(api_keys=[probes.KEY], max_model_len=probes.CONTEXT, vllm_version=version) as server:
        return probes.observe_all(server.url)


def test_the_0_3_3_expectations_cover_the_whole_probe_set():
    assert set(EXPECTED_0_3_3) == {probe.name for probe in probes.PROBES}


def test_emulator_as_vllm_0_3_3_answers_as_its_source_does():
    observed = emulator_fingerprints("0.3.3")
    found = {name: (facts["status"], facts.get("stream") or facts.get("shape")) for name, facts in observed.items()}
    assert found == EXPECTED_0_3_3
    errors = [facts for facts in observed.values() if facts.get("shape") == FLAT]
    assert {facts["param"] for facts in errors} == {None}
    assert {facts["type"] for facts in errors} == {"BadRequestError", "NotFoundError"}


def test_emulator_as_vllm_0_32_0_matches_the_recorded_real_server():
    recorded = json.loads(RECORDED.read_text())
    assert set(recorded) == {probe.name for probe in probes.PROBES}, "re-record: make test-vllm"
    assert probes.differences(recorded, emulator_fingerprints("0.32.0")) == {}
