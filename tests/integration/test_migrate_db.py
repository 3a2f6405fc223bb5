"""migrate-db on a real Label Studio: a database made through the official SDK and the web flows (users,
one by invite sign-up, projects, tasks, annotations, predictions, drafts, a storage setting, personal
access tokens and every user's auth token: the duplicate-token case that breaks `loaddata`), moved to
PostgreSQL and back, verified table by table; an old session cookie and an old API token keep working;
PostgreSQL stopped in the middle, or its disk full, leaves the service on SQLite with its file byte-identical.

The profile decides: migrate-db goes only where database.engine says (it sets PostgreSQL up with
provision's own steps), provision refuses while profile and server disagree, and agrees ("0 changed")
once migrate-db has moved the server."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from dev.lsclient import LabelStudio
from tests.integration.support.databases import server_database_digest
from tests.integration.support.labelstudio import LABEL_CONFIG, sdk_view
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, provisioned_clone

# CI time: one Label Studio database moved both ways is proven on Debian 12's worker.
pytestmark = pytest.mark.one_release("bookworm")

DB = "/var/lib/label-studio/label_studio.sqlite3"
ENV_FILE = "/opt/label-studio/label-studio.env"
UNIT = "/etc/systemd/system/label-studio.service"
SECRET = "/opt/label-studio/label-studio-database.env"
STATUS = "/run/lsvm/label-studio-swap.status"
SECOND_USER, SECOND_PASSWORD = "second@example.com", "second-user-pw-2"


def signup_by_invite(url: str, admin: LabelStudio, email: str, password: str) -> None:
    """A second user the way a person joins: the admin's invite link, the sign-up form."""
    invite = admin.get("/api/invite").json()["invite_url"]
    path = invite[invite.index("/user/signup"):] if "/user/signup" in invite else invite
    person = LabelStudio(url)
    person.get(path)
    from urllib.parse import urlencode
    form = urlencode({"email": email, "password": password,
                      "csrfmiddlewaretoken": person.cookie("csrftoken") or ""}).encode()
    resp = person.request("POST", path, form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 200 and "/user/signup" not in resp.url, (resp.status, resp.url, resp.text[:300])


def add_s3_storage(vm, project: int) -> None:
    """An S3 import storage setting, made by Label Studio's own models in its venv (the API would first
    connect to the bucket, and the test VMs reach no S3)."""
    code = ("import os, sys, label_studio; sys.path.insert(0, os.path.dirname(label_studio.__file__)); "
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'label_studio.core.settings.label_studio'); "
            "import django; django.setup(); from io_storages.s3.models import S3ImportStorage; "
            f"S3ImportStorage.objects.create(project_id={int(project)}, title='bucket', bucket='labels', "
            "prefix='in/', aws_access_key_id='AKIAEXAMPLE', aws_secret_access_key='not-a-real-secret')")
    vm.exec("runuser -u labelstudio -- env -C /var/lib/label-studio HOME=/var/lib/label-studio "
            "LABEL_STUDIO_BASE_DATA_DIR=/var/lib/label-studio DJANGO_DB=sqlite "
            f"/opt/label-studio/current/bin/python -c \"{code}\"")


def db_sha(machine) -> str:
    """What the server's SQLite database holds (WAL mode: its file's bytes change at checkpoints)."""
    return server_database_digest(machine.vm, DB)


def engine(machine) -> str:
    """The DJANGO_DB line of the env file the service reads ('' for SQLite)."""
    return machine.vm.exec(f"grep '^DJANGO_DB=' {ENV_FILE} || true").stdout.decode().strip()


def set_engine(machine, engine_name: str) -> None:
    """The profile's database.engine, as a user edits it."""
    text = re.sub(r"\ndatabase:\n  engine: \w+\n", "\n", machine.profile.read_text())
    if engine_name != "sqlite":
        text += f"database:\n  engine: {engine_name}\n"
    machine.profile.write_text(text)


def snapshot_manifests(machine) -> list[dict]:
    import json
    return [json.loads(path.read_text()) for path in sorted((machine.fab.home / "backups" / "vm").glob("*/manifest.json"))]


def psql(machine, query: str) -> str:
    return machine.vm.exec(f"runuser -u postgres -- psql -At -d labelstudio -c \"{query}\"").stdout.decode().strip()


@pytest.fixture(scope="module")
def ls_vm(provisioned, tmp_path_factory):
    machine = provisioned_clone(provisioned, tmp_path_factory.mktemp(f"home-migrate-{provisioned.suite}"), "migrate")
    from label_studio_sdk import LabelStudio as Official

    admin = LabelStudio(machine.url)
    assert admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    machine.session = admin                      # its session cookie must survive the migration
    machine.token = admin.post_json("/api/token/", {}).json()["token"]
    signup_by_invite(machine.url, admin, SECOND_USER, SECOND_PASSWORD)
    second = LabelStudio(machine.url)
    assert second.login(SECOND_USER, SECOND_PASSWORD)
    machine.second_token = second.post_json("/api/token/", {}).json()["token"]
    sdk = Official(base_url=machine.url, api_key=machine.token)
    project = sdk.projects.create(title="Reviews é ✓", label_config=LABEL_CONFIG,
                                  description="made through the SDK")
    sdk.projects.import_tasks(id=project.id, request=[
        {"text": f"review {i}: {'good' if i % 3 else 'bad'} service", "meta": {"n": i, "score": i / 7}}
        for i in range(40)])
    tasks = list(sdk.tasks.list(project=project.id))
    for task in tasks[:10]:
        sdk.annotations.create(id=task.id, result=[{"from_name": "label", "to_name": "text", "type": "choices",
                                                     "value": {"choices": ["pos" if task.id % 2 else "neg"]}}])
    for task in tasks[10:20]:
        sdk.predictions.create(task=task.id, model_version="m1", score=0.75, result=[
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["neg"]}}])
    for task in tasks[20:23]:
        resp = admin.post_json(f"/api/tasks/{task.id}/drafts", {"result": [
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["pos"]}}],
            "lead_time": 3.5})
        assert resp.status == 201, resp.text[:300]
    add_s3_storage(machine.vm, project.id)
    sdk.projects.create(title="Empty project", label_config=LABEL_CONFIG)
    machine.project = project.id
    machine.before = sdk_view(machine.url, machine.token)
    machine.sha = db_sha(machine)
    yield machine
    machine.vm.stop()


def fab(machine, *args, **kwargs):
    return machine.fab(*args, **kwargs)


def last_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_the_profile_decides_and_provision_never_switches_data(ls_vm):
    env_before = ls_vm.vm.exec(f"sha256sum {ENV_FILE} {UNIT}").stdout
    refused = fab(ls_vm, "migrate-db", "--to", "postgresql", "--dry-run")
    assert refused.returncode == 2 and "the profile says database.engine: sqlite" in last_line(refused), refused.stderr
    assert "set database.engine: postgresql" in last_line(refused)
    set_engine(ls_vm, "postgresql")
    provision = fab(ls_vm, "provision")
    assert provision.returncode == 2, provision.stdout + provision.stderr
    assert re.search(r"runs on SQLite with its data and the profile says database.engine: postgresql: provision "
                     r"never switches.*migrate-db --to postgresql", last_line(provision)), provision.stderr
    status = fab(ls_vm, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"database\s+SQLite, [\d.]+ (KiB|MiB); the profile says PostgreSQL .* \(to move the data: "
                     r"fab -H vm migrate-db --to postgresql\)", status.stdout), status.stdout
    plan = fab(ls_vm, "migrate-db", "--to", "postgresql", "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "sqlite -> postgresql" in plan.stdout and "trial conversion" in plan.stdout
    assert "would install postgresql" in plan.stdout and "dry run: nothing was changed" in plan.stdout
    assert engine(ls_vm) == "" and db_sha(ls_vm) == ls_vm.sha
    assert ls_vm.vm.exec(f"sha256sum {ENV_FILE} {UNIT}").stdout == env_before
    assert ls_vm.vm.exec("dpkg-query -W -f '${Status}' postgresql 2>/dev/null || true").stdout.decode() != "install ok installed"
    same = fab(ls_vm, "migrate-db", "--to", "sqlite", "--yes")
    assert same.returncode == 2 and "already runs on sqlite" in last_line(same)
    unknown = fab(ls_vm, "migrate-db", "--to", "mysql", "--yes")
    assert unknown.returncode == 2 and "--to must be one of" in last_line(unknown)


def migrate_with_a_fault_once_stopped(machine, fault: str) -> subprocess.CompletedProcess:
    """migrate-db --to postgresql, with `fault` run on the VM as soon as the final phase has stopped
    Label Studio (the swap job's status file says so)."""
    set_engine(machine, "postgresql")
    machine.vm.exec(f"rm -f {STATUS}")
    run = machine.fab.popen("migrate-db", "--to", "postgresql", "--yes")
    try:
        while run.poll() is None:
            status = machine.vm.exec(f"cat {STATUS} 2>/dev/null || true").stdout.decode()
            if "stopped" in status.split():
                machine.vm.exec(fault)
                break
            time.sleep(0.2)
        stdout, stderr = run.communicate(timeout=1800)
    finally:
        if run.poll() is None:
            run.kill()
    return subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)


def assert_back_on_sqlite_as_it_was(machine, result, env_before: bytes) -> None:
    """Exit non-zero, one line saying why; the env file and the unit of SQLite back (same bytes), the
    database file untouched, the same data served."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert re.search(r"migrate-db to postgresql failed \(.+\); Label Studio is back on sqlite", last_line(result)), \
        result.stderr
    assert "Traceback" not in result.stderr
    assert engine(machine) == "" and machine.vm.exec(f"sha256sum {ENV_FILE} {UNIT}").stdout == env_before
    assert db_sha(machine) == machine.sha
    assert sdk_view(machine.url, machine.token) == machine.before


def test_postgresql_stopped_mid_migration_leaves_sqlite_byte_identical(ls_vm):
    """PostgreSQL goes down as soon as the final phase stopped Label Studio: the service is back on
    SQLite, its file byte-identical, exit non-zero with one line saying why."""
    env_before = ls_vm.vm.exec(f"sha256sum {ENV_FILE} {UNIT}").stdout
    try:
        result = migrate_with_a_fault_once_stopped(ls_vm, "systemctl stop postgresql")
        assert_back_on_sqlite_as_it_was(ls_vm, result, env_before)
    finally:
        ls_vm.vm.exec("systemctl start postgresql")


FULL = "/srv/lsvm-full"


def test_disk_full_under_postgresql_mid_migration_leaves_sqlite_byte_identical(ls_vm):
    """PostgreSQL's disk fills up as the final copy starts (its new tables live on a small tmpfs, filled
    once Label Studio is stopped): back on SQLite as it was, exit non-zero, the cause in the one line."""
    env_before = ls_vm.vm.exec(f"sha256sum {ENV_FILE} {UNIT}").stdout
    superuser = "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1"
    ls_vm.vm.exec(f"mkdir -p {FULL} && mount -t tmpfs -o size=48m tmpfs {FULL} && chown postgres: {FULL}")
    ls_vm.vm.exec(f"{superuser} -c \"CREATE TABLESPACE lsvm_full LOCATION '{FULL}'\" "
                  f"-c 'GRANT CREATE ON TABLESPACE lsvm_full TO PUBLIC' "
                  f"-c \"ALTER SYSTEM SET default_tablespace = 'lsvm_full'\" -c 'SELECT pg_reload_conf()'")
    try:
        result = migrate_with_a_fault_once_stopped(ls_vm, f"dd if=/dev/zero of={FULL}/ballast bs=1M status=none || true")
        assert "trial conversion verified" in result.stdout, result.stdout + result.stderr
        assert_back_on_sqlite_as_it_was(ls_vm, result, env_before)
        assert "No space left on device" in last_line(result), result.stderr
    finally:
        # The converter's tables (all in the small tablespace) go; the next migration makes them anew.
        ls_vm.vm.exec(f"{superuser} -c 'ALTER SYSTEM RESET default_tablespace' -c 'SELECT pg_reload_conf()'")
        ls_vm.vm.exec(f"{superuser} -d labelstudio", input=b"DO $$ DECLARE t text; BEGIN FOR t IN SELECT tablename "
                      b"FROM pg_tables WHERE schemaname = 'public' LOOP EXECUTE format('DROP TABLE IF EXISTS %I "
                      b"CASCADE', t); END LOOP; END $$;\n")
        ls_vm.vm.exec(f"{superuser} -c 'DROP TABLESPACE lsvm_full' && umount {FULL}")


def test_to_postgresql_keeps_every_row_session_and_token(ls_vm):
    set_engine(ls_vm, "postgresql")
    result = fab(ls_vm, "migrate-db", "--to", "postgresql", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    out = re.sub(r"[│┃║|]", " ", result.stdout)   # the report is a rich table: columns by spaces
    assert "final conversion (Label Studio stopped)" in out and "DIFFERS" not in out
    for table in ("htx_user", "authtoken_token", "token_blacklist_outstandingtoken", "project", "task",
                  "task_completion", "prediction", "tasks_annotationdraft", "io_storages_s3importstorage"):
        assert re.search(rf"{table}\s+\d+\s+\d+\s+\w+\s+equal", out), (table, out)
    assert engine(ls_vm) == "DJANGO_DB=default"
    assert f"EnvironmentFile={SECRET}" in ls_vm.vm.exec(f"cat {UNIT}").stdout.decode()
    assert ls_vm.vm.exec(f"stat -c %U:%a {SECRET}").stdout.decode().strip() == "root:600"
    assert db_sha(ls_vm) == ls_vm.sha, "the SQLite file must never be written"
    assert int(psql(ls_vm, "select count(*) from task")) == 40 + 0
    assert int(psql(ls_vm, "select count(*) from authtoken_token")) >= 2   # every user's token, same keys
    # Label Studio now answers from PostgreSQL: the same data through the SDK, with the old token.
    assert sdk_view(ls_vm.url, ls_vm.token) == ls_vm.before
    assert sdk_view(ls_vm.url, ls_vm.second_token)["users"] == ls_vm.before["users"]
    # The session cookie from before the migration still opens the API.
    resp = ls_vm.session.get("/api/projects?page_size=100")
    assert resp.status == 200 and {p["title"] for p in resp.json()["results"]} == set(ls_vm.before["projects"])
    # New rows get ids past the copied ones (sequences were set).
    top = int(psql(ls_vm, "select max(id) from task_completion"))
    from label_studio_sdk import LabelStudio as Official
    sdk = Official(base_url=ls_vm.url, api_key=ls_vm.token)
    task = next(iter(sdk.tasks.list(project=ls_vm.project)))
    made = sdk.annotations.create(id=task.id, result=[{"from_name": "label", "to_name": "text",
                                                        "type": "choices", "value": {"choices": ["pos"]}}])
    assert made.id == top + 1
    ls_vm.after_postgresql = sdk_view(ls_vm.url, ls_vm.token)
    assert ls_vm.after_postgresql["annotations"] == ls_vm.before["annotations"] + 1
    # Profile and server agree now: provision has nothing to change.
    again = fab(ls_vm, "provision")
    assert again.returncode == 0 and re.search(r"\b0 changed\b", again.stdout), again.stdout + again.stderr


def test_back_to_sqlite_round_trips(ls_vm):
    if not hasattr(ls_vm, "after_postgresql"):
        pytest.skip("needs the migration to PostgreSQL above")
    again = fab(ls_vm, "migrate-db", "--to", "postgresql", "--yes")
    assert again.returncode == 2 and "already runs on postgresql" in last_line(again)
    set_engine(ls_vm, "sqlite")
    provision = fab(ls_vm, "provision")
    assert provision.returncode == 2 and "runs on PostgreSQL with its data" in last_line(provision), provision.stderr
    assert "migrate-db --to sqlite" in last_line(provision)
    result = fab(ls_vm, "migrate-db", "--to", "sqlite", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final conversion (Label Studio stopped)" in result.stdout and "DIFFERS" not in result.stdout
    # The copy taken first is a pg_dump of what the server ran on.
    before = [m for m in snapshot_manifests(ls_vm) if m.get("label") == "pre-migrate-db"][-1]
    assert before["extra"]["engine"] == "postgresql" and any(f["path"] == "label_studio.pgdump" for f in before["files"])
    assert engine(ls_vm) == "" and SECRET not in ls_vm.vm.exec(f"cat {UNIT}").stdout.decode()
    check = ls_vm.vm.exec(f"runuser -u labelstudio -- sqlite3 'file:{DB}?mode=ro' 'PRAGMA integrity_check'")
    assert check.stdout.decode().strip() == "ok"
    assert sdk_view(ls_vm.url, ls_vm.token) == ls_vm.after_postgresql
    assert ls_vm.session.get("/api/projects?page_size=100").status == 200
    again = fab(ls_vm, "provision")
    assert again.returncode == 0 and re.search(r"\b0 changed\b", again.stdout), again.stdout + again.stderr
