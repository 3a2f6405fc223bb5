"""migrate-db: SQLite <-> PostgreSQL, verified, with Label Studio stopped only for the final copy.

Order: facts -> plan (refusals first, pure) -> a verified snapshot -> the converter uploaded -> a
trial conversion while Label Studio serves (times it, catches problems, makes the target schema) ->
the swap job on the server (commands/swap.py): stop, final conversion of the live data into the
target, verified, engine switched by an atomic rename, start, health gate, counts read back through
Label Studio's ORM; any failure there puts the engine file back and starts Label Studio on the data
it served, which the migration never wrote (the SQLite file is only ever opened read-only, a
PostgreSQL source only in read-only transactions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath

from rich.table import Table

from . import parse, ui
from .commands import data as data_commands
from .commands import migrate as commands
from .connect import Host
from .dbconvert import differences  # noqa: F401 (migrate.differences)
from .errors import RemoteError, UsageError
from .profile import Profile
from .transfer import remote_tempdir, upload_bytes

TRIAL_TIMEOUT = 3600


@dataclass(frozen=True)
class MigrateFacts:
    engine: str               # what the service runs on now
    credentials: bool         # the root-only PostgreSQL credentials file exists
    postgresql: str           # up | down | unknown (pg_isready)
    unit_reads_engine: bool   # the unit has the engine file's EnvironmentFile line (provisioned)
    manager: str
    sqlite_bytes: int

    @classmethod
    def parse(cls, text: str) -> "MigrateFacts":
        values = parse.key_values(text.splitlines())
        return cls(engine=values.get("engine", "sqlite"), credentials=values.get("credentials") == "yes",
                   postgresql=values.get("postgresql", "unknown"),
                   unit_reads_engine=values.get("unit_reads_engine") == "yes",
                   manager=values.get("manager", ""), sqlite_bytes=parse.int_or_none(values.get("sqlite_bytes")) or 0)


def read_facts(host: Host, profile: Profile) -> MigrateFacts:
    return MigrateFacts.parse(host.run(commands.facts(profile), sudo=True, what="reading the database setup").stdout)


def plan(facts: MigrateFacts, to: str, profile: Profile) -> list[str]:
    """The steps migrate-db will take, in words; UsageError/RemoteError for what it refuses."""
    if to not in commands.ENGINES:
        raise UsageError(f"--to must be one of: {', '.join(commands.ENGINES)}")
    if facts.engine == to:
        raise UsageError(f"Label Studio on this server already runs on {to}; nothing to do")
    if facts.engine not in commands.ENGINES:
        raise RemoteError(f"{profile.remote.database_engine_env} names an engine migrate-db does not know "
                          f"({facts.engine}); nothing was changed")
    if facts.manager != "systemd":
        raise UsageError("migrate-db needs the systemd service manager (service.manager: systemd): in screen "
                         "mode the service user's launcher could not read the root-only database credentials")
    if not facts.unit_reads_engine:
        raise UsageError("the Label Studio unit on this server does not read the database settings yet",
                         hint="run `fab -H HOST provision` first")
    if not facts.credentials:
        raise UsageError(f"PostgreSQL is not provisioned on this server ({profile.remote.postgresql_env} is "
                         "missing)", hint="set database.engine: postgresql in the profile and run provision")
    if facts.postgresql == "down":
        raise RemoteError("PostgreSQL does not answer on this server; nothing was changed")
    if to == "postgresql" and not facts.sqlite_bytes:
        raise UsageError(f"there is no SQLite database to migrate ({profile.remote.database})")
    source = f"SQLite {profile.remote.database}" if to == "postgresql" else "PostgreSQL"
    target = "PostgreSQL" if to == "postgresql" else f"a new SQLite file, swapped in as {profile.remote.database}"
    return [
        "a verified snapshot of the server into backups/ (label pre-migrate-db)",
        f"trial conversion {source} -> {target}, while Label Studio serves (schema by Label Studio's own "
        "migrations, every row copied with its id, verified table by table)",
        "stop Label Studio; final conversion of the live data; verify every table (rows and checksums)",
        f"switch the service to {to} ({profile.remote.database_engine_env}, atomic rename); start; health gate; "
        "counts read back through Label Studio",
        f"on any failure: back on {facts.engine} with its data as it was, exit non-zero",
    ]


def report_table(report: dict, title: str) -> Table:
    """Per table: rows on both sides, the checksums' start, equal or not (tables empty on both sides
    are summed up in one line)."""
    table = Table(title=title, title_justify="left")
    for column, justify in (("table", "left"), ("source rows", "right"), ("target rows", "right"),
                            ("checksum", "left"), ("", "left")):
        table.add_column(column, justify=justify)
    empty = 0
    for row in report.get("tables", []):
        if row["equal"] and not row["source_rows"]:
            empty += 1
            continue
        checksum = (row["source_sha256"] or "-")[:12]
        if not row["equal"] and row["target_sha256"]:
            checksum += f" / {row['target_sha256'][:12]}"
        table.add_row(row["table"], str(row["source_rows"]), str(row["target_rows"]), checksum,
                      "[ok]equal[/ok]" if row["equal"] else "[bad]DIFFERS[/bad]")
    if empty:
        table.add_row(f"{empty} empty tables", "0", "0", "", "[ok]equal[/ok]")
    return table


def summary(report: dict) -> str:
    tables = report.get("tables", [])
    sequences = report.get("sequences", [])
    return (f"{report.get('rows', 0)} rows in {len(tables)} tables, "
            f"{sum(1 for t in tables if t['equal'])} equal; {len(sequences)} id sequences set; "
            f"copy {report.get('copy_seconds', 0)}s, all {report.get('seconds', 0)}s")


def upload_converter(host: Host, profile: Profile) -> None:
    with remote_tempdir(host) as tmp:
        staged = tmp / "dbconvert.py"
        upload_bytes(host, commands.CONVERTER_SOURCE.encode(), staged)
        host.run(commands.install_converter(staged, profile), sudo=True, what="installing the converter")


def read_report(host: Host, profile: Profile, path: PurePosixPath) -> dict | None:
    out = host.run(commands.read_as_service_user(profile, path), sudo=True, check=False)
    try:
        return json.loads(out.stdout) if out.ok and out.stdout.strip() else None
    except ValueError:
        return None


def run_trial(host: Host, profile: Profile, to: str, work_dir: PurePosixPath) -> dict:
    """The trial conversion; RemoteError with the converter's own last line when it fails."""
    with ui.err.status("trial conversion while Label Studio serves (Label Studio's migrations make the "
                       "target schema: minutes)"):
        out = host.run(commands.trial(profile, to, work_dir), sudo=True, check=False, timeout=TRIAL_TIMEOUT)
    report = read_report(host, profile, work_dir / "trial.json")
    if report:
        ui.out.print(report_table(report, "trial conversion"))
    if not out.ok:
        raise RemoteError(f"the trial conversion failed, nothing was changed: {out.last_line()}")
    if report is None or differences(report):
        raise RemoteError("the trial conversion did not verify, nothing was changed: "
                          + "; ".join(differences(report or {})[:3]))
    return report


def incoming_dir(profile: Profile) -> PurePosixPath:
    return data_commands.incoming_dir(profile)
