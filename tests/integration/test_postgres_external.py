"""Label Studio on VM A with its database on VM B (`database.host`): a second test VM runs Debian's
PostgreSQL with a certificate from a test CA, reached over the containers' network and verified
(sslmode verify-full, the default, against the profile's ca_file). Provision installs only the client on A and stores the
password from $LSVM_DB_PASSWORD in the root-only file; the official SDK writes through nginx on A and the
rows land on B; a second provision changes nothing; backup and restore-server work against B; a wrong
password is one line and exit 5."""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.support.labelstudio import annotate_through_sdk, api_token, sdk_view
from tests.integration.support.machines import ADMIN_PASSWORD, provision_fresh
from tests.integration.support.servers import start_postgres_host

# Two VMs for one feature: proven on one Debian release (the README says so).
pytestmark = pytest.mark.one_release("bookworm")

DB_PASSWORD = "Ext-db_pw.4711!long"
SECRET = "/opt/label-studio/label-studio-database.env"


@pytest.fixture(scope="module")
def dbhost(vm_image, tmp_path_factory):
    vm = start_postgres_host(vm_image, tmp_path_factory.mktemp("dbhost"), "ls_app", DB_PASSWORD, "ls_prod")
    yield vm
    vm.stop()


def db(dbhost, sql: str, database: str = "ls_prod") -> str:
    return dbhost.exec(f"runuser -u postgres -- psql -X -t -A -d {database}", input=sql.encode()).stdout.decode().strip()


@pytest.fixture(scope="module")
def app(vm_image, suite, tmp_path_factory, dbhost):
    home = tmp_path_factory.mktemp(f"home-pg-external-{suite}")
    profile = (f"database:\n  engine: postgresql\n  host: {dbhost.address}\n  name: ls_prod\n  user: ls_app\n"
               f"  ca_file: {dbhost.ca_file}\n")   # sslmode: verify-full by default
    machine = provision_fresh(vm_image, suite, home, "external", "vm", profile, env={"LSVM_DB_PASSWORD": DB_PASSWORD})
    assert machine.first_run.returncode == 0, machine.first_run.stdout + machine.first_run.stderr
    machine.token = api_token(machine)
    yield machine
    machine.vm.stop()


def on_app(app, script: str) -> str:
    return app.vm.exec(script).stdout.decode()


def test_label_studio_on_vm_a_writes_into_postgresql_on_vm_b(app, dbhost):
    annotate_through_sdk(app, "Remote database", n_tasks=9, n_annotations=4)
    assert sdk_view(app.url, app.token)["projects"] == {"Remote database": 9}
    assert db(dbhost, "select title from project") == "Remote database"
    assert db(dbhost, "select count(*) from task_completion") == "4"
    # Over TLS: B admits ls_app on hostssl lines only, and A verifies B's certificate (verify-full, the
    # default for an external server) against the CA the profile names, put on A by provision.
    hba = dbhost.exec("cat /etc/postgresql/*/main/pg_hba.conf").stdout.decode()
    assert "hostssl all ls_app samenet scram-sha-256" in hba and "host all ls_app" not in hba
    env = on_app(app, "cat /opt/label-studio/label-studio.env")
    assert "PGSSLMODE=verify-full\n" in env and "PGSSLROOTCERT=/opt/label-studio/label-studio-database-ca.pem\n" in env
    assert on_app(app, "stat -c '%U:%G:%a' /opt/label-studio/label-studio-database-ca.pem").strip() == "root:root:644"
    assert on_app(app, "cat /opt/label-studio/label-studio-database-ca.pem").encode() == dbhost.ca_file.read_bytes()
    assert db(dbhost, "select count(*) from pg_stat_ssl where ssl and client_addr is not null", "postgres") != "0"
    # Only the client on A, nothing listening on 5432 there.
    packages = on_app(app, "dpkg-query -W -f='${Package} ${db:Status-Status}\\n' postgresql postgresql-client "
                           "2>/dev/null || true")
    assert "postgresql-client installed" in packages and "postgresql installed" not in packages
    assert ":5432" not in on_app(app, "ss -ltnH")
    status = app.fab("status")
    assert f"PostgreSQL ls_app@{dbhost.address}:5432/ls_prod (external), answers" in status.stdout, status.stdout


def test_the_password_is_only_in_the_root_only_file(app):
    assert on_app(app, f"stat -c '%U:%G:%a' {SECRET}").strip() == "root:root:600"
    assert on_app(app, f"cat {SECRET}") == f"POSTGRE_PASSWORD={DB_PASSWORD}\n"
    found = on_app(app, f"grep -rlF -- '{DB_PASSWORD}' /etc /opt /var/log /var/lib/label-studio /tmp /var/tmp "
                        "2>/dev/null || true").split()
    assert found == [SECRET], found
    assert DB_PASSWORD not in on_app(app, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\000' ' '")
    assert DB_PASSWORD not in on_app(app, "journalctl --no-pager -o cat")


def test_second_provision_changes_nothing_and_asks_for_no_password(app):
    again = app.fab("provision")  # no LSVM_DB_PASSWORD: the stored one still logs in
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"\b0 changed\b", again.stdout), again.stdout
    assert "the stored password logs in to PostgreSQL ls_app@" in again.stdout


def test_backup_and_restore_against_the_external_server(app, dbhost):
    before = sdk_view(app.url, app.token)
    backup = app.fab("backup")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    snapshot = re.search(r"snapshot (\d{8}T\d{6}Z\S*):", backup.stdout).group(1)
    manifest = json.loads((app.fab.home / "backups" / "vm" / snapshot / "manifest.json").read_text())
    assert manifest["extra"]["engine"] == "postgresql" and manifest["source"]["database_host"] == dbhost.address
    annotate_through_sdk(app, "After the backup", n_tasks=2, n_annotations=1)
    restored = app.fab("restore-server", "--snapshot", snapshot, "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert sdk_view(app.url, app.token) == before
    assert db(dbhost, "select datname from pg_database where datname like '%lsvm%'", "postgres") == ""


def test_a_password_the_server_refuses_is_one_line(app, dbhost):
    db(dbhost, "ALTER ROLE ls_app PASSWORD 'changed-elsewhere-1'", "postgres")
    try:
        # The users table cannot be read without a working password, so the admin's is asked too (an
        # existing admin keeps its own).
        admin = {"LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD}
        refused = app.fab("provision", env={"LSVM_DB_PASSWORD": "not-the-password-1", **admin})
        assert refused.returncode == 5, refused.stdout + refused.stderr
        assert "refused ls_app with that password" in refused.stderr and "Traceback" not in refused.stderr
        fixed = app.fab("provision", env={"LSVM_DB_PASSWORD": "changed-elsewhere-1", **admin})
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert "stored the password of PostgreSQL ls_app@" in fixed.stdout
        assert "admin admin@example.com exists" in fixed.stdout
        assert sdk_view(app.url, app.token)["projects"]
    finally:
        db(dbhost, f"ALTER ROLE ls_app PASSWORD '{DB_PASSWORD}'", "postgres")
