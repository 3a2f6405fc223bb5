"""Which database Label Studio uses, from the profile's `database:` section. Pure: settings, their
checks, the environment Label Studio reads, and the names the data tasks share.

    engine: sqlite (the default: nothing changes) | postgresql
    host:   null = PostgreSQL installed on the VM itself, listening on localhost only; a name or
            address = an existing server elsewhere (nothing installed; its password from $LSVM_DB_PASSWORD
            or a prompt)
    port, name, user, sslmode: how Label Studio connects (sslmode goes to libpq as PGSSLMODE); an
            external server's certificate is verified by default (verify-full) against ca_file, a CA
            certificate on this machine that provision puts on the VM (PGSSLROOTCERT); PostgreSQL on the
            VM is reached over loopback without TLS (disable)

The password is never a profile key: generated on the server (local) or sent on an SSH channel's stdin
(external), it lives only in a root-only 0600 file on the server (`RemotePaths.database_env`), one line
`POSTGRE_PASSWORD=<value>`, read by systemd's EnvironmentFile= and by root scripts (never sourced).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

ENGINES = ("sqlite", "postgresql")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
PASSWORD_ENV = "LSVM_DB_PASSWORD"      # the external server's password, on this machine
PASSWORD_KEY = "POSTGRE_PASSWORD"      # Label Studio's own variable, the only line of the secret file
LOCAL_ADDRESS = "127.0.0.1"
DUMP = "label_studio.pgdump"           # a PostgreSQL snapshot's database: pg_dump --format=custom
DUMP_COUNTS = DUMP + ".json"           # beside it in an offsite files snapshot: the row counts taken with it
SQLITE_DATABASE = "label_studio.sqlite3"

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_IPV6 = re.compile(r"^[0-9A-Fa-f:]+$")
# A password both systemd's EnvironmentFile= and a `sed` read as written: printable ASCII without
# blanks, quotes, backslash, '$' or '`'.
_PASSWORD = re.compile(r"^[!#%-&(-\[\]-_a-~]{8,256}$")


def _identifier(value: str) -> str | None:
    if _IDENTIFIER.match(value):
        return None
    return "must be a PostgreSQL name of lower-case letters, digits and '_' (at most 63, not starting with a digit)"


def _host(value: str | None) -> str | None:
    if value is None or _HOST.match(value) or (":" in value and _IPV6.match(value)):
        return None
    return "must be a host name or IP address of the PostgreSQL server (null: installed on the VM)"


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a port number between 1 and 65535"


def _sslmode(value: str | None) -> str | None:
    return None if value is None or value in SSL_MODES else "must be one of: " + ", ".join(SSL_MODES)


def _ca_file(value: str | None) -> str | None:
    return None if value is None or value.strip() else "must be the path of a CA certificate (PEM) on this machine"


def _opt(default, check=None):
    return field(default=default, metadata={"check": check, "coerce": None})


@dataclass(frozen=True)
class DatabaseSettings:
    engine: Literal["sqlite", "postgresql"] = _opt("sqlite")
    host: str | None = _opt(None, _host)
    port: int = _opt(5432, _port)
    name: str = _opt("labelstudio", _identifier)
    user: str = _opt("labelstudio", _identifier)
    sslmode: str | None = _opt(None, _sslmode)
    ca_file: str | None = _opt(None, _ca_file)

    @property
    def effective_sslmode(self) -> str | None:
        """What libpq is told: the profile's sslmode, else verify-full for an external server (its
        certificate checked against ca_file, its name against database.host), else, for PostgreSQL on the
        VM, disable: over loopback TLS protects nothing (whoever can read it is root) and costs each query
        its encryption (measured: about 13% of the annotations a 2-core VM saves)."""
        if self.sslmode is not None:
            return self.sslmode
        if not self.postgresql:
            return None
        return "disable" if self.local else "verify-full"

    @property
    def postgresql(self) -> bool:
        return self.engine == "postgresql"

    @property
    def local(self) -> bool:
        """PostgreSQL installed and managed on the VM (no database.host)."""
        return self.postgresql and self.host is None

    @property
    def address(self) -> str:
        """Where Label Studio and the data tasks connect."""
        return self.host or LOCAL_ADDRESS

    def describe(self) -> str:
        if not self.postgresql:
            return "SQLite"
        where = "on the VM" if self.local else "external"
        return f"PostgreSQL {self.user}@{self.address}:{self.port}/{self.name} ({where})"


def profile_problem(settings: DatabaseSettings, service_manager: str) -> str | None:
    """What the `database:` section cannot mean, in words (the key that is wrong first), else None."""
    if not settings.postgresql:
        changed = [key for key in ("host", "sslmode", "ca_file") if getattr(settings, key) is not None]
        if changed:
            return f"'database.{changed[0]}' is set but database.engine is sqlite (set engine: postgresql)"
        return None
    if service_manager != "systemd":
        return ("database.engine postgresql needs service.manager systemd (its password reaches Label Studio "
                "through systemd's EnvironmentFile=)")
    if settings.effective_sslmode in ("verify-ca", "verify-full") and settings.ca_file is None:
        return (f"'database.ca_file' is needed: the certificate of {settings.address} is verified "
                f"(sslmode {settings.effective_sslmode}) against the CA certificate that signed it; give its "
                "file, or set database.sslmode to require (encrypted, the server not verified)")
    return None


def label_studio_env(settings: DatabaseSettings, root_cert: str | None = None) -> list[tuple[str, str]]:
    """The env file lines (no secret) that point Label Studio at its database; none for SQLite, whose
    default Label Studio already uses. `root_cert`: where the CA certificate is on the server."""
    if not settings.postgresql:
        return []
    lines = [("DJANGO_DB", "default"), ("POSTGRE_NAME", settings.name), ("POSTGRE_USER", settings.user),
             ("POSTGRE_HOST", settings.address), ("POSTGRE_PORT", str(settings.port))]
    return lines + _tls_env(settings, root_cert)  # Label Studio has no TLS setting: libpq reads these


def client_env(settings: DatabaseSettings, root_cert: str | None = None) -> list[tuple[str, str]]:
    """libpq's own variables for psql/pg_dump/pg_restore (the password is added from the secret file)."""
    lines = [("PGHOST", settings.address), ("PGPORT", str(settings.port)), ("PGUSER", settings.user),
             ("PGDATABASE", settings.name)]
    return lines + _tls_env(settings, root_cert)


def _tls_env(settings: DatabaseSettings, root_cert: str | None) -> list[tuple[str, str]]:
    lines = []
    if settings.effective_sslmode:
        lines.append(("PGSSLMODE", settings.effective_sslmode))
    if settings.ca_file is not None and root_cert is not None:
        lines.append(("PGSSLROOTCERT", root_cert))
    return lines


def password_problem(password: str) -> str | None:
    if _PASSWORD.match(password):
        return None
    return ("the database password must be 8 to 256 printable ASCII characters without spaces, quotes, "
            "'\\', '$' or '`'")


def secret_line(password: str) -> bytes:
    """The secret file's content."""
    problem = password_problem(password)
    if problem:
        raise ValueError(problem)
    return f"{PASSWORD_KEY}={password}\n".encode()


def snapshot_engine(manifest) -> str:
    """The engine a snapshot's database comes from (snapshots made before PostgreSQL: sqlite)."""
    engine = (manifest.extra or {}).get("engine") if manifest is not None else None
    return engine if engine in ENGINES else "sqlite"


def converts(snapshot_engine_name: str, server_engine_name: str) -> bool:
    """Whether data of one engine goes onto a server of the other by conversion (SQLite -> PostgreSQL)."""
    return (snapshot_engine_name, server_engine_name) == ("sqlite", "postgresql")


def restore_names(settings: DatabaseSettings, stamp: str) -> tuple[str, str]:
    """(new, aside): the database a restore fills, and the name the live one gets while it is switched."""
    base = settings.name[:36]
    return f"{base}_lsvm_new_{stamp}", f"{base}_lsvm_old_{stamp}"


# ------------------------------------------------------------------------------------------------
# What the server runs on: the env file provision (or migrate-db) rendered is the record. Label Studio
# reads DJANGO_DB from it (`default` maps to PostgreSQL; absent or `sqlite`: SQLite), and the same
# file names the PostgreSQL it connects to.

_POSTGRESQL_KEYS = ("default", "postgresql")


def server_engine(env_text: str | None) -> str | None:
    """`sqlite`, `postgresql` or the unknown DJANGO_DB value the server's env file holds; None when
    there is no env file (never provisioned)."""
    if env_text is None:
        return None
    value = ""
    for line in env_text.splitlines():
        if line.startswith("DJANGO_DB="):
            value = line[len("DJANGO_DB="):].strip()
    if value in _POSTGRESQL_KEYS:
        return "postgresql"
    return "sqlite" if value in ("", "sqlite") else value


def server_settings(env_text: str | None) -> DatabaseSettings | None:
    """The database settings the server's env file points Label Studio at (None: no env file, or an
    engine this toolkit does not run). A PostgreSQL at 127.0.0.1 is taken as the one on the VM."""
    engine = server_engine(env_text)
    if engine == "sqlite":
        return DatabaseSettings()
    if engine != "postgresql":
        return None
    values = {}
    for line in (env_text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    host = values.get("POSTGRE_HOST") or LOCAL_ADDRESS
    port = values.get("POSTGRE_PORT", "")
    found = DatabaseSettings(engine="postgresql", host=None if host == LOCAL_ADDRESS else host,
                             port=int(port) if port.isdigit() else 5432,
                             name=values.get("POSTGRE_NAME") or DatabaseSettings.name,
                             user=values.get("POSTGRE_USER") or DatabaseSettings.user)
    sslmode = values.get("PGSSLMODE") or None
    # The default's own value reads back as the default: a profile that never set sslmode equals it.
    return found if sslmode == found.effective_sslmode else replace(found, sslmode=sslmode)


def same_database(one: DatabaseSettings, other: DatabaseSettings) -> bool:
    """Both point Label Studio at the same data (for SQLite: the data dir's file)."""
    if one.engine != other.engine:
        return False
    return not one.postgresql or (one.address, one.port, one.name, one.user) == (
        other.address, other.port, other.name, other.user)


PROVISION_REFUSES = "provision never switches the database under data"
DATA_TASKS_REFUSE = "the data tasks act on the database Label Studio uses only"


def mismatch(server: DatabaseSettings | None, server_engine_word: str | None, wanted: DatabaseSettings,
             *, has_data: bool, alias: str, config: str, why: str = PROVISION_REFUSES) -> tuple[str, str] | None:
    """(message, hint) when a task would act on another database than the one a Label Studio that holds
    data runs on; None when they agree, or when nothing was provisioned or stored yet."""
    if server_engine_word is None:
        return None
    if server is None:
        return (f"Label Studio on {alias} runs on DJANGO_DB={server_engine_word}, which this toolkit does not "
                "manage; nothing was changed", "")
    if same_database(server, wanted) or not has_data:
        return None
    if server.engine != wanted.engine:
        here = "SQLite" if not server.postgresql else "PostgreSQL"
        return (f"Label Studio on {alias} runs on {here} with its data and the profile says database.engine: "
                f"{wanted.engine}: {why}; nothing was changed",
                f"move the data with `fab -H {alias} migrate-db --to {wanted.engine}`, or set database.engine: "
                f"{server.engine} in {config}")
    return (f"Label Studio on {alias} uses {server.describe()} and the profile says {wanted.describe()}: "
            f"{why}; nothing was changed",
            f"set the database: section of {config} back to what the server uses; to move the data "
            "elsewhere: backup, then restore-server on a host with the new settings")
