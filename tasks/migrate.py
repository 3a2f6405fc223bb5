"""migrate-db: move Label Studio's data between SQLite and PostgreSQL, verified table by table."""

from __future__ import annotations

from fabric import task

from .core import local, migrate, snapshots, ui
from .core.catalog import DATABASE
from .core.commands import data as data_commands
from .core.commands import migrate as commands
from .core.defaults import SWAP_HEALTH_TIMEOUT
from .core.edge import CONFIG_HELP, confirm, open_host, task_edge
from .core.errors import RemoteError, UsageError
from .core.restore import refuse_foreign_port, refuse_unfinished_swap, run_swap
from .data import HEALTH_HELP, YES_HELP, report_snapshot


@task(help={"to": "postgresql or sqlite", "config": CONFIG_HELP, "yes": YES_HELP,
            "dry-run": "read the server and print the plan; change nothing", "health-timeout": HEALTH_HELP})
@task_edge
def migrate_db(c, to=None, config=None, yes=False, dry_run=False, health_timeout=SWAP_HEALTH_TIMEOUT):
    """Move the server's Label Studio data to PostgreSQL or back to SQLite, verified; back as it was on failure."""
    if not to:
        raise UsageError("where to? --to postgresql or --to sqlite")
    profile, host = open_host(c, config, sudo=True)
    facts = migrate.read_facts(host, profile)
    steps = migrate.plan(facts, to, profile)
    ui.out.print(f"migrate-db on {host.alias}: {facts.engine} -> {to}")
    for number, step in enumerate(steps, 1):
        ui.out.print(f"  {number}. {step}")
    if dry_run:
        ui.out.print("dry run: nothing was changed")
        return
    confirm(f"move Label Studio on {host.alias} to {to}? (it is backed up first; it stops for the final copy)", yes)
    with local.local_lock(profile.backups_dir()), snapshots.server_lock(host, profile, "migrate-db"):
        refuse_unfinished_swap(host, profile)
        refuse_foreign_port(host, profile)
        if facts.sqlite_bytes:
            report_snapshot(snapshots.take_server_snapshot(host, profile, label="pre-migrate-db"),
                            "server backed up as")
        migrate.upload_converter(host, profile)
        with snapshots.server_work_dir(host, profile, "migrate") as work_dir:
            if to == "postgresql":
                snapshots.prepare_server_copy(host, profile, work_dir, None)
            trial = migrate.run_trial(host, profile, to, work_dir)
            ui.step(True, f"trial conversion verified: {migrate.summary(trial)}")
            incoming = migrate.incoming_dir(profile)
            if to == "sqlite":
                host.run(data_commands.make_incoming(profile), sudo=True, what="incoming folder")
            try:
                run_swap(host, profile, [] if to == "postgresql" else [DATABASE], health_timeout=int(health_timeout),
                         steps=commands.steps(profile, to, work_dir, incoming),
                         swapped=f"final conversion verified; the service switched to {to} (atomic rename)",
                         serving=f"its data on {to}")
            except RemoteError as failed:
                final = migrate.read_report(host, profile, commands.final_report(work_dir))
                if final and migrate.differences(final):
                    ui.out.print(migrate.report_table(final, "final conversion"))
                if getattr(failed, "serving_previous", False):
                    why = getattr(failed, "failure", None) or failed.message
                    raise RemoteError(f"migrate-db to {to} failed ({why}); Label Studio is back on {facts.engine} "
                                      "with its data as it was") from None
                raise
            final = migrate.read_report(host, profile, commands.final_report(work_dir))
    if final:
        ui.out.print(migrate.report_table(final, "final conversion (Label Studio stopped)"))
        ui.step(True, f"verified: {migrate.summary(final)}")
    if to == "postgresql":
        ui.out.print(f"The SQLite database stays in {profile.remote.database}, unchanged and no longer used.")
    ui.out.print(f"Set database.engine: {to} in {profile.config_file} so that provision keeps it.")
