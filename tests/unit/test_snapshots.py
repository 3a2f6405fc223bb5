"""Server snapshots through a recording host: the data lock, a full backup streamed and checked, an
unchanged backup hard-linked without a stream, and a corrupted stream refused with nothing left behind.
The lock script itself is also run for real with flock."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import PurePosixPath

import pytest

from tasks.core import catalog, commands, snapshots
from tasks.core.catalog import DATABASE, SECRET_ENV
from tasks.core.commands import data
from tasks.core.errors import LockedError, RemoteError, SnapshotError
from tests.unit.conftest import PROFILE
from tests.unit.fakehost import FakeHost, fail, ok

LOCK = r"flock -n 9"
WORK = "/var/tmp/lsvm-backup.Ab12Cd"
DB = b"SQLite format 3\0 pretend database"
ENV = b"SECRET_KEY=abc\n"
PNG = b"\x89PNG pretend image"
MEDIA_FILE = "media/upload/1/cat.png"
MARKER = {"counter": 7, "size": len(DB), "mtime_ns": 1, "inode": 2}
REPORT = {"integrity_check": "ok", "label_studio": True, "missing_tables": [], "error": None,
          "counts": {"projects": 1, "tasks": 2, "annotations": 3}}


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# ------------------------------------------------------------------------------------------------
# The data lock


def test_a_free_lock_runs_the_body_then_releases_the_lock():
    host = FakeHost(alias="vm").stream(LOCK, b"LOCKED\n")
    with snapshots.server_lock(host, PROFILE, "backup"):
        [channel] = host.channels
        assert not channel.write_shut  # held while the body runs
    assert channel.write_shut and channel.closed
    assert str(PROFILE.remote.lock_file) in channel.command
    assert "backup by " in channel.command


def test_a_busy_lock_names_its_holder_and_the_body_never_runs():
    host = FakeHost(alias="vm").stream(LOCK, b"BUSY\npush-local-db by bob@laptop since 2025-01-01 10:00:00 UTC\n")
    with pytest.raises(LockedError, match="vm is busy: push-local-db by bob@laptop since 2025-01-01") as caught:
        with snapshots.server_lock(host, PROFILE, "backup"):
            pytest.fail("the body ran without the lock")
    assert caught.value.exit_code == 7
    assert host.channels[0].closed


@pytest.mark.parametrize("stdout", [b"", b"sudo: a password is required\n"])
def test_any_other_answer_is_a_remote_error(stdout):
    host = FakeHost(alias="vm").stream(LOCK, stdout, status=1)
    with pytest.raises(RemoteError, match="could not take the data lock on vm"):
        with snapshots.server_lock(host, PROFILE, "backup"):
            pytest.fail("the body ran without the lock")


def test_a_failure_on_release_is_reported():
    host = FakeHost(alias="vm").stream(LOCK, b"LOCKED\n", stderr=b"flock: broken\n", status=1)
    with pytest.raises(RemoteError, match="releasing the data lock failed on vm: flock: broken"):
        with snapshots.server_lock(host, PROFILE, "backup"):
            pass


def test_the_lock_script_locks_out_a_second_task_until_the_first_ends(tmp_path):
    lock_file = tmp_path / "-ls data.lock"

    def start(holder):
        return subprocess.Popen(["sh", "-c", data.lock(lock_file, holder)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    first = start("backup by 'alice' since $(now)")
    try:
        assert first.stdout.readline() == b"LOCKED\n"
        second = start("prune")
        out, _ = second.communicate(timeout=10)
        assert out == b"BUSY\nbackup by 'alice' since $(now)\n"
    finally:
        first.communicate(timeout=10)  # closes stdin: the first task ends and lets go
    third = start("restore")
    out, _ = third.communicate(timeout=10)
    assert out == b"LOCKED\n"


# ------------------------------------------------------------------------------------------------
# Backups


def tar_stream(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A gzip tar as the server's stream command would send it: {name: (content, mtime)}."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w|") as tar:
        for name, (content, mtime) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(content), mtime
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue())


def prepared(**changes) -> dict:
    info = {"database_exists": True, "marker": MARKER, "database": {"size": len(DB)},
            "env": {"size": len(ENV), "sha256": sha(ENV)},
            "media": [{"path": MEDIA_FILE, "size": len(PNG), "mtime": 1700000000}],
            "label_studio_version": "1.23.2"}
    return {**info, **changes}


def server(info: dict, *, checked_sha: str = sha(DB)) -> FakeHost:
    host = FakeHost(alias="vm")
    host.answer(r"mktemp -d", ok(WORK + "\n"))
    host.answer(r"^stat -c %s", ok(f"{len(DB)}\n"))
    host.answer(r"^df -B1", ok("999999999999\n"))
    host.answer(r"^python3 -c .* prepare ", ok(json.dumps(info) + "\n"))
    host.answer(r"command -v zstd", ok("gzip\n"))
    host.answer(r"^cat .*check\.json", ok(json.dumps({"sha256": checked_sha, "report": REPORT}) + "\n"))
    host.stream(r"tar --ignore-failed-read", tar_stream({DATABASE: (DB, 1), SECRET_ENV: (ENV, 1),
                                                         MEDIA_FILE: (PNG, 1700000000)}))
    return host


@pytest.fixture
def backups(tmp_path, monkeypatch):
    monkeypatch.setenv("LSVM_BACKUPS_DIR", str(tmp_path / "backups"))
    return tmp_path / "backups" / "vm"


def test_a_first_backup_streams_everything_and_checks_it(backups):
    host = server(prepared())
    snapshot = snapshots.take_server_snapshot(host, PROFILE, label="nightly")
    assert snapshot.verified and snapshot.label == "nightly"
    m = snapshot.manifest
    assert {f.path: (f.size, f.sha256) for f in m.files} == {
        DATABASE: (len(DB), sha(DB)), SECRET_ENV: (len(ENV), sha(ENV)), MEDIA_FILE: (len(PNG), sha(PNG))}
    assert m.counts == REPORT["counts"] and m.source["marker"] == MARKER and m.label_studio_version == "1.23.2"
    assert (snapshot.path / MEDIA_FILE).read_bytes() == PNG
    assert (snapshot.path / DATABASE).stat().st_mode & 0o777 == 0o600
    work = PurePosixPath(WORK)
    assert data.write_file_list(work, [SECRET_ENV, MEDIA_FILE]) in host.commands
    assert host.channels[0].command == data.stream_snapshot(work, PROFILE.remote.data_dir, "gzip",
                                                             database=True, listed_files=True)
    assert host.commands[-1] == commands.remove(WORK)  # the server's temp folder goes last


def test_a_backup_of_an_unchanged_server_hard_links_everything_and_streams_nothing(backups):
    first = snapshots.take_server_snapshot(server(prepared()), PROFILE, label=None)
    host = server(prepared(unchanged=True, database=None))
    second = snapshots.take_server_snapshot(host, PROFILE, label=None)
    assert host.channels == []
    assert second.id != first.id and second.verified
    for name in (DATABASE, SECRET_ENV, MEDIA_FILE):
        assert (second.path / name).stat().st_ino == (first.path / name).stat().st_ino
    assert second.manifest.counts == first.manifest.counts
    # The server compares its change counter with the one the previous snapshot recorded.
    stored = json.dumps(first.manifest.source["marker"])
    assert json.loads(stored) == MARKER
    assert data.prepare_copy(PROFILE, PurePosixPath(WORK), stored) in host.commands


def test_a_backup_whose_database_hash_differs_leaves_no_snapshot_behind(backups):
    host = server(prepared(), checked_sha="0" * 64)
    with pytest.raises(SnapshotError, match="sha256 differs between vm and this machine"):
        snapshots.take_server_snapshot(host, PROFILE, label=None)
    assert catalog.list_snapshots(backups) == []
    assert host.commands[-1] == commands.remove(WORK)


def test_a_server_without_a_database_is_refused(backups):
    host = server({"database_exists": False})
    with pytest.raises(SnapshotError, match="no Label Studio database on vm"):
        snapshots.take_server_snapshot(host, PROFILE, label=None)
    assert catalog.list_snapshots(backups) == []
    assert host.channels == []


def test_a_full_temp_space_is_said_in_words(backups):
    host = server(prepared(copy_error="database or disk is full"))
    with pytest.raises(SnapshotError, match=r"temp space \(/var/tmp\) is full"):
        snapshots.take_server_snapshot(host, PROFILE, label=None)


def test_no_temp_folder_is_a_snapshot_error(backups):
    host = FakeHost(alias="vm").answer(r"mktemp -d", fail("mkdir: cannot create directory: Read-only file system"))
    with pytest.raises(SnapshotError, match="cannot create a temp folder in /var/tmp on vm: .*Read-only"):
        snapshots.take_server_snapshot(host, PROFILE, label=None)


@pytest.mark.parametrize("stdout, counts", [("", None), ('{"projects": 1, "tasks": 2, "annotations": 0}\n',
                                                        {"projects": 1, "tasks": 2, "annotations": 0})])
def test_server_counts_reads_the_live_database(stdout, counts):
    host = FakeHost().answer(r"counts", ok(stdout))
    assert snapshots.server_counts(host, PROFILE) == counts
    assert host.commands == [data.server_counts(PROFILE.remote.database)]
