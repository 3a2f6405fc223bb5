"""prepare_database's start-up stamp: a start skips Django only when the stamp is this release's and this
environment's and the database holds every migration the release needs."""

from __future__ import annotations

import json
import os
import sqlite3
from types import SimpleNamespace

import pytest

from tasks.core.onserver import prepare_database as prepare

IDENTITY = {"release": "/opt/label-studio/releases/1.23.2/lib/python3.11/site-packages/label_studio",
            "version": "1.23.2", "environment": "e" * 64}
NEEDED = [["projects", "0001_initial"], ["projects", "0002_more"], ["tasks", "0001_initial"]]


def database_with(path, rows, journal="delete"):
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA journal_mode={journal}")
    con.execute("CREATE TABLE django_migrations (id integer primary key, app text, name text, applied text)")
    con.executemany("INSERT INTO django_migrations (app, name, applied) VALUES (?, ?, 'now')", rows)
    con.commit()
    con.close()
    return str(path)


@pytest.fixture
def stamped(tmp_path):
    database = database_with(tmp_path / "label_studio.sqlite3", NEEDED + [["tasks", "0000_older"]])
    stamp = tmp_path / ".lsvm-prepared.json"
    prepare.write_stamp(str(stamp), database, NEEDED, IDENTITY)
    return stamp, database


def test_the_needed_rows_are_the_plain_migrations_and_what_a_squashed_one_replaces():
    disk = {("a", "0001_initial"): SimpleNamespace(replaces=[]),
            ("a", "0001_squashed_0003"): SimpleNamespace(replaces=[("a", "0001_initial"), ("a", "0002_x"),
                                                                   ("a", "0003_y")]),
            ("b", "0004_z"): SimpleNamespace(replaces=[])}
    assert prepare.needed_migrations(disk) == [["a", "0001_initial"], ["a", "0002_x"], ["a", "0003_y"],
                                               ["b", "0004_z"]]


def test_a_database_with_every_needed_row_starts_without_django(stamped):
    stamp, database = stamped
    assert prepare.without_django(str(stamp), IDENTITY) == database


@pytest.mark.parametrize("change", ["release", "version", "environment"])
def test_another_release_or_environment_goes_through_django(stamped, change):
    stamp, _ = stamped
    assert prepare.without_django(str(stamp), dict(IDENTITY, **{change: "other"})) is None


def test_a_database_missing_one_needed_row_goes_through_django(stamped):
    stamp, database = stamped
    con = sqlite3.connect(database)
    con.execute("DELETE FROM django_migrations WHERE name = '0002_more'")   # a restored older database
    con.commit()
    con.close()
    assert prepare.without_django(str(stamp), IDENTITY) is None


@pytest.mark.parametrize("content", ["", "not json", "[]", json.dumps({"format": 1, **IDENTITY}),
                                     json.dumps({"format": 2, **IDENTITY, "database": "x", "needed": []})])
def test_a_stamp_that_is_not_one_goes_through_django(tmp_path, content):
    stamp = tmp_path / "stamp.json"
    stamp.write_text(content)
    assert prepare.without_django(str(stamp), IDENTITY) is None
    assert prepare.without_django(str(tmp_path / "missing.json"), IDENTITY) is None


def test_a_database_that_is_not_there_is_never_created(stamped):
    stamp, database = stamped
    os.unlink(database)
    assert prepare.without_django(str(stamp), IDENTITY) is None
    assert not os.path.exists(database)


def test_the_quick_start_puts_the_database_in_wal_mode_and_shares_it(stamped, capsys):
    stamp, database = stamped
    assert prepare.quick_start(str(stamp), IDENTITY, share=True)
    said = capsys.readouterr().out.splitlines()
    assert said[0] == "SQLite switched from delete to WAL mode"
    assert said[1].startswith("no migrations to apply")
    assert "group-writable" in said[2]
    con = sqlite3.connect(database)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    assert os.stat(database).st_mode & 0o777 == prepare.SHARED_MODE


def test_the_identity_changes_with_the_settings_that_choose_the_database(monkeypatch):
    monkeypatch.setattr(prepare, "label_studio_dir", lambda: IDENTITY["release"])
    monkeypatch.setattr(prepare.importlib.metadata, "version", lambda name: "1.23.2")
    base = {"LABEL_STUDIO_BASE_DATA_DIR": "/var/lib/label-studio", "INVOCATION_ID": "1"}
    same = prepare.release_identity(dict(base, INVOCATION_ID="2", JOURNAL_STREAM="8:9"))
    assert prepare.release_identity(base) == same
    for key in ("DATABASE_NAME", "LABEL_STUDIO_DATABASE_NAME", "DJANGO_DB", "DJANGO_SETTINGS_MODULE"):
        assert prepare.release_identity(dict(base, **{key: "x"}))["environment"] != same["environment"]
