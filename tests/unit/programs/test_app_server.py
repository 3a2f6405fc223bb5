"""The app server's pieces that run on the server: gunicorn's settings (worker sizing, the memory a
cgroup allows, the config file as provision renders it), the step before each start, and what `status`
makes of the processes it finds."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading

import pytest

from tasks.core import parse, render
from tasks.core.onserver import app_server, instances, sqlite
from tasks.core.provision.facts import status_from_probe
from tasks.service import app_server_text
from tests.unit.samples import PROFILE


@pytest.mark.parametrize("wanted, cpus, memory, expected", [
    (0, 2, 2048, 4),         # HumanSignal's 2 per core; a 2 GB VM holds 5 workers of 300 MB
    (0, 2, 1024, 2),         # 1 GB: memory limits it, but never below 2
    (0, 8, 2048, 5),         # many cores, little memory: what the memory holds
    (0, 4, 16384, 8),
    (0, 1, None, 2),         # memory unknown: by cores
    (3, 8, 1024, 3),         # the profile's number wins
])
def test_worker_count(wanted, cpus, memory, expected):
    assert app_server.worker_count(wanted, cpus, memory) == expected


def test_the_tightest_cgroup_limit_on_the_way_up_counts(tmp_path):
    (tmp_path / "cgroup").write_text("0::/system.slice/label-studio.service\n")
    root = tmp_path / "fs"
    (root / "system.slice" / "label-studio.service").mkdir(parents=True)
    (root / "system.slice" / "label-studio.service" / "memory.max").write_text(f"{2 * 1024 ** 3}\n")
    (root / "system.slice" / "memory.max").write_text("max\n")
    assert app_server._cgroup_limit_mb(str(tmp_path / "cgroup"), str(root)) == 2048
    (root / "memory.max").write_text(f"{1024 ** 3}\n")
    assert app_server._cgroup_limit_mb(str(tmp_path / "cgroup"), str(root)) == 1024
    (tmp_path / "cgroup").write_text("")   # cgroup v1 or none: no limit known
    assert app_server._cgroup_limit_mb(str(tmp_path / "cgroup"), str(root)) is None


def test_the_rendered_config_sets_bind_workers_and_labels_it_ours():
    rendered = render.app_server_config(PROFILE).content
    assert rendered.startswith("# Managed by labelstudio-vm")
    compile(rendered, "gunicorn.conf.py", "exec")
    namespace: dict = {}
    exec(compile(rendered.replace("pythonpath = label_studio_dir()", "pythonpath = '/x'"), "conf", "exec"), namespace)
    assert namespace["bind"] == [f"127.0.0.1:{PROFILE.label_studio.port}"]
    assert namespace["workers"] >= app_server.MIN_WORKERS
    assert namespace["timeout"] == 120 and namespace["max_requests"] == 5000 and namespace["accesslog"] is None
    assert namespace["raw_env"] == ["DJANGO_SETTINGS_MODULE=core.settings.label_studio"]
    assert namespace["chdir"] == namespace["pythonpath"] == "/x"
    fixed = render.app_server_config(parse_workers(3)).content
    assert "workers = worker_count(3, _cpus(), memory_mb())" in fixed


def parse_workers(n: int):
    from tasks.core.profile import parse_profile
    return parse_profile(f"label_studio:\n  workers: {n}\n")


def test_a_worker_past_its_memory_is_replaced_after_its_request(monkeypatch):
    class Worker:
        pid, alive = 7, True

        class log:
            @staticmethod
            def info(*args):
                pass

    worker = Worker()
    monkeypatch.setattr(app_server, "_rss_mb", lambda: app_server.WORKER_RECYCLE_MB - 1)
    app_server.post_request(worker, None, {}, None)
    assert worker.alive
    monkeypatch.setattr(app_server, "_rss_mb", lambda: app_server.WORKER_RECYCLE_MB + 1)
    app_server.post_request(worker, None, {}, None)
    assert not worker.alive


WORKER_ENDS = """
import atexit, importlib.util, sys, types
class Connections:
    def close_all(self):
        print("connections closed", flush=True)
django, db = types.ModuleType("django"), types.ModuleType("django.db")
db.connections = Connections()
sys.modules.update({"django": django, "django.db": db})
spec = importlib.util.spec_from_file_location("conf", sys.argv[1])
conf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conf)
atexit.register(lambda: print("interpreter clean-up", flush=True))
try:
    sys.exit(int(sys.argv[2]))
finally:   # as in gunicorn's Arbiter.spawn_worker
    conf.worker_exit(None, None)
"""


@pytest.mark.parametrize("code, said", [
    (0, "connections closed\n"),            # asked to end: connections closed, no clean-up of the interpreter
    (3, "interpreter clean-up\n"),          # a boot error: the usual way, its exit code for the master
])
def test_a_worker_asked_to_end_leaves_at_once_and_any_other_end_goes_the_usual_way(code, said):
    ended = subprocess.run([sys.executable, "-c", WORKER_ENDS, app_server.__file__, str(code)],
                           capture_output=True, text=True, timeout=60)
    assert (ended.returncode, ended.stdout) == (code, said)


@pytest.mark.parametrize("argv, expected", [
    (["/opt/label-studio/current/bin/python", "/opt/label-studio/current/bin/gunicorn", "--config", "/c.py",
      "core.wsgi:application"], True),
    (["gunicorn", "label_studio.core.wsgi:application", "-b", "0.0.0.0:8080"], True),
    (["uwsgi", "--module=core.wsgi:application"], True),
    (["gunicorn", "other.wsgi:application"], False),
    (["/usr/bin/python3", "/srv/app/bin/gunicorn", "mysite.wsgi"], False),
])
def test_an_app_server_serving_label_studio_is_label_studio(argv, expected):
    assert instances.is_label_studio(argv) is expected


@pytest.mark.parametrize("dist, python3, expected", [
    ("/opt/label-studio/current/lib/python3.13/site-packages/label_studio-1.23.2.dist-info", "3.11.2",
     "lib/python3.13/site-packages"),
    ("", "3.11.2", "lib/python3.11/site-packages"),
    ("", None, None),
    ("/x/lib/python3.11;rm -rf //site-packages/label_studio-1.dist-info", "3.12.1", "lib/python3.12/site-packages"),
])
def test_the_site_packages_path_is_made_of_digits_only(dist, python3, expected):
    assert parse.site_packages(dist, python3) == expected


def test_status_shows_the_master_its_workers_and_their_memory():
    probe = ("[install]\ninstalled=yes\napp_server=/opt/label-studio/current/lib/python3.11/site-packages/"
             "gunicorn-23.0.0.dist-info\n[app_server]\n100 1 50000\n101 100 300000\n102 100 310000\nnoise\n")
    st = status_from_probe(probe)
    assert st.app_server.masters == [100] and len(st.app_server.workers(100)) == 2
    text = app_server_text(st)
    assert text.startswith("gunicorn 23.0.0, master pid 100, 2 worker(s)") and "in all" in text
    assert app_server_text(status_from_probe("[app_server]\n")) == "not running"


def test_a_backup_copy_under_a_steady_wal_writer_holds_every_row_committed_before_it(tmp_path):
    live, copy = tmp_path / "live.sqlite3", tmp_path / "copy.sqlite3"
    con = sqlite3.connect(live)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("create table t (n integer primary key, pad blob)")
    con.commit()
    stop, committed = threading.Event(), [0]

    def writer():
        w = sqlite3.connect(live, timeout=30)
        n = 0
        while not stop.is_set():
            n += 1
            w.execute("insert into t values (?, randomblob(4000))", (n,))
            w.commit()
            committed[0] = n
        w.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while committed[0] < 300:
            pass
        before = committed[0]
        assert sqlite.consistent_copy(str(live), str(copy)) == "raw copy and the -wal's frames in one read transaction"
    finally:
        stop.set()
        thread.join()
        con.close()
    check = sqlite3.connect(copy)
    rows = [n for (n,) in check.execute("select n from t order by n")]
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    check.close()
    assert rows[-1] >= before and rows == list(range(1, rows[-1] + 1))
    assert sqlite.integrity_check(str(copy)) == "ok"
    assert not (tmp_path / "copy.sqlite3-wal").exists()


def test_settle_folds_a_left_wal_into_the_file(tmp_path):
    db = tmp_path / "label_studio.sqlite3"
    assert sqlite.settle(str(db)) == {"settled": False}
    # A process that dies with its connection open leaves its commits in the -wal.
    script = ("import os,sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA journal_mode=WAL');"
              "c.execute('PRAGMA wal_autocheckpoint=0'); c.execute('create table t (n)');"
              "c.executemany('insert into t values (?)', [(i,) for i in range(100)]); c.commit(); os._exit(0)")
    subprocess.run([sys.executable, "-c", script, str(db)], check=True)
    assert (tmp_path / "label_studio.sqlite3-wal").stat().st_size > 0
    result = sqlite.settle(str(db))
    assert result["settled"] and result["wal_bytes"] > 0
    assert not (tmp_path / "label_studio.sqlite3-wal").exists() and not (tmp_path / "label_studio.sqlite3-shm").exists()
    alone = tmp_path / "alone.sqlite3"
    alone.write_bytes(db.read_bytes())  # the file by itself now holds every commit
    assert sqlite3.connect(alone).execute("select count(*) from t").fetchone()[0] == 100


def test_in_wal_mode_every_commit_moves_the_change_marker_and_nothing_else_does(tmp_path):
    db = tmp_path / "label_studio.sqlite3"
    writer = sqlite3.connect(db)   # open all along, as Label Studio's workers are: the -wal stays
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("create table t (n integer primary key, pad blob)")
    writer.commit()
    seen = [sqlite.change_marker(str(db))]
    assert seen[0] is not None and "wal" in seen[0]
    assert sqlite.change_marker(str(db)) == seen[0]            # no commit: the same marker
    for n in range(1, 30):
        writer.execute("insert into t values (?, randomblob(100))", (n,))
        writer.commit()
        if n % 10 == 0:  # the log restarts from its beginning: the file keeps its size
            writer.execute("PRAGMA wal_checkpoint(RESTART)")
        seen.append(sqlite.change_marker(str(db)))
        assert seen[-1] is not None and seen[-1] not in seen[:-1]
    writer.close()


CHECK_SOURCE = '''
def read_every_table():
    import django.db
    django.db.READS.append("read")
    if django.db.BROKEN:
        raise RuntimeError("no such column: task_completion.lead_time")
    return {"tables": 81}
'''


@pytest.fixture
def worker_app(monkeypatch):
    """A worker's WSGI callable as post_worker_init leaves it, with a stand-in Django (what the check reads
    and the connections closed around it are recorded)."""
    import types

    django = types.ModuleType("django")
    db = types.ModuleType("django.db")
    db.READS, db.BROKEN = [], False
    db.close_old_connections = lambda: db.READS.append("close")
    django.db = db
    monkeypatch.setitem(sys.modules, "django", django)
    monkeypatch.setitem(sys.modules, "django.db", db)

    def label_studio(environ, start_response):
        start_response("404 Not Found", [])
        return [b"label studio"]

    app = app_server.with_database_check(label_studio, CHECK_SOURCE)

    def get(path, **headers):
        said = []
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "REMOTE_ADDR": "127.0.0.1", **headers}
        body = b"".join(app(environ, lambda status, headers: said.append(status)))
        return said[0], body

    return get, db


def test_a_worker_answers_its_read_of_every_table_only_straight_from_this_machine(worker_app):
    get, db = worker_app
    assert get(app_server.DATABASE_CHECK_PATH) == ("200 OK", b'{"tables": 81, "answered_by": "worker"}')
    assert db.READS == ["close", "read", "close"]      # no stale connection before, none kept broken after
    # Through nginx (its proxy headers), from elsewhere, another path or method: Label Studio's own answer.
    assert get(app_server.DATABASE_CHECK_PATH, HTTP_X_FORWARDED_FOR="203.0.113.9")[0] == "404 Not Found"
    assert get(app_server.DATABASE_CHECK_PATH, HTTP_X_REAL_IP="127.0.0.1")[0] == "404 Not Found"
    assert get(app_server.DATABASE_CHECK_PATH, REMOTE_ADDR="10.0.0.5")[0] == "404 Not Found"
    assert get(app_server.DATABASE_CHECK_PATH, REQUEST_METHOD="POST")[0] == "404 Not Found"
    assert get("/health")[0] == "404 Not Found"
    assert db.READS == ["close", "read", "close"]


def test_what_the_workers_check_meets_is_its_answer(worker_app):
    get, db = worker_app
    db.BROKEN = True
    status, body = get(app_server.DATABASE_CHECK_PATH)
    assert status == "200 OK"
    assert json.loads(body) == {"error": "RuntimeError: no such column: task_completion.lead_time",
                                "answered_by": "worker"}
    assert db.READS[-1] == "close"


def test_the_rendered_config_carries_the_releases_check_for_its_workers():
    namespace: dict = {}
    rendered = render.app_server_config(PROFILE).content
    exec(compile(rendered.replace("pythonpath = label_studio_dir()", "pythonpath = '/x'"), "conf", "exec"), namespace)
    assert namespace["DATABASE_CHECK_SOURCE"] == render.CHECK_DATABASE_SOURCE
    check: dict = {"__name__": "check_database"}
    exec(compile(namespace["DATABASE_CHECK_SOURCE"], "check_database.py", "exec"), check)   # no Django start-up
    assert callable(check["read_every_table"])


def test_roots_read_of_the_workers_check_counts_only_our_instances_answer(monkeypatch):
    import http.server

    answers = {"/ours": b'{"tables": 81, "answered_by": "worker"}',
               "/broken": b'{"error": "task_completion: no such column", "answered_by": "worker"}',
               "/someone": b'{"tables": 81}'}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = answers.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    holder = {"state": "ours"}
    monkeypatch.setattr(instances, "holder", lambda *args: (holder["state"], "", None))
    try:
        ours = (port, "label-studio.service", "labelstudio", "/var/lib/label-studio")
        assert instances.read_every_table(*ours, "/ours") == ('{"tables": 81}', 0)
        assert instances.read_every_table(*ours, "/broken") == ('{"error": "task_completion: no such column"}', 1)
        assert instances.read_every_table(*ours, "/someone") == ("", 3)     # not a worker's answer of ours
        assert instances.read_every_table(*ours, "/missing") == ("", 3)     # started before workers answered it
        holder["state"] = "other"
        assert instances.read_every_table(*ours, "/ours") == ("", 3)        # not our instance on the port
    finally:
        server.shutdown()


@pytest.mark.parametrize("tool, expected", [
    ('echo \'{"tables": 81}\'; exit 0', ('{"tables": 81}', 0, [])),
    ('echo \'{"error": "no such column"}\'; exit 1', ('{"error": "no such column"}', 1, [])),
    ("echo; exit 3", ('{"tables": 75}', 0, ["release"])),     # no worker of ours answered: the release reads
])
def test_the_live_check_asks_the_workers_first_and_the_release_only_when_they_do_not_answer(tmp_path, tool, expected):
    from tasks.core.commands import dbcheck

    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "python3").write_text(f"#!/bin/sh\n{tool}\n")
    (stubs / "timeout").write_text(f"#!/bin/sh\necho release >> {tmp_path}/log\necho '{{\"tables\": 75}}'\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    run = subprocess.run(["sh", "-c", f"{dbcheck.read_every_table(PROFILE)}; echo \"after $?\""], capture_output=True,
                         text=True, env={"PATH": f"{stubs}:/usr/bin:/bin"})
    out, code, calls = expected
    assert run.stdout.splitlines() == [out, f"after {code}"], run.stderr
    log = tmp_path / "log"
    assert (log.read_text().split() if log.exists() else []) == calls
