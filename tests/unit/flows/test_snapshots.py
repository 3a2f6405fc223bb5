"""Server snapshots through a recording host: the data lock, a full backup streamed and checked, an
unchanged backup hard-linked without a stream, and a corrupted stream refused with nothing left behind.
The lock script itself is also run for real with flock."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
from pathlib import PurePosixPath

import pytest

from tasks.core.commands import data
from tasks.core.data import catalog, engine, snapshots
from tasks.core.defaults import DATABASE, SECRET_ENV
from tasks.core.errors import LockedError, RemoteError, SnapshotError
from tasks.core.onserver import sqlite
from tests.unit.fakehost import FakeHost, Stream, fail, ok
from tests.unit.samples import (
    DB,
    ENV,
    LOCK,
    MARKER,
    MEDIA_FILE,
    PNG,
    PROFILE,
    REPORT,
    WORK,
    prepared,
    server,
    sha,
    tar_stream,
)

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


def lock_script(tmp_path, holder: str) -> str:
    run = tmp_path / "-run dir"
    return data.lock(run / "-ls data.lock", run / "-ls swap.lock", holder, dir_owner=getpass.getuser())


def test_the_lock_lives_in_a_root_only_folder_not_in_the_world_writable_run_lock():
    script = data.data_lock(PROFILE, "backup")
    assert PROFILE.remote.lock_file == PurePosixPath("/run/lsvm/label-studio-data.lock")
    assert "install -d -m 0700 -o root -g root /run/lsvm && exec 9>>/run/lsvm/label-studio-data.lock" in script
    assert "/run/lock" not in script


def test_the_lock_script_locks_out_a_second_task_until_the_first_ends(tmp_path):
    def start(holder):
        return subprocess.Popen(["sh", "-c", lock_script(tmp_path, holder)], stdin=subprocess.PIPE,
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
    assert oct((tmp_path / "-run dir").stat().st_mode & 0o777) == "0o700"


def test_the_lock_is_busy_while_a_swap_job_still_holds_its_own_lock(tmp_path):
    swap_lock = tmp_path / "-run dir" / "-ls swap.lock"
    (tmp_path / "-run dir").mkdir()
    job = subprocess.Popen(["flock", str(swap_lock), "cat"], stdin=subprocess.PIPE)  # a running swap job
    try:
        while subprocess.run(["flock", "-n", "-s", str(swap_lock), "true"]).returncode == 0:
            pass  # until the job really holds it
        out = subprocess.run(["sh", "-c", lock_script(tmp_path, "push")], capture_output=True, timeout=10).stdout
        assert out == f"BUSY\n{data.SWAP_RUNNING}\n".encode()
    finally:
        job.communicate(timeout=10)
    out = subprocess.run(["sh", "-c", lock_script(tmp_path, "push")], capture_output=True, timeout=10).stdout
    assert out == b"LOCKED\n"


# ------------------------------------------------------------------------------------------------
# Backups


@pytest.fixture
def backups(tmp_path, monkeypatch):
    monkeypatch.setenv("LSVM_BACKUPS_DIR", str(tmp_path / "backups"))
    return tmp_path / "backups" / "vm"


def test_a_first_backup_streams_everything_and_checks_it(backups):
    host = server(prepared())
    snapshot = engine.take_server_snapshot(host, PROFILE, label="nightly")
    assert snapshot.verified and snapshot.label == "nightly"
    m = snapshot.manifest
    assert {f.path: (f.size, f.sha256) for f in m.files} == {
        DATABASE: (len(DB), sha(DB)), SECRET_ENV: (len(ENV), sha(ENV)), MEDIA_FILE: (len(PNG), sha(PNG))}
    assert m.counts == REPORT["counts"] and m.source["marker"] == MARKER and m.label_studio_version == "1.23.2"
    assert (snapshot.path / MEDIA_FILE).read_bytes() == PNG
    assert (snapshot.path / DATABASE).stat().st_mode & 0o777 == 0o600
    work = PurePosixPath(WORK)
    file_list, stream = host.channels
    assert file_list.command == data.write_file_list(PROFILE, work)
    assert bytes(file_list.written) == f"{SECRET_ENV}\0{MEDIA_FILE}\0".encode() and file_list.write_shut
    assert stream.command == data.stream_snapshot(PROFILE, work, "gzip", database=True, listed_files=True)
    assert host.commands[-1] == data.remove_work_dir(PROFILE, work)  # the server's temp folder goes last


def test_a_backup_of_an_unchanged_server_hard_links_everything_and_streams_nothing(backups):
    first = engine.take_server_snapshot(server(prepared()), PROFILE, label=None)
    host = server(prepared(unchanged=True, database=None))
    second = engine.take_server_snapshot(host, PROFILE, label=None)
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
        engine.take_server_snapshot(host, PROFILE, label=None)
    assert catalog.list_snapshots(backups) == []
    assert host.commands[-1] == data.remove_work_dir(PROFILE, PurePosixPath(WORK))


def test_a_server_without_a_database_is_refused(backups):
    host = server({"database_exists": False})
    with pytest.raises(SnapshotError, match="no Label Studio database on vm"):
        engine.take_server_snapshot(host, PROFILE, label=None)
    assert catalog.list_snapshots(backups) == []
    assert host.channels == []


def test_a_full_temp_space_is_said_in_words(backups):
    host = server(prepared(copy_error="database or disk is full"))
    with pytest.raises(SnapshotError, match=r"temp space \(/var/tmp\) is full"):
        engine.take_server_snapshot(host, PROFILE, label=None)


def test_no_temp_folder_is_a_snapshot_error(backups):
    host = FakeHost(alias="vm").answer(r"mktemp -d", fail("mkdir: cannot create directory: Read-only file system"))
    with pytest.raises(SnapshotError, match="cannot create a temp folder in /var/tmp on vm: .*Read-only"):
        engine.take_server_snapshot(host, PROFILE, label=None)


@pytest.mark.parametrize("stdout, counts", [("", None), ('{"projects": 1, "tasks": 2, "annotations": 0}\n',
                                                        {"projects": 1, "tasks": 2, "annotations": 0})])
def test_server_counts_reads_the_live_database(stdout, counts):
    host = FakeHost().answer(r"counts", ok(stdout))
    assert snapshots.server_counts(host, PROFILE) == counts
    assert host.commands == [data.server_counts(PROFILE)]


def test_server_counts_that_are_not_an_answer_are_an_error_never_no_database():
    host = FakeHost().answer(r"counts", ok("Traceback (most recent call last):\nsqlite3.OperationalError\n"))
    with pytest.raises(RemoteError, match="reading server counts on fake gave no answer: sqlite3.OperationalError"):
        snapshots.server_counts(host, PROFILE)


# ------------------------------------------------------------------------------------------------
# Names from the server never reach a shell


HOSTILE_NAMES = ["media/upload/1/x\nLSVM_EOF\ntouch /tmp/pwned\n", "media/upload/1/q'\"$(id)`.png",
                 "media/upload/1/caf\udce9.png"]


def test_hostile_media_names_travel_nul_separated_on_stdin_and_land_byte_identical(backups):
    media = {name: (f"content of {i}".encode(), 1700000000 + i) for i, name in enumerate(HOSTILE_NAMES)}
    host = server(prepared(media=[{"path": n, "size": len(c), "mtime": m} for n, (c, m) in media.items()]))
    host.streams = [(r"tar --ignore-failed-read", Stream(tar_stream({DATABASE: (DB, 1), SECRET_ENV: (ENV, 1), **media})))]
    snapshot = engine.take_server_snapshot(host, PROFILE, label=None)
    for name in HOSTILE_NAMES:
        assert not any(name in command or name.encode("utf-8", "surrogateescape").decode("utf-8", "replace") in command
                       for command in host.commands + [c.command for c in host.channels])
    file_list = host.channels[0]
    assert bytes(file_list.written) == b"".join(n.encode("utf-8", "surrogateescape") + b"\0"
                                                for n in [SECRET_ENV, *HOSTILE_NAMES])
    for name, (content, _) in media.items():
        assert (snapshot.path / name).read_bytes() == content
    # The manifest keeps the names exactly (surrogates survive JSON), so a restore sends them back as they were.
    again = catalog.list_snapshots(backups)[-1]
    assert again.verified and {f.path for f in again.manifest.media_files} == set(HOSTILE_NAMES)


def test_the_media_listing_keeps_every_name_and_never_follows_a_link(tmp_path):
    data_dir = tmp_path / "data"
    upload = data_dir / "media" / "upload" / "1"
    upload.mkdir(parents=True)
    for name in HOSTILE_NAMES:  # the first one is folders too: "x\nLSVM_EOF\ntouch " / "tmp" / "pwned\n"
        (data_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / name).write_bytes(b"x")
    secret = tmp_path / "secret"
    (secret / "deep").mkdir(parents=True)
    (secret / "shadow").write_bytes(b"root only")
    (secret / "deep" / "key").write_bytes(b"root only")
    os.symlink(secret, upload.parent / "linked-dir")
    os.symlink(secret / "shadow", upload / "linked-file")
    listed = [f["path"] for f in sqlite.media_listing(str(data_dir / "media"))]
    assert sorted(listed) == sorted(HOSTILE_NAMES)
    assert json.loads(json.dumps(listed)) == listed
    # A media folder that is itself a link (to /etc, say) lists nothing at all.
    (data_dir / "media").rename(data_dir / "media.real")
    os.symlink(secret, data_dir / "media")
    assert sqlite.media_listing(str(data_dir / "media")) == []
