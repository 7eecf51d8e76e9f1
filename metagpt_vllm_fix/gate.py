"""The version gate: patch MetaGPT 0.7.x only, and say why not otherwise.

The decision is made from the installed distribution's metadata (importlib.metadata) and from the shape of the
class actually imported, so that a look-alike version with another ``OpenLLM`` is never patched blindly.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

DISTRIBUTION = "metagpt"
CLASS_NAME = "OpenLLM"
METHOD_NAME = "_make_client_kwargs"


@dataclass(frozen=True)
class Decision:
    """Whether to patch, with a code for programs and a sentence for people."""

    supported: bool
    code: str
    reason: str
    metagpt_version: Optional[str] = None


def installed_version() -> Decision:
    """Decide from the installed ``metagpt`` distribution's version alone."""
    import importlib.metadata

    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return Decision(False, "metagpt-absent", "MetaGPT is not installed in this environment; nothing to patch.")
    except Exception as exc:  # noqa: BLE001  (unreadable dist-info: say so rather than guess)
        why = f"MetaGPT's installed metadata cannot be read ({type(exc).__name__})."
        return Decision(False, "metadata-broken", why)
    if not version:
        return Decision(False, "metadata-broken", "MetaGPT's installed metadata has no version; not patching blindly.")
    return _by_version(str(version))


def _by_version(version: str) -> Decision:
    from packaging.version import InvalidVersion, Version

    try:
        release = Version(version).release
    except InvalidVersion:
        return Decision(False, "metadata-broken", f"MetaGPT's version {version!r} is not a valid version.", version)
    major_minor = (release + (0, 0))[:2]
    if major_minor == (0, 7):
        return Decision(True, "supported", f"MetaGPT {version} hard-codes api_key='sk-xxx' for open_llm.", version)
    if major_minor < (0, 7):
        return Decision(
            False,
            "unsupported-old",
            f"MetaGPT {version} is older than 0.7; its OpenLLM reads a global CONFIG and is not covered.",
            version,
        )
    return Decision(
        False,
        "fixed-upstream",
        f"MetaGPT {version} serves open_llm with OpenAILLM, which already sends llm.api_key; nothing to patch.",
        version,
    )


PLACEHOLDER = "sk-xxx"


def check(module: ModuleType) -> Decision:
    """Full gate for the imported ``metagpt.provider.open_llm_api``: version first, then the target's shape.

    Without readable metadata (MetaGPT run from a source tree, a damaged dist-info) the code decides: the 0.7
    shape with the hard-coded placeholder is patched, anything else is left alone.
    """
    decision = installed_version()
    if decision.code in ("metagpt-absent", "metadata-broken"):
        if _shape_problem(module) is None and _has_placeholder(module):
            where = getattr(module, "__file__", None) or module.__name__
            return Decision(True, "supported", f"{where} is MetaGPT 0.7's OpenLLM with api_key={PLACEHOLDER!r} "
                            f"(no readable version metadata: {decision.reason})")
        return decision
    if not decision.supported:
        return decision
    problem = _shape_problem(module)
    if problem:
        return Decision(False, "shape-changed", f"MetaGPT {decision.metagpt_version}: {problem}; not patching.",
                        decision.metagpt_version)
    return decision


def _has_placeholder(module: ModuleType) -> bool:
    """True when ``OpenLLM._make_client_kwargs`` carries MetaGPT 0.7's hard-coded key among its constants."""
    function = inspect.unwrap(getattr(module, CLASS_NAME).__dict__[METHOD_NAME])
    return PLACEHOLDER in function.__code__.co_consts


def _shape_problem(module: ModuleType) -> Optional[str]:
    """Describe how the target differs from MetaGPT 0.7's, or return None when it is as expected."""
    cls = getattr(module, CLASS_NAME, None)
    if not inspect.isclass(cls):
        return f"{module.__name__} has no class {CLASS_NAME}"
    method = cls.__dict__.get(METHOD_NAME)
    if method is None:
        return f"{CLASS_NAME} does not define {METHOD_NAME}"
    function = inspect.unwrap(method) if callable(method) else None
    if not inspect.isfunction(function):
        return f"{CLASS_NAME}.{METHOD_NAME} is not a plain method"
    if list(inspect.signature(function).parameters) != ["self"]:
        return f"{CLASS_NAME}.{METHOD_NAME} has signature {inspect.signature(function)}, expected (self)"
    parent = getattr(super(cls, cls), METHOD_NAME, None)
    if parent is None or not hasattr(cls, "_get_proxy_params"):
        return f"{CLASS_NAME}'s parent has no {METHOD_NAME}/_get_proxy_params to take the key and proxy from"
    return None
