"""Label Studio on PostgreSQL installed on the VM (`database: {engine: postgresql}`): the official SDK
works through nginx; PostgreSQL listens on loopback only; its password is nowhere but the root-only
secret file; a second provision changes nothing; backup -> the database dropped -> restore-server gives
the same data back; a broken dump, a dump that does not match its manifest and a new database that does
not come up in time all leave the original serving, with a non-zero exit."""

from __future__ import annotations

import json
import re

import pytest

from dev.lsclient import LabelStudio
from tests.integration.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, _provisioned, sdk_view

SECRET = "/opt/label-studio/label-studio-database.env"
LABEL_CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
                '<Choice value="pos"/><Choice value="neg"/></Choices></View>')


@pytest.fixture(scope="module")
def pg(vm_image, suite, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"home-postgres-{suite}")
    machine = _provisioned(vm_image, suite, home, "postgres", "vm", "database:\n  engine: postgresql\n")
    assert machine.first_run.returncode == 0, machine.first_run.stdout + machine.first_run.stderr
    ls = LabelStudio(machine.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    machine.token = ls.post_json("/api/token/", {}).json()["token"]
    yield machine
    machine.vm.stop()


def sh(machine, script: str, **kwargs) -> str:
    result = machine.vm.exec(script, **kwargs)
    return result.stdout.decode()


def password(machine) -> str:
    line = sh(machine, f"cat {SECRET}").strip()
    assert line.startswith("POSTGRE_PASSWORD=")
    return line.split("=", 1)[1]


def psql(machine, sql: str, database: str = "labelstudio") -> str:
    return sh(machine, f"runuser -u postgres -- psql -X -t -A -d {database}", input=sql.encode()).strip()


def annotate_through_sdk(machine, title: str, n_tasks: int = 12, n_annotations: int = 5) -> None:
    from label_studio_sdk import LabelStudio as SDK
    client = SDK(base_url=machine.url, api_key=machine.token)
    project = client.projects.create(title=title, label_config=LABEL_CONFIG)
    client.projects.import_tasks(id=project.id, request=[{"text": f"{title} {i}"} for i in range(n_tasks)])
    for task in list(client.tasks.list(project=project.id))[:n_annotations]:
        client.annotations.create(id=task.id, result=[{"from_name": "label", "to_name": "text", "type": "choices",
                                                        "value": {"choices": ["pos"]}}])


def test_label_studio_runs_on_postgresql_through_nginx(pg):
    annotate_through_sdk(pg, "On PostgreSQL")
    view = sdk_view(pg.url, pg.token)
    assert view["projects"] == {"On PostgreSQL": 12} and view["annotations"] == 5
    # The rows are in PostgreSQL, and no SQLite database was made.
    assert psql(pg, "select count(*) from task_completion") == "5"
    assert psql(pg, "select title from project") == "On PostgreSQL"
    assert sh(pg, "ls /var/lib/label-studio/label_studio.sqlite3 2>&1 || true").count("No such file") == 1
    status = pg.fab("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"PostgreSQL labelstudio@127\.0\.0\.1:5432/labelstudio.*answers", status.stdout), status.stdout


def test_postgresql_listens_on_loopback_only(pg):
    listening = sh(pg, "ss -ltnH")
    ports = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(":5432")]
    assert sorted(ports) == ["127.0.0.1:5432", "[::1]:5432"], listening
    hba = sh(pg, "cat /etc/postgresql/*/main/pg_hba.conf")
    assert "host all labelstudio 127.0.0.1/32 scram-sha-256" in hba
    stored = psql(pg, "select rolpassword from pg_authid where rolname = 'labelstudio'", "postgres")
    assert stored.startswith("SCRAM-SHA-256$4096:"), stored


def test_the_password_is_only_in_the_root_only_file(pg):
    secret = password(pg)
    assert len(secret) >= 32
    assert sh(pg, f"stat -c '%U:%G:%a' {SECRET}").strip() == "root:root:600"
    # Nowhere else: unit files, the env file, any process's argv, the journal, PostgreSQL's log.
    places = ("/etc/systemd /opt/label-studio/label-studio.env /opt/label-studio/current/../../*.env "
              "/var/log /var/lib/label-studio /tmp /var/tmp")
    found = sh(pg, f"grep -rlF -- \"$(sed -n 's/^POSTGRE_PASSWORD=//p' {SECRET})\" {places} 2>/dev/null || true")
    assert found.strip().splitlines() == [SECRET] or found.strip() == "", found
    assert secret not in sh(pg, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\000' ' '")
    assert secret not in sh(pg, "journalctl --no-pager -o cat 2>/dev/null")
    # Label Studio itself has it (from systemd's EnvironmentFile=), and logs in with it.
    pid = sh(pg, "systemctl show -p MainPID --value label-studio").strip()
    assert f"POSTGRE_PASSWORD={secret}".encode() in pg.vm.exec(f"cat /proc/{pid}/environ").stdout
    assert "EnvironmentFile=/opt/label-studio/label-studio-database.env" in sh(pg, "cat /etc/systemd/system/label-studio.service")


def test_second_provision_changes_nothing(pg):
    before = password(pg)
    again = pg.fab("provision")
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"\b0 changed\b", again.stdout), again.stdout
    assert "the password logs in" in again.stdout
    assert password(pg) == before
