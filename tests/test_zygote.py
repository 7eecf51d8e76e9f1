"""The zygote (tests/zygote.py): a child is the run a fresh interpreter would be, or the zygote refuses the run.

Each test runs in the suite's own zygote, the one the moved runs use. Where a child must match a fresh interpreter
(what start-up leaves in sys.modules, what MetaGPT's import shows on stderr), both are run and compared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import zygote as zygote_module
from conftest import clean_env, run_module, run_python, run_script, zygote

pytestmark = pytest.mark.skipif(not zygote_module.enabled(), reason="ZYGOTE=0: the suite runs no zygote")

SEEN = """
import json, os, sys
main = sorted(k for k in vars(sys.modules["__main__"]) if k.startswith("__"))
print(json.dumps({"cwd": os.getcwd(), "argv": sys.argv, "path0": sys.path[0], "env": dict(os.environ),
                  "stdin": sys.stdin.read(), "main": main}))
print("to stderr", file=sys.stderr)
"""

# What start-up leaves of the plugin and MetaGPT (read before anything else is imported), and whether importing
# MetaGPT's module patched it (a wrapt wrapper has __wrapped__; importing metagpt_vllm_fix would patch by itself).
AT_START = """
import json, sys
mine = sorted(m for m in sys.modules if m.split(".")[0] in ("metagpt", "metagpt_vllm_fix", "_metagpt_vllm_fix_boot"))
finders = [type(f).__name__ for f in sys.meta_path if getattr(f, "_metagpt_vllm_fix_finder", False)]
import metagpt.provider.open_llm_api as m
patched = hasattr(m.OpenLLM.__dict__["_make_client_kwargs"], "__wrapped__")
plugin = "metagpt_vllm_fix" in sys.modules
print(json.dumps({"at_start": mine, "finders": finders, "patched": patched, "plugin": plugin}))
"""


def metagpt_root(tmp_path) -> str:
    """A project root with a config2.yaml, which ``import metagpt.llm`` needs."""
    root = tmp_path / "root"
    (root / "config").mkdir(parents=True)
    (root / "config" / "config2.yaml").write_text(
        "llm:\n  api_type: open_llm\n  base_url: 'http://127.0.0.1:9/v1'\n  model: m\n  api_key: k\n")
    return str(root)


def test_a_child_has_the_runs_cwd_argv_environment_and_streams(tmp_path):
    env = clean_env(tmp_path, ONLY_IN_THIS_RUN="yes")
    proc = zygote().run("code", textwrap.dedent(SEEN), ("one", "two"), env=env, cwd=str(tmp_path), timeout=60)
    fresh = subprocess.run([sys.executable, "-c", textwrap.dedent(SEEN), "one", "two"], capture_output=True,
                           text=True, env=env, cwd=str(tmp_path), timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    seen, seen_fresh = json.loads(proc.stdout), json.loads(fresh.stdout)
    assert (seen["cwd"], seen["argv"], seen["path0"]) == (str(tmp_path), ["-c", "one", "two"], "")
    writes = zygote().info["env_writes"]  # what the preloaded imports set (sklearn's KMP_* defaults), as they would
    assert seen["env"] == {**writes, **env}
    assert seen["stdin"] == "" and proc.stderr == "to stderr\n"
    assert seen["main"] == seen_fresh["main"]


def test_a_module_and_a_script_get_the_argv_and_path_the_interpreter_gives_them(tmp_path):
    (tmp_path / "argv_probe.py").write_text("import json, sys\nprint(json.dumps([sys.argv, sys.path[0], __name__]))\n")
    env = clean_env(tmp_path)
    module = run_module("argv_probe", "x", env=env, cwd=tmp_path)
    script = run_script("metagpt-vllm-fix", "--help", env=env, cwd=tmp_path)
    fresh = subprocess.run([sys.executable, "-m", "argv_probe", "x"], capture_output=True, text=True, env=env,
                           cwd=str(tmp_path), timeout=60)
    assert module.stdout == fresh.stdout and json.loads(module.stdout)[0] == [str(tmp_path / "argv_probe.py"), "x"]
    assert script.returncode == 0 and "doctor" in script.stdout, script.stderr


@pytest.mark.parametrize("code, returncode, stderr", [
    ("raise SystemExit(3)", 3, ""),
    ("import sys; sys.exit('bye')", 1, "bye\n"),
    ("import os; os._exit(7)", 7, ""),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM, ""),
    ("print('out')", 0, ""),
])
def test_exit_statuses_are_the_interpreters(tmp_path, code, returncode, stderr):
    proc = run_python(code, cwd=tmp_path, forked=True)
    fresh = run_python(code, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (returncode, stderr) == (fresh.returncode, fresh.stderr)
    assert proc.stdout == fresh.stdout


def test_an_uncaught_exception_prints_the_traceback_a_fresh_interpreter_prints(tmp_path):
    code = "def f():\n    raise ValueError('no')\nf()\n"
    proc, fresh = run_python(code, cwd=tmp_path, forked=True), run_python(code, cwd=tmp_path)
    assert proc.returncode == fresh.returncode == 1
    assert proc.stderr == fresh.stderr
    assert proc.stderr.startswith('Traceback (most recent call last):\n  File "<string>", line 3, in <module>\n')


def test_atexit_handlers_and_non_daemon_threads_run_before_the_child_ends(tmp_path):
    code = """
        import atexit, threading, time
        atexit.register(lambda: print("atexit"))
        threading.Thread(target=lambda: (time.sleep(0.5), print("thread"))).start()
    """
    proc = run_python(code, cwd=tmp_path, forked=True)
    assert (proc.returncode, proc.stdout) == (0, "thread\natexit\n")


def test_a_run_past_its_timeout_is_killed(tmp_path):
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as raised:
        run_python(f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); print('before', "
                   "flush=True); time.sleep(120)", cwd=tmp_path, forked=True, timeout=2)
    assert time.monotonic() - started < 60
    assert raised.value.output == "before\n"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # killed and reaped


@pytest.mark.parametrize("switch", ["", "0"], ids=["automatic", "off"])
def test_the_pth_line_runs_in_the_child_as_at_start_up(tmp_path, switch):
    env = {"METAGPT_PROJECT_ROOT": metagpt_root(tmp_path), **({"METAGPT_VLLM_FIX": switch} if switch else {})}
    child = run_python(AT_START, cwd=tmp_path, forked=True, **env)
    fresh = run_python(AT_START, cwd=tmp_path, **env)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == json.loads(fresh.stdout)
    if switch == "0":
        assert json.loads(child.stdout) == {"at_start": [], "finders": [], "patched": False, "plugin": False}
    else:
        assert json.loads(child.stdout) == {"at_start": ["_metagpt_vllm_fix_boot"], "finders": ["Finder"],
                                            "patched": True, "plugin": True}


def test_nothing_of_metagpt_or_the_plugin_is_preloaded_and_metagpts_import_says_what_it_says_fresh(tmp_path):
    info = zygote().start()
    assert info["preloaded"] > 1000  # MetaGPT's dependencies, imported once
    code = "import metagpt.llm"
    env = {"METAGPT_PROJECT_ROOT": metagpt_root(tmp_path)}
    child, fresh = run_python(code, cwd=tmp_path, forked=True, **env), run_python(code, cwd=tmp_path, **env)
    assert child.returncode == fresh.returncode == 0, child.stderr

    def warnings_shown(stderr: str) -> list[str]:
        return [line for line in stderr.splitlines() if "Warning:" in line]

    assert warnings_shown(child.stderr) == warnings_shown(fresh.stderr) != []  # google's FutureWarnings, today


@pytest.mark.parametrize("variable, value", [
    ("PYTHONPATH", "relative-dir"),  # only absolute directories that hold nothing the zygote imported
    ("PYTHONIOENCODING", "latin-1"),
    ("LC_ALL", "C"),
    ("NUMPY_MADVISE_HUGEPAGE", "0"),  # numpy reads it at import
])
def test_a_run_whose_environment_the_preload_or_start_up_read_is_refused(tmp_path, variable, value):
    """(conftest gives a run whose PYTHONPATH the main zygote refuses a zygote started with that PYTHONPATH.)"""
    with pytest.raises(zygote_module.ZygoteRefused, match=variable):
        zygote().run("code", "pass", env=clean_env(**{variable: value}), cwd=str(tmp_path), timeout=60)


def test_a_run_may_carry_what_the_preload_set_in_the_environment(tmp_path):
    """sklearn sets KMP_DUPLICATE_LIB_OK=True (setdefault) at import: a process that imported MetaGPT has it, and a
    fresh interpreter given it reads what the zygote's import read after setting it. A zygote of its own, started
    without the KMP_* variables: this worker's may have started after a test imported MetaGPT in the worker itself,
    and then inherited the value (setdefault writes nothing; seen once in a fresh clone's make test)."""
    own = zygote_module.Zygote({k: v for k, v in clean_env().items() if not k.startswith("KMP_")})
    try:
        written = own.start()["env_writes"]
        assert written.get("KMP_DUPLICATE_LIB_OK") == "True", written
        carried = own.run("code", "import os; print(os.environ['KMP_DUPLICATE_LIB_OK'])", env=clean_env(**written),
                          cwd=str(tmp_path), timeout=60)
        assert carried.stdout == "True\n", carried
        with pytest.raises(zygote_module.ZygoteRefused, match="KMP_DUPLICATE_LIB_OK"):
            own.run("code", "pass", env=clean_env(KMP_DUPLICATE_LIB_OK="False"), cwd=str(tmp_path), timeout=60)
    finally:
        own.close()


PATH_PROBE = """
import json, sys, wrapt
print(json.dumps({"path": sys.path, "wrapt": wrapt.__file__}))
"""


def test_a_pythonpath_of_modules_the_zygote_never_imported_goes_first_on_sys_path_as_at_start_up(tmp_path):
    (tmp_path / "first" / "wrapt").mkdir(parents=True)
    (tmp_path / "first" / "wrapt" / "__init__.py").write_text("")
    env = {"PYTHONPATH": str(tmp_path / "first")}
    child, fresh = run_python(PATH_PROBE, cwd=tmp_path, forked=True, **env), run_python(PATH_PROBE, cwd=tmp_path, **env)
    assert child.returncode == 0, child.stderr
    seen, seen_fresh = json.loads(child.stdout), json.loads(fresh.stdout)
    # What the preload's imports added (GitPython's git/ext/gitdb, a directory that does not exist here) a fresh
    # interpreter adds when MetaGPT imports git: the same path once MetaGPT is imported, nothing found there.
    added = zygote().info["path_added"]
    assert not [p for p in added if os.path.exists(p)]
    assert [p for p in seen["path"] if p not in added] == seen_fresh["path"]
    assert seen["wrapt"] == seen_fresh["wrapt"]
    assert json.loads(child.stdout)["wrapt"] == str(tmp_path / "first" / "wrapt" / "__init__.py")


@pytest.mark.parametrize("layout", [
    {"openai/__init__.py": ""},  # a package the preload imported
    {"typing_extensions.py": ""},  # a module
    {"x-1.0.dist-info/top_level.txt": "openai\n"},  # metadata that a fresh interpreter would find first
    {"sitecustomize.py": ""},  # start-up imports it
])
def test_a_pythonpath_holding_what_the_zygote_imported_already_is_refused(tmp_path, layout):
    for name, text in layout.items():
        (tmp_path / "first" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "first" / name).write_text(text)
    zygote().start()
    assert "typing_extensions" in zygote().info["top_level"] and "openai" in zygote().info["top_level"]
    with pytest.raises(zygote_module.ZygoteRefused, match="PYTHONPATH="):
        zygote().check(clean_env(PYTHONPATH=str(tmp_path / "first")))


def test_another_interpreter_or_interpreter_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="fresh interpreter"):
        run_python("pass", cwd=tmp_path, forked=True, args=("-I",))


def test_runs_at_the_same_time_each_get_their_own_streams(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> subprocess.CompletedProcess:
        return run_python(f"import sys, time; time.sleep(0.3); print({i}); print('e{i}', file=sys.stderr)",
                          cwd=tmp_path, forked=True)

    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = list(pool.map(one, range(8)))
    assert [(p.stdout, p.stderr) for p in procs] == [(f"{i}\n", f"e{i}\n") for i in range(8)]
