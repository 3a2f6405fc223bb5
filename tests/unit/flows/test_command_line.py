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


# ------------------------------------------------------------------------------------------------
# fab config: a profile checked without a connection, every setting with where it came from


def test_config_shows_each_setting_from_the_file_the_default_or_the_environment(tmp_path):
    profile = tmp_path / "vm.yaml"
    profile.write_text("server_name: labels.example.org\nlabel_studio:\n  workers: 3\n")
    env = {**os.environ, "HOME": str(tmp_path), "COLUMNS": "200", "LABEL_STUDIO_USERNAME": "admin@example.org",
           "LABEL_STUDIO_PASSWORD": "a-secret-never-shown", "LSVM_BACKUPS_DIR": str(tmp_path / "snapshots")}
    env.pop("LSVM_CONFIG", None)
    run = subprocess.run([sys.executable, "-m", "fabric", "config", "--config", str(profile)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = {line.split()[0]: line.split() for line in run.stdout.splitlines() if line.strip()}
    assert f"{profile} is valid" in run.stdout
    assert lines["server_name"][1:] == ["labels.example.org", f"{profile}:1"]
    assert lines["label_studio.workers"][1:] == ["3", f"{profile}:3"]
    assert lines["http_port"][1:] == ["80", "default"]
    assert lines["label_studio.admin_email"][1:3] == ["admin@example.org", "environment"]
    assert lines["$LABEL_STUDIO_PASSWORD"][1] == "(set)" and "a-secret-never-shown" not in run.stdout
    assert lines["$LSVM_BACKUPS_DIR"][1] == str(tmp_path / "snapshots")


@pytest.mark.parametrize("content, words", [
    (b"server_name: caf\xe9.example.org\n", "not UTF-8 text"),
    (b"http_port: 8080\n", ":1: 'http_port' 8080 is also label_studio.port"),
    (b"label_studio:\n  port: '8080'\n", "'label_studio.port' must be a whole number"),
    (b"nginx:\n  gzip: true\n", "unknown key 'nginx.gzip'"),
    (b"paths: [a, b]\n", "'paths' must be a mapping of keys"),
    (b"server_name: [unclosed\n", "YAML syntax error"),
])
def test_config_refuses_a_bad_profile_in_one_line(tmp_path, content, words):
    profile = tmp_path / "vm.yaml"
    profile.write_bytes(content)
    run = fab("config", "--config", str(profile), home=tmp_path)
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {profile}") and words in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
