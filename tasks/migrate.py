"""migrate-db: move Label Studio's data between SQLite and PostgreSQL, verified table by table."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import PurePosixPath


from tasks.core import procedure, ui
from tasks.core import site as sites
from tasks.core.commands import data as data_commands
from tasks.core.commands import migrate as commands
from tasks.core.data import engine, local, migrate, snapshots
from tasks.core.data.catalog import report_snapshot
from tasks.core.data.swap import refuse_foreign_port, refuse_unfinished_swap, run_swap
from tasks.core.defaults import DATABASE, SWAP_HEALTH_TIMEOUT
from tasks.core.edge import CONFIG_HELP, HEALTH_HELP, YES_HELP, ask_database_password, confirm, open_host, task, task_edge
from tasks.core.errors import RemoteError, SwapFailed, UsageError
from tasks.core.procedure import Step
from tasks.core.provision import facts, plan, steps


@task(help={"to": "postgresql or sqlite: the engine the profile's database.engine names", "config": CONFIG_HELP,
            "yes": YES_HELP, "dry-run": "read the server and print the plan; change nothing",
            "health-timeout": HEALTH_HELP})
@task_edge
def migrate_db(c, to=None, config=None, yes=False, dry_run=False, health_timeout=SWAP_HEALTH_TIMEOUT):
    """Move the server's Label Studio data to the profile's database engine, verified; back as it was on failure."""
    if not to:
        raise UsageError("where to? --to postgresql or --to sqlite (the engine the profile's database.engine names)")
    if to not in migrate.ENGINES:
        raise UsageError(f"--to must be one of: {', '.join(migrate.ENGINES)} (not '{to}')")
    profile, host = open_host(c, config, sudo=True)
    found = facts.provision_facts(host, profile, "")
    sites.refuse_member(host.alias, found.files.get("site_marker"), "migrate-db")
    migration, words = migrate.plan(found, to, profile, host.alias)
    with contextlib.ExitStack() as held:
        progress = _Progress()
        plan_steps = _steps(host, found, migration, words, int(health_timeout), held, progress)
        ui.out.print(f"migrate-db on {host.alias}: {migration.source_engine} -> {to}")
        procedure.show(plan_steps, numbered=True)
        if dry_run:
            plan.apply(host, _prepare_changes(found, migration, None), dry_run=True)
            ui.out.print("dry run: nothing was changed")
            return
        if to == "postgresql" and steps.database_password_needed(found, profile):
            progress.password = ask_database_password(profile)
        confirm(f"move Label Studio on {host.alias} to {to}? (it is backed up first; it stops for the final copy)", yes)
        held.enter_context(local.local_lock(profile.backups_dir()))
        held.enter_context(snapshots.server_lock(host, profile, "migrate-db"))
        refuse_unfinished_swap(host, profile)
        refuse_foreign_port(host, profile)
        procedure.run(plan_steps)
    final = progress.final
    if final:
        ui.out.print(migrate.report_table(final, "final conversion (Label Studio stopped)"))
        ui.step(True, f"verified: {migrate.summary(final)}")
    if to == "postgresql":
        ui.out.print(f"The SQLite database stays in {profile.remote.database}, unchanged and no longer used.")
    else:
        ui.out.print(f"The PostgreSQL database {migration.source.database.name} stays as it was, no longer used.")


@dataclass
class _Progress:
    password: str | None = None      # an external PostgreSQL's, asked before anything changes
    work_dir: PurePosixPath | None = None
    final: dict | None = None        # the final conversion's report


def _prepare_changes(found, migration: migrate.Migration, password: str | None) -> list:
    """PostgreSQL made ready by provision's own steps (packages, settings, role, database, password)."""
    return [steps.packages(found, migration.target), *steps.database(found, migration.target, password)]


def _steps(host, found, migration: migrate.Migration, words: migrate.PlanWords, health_timeout: int,
           held: contextlib.ExitStack, progress: _Progress) -> list[Step]:
    """migrate-db, step by step: what its plan says and what it does. The work folder and the staged files
    are held by `held` from the trial until the end."""
    to, profile = migration.to, migration.target

    def prepare() -> None:
        plan.apply(host, _prepare_changes(found, migration, progress.password), dry_run=False)

    def backup() -> None:
        report_snapshot(engine.take_server_snapshot(host, migration.source, label="pre-migrate-db"),
                        "server backed up as")

    def trial() -> None:
        files = migration.files(found)
        progress.work_dir = held.enter_context(snapshots.server_work_dir(host, profile, "migrate"))
        held.enter_context(migrate.staged(host, migration, files))
        if to == "postgresql":
            snapshots.prepare_server_copy(host, migration.source, progress.work_dir, None)
        report = migrate.run_trial(host, migration, progress.work_dir)
        ui.step(True, f"trial conversion verified: {migrate.summary(report)}")

    def switch() -> None:
        work_dir, incoming = progress.work_dir, migrate.incoming_dir(profile)
        if to == "sqlite":
            host.run(data_commands.make_incoming(profile), sudo=True, what="incoming folder")
        try:
            run_swap(host, profile, [] if to == "postgresql" else [DATABASE], health_timeout=health_timeout,
                     steps=commands.steps(migration.pg, to, work_dir, incoming, migration.files(found)),
                     swapped=f"final conversion verified; the service switched to {to} (env file and unit renamed in)",
                     serving=f"its data on {to}")
        except RemoteError as failed:
            final = migrate.read_report(host, profile, commands.final_report(work_dir))
            if final and migrate.differences(final):
                ui.out.print(migrate.report_table(final, "final conversion"))
            if isinstance(failed, SwapFailed) and failed.previous_serving:
                why = failed.why or failed.message
                raise RemoteError(f"migrate-db to {to} failed ({why}); Label Studio is back on "
                                  f"{migration.source_engine} with its data as it was") from None
            raise
        progress.final = migrate.read_report(host, profile, commands.final_report(work_dir))

    return [
        *([Step.of(prepare, words.prepare)] if words.prepare else []),
        Step.of(backup, words.backup),
        Step.of(trial, words.trial),
        Step.of(switch, *words.switch),
    ]
