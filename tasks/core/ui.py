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

# emoji=False: text such as a certificate fingerprint ("…:CD:79…") must print verbatim, not as ":cd:" emoji.
out = Console(theme=_THEME, highlight=False, emoji=False, soft_wrap=True)
err = Console(theme=_THEME, highlight=False, emoji=False, stderr=True, soft_wrap=True)


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


def transfer_progress():
    """A byte progress bar on stderr (transfer speed, ETA); quiet when stderr is not a terminal."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True)


def count_progress():
    """A progress bar of things counted (n of total, elapsed, ETA) on stderr; quiet when stderr is not a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=True)


def transfer_summary(what: str, size: int, seconds: float, wire: int | None = None) -> None:
    rate = size / seconds if seconds > 0 else 0
    on_wire = f", {human_bytes(wire)} on the wire" if wire is not None else ""
    out.print(f"  {what}: {human_bytes(size)} in {seconds:.1f}s ({human_bytes(int(rate))}/s{on_wire})")


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
