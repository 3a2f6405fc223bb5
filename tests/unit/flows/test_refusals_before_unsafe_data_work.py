"""Clean refusals instead of unsafe work or tracebacks. (a) pull never installs a server database that
failed integrity_check; (b) push refuses a database migrated by a newer Label Studio than
the server's; (c) a snapshot stream brings only the files asked for, no larger than announced;
(d) a manifest of the wrong shape makes its snapshot incomplete; (e) no hard links means a copy, and a
full disk here is a SnapshotError with no partial snapshot left; (f) `-H local` is refused."""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import os
import re
import sqlite3
import tarfile
from pathlib import Path

import pytest
from fabric import Connection
from invoke import Context, Exit

import tasks.core.files as file_helpers
from tasks import data as data_tasks
from tasks.core import edge, transfer, ui
from tasks.core.connect import RootChannel
from tasks.core.data import catalog, engine, local
from tasks.core.data.catalog import LOCAL_HOST, MANIFEST, Manifest
from tasks.core.defaults import DATABASE, SECRET_ENV
from tasks.core.errors import RemoteError, SnapshotError, UsageError
from tasks.core.files import link_or_copy, space_needed
from tasks.core.onserver import sqlite
from tests.integration.support.databases import index_out_of_step
from tests.unit.fakehost import FakeChannel, FakeHost, Stream, ok
from tests.unit.samples import DB, ENV, LOCK, MEDIA_FILE, PNG, PROFILE, prepared, server, sha



@pytest.fixture(autouse=True)
def backups(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LSVM_BACKUPS_DIR", str(tmp_path / "backups"))
    return tmp_path / "backups"


def on_server(monkeypatch, host: FakeHost) -> FakeHost:
    """The data tasks talk to `host` (a recording FakeHost) under PROFILE instead of a real server."""
    monkeypatch.setattr(data_tasks, "open_host", lambda c, config=None, sudo=False, not_on_a_site=None: (PROFILE, host))
    return host


def label_studio_db(path: Path, migrations: dict[str, list[str]], tasks: int = 2) -> Path:
    """A small Label Studio-shaped SQLite database whose django_migrations holds `migrations`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("create table django_migrations (id integer primary key, app text, name text, applied text)")
    for table in sqlite.LABEL_STUDIO_TABLES[1:]:
        con.execute(f"create table {table} (id integer primary key, note text)")
    con.executemany("insert into django_migrations (app, name, applied) values (?, ?, '2026-01-01')",
                    [(app, name) for app, names in migrations.items() for name in names])
    con.execute("insert into project (note) values ('p')")
    con.executemany("insert into task (note) values (?)", [(f"t{i}",) for i in range(tasks)])
    con.commit()
    con.close()
    return path


SERVER_MIGRATIONS = {"projects": ["0001_initial", "0002_auto"], "tasks": ["0001_initial"]}


# ------------------------------------------------------------------------------------------------
# (a) pull-server-db installs only a verified server snapshot


def test_pull_refuses_to_install_a_server_database_that_failed_integrity_check(monkeypatch, tmp_path, backups,
                                                                               capsys):
    broken = DB[:4096] + bytes(len(DB) - 4096)   # the server's own copy: its pages after the first zeroed
    on_server(monkeypatch, server(prepared(database={"size": len(broken)}), db=broken).stream(LOCK, b"LOCKED\n"))
    mine = tmp_path / "mine"
    label_studio_db(mine / DATABASE, SERVER_MIGRATIONS, tasks=5)
    before = (mine / DATABASE).read_bytes()
    with pytest.raises(Exit) as caught:
        data_tasks.pull_server_db(Context(), yes=True, local_data_dir=str(mine))
    assert caught.value.code == 6
    [kept] = catalog.list_snapshots(backups / "vm")
    assert kept.state == "failed" and kept.label == "pull"
    assert kept.manifest.extra["check"]["on"] == "this machine"
    err = capsys.readouterr().err
    assert "failed its check" in err and "nothing was installed locally" in err
    assert f"kept, marked failed, in {kept.path}" in err.replace("\n", "")
    assert "Traceback" not in err
    assert (mine / DATABASE).read_bytes() == before
    assert catalog.list_snapshots(backups / LOCAL_HOST) == []  # not even a pre-pull save


def test_a_verified_pull_is_installed(monkeypatch, tmp_path, backups):
    on_server(monkeypatch, server(prepared()).stream(LOCK, b"LOCKED\n"))
    mine = tmp_path / "mine"
    label_studio_db(mine / DATABASE, SERVER_MIGRATIONS)
    data_tasks.pull_server_db(Context(), yes=True, local_data_dir=str(mine))
    assert (mine / DATABASE).read_bytes() == DB
    assert [s.label for s in catalog.list_snapshots(backups / LOCAL_HOST)] == ["pre-pull"]


# ------------------------------------------------------------------------------------------------
# (b) push-local-db refuses migrations the server's database does not know


def test_the_migrations_command_lists_applied_migrations_per_app_sorted(tmp_path):
    db = label_studio_db(tmp_path / "ls.sqlite3", {"tasks": ["0002_b", "0001_a"], "projects": ["0001_initial"]})
    assert sqlite.migrations(str(db)) == {"projects": ["0001_initial"], "tasks": ["0001_a", "0002_b"]}
    assert sqlite.main(["migrations", str(db)]) == 0


def test_the_migrations_command_reports_an_unreadable_database_as_json(tmp_path, capsys):
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("create table notes (x)").connection.close()
    assert sqlite.main(["migrations", str(other)]) == 0
    assert "no such table: django_migrations" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize("pushed, unknown", [
    (SERVER_MIGRATIONS, []),
    ({"projects": ["0001_initial"]}, []),  # older than the server: its Label Studio migrates it on start
    ({**SERVER_MIGRATIONS, "tasks": ["0001_initial", "0002_new"]}, [("tasks", "0002_new")]),
    ({**SERVER_MIGRATIONS, "plugins": ["0001_initial"]}, [("plugins", "0001_initial")]),
])
def test_unknown_migrations(pushed, unknown):
    assert local.unknown_migrations(pushed, SERVER_MIGRATIONS) == unknown


def test_a_database_from_a_newer_label_studio_is_refused_naming_a_migration(tmp_path):
    newer = {**SERVER_MIGRATIONS, "projects": ["0001_initial", "0002_auto", "0003_future", "0004_later"]}
    db = label_studio_db(tmp_path / "ls.sqlite3", newer)
    with pytest.raises(SnapshotError, match=r"newer Label Studio than vm runs: migration projects\.0003_future "
                                            r"\(and 1 more\) is unknown to the server's release") as caught:
        local.require_known_migrations(db, SERVER_MIGRATIONS, "vm")
    assert "upgrade Label Studio on vm first" in caught.value.hint
    local.require_known_migrations(db, newer, "vm")  # an upgraded server knows them


def test_without_the_server_s_migrations_push_warns_and_goes_on(tmp_path, capsys):
    db = label_studio_db(tmp_path / "ls.sqlite3", SERVER_MIGRATIONS)
    local.require_known_migrations(db, {"error": "no such table: django_migrations"}, "vm")
    local.require_known_migrations(db, None, "vm")
    assert capsys.readouterr().err.count("could not compare Django migrations with vm") == 2


@pytest.mark.parametrize("task, call", [
    ("restore-server", lambda: data_tasks.restore_server(Context(), snapshot="vm/20261204T000000Z", yes=True)),
    ("push-local-db", lambda: data_tasks.push_local_db(Context(), yes=True, local_data_dir="/nowhere")),
])
def test_one_app_vm_of_a_site_refuses_the_data_tasks_that_would_change_the_whole_sites_data(monkeypatch, capsys,
                                                                                           task, call):
    from tasks.core import site
    host = FakeHost(alias="app2").answer(r"cat .*label-studio-site", ok(site.member_marker(
        site.parse_site("profile: p.yaml\napps: [app1, app2]\nbalancer: {host: lb}\n", source="/s/site.yaml"), "app2")))
    monkeypatch.setattr(edge, "_open", lambda c, alias, config, sudo, env=None: (PROFILE, host))
    monkeypatch.setattr(edge, "host_alias", lambda c: "app2")
    with pytest.raises(Exit):
        call()
    err = capsys.readouterr().err
    assert f"app2 is an app VM of a site (balancer lb): `{task}` on it alone" in err and "site-restore" in err
    assert len(host.commands) == 1 and host.channels == [] and host.uploads == {}   # read the marker, nothing else


def test_push_refuses_a_newer_database_before_the_server_is_touched(monkeypatch, tmp_path, capsys):
    server_db = label_studio_db(tmp_path / "server.sqlite3", SERVER_MIGRATIONS)
    host = on_server(monkeypatch, FakeHost(alias="vm"))
    host.answer(r" counts ", ok('{"projects": 1, "tasks": 2, "annotations": 0}\n'))
    host.answer(r"\.lsvm-migrations\.json", ok(json.dumps(sqlite.migrations(str(server_db))) + "\n"))
    mine = tmp_path / "mine"
    label_studio_db(mine / DATABASE, {**SERVER_MIGRATIONS, "tasks": ["0001_initial", "0099_from_the_future"]})
    with pytest.raises(Exit) as caught:
        data_tasks.push_local_db(Context(), yes=True, local_data_dir=str(mine))
    assert caught.value.code == 6
    err = capsys.readouterr().err
    assert "migration tasks.0099_from_the_future is unknown to the server's release" in err
    assert "upgrade Label Studio on vm first" in err
    assert host.channels == [] and host.uploads == {}  # no lock, no stream, no upload
    # It only read the server: which database its env file names (snapshots.refuse_other_database), then
    # the counts and migrations.
    assert host.commands[0] == "cat /opt/label-studio/label-studio.env 2>/dev/null || true"
    # the counts and the migrations the server's release ships (its files, never the live database's rows).
    assert [re.search(r" (counts /var/lib/label-studio/|migrations\) )", c).group(1).strip() for c in host.commands[1:]] \
        == ["counts /var/lib/label-studio/", "migrations)"]


def test_push_goes_on_when_the_server_knows_every_migration(monkeypatch, tmp_path, capsys):
    server_db = label_studio_db(tmp_path / "server.sqlite3", SERVER_MIGRATIONS)
    host = on_server(monkeypatch, FakeHost(alias="vm"))
    host.answer(r" counts ", ok('{"projects": 1, "tasks": 2, "annotations": 0}\n'))
    host.answer(r"\.lsvm-migrations\.json", ok(json.dumps(sqlite.migrations(str(server_db))) + "\n"))
    mine = tmp_path / "mine"
    label_studio_db(mine / DATABASE, {"projects": ["0001_initial"]})
    data_tasks.push_local_db(Context(), dry_run=True, local_data_dir=str(mine))
    assert "the local database passed its checks" in capsys.readouterr().out


def out_of_step_db(path: Path) -> Path:
    """A Label Studio-shaped database only the full integrity_check faults (what push's gate, beside the
    backup, is for)."""
    label_studio_db(path, SERVER_MIGRATIONS, tasks=50)
    index_out_of_step(path, "task", "note", b"t1", b"x1")
    report = sqlite.inspect(str(path))
    assert report["counts"]["tasks"] == 50 and report["integrity_check"] not in ("", "ok"), report
    return path


def test_push_s_gate_refuses_a_database_only_integrity_check_sees_before_a_person_is_asked(monkeypatch, tmp_path,
                                                                                           capsys):
    server_db = label_studio_db(tmp_path / "server.sqlite3", SERVER_MIGRATIONS)
    host = on_server(monkeypatch, FakeHost(alias="vm"))
    host.answer(r" counts ", ok('{"projects": 1, "tasks": 2, "annotations": 0}\n'))
    host.answer(r"\.lsvm-migrations\.json", ok(json.dumps(sqlite.migrations(str(server_db))) + "\n"))
    mine = tmp_path / "mine"
    out_of_step_db(mine / DATABASE)
    with pytest.raises(Exit) as caught:
        data_tasks.push_local_db(Context(), dry_run=True, local_data_dir=str(mine))
    assert caught.value.code == 6
    captured = capsys.readouterr()
    assert "failed SQLite's integrity_check" in captured.err and "nothing was sent" in captured.err, captured.err
    assert "passed its checks" not in captured.out
    assert host.channels == [] and host.uploads == {}


def test_with_yes_push_s_gate_runs_beside_the_backup_and_the_upload_and_stops_before_anything_is_replaced(
        monkeypatch, tmp_path, capsys):
    """--yes: the local check runs while the server is backed up and the upload goes; a database that
    fails it is refused after that backup (kept, and named) and before the server's data is replaced."""
    server_db = label_studio_db(tmp_path / "server.sqlite3", SERVER_MIGRATIONS)
    host = on_server(monkeypatch, FakeHost(alias="vm"))
    host.answer(r" counts ", ok('{"projects": 1, "tasks": 2, "annotations": 0}\n'))
    host.answer(r"\.lsvm-migrations\.json", ok(json.dumps(sqlite.migrations(str(server_db))) + "\n"))
    happened = []
    backed_up = catalog.Snapshot(id="20261203T000000Z-pre-push", path=tmp_path / "backups" / "vm" / "x", host="vm",
                                 created=None, label="pre-push", manifest=None)

    def take_server_snapshot(host, profile, label, check):
        happened.append(("backup", label, check))
        return backed_up

    monkeypatch.setattr(data_tasks.snapshots, "server_lock", lambda host, profile, name: contextlib.nullcontext())
    monkeypatch.setattr(data_tasks.engine, "take_server_snapshot", take_server_snapshot)
    monkeypatch.setattr(data_tasks.restore, "report_snapshot", lambda snapshot, what: None)
    def put_on_server(*args, before_replace, **kwargs):   # as on SQLite: the gate once the upload is proven
        happened.append("sent")
        before_replace(True)
        happened.append("replaced")

    monkeypatch.setattr(data_tasks.engine, "put_on_server", put_on_server)
    mine = tmp_path / "mine"
    out_of_step_db(mine / DATABASE)
    with pytest.raises(Exit) as caught:
        data_tasks.push_local_db(Context(), yes=True, local_data_dir=str(mine))
    assert caught.value.code == 6
    err = " ".join(capsys.readouterr().err.split())
    assert "failed SQLite's integrity_check" in err and "nothing on the server was replaced" in err, err
    assert f"pre-push backup is kept as {backed_up.id}" in err, err
    assert happened == [("backup", "pre-push", False), "sent"]
    # A healthy database goes on to the swap, its check passed on the way.
    good = tmp_path / "good"
    label_studio_db(good / DATABASE, SERVER_MIGRATIONS)
    happened.clear()
    data_tasks.push_local_db(Context(), yes=True, local_data_dir=str(good))
    assert happened == [("backup", "pre-push", False), "sent", "replaced"]
    assert "local database checked: integrity ok" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# (c) receive_tar takes only what it asked for, no larger than announced


FILES = {DATABASE: DB, SECRET_ENV: ENV, MEDIA_FILE: PNG}


def wire(members: list[tuple[str, bytes | None]]) -> RootChannel:
    """A gzip tar stream on a channel: (name, content) files, (name, None) folders, in that order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w|") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return RootChannel("vm", FakeChannel("download", Stream(gzip.compress(raw.getvalue()))))


def receive(channel: RootChannel, dest: Path, expected: dict[str, int]) -> dict:
    return transfer.receive_tar(channel, transfer.Codec("gzip"), dest, total=1, description="down", expected=expected)


def announced(files: dict[str, bytes]) -> dict[str, int]:
    return {name: len(content) for name, content in files.items()}


def test_receive_tar_takes_the_files_asked_for_and_their_folders(tmp_path):
    channel = wire([("media", None), ("media/upload", None), *FILES.items()])
    received = receive(channel, tmp_path / "dest", announced(FILES))
    assert received == {name: (len(content), sha(content)) for name, content in FILES.items()}


def test_receive_tar_accepts_a_file_smaller_than_announced_and_a_missing_one(tmp_path):
    received = receive(wire([(DATABASE, DB[:5])]), tmp_path / "dest", announced(FILES))
    assert received == {DATABASE: (5, sha(DB[:5]))}  # the caller compares hashes and says what is missing


@pytest.mark.parametrize("members, error, words", [
    ([(DATABASE, DB), ("etc/cron.d/evil", b"* * * * * root sh")], RemoteError, "not asked for: 'etc/cron.d/evil'"),
    ([("media/upload/1/other.png", PNG)], RemoteError, "not asked for: 'media/upload/1/other.png'"),
    ([("etc", None)], RemoteError, "a folder the stream was not asked for: 'etc'"),
    ([(DATABASE, DB), (DATABASE, DB)], RemoteError, "came twice"),
    ([(DATABASE, DB + b"x" * 1000)], SnapshotError, f"{DATABASE} is larger than announced"),
])
def test_receive_tar_refuses_what_it_did_not_ask_for(tmp_path, members, error, words):
    dest = tmp_path / "dest"
    with pytest.raises(error, match=words):
        receive(wire(members), dest, announced(FILES))
    assert not (dest / "etc").exists() and not (dest / "media/upload/1/other.png").exists()


def test_a_backup_stream_with_an_extra_file_leaves_no_snapshot(backups):
    host = server(prepared(), files={DATABASE: (DB, 1), SECRET_ENV: (ENV, 1), MEDIA_FILE: (PNG, 1),
                                     "media/upload/1/planted.sh": (b"x", 1)})
    with pytest.raises(RemoteError, match="not asked for: 'media/upload/1/planted.sh'"):
        engine.take_server_snapshot(host, PROFILE, label=None)
    assert list((backups / "vm").iterdir()) == []


def test_a_backup_stream_with_a_grown_file_leaves_no_snapshot(backups):
    host = server(prepared(), files={DATABASE: (DB, 1), SECRET_ENV: (ENV + b"MORE=1\n", 1), MEDIA_FILE: (PNG, 1)})
    with pytest.raises(SnapshotError, match=r"\.env is larger than announced"):
        engine.take_server_snapshot(host, PROFILE, label=None)
    assert list((backups / "vm").iterdir()) == []


# ------------------------------------------------------------------------------------------------
# (d) a manifest of the wrong shape: an incomplete snapshot, never a traceback


GOOD = json.loads(Manifest("vm", "2026-01-01T00:00:00+00:00", None, "1.23.2", {"marker": None},
                           [catalog.FileEntry(DATABASE, 3, "ab")], "ok", {"tasks": 1}, True).to_json())
MALFORMED = ["[]", "3", "null", '"text"', '{"files": 3}', '{"files": [3]}', "{}", "[" * 100000,
             json.dumps({**GOOD, "counts": 3}), json.dumps({**GOOD, "source": []}), json.dumps({**GOOD, "extra": None}),
             json.dumps({**GOOD, "files": [{"path": DATABASE, "size": "3", "sha256": "ab"}]}),
             json.dumps({**GOOD, "files": [{"path": DATABASE, "size": True, "sha256": "ab"}]}),
             json.dumps({**GOOD, "files": [{"path": DATABASE, "size": 3}]}),
             json.dumps({**GOOD, "integrity_check": None}), json.dumps({**GOOD, "media_included": "yes"})]


@pytest.mark.parametrize("text", MALFORMED)
def test_a_manifest_of_the_wrong_shape_is_not_a_manifest(text):
    with pytest.raises((ValueError, RecursionError)):
        Manifest.from_json(text)


def test_a_good_manifest_still_reads_and_optional_keys_may_be_absent():
    assert Manifest.from_json(json.dumps(GOOD)).counts == {"tasks": 1}
    older = {k: v for k, v in GOOD.items() if k not in ("format", "extra")}
    assert Manifest.from_json(json.dumps(older)).extra == {}


def plant(host_dir: Path, texts: list[str]) -> list[str]:
    """One snapshot folder per manifest text, a minute apart; their ids."""
    ids = []
    for minute, text in enumerate(texts):
        folder = host_dir / f"20260101T00{minute // 60:02d}{minute % 60:02d}Z"
        folder.mkdir(parents=True)
        (folder / MANIFEST).write_text(text)
        ids.append(folder.name)
    return ids


def test_snapshots_with_malformed_manifests_are_listed_as_incomplete(backups):
    ids = plant(backups / "vm", MALFORMED)
    found = catalog.list_snapshots(backups / "vm")
    assert [s.id for s in found] == ids and not any(s.complete for s in found)
    assert catalog.newest_complete(backups / "vm") is None  # status: no last backup


def test_backups_and_prune_show_malformed_manifests_as_incomplete(monkeypatch, backups, capsys):
    monkeypatch.setattr(ui.out, "width", 200)
    plant(backups / LOCAL_HOST, ["[]", "3", '{"files": 3}', json.dumps({**GOOD, "counts": 3})])
    data_tasks.backups(Context())
    assert capsys.readouterr().out.count("incomplete") == 4
    data_tasks.prune(Context(), dry_run=True)
    out = capsys.readouterr().out
    # the newest is kept however malformed (issue 21.11): never pruned as garbage while it is the newest
    assert out.count("(incomplete)") == 3 and "never removed while it is the newest" in out


def test_a_backup_after_a_malformed_manifest_is_a_full_one(backups):
    plant(backups / "vm", [json.dumps({**GOOD, "source": 3})])
    snapshot = engine.take_server_snapshot(server(prepared()), PROFILE, label=None)
    assert snapshot.verified


# ------------------------------------------------------------------------------------------------
# (e) no hard links: a copy; a full disk here: a SnapshotError, nothing half-written left


def refuse_links(monkeypatch, code: int = errno.EPERM) -> None:
    def no_link(source, target):
        raise OSError(code, os.strerror(code), str(source), None, str(target))

    monkeypatch.setattr(catalog.os, "link", no_link)


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK])
def test_link_or_copy_copies_where_there_are_no_hard_links(monkeypatch, tmp_path, code):
    source = tmp_path / "old" / "a.png"
    source.parent.mkdir()
    source.write_bytes(PNG)
    os.utime(source, (1700000000, 1700000000))
    refuse_links(monkeypatch, code)
    target = tmp_path / "new" / "media" / "a.png"
    link_or_copy(source, target)
    assert target.read_bytes() == PNG and target.stat().st_ino != source.stat().st_ino
    assert target.stat().st_mode & 0o777 == 0o600 and target.stat().st_mtime == 1700000000


def test_link_or_copy_links_where_it_can(tmp_path):
    source = tmp_path / "a"
    source.write_bytes(b"x")
    link_or_copy(source, tmp_path / "new" / "a")
    assert (tmp_path / "new" / "a").stat().st_ino == source.stat().st_ino


def test_link_or_copy_on_a_full_disk_is_a_snapshot_error(monkeypatch, tmp_path):
    source = tmp_path / "a"
    source.write_bytes(b"x")
    refuse_links(monkeypatch, errno.ENOSPC)
    with pytest.raises(SnapshotError, match=f"no space left on this machine in {tmp_path / 'new'}"):
        link_or_copy(source, tmp_path / "new" / "a")


def test_a_second_backup_without_hard_links_copies_the_unchanged_files(monkeypatch, backups):
    first = engine.take_server_snapshot(server(prepared()), PROFILE, label=None)
    refuse_links(monkeypatch)
    second = engine.take_server_snapshot(server(prepared(unchanged=True, database=None), files={}), PROFILE, label=None)
    assert second.verified
    for name in (DATABASE, SECRET_ENV, MEDIA_FILE):
        assert (second.path / name).read_bytes() == (first.path / name).read_bytes()
        assert (second.path / name).stat().st_ino != (first.path / name).stat().st_ino


def filling_up(after: int):
    """A write_private that writes `after` bytes of a file, then finds the disk full."""
    real = file_helpers.write_private

    def write_private(target, source, **kwargs):
        class Full(io.RawIOBase):
            def read(self, size=-1):
                data = source.read(min(size, after) if size and size > 0 else after)
                if not data or target.exists() and target.stat().st_size >= after:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return data

        return real(target, Full(), **kwargs)

    return write_private


def test_a_full_disk_during_a_backup_is_a_snapshot_error_and_leaves_no_folder(monkeypatch, backups):
    monkeypatch.setattr(transfer, "write_private", filling_up(4))
    with pytest.raises(SnapshotError, match=f"no space left on this machine in {backups / 'vm'}/") as caught:
        engine.take_server_snapshot(server(prepared()), PROFILE, label=None)
    assert caught.value.exit_code == 6
    assert list((backups / "vm").iterdir()) == []


def test_a_full_disk_while_saving_local_data_leaves_no_folder(monkeypatch, tmp_path, backups):
    mine = tmp_path / "mine"
    label_studio_db(mine / DATABASE, SERVER_MIGRATIONS)
    (mine / "media/upload").mkdir(parents=True)
    (mine / "media/upload/a.png").write_bytes(PNG)
    monkeypatch.setattr(local, "write_private", filling_up(4))
    with pytest.raises(SnapshotError, match=f"no space left on this machine in {backups / LOCAL_HOST}/"):
        local.save_local_data(mine, "pre-pull")
    assert list((backups / LOCAL_HOST).iterdir()) == []


def test_a_full_disk_in_sqlite_s_copy_is_not_called_a_bad_database(monkeypatch, tmp_path, backups):
    mine = tmp_path / "mine"
    label_studio_db(mine / DATABASE, SERVER_MIGRATIONS)

    def full(source, target, busy_timeout=60.0):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sqlite, "consistent_copy", full)
    with pytest.raises(SnapshotError, match="no space left on this machine in"):
        local.save_local_data(mine, "pre-pull")
    assert list((backups / LOCAL_HOST).iterdir()) == []


def test_a_full_disk_while_installing_leaves_the_data_dir_as_it_was(monkeypatch, tmp_path, backups):
    source = tmp_path / "server"
    label_studio_db(source / DATABASE, SERVER_MIGRATIONS, tasks=7)
    pulled, _ = local.snapshot_local_data(source, tmp_path / "pulls", label="pull")
    mine = tmp_path / "mine"
    label_studio_db(mine / DATABASE, SERVER_MIGRATIONS)
    before = (mine / DATABASE).read_bytes()

    def half_copy(src, dst, **kwargs):
        Path(dst).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(local.shutil, "copyfile", half_copy)
    with pytest.raises(SnapshotError, match=f"no space left on this machine in {mine}"):
        local.install_local(pulled, mine, with_env=False)
    assert (mine / DATABASE).read_bytes() == before
    assert sorted(p.name for p in mine.iterdir()) == [DATABASE]


def test_other_write_failures_are_not_called_a_full_disk(monkeypatch, tmp_path):
    with pytest.raises(PermissionError):
        with space_needed(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied")


# ------------------------------------------------------------------------------------------------
# (f) `local` is this machine's snapshots, never a server


class NeverConnects:
    def __init__(self, c):
        pass

    def connect(self):
        raise AssertionError("connected to a host named like this machine's snapshots")


@pytest.mark.parametrize("alias", ["local", "LOCAL", "Local", "local/", "./local", "x/../local"])
def test_h_local_is_refused_before_connecting(monkeypatch, alias):
    monkeypatch.setattr(edge, "Host", NeverConnects)
    c = Connection("placeholder")
    c.original_host = alias
    with pytest.raises(UsageError, match=r"reserved name of this machine's snapshots") as caught:
        edge.open_host(c)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("alias", ["vm", "localhost", "local-vm", "ops@local", "my.local"])
def test_other_aliases_are_servers(alias):
    edge.refuse_local_name(alias)


def test_h_local_exits_2_from_a_server_task(monkeypatch, capsys):
    monkeypatch.setattr(edge, "Host", NeverConnects)
    with pytest.raises(Exit) as caught:
        data_tasks.pull_server_db(Connection("local"), yes=True)
    assert caught.value.code == 2
    assert "reserved name of this machine's snapshots" in capsys.readouterr().err
