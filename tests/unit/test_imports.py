"""Every module of the toolkit imports (no cycles, no missing names), whether or not a test uses it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import tasks

ROOT = Path(tasks.__file__).parent
# Files, not pkgutil.walk_packages: tasks/core has no __init__.py, and walk_packages skips namespace packages.
MODULES = sorted(".".join(("tasks",) + path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                 for path in ROOT.rglob("*.py"))


def test_every_module_is_found():
    assert {"tasks", "tasks.core.connect", "tasks.core.commands", "tasks.core.commands.data", "tasks.core.data.swap",
            "tasks.core.data.snapshots", "tasks.core.transfer", "tasks.data"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    assert importlib.import_module(name).__name__ == name
