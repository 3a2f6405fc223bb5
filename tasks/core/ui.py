"""The one place consoles are built: results go to stdout, errors and progress to stderr."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.theme import Theme

_THEME = Theme(
    {
        "changed": "yellow",
        "unchanged": "green",
        "ok": "green",
        "warn": "yellow",
        "bad": "bold red",
        "muted": "dim",
    }
)

out = Console(theme=_THEME, highlight=False, soft_wrap=True)
err = Console(theme=_THEME, highlight=False, stderr=True, soft_wrap=True)


def error(message: str) -> None:
    err.print(f"[bad]error:[/bad] {escape(message)}")


def warn(message: str) -> None:
    err.print(f"[warn]warning:[/warn] {escape(message)}")


def step(changed: bool, what: str) -> None:
    """One line per step, pyinfra-style: a mark, then what was done or found."""
    mark = "[changed]~ changed  [/changed]" if changed else "[unchanged]= unchanged[/unchanged]"
    out.print(f"{mark} {escape(what)}")


def ask_secret(prompt: str) -> str:
    """A hidden prompt on the terminal (nothing echoed, nothing logged)."""
    return err.input(prompt, password=True)
