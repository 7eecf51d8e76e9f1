# Import budget: nothing. This module runs in every Python process of the environment (metagpt-vllm-fix.pth),
# so it uses only `sys` and `os`, which the interpreter has already loaded, and does nothing but put one small
# finder on sys.meta_path until `metagpt.provider.open_llm_api` is imported.
"""Start-up hook of metagpt-vllm-fix: wait for MetaGPT's open_llm module, then hand over to the package.

The finder ignores every module but one (the manner of setuptools' ``_distutils_hack``). When MetaGPT's
``open_llm_api`` has executed, the package ``metagpt_vllm_fix`` is imported and patches it; until then no
wrapt, no importlib.metadata and no MetaGPT is loaded.
"""

import os
import sys

# Annotations are strings and typing is imported for the type checker only (mypy treats a TYPE_CHECKING name as
# true), so that neither `typing` nor `__future__` is loaded at start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any, Optional

TARGET = "metagpt.provider.open_llm_api"
SWITCH = "METAGPT_VLLM_FIX"
MARK = "_metagpt_vllm_fix_finder"  # recognised by attribute, so a second copy of this module never recurses

_OFF = frozenset({"0", "off", "false", "no", "disable", "disabled"})
_ON = frozenset({"", "1", "on", "true", "yes", "auto"})
_busy: "set[str]" = set()


def mode(value: "Optional[str]" = None) -> str:
    """Read the ``METAGPT_VLLM_FIX`` switch: ``"auto"``, ``"off"``, ``"strict"`` or ``"unknown"``."""
    word = (os.environ.get(SWITCH, "") if value is None else value).strip().lower()
    if word in _ON:
        return "auto"
    if word in _OFF:
        return "off"
    return "strict" if word == "strict" else "unknown"


class _ChainedLoader:
    """Run the real loader, put it back on the module, then let the package patch the fresh module."""

    def __init__(self, loader: "Loader") -> None:
        self.loader = loader

    def create_module(self, spec: "ModuleSpec") -> "Optional[ModuleType]":
        return self.loader.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        try:
            self.loader.exec_module(module)
        finally:
            if getattr(module, "__loader__", None) is self:
                module.__loader__ = self.loader
            spec = getattr(module, "__spec__", None)
            if spec is not None and spec.loader is self:
                spec.loader = self.loader
        _module_loaded(module)

    def __getattr__(self, name: str) -> "Any":  # get_source, get_code, is_package, ... for tracebacks and inspect
        loader = self.__dict__.get("loader")
        if loader is None:
            raise AttributeError(name)
        return getattr(loader, name)


class Finder:
    """A meta-path finder that answers for TARGET only, by asking the finders behind it."""

    _metagpt_vllm_fix_finder = True

    def find_spec(self, fullname: str, path: "Optional[Sequence[str]]" = None,
                  target: "Optional[ModuleType]" = None) -> "Optional[ModuleSpec]":
        if fullname != TARGET or fullname in _busy:
            return None
        _busy.add(fullname)
        try:
            finders = sys.meta_path
            behind = finders[finders.index(self) + 1:] if self in finders else finders
            for finder in behind:
                find_spec = getattr(finder, "find_spec", None)
                if getattr(finder, MARK, False) or find_spec is None:
                    continue
                spec: Optional[ModuleSpec] = find_spec(fullname, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        # A duck-typed Loader: importlib.abc is not imported at start-up to subclass it.
                        spec.loader = _ChainedLoader(spec.loader)  # type: ignore[assignment]
                    return spec
            return None
        finally:
            _busy.discard(fullname)


def _module_loaded(module: "ModuleType") -> None:
    """Hand the freshly executed module to the package; only strict mode lets a failure escape."""
    try:
        from metagpt_vllm_fix import _activation

        _activation.module_loaded(module)
    except Exception as exc:  # the package, wrapt or the gate broke: MetaGPT must still import
        if mode() == "strict":
            if isinstance(exc, ImportError):
                raise ImportError(f"metagpt-vllm-fix ({SWITCH}=strict) could not patch MetaGPT: {exc}") from exc
            raise
        import logging

        logging.getLogger("metagpt_vllm_fix").warning(
            "metagpt-vllm-fix failed (%s: %s); MetaGPT's open_llm provider is NOT patched.", type(exc).__name__, exc
        )


def installed() -> bool:
    """True when a finder of ours is on sys.meta_path."""
    return any(getattr(finder, MARK, False) for finder in sys.meta_path)


def install() -> None:
    """Put the finder first on sys.meta_path (once); patch at once if MetaGPT's module is already loaded."""
    if not installed():
        sys.meta_path.insert(0, Finder())
    module = sys.modules.get(TARGET)
    spec = getattr(module, "__spec__", None)
    if module is not None and not getattr(spec, "_initializing", False):  # still executing: the loader hook fires
        _module_loaded(module)


def uninstall() -> None:
    """Take every finder of ours off sys.meta_path."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not getattr(finder, MARK, False)]


def autoload() -> None:
    """Entry of the .pth line: install unless the switch says off. Never raises."""
    try:
        if mode() != "off":
            install()
    except Exception:  # noqa: BLE001  (start-up must survive anything)
        pass
