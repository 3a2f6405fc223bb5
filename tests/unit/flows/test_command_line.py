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


# ------------------------------------------------------------------------------------------------
# backups: the JSON a script reads, and ids a person copies from a narrow terminal


def snapshot_folders(root: Path) -> list[str]:
    import datetime as dt

    from tasks.core.data.catalog import MANIFEST, FileEntry, Manifest, snapshot_id
    made = []
    for minute, integrity, label in ((1, "ok", None), (2, "ok", "before-upgrade"), (3, "skipped", None)):
        created = dt.datetime(2026, 12, 3, 8, minute, 5, tzinfo=dt.timezone.utc)
        folder = root / "vm" / snapshot_id(created, label)
        folder.mkdir(parents=True)
        manifest = Manifest("vm", created.isoformat(), label, "1.23.2", {"host": "vm"},
                            [FileEntry("label_studio.sqlite3", 4096, "0" * 64)], integrity,
                            {"projects": 2, "tasks": 10, "annotations": 7}, True)
        (folder / MANIFEST).write_text(manifest.to_json())
        made.append(folder.name)
    unfinished = root / "vm" / snapshot_id(dt.datetime(2026, 12, 3, 8, 4, 0, tzinfo=dt.timezone.utc))
    unfinished.mkdir()
    return made + [unfinished.name]


def test_backups_json_lists_every_snapshot_with_stable_keys(tmp_path):
    import json

    from tasks.core.data.catalog import LISTING_KEYS
    ids = snapshot_folders(tmp_path / "backups")
    run = subprocess.run([sys.executable, "-m", "fabric", "backups", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path),
                                                      "LSVM_BACKUPS_DIR": str(tmp_path / "backups")})
    assert run.returncode == 0, run.stderr
    records = json.loads(run.stdout)
    assert [r["id"] for r in records] == ids
    assert all(tuple(r) == LISTING_KEYS for r in records)
    first, labelled, unchecked, unfinished = records
    assert first == {"host": "vm", "id": ids[0], "path": str(tmp_path / "backups" / "vm" / ids[0]),
                     "time": "2026-12-03T08:01:05Z", "label": None, "label_studio_version": "1.23.2",
                     "size_bytes": 4096, "projects": 2, "tasks": 10, "annotations": 7, "state": "verified",
                     "problem": None}
    assert labelled["label"] == "before-upgrade" and labelled["state"] == "verified"
    assert (unchecked["state"], unchecked["problem"]) == ("unchecked", "integrity skipped")
    assert unfinished["state"] == "incomplete" and unfinished["size_bytes"] is None


def test_backups_never_cuts_an_id_on_a_narrow_terminal(tmp_path):
    ids = snapshot_folders(tmp_path / "backups")
    run = subprocess.run([sys.executable, "-m", "fabric", "backups"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "HOME": str(tmp_path), "COLUMNS": "50",
                                          "LSVM_BACKUPS_DIR": str(tmp_path / "backups")})
    assert run.returncode == 0, run.stderr
    for sid in ids:
        assert sid in run.stdout, run.stdout
