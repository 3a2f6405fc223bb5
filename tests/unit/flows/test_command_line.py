"""The command line as users type it: no short flag nobody chose (`-h` is only ever help), and a bad option
value is one line on stderr with the usage exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import ns
from tasks.core.errors import UsageError

ROOT = Path(__file__).resolve().parents[3]


def fab(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home)}
    env.pop("LSVM_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "fabric", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("name", sorted(ns.task_names))
def test_no_task_has_a_short_flag(name):
    shorts = [n for argument in ns[name].get_arguments() for n in argument.names if len(n) == 1]
    assert shorts == [], f"{name} has short flags {shorts}"


def test_h_after_a_task_is_its_help(tmp_path):
    run = fab("status", "-h", home=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Docstring:" in run.stdout and "--check-updates" in run.stdout


@pytest.mark.parametrize("args, flag", [
    (("-H", "vm", "logs", "--lines", "abc"), "--lines 'abc'"),
    (("-H", "vm", "restore-server", "--health-timeout", "soon"), "--health-timeout 'soon'"),
    (("-H", "vm", "upgrade", "--health-timeout", "1.5"), "--health-timeout '1.5'"),
    (("prune", "--keep-last", "abc"), "--keep-last 'abc'"),
    (("prune", "--keep-weekly", "x"), "--keep-weekly 'x'"),
    (("studio.session", "--studio-url", "x", "--port", "http"), "--port 'http'"),
])
def test_a_value_that_is_not_a_number_is_one_line_and_the_usage_code(tmp_path, args, flag):
    run = fab(*args, home=tmp_path)
    assert run.returncode == UsageError.exit_code
    assert run.stderr == f"error: {flag}: must be a whole number\n"
    assert "Traceback" not in run.stdout + run.stderr
