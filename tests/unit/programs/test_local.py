"""Local data: saving it as a snapshot (and telling an untouched pull from real work), installing a
snapshot in place with nothing half-written left, and finding the user's own data to restore."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tasks.core.data import catalog, local
from tasks.core.data.catalog import LOCAL_HOST
from tasks.core.defaults import DATABASE, MEDIA, SECRET_ENV
from tasks.core.errors import SnapshotError
from tasks.core.onserver import sqlite
from tasks.core.profile import backups_root


def label_studio_db(path: Path, tasks: int = 2) -> Path:
    """A small SQLite database with the tables `sqlite.inspect` needs to call it Label Studio's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("pragma synchronous = off")  # test data: speed over durability
    con.execute("begin")
    for table in sqlite.LABEL_STUDIO_TABLES:
        con.execute(f"create table {table} (id integer primary key, note text)")
    con.execute("insert into project (note) values ('p')")
    con.executemany("insert into task (note) values (?)", [(f"t{i}",) for i in range(tasks)])
    con.execute("commit")
    con.close()
    return path


def add_task(data_dir: Path) -> None:
    con = sqlite3.connect(data_dir / DATABASE)
    con.execute("insert into task (note) values ('more work')")
    con.commit()
    con.close()


def data_dir_with(folder: Path, tasks: int, media: dict[str, bytes] | None = None, env: bytes | None = None) -> Path:
    label_studio_db(folder / DATABASE, tasks)
    for name, content in (media or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    if env is not None:
        (folder / SECRET_ENV).write_bytes(env)
    return folder


@pytest.fixture(autouse=True)
def backups(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LSVM_BACKUPS_DIR", str(tmp_path / "backups"))
    return tmp_path / "backups"


@pytest.fixture
def pulled(tmp_path):
    """A verified snapshot as a pull would have brought it (3 tasks, one media file, an .env)."""
    server = data_dir_with(tmp_path / "server", 3, {"media/upload/s.png": b"server png"}, env=b"SECRET_KEY=server\n")
    snapshot, report = local.snapshot_local_data(server, tmp_path / "pulls", label="pull")
    assert report["counts"] == {"users": 0, "projects": 1, "tasks": 3, "annotations": 0}
    return snapshot


def tasks_in(data_dir: Path) -> int:
    con = sqlite3.connect(data_dir / DATABASE)
    try:
        return con.execute("select count(*) from task").fetchone()[0]
    finally:
        con.close()


def test_nothing_to_save_without_a_local_database(tmp_path):
    assert local.save_local_data(tmp_path / "empty", "pre-pull") is None


def test_own_work_is_saved_as_such_and_an_untouched_pull_is_marked_a_copy(tmp_path, pulled):
    mine = data_dir_with(tmp_path / "mine", 1)
    own = local.save_local_data(mine, "pre-pull")
    assert own.manifest.extra == {"pulled_copy": False} and own.verified
    local.install_snapshot_locally(pulled, mine, with_env=False)
    copy = local.save_local_data(mine, "pre-pull")
    assert copy.manifest.extra == {"pulled_copy": True}
    add_task(mine)  # the user works on the pulled data: that is theirs now
    worked = local.save_local_data(mine, "pre-pull")
    assert worked.manifest.extra == {"pulled_copy": False}
    assert worked.manifest.counts["tasks"] == 4


def test_a_pull_into_another_data_dir_is_not_a_copy_of_this_one(tmp_path, pulled):
    local.install_snapshot_locally(pulled, tmp_path / "elsewhere", with_env=False)
    same_bytes = tmp_path / "here"
    same_bytes.mkdir()
    (same_bytes / DATABASE).write_bytes((tmp_path / "elsewhere" / DATABASE).read_bytes())
    assert local.save_local_data(same_bytes, "pre-pull").manifest.extra == {"pulled_copy": False}


def test_install_local_replaces_the_database_and_media_and_leaves_nothing_half_done(tmp_path, pulled):
    mine = data_dir_with(tmp_path / "mine", 1, {"media/upload/mine.png": b"mine"}, env=b"SECRET_KEY=mine\n")
    (mine / (DATABASE + "-journal")).write_bytes(b"stale journal")
    done = local.install_local(pulled, mine, with_env=False)
    assert done == ["database", "media"]
    assert tasks_in(mine) == 3
    assert sorted(p.name for p in (mine / MEDIA / "upload").iterdir()) == ["s.png"]
    assert (mine / SECRET_ENV).read_bytes() == b"SECRET_KEY=mine\n"  # the local SECRET_KEY stays
    assert sorted(p.name for p in mine.iterdir()) == sorted([DATABASE, MEDIA, SECRET_ENV])
    assert (mine / DATABASE).stat().st_mode & 0o777 == 0o600


def test_install_local_with_env_also_replaces_the_secret(tmp_path, pulled):
    mine = data_dir_with(tmp_path / "mine", 1, env=b"SECRET_KEY=mine\n")
    assert local.install_local(pulled, mine, with_env=True) == ["database", "media", ".env"]
    assert (mine / SECRET_ENV).read_bytes() == b"SECRET_KEY=server\n"
    assert not [p.name for p in mine.iterdir() if p.name.startswith(".lsvm")]


def test_install_remembers_what_went_where(tmp_path, pulled):
    local.install_snapshot_locally(pulled, tmp_path / "mine", with_env=False)
    record = local.last_install_file()
    assert record == backups_root() / LOCAL_HOST / local.LAST_INSTALL
    assert f'"snapshot": "{pulled.id}"' in record.read_text()
    assert record.stat().st_mode & 0o777 == 0o600


def test_own_saved_data_is_the_newest_pre_pull_that_is_not_a_copy(tmp_path, pulled):
    mine = data_dir_with(tmp_path / "mine", 1)
    first_own = local.save_local_data(mine, "pre-pull")
    add_task(mine)
    newest_own = local.save_local_data(mine, "pre-pull")
    local.save_local_data(mine, "pre-restore")  # not saved by a pull
    local.install_snapshot_locally(pulled, mine, with_env=False)
    copy = local.save_local_data(mine, "pre-pull")  # newest of all, but an untouched pull
    assert copy.manifest.extra["pulled_copy"]
    chosen = local.own_saved_data(backups_root() / LOCAL_HOST)
    assert chosen.id == newest_own.id != first_own.id
    assert chosen.manifest.counts["tasks"] == 2


def test_no_own_saved_data_is_a_snapshot_error(tmp_path):
    with pytest.raises(SnapshotError, match="no local data saved by a pull"):
        local.own_saved_data(backups_root() / LOCAL_HOST)


def test_verify_snapshot_finds_a_damaged_file(tmp_path, pulled):
    assert local.verify_snapshot(pulled)["counts"]["tasks"] == 3
    media = pulled.path / "media/upload/s.png"
    media.chmod(0o600)
    media.write_bytes(b"server pnG")
    with pytest.raises(SnapshotError, match="media/upload/s.png does not match its sha256"):
        local.verify_snapshot(pulled)


def test_a_snapshot_of_local_data_is_private_and_complete(pulled):
    assert pulled.complete and pulled.verified and pulled.host == LOCAL_HOST
    assert {f.path for f in pulled.manifest.files} == {DATABASE, SECRET_ENV, "media/upload/s.png"}
    for entry in pulled.manifest.files:
        assert (pulled.path / entry.path).stat().st_mode & 0o777 == 0o600
    assert catalog.find_snapshot(catalog.list_snapshots(pulled.path.parent), pulled.id) == pulled
