"""The version gate: MetaGPT 0.7.x is patched; any other version is left alone, with the reason said."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import install_into, run_python
from metagpt_vllm_fix import gate


@pytest.mark.parametrize("version, supported, code", [
    ("0.7.0", True, "supported"),
    ("0.7.7", True, "supported"),
    ("0.7.7.post1", True, "supported"),
    ("0.7.7+local.build", True, "supported"),
    ("0.6.13", False, "unsupported-old"),
    ("0.8.0a1", False, "fixed-upstream"),
    ("0.8.2", False, "fixed-upstream"),
    ("1.0.0", False, "fixed-upstream"),
    ("not a version", False, "metadata-broken"),
])
def test_version_decides(version, supported, code):
    decision = gate._by_version(version)
    assert (decision.supported, decision.code) == (supported, code)
    assert decision.reason


@pytest.fixture(scope="session")
def other_metagpt(tmp_path_factory):
    """Install metagpt wheels of other versions (--no-deps) into their own target directories."""
    root = tmp_path_factory.mktemp("other-metagpt")

    def install(version: str) -> Path:
        target = root / version
        proc = install_into(sys.executable, "--no-deps", f"metagpt=={version}", target=target)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return target

    return install


STATUS_PROBE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
error = None
try:
    import metagpt.provider.open_llm_api
except Exception as exc:
    error = repr(exc)
import metagpt_vllm_fix
s = metagpt_vllm_fix.status()
print(json.dumps({"active": s.active, "code": s.code, "reason": s.reason, "version": s.metagpt_version,
                  "import_error": error}))
"""


@pytest.mark.parametrize("version, code", [("0.6.13", "unsupported-old"), ("0.8.2", "fixed-upstream")])
def test_other_versions_are_left_alone_with_reason(other_metagpt, tmp_path, version, code):
    target = other_metagpt(version)
    proc = run_python(STATUS_PROBE, cwd=tmp_path, forked=True, PYTHONPATH=str(target))
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (status["active"], status["code"], status["version"]) == (False, code, version)
    assert version in status["reason"]
    assert "Traceback" not in proc.stderr or "metagpt_vllm_fix" not in proc.stderr
