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
        (finder,) = [f for f in sys.meta_path if getattr(f, boot.MARK, False)]
        others = ["email", "json", "metagpt", "metagpt.provider", "metagpt.provider.open_llm_api_x", "wrapt"]
        import importlib.util, os
        package_dir = importlib.util.find_spec("metagpt").submodule_search_locations[0]  # finds, does not import
        target = finder.find_spec(boot.TARGET, [os.path.join(package_dir, "provider")])
        print(json.dumps({"others": [finder.find_spec(name, None) for name in others],
                          "target_loader": type(target.loader).__name__,
                          "loaded": sorted(m for m in ("wrapt", "metagpt", "metagpt_vllm_fix") if m in sys.modules)}))
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {"others": [None] * 6, "target_loader": "_ChainedLoader", "loaded": []}
