"""The steps of upgrade, migrate-db and adopt: the plan they print is the list they run."""

from __future__ import annotations

from tasks.core import procedure
from tasks.core.procedure import Step


def test_the_plan_printed_is_the_list_run_in_the_same_order(capsys):
    done = []
    steps = [Step.of(lambda: done.append("a"), "first"), Step.of(lambda: done.append("b"), "second", "if it fails")]
    procedure.show(steps, numbered=True)
    procedure.run(steps)
    assert capsys.readouterr().out.splitlines() == ["  1. first", "  2. second", "  3. if it fails"]
    assert done == ["a", "b"] and procedure.lines(steps) == ["first", "second", "if it fails"]
