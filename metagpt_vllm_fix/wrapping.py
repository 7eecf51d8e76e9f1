"""wrapt wrappers that can be taken off again, exactly: the one mechanism every fix uses.

``wrap`` puts a ``wrapt.FunctionWrapper`` on an attribute of a class or of an instance; ``unwrap`` takes only
that wrapper out, whether it is outermost (the attribute goes back to what it was, or is deleted when it was
inherited) or someone wrapped on top of it (it is spliced out of their chain).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any, Callable, Optional

try:
    import wrapt as wrapt  # re-exported: the fixes and status() read wrapping.wrapt

    WRAPT_ERROR = ""
except ImportError as exc:  # reported by status() and by the hook's warning; MetaGPT still imports
    wrapt = None
    WRAPT_ERROR = f"{type(exc).__name__}: {exc}"

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

# wrapt 2.x moved FunctionWrapper onto BaseObjectProxy; wrapt 1.x has only ObjectProxy.
_PROXY: Any = (getattr(wrapt, "BaseObjectProxy", None) or wrapt.ObjectProxy) if wrapt is not None else ()


def chain(obj: Any) -> Iterator[Any]:
    """Yield ``obj`` and every object it wraps, outermost first."""
    while obj is not None:
        yield obj
        obj = getattr(obj, "__wrapped__", None) if isinstance(obj, _PROXY) else None


def is_ours(obj: Any, wrapper: Wrapper) -> bool:
    """True when ``obj`` is a wrapt proxy whose wrapper function is ``wrapper``."""
    return isinstance(obj, _PROXY) and getattr(obj, "_self_wrapper", None) is wrapper


def own_attribute(owner: Any, name: str) -> Any:
    """The attribute as ``owner`` itself holds it (not inherited), or None."""
    return vars(owner).get(name) if hasattr(owner, "__dict__") else None


def is_wrapped(owner: Any, name: str, wrapper: Wrapper) -> bool:
    """True when ``owner``'s own ``name`` carries ``wrapper`` somewhere in its chain."""
    return any(is_ours(node, wrapper) for node in chain(own_attribute(owner, name)))


def wrap(owner: Any, name: str, wrapper: Wrapper) -> bool:
    """Wrap ``owner.name`` once (inherited attributes become own ones); False when it was already wrapped."""
    if is_wrapped(owner, name, wrapper):
        return False
    if wrapt is None:
        raise ImportError(f"wrapt cannot be imported ({WRAPT_ERROR})")
    wrapt.wrap_function_wrapper(owner, name, wrapper)
    return True


def _inherited(owner: Any, name: str) -> Optional[Any]:
    """What ``owner.name`` would be without ``owner``'s own attribute (a class's MRO, an instance's class)."""
    if inspect.isclass(owner):
        for klass in owner.__mro__[1:]:
            if name in vars(klass):
                return vars(klass)[name]
        return None
    return getattr(type(owner), name, None)


def _same_as_inherited(owner: Any, name: str, obj: Any) -> bool:
    """Is ``obj`` exactly what ``owner`` inherits for ``name`` (so restoring means deleting the own attribute)?"""
    inherited = _inherited(owner, name)
    if inherited is None:
        return False
    if inspect.ismethod(obj) and not inspect.isclass(owner):  # an instance attribute wrapping a bound method
        return obj.__self__ is owner and obj.__func__ is inherited
    return obj is inherited


def unwrap(owner: Any, name: str, wrapper: Wrapper) -> bool:
    """Take ``wrapper`` out of ``owner.name``, leaving any other wrapper in place; False if it was absent."""
    current = own_attribute(owner, name)
    if is_ours(current, wrapper):
        original = current.__wrapped__
        if _same_as_inherited(owner, name, original):
            delattr(owner, name)
        else:
            setattr(owner, name, original)
        return True
    outer = None
    for node in chain(current):
        if is_ours(node, wrapper) and outer is not None:
            outer.__wrapped__ = node.__wrapped__  # someone wrapped on top of us: splice ours out of their chain
            return True
        outer = node
    return False
