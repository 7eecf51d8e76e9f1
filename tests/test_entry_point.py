"""The wrapt post-import-hook entry point: tooling that discovers hooks (wrapt, autowrapt) finds and runs ours."""

from __future__ import annotations

import json

from conftest import run_python


def test_entry_point_is_declared_in_wrapts_convention(tmp_path):
    proc = run_python("""
        import json
        from importlib.metadata import entry_points
        eps = [ep for ep in entry_points().get("metagpt_vllm_fix", [])] if isinstance(entry_points(), dict) \\
            else list(entry_points(group="metagpt_vllm_fix"))
        print(json.dumps([[ep.name, ep.value] for ep in eps]))
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [["metagpt.provider.open_llm_api", "metagpt_vllm_fix:on_import"]]


def test_wrapt_discovery_alone_patches_metagpt(tmp_path):
    # Automatic activation off: only wrapt's discovery of our entry point can bring the plugin in.
    proc = run_python("""
        import json, sys, wrapt
        wrapt.discover_post_import_hooks("metagpt_vllm_fix")
        before = "metagpt_vllm_fix" in sys.modules
        from metagpt.provider.open_llm_api import OpenLLM
        from metagpt_vllm_fix.fixes import api_key
        print(json.dumps({"loaded_before": before, "patched": api_key.is_patched(OpenLLM)}))
    """, cwd=tmp_path, forked=True, METAGPT_VLLM_FIX="0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"loaded_before": False, "patched": True}
