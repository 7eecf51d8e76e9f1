"""How the environments are built: uv is told where pip looks for packages (scripts/pip_sources.py, scripts/uv), and
the choice between uv and pip (BOOTSTRAP_INSTALLER) is explicit and explained.

The expensive proof, that a uv build and a pip build of the same lock hold the same distributions, is
tests/installers (``make test-installers``, run by .ci/run)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, UV, clean_env, require_uv

PIP_SOURCES = REPO / "scripts" / "pip_sources.py"
PROBE = "metagpt-vllm-fix-find-links-probe"  # a name no index has: only find-links can supply it


def pip_env(tmp_path: Path, **pip_vars: str) -> dict[str, str]:
    """An environment in which pip reads no configuration file and no PIP_* variable but ``pip_vars``."""
    env = {k: v for k, v in clean_env().items() if not k.startswith(("PIP_", "UV_")) and k != "SSL_CERT_FILE"}
    env.update(PIP_CONFIG_FILE=os.devnull, HOME=str(tmp_path), **pip_vars)
    return env


def pip_sources(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PIP_SOURCES), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def as_dict(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if line)


def test_uv_is_told_the_indexes_find_links_constraints_and_certificate_pip_is_configured_with(tmp_path):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch<=2.14.1\n")
    env = pip_env(tmp_path, PIP_INDEX_URL="https://mirror.example/simple",
                  PIP_EXTRA_INDEX_URL="file:///srv/a/simple file:///srv/b/simple", PIP_FIND_LINKS="/srv/wheels",
                  PIP_CONSTRAINT=str(constraints), PIP_TRUSTED_HOST="mirror.example", PIP_CERT="/etc/ca.pem")
    proc = pip_sources(env)
    assert proc.returncode == 0, proc.stderr
    assert as_dict(proc.stdout) == {
        "UV_DEFAULT_INDEX": "https://mirror.example/simple",
        "UV_INDEX": "file:///srv/a/simple file:///srv/b/simple",
        "UV_INDEX_STRATEGY": "unsafe-best-match",  # pip takes the best version across all of its indexes
        "UV_FIND_LINKS": "/srv/wheels",
        "UV_CONSTRAINT": str(constraints),
        "UV_INSECURE_HOST": "mirror.example",
        "SSL_CERT_FILE": "/etc/ca.pem",
    }


def test_a_pip_conf_file_is_read_as_pip_reads_it_install_section_over_global(tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /srv/global-wheels\nextra-index-url = file:///srv/g/simple\n"
                    "[install]\nfind-links = /srv/install-wheels\n")
    env = pip_env(tmp_path)
    env["PIP_CONFIG_FILE"] = str(conf)
    # The machine's own files (/etc/pip.conf, ...) are read too, as pip reads them; ours comes last and wins.
    env["XDG_CONFIG_DIRS"] = env["XDG_CONFIG_HOME"] = str(tmp_path / "no-such-dir")
    got = as_dict(pip_sources(env).stdout)
    assert got["UV_FIND_LINKS"] == "/srv/install-wheels"
    assert got["UV_INDEX"] == "file:///srv/g/simple"


def test_nothing_configured_means_uv_keeps_its_defaults(tmp_path):
    proc = pip_sources(pip_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert as_dict(proc.stdout) == {"UV_DEFAULT_INDEX": "https://pypi.org/simple"}
    assert pip_sources(pip_env(tmp_path), "--human").stdout.strip() == "nothing beyond uv's defaults"


def test_a_password_in_an_index_url_is_masked_in_what_is_printed_for_people(tmp_path):
    env = pip_env(tmp_path, PIP_INDEX_URL="https://me:s3cr3t-token@mirror.example/simple")
    human = pip_sources(env, "--human")
    assert human.returncode == 0, human.stderr
    assert "s3cr3t" not in human.stdout + human.stderr
    assert "https://me:***@mirror.example/simple" in human.stdout
    # uv itself gets the real URL (it is the one that logs in), never a printed line.
    assert as_dict(pip_sources(env).stdout)["UV_DEFAULT_INDEX"] == "https://me:s3cr3t-token@mirror.example/simple"


@pytest.mark.parametrize("setting, value, named", [("PIP_NO_INDEX", "1", "no-index"),
                                                   ("PIP_ONLY_BINARY", ":all:", "no-binary/only-binary")])
def test_a_pip_setting_uv_cannot_follow_sends_the_build_back_to_pip(tmp_path, setting, value, named):
    proc = pip_sources(pip_env(tmp_path, **{setting: value}))
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert f"pip is configured with {named}, which uv cannot be told" in proc.stderr


def run_uv_wrapper(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(UV), *args], capture_output=True, text=True, env=env, timeout=300)


def test_the_wrapper_exports_pips_sources_and_leaves_the_callers_own_uv_settings_alone(tmp_path):
    # UV=/usr/bin/env: the wrapper execs "uv" with the environment it built, and env prints that environment.
    env = pip_env(tmp_path, PIP_FIND_LINKS="/srv/wheels", PIP_EXTRA_INDEX_URL="file:///srv/a/simple",
                  UV="/usr/bin/env", PYTHON=sys.executable, UV_INDEX="file:///mine/simple", BOOTSTRAP_INSTALLER="auto")
    proc = run_uv_wrapper(env=env)
    assert proc.returncode == 0, proc.stderr
    seen = as_dict(proc.stdout)
    assert seen["UV_FIND_LINKS"] == "/srv/wheels"
    assert seen["UV_INDEX"] == "file:///mine/simple"  # the caller's choice wins over pip's extra index
    assert seen["UV_INDEX_STRATEGY"] == "unsafe-best-match"


def test_installer_pip_makes_uv_unavailable_and_a_wrong_value_is_refused(tmp_path):
    env = clean_env(BOOTSTRAP_INSTALLER="pip", PYTHON=sys.executable)
    proc = run_uv_wrapper("--which", env=env)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert "BOOTSTRAP_INSTALLER=pip: not using uv" in proc.stderr
    proc = run_uv_wrapper("--which", env=clean_env(BOOTSTRAP_INSTALLER="conda", PYTHON=sys.executable))
    assert proc.returncode == 2
    assert "BOOTSTRAP_INSTALLER must be auto, uv or pip, not 'conda'" in proc.stderr


def test_bootstrap_refuses_an_unknown_installer_before_touching_anything(tmp_path):
    venv = tmp_path / "venv"
    proc = subprocess.run([str(REPO / "scripts" / "bootstrap")], capture_output=True, text=True, timeout=120,
                          env=clean_env(BOOTSTRAP_INSTALLER="conda", VENV=str(venv)))
    assert proc.returncode == 2
    assert "bootstrap: BOOTSTRAP_INSTALLER must be auto, uv or pip, not 'conda'" in proc.stderr
    assert not venv.exists()


def probe_wheel(directory: Path) -> Path:
    """A real, minimal wheel of PROBE 1.0 (one module), in ``directory`` only."""
    directory.mkdir(parents=True, exist_ok=True)
    name = PROBE.replace("-", "_")
    files = {f"{name}.py": b"ANSWER = 42\n",
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: 1.0\n".encode(),
             f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                            b"Tag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files[f"{name}-1.0.dist-info/RECORD"] = ("\n".join([*record, f"{name}-1.0.dist-info/RECORD,,"]) + "\n").encode()
    wheel = directory / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def test_uv_installs_a_wheel_that_only_pips_find_links_can_supply(tmp_path):
    """The machine's torch 2.13.0+cpu case in small: the package is on no index, only in pip's find-links."""
    require_uv()
    links = tmp_path / "links"
    probe_wheel(links)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    cache = str(tmp_path / "uv-cache")
    install = [str(UV), "pip", "install", "-q", "--python", str(python), f"{PROBE}==1.0"]

    told = subprocess.run(install, capture_output=True, text=True, timeout=300,
                          env=pip_env(tmp_path, PIP_FIND_LINKS=str(links), PYTHON=sys.executable, UV_CACHE_DIR=cache))
    assert told.returncode == 0, told.stderr
    check = subprocess.run([str(python), "-c", "import metagpt_vllm_fix_find_links_probe as m; print(m.ANSWER)"],
                           capture_output=True, text=True, env=clean_env(), cwd=str(tmp_path))
    assert check.stdout.strip() == "42", check.stderr

    # Without pip's find-links there is nothing to install: it is the handing-over that made the difference.
    untold = subprocess.run(install + ["--reinstall"], capture_output=True, text=True, timeout=300,
                            env=pip_env(tmp_path, PYTHON=sys.executable, UV_CACHE_DIR=cache))
    assert untold.returncode != 0
    assert PROBE in untold.stderr
