"""Faults and bad input: each ends in a clear message and an intact interpreter.

Every scenario runs in a process of the test environment with the .pth start-up path included, and checks what
the user would see: the child's exit status, its stderr, what the key-checking server received, and
``metagpt_vllm_fix.status()``. Where MetaGPT itself must be replaced (a look-alike 0.7.7 whose ``OpenLLM`` has
another shape, a release with broken metadata) or wrapt broken, the child gets a directory first on
``PYTHONPATH``: a small fake ``metagpt`` package, a copy of the real 0.7.7 wheel with its dist-info damaged, a
``wrapt`` that fails. The -S and -I runs are fresh interpreters; every other run is a child of the zygote
(tests/zygote.py), which runs the .pth line with the run's environment as start-up does and puts PYTHONPATH where
start-up puts it (the zygote imported neither metagpt nor wrapt, so a fresh interpreter finds the same modules).
Nothing is mocked in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

import metagpt_vllm_fix
from conftest import ASK_SCRIPT, RESULT_MARK, SEED_KEY, ask_metagpt, install_into, run_python, write_config
from metagpt_vllm_fix.server import VLLMServer

STATUS_JSON = ("import json, metagpt_vllm_fix as _f; _s = _f.status(); "
               "print('@@STATUS@@ ' + json.dumps({'code': _s.code, 'state': _s.state, 'reason': _s.reason, "
               "'active': _s.active, 'switch': _s.switch, 'hook': _s.hook_installed}), file=__import__('sys').stderr)")


def ask(home: Path, *, args: tuple = (), prelude: str = "", forked: bool = False, **env: str) -> dict:
    """conftest.ask_metagpt with interpreter options (-S, -I): MetaGPT's LLM().aask in a fresh interpreter (with
    ``forked``, a zygote child), its exit status checked."""
    proc = run_python(ASK_SCRIPT.format(prelude=prelude, stream=False, mark=RESULT_MARK), home=home, args=args,
                      forked=forked, **env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert lines, f"no result from the child (rc={proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, proc.stderr
    result = json.loads(lines[-1][len(RESULT_MARK):])
    result.update(stderr=proc.stderr, stdout=proc.stdout)
    return result


def status_in(stderr: str) -> dict:
    lines = [line for line in stderr.splitlines() if line.startswith("@@STATUS@@ ")]
    assert lines, stderr[-3000:]
    return json.loads(lines[-1][len("@@STATUS@@ "):])


def auth_headers(server):
    return [r.authorization for r in server.requests if r.path.startswith("/v1")]


def lines_with(text: str, needle: str) -> list:
    return [line for line in text.splitlines() if needle in line]


# --- wrapt cannot be imported when MetaGPT's module loads -----------------------------------------------------

STRICT_IMPORT = """
try:
    import metagpt.provider.open_llm_api
    print("IMPORTED")
except Exception as exc:
    print("ERROR", type(exc).__name__ + ":", exc)
"""


WRAPT_FAULTS = {  # what a wrapt/__init__.py put first on PYTHONPATH raises
    "missing": "raise ModuleNotFoundError(\"No module named 'wrapt'\", name='wrapt')\n",
    "broken": 'raise ImportError("wrapt/_wrappers.so: undefined symbol: PyFoo (test fixture)")\n',
}


def wrapt_fault(root: Path, kind: str) -> Path:
    (root / "wrapt").mkdir(parents=True)
    (root / "wrapt" / "__init__.py").write_text(WRAPT_FAULTS[kind])
    return root


@pytest.fixture
def broken_wrapt(tmp_path) -> Path:
    """A directory to put first on PYTHONPATH: its ``wrapt`` package raises ImportError on import."""
    return wrapt_fault(tmp_path / "broken-wrapt", "broken")


def test_without_wrapt_metagpt_still_works_and_a_warning_says_it_is_not_patched(vllm_server, tmp_path, user_home):
    root = wrapt_fault(tmp_path / "no-wrapt", "missing")
    result = ask(user_home, prelude="import metagpt.provider.open_llm_api\n" + STATUS_JSON, forked=True,
                 PYTHONPATH=str(root))
    # MetaGPT imported and ran its request: upstream behaviour, not a crash.
    assert (result["ok"], result["error"], result["status"]) == (False, "AuthenticationError", 401)
    assert auth_headers(vllm_server) == ["Bearer sk-xxx"]
    warnings = lines_with(result["stderr"], "metagpt-vllm-fix failed")
    assert len(warnings) == 1, result["stderr"][-3000:]
    assert "wrapt" in warnings[0] and "No module named 'wrapt'" in warnings[0] or "not installed" in warnings[0]
    assert "NOT patched" in warnings[0]
    assert status_in(result["stderr"])["code"] == "wrapt-missing"
    assert "Traceback" not in result["stderr"]


@pytest.mark.parametrize("kind", WRAPT_FAULTS)
def test_without_wrapt_strict_mode_is_an_import_error_naming_wrapt(tmp_path, kind):
    root = wrapt_fault(tmp_path / "wrapt-fault", kind)
    proc = run_python(STRICT_IMPORT, cwd=tmp_path, forked=True, PYTHONPATH=str(root), METAGPT_VLLM_FIX="strict")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERROR ImportError:") and "wrapt" in proc.stdout, proc.stdout


WRAPT_WARNING = "import metagpt.provider.open_llm_api"


def test_broken_wrapt_warning_quotes_wrapts_own_error(tmp_path, broken_wrapt):
    proc = run_python(WRAPT_WARNING, cwd=tmp_path, forked=True, PYTHONPATH=str(broken_wrapt))
    assert proc.returncode == 0, proc.stderr
    (warning,) = lines_with(proc.stderr, "metagpt-vllm-fix failed")
    assert "undefined symbol: PyFoo" in warning, warning
    assert "pip install wrapt)" not in warning


def test_wrapt_warning_says_not_patched_once(tmp_path):
    root = wrapt_fault(tmp_path / "no-wrapt", "missing")
    proc = run_python(WRAPT_WARNING, cwd=tmp_path, forked=True, PYTHONPATH=str(root))
    (warning,) = lines_with(proc.stderr, "metagpt-vllm-fix failed")
    assert warning.count("NOT patched") == 1, warning


def test_broken_wrapt_strict_error_names_the_plugin_and_the_switch(tmp_path, broken_wrapt):
    proc = run_python(STRICT_IMPORT, cwd=tmp_path, forked=True, PYTHONPATH=str(broken_wrapt), METAGPT_VLLM_FIX="strict")
    assert proc.stdout.startswith("ERROR ImportError:"), proc.stdout
    assert "metagpt-vllm-fix" in proc.stdout and "METAGPT_VLLM_FIX=strict" in proc.stdout
    assert "undefined symbol: PyFoo" in proc.stdout


# --- a 0.7-versioned metagpt whose OpenLLM has another shape --------------------------------------------------

PARENT = """
import tenacity

class OpenAILLM:
    def __init__(self, config=None):
        self.config = config
    def _make_client_kwargs(self):
        return {"api_key": "configured", "base_url": "http://127.0.0.1:9/v1"}
    def _get_proxy_params(self):
        return {}
    def _init_client(self):
        self.aclient = None
    def _cons_kwargs(self, messages, timeout=3, **extra_kwargs):
        return {"messages": messages, "max_tokens": 4096, **extra_kwargs}
    async def _achat_completion_stream(self, messages, timeout=3):
        yield ""
    @tenacity.retry(stop=tenacity.stop_after_attempt(6))
    async def acompletion_text(self, messages, stream=False, timeout=3):
        return ""
    async def aask(self, msg, system_msgs=None, format_msgs=None, images=None, timeout=3, stream=True):
        return await self.acompletion_text([msg], stream=stream, timeout=timeout)
"""
UPSTREAM_OPENLLM = """
class OpenLLM(OpenAILLM):
    def _make_client_kwargs(self):
        return dict(api_key="sk-xxx", base_url="http://127.0.0.1:9/v1")
    def _calc_usage(self, messages, rsp):
        return None
"""

SHAPES = {  # name -> (open_llm_api.py, what the reason must say)
    "OpenLLM-missing": (PARENT, "has no class OpenLLM"),
    "OpenLLM-not-a-class": (PARENT + "\ndef OpenLLM(config):\n    return None\n", "has no class OpenLLM"),
    "method-missing": (PARENT + "\nclass OpenLLM(OpenAILLM):\n    pass\n", "does not define _make_client_kwargs"),
    "other-signature": (PARENT + "\nclass OpenLLM(OpenAILLM):\n    def _make_client_kwargs(self, proxy):\n"
                        "        return {}\n", "has signature (self, proxy), expected (self)"),
    "method-is-a-property": (PARENT + "\nclass OpenLLM(OpenAILLM):\n    _make_client_kwargs = property(dict)\n",
                             "is not a plain method"),
    "parent-without-proxy-params": ("\nclass OpenAILLM:\n    def _make_client_kwargs(self):\n        return {}\n"
                                    + UPSTREAM_OPENLLM, "_get_proxy_params"),
}

# MetaGPT 0.7's OpenLLM, but a request path that no longer sends max_tokens: only that fix's gate refuses.
WITHOUT_MAX_TOKENS = PARENT.replace('"max_tokens": 4096, ', "") + UPSTREAM_OPENLLM


def fake_metagpt(root: Path, open_llm_api: str, version: str = "0.7.7") -> Path:
    """A minimal importable ``metagpt`` with a dist-info that says ``version``; returns the PYTHONPATH entry."""
    (root / "metagpt" / "provider").mkdir(parents=True)
    (root / "metagpt" / "__init__.py").write_text("")
    (root / "metagpt" / "provider" / "__init__.py").write_text("")
    (root / "metagpt" / "provider" / "open_llm_api.py").write_text(textwrap.dedent(open_llm_api))
    dist = root / f"metagpt-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: metagpt\nVersion: {version}\n")
    return root


SHAPE_PROBE = """
import json, sys
error = None
try:
    import metagpt.provider.open_llm_api as m
except Exception as exc:
    error = type(exc).__name__ + ": " + str(exc)
import metagpt_vllm_fix
s = metagpt_vllm_fix.status()
print(json.dumps({"import_error": error, "code": s.code, "active": s.active, "reason": s.reason}))
"""


def test_fake_metagpt_with_the_upstream_shape_is_patched(tmp_path):
    """Control for the shape tests below: the look-alike with 0.7's shape passes the gate, so they test shape."""
    root = fake_metagpt(tmp_path / "fake", PARENT + UPSTREAM_OPENLLM)
    proc = run_python(SHAPE_PROBE, cwd=tmp_path, forked=True, PYTHONPATH=str(root))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["code"] == "supported" and json.loads(proc.stdout)["active"] is True


@pytest.mark.parametrize("shape", SHAPES)
def test_other_shape_is_left_alone_with_a_reason(tmp_path, shape):
    source, says = SHAPES[shape]
    root = fake_metagpt(tmp_path / "fake", source)
    proc = run_python(SHAPE_PROBE, cwd=tmp_path, forked=True, PYTHONPATH=str(root))
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["import_error"] is None  # MetaGPT's module still imports
    assert (status["code"], status["active"]) == ("shape-changed", False)
    assert says in status["reason"] and "0.7.7" in status["reason"]
    assert lines_with(proc.stderr, "not patching MetaGPT's open_llm: ") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("shape", SHAPES)
def test_other_shape_in_strict_mode_refuses_at_import(tmp_path, shape):
    source, says = SHAPES[shape]
    root = fake_metagpt(tmp_path / "fake", source)
    proc = run_python(SHAPE_PROBE, cwd=tmp_path, forked=True, PYTHONPATH=str(root), METAGPT_VLLM_FIX="strict")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["import_error"].startswith("PatchRefused: metagpt-vllm-fix (METAGPT_VLLM_FIX=strict): MetaGPT 0.7.7")
    assert says in status["import_error"]
    assert status["code"] == "shape-changed"


FIX_PROBE = SHAPE_PROBE.replace('"reason": s.reason}',
                                '"reason": s.reason, "fixes": {f.name: f.state for f in s.fixes}}')


def test_a_fix_whose_gate_refuses_is_left_off_alone_and_the_others_apply(tmp_path):
    root = fake_metagpt(tmp_path / "fake", WITHOUT_MAX_TOKENS)
    proc = run_python(FIX_PROBE, cwd=tmp_path, forked=True, PYTHONPATH=str(root))
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert (status["import_error"], status["code"], status["active"]) == (None, "supported", True)
    assert status["fixes"] == {"api_key": "active", "max_tokens": "refused", "usage": "active",
                               "chat_template": "active", "system_role": "active", "httpx": "idle",
                               "fail_fast": "active", "tools": "active", "formats": "active"}
    (warning,) = lines_with(proc.stderr, "not applying the max_tokens fix")
    assert "no longer sends max_tokens as MetaGPT 0.7 does" in warning


def test_strict_mode_covers_every_fix(tmp_path):
    root = fake_metagpt(tmp_path / "fake", WITHOUT_MAX_TOKENS)
    proc = run_python(FIX_PROBE, cwd=tmp_path, forked=True, PYTHONPATH=str(root), METAGPT_VLLM_FIX="strict")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["import_error"] == ("PatchRefused: metagpt-vllm-fix (METAGPT_VLLM_FIX=strict): max_tokens: "
                                      "OpenAILLM._cons_kwargs no longer sends max_tokens as MetaGPT 0.7 does")
    # nothing stays half-applied behind the refusal, and status says which fix refused
    assert status["fixes"] == {"api_key": "inactive", "max_tokens": "refused", "usage": "inactive",
                               "chat_template": "inactive", "system_role": "inactive", "httpx": "inactive",
                               "fail_fast": "inactive", "tools": "inactive", "formats": "inactive"}


# --- broken or missing dist-info metadata (on a copy of the real MetaGPT 0.7.7) -------------------------------

@pytest.fixture(scope="session")
def metagpt_077_wheel_dir(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("metagpt-0.7.7-target")
    proc = install_into(sys.executable, "--no-deps", "metagpt==0.7.7", target=target, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"could not install metagpt==0.7.7 into a target dir (PyPI reachable?):\n{proc.stderr[-2000:]}")
    return target


DAMAGE = {  # name -> (what to do to metagpt-0.7.7.dist-info/METADATA, what the reason must say)
    "METADATA-missing": (None, "has no version"),
    "no-Version-field": (b"Metadata-Version: 2.1\nName: metagpt\n", "has no version"),
    "invalid-version": (b"Metadata-Version: 2.1\nName: metagpt\nVersion: 0.7.seven\n", "'0.7.seven' is not a valid"),
    "not-utf8": (b"Metadata-Version: 2.1\nName: metagpt\nVersion: 0.7.7\nSummary: \xff\xfe\x00broken\n",
                 "cannot be read (UnicodeDecodeError)"),
}


def damage(dist_info: Path, name: str) -> None:
    content = DAMAGE[name][0]
    metadata = dist_info / "METADATA"
    if content is None:
        metadata.unlink()
    else:
        metadata.write_bytes(content)


@pytest.mark.parametrize("name", DAMAGE)
def test_real_metagpt_with_broken_metadata_is_recognised_by_its_code_and_patched(
        name, metagpt_077_wheel_dir, tmp_path, vllm_server, user_home):
    """Without a readable version the gate looks at the code: MetaGPT 0.7's OpenLLM with 'sk-xxx' is patched."""
    copy = tmp_path / "metagpt-copy"
    shutil.copytree(metagpt_077_wheel_dir, copy)
    damage(copy / "metagpt-0.7.7.dist-info", name)
    result = ask(user_home, prelude="import metagpt.provider.open_llm_api\n" + STATUS_JSON, forked=True,
                 PYTHONPATH=str(copy))
    status = status_in(result["stderr"])
    assert (status["code"], status["active"]) == ("supported", True), status
    assert result["ok"] is True, result
    assert auth_headers(vllm_server) == [f"Bearer {SEED_KEY}"]
    assert "Traceback" not in result["stderr"] and not lines_with(result["stderr"], "not patching")


LOOKALIKE = PARENT + """
class OpenLLM(OpenAILLM):
    def _make_client_kwargs(self):
        return dict(api_key=self.config.api_key, base_url="http://127.0.0.1:9/v1")
"""


@pytest.mark.parametrize("name", DAMAGE)
def test_lookalike_with_broken_metadata_is_left_alone_with_a_reason(name, tmp_path):
    """A 0.7-shaped OpenLLM without the hard-coded key and without readable metadata: not ours to patch."""
    root = fake_metagpt(tmp_path / "fake", LOOKALIKE)
    damage(root / "metagpt-0.7.7.dist-info", name)
    proc = run_python(SHAPE_PROBE, cwd=tmp_path, forked=True, PYTHONPATH=str(root))
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["import_error"] is None
    assert (status["code"], status["active"]) == ("metadata-broken", False)
    assert DAMAGE[name][1] in status["reason"]
    warnings = lines_with(proc.stderr, "not patching MetaGPT's open_llm: ")
    assert len(warnings) == 1 and status["reason"] in warnings[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_refusal_is_said_once(tmp_path):
    source, says = SHAPES["other-signature"]
    root = fake_metagpt(tmp_path / "fake", source)
    proc = run_python("import metagpt.provider.open_llm_api; import metagpt_vllm_fix; metagpt_vllm_fix.apply()",
                      cwd=tmp_path, forked=True, PYTHONPATH=str(root))
    assert proc.returncode == 0, proc.stderr
    warnings = lines_with(proc.stderr, "not patching MetaGPT's open_llm")
    assert len(warnings) == 1 and says in warnings[0], proc.stderr


# --- interpreter options -------------------------------------------------------------------------------------

def _site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def test_python_S_runs_no_hook_and_explicit_import_still_patches(vllm_server, user_home):
    """-S: no site, no .pth, so no hook; with site-packages put on PYTHONPATH by hand MetaGPT runs unpatched."""
    package_root = str(Path(metagpt_vllm_fix.__file__).resolve().parent.parent)  # editable install: the checkout
    path = os.pathsep.join([_site_packages(), package_root])
    probe = "print('@@BOOT@@', '_metagpt_vllm_fix_boot' in sys.modules, file=sys.stderr)"
    plain = ask(user_home, args=("-S",), prelude=probe, PYTHONPATH=path)
    assert "@@BOOT@@ False" in plain["stderr"]
    assert (plain["ok"], plain["status"]) == (False, 401)
    explicit = ask(user_home, args=("-S",), prelude="import metagpt_vllm_fix", PYTHONPATH=path)
    assert explicit["ok"] is True, explicit
    assert auth_headers(vllm_server) == ["Bearer sk-xxx", f"Bearer {SEED_KEY}"]


def test_python_I_isolated_mode_still_activates_and_still_obeys_the_switch(vllm_server, user_home):
    """-I ignores PYTHON* variables and the user site, not site-packages' .pth, nor METAGPT_VLLM_FIX."""
    on = ask(user_home, args=("-I",))
    off = ask(user_home, args=("-I",), METAGPT_VLLM_FIX="0")
    assert on["ok"] is True, on
    assert (off["ok"], off["status"]) == (False, 401)
    assert auth_headers(vllm_server) == [f"Bearer {SEED_KEY}", "Bearer sk-xxx"]


def test_unknown_switch_value_counts_as_on_with_one_short_warning(vllm_server, user_home):
    value = "maybe-" + "Z" * 60 + "-tail"
    result = ask(user_home, prelude="import metagpt.provider.open_llm_api\n" + STATUS_JSON, forked=True,
                 METAGPT_VLLM_FIX=value)
    assert result["ok"] is True, result
    assert auth_headers(vllm_server) == [f"Bearer {SEED_KEY}"]
    assert status_in(result["stderr"])["switch"] == "unknown"
    mentions = lines_with(result["stderr"], "METAGPT_VLLM_FIX")
    assert len(mentions) == 1, mentions
    assert repr(value[:20]) in mentions[0] and value[:21] not in mentions[0]
    assert "treating it as 1" in mentions[0]


# --- concurrency and repetition ------------------------------------------------------------------------------

THREADS = """
import importlib, json, sys, threading
import _metagpt_vllm_fix_boot as boot
barrier = threading.Barrier(16)
errors = []

def import_metagpt():
    barrier.wait()
    try:
        importlib.import_module("metagpt.provider.open_llm_api")
    except Exception as exc:
        errors.append(repr(exc))

def apply_plugin():
    barrier.wait()
    try:
        import metagpt_vllm_fix
        metagpt_vllm_fix.apply()
    except Exception as exc:
        errors.append(repr(exc))

targets = [import_metagpt] * 16 if {mixed} is False else [import_metagpt, apply_plugin] * 8
threads = [threading.Thread(target=t) for t in targets]
for t in threads:
    t.start()
for t in threads:
    t.join()
from metagpt.provider.open_llm_api import OpenLLM
from metagpt_vllm_fix import wrapping
from metagpt_vllm_fix.fixes import api_key
chain = list(wrapping.chain(OpenLLM.__dict__["_make_client_kwargs"]))
print(json.dumps({{"errors": errors, "ours": sum(map(api_key.is_ours, chain)), "chain": len(chain),
                  "finders": sum(isinstance(f, boot.Finder) for f in sys.meta_path)}}))
"""


@pytest.mark.parametrize("mixed", [False, True], ids=["16-imports", "8-imports-8-apply"])
def test_metagpt_imported_from_16_threads_at_once_is_patched_exactly_once(tmp_path, mixed):
    proc = run_python(THREADS.format(mixed=mixed), cwd=tmp_path, forked=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"errors": [], "ours": 1, "chain": 2, "finders": 1}
    assert not lines_with(proc.stderr, "not patching")


CYCLES = """
import gc, inspect, json, sys, tracemalloc
import metagpt.provider.open_llm_api as mod
import metagpt_vllm_fix
from metagpt_vllm_fix import wrapping
from metagpt_vllm_fix.fixes import api_key

cls = mod.OpenLLM
original = inspect.unwrap(cls.__dict__["_make_client_kwargs"])

def state():
    gc.collect()
    return {"meta_path": len(sys.meta_path),
            "ours": sum(map(api_key.is_ours, wrapping.chain(cls.__dict__["_make_client_kwargs"]))),
            "objects": len(gc.get_objects()), "memory": tracemalloc.get_traced_memory()[0]}

# Trace from before the warm-up: objects made before tracing and replaced by new ones during it (the same number of
# them: caches of importlib.metadata, inspect, wrapt's bound wrappers) would count as growth, about 90 KiB for the
# first thousand cycles with seven fixes; traced from the start, the next thousand grow a few KiB (measured). A leak
# per cycle grows every thousand alike.
tracemalloc.start()
for _ in range(200):
    metagpt_vllm_fix.remove(); metagpt_vllm_fix.apply()
before = state()
for _ in range(1000):
    metagpt_vllm_fix.remove(); metagpt_vllm_fix.apply()
after = state()
metagpt_vllm_fix.remove()
print(json.dumps({"before": before, "after": after, "original_back": cls.__dict__["_make_client_kwargs"] is original,
                  "meta_path_after_remove": len(sys.meta_path)}))
"""


def test_1000_apply_remove_cycles_restore_the_original_and_do_not_grow(tmp_path):
    proc = run_python(CYCLES, cwd=tmp_path, forked=True)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    before, after = r["before"], r["after"]
    assert r["original_back"] is True
    assert (before["ours"], after["ours"]) == (1, 1)
    assert before["meta_path"] == after["meta_path"] == r["meta_path_after_remove"] + 1
    # Structural, not timing: a leaked wrapper or finder per cycle would add >= 1000 objects / tens of KiB.
    assert abs(after["objects"] - before["objects"]) < 100, r
    assert after["memory"] - before["memory"] < 64 * 1024, r


def test_reloading_metagpt_module_keeps_it_patched(tmp_path):
    proc = run_python("""
        import importlib, json
        import metagpt.provider.open_llm_api as mod
        from metagpt.configs.llm_config import LLMType
        from metagpt.provider.llm_provider_registry import LLM_REGISTRY
        from metagpt_vllm_fix.fixes import api_key
        mod = importlib.reload(mod)
        print(json.dumps({"patched": api_key.is_patched(mod.OpenLLM),
                          "registered": LLM_REGISTRY.get_provider(LLMType.OPEN_LLM) is mod.OpenLLM}))
    """, cwd=tmp_path, forked=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"patched": True, "registered": True}


def test_remove_after_a_reload_unwraps_the_classes_of_before_it_too(tmp_path):
    """importlib.reload() puts new classes in the module; instances of the old ones (IPython's autoreload) must go
    back to MetaGPT as shipped as well once remove() is called."""
    proc = run_python("""
        import importlib, json
        import metagpt.provider.open_llm_api as mod
        import metagpt_vllm_fix
        from metagpt_vllm_fix import wrapping

        def wrappers(cls):
            return sorted(name for name in ("_make_client_kwargs", "_init_client", "_calc_usage")
                          if any(hasattr(node, "_self_wrapper") for node in wrapping.chain(vars(cls).get(name))))

        old = mod.OpenLLM
        new = importlib.reload(mod).OpenLLM
        before = [wrappers(old), wrappers(new)]
        metagpt_vllm_fix.remove()
        print(json.dumps({"before": before, "after": [wrappers(old), wrappers(new)], "new": new is not old,
                          "state": metagpt_vllm_fix.status().state}))
    """, cwd=tmp_path, forked=True)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["new"] and r["before"] == [["_calc_usage", "_init_client", "_make_client_kwargs"]] * 2
    assert (r["after"], r["state"]) == ([[], []], "inactive")


RACE_MODULE = """
import sys
_gate = sys.modules["__main__"].GATE
_gate["started"].set()      # the module is in sys.modules now, without its classes
_gate["go"].wait(30)
""" + PARENT + UPSTREAM_OPENLLM

RACE = """
import importlib, json, sys, threading
GATE = {"started": threading.Event(), "go": threading.Event()}
errors = []

def importer():
    try:
        importlib.import_module("metagpt.provider.open_llm_api")
    except Exception as exc:
        errors.append("import: %s: %s" % (type(exc).__name__, exc))

thread = threading.Thread(target=importer)
thread.start()
GATE["started"].wait(30)
try:  # while the other thread is still executing MetaGPT's module
    import metagpt_vllm_fix
    metagpt_vllm_fix.apply()
except Exception as exc:
    errors.append("apply: %s: %s" % (type(exc).__name__, exc))
GATE["go"].set()
thread.join()
import metagpt_vllm_fix
from metagpt_vllm_fix import wrapping
from metagpt_vllm_fix.fixes import api_key
cls = sys.modules["metagpt.provider.open_llm_api"].OpenLLM
chain = wrapping.chain(cls.__dict__["_make_client_kwargs"])
print(json.dumps({"errors": errors, "ours": sum(map(api_key.is_ours, chain)),
                  "code": metagpt_vllm_fix.status().code}))
"""


@pytest.mark.parametrize("switch", ["1", "strict"])
def test_apply_while_another_thread_imports_metagpt_waits_for_the_real_module(tmp_path, switch):
    root = fake_metagpt(tmp_path / "fake", RACE_MODULE)
    proc = run_python(RACE, cwd=tmp_path, forked=True, PYTHONPATH=str(root), METAGPT_VLLM_FIX=switch)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"errors": [], "ours": 1, "code": "supported"}
    assert not lines_with(proc.stderr, "not patching"), proc.stderr


# --- another wrapt wrapper on the same method ------------------------------------------------------------------

THEIRS = """
import asyncio, json, sys, wrapt

def their_wrapper(wrapped, instance, args, kwargs):
    return {**wrapped(*args, **kwargs), "default_headers": {"X-Theirs": "1"}}

# Theirs is applied by wrapt's own post-import hook, registered before MetaGPT is imported.
wrapt.register_post_import_hook(
    lambda module: wrapt.wrap_function_wrapper(module, "OpenLLM._make_client_kwargs", their_wrapper),
    "metagpt.provider.open_llm_api")
from metagpt.llm import LLM
from metagpt.provider.open_llm_api import OpenLLM
import metagpt_vllm_fix
from metagpt_vllm_fix import wrapping
from metagpt_vllm_fix.fixes import api_key

def chain():
    return ["ours" if api_key.is_ours(n) else getattr(getattr(n, "_self_wrapper", None), "__name__", "original")
            for n in wrapping.chain(OpenLLM.__dict__["_make_client_kwargs"])]

out = {"chain": chain()}
llm = LLM()
out["key"], out["header"] = llm.aclient.api_key == %(key)r, llm.aclient.default_headers.get("X-Theirs")
out["answer"] = asyncio.run(llm.aask("hello from the test", stream=False))
metagpt_vllm_fix.remove()
out["chain_after_remove"] = chain()
llm = LLM()
out["key_after_remove"], out["header_after_remove"] = llm.aclient.api_key, llm.aclient.default_headers.get("X-Theirs")
print(json.dumps(out))
"""


def test_their_wrapt_wrapper_from_a_post_import_hook_composes_with_ours(vllm_server, user_home):
    proc = run_python(THEIRS % {"key": SEED_KEY}, home=user_home, forked=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["chain"] == ["their_wrapper", "ours", "original"]
    assert (out["key"], out["header"]) == (True, "1")
    assert "hello from the test" in out["answer"]
    assert auth_headers(vllm_server) == [f"Bearer {SEED_KEY}"]
    assert out["chain_after_remove"] == ["their_wrapper", "original"]
    assert (out["key_after_remove"], out["header_after_remove"]) == ("sk-xxx", "1")


# --- api_key with whitespace or line breaks, end to end through config2.yaml -------------------------------------

@pytest.mark.parametrize("yaml_key", ['"  token-abc123  "', '"token-abc123\\n"', '"\\ttoken-abc123\\r\\n"'],
                         ids=["spaces", "trailing-newline", "tab-and-crlf"])
def test_key_with_surrounding_whitespace_arrives_trimmed_with_a_warning(vllm_server, tmp_path, yaml_key):
    home = tmp_path / "home"
    write_config(home, vllm_server.base_url, api_key=yaml_key)
    result = ask(home, forked=True)
    assert result["ok"] is True, result
    assert auth_headers(vllm_server) == [f"Bearer {SEED_KEY}"]
    warnings = lines_with(result["stderr"], "has whitespace around it")
    assert warnings == ["llm.api_key (tok...123) has whitespace around it; sending it trimmed. "
                        "Check your config2.yaml."]
    assert SEED_KEY not in result["stderr"] + result["stdout"]


KEY_ERROR = """
import asyncio, json
from metagpt.llm import LLM
try:
    asyncio.run(LLM().aask("hello from the test", stream=False))
    print(json.dumps({"ok": True}))
except Exception as exc:
    print(json.dumps({"ok": False, "error": type(exc).__name__, "message": str(exc)}))
"""


BAD_KEYS = pytest.mark.parametrize("yaml_key, secret_parts", [
    ('"token-abc123\\r\\nX-Injected: 1"', ["token-abc", "X-Injected"]),
    ('"token-abc123\\nX-Injected: 1"', ["token-abc", "X-Injected"]),
    ('"token-abc123\\u0000more-secret-stuff"', ["token-abc", "more-secret"]),
    ('"t\u00f8ken-abc123-secret"', ["t\u00f8ken", "secret"]),
], ids=["crlf-header-injection", "lf-header-injection", "nul-inside", "non-ascii"])


@BAD_KEYS
def test_key_a_header_cannot_carry_is_not_sent_and_not_echoed(vllm_server, tmp_path, yaml_key, secret_parts):
    """A key-checking vLLM: MetaGPT's own 'sk-xxx' goes, so 401 as shipped; no header injected, the key never shown."""
    home = tmp_path / "home"
    write_config(home, vllm_server.base_url, api_key=yaml_key)
    proc = run_python(KEY_ERROR, home=home, forked=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["ok"], out["error"]) == (False, "AuthenticationError")
    assert {r.authorization for r in vllm_server.requests} == {"Bearer sk-xxx"}
    assert proc.stderr.count("which an HTTP Authorization header cannot carry") == 1, proc.stderr
    for part in secret_parts:
        assert part not in proc.stdout + proc.stderr


@BAD_KEYS
def test_key_a_header_cannot_carry_still_answers_from_a_server_without_a_key(tmp_path, yaml_key, secret_parts):
    """A vLLM started without --api-key answers MetaGPT 0.7 as shipped whatever the key: it must keep answering."""
    with VLLMServer(max_model_len=8192) as server:
        home = tmp_path / "home"
        write_config(home, server.base_url, api_key=yaml_key)
        result = ask_metagpt(home)
        assert {r.authorization for r in server.requests} == {"Bearer sk-xxx"}
    assert result["ok"], result
    assert "cannot carry" in result["stderr"] and "sk-xxx" in result["stderr"]
    for part in secret_parts:
        assert part not in result["stdout"] + result["stderr"]


def test_key_a_header_cannot_carry_is_refused_before_any_request_in_strict_mode(vllm_server, tmp_path):
    home = tmp_path / "home"
    write_config(home, vllm_server.base_url, api_key='"token-abc123\\r\\nX-Injected: 1"')
    proc = run_python(KEY_ERROR, home=home, forked=True, METAGPT_VLLM_FIX="strict")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["ok"], out["error"]) == (False, "InvalidApiKey")
    assert "contains a line break" in out["message"] and "config2.yaml" in out["message"]
    assert vllm_server.requests == []
    assert "X-Injected" not in proc.stdout + proc.stderr
