"""Snapshot naming, manifests and the retention plan."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest

from tasks.core.data import catalog
from tasks.core.data.catalog import FileEntry, Manifest, Snapshot, retention_plan
from tasks.core.errors import SnapshotError, UsageError
from tasks.core.files import private_dir
from tasks.core.onserver import sqlite

UTC = dt.timezone.utc


def snap(when: str, complete: bool = True, integrity: str = "ok", label: str | None = None) -> Snapshot:
    created = dt.datetime.strptime(when, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    manifest = Manifest("vm", created.isoformat(), label, "1.23.2", {}, [], integrity, {}, True) if complete else None
    sid = catalog.snapshot_id(created, label)
    return Snapshot(sid, Path("/nowhere") / sid, "vm", created, label, manifest)


def test_ids_round_trip():
    when = dt.datetime(2026, 11, 21, 23, 50, 1, tzinfo=UTC)
    assert catalog.snapshot_id(when) == "20261121T235001Z"
    assert catalog.snapshot_id(when, "pre-push") == "20261121T235001Z-pre-push"
    assert catalog.parse_id("20261121T235001Z-pre-push") == (when, "pre-push")
    assert catalog.parse_id("20261121T235001Z") == (when, None)
    for bad in ("latest", "20261121T235001", "20261121T235001Z-Bad_Label", ".lock"):
        assert catalog.parse_id(bad) is None


@pytest.mark.parametrize("label", ["UPPER", "with space", "../x", "a" * 41, "-lead"])
def test_bad_labels_are_refused(label):
    with pytest.raises(UsageError):
        catalog.check_label(label)


def test_manifest_json_round_trip():
    m = Manifest("vm", "2026-11-21T23:50:01+00:00", None, "1.23.2", {"host": "vm"},
                 [FileEntry("label_studio.sqlite3", 10, "ab"), FileEntry("media/upload/1/x.png", 3, "cd", 1700000000)],
                 "ok", {"projects": 1}, True)
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert again.total_size == 13
    assert [f.path for f in again.media_files] == ["media/upload/1/x.png"]


def test_listing_and_finding(tmp_path: Path):
    host = tmp_path / "vm"
    with catalog.new_snapshot(host, "a", dt.datetime(2026, 1, 1, tzinfo=UTC)) as pending:
        pending.manifest = Manifest("vm", "x", "a", None, {}, [], "ok", {}, True)
    good = pending.snapshot.path
    incomplete = host / "20260102T000000Z"   # a folder without a manifest (made by hand, or an old version)
    incomplete.mkdir()
    (host / "not-a-snapshot").mkdir()
    found = catalog.list_snapshots(host)
    assert [s.id for s in found] == [good.name, incomplete.name]
    assert found[0].verified and not found[1].complete
    assert catalog.find_snapshot(found, "20260101").id == good.name
    with pytest.raises(SnapshotError, match="incomplete"):
        catalog.find_snapshot(found, incomplete.name)
    with pytest.raises(SnapshotError, match="no snapshot"):
        catalog.find_snapshot(found, "1999")
    with pytest.raises(SnapshotError, match="matches 2"):
        catalog.find_snapshot(found, "2026")
    assert oct(host.stat().st_mode & 0o777) == "0o700" and oct(good.stat().st_mode & 0o777) == "0o700"


def finished(host: Path, when: dt.datetime, label: str | None = None) -> catalog.Snapshot:
    with catalog.new_snapshot(host, label, when) as pending:
        (pending.path / "data").write_text("x")
        pending.manifest = Manifest("vm", pending.created, label, None, {}, [], "ok", {}, True)
    return pending.snapshot


def test_same_second_gets_the_next_second(tmp_path: Path):
    when = dt.datetime(2026, 1, 1, tzinfo=UTC)
    a, b = finished(tmp_path, when), finished(tmp_path, when)
    assert a.id == "20260101T000000Z" and b.id == "20260101T000001Z"
    assert a.manifest.created == "2026-01-01T00:00:00+00:00" and (b.path / "data").read_text() == "x"


def test_a_snapshot_being_written_is_never_listed_and_appears_whole_with_its_manifest(tmp_path: Path):
    with catalog.new_snapshot(tmp_path, "nightly", dt.datetime(2026, 1, 1, tzinfo=UTC)) as pending:
        (pending.path / "data").write_text("x")
        assert pending.path.parent == tmp_path and pending.path.name.endswith(catalog.PARTIAL)
        assert oct(pending.path.stat().st_mode & 0o777) == "0o700"
        assert catalog.list_snapshots(tmp_path) == []
        pending.manifest = Manifest("vm", pending.created, "nightly", None, {}, [], "ok", {}, True)
        assert not (pending.path / catalog.MANIFEST).exists()   # written last, on the way out
    assert [s.id for s in catalog.list_snapshots(tmp_path)] == ["20260101T000000Z-nightly"]
    assert pending.snapshot.verified and sorted(p.name for p in tmp_path.iterdir()) == [pending.snapshot.id]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError, None])
def test_a_failed_or_unfinished_snapshot_leaves_nothing(tmp_path: Path, failure):
    with pytest.raises(failure or SnapshotError, match=None if failure else "not finished"):
        with catalog.new_snapshot(tmp_path, None) as pending:
            (pending.path / "data").write_text("half")
            if failure:
                raise failure()
    assert list(tmp_path.iterdir()) == [] and pending.snapshot is None


def test_prune_finds_partial_folders_a_killed_run_left_a_day_ago_and_leaves_fresh_ones(tmp_path: Path):
    old = tmp_path / f".20260101T000000Z-abc{catalog.PARTIAL}"
    fresh = tmp_path / f".20260102T000000Z-def{catalog.PARTIAL}"
    old.mkdir()
    fresh.mkdir()
    (tmp_path / ".hidden").mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    assert catalog.leftover_partials(tmp_path) == [old]


def test_private_dir_makes_every_level_0700(tmp_path: Path):
    deep = private_dir(tmp_path / "a" / "b" / "c")
    for level in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert oct(level.stat().st_mode & 0o777) == "0o700"


def test_retention_keep_last_daily_weekly():
    snaps = [snap(f"2026-11-{day:02d} {hour:02d}:00") for day in range(1, 22) for hour in (9, 18)]
    plan = retention_plan(snaps, keep_last=3, keep_daily=2, keep_weekly=2)
    kept = {s.id: plan.reasons[s.id] for s in plan.keep}
    assert list(kept)[-3:] == ["20261120T180000Z", "20261121T090000Z", "20261121T180000Z"]
    assert kept["20261121T180000Z"] == "last"
    assert kept["20261120T180000Z"] == "last"  # also the newest of 11-20: counted once
    assert "20261115T180000Z" in kept and kept["20261115T180000Z"] == "weekly"  # newest of ISO week 46
    assert len(plan.keep) == 4
    assert len(plan.keep) + len(plan.delete) == len(snaps)


def test_retention_always_keeps_the_newest_verified_and_drops_incomplete():
    snaps = [snap("2026-11-01 10:00", complete=False), snap("2026-11-02 10:00"),
             snap("2026-11-03 10:00", integrity="bad"), snap("2026-11-04 10:00")]
    plan = retention_plan(snaps, keep_last=0, keep_daily=0, keep_weekly=0)
    assert [s.id for s in plan.keep] == ["20261104T100000Z"]
    assert plan.reasons["20261104T100000Z"] == "newest verified"
    assert {s.id for s in plan.delete} == {"20261101T100000Z", "20261102T100000Z", "20261103T100000Z"}


def test_the_newest_folder_stays_even_when_incomplete_or_malformed():
    snaps = [snap("2026-11-01 10:00"), snap("2026-11-02 10:00", complete=False)]
    plan = retention_plan(snaps, keep_last=0, keep_daily=0, keep_weekly=0)
    assert [s.id for s in plan.keep] == ["20261101T100000Z", "20261102T100000Z"] and plan.delete == []
    assert "incomplete" in plan.reasons["20261102T100000Z"]


def pulled(when: str, *, copy: bool) -> Snapshot:
    s = snap(when, label="pre-pull")
    s.manifest.extra["pulled_copy"] = copy
    return s


def test_prune_never_removes_the_local_work_restore_local_would_restore():
    """Later pulls saved untouched copies of earlier pulls: the user's own work is older than they are."""
    snaps = [pulled("2026-11-01 10:00", copy=False), pulled("2026-11-02 10:00", copy=False),
             pulled("2026-11-03 10:00", copy=True), pulled("2026-11-04 10:00", copy=True)]
    plan = retention_plan(snaps, keep_last=1, keep_daily=0, keep_weekly=0)
    assert sorted(s.id for s in plan.keep) == ["20261102T100000Z-pre-pull", "20261104T100000Z-pre-pull"]
    assert "restore-local" in plan.reasons["20261102T100000Z-pre-pull"]


def test_prune_keeps_the_newest_pre_upgrade_snapshot_of_each_release():
    snaps = [snap("2026-11-01 10:00", label="pre-upgrade-1-22-0"), snap("2026-11-02 10:00", label="pre-upgrade-1-22-0"),
             snap("2026-11-03 10:00", label="pre-upgrade-1-23-1", integrity="bad"),
             snap("2026-11-04 10:00", label="pre-upgrade-1-23-1"), snap("2026-11-05 10:00")]
    plan = retention_plan(snaps, keep_last=1, keep_daily=0, keep_weekly=0)
    assert sorted(s.id for s in plan.keep) == ["20261102T100000Z-pre-upgrade-1-22-0",
                                               "20261104T100000Z-pre-upgrade-1-23-1", "20261105T100000Z"]


def test_sqlite_inspect_reports_problems(tmp_path: Path):
    random = tmp_path / "random.sqlite3"
    random.write_bytes(b"\x00" * 100 + b"not sqlite" * 1000)
    assert "not a usable SQLite database" in sqlite.describe_problem(sqlite.inspect(str(random)))
    other = tmp_path / "other.sqlite3"
    import sqlite3

    con = sqlite3.connect(other)
    con.execute("create table notes(x)")
    con.commit()
    con.close()
    assert "not a Label Studio database" in sqlite.describe_problem(sqlite.inspect(str(other)))
    assert sqlite.inspect(str(tmp_path / "missing"))["error"] == "no such file"


def test_consistent_copy_is_identical_in_content(tmp_path: Path):
    import sqlite3

    src = tmp_path / "src.sqlite3"
    con = sqlite3.connect(src)
    con.execute("create table t(x)")
    con.executemany("insert into t values (?)", [(i,) for i in range(1000)])
    con.commit()
    sqlite.consistent_copy(str(src), str(tmp_path / "copy.sqlite3"))
    copy = sqlite3.connect(tmp_path / "copy.sqlite3")
    assert copy.execute("select count(*), sum(x) from t").fetchone() == (1000, 499500)


def test_a_snapshot_reference_names_this_host_or_another_one():
    assert catalog.snapshot_host("20260101T000000Z", "new") == "new"
    assert catalog.snapshot_host("old/20260101T000000Z", "new") == "old"
    assert catalog.snapshot_name("old/2026") == "2026" and catalog.snapshot_name("2026") == "2026"
    for bad in ("../20260101T000000Z", "/20260101T000000Z", ".hidden/2026", "a\\b/2026"):
        with pytest.raises(UsageError):
            catalog.snapshot_host(bad, "new")
    for bad in ("old/", "old/a/b"):
        with pytest.raises(UsageError):
            catalog.snapshot_name(bad)


def test_received_entries_check_every_fetched_file():
    fetch = [("label_studio.sqlite3", 10, None, None), (".env", 3, "e" * 64, None), ("media/a.png", 5, None, 7),
             ("media/gone.png", 5, None, 8)]
    received = {"label_studio.sqlite3": (10, "d" * 64), ".env": (3, "e" * 64), "media/a.png": (5, "a" * 64)}
    entries = catalog.received_entries(fetch, received, "vm", expected={"label_studio.sqlite3": "d" * 64})
    assert [(e.path, e.sha256, e.mtime) for e in entries] == [
        ("label_studio.sqlite3", "d" * 64, None), (".env", "e" * 64, None), ("media/a.png", "a" * 64, 7)]
    with pytest.raises(SnapshotError, match="label_studio.sqlite3: sha256 differs between vm"):
        catalog.received_entries(fetch, received, "vm", expected={"label_studio.sqlite3": "f" * 64})
    with pytest.raises(SnapshotError, match=r"\.env did not arrive from vm"):
        catalog.received_entries(fetch, {k: v for k, v in received.items() if k != ".env"}, "vm")


def test_prune_shows_what_goes_and_asks_first(tmp_path, monkeypatch, capsys):
    from invoke import Context, Exit

    from tasks import data as data_tasks

    monkeypatch.setenv("LSVM_BACKUPS_DIR", str(tmp_path))
    monkeypatch.delenv("LSVM_CONFIG", raising=False)
    old = tmp_path / "local" / "20200101T000000Z-pre-pull"
    old.mkdir(parents=True)   # incomplete and not the newest: it goes
    (tmp_path / "local" / "20200102T000000Z").mkdir()
    stale, running = (tmp_path / "local" / f".20200103T000000Z-x{catalog.PARTIAL}",
                      tmp_path / "local" / f".20200104T000000Z-y{catalog.PARTIAL}")
    stale.mkdir()
    running.mkdir()
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    with pytest.raises(Exit) as caught:   # no terminal here, no --yes
        data_tasks.prune(Context(), keep_last=0, keep_daily=0, keep_weekly=0)
    assert caught.value.code == 2 and old.is_dir()
    out, err = capsys.readouterr()
    assert "delete  20200101T000000Z-pre-pull" in out and "add --yes to go ahead" in err
    assert f"delete  {stale.name}  (left unfinished by a stopped run)" in out and running.name not in out
    data_tasks.prune(Context(), keep_last=0, keep_daily=0, keep_weekly=0, yes=True)
    assert not old.exists() and (tmp_path / "local" / "20200102T000000Z").is_dir()
    assert not stale.exists() and running.is_dir()
