"""Reading config2.yaml the way MetaGPT 0.7 does: its own ``Config.from_yaml_file`` or ``Config.default()``.

A broken file is a :class:`ConfigError` whose message names the file and the field, never a value (a value may be
the key).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from ..metagpt_env import metagpt_root
from .facts import ConfigFacts, Facts


class ConfigError(Exception):
    """The configuration cannot be loaded by MetaGPT 0.7; the message is safe to print."""


def show_path(path: Path) -> str:
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _yaml_error(path: Path, exc: Exception) -> str:
    """A YAML error without the offending line's text (it could hold the key)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{show_path(path)} is not valid YAML: {problem}{where}"


def _validation_error(exc: Exception) -> str:
    """pydantic's errors as ``field: message``, never with the input values (they may hold secrets)."""
    try:
        errors = exc.errors()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001  (not a pydantic error after all: its type name is all we show)
        return type(exc).__name__
    parts = []
    for error in errors:
        loc = ".".join(str(part) for part in error.get("loc", ())) or "(top level)"
        parts.append(f"{loc}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def _read_yaml(config_cls: Any, path: Path) -> Any:
    import yaml

    try:
        return config_cls.read_yaml(path)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{show_path(path)} cannot be read: {exc.__class__.__name__}: {exc}") from None


def load_config(config2: Any, explicit: Optional[Path]) -> tuple[Any, list[Path], list[Path]]:
    """MetaGPT's own loader: ``Config.from_yaml_file(explicit)`` or ``Config.default()`` on the real paths.

    Returns ``(config, files used, files searched)``; raises :class:`ConfigError`.
    """
    from pydantic import ValidationError

    config_cls = config2.Config
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: no such file")
        data = _read_yaml(config_cls, explicit)
        if not isinstance(data, dict):
            raise ConfigError(f"{show_path(explicit)} is empty or not a YAML mapping")
        try:
            return config_cls.from_yaml_file(explicit), [explicit], [explicit]
        except ValidationError as exc:
            raise ConfigError(f"{show_path(explicit)}: {_validation_error(exc)}") from None
    root = metagpt_root()
    searched = [root / "config" / "config2.yaml", Path.home() / ".metagpt" / "config2.yaml"]
    used = [path for path in searched if path.exists()]
    if not used:
        raise ConfigError("no config2.yaml found: MetaGPT 0.7 reads " + " and ".join(show_path(p) for p in searched)
                          + "; neither exists (create ~/.metagpt/config2.yaml, or pass --config PATH)")
    llm_from: Optional[Path] = None
    for path in used:
        data = _read_yaml(config_cls, path)
        if not isinstance(data, dict):
            raise ConfigError(f"{show_path(path)} is empty or not a YAML mapping; MetaGPT 0.7 cannot start with it")
        if "llm" in data:
            llm_from = path
    saved_root = config2.METAGPT_ROOT
    config2.METAGPT_ROOT = root  # Config.default() reads this module global; the import used a scratch root
    try:
        return config_cls.default(), used, searched
    except ValidationError as exc:
        where = show_path(llm_from) if llm_from else " and ".join(show_path(p) for p in used) + " (no llm: block)"
        raise ConfigError(f"{where}: {_validation_error(exc)}") from None
    except Exception as exc:  # noqa: BLE001  (whatever else Config.default() trips on: reported, never raised)
        raise ConfigError(f"MetaGPT cannot load {', '.join(show_path(p) for p in used)}: "
                          f"{type(exc).__name__}") from None
    finally:
        config2.METAGPT_ROOT = saved_root


def gather_config(facts: Facts, explicit: Optional[Path]) -> Facts:
    """The ``config`` facts (or ``config_error``): MetaGPT's own loader on the real paths."""
    if facts.metagpt is None or not facts.metagpt.usable:
        return facts
    import metagpt.config2 as config2

    try:
        config, used, searched = load_config(config2, explicit)
    except ConfigError as exc:
        return dataclasses.replace(facts, config_error=str(exc))
    llm = config.llm
    return dataclasses.replace(facts, config=ConfigFacts(
        api_type=getattr(llm.api_type, "value", str(llm.api_type)), base_url=llm.base_url, model=llm.model,
        api_key=llm.api_key, max_token=llm.max_token, calc_usage=llm.calc_usage, proxy=llm.proxy,
        files=tuple(used), searched=tuple(searched), llm=llm))
