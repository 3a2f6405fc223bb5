"""The integrity check backups run, spread over cores: it must find what one `PRAGMA integrity_check`
finds (an index that no longer matches its table, a damaged page) and pass what it passes."""

from __future__ import annotations

import sqlite3

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


def test_an_index_that_does_not_match_its_table_is_found(tmp_path):
    """What quick_check does not look at: the per-table checks must."""
    path = tmp_path / "db.sqlite3"
    _database(path)
    con = sqlite3.connect(path)
    con.execute("PRAGMA writable_schema = ON")
    con.execute("update sqlite_schema set sql = 'CREATE INDEX task_project ON task (data)' where name = 'task_project'")
    con.commit()
    con.close()
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
