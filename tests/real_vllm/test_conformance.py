"""The emulator, as vLLM 0.32.0, answers the probe set exactly as the real vLLM 0.32.0 does.

Same status, content type, error-body shape, error type and param, and error message (numbers blanked: the
emulator counts words, vLLM its tokenizer's tokens) for every probe; for streams, where the usage arrives. The
fingerprints recorded in ``fingerprints-vllm-0.32.0.json`` (read by ``make test``'s conformance test) must be
today's. Regenerate them with ``python tests/probes.py URL > tests/real_vllm/fingerprints-vllm-0.32.0.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import probes
from metagpt_vllm_fix.server import DEFAULT_VERSION, VLLMServer

RECORDED = Path(__file__).parent / "fingerprints-vllm-0.32.0.json"


@pytest.fixture(scope="module")
def real(real_vllm) -> dict[str, dict[str, Any]]:
    assert real_vllm.max_model_len == probes.CONTEXT and real_vllm.api_key == probes.KEY
    return probes.observe_all(real_vllm.url)


@pytest.fixture(scope="module")
def emulated() -> dict[str, dict[str, Any]]:
    with VLLMServer(api_keys=[probes.KEY], max_model_len=probes.CONTEXT, vllm_version="0.32.0") as server:
        return probes.observe_all(server.url)


def test_the_emulators_default_release_is_the_real_servers(real_vllm):
    assert httpx.get(real_vllm.url + "/version", timeout=30).json() == {"version": DEFAULT_VERSION}


def test_emulator_as_0_32_0_answers_every_probe_as_real_vllm_0_32_0(real, emulated):
    assert probes.differences(real, emulated) == {}


def test_the_recorded_fingerprints_are_todays(real):
    assert json.loads(RECORDED.read_text()) == real
