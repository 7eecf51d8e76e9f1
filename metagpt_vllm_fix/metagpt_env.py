"""Importing MetaGPT 0.7 quietly into a scratch project root, for the commands that run it (doctor, demo).

MetaGPT 0.7 builds ``Config.default()`` while it is imported (so a broken config2.yaml makes the import itself
crash), logs to stderr and to a file through loguru, and writes ``logs/``, ``workspace/`` and
``metagpt/tools/schemas`` under its project root (often the current directory). :func:`import_metagpt` imports it
against a scratch root and a scratch HOME instead, so a command can load the user's real config afterwards (or
none) and leaves the user's directories alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

_ROOT_MARKERS = (".git", ".project_root", ".gitignore")
_SCRATCH_CONFIG = """\
llm:
  api_type: open_llm
  base_url: 'http://127.0.0.1:9/v1'
  model: placeholder
  api_key: placeholder-not-used
"""


def metagpt_root() -> Path:
    """MetaGPT 0.7's ``METAGPT_ROOT`` (metagpt.const), computed without importing MetaGPT."""
    env = os.getenv("METAGPT_PROJECT_ROOT")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("metagpt")
    if spec is not None and spec.origin:
        package_root = Path(spec.origin).parent.parent
        if any((package_root / marker).exists() for marker in _ROOT_MARKERS):
            return package_root
    return Path.cwd()


def quiet_loguru() -> None:
    """Drop every loguru sink (MetaGPT's stderr INFO lines and its log file)."""
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()


def import_metagpt(scratch: Path, modules: Sequence[str]) -> None:
    """Import MetaGPT modules silently, with a scratch project root and HOME (see the module docstring).

    A valid ``scratch/config/config2.yaml`` (the caller's, or a placeholder) lets ``Config.default()`` succeed
    at import time; the environment is restored afterwards, and MetaGPT's loguru sinks are removed.
    """
    config = scratch / "config" / "config2.yaml"
    if not config.exists():
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(_SCRATCH_CONFIG, encoding="utf-8")
    names = ("METAGPT_PROJECT_ROOT", "HOME", "USERPROFILE")
    saved = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ[name] = str(scratch)
    quiet_loguru()  # before metagpt.const logs "Package root set to ..." through loguru's default sink
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # google-auth / api_core FutureWarnings at provider import
            for module in modules:
                importlib.import_module(module)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        quiet_loguru()
