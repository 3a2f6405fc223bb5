"""The `database:` profile section and the pure PostgreSQL parts: validation, Label Studio's environment,
the secret file's line, the SCRAM verifier, the plan steps, the restore check, and every PostgreSQL script
parsing as POSIX shell."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import subprocess
from pathlib import PurePosixPath

import pytest

from tasks.core import database, render
from tasks.core.commands import postgres, probes, swap
from tasks.core.commands.provision import ensure_admin, wanted_packages
from tasks.core.data import engine
from tasks.core.data import postgres_snapshots
from tasks.core.data.catalog import Manifest
from tasks.core.errors import ProfileError, SnapshotError
from tasks.core.onserver import postgres_tool as pgtool
from tasks.core.profile import parse_profile
from tasks.core.provision import steps
from tasks.core.provision.facts import PostgresFacts, provision_facts_from_probe
from tests.unit.samples import DATA, HOSTILE

LOCAL = parse_profile("database:\n  engine: postgresql\n", host="vm")
CA_FILE = DATA / "external-db-ca.pem"   # a test CA's certificate (no key anywhere)
EXTERNAL = parse_profile("database:\n  engine: postgresql\n  host: db.example.org\n  port: 6432\n"
                         f"  name: ls_prod\n  user: ls_app\n  ca_file: {CA_FILE}\n", host="vm")


def test_default_is_sqlite_and_changes_nothing():
    profile = parse_profile("", host="vm")
    assert profile.database.engine == "sqlite" and not profile.database.postgresql
    assert database.label_studio_env(profile.database) == []
    assert "POSTGRE" not in render.env_file(profile, group="root", mode="0600").content
    assert "database.env" not in render.unit_file(profile).content
    assert "postgresql" not in wanted_packages(profile) and "postgresql-client" not in wanted_packages(profile)


@pytest.mark.parametrize("text, message", [
    ("database:\n  engine: mysql\n", "'database.engine' must be one of: sqlite, postgresql"),
    ("database:\n  engine: postgresql\n  name: Label-Studio\n", "'database.name' must be a PostgreSQL name"),
    ("database:\n  engine: postgresql\n  user: \"x; drop\"\n", "'database.user' must be a PostgreSQL name"),
    ("database:\n  engine: postgresql\n  host: \"db host\"\n", "'database.host' must be a host name"),
    ("database:\n  engine: postgresql\n  port: 0\n", "'database.port' must be a port number"),
    ("database:\n  engine: postgresql\n  sslmode: maybe\n", "'database.sslmode' must be one of: disable"),
    ("database:\n  host: db.example.org\n", "'database.host' is set but database.engine is sqlite"),
    ("database:\n  ca_file: ca.pem\n", "'database.ca_file' is set but database.engine is sqlite"),
    ("database:\n  engine: postgresql\n  host: db.example.org\n", "'database.ca_file' is needed: the certificate "
     "of db.example.org is verified (sslmode verify-full)"),
    ("database:\n  engine: postgresql\n  host: db.example.org\n  sslmode: verify-ca\n", "'database.ca_file' is needed"),
    ("service:\n  manager: screen\ndatabase:\n  engine: postgresql\n", "needs service.manager systemd"),
    ("database:\n  engine: postgresql\n  password: x\n", "unknown key 'database.password'"),
])
def test_bad_database_sections_are_one_clear_line(text, message):
    with pytest.raises(ProfileError) as raised:
        parse_profile(text, source="configs/vm.yaml")
    assert message in raised.value.message and "configs/vm.yaml:" in raised.value.message


def test_label_studio_environment_local_and_external():
    assert database.label_studio_env(LOCAL.database) == [
        ("DJANGO_DB", "default"), ("POSTGRE_NAME", "labelstudio"), ("POSTGRE_USER", "labelstudio"),
        ("POSTGRE_HOST", "127.0.0.1"), ("POSTGRE_PORT", "5432"), ("PGSSLMODE", "disable")]
    env = dict(database.label_studio_env(EXTERNAL.database))
    assert env["POSTGRE_HOST"] == "db.example.org" and env["POSTGRE_PORT"] == "6432"
    # External: verified by default (libpq reads these; Label Studio has no TLS setting of its own).
    assert env["PGSSLMODE"] == "verify-full"
    assert "PGSSLROOTCERT=/opt/label-studio/label-studio-database-ca.pem\n" in render.env_file(
        EXTERNAL, group="root", mode="0600").content
    # On the VM, over loopback: no TLS unless the profile asks for it.
    assert dict(database.label_studio_env(LOCAL.database))["PGSSLMODE"] == "disable"
    assert database.DatabaseSettings(engine="postgresql", sslmode="require").effective_sslmode == "require"
    assert database.DatabaseSettings().effective_sslmode is None
    assert EXTERNAL.database.describe() == "PostgreSQL ls_app@db.example.org:6432/ls_prod (external)"
    content = render.env_file(EXTERNAL, group="root", mode="0600").content
    assert "POSTGRE_NAME=ls_prod\n" in content and "PASSWORD" not in content.replace("its password is in", "")


def test_unit_reads_the_secret_file_and_waits_for_a_local_postgresql():
    unit = render.unit_file(LOCAL).content
    assert "EnvironmentFile=/opt/label-studio/label-studio-database.env" in unit
    assert "After=postgresql.service" in unit
    assert "After=postgresql.service" not in render.unit_file(EXTERNAL).content
    assert "postgresql" in wanted_packages(LOCAL) and "postgresql-client" in wanted_packages(EXTERNAL)


@pytest.mark.parametrize("password, ok", [
    ("Abc123xyz890", True), ("p@ss-word_!#%&()*+,./:;<=>?[]^{|}~", True), ("short", False),
    ("with space x", False), ("quote'inside", False), ('dq"inside1', False), ("dollar$inside", False),
    ("back\\slash1", False), ("tick`inside", False), ("newline\ninside", False), ("é-unicode-pw", False),
])
def test_password_charset(password, ok):
    assert (database.password_problem(password) is None) is ok
    if ok:
        assert database.secret_line(password) == f"POSTGRE_PASSWORD={password}\n".encode()
    else:
        with pytest.raises(ValueError):
            database.secret_line(password)


def test_scram_verifier_follows_rfc_5802():
    salt = bytes(range(16))
    verifier = pgtool.scram_verifier("pencil", salt)
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt_b64 = iterations_salt.split(":")
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    assert method == "SCRAM-SHA-256" and iterations == "4096" and base64.b64decode(salt_b64) == salt
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    assert stored == hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    assert server == hmac.new(salted, b"Server Key", hashlib.sha256).digest()


def test_password_file_is_generated_once_0600_and_turned_into_sql(tmp_path):
    secret = tmp_path / "db.env"
    sql = pgtool.password_sql(str(secret), "labelstudio")
    first = secret.read_text()
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    password = pgtool.read_password(str(secret))
    assert len(password) == 32 and password.isalnum() and password not in sql
    assert sql.startswith("ALTER ROLE \"labelstudio\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:")
    pgtool.password_sql(str(secret), "labelstudio")
    assert secret.read_text() == first


def test_restore_names_are_valid_identifiers():
    long = dataclasses.replace(LOCAL.database, name="x" * 63)
    for settings in (LOCAL.database, long):
        new, aside = database.restore_names(settings, "20250101120000")
        for name in (new, aside):
            assert database._identifier(name) is None, name
        assert new != aside


def _manifest(extra: dict) -> Manifest:
    return Manifest(host="vm", created="", label=None, label_studio_version=None, source={}, files=[],
                    integrity_check="ok", counts={}, media_included=True, extra=extra)


def test_snapshot_engine_and_refusals(tmp_path):
    assert database.snapshot_engine(_manifest({})) == "sqlite"
    assert database.snapshot_engine(_manifest({"engine": "postgresql"})) == "postgresql"
    assert database.snapshot_engine(_manifest({"engine": "oracle"})) == "sqlite"
    sqlite_snapshot = type("S", (), {"id": "20250101T000000Z", "manifest": _manifest({})})()
    pg_snapshot = type("S", (), {"id": "20250101T000000Z", "manifest": _manifest({"engine": "postgresql"})})()
    engine.refuse_other_engine(pg_snapshot, LOCAL, "vm")
    engine.refuse_other_engine(sqlite_snapshot, LOCAL, "vm")  # converted on the server
    with pytest.raises(SnapshotError) as raised:
        engine.refuse_other_engine(pg_snapshot, parse_profile("", host="vm"), "vm")
    assert "holds a postgresql database and vm runs on sqlite" in raised.value.message
    assert "migrate-db --to sqlite" in raised.value.hint
    assert database.converts("sqlite", "postgresql") and not database.converts("postgresql", "sqlite")


def test_table_differences():
    assert postgres_snapshots.table_differences({"task": 3, "project": 1}, {"project": 1, "task": 3}) == []
    assert postgres_snapshots.table_differences({"task": 3}, {"task": 2, "extra": 0}) == [
        "extra: absent in the snapshot, 0 restored", "task: 3 in the snapshot, 2 restored"]


# ------------------------------------------------------------------------------------------------
# Plan steps


def _facts(postgres_block: str = "", base: str = "provision_probe_provisioned.txt"):
    text = (DATA / base).read_text()
    if postgres_block:
        text += "[postgres]\n" + postgres_block
    return provision_facts_from_probe(text)


READY = ("secret_meta=root:root:600\nversion=15\nconf={conf}\nhba=yes\nactive=active\nrole=1\ndb=1\n"
         "login=yes\nusers=1\nadmin=1\n").format(conf=base64.b64encode(postgres.server_conf().encode()).decode())


def test_local_postgresql_ready_is_unchanged_and_users_come_from_it():
    found = _facts(READY)
    assert found.postgres == PostgresFacts("15", postgres.server_conf(), True, True, True, True, "root:root:600", True)
    assert found.admin_exists and found.db_users == 1
    changes = steps.database(found, LOCAL)
    assert [c.changed for c in changes] == [False, False]
    assert "localhost only" in changes[0].what and "the password logs in" in changes[1].what


@pytest.mark.parametrize("block, changed", [
    ("", [True, True]),                                                    # nothing yet
    (READY.replace("hba=yes", "hba=no"), [True, False]),                   # our pg_hba lines missing
    (READY.replace("secret_meta=root:root:600", "secret_meta=root:root:644"), [False, True]),
    (READY.replace("login=yes", "login=no"), [False, True]),               # the password does not log in
    (READY.replace("db=1", "db="), [False, True]),
])
def test_local_postgresql_steps(block, changed):
    changes = steps.database(_facts(block), LOCAL)
    assert [c.changed for c in changes] == changed
    assert all(steps.RESTART in c.notifies for c in changes[1:] if c.changed)


def test_external_password_step():
    assert steps.database_password_needed(_facts(""), EXTERNAL)
    ca, planned = steps.database(_facts(""), EXTERNAL)
    # The CA certificate goes first: the login test of the stored password verifies the server with it.
    assert ca.changed and ca.action.file.content == CA_FILE.read_text() and ca.action.file.mode == "0644"
    assert planned.changed and planned.action is None  # plan mode: no password asked
    with_password = steps.database(_facts(""), EXTERNAL, "Abc123xyz890")[1]
    assert with_password.action.password == "Abc123xyz890" and "Abc123xyz890" not in repr(with_password)
    ready = _facts("secret_meta=root:root:600\nlogin=yes\nusers=2\nadmin=0\n"
                   f"[files]\ndatabase_ca={base64.b64encode(CA_FILE.read_bytes()).decode()}\n")
    assert not steps.database_password_needed(ready, EXTERNAL)
    assert [c.changed for c in steps.database(ready, EXTERNAL)] == [False, False]
    assert ready.db_users == 2 and not ready.admin_exists
    assert steps.database(_facts(""), parse_profile("", host="vm")) == []


# ------------------------------------------------------------------------------------------------
# Scripts


def _hostile(**database_keys):
    return dataclasses.replace(HOSTILE, database=dataclasses.replace(HOSTILE.database, engine="postgresql",
                                                                     **database_keys))


HOSTILE_LOCAL = _hostile(name="_db_1", user="_u_1")
HOSTILE_EXTERNAL = _hostile(host="-db.example.org", port=1, sslmode="verify-full", ca_file="ca.pem")


def postgres_scripts(profile) -> dict[str, str]:
    work = PurePosixPath(f"{profile.backup.server_tmp_dir}/lsvm-backup.-a $b")
    new, aside = database.restore_names(profile.database, "20250101120000")
    return {
        "provision probe": probes.provision_probe(profile, "$(reboot)@x.org"),
        "status probe": probes.status_probe(profile),
        "configure": postgres.configure_server(profile),
        "ensure role": postgres.ensure_role(profile),
        "store password": postgres.store_password(profile),
        "counts": postgres.counts(profile),
        "counts of new": postgres.counts(profile, new),
        "dump": postgres.dump(profile, work / database.DUMP),
        "create": postgres.create_database(profile, new),
        "drop": postgres.drop_database(profile, aside),
        "restore": postgres.restore_into(profile, work / database.DUMP, new),
        "switch in": postgres.switch_in(profile, new, aside),
        "switch back": postgres.switch_back(profile, new, aside),
        "ensure admin": ensure_admin(profile, work / "s.py", work / "secret"),
        "restore job": swap.job(profile, [".env", "media"], 30, after_swap=postgres.switch_in(profile, new, aside),
                                undo_swap=postgres.switch_back(profile, new, aside),
                                on_success=postgres.drop_database(profile, aside)),
    }


@pytest.mark.parametrize("kind, name, script", [
    (kind, name, script) for kind, profile in (("local", HOSTILE_LOCAL), ("external", HOSTILE_EXTERNAL))
    for name, script in postgres_scripts(profile).items()])
def test_postgres_script_is_valid_posix_shell(kind, name, script):
    result = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, f"{kind} {name}: {result.stderr}"


@pytest.mark.parametrize("profile", [HOSTILE_LOCAL, HOSTILE_EXTERNAL])
def test_no_script_reads_a_password_into_argv(profile):
    """The password travels from the root-only file into the environment (sed inside $(...)), never as
    a word of a command line: no script names POSTGRE_PASSWORD or PGPASSWORD as an argument."""
    for name, script in postgres_scripts(profile).items():
        for word in ("PGPASSWORD=$", "POSTGRE_PASSWORD=$"):
            for at in range(len(script)):
                at = script.find(word, at)
                if at < 0:
                    break
                assert script[at - 1] in " ;&(\n{" or script[at - 1:at] == "", (name, script[at - 40:at + 40])
                at += 1


# ------------------------------------------------------------------------------------------------
# status: the database the server runs on, as its env file says


def _status(env_text: str | None, db_size: int | None = None, postgres: str = ""):
    import base64

    from tasks.core.provision.facts import status_from_probe
    env = base64.b64encode(env_text.encode()).decode() if env_text is not None else "-"
    return status_from_probe(f"[install]\nenv_file={env}\ndb_size={db_size if db_size is not None else ''}\n"
                             + postgres)


def test_status_names_the_servers_database_and_a_profile_that_disagrees():
    from tasks.core.database import DatabaseSettings
    from tasks.service import database_text
    sqlite_env, pg_env = "LABEL_STUDIO_HOST=http://x\n", "DJANGO_DB=default\nPOSTGRE_NAME=labelstudio\n"
    assert database_text(_status(sqlite_env, 2 * 1024 ** 2), DatabaseSettings(), "vm") == "SQLite, 2.0 MiB"
    assert database_text(_status(None), DatabaseSettings(), "vm") == "SQLite, not created yet"
    assert database_text(_status(sqlite_env, 1024), LOCAL.database, "vm") == (
        "SQLite, 1.0 KiB; the profile says PostgreSQL labelstudio@127.0.0.1:5432/labelstudio (on the VM) "
        "(to move the data: fab -H vm migrate-db --to postgresql)")
    assert database_text(_status(pg_env, 1024), DatabaseSettings(), "vm").startswith(
        "PostgreSQL labelstudio@127.0.0.1:5432/labelstudio (on the VM); the profile says SQLite (to move the data: "
        "fab -H vm migrate-db --to sqlite)")
    ready = "[postgres]\nready=127.0.0.1:5432 - accepting connections\nversion=17.6\n"
    assert database_text(_status(pg_env, None, ready), LOCAL.database, "vm") == (
        "PostgreSQL labelstudio@127.0.0.1:5432/labelstudio (on the VM), answers (PostgreSQL 17.6)")
    assert database_text(_status("DJANGO_DB=mysql\n"), LOCAL.database, "vm") == (
        "DJANGO_DB=mysql (not managed by this toolkit)")
