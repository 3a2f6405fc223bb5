"""The integrity check backups run, spread over cores: it must find what one `PRAGMA integrity_check`
finds (an index that no longer matches its table, a damaged page) and pass what it passes."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
import subprocess

import pytest

from tasks.core.onserver import sqlite


def _database(path, rows: int = 3000) -> None:
    con = sqlite3.connect(path)
    con.executescript('''
        create table task (id integer primary key, data text, project int);
        create index task_project on task (project);
        create table "odd ""name""" (id integer primary key, v text unique);
        create table pairs (a int, b int, primary key (a, b)) without rowid;
    ''')
    con.executemany("insert into task values (?, ?, ?)", ((i, f"text {i} " * 20, i % 7) for i in range(rows)))
    con.executemany('insert into "odd ""name""" values (?, ?)', ((i, f"v{i}") for i in range(200)))
    con.executemany("insert into pairs values (?, ?)", ((i, i * 2) for i in range(200)))
    con.commit()
    con.close()


def _plain(path) -> str:
    con = sqlite3.connect(path)
    try:
        rows = con.execute("PRAGMA integrity_check").fetchall()
    finally:
        con.close()
    return "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:3])


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_a_healthy_database_is_ok_on_any_number_of_threads(tmp_path, threads):
    path = tmp_path / "db.sqlite3"
    _database(path)
    assert sqlite.integrity_check(str(path), threads=threads) == "ok" == _plain(path)


def _mismatch_an_index(path) -> None:
    """The index task_project declared on another column than the one it was built on."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA writable_schema = ON")
    con.execute("update sqlite_schema set sql = 'CREATE INDEX task_project ON task (data)' where name = 'task_project'")
    con.commit()
    con.close()


def test_an_index_that_does_not_match_its_table_is_found(tmp_path):
    """What quick_check does not look at: the per-table checks must."""
    path = tmp_path / "db.sqlite3"
    _database(path)
    _mismatch_an_index(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    con.close()
    found = sqlite.integrity_check(str(path), threads=2)
    assert found != "ok" and "task_project" in found
    assert _plain(path) != "ok"


def test_a_damaged_page_is_found(tmp_path):
    path = tmp_path / "db.sqlite3"
    _database(path)
    data = bytearray(path.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle + 8:middle + page] = bytes(range(256)) * ((page - 8) // 256) + bytes((page - 8) % 256)
    path.write_bytes(bytes(data))
    try:
        found = sqlite.integrity_check(str(path), threads=2)
    except sqlite3.DatabaseError:
        found = "raised"
    assert found != "ok" and _plain(path) != "ok"


def _hand_over(tmp_path, source):
    """sqlite.py's send | sqlite.py receive, two processes joined by a pipe as on the server."""
    tool = ["python3", "-I", sqlite.__file__]
    digest, target = tmp_path / "sent.sha256", tmp_path / "incoming.sqlite3"
    sender = subprocess.Popen([*tool, "send", str(source), str(digest)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    received = subprocess.run([*tool, "receive", str(target)], stdin=sender.stdout, capture_output=True, text=True)
    sender.stdout.close()
    sender.wait()
    return sender, received, digest, target


def test_a_restored_database_is_handed_over_checked_and_byte_for_byte(tmp_path):
    source = tmp_path / "restored.sqlite3"
    _database(source)
    sender, received, digest, target = _hand_over(tmp_path, source)
    assert sender.returncode == 0 and received.returncode == 0
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    assert digest.read_text().strip() == received.stdout.strip() == expected
    assert target.read_bytes() == source.read_bytes() and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_damaged_restore_leaves_no_digest_so_the_hand_over_fails(tmp_path):
    source = tmp_path / "restored.sqlite3"
    _database(source)
    _mismatch_an_index(source)
    sender, received, digest, _ = _hand_over(tmp_path, source)
    assert sender.returncode == 1 and b"integrity_check failed" in sender.stderr.read()
    assert not digest.exists() and received.stdout.strip()   # the receiver's digest has nothing to equal


def test_receive_never_writes_over_a_file_that_is_there(tmp_path):
    source = tmp_path / "restored.sqlite3"
    _database(source)
    (tmp_path / "incoming.sqlite3").write_bytes(b"what was there")
    _, received, _, target = _hand_over(tmp_path, source)
    assert received.returncode != 0 and target.read_bytes() == b"what was there"
