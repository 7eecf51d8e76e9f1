"""Output shared by the CLI commands: one mark per line (ok / warning / problem), rich on a TTY, plain otherwise.

Every line goes through :meth:`Report.scrub`, so a key registered with :meth:`Report.secret` is masked even if
some message (an exception text, a URL) happened to contain it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Optional, TextIO

from .masking import mask

OK, WARNING, PROBLEM = "ok", "warning", "problem"
LEVELS = (OK, WARNING, PROBLEM)

_RICH_MARKS = {OK: "[green]✓[/green]", WARNING: "[yellow]![/yellow]", PROBLEM: "[bold red]✗[/bold red]"}
_PLAIN_WIDTH = 8  # len("problem") + 1


def worst(levels: Iterable[str]) -> str:
    """The most serious level among ``levels`` (ok when empty)."""
    found = set(levels)
    for level in (PROBLEM, WARNING):
        if level in found:
            return level
    return OK


def scrub_text(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of a secret by its masked form (longest first, so a trimmed key is caught too)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, mask(secret))
    return text


def scrub_obj(obj: Any, secrets: Iterable[str]) -> Any:
    """:func:`scrub_text` applied to every string in a JSON-like structure."""
    secrets = list(secrets)
    if isinstance(obj, str):
        return scrub_text(obj, secrets)
    if isinstance(obj, dict):
        return {scrub_obj(k, secrets): scrub_obj(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub_obj(v, secrets) for v in obj]
    return obj


class Report:
    """Writes a command's lines to ``stream``; rich renders them only when the stream is a terminal."""

    def __init__(self, stream: Optional[TextIO] = None, use_rich: Optional[bool] = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self._secrets: list[str] = []
        if use_rich is None:
            use_rich = bool(getattr(self.stream, "isatty", lambda: False)())
        self._console = None
        if use_rich:
            try:
                from rich.console import Console

                self._console = Console(file=self.stream, highlight=False, soft_wrap=True)
            except Exception:  # noqa: BLE001  (rich missing or broken: plain text is always fine)
                self._console = None

    @property
    def rich(self) -> bool:
        return self._console is not None

    def secret(self, *values: Optional[str]) -> None:
        """Register values that must never be printed in full."""
        for value in values:
            if value:
                self._secrets.append(value)
                if value.strip() and value.strip() != value:
                    self._secrets.append(value.strip())

    def scrub(self, text: str) -> str:
        return scrub_text(text, self._secrets)

    def _emit(self, plain: str, markup: Optional[str] = None) -> None:
        if self._console is not None:
            self._console.print(markup if markup is not None else self._escape(plain))
        else:
            self.stream.write(plain + "\n")
            self.stream.flush()

    @staticmethod
    def _escape(text: str) -> str:
        from rich.markup import escape

        return escape(text)

    def title(self, text: str) -> None:
        text = self.scrub(text)
        self._emit(text, f"[bold]{self._escape(text)}[/bold]" if self.rich else None)

    def line(self, text: str = "") -> None:
        self._emit(self.scrub(text))

    def dim(self, text: str) -> None:
        text = self.scrub(text)
        self._emit(text, f"[dim]{self._escape(text)}[/dim]" if self.rich else None)

    def check(self, level: str, text: str, indent: str = "") -> None:
        """One line with a clear mark; continuation lines of ``text`` are aligned under the message."""
        text = self.scrub(text)
        if self.rich:
            pad = indent + "  "
            body = self._escape(text).replace("\n", "\n" + pad)
            self._emit(text, f"{indent}{_RICH_MARKS[level]} {body}")
        else:
            pad = indent + " " * _PLAIN_WIDTH
            self._emit(f"{indent}{level:<{_PLAIN_WIDTH}}" + text.replace("\n", "\n" + pad))

    def field(self, label: str, value: str, indent: str = "  ", width: int = 12) -> None:
        """An aligned ``label  value`` pair."""
        value = self.scrub(value)
        plain = f"{indent}{label:<{width}} {value}"
        self._emit(plain, f"{indent}[dim]{self._escape(label):<{width}}[/dim] {self._escape(value)}"
                   if self.rich else None)
