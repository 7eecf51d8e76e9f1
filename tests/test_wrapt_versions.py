"""MetaGPT 0.7 pins wrapt 1.15.0, but users upgrade: the fix must hold on newer wrapt, including 2.x, whose
FunctionWrapper no longer derives from the public ObjectProxy."""

from __future__ import annotations

import sys

import pytest

from conftest import SEED_KEY, ask_metagpt, install_into


@pytest.fixture(scope="session")
def wrapt_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wrapt")

    def install(requirement: str):
        target = root / requirement.replace("<", "lt").replace(">", "ge").replace("=", "")
        if not target.exists():
            proc = install_into(sys.executable, "--no-deps", "--only-binary", ":all:", requirement, target=target)
            assert proc.returncode == 0, proc.stderr[-2000:]
        return target

    return install


@pytest.mark.parametrize("requirement, major", [("wrapt==1.17.2", "1"), ("wrapt>=2,<3", "2")])
def test_configured_key_reaches_server_on_newer_wrapt(vllm_server, user_home, wrapt_dirs, requirement, major):
    target = wrapt_dirs(requirement)
    prelude = (f"import wrapt\nassert wrapt.__file__.startswith({str(target)!r}), wrapt.__file__\n"
               f"assert wrapt.__version__.split('.')[0] == {major!r}, wrapt.__version__\n"
               "import metagpt_vllm_fix\nmetagpt_vllm_fix.apply(); metagpt_vllm_fix.apply()")
    result = ask_metagpt(user_home, prelude=prelude, PYTHONPATH=str(target))
    assert result["ok"] is True, result
    assert [r.authorization for r in vllm_server.requests] == [f"Bearer {SEED_KEY}"]


@pytest.mark.parametrize("requirement", ["wrapt==1.17.2", "wrapt>=2,<3"])
def test_remove_restores_the_original_on_newer_wrapt(user_home, wrapt_dirs, requirement):
    from conftest import run_python

    target = wrapt_dirs(requirement)
    proc = run_python("""
        import inspect, metagpt_vllm_fix
        from metagpt.provider.open_llm_api import OpenLLM
        from metagpt_vllm_fix.fixes import api_key
        original = inspect.unwrap(OpenLLM.__dict__["_make_client_kwargs"])
        assert api_key.is_patched(OpenLLM)
        metagpt_vllm_fix.remove()
        assert OpenLLM.__dict__["_make_client_kwargs"] is original
        print("restored")
    """, home=user_home, forked=True, PYTHONPATH=str(target))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("restored")
