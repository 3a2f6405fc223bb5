"""The import graph: every module imports, no cycle, no import of ours hidden in a function, task modules
import no other task module, and the programs run on the server need only the standard library."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tasks
from dev.import_graph import cycles, read_graph

ROOT = Path(tasks.__file__).parent
MODULES = sorted(".".join(("tasks",) + path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                 for path in ROOT.rglob("*.py"))


def test_every_module_is_found():
    assert {"tasks", "tasks.core.connect", "tasks.core.commands", "tasks.core.commands.data", "tasks.core.data.swap",
            "tasks.core.data.snapshots", "tasks.core.transfer", "tasks.data"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    assert importlib.import_module(name).__name__ == name


GRAPH = read_graph()
SYSTEM_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else shutil.which("python3")
ONSERVER = sorted(m for m in GRAPH.edges if m.startswith("tasks.core.onserver."))
TASK_MODULES = sorted(m for m in GRAPH.edges if m.count(".") == 1 and m != "tasks.core")
# The oldest Python of a system provision accepts (Ubuntu 22.04's; check_host refuses older ones).
OLDEST_SERVER_PYTHON = (3, 10)


def test_no_import_cycles():
    assert cycles(GRAPH.edges) == []


def test_no_module_of_ours_is_imported_inside_a_function():
    assert GRAPH.late == []


def test_task_modules_import_no_other_task_module():
    assert TASK_MODULES == ["tasks.adopt", "tasks.data", "tasks.export", "tasks.media", "tasks.migrate",
                            "tasks.offsite", "tasks.provision", "tasks.service", "tasks.site", "tasks.studio", "tasks.upgrade"]
    for name in TASK_MODULES:
        assert not {m for m in GRAPH.edges[name] if m in TASK_MODULES}, name


def test_the_graph_reader_sees_a_cycle_and_a_late_import(tmp_path):
    root = tmp_path / "pkg"
    (root / "inner").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "inner" / "__init__.py").write_text("")
    (root / "a.py").write_text("from pkg.inner import b\n")
    (root / "inner" / "b.py").write_text("from .. import a\n\ndef f():\n    from pkg import c\n")
    (root / "c.py").write_text("import json\n")
    graph = read_graph(root)
    assert cycles(graph.edges) == [["pkg.a", "pkg.inner.b"]]
    assert graph.late == [("pkg.inner.b", "pkg.c", 4)]
    assert graph.outside["pkg.c"] == {"json"}


# Debian packages a server program may import when they are there, and works without: python3-xxhash
# (provision installs it) makes page digests faster.
OPTIONAL_ON_SERVER = {"xxhash"}


@pytest.mark.parametrize("name", ONSERVER)
def test_a_program_run_on_the_server_imports_only_the_standard_library(name):
    assert GRAPH.edges[name] == set()
    assert GRAPH.outside[name] <= set(sys.stdlib_module_names) | {"__future__"} | OPTIONAL_ON_SERVER


@pytest.mark.parametrize("name", ONSERVER)
def test_a_program_run_on_the_server_is_valid_python_of_the_oldest_supported_system(name):
    path = ROOT.parent / (name.replace(".", "/") + ".py")
    ast.parse(path.read_text(), str(path), feature_version=OLDEST_SERVER_PYTHON)
    # and it loads in the system's own python3, isolated and without site-packages, as on a server
    loaded = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c", "import runpy, sys; runpy.run_path(sys.argv[1], "
                             "run_name='loaded_by_test')", str(path)], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
