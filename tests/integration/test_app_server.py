"""The production shape: gunicorn's master and workers on Label Studio's port, migrations as their own step,
SQLite in WAL mode (and every data task still right with it), static files from nginx.

One VM (a clone of the freshly provisioned one) on one Debian release: every other module starts the same
app server on both releases, and what this one looks at (workers, WAL, reloads, static files) is
gunicorn's and SQLite's, not the system's (CI time). The tests run in file order and each leaves it
serving."""

from __future__ import annotations

import re
import shutil
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest

from dev.lsclient import LabelStudio, wait_for_health
from tests.integration.support.labelstudio import api_token
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_WORKERS, provisioned_clone

DB = "/var/lib/label-studio/label_studio.sqlite3"
CONF = "/opt/label-studio/label-studio-gunicorn.conf.py"
AS_SERVICE = "runuser -u labelstudio -- "

pytestmark = pytest.mark.one_release("bookworm")


@pytest.fixture(scope="module")
def app(provisioned, tmp_path_factory):
    # Workers sized from the VM's cores and memory, as on a user's VM.
    machine = provisioned_clone(provisioned, tmp_path_factory.mktemp(f"home-app-{provisioned.suite}"), "app",
                                edits=((TEST_WORKERS, "  workers: 0\n"),))
    yield machine
    machine.vm.stop()


def sh(machine, command: str, **kwargs) -> str:
    return machine.vm.exec(command, **kwargs).stdout.decode()


def sql(machine, statement: str) -> str:
    return sh(machine, f"{AS_SERVICE}sqlite3 -init /dev/null {DB} \"{statement}\"").strip()


def app_server_processes(machine) -> dict[int, int]:
    """pid -> parent pid of every process running gunicorn with our config."""
    found = {}
    for line in sh(machine, "ps -eo pid=,ppid=,args=").splitlines():
        pid, ppid, args = line.split(None, 2)
        if "bin/gunicorn --config " + CONF in args:
            found[int(pid)] = int(ppid)
    return found


def listener_pid(machine, port: int = 8080) -> int:
    out = sh(machine, f"ss -Htlnp 'sport = :{port}'")
    return int(re.search(r"pid=(\d+)", out).group(1))


def assert_serving(machine) -> None:
    assert wait_for_health(machine.url, timeout=120) == {"status": "UP"}
    assert LabelStudio(machine.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)


def test_gunicorn_master_with_workers_serves_and_status_shows_them(app):
    assert app.first_run.returncode == 0, app.first_run.stdout + app.first_run.stderr
    processes = app_server_processes(app)
    masters = [pid for pid, parent in processes.items() if parent not in processes]
    assert len(masters) == 1, processes
    master = masters[0]
    workers = [pid for pid, parent in processes.items() if parent == master]
    assert len(workers) >= 2
    main_pid = int(sh(app, "systemctl show -p MainPID --value label-studio").strip())
    assert main_pid == master
    # The port's listener is the master or one of its workers (they share its socket).
    assert listener_pid(app) in processes
    assert sh(app, f"ps -o user= -p {master}").strip() == "labelstudio"
    # preload_app: the master loaded Label Studio (gunicorn alone maps no compiled module of the release's
    # site-packages) and handed its workers no database handle of its own.
    assert re.search(r"site-packages/\S+\.so", sh(app, f"cat /proc/{master}/maps")), "Label Studio is not preloaded"
    assert "label_studio.sqlite3" not in sh(app, f"ls -l /proc/{master}/fd")
    # Migrations ran before the start, in their own step (its output is in the journal).
    journal = sh(app, "journalctl -u label-studio --no-pager -o cat")
    assert "no migrations to apply" in journal or "migration(s) to apply" in journal
    assert f"with {len(workers)} workers" in journal
    status = app.fab("status")
    assert status.returncode == 0, status.stdout + status.stderr
    row = next(line for line in status.stdout.splitlines() if line.startswith("app server"))
    assert f"gunicorn 23.0.0, master pid {master}, {len(workers)} worker(s)" in row, row
    assert re.search(r"UP\b", status.stdout)


def test_sqlite_is_in_wal_mode_and_a_write_never_waits_for_a_long_read(app):
    assert sql(app, "PRAGMA journal_mode") == "wal"
    # A read transaction held open by one process, a write (with no patience at all) from another.
    hold = ("import sqlite3,sys,time; lsvm_hold=1; c=sqlite3.connect(sys.argv[1]); c.execute('BEGIN');"
            "c.execute('select count(*) from task_completion').fetchone(); print('reading', flush=True); time.sleep(30)")
    write = ("import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=0);"
             "c.execute('create table if not exists lsvm_wal_probe (n integer)');"
             "c.execute('insert into lsvm_wal_probe values (1)'); c.commit(); c.execute('drop table lsvm_wal_probe');"
             "c.commit(); print('written')")
    reader = app.vm.popen(f"{AS_SERVICE}python3 -c \"{hold}\" {DB}")
    try:
        assert reader.stdout.readline().strip() == b"reading"
        assert sh(app, f"{AS_SERVICE}python3 -c \"{write}\" {DB}").strip() == "written"
        # The same in rollback-journal mode (a copy of the database): the write is refused at once.
        sh(app, f"{AS_SERVICE}sqlite3 -init /dev/null {DB} '.backup /var/tmp/rollback.sqlite3' && "
                f"{AS_SERVICE}sqlite3 -init /dev/null /var/tmp/rollback.sqlite3 'PRAGMA journal_mode=DELETE'")
        old_reader = app.vm.popen(f"{AS_SERVICE}python3 -c \"{hold}\" /var/tmp/rollback.sqlite3")
        try:
            assert old_reader.stdout.readline().strip() == b"reading"
            refused = app.vm.exec(f"{AS_SERVICE}python3 -c \"{write}\" /var/tmp/rollback.sqlite3", check=False)
            assert refused.returncode != 0 and b"database is locked" in refused.stderr
        finally:
            old_reader.kill()
    finally:
        reader.kill()
        sh(app, "pkill -f lsvm_hold; rm -f /var/tmp/rollback.sqlite3*", check=False)


def test_static_files_come_from_nginx_even_with_label_studio_stopped(app):
    site_packages = sh(app, "ls -d /opt/label-studio/current/lib/python3*/site-packages").strip()
    hashed = sh(app, f"ls {site_packages}/label_studio/core/static_build/js | grep -E '\\.[0-9a-f]{{12}}\\.js$' | head -n 1")
    hashed = hashed.strip()
    assert hashed
    sh(app, "systemctl stop label-studio")
    try:
        with urllib.request.urlopen(f"{app.url}/static/js/{hashed}") as answer:
            assert answer.status == 200 and "immutable" in answer.headers["Cache-Control"]
            body = answer.read()
        assert body == app.vm.exec(f"cat {site_packages}/label_studio/core/static_build/js/{hashed}").stdout
        with urllib.request.urlopen(f"{app.url}/react-app/main.js") as answer:
            assert answer.status == 200 and answer.headers["Cache-Control"] == "no-cache"
        # What is not a file there still goes to Label Studio (down now: nginx answers 502).
        with pytest.raises(urllib.error.HTTPError) as down:
            urllib.request.urlopen(f"{app.url}/static/no-such-file.css")
        assert down.value.code == 502
    finally:
        sh(app, "systemctl start label-studio")
    assert_serving(app)


def test_a_reload_replaces_the_workers_without_a_failed_request(app):
    from label_studio_sdk import LabelStudio as SDK

    token = api_token(app)
    before = app_server_processes(app)
    master = next(pid for pid, parent in before.items() if parent not in before)
    failures, answered, stop = [], [], threading.Event()

    def client() -> None:
        sdk = SDK(base_url=app.url, api_key=token, timeout=60)
        while not stop.is_set():
            try:
                list(sdk.projects.list())
                answered.append(1)
            except Exception as exc:  # every failure counts
                failures.append(repr(exc))

    def wait_for(more: int) -> None:
        target, deadline = len(answered) + more, time.monotonic() + 120
        while len(answered) < target and not failures and time.monotonic() < deadline:
            time.sleep(0.05)

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        wait_for(20)
        sh(app, "systemctl reload label-studio")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = app_server_processes(app)
            new_workers = {pid for pid, parent in now.items() if parent == master} - set(before)
            if len(new_workers) >= len(before) - 1 and not (set(now) & set(before)) - {master}:
                break
            time.sleep(0.2)
        wait_for(20)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert failures == [] and len(answered) >= 40
    after = app_server_processes(app)
    assert master in after and not (set(after) & set(before)) - {master}  # same master, all workers new
    assert int(sh(app, "systemctl show -p NRestarts --value label-studio").strip()) == 0


STAMP = "/var/lib/label-studio/.lsvm-prepared.json"
QUICK = "no migrations to apply (every one this release needs is recorded in the database)"


def restart_and_read_journal(machine) -> list[str]:
    """What the service said from a stop and a start on; the stop ended as asked: the master's own exit
    (status 0) once its workers left, no SIGKILL."""
    cursor = sh(machine, "journalctl -u label-studio -n 0 --show-cursor --no-pager").strip().split("cursor: ", 1)[1]
    sh(machine, "systemctl stop label-studio")
    ended = sh(machine, "systemctl show -p Result -p ExecMainCode -p ExecMainStatus label-studio").split()
    assert sorted(ended) == ["ExecMainCode=1", "ExecMainStatus=0", "Result=success"], ended   # 1: CLD_EXITED
    sh(machine, "systemctl start label-studio")
    return sh(machine, f"journalctl -u label-studio --after-cursor '{cursor}' --no-pager -o cat").splitlines()


def test_a_start_skips_django_only_while_its_stamp_fits_and_a_stop_leaves_cleanly(app):
    # The last start (provision's) went through Django and left the stamp; this one needs no Django.
    said = restart_and_read_journal(app)
    assert QUICK in said and "SQLite is in WAL mode" in said
    assert any("Shutting down: Master" in line for line in said)
    assert_serving(app)
    # A stamp of another release (an upgrade): Django decides, and the stamp is this release's again.
    edit = ("import json,sys; p=sys.argv[1]; s=json.load(open(p)); s['version']='0.0.1'; "
            "json.dump(s, open(p, 'w'))")
    sh(app, f"{AS_SERVICE}python3 -c \"{edit}\" {STAMP}")
    said = restart_and_read_journal(app)
    assert "no migrations to apply" in said and QUICK not in said
    assert '"version": "0.0.1"' not in sh(app, f"cat {STAMP}")
    assert_serving(app)
    assert QUICK in restart_and_read_journal(app)
    assert_serving(app)


def test_a_backup_under_a_steady_writer_holds_every_row_committed_before_it(app, tmp_path):
    """WAL mode, a writer committing row after row the whole time: the snapshot passes integrity_check,
    holds every row committed before the backup began (and no gap), and restores onto the server."""
    writer_source = ("import sqlite3,sys,time\n"
                     "c=sqlite3.connect(sys.argv[1], timeout=30)\n"
                     "c.execute('create table if not exists lsvm_writer (n integer primary key, pad blob)')\n"
                     "c.commit()\n"
                     "n=c.execute('select coalesce(max(n),0) from lsvm_writer').fetchone()[0]\n"
                     "while True:\n"
                     "    n+=1\n"
                     "    c.execute('insert into lsvm_writer values (?, randomblob(2000))', (n,))\n"
                     "    c.commit()\n"
                     "    if n % 50 == 0: print(n, flush=True)\n")
    sh(app, "cat > /var/tmp/writer.py && chmod 644 /var/tmp/writer.py", input=writer_source.encode())
    writer = app.vm.popen(f"{AS_SERVICE}python3 /var/tmp/writer.py {DB}")
    try:
        while int(writer.stdout.readline()) < 500:
            pass
        committed_before = int(sql(app, "select max(n) from lsvm_writer"))
        # The -wal holds the newest commits: the file alone is not the database.
        assert int(sh(app, f"stat -c %s {DB}-wal").strip()) > 0
        result = app.fab("backup", "--label", "under-writer")
        assert result.returncode == 0, result.stdout + result.stderr
        still_writing = int(sql(app, "select max(n) from lsvm_writer"))
    finally:
        writer.kill()
        sh(app, "pkill -f /var/tmp/writer.py", check=False)
    assert still_writing > committed_before
    folder = next(p for p in (app.fab.home / "backups" / "vm").iterdir() if p.name.endswith("under-writer"))
    copy = tmp_path / "snapshot.sqlite3"
    shutil.copy(folder / "label_studio.sqlite3", copy)
    con = sqlite3.connect(copy)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
        rows = [n for (n,) in con.execute("select n from lsvm_writer order by n")]
    finally:
        con.close()
    assert rows[-1] >= committed_before and rows == list(range(rows[0], rows[-1] + 1))
    # Restored (a rollback-journal file onto a WAL server): the server serves it, in WAL mode again.
    back = app.fab("restore-server", "--snapshot", folder.name, "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    assert_serving(app)
    assert int(sql(app, "select max(n) from lsvm_writer")) == rows[-1]
    assert sql(app, "PRAGMA journal_mode") == "wal"
    assert sql(app, "PRAGMA integrity_check") == "ok"
    sql(app, "drop table lsvm_writer")


def test_a_wal_database_with_commits_only_in_its_wal_is_pushed_whole(app, tmp_path):
    """The reverse direction: a local database in WAL mode whose newest commits are still in its -wal
    (a local Label Studio killed, or running) is pushed with every commit."""
    pulled = app.fab("backup", "--label", "wal-source")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    folder = next(p for p in (app.fab.home / "backups" / "vm").iterdir() if p.name.endswith("wal-source"))
    local = tmp_path / "local"
    local.mkdir()
    shutil.copy(folder / "label_studio.sqlite3", local / "label_studio.sqlite3")
    keeper = sqlite3.connect(local / "label_studio.sqlite3")  # open until the push is done: the -wal stays
    try:
        assert keeper.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        keeper.execute("PRAGMA wal_autocheckpoint=0")
        keeper.execute("create table lsvm_local_only (n integer)")
        keeper.executemany("insert into lsvm_local_only values (?)", [(n,) for n in range(1, 101)])
        keeper.commit()
        assert (local / "label_studio.sqlite3-wal").stat().st_size > 0
        result = app.fab("push-local-db", "--yes", "--local-data-dir", str(local))
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        keeper.close()
    assert_serving(app)
    assert sql(app, "select count(*) from lsvm_local_only") == "100"
    assert sql(app, "PRAGMA journal_mode") == "wal"
    back = app.fab("restore-server", "--snapshot", folder.name, "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    assert_serving(app)


FAKE_REDIS = """
import socket, threading
log = open('/var/tmp/fake-redis.log', 'a', buffering=1)
def serve(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            log.write(data.decode('latin-1').replace('\\r\\n', ' ') + '\\n')
            conn.sendall(b'+PONG\\r\\n' if b'PING' in data.upper() else b'+OK\\r\\n')
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(('127.0.0.1', 6379))
server.listen()
print('listening', flush=True)
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""


def test_a_redis_answering_on_6379_is_named_and_gets_no_job(app):
    """Label Studio's settings look for Redis on localhost:6379. With something answering there, provision
    says where the background jobs run, and a bulk delete (a job Label Studio would queue) still happens."""
    from label_studio_sdk import LabelStudio as SDK

    sh(app, "cat > /var/tmp/fake_redis.py", input=FAKE_REDIS.encode())
    redis = app.vm.popen("python3 /var/tmp/fake_redis.py")
    try:
        assert redis.stdout.readline().strip() == b"listening"
        result = app.fab("provision")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "something answers on localhost:6379 (a Redis?): Label Studio queues no job there" in result.stdout
        sh(app, "systemctl restart label-studio")  # its workers now start beside that Redis
        assert_serving(app)
        sdk = SDK(base_url=app.url, api_key=api_token(app))
        project = sdk.projects.create(title="bulk delete", label_config=(
            '<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
            '<Choice value="a"/></Choices></View>')).id
        sdk.projects.import_tasks(id=project, request=[{"text": f"task {i}"} for i in range(30)])
        assert len(list(sdk.tasks.list(project=project))) == 30
        sdk.actions.create(id="delete_tasks", project=project, selected_items={"all": True, "excluded": []})
        assert list(sdk.tasks.list(project=project)) == []
        sdk.projects.delete(id=project)
        said = sh(app, "cat /var/tmp/fake-redis.log 2>/dev/null || true").upper()
        assert not any(word in said for word in ("RPUSH", "LPUSH", "MULTI", "EVALSHA", "HSET")), said[:500]
    finally:
        redis.kill()
        sh(app, "pkill -f /var/tmp/fake_redis.py", check=False)
