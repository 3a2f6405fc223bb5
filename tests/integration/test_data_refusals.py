"""Data tasks that must refuse, on a provisioned VM with the real Label Studio: a pull never installs a
server database that failed integrity_check, and a push never gives the server a database migrated by a
newer Label Studio than the one it runs. Each test leaves the server as it found it."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from dev.lsclient import wait_for_health
from tasks.core.errors import NotServing
from tests.integration.support.databases import leftovers_in_data_dir, server_database_digest

# Label Studio's own checks of a database, the same on every release: proven on Debian 12 only (CI time).
pytestmark = pytest.mark.one_release("bookworm")

DB = "/var/lib/label-studio/label_studio.sqlite3"
SAVED = "/root/lsvm-test-good.sqlite3"
# A side table whose index no longer matches its rows: integrity_check fails, Label Studio never notices.
CORRUPT = f"""
import sqlite3
con = sqlite3.connect({DB!r})
con.execute("create table lsvm_probe (a, b)")
con.executemany("insert into lsvm_probe values (?, ?)", [(i, -i) for i in range(100)])
con.execute("create index lsvm_probe_a on lsvm_probe (a)")
con.commit()
con.execute("pragma writable_schema = on")
con.execute("update sqlite_master set sql = 'CREATE INDEX lsvm_probe_a ON lsvm_probe (b)' where name = 'lsvm_probe_a'")
con.commit()
"""
COPY = f"""
import sqlite3, sys
source = sqlite3.connect("file:{DB}?mode=ro", uri=True)
target = sqlite3.connect("/tmp/lsvm-copy.sqlite3")
source.backup(target)
target.close()
sys.stdout.buffer.write(open("/tmp/lsvm-copy.sqlite3", "rb").read())
"""


def snapshots_of(machine, host: str = "vm") -> list[Path]:
    root = machine.fab.home / "backups" / host
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def server_sha(machine) -> str:
    """What the server's database holds (WAL mode: its file's bytes change at checkpoints)."""
    return server_database_digest(machine.vm, DB)


def local_saves(machine) -> list[str]:
    """The pre-pull snapshots of local data (earlier tests in the session may have made some)."""
    root = machine.fab.home / "backups" / "local"
    return sorted(p.name for p in root.iterdir() if p.name.endswith("-pre-pull")) if root.is_dir() else []


def own_local_data(folder: Path) -> bytes:
    """A small SQLite database standing for the user's own local work; its bytes."""
    folder.mkdir()
    con = sqlite3.connect(folder / "label_studio.sqlite3")
    con.execute("create table my_work (note text)")
    con.execute("insert into my_work values ('mine')")
    con.commit()
    con.close()
    return (folder / "label_studio.sqlite3").read_bytes()


def test_pull_keeps_but_never_installs_a_server_database_that_fails_integrity_check(data_vm, tmp_path):
    vm = data_vm.vm
    local = tmp_path / "mine"
    before = own_local_data(local)
    pulls = len(snapshots_of(data_vm))
    saved_before = local_saves(data_vm)
    vm.exec(f"systemctl stop label-studio && cp -a {DB} {SAVED}")
    try:
        vm.exec("python3 -", input=CORRUPT.encode())
        result = data_vm.fab("pull-server-db", "--yes", "--local-data-dir", str(local))
    finally:
        vm.exec(f"cp -a {SAVED} {DB} && rm -f {SAVED} {DB}-journal && systemctl start label-studio")
    assert result.returncode == 6, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "failed its check" in result.stderr and "nothing was installed locally" in result.stderr
    kept = snapshots_of(data_vm)[-1]
    assert len(snapshots_of(data_vm)) == pulls + 1 and kept.name.endswith("-pull")
    assert f"kept, marked failed, in {kept}" in result.stderr
    assert json.loads((kept / "manifest.json").read_text())["integrity_check"] != "ok"
    assert (local / "label_studio.sqlite3").read_bytes() == before
    assert sorted(p.name for p in local.iterdir()) == ["label_studio.sqlite3"]
    assert local_saves(data_vm) == saved_before  # refused before the local data was even saved
    assert wait_for_health(data_vm.url, timeout=120) == {"status": "UP"}


def test_push_refuses_a_database_migrated_by_a_newer_label_studio(data_vm, tmp_path):
    local = tmp_path / "newer"
    local.mkdir()
    (local / "label_studio.sqlite3").write_bytes(data_vm.vm.exec("python3 -", input=COPY.encode()).stdout)
    same = data_vm.fab("push-local-db", "--dry-run", "--local-data-dir", str(local))
    assert same.returncode == 0, same.stdout + same.stderr  # the server's own migrations: fine
    assert "could not compare" not in same.stderr

    con = sqlite3.connect(local / "label_studio.sqlite3")
    con.execute("insert into django_migrations (app, name, applied) values ('projects', '9999_from_the_future', "
                "'2030-01-01 00:00:00')")
    con.commit()
    con.close()
    before, count = server_sha(data_vm), len(snapshots_of(data_vm))
    for extra in (["--dry-run"], ["--yes"]):
        result = data_vm.fab("push-local-db", *extra, "--local-data-dir", str(local))
        assert result.returncode == 6, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert "migration projects.9999_from_the_future is unknown to the server's release" in result.stderr
        assert "upgrade Label Studio on vm first" in result.stderr
    assert server_sha(data_vm) == before
    assert len(snapshots_of(data_vm)) == count  # not even a pre-push backup: refused first
    assert wait_for_health(data_vm.url, timeout=60) == {"status": "UP"}


def server_copy(machine, folder: Path) -> Path:
    """A consistent copy of the server's database, as a pull would bring it, in `folder`."""
    folder.mkdir()
    (folder / "label_studio.sqlite3").write_bytes(machine.vm.exec("python3 -", input=COPY.encode()).stdout)
    return folder / "label_studio.sqlite3"


def active_since(machine) -> str:
    return machine.vm.exec("systemctl show -p ActiveEnterTimestampMonotonic --value label-studio").stdout.decode().strip()


def test_push_refuses_a_database_the_server_release_cannot_read_before_anything_stops(data_vm, tmp_path):
    """integrity_check passes and every table is there, but one column is not: the release's own models
    read every table of the upload before the service is touched."""
    database = server_copy(data_vm, tmp_path / "dropped")
    con = sqlite3.connect(database)
    con.execute("alter table task_completion drop column lead_time")
    con.commit()
    con.close()
    before, since = server_sha(data_vm), active_since(data_vm)
    result = data_vm.fab("push-local-db", "--yes", "--local-data-dir", str(database.parent))
    assert result.returncode == 6, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert ("cannot use this database: task_completion: OperationalError: no such column: "
            "task_completion.lead_time; nothing was stopped or replaced") in result.stderr
    assert server_sha(data_vm) == before and active_since(data_vm) == since   # never stopped
    assert leftovers_in_data_dir(data_vm.vm) == []   # no upload left
    assert wait_for_health(data_vm.url, timeout=60) == {"status": "UP"}


def test_a_database_that_breaks_only_after_its_migrations_is_rolled_back_by_the_gate(data_vm, tmp_path):
    """One migration short (so nothing can be read before Label Studio migrates it at start) and one column
    gone: /health answers UP on it, the release's read of every table does not, and the job puts the old
    data back."""
    database = server_copy(data_vm, tmp_path / "tricky")
    con = sqlite3.connect(database)
    con.execute("alter table project drop column annotator_evaluation_enabled")
    con.execute("alter table task_completion drop column lead_time")
    con.execute("delete from django_migrations where app = 'projects' and name = '0034_project_annotator_evaluation_enabled'")
    con.commit()
    con.close()
    before = server_sha(data_vm)
    result = data_vm.fab("push-local-db", "--yes", "--local-data-dir", str(database.parent))
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "lacks 1 of the release's migrations" in result.stdout
    assert ("answers /health but cannot read the new database: task_completion: OperationalError: no such column: "
            "task_completion.lead_time") in result.stderr
    assert "the previous data is back in place and Label Studio is serving it" in result.stderr
    assert server_sha(data_vm) == before
    status = data_vm.fab("status")
    assert re.search(r"health \(via nginx\)\s+UP", status.stdout), status.stdout


def test_status_says_up_only_when_the_release_reads_its_database(data_vm):
    vm = data_vm.vm
    vm.exec(f"systemctl stop label-studio && cp -a {DB} {SAVED}")
    try:
        vm.exec(f"python3 -c \"import sqlite3; c = sqlite3.connect('{DB}'); "
                "c.execute('alter table task_completion drop column lead_time'); c.commit()\" "
                "&& systemctl start label-studio")
        assert wait_for_health(data_vm.url, timeout=120) == {"status": "UP"}   # /health never reads it
        status = data_vm.fab("status")
    finally:
        vm.exec(f"systemctl stop label-studio && cp -a {SAVED} {DB} && rm -f {SAVED} && systemctl start label-studio")
    assert re.search(r"health \(via nginx\)\s+answers /health, but cannot read its database: task_completion: "
                     r"OperationalError: no such column: task_completion\.lead_time", status.stdout), status.stdout
    assert status.returncode == NotServing.exit_code, status.stderr
    assert wait_for_health(data_vm.url, timeout=120) == {"status": "UP"}
    up = data_vm.fab("status")
    assert re.search(r"health \(via nginx\)\s+UP", up.stdout)
    assert up.returncode == 0, up.stderr
