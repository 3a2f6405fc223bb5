"""The check of a snapshot on this machine (pending -> verified or failed, recorded in its manifest, one
checker at a time), what a backup builds on, what prune keeps, and what snapshots take on disk."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tasks.core.data import catalog, checking, diskuse
from tasks.core.data.catalog import PENDING, FileEntry, Manifest
from tasks.core.defaults import DATABASE
from tasks.core.errors import SnapshotError
from tasks.core.onserver import sqlite
from tests.unit.programs.test_local import label_studio_db


def pending_snapshot(host_dir: Path, minute: int, tasks: int = 2, *, damage: bool = False) -> catalog.Snapshot:
    """A snapshot as a backup stores it: bytes proven identical to the server's (its sha256), not checked."""
    when = dt.datetime(2026, 12, 3, 9, minute, tzinfo=dt.timezone.utc)
    with catalog.new_snapshot(host_dir, None, now=when) as made:
        database = label_studio_db(made.path / DATABASE, tasks)
        entry = FileEntry(DATABASE, database.stat().st_size, sqlite.sha256_file(str(database)))
        if damage:   # after it was proven identical: a disk that lost a page
            with open(database, "r+b") as handle:
                handle.seek(4096)
                handle.write(b"\xff" * 4096)
        made.manifest = Manifest(host="vm", created=made.created, label=None, label_studio_version="1.23.2",
                                 source={}, files=[entry], integrity_check=PENDING, counts={}, media_included=True)
    return made.snapshot


def test_a_pending_snapshot_is_checked_once_and_the_verdict_is_written_in_its_manifest(tmp_path):
    snapshot = pending_snapshot(tmp_path / "vm", 1, tasks=5)
    assert snapshot.state == "pending" and not snapshot.verified
    checked = checking.check_pending(snapshot, by="test")
    assert checked.state == "verified" and checked.manifest.counts["tasks"] == 5
    [stored] = catalog.list_snapshots(tmp_path / "vm")
    assert stored.state == "verified" and stored.manifest.extra["check"]["on"] == "this machine"
    assert stored.manifest.extra["check"]["by"] == "test"
    assert checking.check_pending(stored, by="again") is stored   # not pending: nothing runs again


def test_bytes_damaged_before_the_check_end_failed_and_nothing_uses_them(tmp_path):
    snapshot = pending_snapshot(tmp_path / "vm", 1, damage=True)
    checked = checking.check_pending(snapshot, by="test")
    assert checked.state == "failed" and "sha256 differs" in checked.manifest.integrity_check
    with pytest.raises(SnapshotError, match="failed its check"):
        checking.require_verified(checked, by="a restore")


def test_a_database_that_is_not_label_studios_fails_its_check(tmp_path):
    snapshot = pending_snapshot(tmp_path / "vm", 1)
    import sqlite3
    con = sqlite3.connect(snapshot.path / DATABASE)
    con.execute("drop table task")
    con.commit()
    con.close()
    entry = FileEntry(DATABASE, (snapshot.path / DATABASE).stat().st_size,
                      sqlite.sha256_file(str(snapshot.path / DATABASE)))
    catalog.write_manifest(snapshot.path, Manifest(**{**snapshot.manifest.__dict__, "files": [entry]}))
    [snapshot] = catalog.list_snapshots(tmp_path / "vm")
    assert "not a Label Studio database" in checking.check_pending(snapshot, by="t").manifest.integrity_check


def test_a_consumer_waits_for_the_check_that_already_runs(tmp_path):
    snapshot = pending_snapshot(tmp_path / "vm", 1)
    fd = os.open(snapshot.path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)        # a background checker holds the snapshot
    done: list = []
    waiter = threading.Thread(target=lambda: done.append(checking.check_pending(snapshot, by="waiter", quiet=True)))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not done           # it waits for the lock, checking nothing meanwhile
    os.close(fd)
    waiter.join(30)
    assert done[0].verified and done[0].manifest.extra["check"]["by"] == "waiter"


def test_the_background_checker_is_a_detached_process_that_records_its_verdict(tmp_path):
    snapshot = pending_snapshot(tmp_path / "vm", 1)
    run = subprocess.run([sys.executable, "-m", "tasks.core.data.checking", str(snapshot.path)],
                         cwd=checking.PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    [stored] = catalog.list_snapshots(tmp_path / "vm")
    assert stored.verified and "background" in stored.manifest.extra["check"]["by"]


def test_the_next_backup_builds_on_the_newest_snapshot_that_passes_its_check(tmp_path):
    host = tmp_path / "vm"
    first = checking.check_pending(pending_snapshot(host, 1), by="t")
    assert checking.newest_base(host).id == first.id
    pending_snapshot(host, 2, damage=True)
    assert checking.newest_base(host).id == first.id        # the damaged one failed: the older one is the base
    assert [s.state for s in catalog.list_snapshots(host)] == ["verified", "failed"]
    third = pending_snapshot(host, 3)
    assert checking.newest_base(host).id == third.id         # checked on the way, and it passed
    assert catalog.list_snapshots(host)[-1].state == "verified"


def test_prune_never_deletes_a_pending_snapshot_nor_the_newest_verified(tmp_path):
    host = tmp_path / "vm"
    verified = checking.check_pending(pending_snapshot(host, 1), by="t")
    pending_snapshot(host, 2, damage=True)
    checking.check_pending(catalog.list_snapshots(host)[-1], by="t")
    pending = pending_snapshot(host, 3)
    plan = catalog.retention_plan(catalog.list_snapshots(host), keep_last=0, keep_daily=0, keep_weekly=0)
    assert plan.reasons == {verified.id: "newest verified", pending.id: "its check has not run yet"}
    assert [s.state for s in plan.delete] == ["failed"]


def test_the_listing_says_pending_verified_and_failed(tmp_path):
    host = tmp_path / "vm"
    checking.check_pending(pending_snapshot(host, 1), by="t")
    checking.check_pending(pending_snapshot(host, 2, damage=True), by="t")
    pending_snapshot(host, 3)
    records = [catalog.listing_record(s) for s in catalog.list_snapshots(host)]
    assert [r["state"] for r in records] == ["verified", "failed", "pending"]
    assert records[1]["problem"].startswith("integrity damaged") and records[2]["problem"] is None


# ------------------------------------------------------------------------------------------------
# Disk use


def test_the_ledger_counts_each_byte_once_however_ranges_overlap():
    ledger = diskuse.Ledger()
    assert ledger.add(100, 50) == 50
    assert ledger.add(120, 10) == 0            # inside
    assert ledger.add(140, 30) == 20           # overlaps the end
    assert ledger.add(0, 10) == 10             # before
    assert ledger.add(5, 200) == 200 - 5 - 70  # spans two ranges and the gap between
    assert (ledger.starts, ledger.ends) == ([0], [205])


def test_hard_links_and_copies_count_as_they_take_disk(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "x").write_bytes(os.urandom(1 << 20))
    os.link(first / "x", second / "x")                                  # a hard link: nothing more
    (second / "y").write_bytes(os.urandom(1 << 20))                       # a new file: its size
    os.sync()
    older, newer = diskuse.added_bytes([first, second])
    assert older >= 1 << 20 and (1 << 20) <= newer < (1 << 20) + 65536


def test_a_rebuilt_file_shares_blocks_where_the_filesystem_has_reflinks_else_it_is_a_copy(tmp_path):
    base = label_studio_db(tmp_path / "base.sqlite3", tasks=300)
    changed = tmp_path / "changed.sqlite3"
    changed.write_bytes(base.read_bytes())
    with open(changed, "r+b") as handle:   # one page of another content
        handle.seek(2 * 4096)
        handle.write(os.urandom(4096))
    sqlite.make_delta(str(changed), sqlite.page_index(str(base)), str(tmp_path / "delta"))
    built = sqlite.apply_delta(str(base), str(tmp_path / "delta"), str(tmp_path / "built"))
    assert (tmp_path / "built").read_bytes() == changed.read_bytes()
    assert oct((tmp_path / "built").stat().st_mode & 0o777) == "0o600"
    os.sync()
    ledger = diskuse.Ledger()
    diskuse.file_bytes(base, ledger)
    added = diskuse.file_bytes(tmp_path / "built", ledger)
    size = changed.stat().st_size
    assert (built["cloned"], added < size) in (("reflink", True), ("copy", False)), (built, added, size)


def test_a_check_beside_the_upload_stops_the_swap_only_for_bytes_that_are_not_the_servers(tmp_path, capsys):
    host = tmp_path / "vm"
    with pytest.raises(SnapshotError, match="is not the server's"):
        checking.CheckBeside(pending_snapshot(host, 1, damage=True), by="push").settled()
    # A server database that is broken itself, copied faithfully (the sha256 is of the broken bytes).
    broken = pending_snapshot(host, 2)
    database = broken.path / DATABASE
    with open(database, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xff" * 4096)
    entry = FileEntry(DATABASE, database.stat().st_size, sqlite.sha256_file(str(database)))
    catalog.write_manifest(broken.path, Manifest(**{**broken.manifest.__dict__, "files": [entry]}))
    broken = catalog.list_snapshots(host)[-1]
    assert checking.CheckBeside(broken, by="push").settled().state == "failed"
    assert "its copy is kept in" in capsys.readouterr().err
    good = pending_snapshot(host, 3)
    assert checking.CheckBeside(good, by="push").settled().verified


def test_the_backup_that_just_proved_the_bytes_spends_the_check_on_integrity_alone(tmp_path, monkeypatch):
    snapshot = pending_snapshot(tmp_path / "vm", 1)
    monkeypatch.setattr(sqlite, "check", lambda path, **options: pytest.fail("hashed a second time"))
    assert checking.check_pending(snapshot, by="backup", just_proven=True).verified
    later = pending_snapshot(tmp_path / "vm", 2)          # anyone else re-hashes: the bytes may have changed
    with pytest.raises(pytest.fail.Exception, match="hashed a second time"):
        checking.check_pending(later, by="a restore")


def test_the_check_writes_the_database_back_to_the_disk_before_its_verdict(tmp_path, monkeypatch):
    snapshot = pending_snapshot(tmp_path / "vm", 1)
    database = os.stat(snapshot.path / DATABASE)
    synced: list = []
    real_fsync = os.fsync

    def fsync(fd):
        if os.fstat(fd).st_ino == database.st_ino:
            synced.append(catalog.list_snapshots(tmp_path / "vm")[-1].state)   # what was recorded by then
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert checking.check_pending(snapshot, by="backup", just_proven=True).verified
    assert synced == ["pending"]             # once, and before the verdict was written


def test_a_database_the_disk_did_not_take_fails_its_check(tmp_path, monkeypatch):
    snapshot = pending_snapshot(tmp_path / "vm", 1)
    database = os.stat(snapshot.path / DATABASE)
    real_fsync = os.fsync

    def fsync(fd):
        if os.fstat(fd).st_ino == database.st_ino:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    checked = checking.check_pending(snapshot, by="backup", just_proven=True)
    assert checked.state == "failed" and "could not be written to this machine's disk" in \
        checked.manifest.integrity_check


def test_a_rebuilt_snapshot_database_leaves_its_fsync_to_the_check(tmp_path, monkeypatch):
    base = label_studio_db(tmp_path / "base.sqlite3", tasks=50)
    changed = tmp_path / "changed.sqlite3"
    changed.write_bytes(base.read_bytes())
    with open(changed, "r+b") as handle:
        handle.seek(4096)
        handle.write(os.urandom(4096))
    sqlite.make_delta(str(changed), sqlite.page_index(str(base)), str(tmp_path / "delta"))
    synced: list = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_ino))
    sqlite.apply_delta(str(base), str(tmp_path / "delta"), str(tmp_path / "later"), durable=False)
    assert synced == []
    sqlite.apply_delta(str(base), str(tmp_path / "delta"), str(tmp_path / "now"))
    assert synced == [os.stat(tmp_path / "now").st_ino]
    assert (tmp_path / "later").read_bytes() == (tmp_path / "now").read_bytes() == changed.read_bytes()
