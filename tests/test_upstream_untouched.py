"""Upstream untouched: the plugin changes MetaGPT in memory only, never a byte of MetaGPT's installed files.

Every file listed in ``metagpt-<v>.dist-info/RECORD`` must still have its recorded sha256 (urlsafe base64, no
padding) and size after the plugin was installed, used (a real patched call to a key-checking server) and, in
tests/test_lifecycle.py, uninstalled. Rows without a hash (``RECORD`` itself, byte-compiled ``.pyc`` files, which
the interpreter may rewrite) are skipped, and so is the ``bin/metagpt`` console script, which lives outside
site-packages (pip writes it; with ``--target`` its RECORD path is wrong). No file may appear inside the
``metagpt`` package that RECORD does not list (``__pycache__`` aside).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import SEED_KEY, ask_metagpt, install_into, run_python


def _digest(path: Path) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode("ascii")


def record_problems(site: Path, distribution: str = "metagpt") -> tuple[int, list[str]]:
    """Check ``site``'s ``<distribution>-*.dist-info/RECORD``: (files verified, list of problems)."""
    (dist_info,) = sorted(site.glob(f"{distribution}-*.dist-info"))
    record = dist_info / "RECORD"
    checked, problems, listed = 0, [], set()
    with record.open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if not row:
                continue
            name, hash_field, size = (row + ["", ""])[:3]
            path = (site / name).resolve()
            listed.add(path)
            if not hash_field or not path.is_relative_to(site.resolve()):
                continue  # RECORD, .pyc files; console scripts outside site-packages (pip --target misplaces them)
            algorithm, _, expected = hash_field.partition("=")
            assert algorithm == "sha256", f"{record}: unexpected hash algorithm in {row}"
            if not path.is_file():
                problems.append(f"missing: {name}")
                continue
            if size and path.stat().st_size != int(size):
                problems.append(f"size changed: {name} ({size} -> {path.stat().st_size})")
            elif _digest(path) != expected:
                problems.append(f"content changed: {name}")
            checked += 1
    package = site / distribution
    for path in package.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.resolve() not in listed:
            problems.append(f"not in RECORD: {path.relative_to(site)}")
    return checked, problems


@pytest.fixture(scope="module")
def metagpt_target(tmp_path_factory) -> Path:
    """A throwaway MetaGPT 0.7.7 (the wheel alone, --no-deps) to put first on PYTHONPATH."""
    target = tmp_path_factory.mktemp("metagpt-0.7.7-untouched")
    proc = install_into(sys.executable, "--no-deps", "metagpt==0.7.7", target=target, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"could not install metagpt==0.7.7 (PyPI reachable?):\n{proc.stderr[-2000:]}")
    return target


def test_record_check_notices_a_changed_file(metagpt_target, tmp_path):
    """The checker itself: a one-byte change in a copy of MetaGPT is reported."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(metagpt_target, copy)
    victim = copy / "metagpt" / "provider" / "open_llm_api.py"
    victim.write_text(victim.read_text().replace('"sk-xxx"', '"sk-xxy"'))
    (copy / "metagpt" / "stray.py").write_text("")
    checked, problems = record_problems(copy)
    assert checked > 200
    assert sorted(problems) == ["content changed: metagpt/provider/open_llm_api.py", "not in RECORD: metagpt/stray.py"]


def test_metagpt_files_keep_their_hashes_after_patched_and_unpatched_use(metagpt_target, vllm_server, user_home):
    assert record_problems(metagpt_target)[1] == []
    patched = ask_metagpt(user_home, PYTHONPATH=str(metagpt_target))
    unpatched = ask_metagpt(user_home, PYTHONPATH=str(metagpt_target), METAGPT_VLLM_FIX="0")
    removed = run_python("import metagpt.provider.open_llm_api, metagpt_vllm_fix as f; f.apply(); f.remove(); "
                         "print(f.status().code)", home=user_home, forked=True, PYTHONPATH=str(metagpt_target))
    assert patched["ok"] is True and (unpatched["ok"], unpatched["status"]) == (False, 401)
    assert removed.returncode == 0 and removed.stdout.strip() == "removed", removed.stderr
    checked, problems = record_problems(metagpt_target)
    assert problems == []
    assert checked > 200


def test_test_environments_metagpt_is_untouched_after_a_real_patched_call(vllm_server, user_home):
    site = Path(sysconfig.get_paths()["purelib"])
    result = ask_metagpt(user_home)
    assert result["ok"] is True, result
    assert [r.authorization for r in vllm_server.requests] == [f"Bearer {SEED_KEY}"]
    checked, problems = record_problems(site)
    assert problems == []
    assert checked > 200
