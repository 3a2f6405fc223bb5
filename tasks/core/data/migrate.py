"""migrate-db: SQLite <-> PostgreSQL, verified, with Label Studio stopped only for the final copy.

The profile is the source of truth: `--to` must be the profile's `database.engine`, and the server must
run on the other one (its env file records which: database.server_settings). Order: provision facts ->
plan (refusals first, pure) -> PostgreSQL made ready by provision's own steps (to PostgreSQL) -> a
verified snapshot of the engine the server runs on (SQLite copy or pg_dump) -> the converter and both
engines' env file and unit staged -> a trial conversion while Label Studio serves (times it, catches
problems, makes the target schema) -> the swap job on the server (commands/swap.py): stop, final
conversion of the live data into the target, verified, env file and unit switched to the profile's
engine (renames), start, health gate, counts read back through Label Studio's ORM; any failure there
puts the files of the engine it ran on back and starts Label Studio on the data it served, which the
migration never wrote (the SQLite file is only ever opened read-only, a PostgreSQL source only in
read-only transactions). Afterwards profile and server agree: provision changes nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import PurePosixPath

from rich.table import Table

from tasks.core import database, ui
from tasks.core.commands import data as data_commands
from tasks.core.commands import migrate as commands
from tasks.core.commands.service import service_manager
from tasks.core.connect import Host
from tasks.core.data import read_service_file
from tasks.core.database import ENGINES
from tasks.core.errors import RemoteError, SnapshotError, UsageError
from tasks.core.onserver.convert_database import differences  # noqa: F401 (migrate.differences)
from tasks.core.profile import Profile
from tasks.core.provision import tls_steps
from tasks.core.provision.facts import ProvisionFacts
from tasks.core.render import RenderedFile
from tasks.core.transfer import stage, staged_for_swap

TRIAL_TIMEOUT = 3600


@dataclass(frozen=True)
class Migration:
    """Both sides of one migration, as profiles: `source` is the profile with the database the server
    runs on now (read from its env file), `target` the profile as the user wrote it; `pg` is whichever
    side is PostgreSQL (its connection and password file)."""

    to: str
    source: Profile
    target: Profile

    @property
    def pg(self) -> Profile:
        return self.target if self.to == "postgresql" else self.source

    @property
    def source_engine(self) -> str:
        return self.source.database.engine

    def files(self, facts: ProvisionFacts) -> dict[str, list[RenderedFile]]:
        """The env file and the unit for each engine, rendered as provision renders them."""
        rendered = {}
        for side in (self.source, self.target):
            manager = service_manager(tls_steps.serving(facts, side))
            rendered[side.database.engine] = [manager.env_file(), manager.definition()]
        return rendered


@dataclass(frozen=True)
class PlanWords:
    """What each step of migrate-db says in its plan (tasks/migrate.py pairs each with its act)."""

    prepare: str | None         # to PostgreSQL only
    backup: str
    trial: str
    switch: tuple[str, ...]     # the final conversion, the switch, and what a failure leaves

    def lines(self) -> list[str]:
        return [*([self.prepare] if self.prepare else []), self.backup, self.trial, *self.switch]


def plan(facts: ProvisionFacts, to: str, profile: Profile, alias: str) -> tuple[Migration, PlanWords]:
    """The migration and its steps in words; UsageError/RemoteError for what it refuses (nothing changed)."""
    if to not in ENGINES:
        raise UsageError(f"--to must be one of: {', '.join(ENGINES)}")
    env = facts.files.get("env_file")
    engine = database.server_engine(env)
    server = database.server_settings(env)
    if engine is None:
        raise UsageError(f"Label Studio is not provisioned on {alias} (no {profile.remote.env_file})",
                         hint=f"fab -H {alias} provision")
    if server is None:
        raise RemoteError(f"{profile.remote.env_file} names an engine migrate-db does not know "
                          f"(DJANGO_DB={engine}); nothing was changed")
    if server.engine == to:
        raise UsageError(f"Label Studio on {alias} already runs on {to}; nothing to do")
    if profile.database.engine != to:
        raise UsageError(f"the profile says database.engine: {profile.database.engine}; migrate-db moves the "
                         "server to the engine its profile names",
                         hint=f"set database.engine: {to} in {profile.config_file}, then run this again")
    if profile.service.manager != "systemd":
        raise UsageError("migrate-db needs the systemd service manager (service.manager: systemd): in screen "
                         "mode the service user's launcher could not read the root-only database password")
    migration = Migration(to, dataclasses.replace(profile, database=server), profile)
    files = migration.files(facts)
    current = [facts.files.get("env_file"), facts.files.get(service_manager(profile).definition_key)]
    if [file.content for file in files[server.engine]] != current:
        raise UsageError(f"the env file or the unit on {alias} is not what the profile makes (apart from the "
                         "database): migrate-db switches exactly the database lines; nothing was changed",
                         hint=f"run `fab -H {alias} provision` with database.engine: {server.engine} first")
    if to == "postgresql" and not facts.db_exists:
        raise UsageError(f"there is no SQLite database to migrate ({profile.remote.database})")
    source = f"SQLite {profile.remote.database}" if to == "postgresql" else server.describe()
    target = (profile.database.describe() if to == "postgresql"
              else f"a new SQLite file, swapped in as {profile.remote.database}")
    backup = "a pg_dump" if server.postgresql else "a consistent SQLite copy"
    return migration, PlanWords(
        prepare=f"PostgreSQL ready by provision's own steps: {profile.database.describe()}"
        if to == "postgresql" else None,
        backup=f"a verified snapshot of the server ({backup}) into backups/ (label pre-migrate-db)",
        trial=f"trial conversion {source} -> {target}, while Label Studio serves (schema by Label Studio's own "
              "migrations, every row copied with its id, verified table by table)",
        switch=("stop Label Studio; final conversion of the live data; verify every table (rows and checksums)",
                f"switch the service to {to}: {profile.remote.env_file} and {profile.remote.unit_file} as provision "
                f"renders them for {to} (each renamed into place); start; health gate; counts read back through "
                "Label Studio",
                f"on any failure: back on {server.engine} with its data as it was, exit non-zero"),
    )


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


def staged(host: Host, migration: Migration, files: dict[str, list[RenderedFile]]):
    """The converter and both engines' env file and unit in the root-only stage folder for the time of
    the block (transfer.staged_for_swap)."""
    return staged_for_swap(host, commands.stage_dir(migration.target), {commands.CONVERTER: commands.CONVERTER_SOURCE},
                           files, "staging the converter and the files of both engines")


def _stage(host: Host, profile: Profile, uploads: dict[str, str], what: str) -> None:
    stage(host, uploads, lambda tmp, names: commands.install_staged(tmp, names, profile), what)


def convert_snapshot(host: Host, profile: Profile, sqlite_file: PurePosixPath, new: str, described: str) -> dict:
    """A SQLite database already on the server (an uploaded snapshot) converted into the empty PostgreSQL
    database `new` while Label Studio keeps serving, verified table by table; SnapshotError when it is not
    (the caller drops `new`: nothing else was touched)."""
    into = dataclasses.replace(profile, database=dataclasses.replace(profile.database, name=new))
    report_path = sqlite_file.parent / "conversion.json"
    _stage(host, profile, {commands.CONVERTER: commands.CONVERTER_SOURCE}, "staging the converter")
    try:
        with ui.err.status(f"converting {described} into PostgreSQL database {new} (Label Studio keeps serving; "
                           "its migrations make the schema: minutes)"):
            out = host.run(commands.run_converter(into, "convert", commands.sqlite_spec(sqlite_file), "postgresql",
                                                  "fresh", report_path, with_credentials=True),
                           sudo=True, check=False, timeout=TRIAL_TIMEOUT)
        report = read_report(host, profile, report_path)
    finally:
        host.run(commands.remove_staged(profile), sudo=True, check=False)
    if report:
        ui.out.print(report_table(report, f"{described}: SQLite -> PostgreSQL"))
    if not out.ok or report is None or differences(report):
        why = "; ".join(differences(report or {})[:3]) or out.last_line()
        raise SnapshotError(f"the conversion of {described} into PostgreSQL failed, nothing was changed: {why}")
    ui.step(True, f"converted into {new}, verified: {summary(report)}")
    return report


REPORT_LIMIT = 16 * 1024 * 1024    # a report or the row counts the service user's programs wrote: read no further


def read_report(host: Host, profile: Profile, path: PurePosixPath) -> dict | None:
    out = read_service_file(host, profile, path, REPORT_LIMIT, f"the report {path}")
    return out.answer() if out.ok else None


def run_trial(host: Host, migration: Migration, work_dir: PurePosixPath) -> dict:
    """The trial conversion; RemoteError with the converter's own last line when it fails."""
    with ui.err.status("trial conversion while Label Studio serves (Label Studio's migrations make the "
                       "target schema: minutes)"):
        out = host.run(commands.trial(migration.pg, migration.to, work_dir), sudo=True, check=False,
                       timeout=TRIAL_TIMEOUT)
    report = read_report(host, migration.target, work_dir / "trial.json")
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
