"""Package life cycle: build (wheel, sdist, wheel from sdist), install into a real MetaGPT 0.7.7 venv, use, uninstall.

The MetaGPT venv is a separate, fresh venv holding MetaGPT 0.7.7 and its pinned dependencies, built once per
session (see ``metagpt_venv`` for how) and deleted at the end. The install / use / uninstall flow runs on it for
the wheel and for an editable install of this checkout, each with pip (what most users run) and with uv (what
many others run), and each flow must leave the venv exactly as it found it: same files, same ``pip freeze``, same
start-up. Here the installer is the subject: each flow names its tool, and a uv flow fails when uv cannot be had
(it skips only when uv was refused on purpose, BOOTSTRAP_INSTALLER=pip).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import (
    ASK_SCRIPT,
    REPO,
    RESULT_MARK,
    SEED_KEY,
    UV,
    clean_env,
    imported_at_startup,
    install_into,
    new_venv,
    require_uv,
    run_python,
    venv_python,
    write_config,
)
from metagpt_vllm_fix.server import DEFAULT_MODEL, VLLMServer
from test_upstream_untouched import record_problems

UV_ENVIRONMENT_LOCK = ".lock"
PLUGIN_ROOT_FILES = {"_metagpt_vllm_fix_boot.py", "metagpt-vllm-fix.pth", "metagpt-vllm-fix.start"}


def pip(python, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=timeout, env=clean_env())


def uv_pip(python, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``uv pip ARGS`` for ``python``'s environment, as a uv user runs it (scripts/uv: the pinned uv, pip's sources)."""
    return subprocess.run([str(UV), "pip", *args, "--python", str(python)], capture_output=True, text=True,
                          timeout=timeout, env=clean_env(PYTHON=sys.executable))


def site_packages(python) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, env=clean_env())
    return Path(out.stdout.strip())


# --- building ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dists(tmp_path_factory, built_wheel) -> dict:
    """sdist (hatchling's PEP 517 build_sdist in a throwaway venv), wheel from the tree (the session's
    ``built_wheel``: the same ``pip wheel --no-deps`` of this checkout, built once for every test that needs it),
    and wheel from the sdist."""
    root = tmp_path_factory.mktemp("dists")
    hatch = root / "hatch-venv"
    proc = install_into(new_venv(hatch), "hatchling>=1.21")
    if proc.returncode != 0:
        pytest.fail(f"could not install hatchling into a throwaway venv (PyPI reachable?):\n{proc.stderr[-2000:]}")
    sdist_dir, from_sdist_dir = root / "sdist", root / "wheel-from-sdist"
    build = subprocess.run([str(venv_python(hatch)), "-c",
                            f"from hatchling.build import build_sdist; print(build_sdist({str(sdist_dir)!r}))"],
                           cwd=str(REPO), capture_output=True, text=True, env=clean_env())
    assert build.returncode == 0, build.stderr
    (sdist,) = sdist_dir.glob("metagpt_vllm_fix-*.tar.gz")
    proc = pip(sys.executable, "wheel", "-q", "--no-deps", "-w", str(from_sdist_dir), str(sdist))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sdist_wheel,) = from_sdist_dir.glob("*.whl")
    return {"sdist": sdist, "wheel": built_wheel, "wheel_from_sdist": sdist_wheel}


def test_wheel_puts_the_boot_module_and_the_pth_at_the_root(dists):
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    assert PLUGIN_ROOT_FILES <= set(names)
    assert {n for n in names if "/" not in n} == PLUGIN_ROOT_FILES  # nothing else at site-packages' top level
    assert not [n for n in names if n.startswith(("tests/", "boot/", "requirements/"))]
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        assert wheel.read("metagpt-vllm-fix.pth") == (REPO / "boot" / "metagpt-vllm-fix.pth").read_bytes()
        assert wheel.read("_metagpt_vllm_fix_boot.py") == (REPO / "boot" / "_metagpt_vllm_fix_boot.py").read_bytes()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = sorted(line.split(":", 1)[1].strip() for line in metadata.splitlines()
                      if line.startswith("Requires-Dist:") and "extra ==" not in line)
    assert requires == ["packaging>=20", "wrapt>=1.15"]  # never metagpt: its lancedb==0.4.0 pin is unresolvable


def test_wheel_carries_the_chat_templates_that_chat_template_prints(dists):
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        for name in ("llama-2", "chatml"):
            shipped = wheel.read(f"metagpt_vllm_fix/templates/{name}.jinja")
            assert shipped == (REPO / "metagpt_vllm_fix" / "templates" / f"{name}.jinja").read_bytes()


def test_sdist_holds_what_the_wheel_build_needs(dists):
    with tarfile.open(dists["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"pyproject.toml", "PKG-INFO", "LICENSE", "README.md", "boot/_metagpt_vllm_fix_boot.py",
            "boot/metagpt-vllm-fix.pth", "metagpt_vllm_fix/__init__.py", "metagpt_vllm_fix/_activation.py",
            "metagpt_vllm_fix/gate.py", "metagpt_vllm_fix/fixes/api_key.py"} <= names
    assert not [n for n in names if n.startswith((".venv", ".git/", "dist/", "build/")) or "__pycache__" in n]


def test_wheel_built_from_the_sdist_equals_the_wheel_built_from_the_tree(dists):
    with zipfile.ZipFile(dists["wheel"]) as a, zipfile.ZipFile(dists["wheel_from_sdist"]) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        differ = [n for n in a.namelist() if not n.endswith("/RECORD") and a.read(n) != b.read(n)]
    assert differ == []


# --- a fresh venv with MetaGPT 0.7.7, as a user has it --------------------------------------------------------

def _build_from_lock(venv: Path) -> None:
    """The README's recipe: the pinned lock, then ``--no-deps metagpt==0.7.7`` (60-90 s, 1.1 GB)."""
    tag = "py{}{}".format(*sys.version_info[:2])
    lock = REPO / "requirements" / f"metagpt-0.7.7-{tag}.txt"
    if not lock.is_file():
        pytest.skip(f"no lock file {lock.relative_to(REPO)} for this Python")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    for step in (["install", "-q", "-r", str(lock)], ["install", "-q", "--no-deps", "metagpt==0.7.7"]):
        proc = pip(venv_python(venv), *step, timeout=1200)
        if proc.returncode != 0:
            pytest.fail(f"building the MetaGPT 0.7.7 venv failed at `pip {' '.join(step)}`:\n{proc.stderr[-3000:]}")


def _clone_test_env_without_plugin(venv: Path) -> bool:
    """A fresh ``python -m venv`` whose site-packages are hard links to this test env's, minus every file of
    metagpt-vllm-fix (its RECORD) and their byte-code. Same distributions as a lock build, in seconds, and cheap to
    delete. (pip lists the byte-code it compiles in RECORD; uv compiles nothing, so the byte-code Python wrote on
    first import is in no RECORD, and must not be cloned either.)"""
    source = Path(sysconfig.get_paths()["purelib"])
    (plugin,) = source.glob("metagpt_vllm_fix-*.dist-info")
    listed = [source / row.split(",")[0] for row in (plugin / "RECORD").read_text().splitlines() if row]
    skip = {path.resolve() for path in listed}
    for path in listed:
        if path.suffix == ".py":
            skip.update(p.resolve() for p in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    target = site_packages(venv_python(venv))
    try:
        os.link(source / "metagpt" / "__init__.py", venv / ".link-probe")
    except OSError:
        return False  # another file system: no hard links
    os.unlink(venv / ".link-probe")
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d).resolve() != plugin.resolve()]
        (target / here.relative_to(source)).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            if (here / name).resolve() not in skip:
                os.link(here / name, target / here.relative_to(source) / name)
    return True


@pytest.fixture(scope="session")
def metagpt_venv(tmp_path_factory):
    """A separate venv holding MetaGPT 0.7.7 and its pinned dependencies, and no plugin.

    By default it is cloned from the test environment (hard links; that environment was itself built from the
    lock by scripts/bootstrap): building it from the lock takes 60-90 s and, on a disk mounted with ``discard``,
    deleting 1.1 GB takes as long again. ``LIFECYCLE_VENV=lock`` builds it from the lock instead."""
    venv = tmp_path_factory.mktemp("metagpt-venv") / "venv"
    if os.environ.get("LIFECYCLE_VENV") == "lock" or not _clone_test_env_without_plugin(venv):
        shutil.rmtree(venv, ignore_errors=True)
        _build_from_lock(venv)
    python = venv_python(venv)
    check = subprocess.run([str(python), "-c", "import importlib.metadata as m, importlib.util as u; "
                            "print(m.version('metagpt'), u.find_spec('_metagpt_vllm_fix_boot'), "
                            "u.find_spec('metagpt_vllm_fix'))"], capture_output=True, text=True, env=clean_env(),
                           cwd=str(venv))
    assert check.stdout.split() == ["0.7.7", "None", "None"], check.stdout + check.stderr
    yield python
    shutil.rmtree(venv, ignore_errors=True)


def venv_files(venv: Path) -> list:
    """Every file and directory of the venv, relative, sorted (MetaGPT's own tree included)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(venv):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), venv))
    return sorted(out)


FINGERPRINT = ("import sys; print(sorted(sys.modules)); print(sys.path); print(sys.meta_path); "
               "print(sys.path_hooks); print(sorted(sys.path_importer_cache))")


def startup(python, cwd: Path) -> dict:
    """What start-up leaves behind: modules in import order (-X importtime), and sys.modules/path/meta_path."""
    timed = subprocess.run([str(python), "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                           env=clean_env(), cwd=str(cwd), timeout=60)
    state = subprocess.run([str(python), "-c", FINGERPRINT], capture_output=True, text=True, env=clean_env(),
                           cwd=str(cwd), timeout=60)
    assert timed.returncode == 0 and state.returncode == 0, timed.stderr + state.stderr
    order = [line.split("|")[-1].rstrip() for line in timed.stderr.splitlines()
             if line.startswith("import time:") and "imported package" not in line]
    return {"importtime_modules": order, "state": re.sub(r" at 0x[0-9a-f]+", " at 0x?", state.stdout)}


def ask_in(python, home: Path, **env: str) -> dict:
    proc = run_python(ASK_SCRIPT.format(prelude="", stream=False, mark=RESULT_MARK), home=home, python=str(python),
                      **env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert lines, f"no result (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len(RESULT_MARK):])


STATUS = ("import json, metagpt_vllm_fix as f; s = f.status(); "
          "print(json.dumps({'pth': s.pth_file, 'hook': s.hook_installed, 'state': s.state, 'code': s.code}))")


@pytest.fixture(scope="module", params=["pip-wheel", "pip-editable", "uv-wheel", "uv-editable"])
def flow(request, metagpt_venv, dists, tmp_path_factory) -> dict:
    """Install (with dependencies), use, then uninstall the plugin in the MetaGPT venv with pip or uv, as a user of
    that tool does (``pip install`` / ``uv pip install``, then ``pip uninstall -y`` / ``uv pip uninstall``); record
    every observation."""
    tool, kind = request.param.split("-")
    if tool == "uv":
        require_uv()
    python = metagpt_venv
    venv = python.parent.parent
    site = site_packages(python)
    work = tmp_path_factory.mktemp(f"flow-{tool}-{kind}")
    obs = {"tool": tool, "kind": kind, "site": site, "venv": venv}

    def files() -> list:
        # uv keeps a lock file of its own at the environment's root (against concurrent installs): not the plugin's.
        return [f for f in venv_files(venv) if not (tool == "uv" and f == UV_ENVIRONMENT_LOCK)]

    obs["files_before"] = files()
    obs["freeze_before"] = pip(python, "freeze", "--all").stdout.splitlines()
    obs["startup_before"] = startup(python, work)

    target = ["-e", str(REPO)] if kind == "editable" else [str(dists["wheel"])]
    obs["install"] = pip(python, "install", *target) if tool == "pip" else uv_pip(python, "install", *target)
    obs["files_installed"] = files()
    obs["freeze_installed"] = pip(python, "freeze", "--all").stdout.splitlines()
    record = next(site.glob("metagpt_vllm_fix-*.dist-info"), None)
    obs["plugin_record"] = record and (record / "RECORD").read_text()
    obs["status"] = run_python(STATUS, python=str(python), cwd=work)

    with VLLMServer(api_keys=[SEED_KEY], model=DEFAULT_MODEL, max_model_len=8192) as server:
        home = work / "home"
        write_config(home, server.base_url)
        obs["ask_on"] = ask_in(python, home)
        obs["ask_off"] = ask_in(python, home, METAGPT_VLLM_FIX="0")
        obs["headers"] = [r.authorization for r in server.requests]

    obs["uninstall"] = (pip(python, "uninstall", "-y", "metagpt-vllm-fix") if tool == "pip"
                        else uv_pip(python, "uninstall", "metagpt-vllm-fix"))
    obs["files_after"] = files()
    obs["freeze_after"] = pip(python, "freeze", "--all").stdout.splitlines()
    obs["startup_after"] = startup(python, work)
    obs["metagpt_record"] = record_problems(site)
    return obs


def test_install_with_dependencies_adds_only_the_plugin_and_never_looks_for_lancedb(flow):
    install = flow["install"]
    assert install.returncode == 0, install.stderr[-3000:]
    assert "lancedb" not in (install.stdout + install.stderr).lower()
    added = sorted(set(flow["freeze_installed"]) - set(flow["freeze_before"]))
    removed = sorted(set(flow["freeze_before"]) - set(flow["freeze_installed"]))
    assert removed == []
    requirements = [line for line in added if not line.startswith("#")]
    assert len(requirements) == 1, added
    if flow["kind"] == "wheel":
        assert requirements[0].startswith("metagpt-vllm-fix"), added
    else:
        assert requirements[0].startswith("-e "), added


def test_pth_and_boot_module_land_in_site_packages(flow):
    site, venv = flow["site"], flow["venv"]
    added = sorted(set(flow["files_installed"]) - set(flow["files_before"]))
    rel_site = os.path.relpath(site, venv)
    for name in PLUGIN_ROOT_FILES:
        assert os.path.join(rel_site, name) in added
    status = json.loads(flow["status"].stdout)
    assert status["pth"] == str(site / "metagpt-vllm-fix.pth")
    assert (status["hook"], status["state"], status["code"]) == (True, "pending", "supported")
    # every file pip added is one the plugin's RECORD lists (plus byte-code of those)
    listed = {os.path.normpath(os.path.join(rel_site, row.split(",")[0])) for row in flow["plugin_record"].splitlines()}
    directories = {os.path.dirname(p) for p in added}
    unlisted = [p for p in added if p not in listed and p not in directories and "__pycache__" not in p]
    assert unlisted == []


def test_installed_plugin_activates_automatically_end_to_end(flow):
    assert flow["ask_on"]["ok"] is True, flow["ask_on"]
    assert (flow["ask_off"]["ok"], flow["ask_off"]["status"]) == (False, 401)
    assert flow["headers"] == [f"Bearer {SEED_KEY}", "Bearer sk-xxx"]


def test_uninstall_removes_every_file_it_added(flow):
    assert flow["uninstall"].returncode == 0, flow["uninstall"].stderr
    left = sorted(set(flow["files_after"]) - set(flow["files_before"]))
    lost = sorted(set(flow["files_before"]) - set(flow["files_after"]))
    assert (left, lost) == ([], [])
    assert flow["freeze_after"] == flow["freeze_before"]


def test_startup_after_uninstall_is_the_startup_before_install(flow):
    before, after = flow["startup_before"], flow["startup_after"]
    assert after["importtime_modules"] == before["importtime_modules"]
    assert after["state"] == before["state"]
    assert "_metagpt_vllm_fix_boot" not in before["state"]


def test_metagpt_files_keep_their_recorded_hashes_through_install_use_uninstall(flow):
    checked, problems = flow["metagpt_record"]
    assert problems == []
    assert checked > 200


# --- PEP 829 (Python 3.15+): a <name>.start file beside the .pth ---------------------------------------------


def test_a_pep829_start_file_ships_beside_the_pth_and_older_pythons_ignore_it(built_wheel, bare_venv, tmp_path):
    names = zipfile.ZipFile(built_wheel).namelist()
    assert {"metagpt-vllm-fix.pth", "metagpt-vllm-fix.start", "_metagpt_vllm_fix_boot.py"} <= set(names)
    site = site_packages(bare_venv)
    start = (site / "metagpt-vllm-fix.start").read_text(encoding="utf-8")
    (entry,) = [line.strip() for line in start.splitlines() if line.strip() and not line.startswith("#")]
    assert entry == "_metagpt_vllm_fix_boot:autoload"
    # Python < 3.15 does not know .start files: start-up runs the .pth line once, nothing else.
    probe = run_python(f"""
        import json, pkgutil, sys
        count = lambda: sum(bool(getattr(f, "_metagpt_vllm_fix_finder", False)) for f in sys.meta_path)
        at_startup = count()
        # What PEP 829's site.py does with the .start line: resolve pkg.mod:callable and call it with no arguments.
        pkgutil.resolve_name({entry!r})()
        print(json.dumps({{"at_startup": at_startup, "after_start_entry": count(),
                           "loaded": sorted(m for m in ("wrapt", "metagpt_vllm_fix") if m in sys.modules)}}))
    """, python=str(bare_venv), cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stderr == ""
    assert json.loads(probe.stdout) == {"at_startup": 1, "after_start_entry": 1, "loaded": []}
    modules = imported_at_startup(bare_venv)
    assert "_metagpt_vllm_fix_boot" in modules and not {"wrapt", "metagpt_vllm_fix", "pkgutil"} & modules
