"""Activation: apply / remove / status, shared by the start-up hook, ``import metagpt_vllm_fix`` and the CLI.

One lock guards every change, so concurrent imports and calls patch exactly once. ``apply()`` and ``remove()``
are symmetric and idempotent, in the manner of OpenTelemetry's instrument() / uninstrument().
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

import _metagpt_vllm_fix_boot as boot

from . import gate, patch

log = logging.getLogger("metagpt_vllm_fix")
_lock = threading.RLock()
_refused: Optional[gate.Decision] = None  # why the loaded module was left alone, if it was
_decided: Optional["weakref.ref[ModuleType]"] = None  # the module that decision was about (decide once per module)
PTH_NAME = "metagpt-vllm-fix.pth"


class PatchRefused(RuntimeError):
    """Raised in ``METAGPT_VLLM_FIX=strict`` mode when MetaGPT 0.7's open_llm cannot be patched."""


@dataclass(frozen=True)
class Status:
    """What the plugin is doing in this interpreter, and why."""

    active: bool  #: our wrapper is on ``OpenLLM._make_client_kwargs`` right now
    state: str  #: "active", "pending" (will patch when MetaGPT's module is imported) or "inactive"
    code: str  #: machine-readable reason: supported, metagpt-absent, unsupported-old, fixed-upstream, ...
    reason: str  #: one sentence for people
    metagpt_version: Optional[str]
    hook_installed: bool  #: the import hook is on sys.meta_path in this interpreter
    switch: str  #: METAGPT_VLLM_FIX as read: auto, off, strict or unknown
    pth_file: Optional[str]  #: the start-up file that activates the plugin automatically, if installed

    @property
    def automatic(self) -> bool:
        """Every interpreter of this environment patches MetaGPT on import: .pth installed, switch on, gate ok."""
        return bool(self.pth_file) and self.switch != "off" and self.code in ("supported", "removed")

    def __str__(self) -> str:
        return f"{self.state}: {self.reason}"


def module_loaded(module: ModuleType) -> None:
    """Patch the freshly imported ``metagpt.provider.open_llm_api`` if the gate allows it.

    Also the entry point's hook (wrapt's post-import-hook convention: called with the module).
    """
    global _refused, _decided
    with _lock:
        cls = getattr(module, gate.CLASS_NAME, None)
        if patch.is_patched(cls) or (_refused is not None and _decided is not None and _decided() is module):
            return
        switch = boot.mode()
        if switch == "unknown":
            log.warning("%s=%r is not a known value (1, 0, strict, on, off, ...); treating it as 1.", boot.SWITCH,
                        os.environ.get(boot.SWITCH, "")[:20])
        decision = gate.check(module)
        _decided = weakref.ref(module)
        if decision.supported:
            patch.patch(cls)
            _refused = None
            log.info("patched %s.%s (%s): open_llm sends llm.api_key.", gate.CLASS_NAME, gate.METHOD_NAME,
                     decision.metagpt_version)
            return
        _refused = decision
        if switch == "strict" and decision.code not in ("unsupported-old", "fixed-upstream"):
            raise PatchRefused(f"metagpt-vllm-fix ({boot.SWITCH}=strict): {decision.reason}")
        level = logging.INFO if decision.code in ("unsupported-old", "fixed-upstream") else logging.WARNING
        log.log(level, "not patching MetaGPT's open_llm: %s", decision.reason)


def apply() -> Status:
    """Patch now if MetaGPT's module is loaded, else as soon as it is. Idempotent, thread-safe."""
    with _lock:
        boot.install()
    return status()


def remove() -> Status:
    """Undo ``apply()``: drop the import hook and restore the original method object. Idempotent."""
    global _refused, _decided
    with _lock:
        boot.uninstall()
        module = sys.modules.get(boot.TARGET)
        cls = getattr(module, gate.CLASS_NAME, None) if module is not None else None
        if isinstance(cls, type) and patch.unpatch(cls):
            log.info("removed the patch from %s.%s.", gate.CLASS_NAME, gate.METHOD_NAME)
        _refused = _decided = None
    return status()


def find_pth() -> Optional[str]:
    """Path of the start-up file in this interpreter's site-packages, if one is installed."""
    import site

    dirs = list(getattr(site, "getsitepackages", lambda: [])())
    if getattr(site, "ENABLE_USER_SITE", False):
        dirs.append(site.getusersitepackages())
    for directory in dirs:
        path = os.path.join(directory, PTH_NAME)
        if os.path.isfile(path):
            return path
    return None


def status() -> Status:
    """The plugin's state in this interpreter: active or not, and why."""
    module = sys.modules.get(boot.TARGET)
    cls = getattr(module, gate.CLASS_NAME, None) if module is not None else None
    version = gate.installed_version()
    hook = boot.installed()
    common = dict(metagpt_version=version.metagpt_version, hook_installed=hook, switch=boot.mode(),
                  pth_file=find_pth())
    if patch.is_patched(cls):
        return Status(True, "active", "supported",
                      f"OpenLLM._make_client_kwargs is patched: open_llm sends llm.api_key "
                      f"(MetaGPT {version.metagpt_version}).", **common)
    refused = _refused
    if patch.wrapt is None:
        return Status(False, "inactive", "wrapt-missing",
                      f"wrapt cannot be imported ({patch.WRAPT_ERROR}): MetaGPT's open_llm provider is not patched.",
                      **common)
    if refused is not None:
        return Status(False, "inactive", refused.code, refused.reason, **common)
    if not version.supported:
        return Status(False, "inactive", version.code, version.reason, **common)
    if module is not None:
        return Status(False, "inactive", "removed",
                      "MetaGPT's open_llm module is loaded but not patched (metagpt_vllm_fix.remove() was called, "
                      "or the plugin was never applied).", **common)
    if hook:
        return Status(False, "pending", "supported",
                      f"will patch when metagpt.provider.open_llm_api is imported (MetaGPT {version.metagpt_version}).",
                      **common)
    why = (f"automatic activation is off ({boot.SWITCH}={os.environ.get(boot.SWITCH, '')[:20]!r})"
           if boot.mode() == "off"
           else "the import hook is not installed")
    return Status(False, "inactive", "not-applied", f"{why}; call metagpt_vllm_fix.apply() to patch.", **common)
