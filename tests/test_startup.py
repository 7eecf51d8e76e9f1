"""Start-up is sacred: the .pth loads one small standard-library module and nothing else."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import clean_env, imported_at_startup, run_python

FORBIDDEN = ("wrapt", "importlib.metadata", "importlib_metadata", "metagpt", "packaging", "pkg_resources",
             "metagpt_vllm_fix", "logging", "threading")


def heavy(modules):
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


@pytest.mark.parametrize("which", ["test-env", "bare-venv"])
def test_startup_imports_only_the_boot_module(which, request):
    python = sys.executable if which == "test-env" else request.getfixturevalue("bare_venv")
    modules = imported_at_startup(python)
    assert "_metagpt_vllm_fix_boot" in modules, "the .pth did not run: is the plugin installed?"
    assert heavy(modules) == []


def test_off_switch_skips_even_the_boot_module():
    assert "_metagpt_vllm_fix_boot" not in imported_at_startup(sys.executable, env=clean_env(METAGPT_VLLM_FIX="0"))


def test_metagpt_absent_means_no_patch_and_a_reason(bare_venv, tmp_path):
    proc = run_python("""
        import json, metagpt_vllm_fix
        s = metagpt_vllm_fix.status()
        print(json.dumps({"active": s.active, "state": s.state, "code": s.code, "reason": s.reason,
                          "hook": s.hook_installed, "pth": s.pth_file}))
    """, python=str(bare_venv), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert (status["active"], status["state"], status["code"]) == (False, "inactive", "metagpt-absent")
    assert "not installed" in status["reason"]
    assert status["hook"] is True and status["pth"].endswith("metagpt-vllm-fix.pth")


def test_hook_is_inert_for_every_other_module(tmp_path):
    proc = run_python("""
        import sys, json, email.mime.text, xml.dom.minidom
        import _metagpt_vllm_fix_boot as boot
        print(json.dumps({"installed": boot.installed(),
                          "loaded": sorted(m for m in ("wrapt", "metagpt", "metagpt_vllm_fix") if m in sys.modules),
                          "loaders_untouched": type(email.__spec__.loader).__name__}))
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {"installed": True, "loaded": [], "loaders_untouched": "SourceFileLoader"}

