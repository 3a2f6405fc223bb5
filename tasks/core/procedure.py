"""Tasks that change a server in a fixed order (upgrade, migrate-db, adopt) as a list of steps, each the
words it adds to the plan and the act that does it. The plan a task prints is the list it then runs, as
provision's printed plan is the list of Changes it applies: a step cannot be shown and skipped, or run
and not shown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from tasks.core import ui


@dataclass(frozen=True)
class Step:
    says: tuple[str, ...]          # its lines in the plan: what it does, and what happens if it fails
    act: Callable[[], None]

    @classmethod
    def of(cls, act: Callable[[], None], *says: str) -> "Step":
        return cls(tuple(says), act)


def lines(steps: Iterable[Step]) -> list[str]:
    return [line for step in steps for line in step.says]


def show(steps: Iterable[Step], *, numbered: bool = False) -> None:
    for number, line in enumerate(lines(steps), 1):
        ui.out.print(f"  {number}. {line}" if numbered else f"  - {line}")


def run(steps: Iterable[Step]) -> None:
    for step in steps:
        step.act()
