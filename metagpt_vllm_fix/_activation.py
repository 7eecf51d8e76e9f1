"""Apply / remove / status of every fix, shared by the start-up hook, ``import metagpt_vllm_fix`` and the CLI.

One lock guards every change, so concurrent imports and calls patch exactly once. ``apply()`` and ``remove()``
are symmetric and idempotent, in the manner of OpenTelemetry's instrument() / uninstrument(). The fixes
(``fixes/``) are applied together, each after its own gate; ``METAGPT_VLLM_FIX_DISABLE`` leaves named ones off.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Optional

import _metagpt_vllm_fix_boot as boot

from . import gate, wrapping
from .fixes import NAMES, all_fixes, wrapping_order

log = logging.getLogger("metagpt_vllm_fix")
_lock = threading.RLock()
_refused: Optional[gate.Decision] = None  # why the loaded module was left alone, if it was
_decided: Optional[weakref.ref[ModuleType]] = None  # the module that decision was about (decide once per module)
_decided_class: Any = None  # its OpenLLM then: a reloaded module has a new class and is decided afresh
_outcome: dict[str, tuple[str, str]] = {}  # fix name -> (state, reason) from the last decision
PTH_NAME = "metagpt-vllm-fix.pth"
DISABLE = "METAGPT_VLLM_FIX_DISABLE"


class PatchRefused(RuntimeError):
    """Raised in ``METAGPT_VLLM_FIX=strict`` mode when MetaGPT 0.7's open_llm cannot be patched."""


@dataclass(frozen=True)
class FixStatus:
    """One fix in this interpreter: ``active``, ``pending``, ``off`` (disabled by name), ``refused``, ``idle``
    (nothing to do in this environment) or ``inactive``."""

    name: str
    state: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.state} ({self.reason})"


@dataclass(frozen=True)
class Status:
    """What the plugin is doing in this interpreter, and why."""

    active: bool  #: at least one fix is on MetaGPT's open_llm right now
    state: str  #: "active", "pending" (will patch when MetaGPT's module is imported) or "inactive"
    code: str  #: machine-readable reason: supported, metagpt-absent, unsupported-old, fixed-upstream, ...
    reason: str  #: one sentence for people
    metagpt_version: Optional[str]
    hook_installed: bool  #: the import hook is on sys.meta_path in this interpreter
    switch: str  #: METAGPT_VLLM_FIX as read: auto, off, strict or unknown
    pth_file: Optional[str]  #: the start-up file that activates the plugin automatically, if installed
    fixes: tuple[FixStatus, ...] = ()  #: each fix and its state

    @property
    def automatic(self) -> bool:
        """Every interpreter of this environment patches MetaGPT on import: .pth installed, switch on, gate ok."""
        return bool(self.pth_file) and self.switch != "off" and self.code in ("supported", "removed")

    def __str__(self) -> str:
        return f"{self.state}: {self.reason}"


def disabled() -> tuple[set[str], list[str]]:
    """(fix names turned off by METAGPT_VLLM_FIX_DISABLE, words in it that name no fix)."""
    words = [w.strip().lower().replace("-", "_") for w in os.environ.get(DISABLE, "").split(",")]
    words = [w for w in words if w]
    return {w for w in words if w in NAMES}, [w for w in words if w not in NAMES]


def _apply_fixes(module: ModuleType, decision: gate.Decision) -> dict[str, tuple[str, str]]:
    """Apply every fix its gate lets through; say per fix what happened."""
    off, unknown = disabled()
    if unknown:
        log.warning("%s names no fix: %s (the fixes are %s); ignoring those.", DISABLE,
                    ", ".join(w[:20] for w in unknown[:5]), ", ".join(NAMES))
    outcome: dict[str, tuple[str, str]] = {}
    for fix in wrapping_order():
        if fix.name in off:
            outcome[fix.name] = ("off", f"turned off by {DISABLE}; MetaGPT 0.7 as shipped: {fix.upstream}")
            continue
        problem = fix.problem(module)
        if problem:
            outcome[fix.name] = ("refused", problem)
            continue
        idle = fix.idle(module)
        if idle:
            outcome[fix.name] = ("idle", idle)
            continue
        fix.apply(module)
        outcome[fix.name] = ("active", fix.summary)
    return {fix.name: outcome[fix.name] for fix in all_fixes()}


def module_loaded(module: ModuleType) -> None:
    """Apply the fixes to the freshly imported ``metagpt.provider.open_llm_api`` if the gates allow it.

    Also the entry point's hook (wrapt's post-import-hook convention: called with the module).
    """
    global _refused, _decided, _decided_class, _outcome
    with _lock:
        if _decided is not None and _decided() is module and _decided_class is getattr(module, gate.CLASS_NAME, None):
            return
        switch = boot.mode()
        if switch == "unknown":
            log.warning("%s=%r is not a known value (1, 0, strict, on, off, ...); treating it as 1.", boot.SWITCH,
                        os.environ.get(boot.SWITCH, "")[:20])
        decision = gate.check(module)
        if not decision.supported:  # not MetaGPT 0.7's OpenLLM as we know it: no fix touches it
            _refused, _decided, _outcome = decision, weakref.ref(module), {}
            _decided_class = getattr(module, gate.CLASS_NAME, None)
            if switch == "strict" and decision.code not in ("unsupported-old", "fixed-upstream"):
                raise PatchRefused(f"metagpt-vllm-fix ({boot.SWITCH}=strict): {decision.reason}")
            level = logging.INFO if decision.code in ("unsupported-old", "fixed-upstream") else logging.WARNING
            log.log(level, "not patching MetaGPT's open_llm: %s", decision.reason)
            return
        if wrapping.wrapt is None:
            raise ImportError(f"wrapt cannot be imported ({wrapping.WRAPT_ERROR})")
        try:
            outcome = _apply_fixes(module, decision)
        except BaseException:
            for fix in reversed(wrapping_order()):
                fix.remove(module)
            raise
        _decided, _outcome = weakref.ref(module), outcome
        _decided_class = getattr(module, gate.CLASS_NAME, None)
        _refused = None  # the gate passed; each fix says for itself why it is off (status().fixes)
        refused = {name: why for name, (state, why) in outcome.items() if state == "refused"}
        if refused and switch == "strict":  # all or nothing: take the others off again before refusing the import
            for fix in reversed(wrapping_order()):
                fix.remove(module)
            _outcome = {name: outcome[name] if name in refused else
                        ("inactive", f"not applied: {boot.SWITCH}=strict and the {', '.join(refused)} fix refused")
                        for name in outcome}
            raise PatchRefused(f"metagpt-vllm-fix ({boot.SWITCH}=strict): "
                               + "; ".join(f"{name}: {why}" for name, why in refused.items()))
        for name, why in refused.items():
            log.warning("not applying the %s fix to MetaGPT's open_llm: %s", name, why)
        applied = [name for name, (state, _) in outcome.items() if state == "active"]
        if applied:
            log.info("patched MetaGPT %s's open_llm: %s.", decision.metagpt_version or "0.7", ", ".join(applied))


def apply() -> Status:
    """Patch now if MetaGPT's module is loaded, else as soon as it is. Idempotent, thread-safe."""
    with _lock:
        boot.install()
    return status()


def remove() -> Status:
    """Undo ``apply()``: drop the import hook and restore every original object. Idempotent."""
    global _refused, _decided, _decided_class, _outcome
    with _lock:
        boot.uninstall()
        module = sys.modules.get(boot.TARGET)
        # outermost first, so each wrapper comes off the top of its chain (none is spliced out of the middle)
        removed = {fix.name for fix in reversed(wrapping_order()) if fix.remove(module)}
        if removed:
            log.info("removed the %s fix(es) from MetaGPT's open_llm.", ", ".join(n for n in NAMES if n in removed))
        _refused = _decided = _decided_class = None
        _outcome = {}
    return status()


def find_pth() -> Optional[str]:
    """Path of the start-up file in this interpreter's site-packages, if one is installed."""
    import site

    dirs = list(getattr(site, "getsitepackages", list)())
    if getattr(site, "ENABLE_USER_SITE", False):
        dirs.append(site.getusersitepackages())
    for directory in dirs:
        path = os.path.join(directory, PTH_NAME)
        if os.path.isfile(path):
            return path
    return None


def _fix_statuses(module: Optional[ModuleType], hook: bool) -> tuple[FixStatus, ...]:
    off, _ = disabled()
    found = []
    for fix in all_fixes():
        if module is not None and fix.is_applied(module):
            found.append(FixStatus(fix.name, "active", fix.describe()))
        elif fix.name in _outcome:
            found.append(FixStatus(fix.name, *_outcome[fix.name]))
        elif fix.name in off:
            found.append(FixStatus(fix.name, "off", f"turned off by {DISABLE}"))
        elif module is None and hook:
            found.append(FixStatus(fix.name, "pending", fix.describe()))
        else:
            found.append(FixStatus(fix.name, "inactive", f"not applied; MetaGPT 0.7 as shipped: {fix.upstream}"))
    return tuple(found)


def _describe(fixes: tuple[FixStatus, ...]) -> str:
    active = [f.name for f in fixes if f.state == "active"]
    others = [f"{f.name} {f.state}" for f in fixes if f.state != "active"]
    return "fixes " + ", ".join(active) + " active" + (f" ({', '.join(others)})" if others else "")


def status() -> Status:
    """The plugin's state in this interpreter: active or not, and why, with each fix's state."""
    module = sys.modules.get(boot.TARGET)
    version = gate.installed_version()
    hook = boot.installed()
    fixes = _fix_statuses(module, hook)
    common: dict[str, Any] = {"metagpt_version": version.metagpt_version, "hook_installed": hook,
                              "switch": boot.mode(), "pth_file": find_pth(), "fixes": fixes}
    if any(f.state == "active" for f in fixes):
        return Status(True, "active", "supported",
                      f"MetaGPT {version.metagpt_version}'s open_llm is patched: {_describe(fixes)}.", **common)
    refused = _refused
    if wrapping.wrapt is None:
        return Status(False, "inactive", "wrapt-missing",
                      f"wrapt cannot be imported ({wrapping.WRAPT_ERROR}): MetaGPT's open_llm provider is not "
                      "patched.", **common)
    if refused is not None:
        return Status(False, "inactive", refused.code, refused.reason, **common)
    if not version.supported:
        return Status(False, "inactive", version.code, version.reason, **common)
    if module is not None:
        return Status(False, "inactive", "removed",
                      "MetaGPT's open_llm module is loaded but not patched (metagpt_vllm_fix.remove() was called, "
                      "every fix is turned off, or the plugin was never applied).", **common)
    if hook:
        return Status(False, "pending", "supported",
                      f"will patch when metagpt.provider.open_llm_api is imported (MetaGPT {version.metagpt_version}; "
                      f"fixes {', '.join(f.name for f in fixes if f.state == 'pending') or 'none'}).", **common)
    why = (f"automatic activation is off ({boot.SWITCH}={os.environ.get(boot.SWITCH, '')[:20]!r})"
           if boot.mode() == "off"
           else "the import hook is not installed")
    return Status(False, "inactive", "not-applied", f"{why}; call metagpt_vllm_fix.apply() to patch.", **common)
