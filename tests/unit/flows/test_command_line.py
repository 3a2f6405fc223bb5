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
    first, labelled, failed, unfinished = records
    assert all(isinstance(r.pop("disk_bytes"), int) for r in records)
    assert first == {"host": "vm", "id": ids[0], "path": str(tmp_path / "backups" / "vm" / ids[0]),
                     "time": "2026-12-03T08:01:05Z", "label": None, "label_studio_version": "1.23.2",
                     "size_bytes": 4096, "projects": 2, "tasks": 10, "annotations": 7, "state": "verified",
                     "problem": None}
    assert labelled["label"] == "before-upgrade" and labelled["state"] == "verified"
    assert (failed["state"], failed["problem"]) == ("failed", "integrity skipped")
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


# ------------------------------------------------------------------------------------------------
# Bad input, in a table: one line on stderr with the documented exit code, never a traceback. A host on a
# closed port (127.0.0.1:1) proves the option was refused before connecting: connecting would say exit 3.

CLOSED = "127.0.0.1:1"


@pytest.fixture(scope="module")
def hangs_up():
    """A port that accepts and closes before any SSH banner (a firewall's or a wrong service's)."""
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


BAD_INPUTS = [
    (("-H", CLOSED, "logs", "--lines", "abc"), 2, "--lines 'abc': must be a whole number"),
    (("-H", CLOSED, "restart", "--config", "/nonexistent/vm.yaml"), 2, "no such profile file (given by --config)"),
    (("-H", CLOSED, "restore-server", "--offsite", "--at", "yesterday-ish"), 2, "--at 'yesterday-ish' is not a date"),
    (("-H", CLOSED, "backup", "--from-offsite", "--at", "in a while"), 2, "--at 'in a while' is not a date"),
    (("-H", CLOSED, "backup", "--at", "2026-12-01 10:00"), 2, "--at goes with --from-offsite"),
    (("-H", CLOSED, "backup", "--label", "Bad Label!"), 2, "label 'Bad Label!' must be lower-case"),
    (("-H", CLOSED, "migrate-db", "--to", "mysql"), 2, "--to must be one of: sqlite, postgresql (not 'mysql')"),
    (("-H", CLOSED, "migrate-db"), 2, "where to? --to postgresql or --to sqlite"),
    (("-H", CLOSED, "upgrade", "--version", "notaversion"), 2, "'notaversion' is not a version pip accepts"),
    (("-H", CLOSED, "upgrade", "--health-timeout", "soon"), 2, "--health-timeout 'soon': must be a whole number"),
    (("-H", "local", "status"), 2, "'local' is the reserved name of this machine's snapshots"),
    (("restore-local", "--snapshot", "nope", "--dry-run", "--force"), 6, "no snapshot 'nope'"),
    (("prune", "--keep-daily", "many"), 2, "--keep-daily 'many': must be a whole number"),
    (("studio.session", "--studio-url", "x", "--port", "http"), 2, "--port 'http': must be a whole number"),
    (("offsite", "--iam-policy"), 2, "-H"),
    (("-H", CLOSED, "export"), 2, "name one --project ID, or --all"),
    (("-H", CLOSED, "export", "--project", "3", "--all"), 2, "name one --project ID, or --all"),
    (("-H", CLOSED, "export", "--project", "three"), 2, "--project 'three': must be a whole number"),
    (("-H", CLOSED, "export", "--project", "0"), 2, "--project 0: a project id is a number from 1"),
    (("-H", CLOSED, "export", "--project", "3", "--format", "json; rm"), 2, "--format 'json; rm': a format is a word"),
    (("-H", CLOSED, "export", "--project", "3", "--out", "/nonexistent/dir/x.json"), 2,
     "the folder /nonexistent/dir does not exist"),
    (("-H", "nosuchhost.invalid", "status"), 3, "cannot resolve host 'nosuchhost.invalid'"),
    (("-H", CLOSED, "status"), 3, "refused the connection"),
]


@pytest.mark.parametrize("args, code, words", BAD_INPUTS, ids=[" ".join(row[0]) for row in BAD_INPUTS])
def test_bad_input_is_one_line_with_its_exit_code(tmp_path, args, code, words):
    run = fab(*args, home=tmp_path)
    assert run.returncode == code, run.stdout + run.stderr
    assert run.stderr.startswith("error: ") and words in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stdout + run.stderr


def test_a_port_that_hangs_up_before_the_banner_is_one_line(tmp_path, hangs_up):
    run = fab("-H", hangs_up, "status", home=tmp_path)
    assert run.returncode == 3
    assert run.stderr.startswith("error: SSH to ") and run.stderr.count("\n") == 1, run.stderr   # not paramiko's log
    # paramiko adds the socket's own words when the peer resets instead of closing ("...banner[Errno 104] ...").
    assert f"@{hangs_up} failed: Error reading SSH protocol banner" in run.stderr, run.stderr


@pytest.mark.parametrize("out, words", [("missing/dir/policy.json", "does not exist"), (".", "is a folder")])
def test_an_out_file_in_a_folder_that_is_not_there_is_one_line(tmp_path, out, words):
    run = fab("studio.iam-policy", "--region", "eu-west-2", "--account-id", "123456789012", "--domain-id", "d-abc",
              "--user-profile", "me", "--out", str(tmp_path / out), home=tmp_path)
    assert run.returncode == 2 and words in run.stderr and run.stderr.count("\n") == 1, run.stderr
