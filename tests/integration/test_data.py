"""Data tasks on a provisioned VM with the real Label Studio; data is made through its API.

The tests share one VM (provisioning takes minutes) and run in file order, each leaving the server
serving a known state; but none relies on an earlier test: each asks for what it needs (project
`alpha`, a `server_snapshot` to take a database from), so any one runs alone (`pytest -k NAME`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dev.lsclient import LabelStudio, wait_for_health
from tests.integration.support.databases import index_out_of_step, leftovers_in_data_dir, server_database_digest
from tests.integration.support.labelstudio import api_token, concurrent_annotators, project_titles
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD

DB = "/var/lib/label-studio/label_studio.sqlite3"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def snapshots_of(machine, host: str = "vm") -> list[Path]:
    root = machine.fab.home / "backups" / host
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def server_sha(machine) -> str:
    """What the server's database holds (WAL mode: its file's bytes change at checkpoints)."""
    return server_database_digest(machine.vm, DB)


def assert_serving(machine) -> None:
    assert wait_for_health(machine.url, timeout=60) == {"status": "UP"}
    assert LabelStudio(machine.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)


def make_local_dir(tmp_path: Path, name: str, source_db: Path | None = None, content: bytes | None = None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    if source_db is not None:
        shutil.copy(source_db, folder / "label_studio.sqlite3")
    if content is not None:
        (folder / "label_studio.sqlite3").write_bytes(content)
    return folder


@pytest.fixture(scope="module")
def alpha(data_vm):
    """Project 'alpha' with tasks and an uploaded image, made through the API."""
    ls = LabelStudio(data_vm.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    project = ls.create_project("alpha")
    assert ls.import_file(project, "tasks.json", json.dumps([{"text": f"t{i}"} for i in range(50)]).encode()).status == 201
    assert ls.import_file(project, "photo.png", PNG).status == 201
    media = data_vm.vm.exec("cd /var/lib/label-studio/media && find upload -name '*.png'").stdout.decode().split()
    assert len(media) == 1
    return {"id": project, "media_url": "/data/" + media[0], "session": ls}


@pytest.fixture(scope="module")
def server_snapshot(data_vm, alpha) -> Path:
    """A complete snapshot of the server (with project alpha), taken here: a real Label Studio
    database for the tests that need one, and a verified snapshot for prune to keep."""
    result = data_vm.fab("backup", "--label", "source")
    assert result.returncode == 0, result.stdout + result.stderr
    snap = snapshots_of(data_vm)[-1]
    assert snap.name.endswith("-source") and (snap / "manifest.json").is_file()
    return snap


def test_backup_while_a_writer_imports(data_vm, alpha):
    ls = LabelStudio(data_vm.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    stop = threading.Event()
    imported = []

    def writer():
        while not stop.is_set():
            resp = ls.post_json(f"/api/projects/{alpha['id']}/import", [{"text": f"w{len(imported)}-{i}"} for i in range(100)])
            imported.append(resp.status)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(imported) < 2:  # the writer is really writing before the backup starts
            time.sleep(0.05)
        result = data_vm.fab("backup", "--label", "busy")
    finally:
        stop.set()
        thread.join()
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(imported) == {201}, imported
    snap = snapshots_of(data_vm)[-1]
    assert snap.name.endswith("-busy")
    m = manifest(snap)
    assert m["integrity_check"] == "ok"
    assert m["counts"]["projects"] == 1 and m["counts"]["tasks"] >= 51
    con = sqlite3.connect(snap / "label_studio.sqlite3")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    assert {f["path"] for f in m["files"]} >= {"label_studio.sqlite3", ".env"}
    assert any(f["path"].startswith("media/upload/") for f in m["files"])
    assert re.search(r"downloaded: .* in [\d.]+s \(.*/s", result.stdout)

    # A second Label Studio started on the snapshot (inside the VM, port 8090) shows the same data.
    vm = data_vm.vm
    vm.exec("rm -rf /tmp/ls2 && mkdir -p /tmp/ls2 && chown labelstudio: /tmp/ls2")
    for path in [f["path"] for f in m["files"]]:
        vm.exec(f"mkdir -p /tmp/ls2/$(dirname {path}) && cat > /tmp/ls2/{path}", input=(snap / path).read_bytes())
    vm.exec("chown -R labelstudio: /tmp/ls2 && cd /tmp/ls2 && "
            "setsid runuser -u labelstudio -- env HOME=/tmp/ls2 LABEL_STUDIO_BASE_DATA_DIR=/tmp/ls2 "
            "/opt/label-studio/current/bin/label-studio start --data-dir /tmp/ls2 --port 8090 "
            "--internal-host 127.0.0.1 --no-browser > /tmp/ls2.log 2>&1 < /dev/null &")
    check = f"""
import http.cookiejar, json, time, urllib.request, urllib.parse
base = "http://127.0.0.1:8090"
jar = http.cookiejar.CookieJar(); op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
deadline = time.time() + 240
while True:
    try:
        if json.load(op.open(base + "/health", timeout=5)).get("status") == "UP": break
    except Exception:
        if time.time() > deadline: raise
        time.sleep(1)
op.open(base + "/user/login/")
csrf = next(c.value for c in jar if c.name == "csrftoken")
op.open(urllib.request.Request(base + "/user/login/", data=urllib.parse.urlencode(
    {{"email": "{ADMIN_EMAIL}", "password": "{ADMIN_PASSWORD}", "csrfmiddlewaretoken": csrf}}).encode()))
projects = json.load(op.open(base + "/api/projects"))["results"]
media = op.open(base + "{alpha['media_url']}").read()
print(json.dumps({{"titles": [p["title"] for p in projects], "tasks": [p["task_number"] for p in projects],
                  "media": media.hex()}}))
"""
    try:
        seen = json.loads(vm.exec("python3 -", input=check.encode(), timeout=300).stdout.decode().strip().splitlines()[-1])
    finally:
        vm.exec("pkill -f 'data-dir /tmp/ls2' || true", check=False)
    assert seen["titles"] == ["alpha"]
    assert seen["tasks"] == [m["counts"]["tasks"]]
    assert bytes.fromhex(seen["media"]) == PNG


def test_snapshots_are_private_and_a_second_backup_reuses_unchanged_files(data_vm):
    first = data_vm.fab("backup")
    assert first.returncode == 0, first.stderr
    again = data_vm.fab("backup", "--label", "again")
    assert again.returncode == 0, again.stderr
    assert "hard-linked" in again.stdout
    a, b = snapshots_of(data_vm)[-2:]
    assert (a / "label_studio.sqlite3").stat().st_ino == (b / "label_studio.sqlite3").stat().st_ino
    for snap in (a, b):
        assert oct(snap.stat().st_mode & 0o777) == "0o700"
        for path in snap.rglob("*"):
            assert oct(path.stat().st_mode & 0o777) == ("0o700" if path.is_dir() else "0o600"), path
    listing = data_vm.fab("backups", "--verify")
    assert listing.returncode == 0, listing.stderr
    assert b.name in listing.stdout and "verified now" in listing.stdout
    assert "incomplete" not in listing.stdout
    status = data_vm.fab("status")
    assert re.search(rf"last backup\s+{b.name} ", status.stdout), status.stdout


def test_restore_server_round_trip_brings_back_projects_media_and_logins(data_vm, alpha):
    session = LabelStudio(data_vm.url)
    assert session.login(ADMIN_EMAIL, ADMIN_PASSWORD)  # a login made before the backup...
    assert session.get(alpha["media_url"]).body == PNG
    cookie = {"Cookie": f"sessionid={session.cookie('sessionid')}"}
    before = data_vm.fab("backup", "--label", "round-trip")
    assert before.returncode == 0, before.stderr
    snap = snapshots_of(data_vm)[-1]

    assert session.request("DELETE", f"/api/projects/{alpha['id']}/").status == 204
    assert project_titles(data_vm) == []
    # The SECRET_KEY is lost too: every session made with it stops working.
    data_vm.vm.exec("sed -i 's/^SECRET_KEY=.*/SECRET_KEY=lost/' /var/lib/label-studio/.env && systemctl restart label-studio")
    wait_for_health(data_vm.url)
    assert LabelStudio(data_vm.url).request("GET", "/api/projects", headers=cookie).status in (401, 403)

    result = data_vm.fab("restore-server", "--snapshot", snap.name, "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "server backed up as" in result.stdout and "pre-restore" in result.stdout
    assert project_titles(data_vm) == ["alpha"]
    again = LabelStudio(data_vm.url)
    assert again.request("GET", alpha["media_url"], headers=cookie).body == PNG  # ...works again: .env is back
    assert again.request("GET", "/api/projects", headers=cookie).status == 200


def test_push_local_db_serves_local_content_and_keeps_the_server_data(data_vm, alpha, tmp_path):
    local = tmp_path / "local-ls"
    dry = data_vm.fab("pull-server-db", "--dry-run", "--local-data-dir", str(local))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "(1 projects" in dry.stdout and "dry run: nothing was changed" in dry.stdout, dry.stdout
    assert not local.exists()
    pulled = data_vm.fab("pull-server-db", "--yes", "--local-data-dir", str(local))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (local / "label_studio.sqlite3").is_file()

    ls = LabelStudio(data_vm.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    for project in ls.get("/api/projects").json()["results"]:
        ls.request("DELETE", f"/api/projects/{project['id']}/")
    ls.create_project("beta")
    assert project_titles(data_vm) == ["beta"]

    dry = data_vm.fab("push-local-db", "--dry-run", "--local-data-dir", str(local))
    assert dry.returncode == 0 and "nothing was changed" in dry.stdout
    no_tty = data_vm.fab("push-local-db", "--local-data-dir", str(local))
    assert no_tty.returncode == 2 and "--yes" in no_tty.stderr
    assert project_titles(data_vm) == ["beta"]

    result = data_vm.fab("push-local-db", "--yes", "--local-data-dir", str(local))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "server now: 1 projects" in result.stdout
    assert re.search(r"uploaded: .* in [\d.]+s", result.stdout)
    assert project_titles(data_vm) == ["alpha"]
    pre_push = [s for s in snapshots_of(data_vm) if s.name.endswith("-pre-push")][-1]
    assert manifest(pre_push)["counts"]["projects"] == 1

    back = data_vm.fab("restore-server", "--snapshot", pre_push.name, "--yes")
    assert back.returncode == 0, back.stderr
    assert project_titles(data_vm) == ["beta"]
    # Leave the server as the other tests expect it: alpha.
    assert data_vm.fab("push-local-db", "--yes", "--local-data-dir", str(local)).returncode == 0
    assert project_titles(data_vm) == ["alpha"]


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_pull_twice_then_restore_local_gives_back_the_original(data_vm, alpha, tmp_path):
    local = tmp_path / "mine"
    assert data_vm.fab("pull-server-db", "--yes", "--local-data-dir", str(local)).returncode == 0
    con = sqlite3.connect(local / "label_studio.sqlite3")  # local work the user must not lose
    con.execute("update project set title = 'my local work'")
    con.commit()
    con.close()
    original = (local / "label_studio.sqlite3").read_bytes()

    for _ in range(2):
        result = data_vm.fab("pull-server-db", "--yes", "--local-data-dir", str(local))
        assert result.returncode == 0, result.stdout + result.stderr
    assert (local / "label_studio.sqlite3").read_bytes() != original
    # The second pull saved a copy of the first pull's data, newer than the user's own work: a prune that
    # keeps nothing by count still keeps what restore-local restores.
    pruned = data_vm.fab("prune", "--keep-last", "0", "--keep-daily", "0", "--keep-weekly", "0", "--yes", host=None)
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "(your own local work a pull saved (what restore-local restores))" in pruned.stdout

    pulled_bytes = (local / "label_studio.sqlite3").read_bytes()
    dry = data_vm.fab("restore-local", "--dry-run", "--local-data-dir", str(local))
    assert dry.returncode == 0 and "dry run: nothing was changed" in dry.stdout, dry.stdout + dry.stderr
    assert (local / "label_studio.sqlite3").read_bytes() == pulled_bytes
    restored = data_vm.fab("restore-local", "--yes", "--local-data-dir", str(local))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    con = sqlite3.connect(local / "label_studio.sqlite3")
    assert con.execute("select title from project").fetchall() == [("my local work",)]
    con.close()


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
@pytest.mark.parametrize("kind", ["truncated", "random", "not-label-studio"])
def test_bad_sources_are_refused_before_the_server_is_touched(data_vm, server_snapshot, tmp_path, kind):
    good = server_snapshot / "label_studio.sqlite3"
    if kind == "truncated":
        folder = make_local_dir(tmp_path, kind, content=good.read_bytes()[: good.stat().st_size // 3])
    elif kind == "random":
        folder = make_local_dir(tmp_path, kind, content=os.urandom(256 * 1024))
    else:
        folder = make_local_dir(tmp_path, kind)
        con = sqlite3.connect(folder / "label_studio.sqlite3")
        con.execute("create table notes(id integer primary key, body text)")
        con.commit()
        con.close()
    before, count = server_sha(data_vm), len(snapshots_of(data_vm))
    result = data_vm.fab("push-local-db", "--yes", "--local-data-dir", str(folder))
    assert result.returncode == 6, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"not a usable SQLite database|integrity_check failed|not a Label Studio database", result.stderr)
    assert server_sha(data_vm) == before
    assert len(snapshots_of(data_vm)) == count  # not even a pre-push backup: refused first
    assert_serving(data_vm)


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_a_database_only_integrity_check_faults_is_refused_after_the_pre_push_backup_before_anything_is_replaced(
        data_vm, server_snapshot, tmp_path):
    """Its pages and counts read fine (an index whose keys no longer match the rows), so only the full
    check, which runs beside the pre-push backup and the upload, sees it: that backup is kept and named,
    the upload removed, the server's data untouched."""
    folder = make_local_dir(tmp_path, "index", source_db=server_snapshot / "label_studio.sqlite3")
    index_out_of_step(folder / "label_studio.sqlite3", "project", "title", b"alpha", b"alphA")
    before, count = server_sha(data_vm), len(snapshots_of(data_vm))
    result = data_vm.fab("push-local-db", "--yes", "--local-data-dir", str(folder))
    err = " ".join(result.stderr.split())
    assert result.returncode == 6, result.stdout + result.stderr
    assert "failed SQLite's integrity_check" in err and "nothing on the server was replaced" in err, err
    assert data_vm.vm.exec("test -e /var/lib/label-studio/.lsvm-incoming", check=False).returncode != 0
    after = snapshots_of(data_vm)
    assert len(after) == count + 1 and after[-1].name.endswith("pre-push"), after
    assert f"pre-push backup is kept as {after[-1].name}" in err, err
    assert server_sha(data_vm) == before
    assert_serving(data_vm)


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_a_database_that_fails_the_health_check_is_rolled_back(data_vm, alpha, server_snapshot, tmp_path):
    folder = make_local_dir(tmp_path, "breaks", source_db=server_snapshot / "label_studio.sqlite3")
    con = sqlite3.connect(folder / "label_studio.sqlite3")
    con.execute("delete from django_migrations where app = 'projects'")  # Label Studio refuses to start on it
    con.commit()
    con.close()
    before = server_sha(data_vm)
    result = data_vm.fab("push-local-db", "--yes", "--local-data-dir", str(folder), "--health-timeout", "120")
    assert result.returncode == 5, result.stdout + result.stderr
    assert "previous data is back in place" in result.stderr
    assert server_sha(data_vm) == before
    assert leftovers_in_data_dir(data_vm.vm) == []   # no swap left behind
    assert_serving(data_vm)
    assert project_titles(data_vm) == ["alpha"]


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_server_temp_space_full_is_a_clean_error(data_vm):
    vm = data_vm.vm
    before, count = server_sha(data_vm), len(snapshots_of(data_vm))
    vm.exec("mount -t tmpfs -o size=64k tmpfs /var/tmp")
    try:
        result = data_vm.fab("backup")
    finally:
        vm.exec("umount /var/tmp")
    assert result.returncode == 6, result.stdout + result.stderr
    assert "not enough space" in result.stderr or "temp space" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(snapshots_of(data_vm)) == count
    assert server_sha(data_vm) == before
    assert_serving(data_vm)


@pytest.fixture(scope="module")
def big_local(server_snapshot, tmp_path_factory):
    """A real Label Studio database with 300 MiB of incompressible ballast: uploads take seconds."""
    folder = tmp_path_factory.mktemp("big-local")
    shutil.copy(server_snapshot / "label_studio.sqlite3", folder / "label_studio.sqlite3")
    con = sqlite3.connect(folder / "label_studio.sqlite3")
    con.execute("create table ballast(b blob)")
    con.executemany("insert into ballast values (?)", ((os.urandom(1024 * 1024),) for _ in range(300)))
    con.commit()
    con.close()
    return folder


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_connection_cut_mid_upload_leaves_the_server_as_it_was(data_vm, big_local):
    before = server_sha(data_vm)
    push = data_vm.fab.popen("push-local-db", "--yes", "--local-data-dir", str(big_local))
    deadline = time.monotonic() + 120
    incoming = "/var/lib/label-studio/.lsvm-incoming"
    while time.monotonic() < deadline:
        size = data_vm.vm.exec(f"du -sb {incoming} 2>/dev/null | cut -f1", check=False).stdout.decode().strip()
        if size.isdigit() and int(size) > 20 * 1024 * 1024:
            break
        assert push.poll() is None, push.communicate()
        time.sleep(0.1)
    else:
        pytest.fail("the upload never started")
    push.kill()  # the laptop dies mid-upload: the SSH connection drops
    push.wait()
    assert server_sha(data_vm) == before
    assert_serving(data_vm)
    # The lock died with the connection: the next data task runs.
    result = data_vm.fab("backup")
    assert result.returncode == 0, result.stderr


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_two_backups_at_once_one_refuses(data_vm, big_local):
    pushed = data_vm.fab("push-local-db", "--yes", "--local-data-dir", str(big_local))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    first = data_vm.fab.popen("backup", "--label", "first")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        held = data_vm.vm.exec("flock -n /run/lsvm/label-studio-data.lock true", check=False).returncode != 0
        if held:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the first backup never took the lock")
    # From a second machine (its own backups folder), as when two team members back up at once.
    second = data_vm.fab("backup", "--label", "second", env={"LSVM_BACKUPS_DIR": str(data_vm.fab.home / "other-laptop")})
    same_machine = data_vm.fab("backup", "--label", "third")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert second.returncode == 7, second.stdout + second.stderr
    assert re.search(r"vm is busy: backup by \S+ since", second.stderr)
    assert same_machine.returncode == 7 and "another task is using" in same_machine.stderr
    assert not any(s.name.endswith("-second") for s in snapshots_of(data_vm))


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_pull_refuses_while_a_local_label_studio_runs(data_vm, tmp_path):
    local = tmp_path / "running"
    local.mkdir()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    # Like the real console script: the kernel runs `python3 .../bin/label-studio start --data-dir ...`.
    (fake_bin / "label-studio").write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    (fake_bin / "label-studio").chmod(0o755)
    server = subprocess.Popen([str(fake_bin / "label-studio"), "start", "--data-dir", str(local)])
    try:
        result = data_vm.fab("pull-server-db", "--yes", "--local-data-dir", str(local))
    finally:
        server.kill()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "a local Label Studio is running" in result.stderr and "--force" in result.stderr
    assert not (local / "label_studio.sqlite3").exists()


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_prune_previews_then_deletes_but_keeps_the_newest_verified(data_vm, server_snapshot):
    root = data_vm.fab.home / "backups" / "vm"
    (root / "20200101T000000Z").mkdir(mode=0o700)  # an incomplete snapshot: no manifest
    count = len(snapshots_of(data_vm))
    preview = data_vm.fab("prune", "--keep-last", "1", "--keep-daily", "0", "--keep-weekly", "0", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert "(incomplete)" in preview.stdout and "would be deleted" in preview.stdout
    assert len(snapshots_of(data_vm)) == count
    newest = snapshots_of(data_vm)[-1]
    done = data_vm.fab("prune", "--keep-last", "0", "--keep-daily", "0", "--keep-weekly", "0", "--yes")
    assert done.returncode == 0, done.stderr
    assert snapshots_of(data_vm) == [newest]  # keep-last 0 still keeps the newest verified


@pytest.mark.one_release("trixie")  # beside the same load on PostgreSQL (test_postgres.py), same release
def test_concurrent_annotators_all_succeed_on_sqlite(data_vm):
    """The same load as on PostgreSQL (test_postgres.py), on SQLite in WAL mode behind gunicorn's workers:
    writers still take turns on one lock, but no request fails ("database is locked" included); the
    figures are recorded for the report."""
    result = concurrent_annotators(data_vm, api_token(data_vm), "sqlite")
    assert result.ok > 0 and result.failed == 0, result.summary()
