"""PostgreSQL scripts (run as root): the local server's settings, the role and its password, the
external server's password, facts, the dump and the restore of a snapshot into a new database and the
switch by renames. The password is read from the root-only secret file into PGPASSWORD by `sed` inside
the script: never argv, never a file the service user can read. Work inside the data dir or its temp
folders runs as the service user (`as_service_user`)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from tasks.core.commands import Arg, as_service_user, join, private_file_from_stdin, q
from tasks.core.database import PASSWORD_KEY, client_env
from tasks.core.onserver import postgres_tool
from tasks.core.profile import Profile

PGTOOL_SOURCE = Path(postgres_tool.__file__).read_text()
CONF_NAME = "labelstudio-vm.conf"
HBA_ADDRESSES = ("127.0.0.1/32", "::1/128")
READY_WAIT = 60  # seconds for PostgreSQL to accept connections after a restart
NOT_LOGGED_IN = 3  # exit status of store_password when the stored password does not log in

# The first cluster of the installed PostgreSQL ("main" as Debian creates it): its version and config dir.
CLUSTER = ("v=$(pg_lsclusters -h 2>/dev/null | awk '$2 == \"main\" {print $1; exit}'); "
           "conf=/etc/postgresql/$v/main")


def server_conf() -> str:
    """conf.d drop-in: localhost only, SCRAM for every password set."""
    return ("# Managed by labelstudio-vm: PostgreSQL for Label Studio listens on this host only.\n"
            "listen_addresses = 'localhost'\n"
            "password_encryption = 'scram-sha-256'\n")


def hba_lines(profile: Profile) -> list[str]:
    user = profile.database.user
    return [f"host all {user} {address} scram-sha-256" for address in HBA_ADDRESSES]


def as_postgres(*words: Arg) -> str:
    """The postgres superuser through peer authentication on the local socket (local engine only)."""
    return join("runuser", "-u", "postgres", "--", "env", "-C", "/", *words)


def psql_superuser(sql: str) -> str:
    """One statement as postgres, the SQL on stdin (never argv)."""
    return f"printf '%s\\n' {q(sql)} | {as_postgres('psql', '-X', '-q', '-t', '-A', '-v', 'ON_ERROR_STOP=1')}"


def export_password(profile: Profile, source: Arg | None = None) -> str:
    """PGPASSWORD from the secret file (or `source`), exported for what follows in the same script."""
    path = source if source is not None else profile.remote.database_env
    return f"PGPASSWORD=$(sed -n {q('s/^' + PASSWORD_KEY + '=//p')} {q(path)}) && export PGPASSWORD"


def as_role(profile: Profile, *words: Arg, database: str | None = None) -> str:
    """`words` as the service user connected as the Label Studio role (PGPASSWORD inherited)."""
    env = [f"{k}={v}" for k, v in client_env(profile.database, str(profile.remote.database_ca))]
    if database is not None:
        env = [e for e in env if not e.startswith("PGDATABASE=")] + [f"PGDATABASE={database}"]
    return as_service_user(profile, *env, *words)


def pgtool_words(profile: Profile, *args: Arg) -> list[Arg]:
    return [profile.remote.venv_python, "-I", "-c", PGTOOL_SOURCE, *args]


# ------------------------------------------------------------------------------------------------
# Provision


def configure_server(profile: Profile) -> str:
    """The conf.d drop-in and our pg_hba lines, for PostgreSQL on the app VM."""
    return configure_cluster(server_conf(), hba_lines(profile))


HBA_FILE = '"$conf/pg_hba.conf"'     # the cluster's, as the shell finds it (CLUSTER sets $conf)


def hba_update(path: str, lines: list[str], mark: str | None = None) -> str:
    """`lines` put first in the pg_hba file at `path` (a shell word) when one is missing: pg_hba takes the
    first line that matches. With `mark` (the comment ending the lines this toolkit writes), every other
    line so marked goes: the file then holds exactly `lines` of ours."""
    if mark is not None:     # sed prints each `1i` text as it runs: in the order given
        insert = " ".join(f"-e {q('1i ' + line)}" for line in lines)
        return f"sed -i {insert} -e {q(f'/ # {mark}$/d')} {path}"
    insert = " ".join(f"-e {q('1i ' + line)}" for line in reversed(lines))
    missing = " || ".join(f"! grep -qxF {q(line)} {path}" for line in lines)
    return f"{{ if {missing}; then sed -i {insert} {path}; fi; }}"


def configure_cluster(conf: str, lines: list[str], *, restart: bool = True, mark: str | None = None) -> str:
    """The conf.d drop-in `conf` and the pg_hba `lines` (hba_update), then a restart (listen_addresses
    needs one; `restart` False: a reload, which is enough for pg_hba and drops no session) and a wait until
    it accepts connections."""
    return (
        f"{CLUSTER}; [ -n \"$v\" ] || {{ echo 'no PostgreSQL cluster main found' >&2; exit 1; }}; "
        f"printf '%s' {q(conf)} > \"$conf/conf.d/{CONF_NAME}.lsvm-new\" && "
        f"mv -f \"$conf/conf.d/{CONF_NAME}.lsvm-new\" \"$conf/conf.d/{CONF_NAME}\" && "
        f"{hba_update(HBA_FILE, lines, mark)} && "
        f"systemctl enable --quiet postgresql && systemctl {'restart' if restart else 'reload'} postgresql && "
        f"{wait_ready()}"
    )


def wait_ready(timeout: int = READY_WAIT) -> str:
    return (f"i=0; until pg_isready -q -h 127.0.0.1; do i=$((i + 1)); "
            f"[ $i -le {int(timeout) * 2} ] || {{ echo 'PostgreSQL does not accept connections' >&2; exit 1; }}; "
            "sleep 0.5; done")


def ensure_role(profile: Profile) -> str:
    """Role (LOGIN) and database (owned by it) when missing; the password generated on the server when
    the secret file is missing, and set from it as a SCRAM verifier (postgres_tool.py password): the SQL travels
    on a pipe, the password reaches neither argv nor PostgreSQL itself."""
    db = profile.database
    secret = profile.remote.database_env
    exists_role = as_postgres("psql", "-X", "-t", "-A", "-c", f"select 1 from pg_roles where rolname = '{db.user}'")
    exists_db = as_postgres("psql", "-X", "-t", "-A", "-c", f"select 1 from pg_database where datname = '{db.name}'")
    create_role = psql_superuser(f'CREATE ROLE "{db.user}" LOGIN')
    create_db = psql_superuser(f'CREATE DATABASE "{db.name}" OWNER "{db.user}" ENCODING UTF8 TEMPLATE template0')
    return (
        "umask 077 && "
        f"{{ [ \"$({exists_role})\" = 1 ] || {create_role}; }} && "
        f"python3 -I -c {q(PGTOOL_SOURCE)} password {q(secret)} {q(db.user)} | "
        f"{as_postgres('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1')} && "
        f"chown root:root {q(secret)} && chmod 0600 {q(secret)} && "
        f"{{ [ \"$({exists_db})\" = 1 ] || {create_db}; }}"
    )


def store_password(profile: Profile) -> str:
    """The external server's password from stdin (one line, POSTGRE_PASSWORD=...) into a new root-only
    file (0600 before a byte is written); only once a login with it works does it replace the secret
    file, else it is removed and the script exits NOT_LOGGED_IN (libpq's message on stderr)."""
    secret = profile.remote.database_env
    new = PurePosixPath(f"{secret}.lsvm-new")
    return (f"{private_file_from_stdin(new)} && {export_password(profile, new)} && "
            f"{{ {as_role(profile, 'psql', '-X', '-q', '-t', '-A', '-c', 'select 1')} >/dev/null || "
            f"{{ rm -f {q(new)}; exit {NOT_LOGGED_IN}; }}; }} && mv -f {q(new)} {q(secret)}")


def probe(profile: Profile, admin_email: str) -> list[str]:
    """The `[postgres]` section of the provision probe: installed version, our settings, role, database,
    secret file, whether the stored password logs in, users and the admin."""
    db = profile.database
    p = profile.remote
    if not db.postgresql:
        return []
    lines = ["echo '[postgres]'", f"echo \"secret_meta=$(stat -c '%U:%G:%a' {q(p.database_env)} 2>/dev/null)\""]
    if db.local:
        lines += cluster_probe(profile, hba_lines(profile), "1")
    admin = (f"printf '%s\\n' \"select count(*) from htx_user where email = :'email'\" | "
             f"{as_role(profile, 'psql', '-X', '-q', '-t', '-A', '-v', f'email={admin_email}')}")
    lines += [
        f"if [ -s {q(p.database_env)} ] && command -v psql >/dev/null && {export_password(profile)} && "
        f"{as_role(profile, 'psql', '-X', '-q', '-t', '-A', '-c', 'select 1')} >/dev/null 2>&1; then echo login=yes; "
        f"echo \"users=$({as_role(profile, 'psql', '-X', '-q', '-t', '-A', '-c', 'select count(*) from htx_user')} 2>/dev/null)\"; "
        f"echo \"admin=$({admin} 2>/dev/null)\"; "
        "else echo login=no; fi; unset PGPASSWORD",
    ]
    return lines


def cluster_probe(profile: Profile, hba: list[str], role_column: str) -> list[str]:
    """The local cluster's version, our conf.d drop-in (base64), whether every `hba` line is in, whether
    it runs, and (when it answers) `role_column` of the role and whether its database exists."""
    db = profile.database
    role_query = as_postgres("psql", "-X", "-t", "-A", "-c", f"select {role_column} from pg_roles where rolname = '{db.user}'")
    db_query = as_postgres("psql", "-X", "-t", "-A", "-c", f"select 1 from pg_database where datname = '{db.name}'")
    return [
        f"{CLUSTER}; echo \"version=$v\"",
        f"if [ -n \"$v\" ]; then printf 'conf='; base64 -w0 \"$conf/conf.d/{CONF_NAME}\" 2>/dev/null; echo; "
        "else echo 'conf='; fi",
        "hba=yes; for l in " + " ".join(q(line) for line in hba) + "; do "
        "[ -n \"$v\" ] && grep -qxF \"$l\" \"$conf/pg_hba.conf\" || hba=no; done; echo \"hba=$hba\"",
        "echo \"active=$(systemctl is-active postgresql 2>/dev/null)\"",
        f"if [ -n \"$v\" ] && pg_isready -q -h 127.0.0.1; then echo \"role=$({role_query})\"; "
        f"echo \"db=$({db_query})\"; fi",
    ]


def status_lines(profile: Profile) -> list[str]:
    """`[postgres]` of the status probe: does it answer, and its version (through the role's login)."""
    db = profile.database
    if not db.postgresql:
        return []
    return [
        "echo '[postgres]'",
        f"echo \"ready=$(pg_isready -h {q(db.address)} -p {int(db.port)} 2>&1 | tr -d '\\n')\"",
        f"if [ -s {q(profile.remote.database_env)} ] && {export_password(profile)}; then "
        f"echo \"version=$({as_role(profile, 'psql', '-X', '-q', '-t', '-A', '-c', 'show server_version')} 2>/dev/null)\"; "
        "fi; unset PGPASSWORD",
    ]


# ------------------------------------------------------------------------------------------------
# Data


def counts(profile: Profile, database: str | None = None) -> str:
    """postgres_tool.py counts as the Label Studio role (JSON on the last line)."""
    extra = [database] if database is not None else []
    return f"{export_password(profile)} && {as_role(profile, *pgtool_words(profile, 'counts', *extra))}"


def dump(profile: Profile, out: PurePosixPath) -> str:
    """postgres_tool.py dump as the service user into its temp folder (JSON on the last line)."""
    return f"{export_password(profile)} && {as_role(profile, *pgtool_words(profile, 'dump', out))}"


def create_database(profile: Profile, name: str) -> str:
    """A new empty database owned by the role: as postgres on the local server, as the role (it needs
    CREATEDB) on an external one."""
    return _create_or_drop(profile, f'CREATE DATABASE "{name}" OWNER "{profile.database.user}" '
                                    'ENCODING UTF8 TEMPLATE template0')


def drop_database(profile: Profile, name: str) -> str:
    return _create_or_drop(profile, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _create_or_drop(profile: Profile, sql: str) -> str:
    """A CREATE/DROP DATABASE statement: as postgres on the local server, as the role on an external one."""
    if profile.database.local:
        return psql_superuser(sql)
    return (f"{export_password(profile)} && printf '%s\\n' {q(sql)} | "
            f"{as_role(profile, 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', database='postgres')}")


def restore_into(profile: Profile, dump_file: PurePosixPath, name: str) -> str:
    """pg_restore of an uploaded dump into database `name`, as the role, in one transaction that stops
    at the first error; the last line of its complaint on stderr."""
    return (f"{export_password(profile)} && "
            f"{as_role(profile, 'pg_restore', '--no-owner', '--no-privileges', '--single-transaction', '--exit-on-error', '-d', name, dump_file, database=name)}")


def _rename_sql(old: str, new: str) -> str:
    return f'ALTER DATABASE "{old}" RENAME TO "{new}"'


def _as_admin(profile: Profile, sql: str) -> str:
    """A statement run where no session is open in the database it renames: postgres locally, the role
    through the `postgres` database externally."""
    if profile.database.local:
        return psql_superuser(sql)
    return (f"{export_password(profile)} && printf '%s\\n' {q(sql)} | "
            f"{as_role(profile, 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', database='postgres')}")


def _exists(profile: Profile, name: str) -> str:
    """A test: database `name` exists."""
    sql = f"select 1 from pg_database where datname = '{name}'"
    if profile.database.local:
        return f"[ \"$({as_postgres('psql', '-X', '-t', '-A', '-c', sql)})\" = 1 ]"
    return (f"[ \"$({export_password(profile)} && "
            f"{as_role(profile, 'psql', '-X', '-q', '-t', '-A', '-c', sql, database='postgres')})\" = 1 ]")


def _terminate(profile: Profile, name: str) -> str:
    """Sessions left in `name` (the service is stopped; a stray psql) would block the rename."""
    sql = f"select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = '{name}' and pid <> pg_backend_pid()"
    return f"{_as_admin(profile, sql)} >/dev/null"


def switch_in(profile: Profile, new: str, aside: str) -> str:
    """With Label Studio stopped: live -> aside (when there is a live one), new -> live."""
    live = profile.database.name
    return (f"if {_exists(profile, live)}; then {_terminate(profile, live)}; {_as_admin(profile, _rename_sql(live, aside))}; fi && "
            f"{_as_admin(profile, _rename_sql(new, live))}")


def switch_back(profile: Profile, new: str, aside: str) -> str:
    """Undo switch_in, also half of one: the restored database back to its own name, the one set aside
    back to live."""
    live = profile.database.name
    return (f"if {_exists(profile, aside)}; then "
            f"if {_exists(profile, live)}; then {_terminate(profile, live)}; {_as_admin(profile, _rename_sql(live, new))}; fi; "
            f"{_as_admin(profile, _rename_sql(aside, live))}; fi")
