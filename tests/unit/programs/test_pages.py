"""Page deltas (tasks/core/onserver/sqlite.py) on real SQLite files here, and the push's use of them through a
recording host: only differing pages go, the server's rebuilt file must hash like the pushed one, and
anything else sends the whole file."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import resource
import sqlite3
import struct
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import zstandard

from tasks.core.commands import data
from tasks.core.data import catalog, replace, snapshots
from tasks.core.data.catalog import FileEntry, Manifest, Snapshot
from tasks.core.defaults import DATABASE, SECRET_ENV
from tasks.core.onserver import sqlite
from tests.unit.fakehost import FakeHost, ok
from tests.unit.programs.test_local import label_studio_db
from tests.unit.samples import PROFILE


def make_db(path: Path, rows: int = 3000, seed: int = 1) -> Path:
    rng = random.Random(seed)
    con = sqlite3.connect(path)
    con.execute("create table task (id integer primary key, data text)")
    con.execute("create index task_data on task (data)")
    con.executemany("insert into task (data) values (?)",
                    [("".join(rng.choice("abcdefgh ") for _ in range(rng.randint(50, 400))),) for _ in range(rows)])
    con.commit()
    con.close()
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit(path: Path, ids, text: str = "edited") -> None:
    con = sqlite3.connect(path)
    con.executemany("update task set data = ? where id = ?", [(f"{text} {i}", i) for i in ids])
    con.commit()
    con.close()


def test_a_delta_rebuilds_the_changed_file_byte_for_byte_and_its_index(tmp_path):
    old = make_db(tmp_path / "old.sqlite3")
    new = tmp_path / "new.sqlite3"
    new.write_bytes(old.read_bytes())
    edit(new, [5, 900, 2500])
    index = sqlite.page_index(str(old))
    found = sqlite.make_delta(str(new), index, str(tmp_path / "delta"))
    pages = new.stat().st_size // 4096
    assert found["usable"] and 0 < found["changed"] <= 12 and found["pages"] == pages
    built = sqlite.apply_delta(str(old), str(tmp_path / "delta"), str(tmp_path / "built"), index)
    assert built["sha256"] == sha(new) == sha(tmp_path / "built") and built["size"] == new.stat().st_size
    assert built["index"] == sqlite.page_index(str(new))
    assert (tmp_path / "built").stat().st_mode & 0o777 == 0o600


def test_a_grown_and_a_shrunk_database_both_rebuild(tmp_path):
    old = make_db(tmp_path / "old.sqlite3", rows=500)
    grown = tmp_path / "grown.sqlite3"
    grown.write_bytes(old.read_bytes())
    con = sqlite3.connect(grown)
    con.executemany("insert into task (data) values (?)", [("x" * 300,)] * 2000)
    con.commit()
    con.close()
    for first, second in ((old, grown), (grown, old)):
        delta = tmp_path / f"delta-{second.name}"
        assert sqlite.make_delta(str(second), sqlite.page_index(str(first)), str(delta))["usable"]
        built = tmp_path / f"built-{second.name}"
        assert sqlite.apply_delta(str(first), str(delta), str(built))["sha256"] == sha(second)
        assert sqlite.inspect(str(built))["integrity_check"] == "ok"


def test_another_page_size_is_not_a_delta(tmp_path):
    old = make_db(tmp_path / "old.sqlite3")
    other = tmp_path / "other.sqlite3"
    other.write_bytes(old.read_bytes())
    con = sqlite3.connect(other)
    con.execute("PRAGMA page_size = 8192")
    con.execute("VACUUM")
    con.close()
    assert sqlite.make_delta(str(other), sqlite.page_index(str(old)), str(tmp_path / "d")) == {
        "usable": False, "why": "the page size changed"}


@pytest.mark.parametrize("damage", ["cut", "missing page", "out of order", "not a delta"])
def test_a_malformed_delta_is_refused(tmp_path, damage):
    old = make_db(tmp_path / "old.sqlite3", rows=300)
    new = tmp_path / "new.sqlite3"
    new.write_bytes(old.read_bytes())
    con = sqlite3.connect(new)
    con.executemany("insert into task (data) values (?)", [("y" * 300,)] * 4000)  # past one read of pages
    con.commit()
    con.close()
    delta = tmp_path / "delta"
    sqlite.make_delta(str(new), sqlite.page_index(str(old)), str(delta))
    raw = delta.read_bytes()
    head, record = len(sqlite.DELTA_MAGIC) + 12, 4 + 4096
    if damage == "cut":
        raw = raw[:-100]
    elif damage == "missing page":  # the last page, which the base does not have
        raw = raw[:-record]
    elif damage == "out of order":  # the last page first
        raw = raw[:head] + raw[-record:] + raw[head:-record]
    else:
        raw = b"garbage" + raw
    delta.write_bytes(raw)
    with pytest.raises(ValueError):
        sqlite.apply_delta(str(old), str(delta), str(tmp_path / "built"))


@pytest.mark.parametrize("page_size, pages, why", [
    (0, 10, "impossible page size"), (3000, 10, "impossible page size"), (2 ** 32 - 1, 10, "impossible page size"),
    (4096, 2 ** 64 - 1, "claims 18446744073709551615 pages"), (4096, 2 ** 40, "more than it and the base hold"),
])
def test_a_hostile_delta_header_is_refused_before_anything_is_allocated(tmp_path, page_size, pages, why):
    """The delta comes from the server: sizes and counts are bounded by what the base and the delta hold."""
    old = make_db(tmp_path / "old.sqlite3", rows=30)
    delta = tmp_path / "delta"
    delta.write_bytes(sqlite.DELTA_MAGIC + struct.pack(">IQ", page_size, pages) + b"\0" * 4100)
    index = sqlite.page_index(str(old))
    with pytest.raises(ValueError, match=why):
        sqlite.apply_delta(str(old), str(delta), str(tmp_path / "built"), index)
    assert not (tmp_path / "built").exists()


def test_the_consistent_copy_is_the_file_itself_under_a_shared_lock_and_waits_for_writers(tmp_path):
    live = make_db(tmp_path / "live.sqlite3")
    assert sqlite.consistent_copy(str(live), str(tmp_path / "copy")) == "raw copy under a shared lock"
    assert sha(tmp_path / "copy") == sha(live)
    # A writer in the middle of a transaction: the copy waits for its commit, then has all of it.
    writer = sqlite3.connect(live, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("update task set data = 'committed later' where id = 1")
    copier = threading.Thread(target=sqlite.consistent_copy, args=(str(live), str(tmp_path / "copy2")))
    copier.start()
    copier.join(0.3)
    assert copier.is_alive()  # held back by the writer's lock
    writer.execute("COMMIT")
    copier.join(30)
    con = sqlite3.connect(tmp_path / "copy2")
    assert con.execute("select data from task where id = 1").fetchone() == ("committed later",)
    con.close()


RAW_WAL = "raw copy and the -wal's frames in one read transaction"


def wal_db_with_commits_in_its_wal(tmp_path: Path):
    """A live WAL database whose newest commits are only in its -wal: grown, changed, then shrunk by a
    VACUUM, none of it checkpointed. Returns the open connection (it keeps the -wal)."""
    live = make_db(tmp_path / "live.sqlite3")
    con = sqlite3.connect(live)
    con.execute("PRAGMA journal_mode = wal")
    con.execute("PRAGMA wal_autocheckpoint = 0")
    con.execute("update task set data = 'in the wal' where id = 2")
    con.execute("insert into task (data) select data || ' again' from task")   # grows past the file's end
    con.commit()
    con.execute("delete from task where id > 4000")
    con.commit()
    con.execute("VACUUM")                                                      # shrinks below it
    return live, con


def dump(path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_a_wal_database_is_copied_raw_with_its_committed_frames_into_one_self_contained_file(tmp_path):
    live, con = wal_db_with_commits_in_its_wal(tmp_path)
    assert (tmp_path / "live.sqlite3-wal").stat().st_size > live.stat().st_size / 2
    assert sqlite.consistent_copy(str(live), str(tmp_path / "copy")) == RAW_WAL
    reference = tmp_path / "reference"
    con.execute(f"VACUUM INTO '{reference}'")
    con.close()
    copy = tmp_path / "copy"
    assert dump(copy) == dump(reference)
    assert sqlite.integrity_check(str(copy)) == "ok"
    check = sqlite3.connect(copy)
    pages, size = check.execute("PRAGMA page_count").fetchone()[0], check.execute("PRAGMA page_size").fetchone()[0]
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert check.execute("select data from task where id = 2").fetchone() == ("in the wal",)
    check.close()
    assert copy.stat().st_size == pages * size and copy.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "copy-wal").exists()


@pytest.mark.parametrize("failing", ["_wal_index", "_wal_frames"])
def test_a_wal_copy_that_cannot_be_trusted_leaves_nothing_and_the_backup_api_copies(tmp_path, monkeypatch,
                                                                                   failing):
    """No readable wal-index (a writer updating it), or frames whose salts changed under the copy (a
    restart of the -wal): the raw copy is dropped and the backup API makes the copy."""
    live, con = wal_db_with_commits_in_its_wal(tmp_path)
    monkeypatch.setattr(sqlite, failing, lambda *args: None)
    assert sqlite.consistent_copy(str(live), str(tmp_path / "copy")) == "online backup API"
    con.close()
    assert sqlite.integrity_check(str(tmp_path / "copy")) == "ok"
    copy = sqlite3.connect(tmp_path / "copy")
    assert copy.execute("select data from task where id = 2").fetchone() == ("in the wal",)
    copy.close()


def test_a_wal_copy_digested_as_it_is_written_is_the_copy_and_the_digests_of_a_second_read(tmp_path):
    """copy_and_digest in WAL mode: one pass over the live file and its -wal gives the same bytes as the
    plain raw copy, and the same sha256, page index and delta as digest_copy reading that copy."""
    live, con = wal_db_with_commits_in_its_wal(tmp_path)
    base = tmp_path / "base"
    sqlite.consistent_copy(str(live), str(base))
    con.execute("update task set data = 'changed after the base' where id in (3, 700, 2900)")
    con.execute("insert into task (data) select data || ' more' from task where id < 400")   # past the file's end
    con.commit()
    plain = tmp_path / "plain"
    assert sqlite.consistent_copy(str(live), str(plain)) == RAW_WAL
    way, found = sqlite.copy_and_digest(str(live), str(tmp_path / "copy"), sqlite.page_index(str(base)),
                                        str(tmp_path / "delta"))
    con.close()
    assert way == RAW_WAL + ", digested as written"
    copy = tmp_path / "copy"
    assert copy.read_bytes() == plain.read_bytes() and copy.stat().st_mode & 0o777 == 0o600
    second = sqlite.digest_copy(str(plain), sqlite.page_index(str(base)), str(tmp_path / "delta2"))
    assert found == second and found["delta"]["changed"] > 0
    assert (tmp_path / "delta").read_bytes() == (tmp_path / "delta2").read_bytes()
    rebuilt = sqlite.apply_delta(str(base), str(tmp_path / "delta"), str(tmp_path / "rebuilt"))
    assert rebuilt["sha256"] == found["sha256"] == sha(plain)


def test_a_wal_copy_with_an_empty_wal_is_digested_from_the_file_alone(tmp_path):
    live, con = wal_db_with_commits_in_its_wal(tmp_path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert (tmp_path / "live.sqlite3-wal").stat().st_size == 0
    way, found = sqlite.copy_and_digest(str(live), str(tmp_path / "copy"), None, str(tmp_path / "delta"))
    con.close()
    assert way.endswith("digested as written") and found["delta"] is None and found["why"] is None
    assert found["sha256"] == sha(tmp_path / "copy") and found["index"] == sqlite.page_index(str(tmp_path / "copy"))
    assert sqlite.integrity_check(str(tmp_path / "copy")) == "ok" and not (tmp_path / "delta").exists()


def test_a_digested_wal_copy_that_cannot_be_trusted_leaves_no_copy_and_no_delta(tmp_path, monkeypatch):
    """The -wal restarted under the copy (other salts after it): the copy and the delta written so far
    go, the backup API copies, and the digests are left to a read of that copy (None)."""
    live, con = wal_db_with_commits_in_its_wal(tmp_path)
    base = tmp_path / "base"
    sqlite.consistent_copy(str(live), str(base))
    real, calls = sqlite._wal_index, []

    def restarted_after_the_first_look(shm):
        calls.append(shm)
        index = real(shm)
        return index if len(calls) == 1 else dict(index, salts=bytes(8))

    monkeypatch.setattr(sqlite, "_wal_index", restarted_after_the_first_look)
    way, found = sqlite.copy_and_digest(str(live), str(tmp_path / "copy"), sqlite.page_index(str(base)),
                                        str(tmp_path / "delta"))
    con.close()
    assert (way, found) == ("online backup API", None) and len(calls) == 2
    assert not (tmp_path / "delta").exists() and sqlite.integrity_check(str(tmp_path / "copy")) == "ok"


def test_a_wal_database_with_a_base_is_digested_live_with_no_copy_and_the_same_findings(tmp_path):
    """digest_live: what copy_and_digest finds (sha256, index, delta byte for byte), with no copy written;
    None, and no delta left, when the pages could not go as a delta, and for a rollback-journal file."""
    live, con = wal_db_with_commits_in_its_wal(tmp_path)
    base = tmp_path / "base"
    sqlite.consistent_copy(str(live), str(base))
    index = sqlite.page_index(str(base))
    con.execute("update task set data = 'changed after the base' where id in (3, 700, 2900)")
    con.commit()
    found = sqlite.digest_live(str(live), index, str(tmp_path / "delta"))
    way, copied = sqlite.copy_and_digest(str(live), str(tmp_path / "copy"), index, str(tmp_path / "delta2"))
    assert found == copied and 0 < found["delta"]["changed"] < found["pages"] * sqlite.DELTA_MAX_SHARE
    assert (tmp_path / "delta").read_bytes() == (tmp_path / "delta2").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "copy", "delta", "delta2", "live.sqlite3",
                                                          "live.sqlite3-shm", "live.sqlite3-wal"]
    con.execute("update task set data = data || ' everywhere'")   # most pages: the whole file goes
    con.commit()
    assert sqlite.digest_live(str(live), index, str(tmp_path / "delta3")) is None
    assert sqlite.digest_live(str(live), None, str(tmp_path / "delta4")) is None
    con.close()
    assert not (tmp_path / "delta3").exists() and not (tmp_path / "delta4").exists()
    rollback = make_db(tmp_path / "rollback.sqlite3")
    assert sqlite.digest_live(str(rollback), sqlite.page_index(str(rollback)), str(tmp_path / "delta5")) is None
    assert not (tmp_path / "delta5").exists()


def test_a_rollback_journal_database_is_digested_after_its_lock_is_let_go(tmp_path):
    live = make_db(tmp_path / "live.sqlite3")
    assert sqlite.copy_and_digest(str(live), str(tmp_path / "copy"), None, str(tmp_path / "delta")) == \
        ("raw copy under a shared lock", None)
    assert (tmp_path / "copy").read_bytes() == live.read_bytes()


def test_the_server_builds_the_pushed_file_from_one_copy_of_its_live_wal_database(tmp_path):
    """apply-live: a consistent copy of the live database (commits in its -wal too), the pushed pages
    written into it where it is: the pushed file byte for byte, 0600, nothing else left in incoming."""
    data_dir, incoming = tmp_path / "data", tmp_path / "data" / ".lsvm-incoming"
    incoming.mkdir(parents=True)
    live = make_db(data_dir / "label_studio.sqlite3")
    con = sqlite3.connect(live)
    con.execute("PRAGMA journal_mode = wal")
    con.execute("update task set data = 'in the wal' where id = 2")
    con.commit()
    pushed = tmp_path / "pushed.sqlite3"
    sqlite.consistent_copy(str(live), str(pushed))
    edit(pushed, [7, 1500, 2999])
    index = _index_of_copy(live, tmp_path)   # the pre-push backup's: a consistent copy of the live database
    sqlite.make_delta(str(pushed), index, str(incoming / "label_studio.sqlite3.delta"))
    built = sqlite.apply_to_live_copy(str(data_dir), str(incoming))
    con.close()
    assert built["sha256"] == sha(pushed) and built["cloned"] == "in place", built
    assert sorted(p.name for p in incoming.iterdir()) == ["label_studio.sqlite3"]
    assert (incoming / "label_studio.sqlite3").stat().st_mode & 0o777 == 0o600
    # A delta that does not fit leaves nothing behind.
    (incoming / "label_studio.sqlite3").unlink()
    (incoming / "label_studio.sqlite3.delta").write_bytes(b"not a delta")
    assert "error" in sqlite.apply_to_live_copy(str(data_dir), str(incoming))
    assert list(incoming.iterdir()) == []


def _index_of_copy(live: Path, tmp_path: Path) -> bytes:
    copy = tmp_path / "server-copy.sqlite3"
    sqlite.consistent_copy(str(live), str(copy))
    return sqlite.page_index(str(copy))


# ------------------------------------------------------------------------------------------------
# The stored index of a snapshot


def snapshot_of(tmp_path: Path, database: Path) -> Snapshot:
    folder = tmp_path / "backups" / "vm" / "20260101T000000Z"
    folder.mkdir(parents=True)
    (folder / DATABASE).write_bytes(database.read_bytes())
    manifest = Manifest("vm", "2026-01-01T00:00:00+00:00", None, None, {}, [
        FileEntry(DATABASE, database.stat().st_size, sha(database))], "ok", {}, False)
    catalog.write_manifest(folder, manifest)
    return catalog.list_snapshots(folder.parent)[0]


def test_a_snapshot_index_is_worked_out_from_its_database(tmp_path):
    db = make_db(tmp_path / "db.sqlite3", rows=200)
    assert snapshots.stored_page_index(snapshot_of(tmp_path / "c", db)) == sqlite.page_index(str(db))
    assert snapshots.stored_page_index(None) is None


# ------------------------------------------------------------------------------------------------
# Push: only the differing pages go; the server's rebuilt file must be the pushed one


def pushed_files(tmp_path: Path, base_db: Path, ids) -> tuple[Path, list[FileEntry]]:
    source = tmp_path / "source"
    source.mkdir()
    (source / DATABASE).write_bytes(base_db.read_bytes())
    edit(source / DATABASE, ids)
    return source, [FileEntry(DATABASE, (source / DATABASE).stat().st_size, sha(source / DATABASE))]


def push_host(rebuilt_sha: str | None, *, error: str | None = None) -> FakeHost:
    host = FakeHost(alias="vm")
    host.answer(r"^df -B1", ok("999999999999\n"))
    host.answer(r"command -v zstd", ok("gzip\n"))
    answer = {"error": error} if error else {"size": 1, "sha256": rebuilt_sha}
    host.answer(r"python3 -I -c .* apply-live ", ok(json.dumps(answer) + "\n"))
    host.answer(r" orm-incoming$", ok('{"tables": 71}\n'))
    host.stream(r"wc -l <", b"begin\nstopped\nswapped\nstarted\nhealthy 200\ndone\n")
    return host


def uploaded_names(channel) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bytes(channel.written)))) as tar:
        return {m.name for m in tar}


def test_a_push_sends_only_the_pages_that_differ_and_checks_the_rebuilt_file(tmp_path, capsys):
    server_db = make_db(tmp_path / "server.sqlite3")
    base = snapshot_of(tmp_path, server_db)
    source, files = pushed_files(tmp_path, server_db, [3, 1500])
    host = push_host(files[0].sha256)
    host.answer(r"python3 -I -c .* tree-sha256 ", ok("{}\n"))
    replace.replace_server_data(host, PROFILE, source, files, health_timeout=30, base=base)
    upload = host.channels[0]
    assert uploaded_names(upload) == {data.DELTA}
    assert len(upload.written) < files[0].size / 10
    assert host.ran(r"' apply-live /") and not host.ran(r"' tree-sha256 /")  # the rebuilt file's hash is the check
    assert "pages differ from the server's; only those are sent" in capsys.readouterr().out


def test_with_pages_and_other_files_the_rebuilt_database_is_not_hashed_a_second_time(tmp_path):
    server_db = make_db(tmp_path / "server.sqlite3")
    base = snapshot_of(tmp_path, server_db)
    source, files = pushed_files(tmp_path, server_db, [3])
    (source / SECRET_ENV).write_bytes(b"SECRET_KEY=x\n")
    files.append(FileEntry(SECRET_ENV, 13, sha(source / SECRET_ENV)))
    host = push_host(files[0].sha256)
    host.answer(r"python3 -I -c .* tree-sha256 ", ok(json.dumps({SECRET_ENV: {"size": 13, "sha256": files[1].sha256}})
                                                       + "\n"))
    replace.replace_server_data(host, PROFILE, source, files, health_timeout=30, base=base)
    assert data.hash_incoming(PROFILE, [DATABASE]) in host.commands


@pytest.mark.parametrize("answer", [{"sha": "0" * 64}, {"error": "page 7 is neither in the base nor in the delta"}])
def test_a_rebuilt_file_that_is_not_the_pushed_one_sends_the_whole_file(tmp_path, capsys, answer):
    server_db = make_db(tmp_path / "server.sqlite3")
    base = snapshot_of(tmp_path, server_db)
    source, files = pushed_files(tmp_path, server_db, [3])
    host = push_host(answer.get("sha"), error=answer.get("error"))
    host.answer(r"python3 -I -c .* tree-sha256 ", ok(json.dumps({
        DATABASE: {"size": files[0].size, "sha256": files[0].sha256}}) + "\n"))
    replace.replace_server_data(host, PROFILE, source, files, health_timeout=30, base=base)
    first, second = host.channels[0], host.channels[1]
    assert uploaded_names(first) == {data.DELTA} and uploaded_names(second) == {DATABASE}
    assert host.commands.count(data.make_incoming(PROFILE)) == 2  # the second upload starts from an empty folder
    assert "sending the whole database" in capsys.readouterr().err


def test_a_push_of_another_history_sends_the_whole_file(tmp_path, capsys):
    server_db = make_db(tmp_path / "server.sqlite3", seed=1)
    base = snapshot_of(tmp_path, server_db)
    other = make_db(tmp_path / "other.sqlite3", seed=2)
    source = tmp_path / "source"
    source.mkdir()
    (source / DATABASE).write_bytes(other.read_bytes())
    files = [FileEntry(DATABASE, other.stat().st_size, sha(other))]
    host = push_host(None)
    host.answer(r"python3 -I -c .* tree-sha256 ", ok(json.dumps({
        DATABASE: {"size": files[0].size, "sha256": files[0].sha256}}) + "\n"))
    replace.replace_server_data(host, PROFILE, source, files, health_timeout=30, base=base)
    assert uploaded_names(host.channels[0]) == {DATABASE} and not host.ran(r"' apply-live /")
    assert "whole database sent" in capsys.readouterr().out



def test_an_index_says_its_digest_and_an_older_sha1_index_still_makes_a_delta(tmp_path):
    old = make_db(tmp_path / "old.sqlite3")
    new = tmp_path / "new.sqlite3"
    new.write_bytes(old.read_bytes())
    edit(new, range(1, 40))
    assert sqlite.ALGORITHM == "xxh3" and sqlite.parse_index(sqlite.page_index(str(old)))[2] == "xxh3"
    for algorithm in ("sha1", "xxh3"):
        index = sqlite.page_index(str(old), algorithm=algorithm)
        delta = tmp_path / f"delta-{algorithm}"
        found = sqlite.make_delta(str(new), index, str(delta))
        built = sqlite.apply_delta(str(old), str(delta), str(tmp_path / f"built-{algorithm}"), index)
        assert found["usable"] and 0 < found["changed"] < found["pages"]
        assert built["sha256"] == sha(new) and built["index"] == sqlite.page_index(str(new), algorithm=algorithm)


def test_a_server_without_xxhash_says_so_and_the_whole_file_goes(tmp_path, monkeypatch):
    old = make_db(tmp_path / "old.sqlite3")
    index = sqlite.page_index(str(old))
    monkeypatch.setattr(sqlite, "xxhash", None)
    with pytest.raises(ValueError, match="python3-xxhash"):
        sqlite.make_delta(str(old), index, str(tmp_path / "delta"))
    assert not (tmp_path / "delta").exists()


def test_the_server_keeps_indexes_by_sha256_only_and_the_newest_three(tmp_path):
    kept = tmp_path / "pages"
    index = sqlite.page_index(str(make_db(tmp_path / "db.sqlite3", rows=50)))
    for n in range(5):
        sqlite.keep_index(str(kept), f"{n:064x}", index)
    assert len(list(kept.iterdir())) == sqlite.KEEP_INDEXES
    assert sqlite.kept_index(str(kept), f"{4:064x}") == index
    for name in ("../../etc/passwd", "0" * 63, "Z" * 64, None, 3):
        assert sqlite.kept_index(str(kept), name) is None
    (kept / f"{4:064x}.pages").write_bytes(b"not an index")
    assert sqlite.kept_index(str(kept), f"{4:064x}") is None


def test_one_read_of_the_copy_gives_its_sha256_its_index_and_the_delta(tmp_path):
    old = make_db(tmp_path / "old.sqlite3")
    new = tmp_path / "new.sqlite3"
    new.write_bytes(old.read_bytes())
    edit(new, range(1, 20))
    found = sqlite.digest_copy(str(new), sqlite.page_index(str(old)), str(tmp_path / "delta"))
    assert found["sha256"] == sha(new) and found["index"] == sqlite.page_index(str(new))
    assert found["delta"]["changed"] == sqlite.make_delta(str(new), sqlite.page_index(str(old)),
                                                          str(tmp_path / "delta2"))["changed"]
    assert (tmp_path / "delta").read_bytes() == (tmp_path / "delta2").read_bytes()
    other = make_db(tmp_path / "other.sqlite3")
    con = sqlite3.connect(other)
    con.execute("PRAGMA page_size = 8192")
    con.execute("VACUUM")
    con.close()
    found = sqlite.digest_copy(str(other), sqlite.page_index(str(old)), str(tmp_path / "delta3"))
    assert found["delta"] is None and found["why"] == "the page size changed"
    assert sqlite.digest_copy(str(other), None, str(tmp_path / "delta4"))["why"] is None


def test_serve_backup_streams_more_uploads_than_the_process_may_hold_open(tmp_path):
    """Each upload is opened when its turn comes: 600 of them go under a limit of 64 descriptors."""
    data = tmp_path / "data"
    label_studio_db(data / "label_studio.sqlite3", tasks=5)
    names = [f"media/upload/1/{i:04d}.png" for i in range(600)]
    for name in names:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(name.encode())
    (tmp_path / "work").mkdir()

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    server = subprocess.Popen([sys.executable, sqlite.__file__, "serve-backup", str(data), str(tmp_path / "venv"),
                               str(tmp_path / "pages"), str(tmp_path / "work")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, preexec_fn=low_limit)
    server.stdin.write(b'{"marker": null, "base": null}\n')
    server.stdin.flush()
    found = json.loads(server.stdout.read(int(server.stdout.readline())))
    assert sorted(m["path"] for m in found["media"]) == names
    server.stdin.write(json.dumps({"database": "whole", "files": names}).encode() + b"\n")
    server.stdin.close()
    stream = server.stdout.read()
    assert server.wait() == 0
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stream)).read() if found["codec"] == "zstd" \
        else gzip.decompress(stream)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert sorted(members) == sorted(["label_studio.sqlite3", *names])
    assert all(members[name] == name.encode() for name in names)
