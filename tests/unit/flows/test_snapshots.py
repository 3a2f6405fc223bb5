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

from tasks.core.commands import data, read_file
from tasks.core.data import catalog, engine, snapshots
from tasks.core.defaults import DATABASE, SECRET_ENV
from tasks.core.errors import LockedError, RemoteError, SnapshotError
from tasks.core.onserver import sqlite
from tests.unit.fakehost import FakeHost, ok
from tests.unit.samples import (
    DB,
    ENV,
    LOCK,
    MARKER,
    MEDIA_FILE,
    PNG,
    PROFILE,
    REPORT,
    framed,
    prepared,
    served,
    server,
    sha,
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


def said(channel) -> list[dict]:
    """The JSON lines this machine wrote on a serve-backup channel: its request, then its choice."""
    return [json.loads(line) for line in bytes(channel.written).decode().splitlines()]


def test_a_first_backup_is_one_channel_that_streams_everything_then_is_checked_here(backups):
    host = server(prepared())
    snapshot = engine.take_server_snapshot(host, PROFILE, label="nightly")
    assert snapshot.verified and snapshot.label == "nightly"
    m = snapshot.manifest
    assert {f.path: (f.size, f.sha256) for f in m.files} == {
        DATABASE: (len(DB), sha(DB)), SECRET_ENV: (len(ENV), sha(ENV)), MEDIA_FILE: (len(PNG), sha(PNG))}
    assert m.counts == REPORT["counts"] and m.source["marker"] == MARKER and m.label_studio_version == "1.23.2"
    assert m.extra["check"]["on"] == "this machine" and set(m.extra["timeline"]) >= {"server copy", "wire"}
    assert (snapshot.path / MEDIA_FILE).read_bytes() == PNG
    assert (snapshot.path / DATABASE).stat().st_mode & 0o777 == 0o600
    [channel] = host.channels
    # Which database the server runs on (its env file), then one channel: the temp folder, the copy, its
    # digests, the stream and the clean-up. (With sudo's probe and the data lock: 4 SSH commands.)
    assert host.commands == [read_file(PROFILE.remote.env_file), data.serve_backup(PROFILE)]
    assert channel.command == data.serve_backup(PROFILE)
    assert said(channel) == [{"marker": None, "base": None},
                             {"database": "whole", "files": [SECRET_ENV, MEDIA_FILE]}]


def test_a_backup_of_an_unchanged_server_hard_links_everything_and_streams_nothing(backups):
    first = engine.take_server_snapshot(server(prepared()), PROFILE, label=None)
    host = server(prepared(unchanged=True, database=None), files={})
    second = engine.take_server_snapshot(host, PROFILE, label=None)
    assert second.id != first.id and second.verified
    for name in (DATABASE, SECRET_ENV, MEDIA_FILE):
        assert (second.path / name).stat().st_ino == (first.path / name).stat().st_ino
    assert second.manifest.counts == first.manifest.counts
    # The server compares its change counter with the one the previous snapshot recorded.
    assert said(host.channels[0]) == [{"marker": MARKER, "base": sha(DB)}, {"database": None, "files": []}]


def test_a_backup_whose_database_hash_differs_leaves_no_snapshot_behind(backups):
    host = server(prepared(database={"size": len(DB), "sha256": "0" * 64}))
    with pytest.raises(SnapshotError, match="sha256 differs between vm and this machine"):
        engine.take_server_snapshot(host, PROFILE, label=None)
    assert catalog.list_snapshots(backups) == []


def test_a_stream_cut_short_is_said_in_words_and_leaves_no_snapshot_behind(backups):
    host = server(prepared(), files={})
    host.streams.clear()
    host.stream(r"serve-backup", framed(prepared()))      # the findings, then nothing
    with pytest.raises(SnapshotError, match="the backup stream from vm was cut short"):
        engine.take_server_snapshot(host, PROFILE, label=None)
    assert catalog.list_snapshots(backups) == []


def test_a_server_without_a_database_is_refused(backups):
    host = server({"database_exists": False}, files={})
    with pytest.raises(SnapshotError, match="no Label Studio database on vm"):
        engine.take_server_snapshot(host, PROFILE, label=None)
    assert catalog.list_snapshots(backups) == []
    assert said(host.channels[0]) == [{"marker": None, "base": None}]   # nothing chosen, nothing streamed


def test_a_full_temp_space_is_said_in_words(backups):
    host = server(prepared(copy_error="No space left: the copy needs 5 bytes, 2 are free in /var/tmp"), files={})
    with pytest.raises(SnapshotError, match=r"temp space \(/var/tmp\) is full"):
        engine.take_server_snapshot(host, PROFILE, label=None)


def test_no_temp_folder_is_a_clean_error(backups):
    host = FakeHost(alias="vm").stream(r"serve-backup", b"", stderr=b"mkdir: cannot create directory: Read-only "
                                       b"file system\n", status=1)
    with pytest.raises(RemoteError, match="Read-only file system"):
        engine.take_server_snapshot(host, PROFILE, label=None)
    assert catalog.list_snapshots(backups) == []


def test_a_server_that_kept_no_index_gets_the_base_index_on_the_same_channel(backups):
    first = engine.take_server_snapshot(server(prepared()), PROFILE, label=None)
    host = FakeHost(alias="vm").stream(r"serve-backup", framed({"need_index": True}) + served(
        prepared(), {DATABASE: (DB, 1)}))
    engine.take_server_snapshot(host, PROFILE, label=None)
    [channel] = host.channels
    written = bytes(channel.written)
    request, rest = written.split(b"\n", 1)
    index = sqlite.page_index(str(first.path / DATABASE))
    assert json.loads(request) == {"marker": MARKER, "base": sha(DB)}
    assert rest.startswith(len(index).to_bytes(8, "big") + index)


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


def test_hostile_media_names_travel_as_json_on_stdin_and_land_byte_identical(backups):
    media = {name: (f"content of {i}".encode(), 1700000000 + i) for i, name in enumerate(HOSTILE_NAMES)}
    host = server(prepared(media=[{"path": n, "size": len(c), "mtime": m} for n, (c, m) in media.items()]),
                  files={DATABASE: (DB, 1), SECRET_ENV: (ENV, 1), **media})
    snapshot = engine.take_server_snapshot(host, PROFILE, label=None)
    for name in HOSTILE_NAMES:
        assert not any(name in command or name.encode("utf-8", "surrogateescape").decode("utf-8", "replace") in command
                       for command in host.commands + [c.command for c in host.channels])
    assert said(host.channels[0])[1]["files"] == [SECRET_ENV, *HOSTILE_NAMES]
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
