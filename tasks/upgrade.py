"""upgrade and rollback: each release in its own venv, a verified snapshot first, the new release's
migrations proven on a copy, a health-gated switch, and one command back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from tasks.core import procedure, ui
from tasks.core.commands import data as data_commands
from tasks.core.commands import upgrade as commands
from tasks.core.connect import Host
from tasks.core.data import catalog, engine, local, snapshots
from tasks.core.data.catalog import counts_text, report_snapshot
from tasks.core.data.swap import run_swap
from tasks.core.defaults import DATABASE, SWAP_HEALTH_TIMEOUT
from tasks.core.edge import CONFIG_HELP, YES_HELP, confirm, open_host, refuse_on_postgresql, task, task_edge
from tasks.core.errors import RemoteError, UsageError
from tasks.core.procedure import Step
from tasks.core.profile import Profile
from tasks.core.provision import facts
from tasks.core.provision.refusals import check_host, refuse_database_switch, refuse_media_switch, refuse_neighbours
from tasks.core.releases import build_beside, checked_version, pypi_versions, release_label

MIGRATION_CHECK_TIMEOUT = 1800


def check_migrations(host: Host, profile: Profile, version: str) -> list[str]:
    """The migrations `version` applies to this database, proven by applying them to a consistent copy
    on the server (in a temp folder of the service user; the live database is only read)."""
    with snapshots.server_work_dir(host, profile, "migrate") as work_dir:
        copy = host.run(data_commands.prepare_copy(profile, work_dir, "null"), sudo=True, check=False,
                        what="copying the database for the migration check")
        if not copy.ok or "copy_error" in copy.stdout:
            raise RemoteError(f"could not copy the database for the migration check: {copy.last_line()}")
        with ui.err.status(f"label-studio {version} migrates a copy of the database (the live one is untouched)"):
            out = host.run(commands.migration_check(profile, version, work_dir), sudo=True, check=False,
                           timeout=MIGRATION_CHECK_TIMEOUT, what="the migration check")
    plan = next((line[5:] for line in out.stdout.splitlines() if line.startswith("PLAN ")), None)
    if not out.ok or plan is None or "MIGRATED" not in out.stdout.splitlines():
        raise RemoteError(f"label-studio {version} could not migrate a copy of this database: "
                          f"{out.last_line()}; nothing was changed (Label Studio kept running)")
    return json.loads(plan)


def read_upgrade_record(host: Host, profile: Profile) -> tuple[str, str, str] | None:
    """(from, to, sha256 of the database before it) of the last upgrade, checked, or None."""
    words = host.run(commands.read_record(profile), sudo=True, what="reading the last upgrade").stdout.split()
    if len(words) != 3 or len(words[2]) != 64 or any(c not in "0123456789abcdef" for c in words[2]):
        return None
    try:
        Version(words[0]), Version(words[1])
    except InvalidVersion:
        return None
    return words[0], words[1], words[2]


@dataclass
class _Progress:
    took: float = 0.0        # the migration check's seconds: about the stop's length
    downtime: float = 0.0
    pruned: tuple[str, ...] = ()


def _steps(host: Host, profile: Profile, old: str, new: str, built: bool, health_timeout: int,
           yes: bool, progress: _Progress) -> list[Step]:
    """upgrade, step by step: what its plan says and what it does (run under the locks)."""
    where = profile.release_dir(new)

    def backup() -> None:
        report_snapshot(engine.take_server_snapshot(host, profile, label=f"pre-upgrade-{release_label(old)}"),
                        "server backed up as")

    def build() -> None:
        build_beside(host, profile, new, built=built)

    def check() -> None:
        check_started = time.monotonic()
        migrations = check_migrations(host, profile, new)
        progress.took = time.monotonic() - check_started
        ui.step(True, f"label-studio {new} migrated a copy of the database in {progress.took:.0f}s: "
                      f"{len(migrations)} migration(s)")
        for name in migrations:
            ui.out.print(f"    {name}", markup=False, highlight=False)
        ui.out.print(f"  the stop will last about as long as that migration plus a start (~{progress.took + 30:.0f}s)")

    def switch() -> None:
        confirm(f"stop Label Studio on {host.alias} and switch to {new}?", yes)
        stop_started = time.monotonic()
        run_swap(host, profile, [DATABASE], health_timeout=health_timeout,
                 steps=commands.upgrade_steps(profile, old, new),
                 swapped=f"switched {profile.remote.current} to {new}; the database as it was is set aside",
                 serving=f"label-studio {new}")
        progress.downtime = time.monotonic() - stop_started

    def prune() -> None:
        progress.pruned = tuple(host.run(commands.prune_releases(profile), sudo=True, check=False,
                                         what="removing old releases").stdout.split())

    return [
        Step.of(backup, f"verified snapshot of the server on this machine (label pre-upgrade-{release_label(old)})"),
        Step.of(build, f"{'reuse' if built else 'build'} {where} beside the running release (no service impact)"),
        Step.of(check, f"migrate a copy of the database with {new}: any failure stops here, nothing changed"),
        Step.of(switch,
                f"stop Label Studio; the database is copied (the original stays aside, byte-identical) and "
                f"{profile.remote.current} switches to {new}",
                f"start {new} (it migrates the copy) and wait until our own instance answers /health",
                f"any failure after the stop: back to {old} with the original database, started and health-checked"),
        Step.of(prune, f"keep {old} for `fab -H {host.alias} rollback`; older release venvs are removed"),
    ]


@task(help={"config": CONFIG_HELP, "version": "the release to upgrade to (default: the profile's label_studio.version)",
            "dry-run": "show what would happen, change nothing", "yes": YES_HELP,
            "list": "list the releases the package index offers, newest first, the installed one marked",
            "health-timeout": f"seconds the new release may take to answer (default {SWAP_HEALTH_TIMEOUT})"})
@task_edge
def upgrade(c, config=None, version=None, dry_run=False, yes=False, list=False, health_timeout=SWAP_HEALTH_TIMEOUT):
    """Upgrade Label Studio side by side: snapshot, new venv, migrations checked on a copy, health-gated switch."""
    started = time.monotonic()
    if version:
        checked_version(version)     # before connecting
    profile, host = open_host(c, config, sudo=True, not_on_a_site="upgrade")
    refuse_on_postgresql(profile, host.alias, "upgrade")
    found = facts.provision_facts(host, profile, "")
    old = found.label_studio_version
    if list:
        for release in pypi_versions(profile):
            mark = "  <- installed" if release == old else ("  (built, previous)" if release == found.previous_release else "")
            ui.out.print(f"{release}{mark}")
        return
    check_host(profile, found)
    refuse_neighbours(host.alias, found)
    refuse_database_switch(host.alias, profile, found)
    refuse_media_switch(host.alias, profile, found)
    if not old or not found.db_exists:
        raise UsageError(f"Label Studio is not installed with data on {host.alias}: nothing to upgrade",
                         hint=f"fab -H {host.alias} provision installs the pinned release")
    if found.current_release is None:
        raise UsageError(f"{profile.remote.current} does not exist yet on {host.alias}",
                         hint=f"run fab -H {host.alias} provision once: it takes the existing venv over")
    new = checked_version(version or profile.label_studio.version)
    if Version(new) == Version(old):
        ui.step(False, f"label-studio {old} is installed: nothing to upgrade")
        return
    if Version(new) < Version(old):
        back = found.previous_release == new
        raise UsageError(f"{new} is older than the installed {old}: a database {old} migrated does not go back "
                         "by installing an older release; nothing was changed",
                         hint=f"fab -H {host.alias} rollback returns to {new} with the database as it was"
                         if back else "only the release before the last upgrade can come back (fab rollback)")
    progress = _Progress()
    plan = _steps(host, profile, old, new, new in found.releases, int(health_timeout), yes, progress)
    ui.out.print(f"[bold]upgrade {host.alias}[/bold]: label-studio {old} -> {new}")
    procedure.show(plan)
    if dry_run:
        ui.out.print(f"\nNothing was changed ({time.monotonic() - started:.1f}s).")
        return
    with local.local_lock(profile.backups_dir()), snapshots.server_lock(host, profile, "upgrade"):
        procedure.run(plan)
    for name in progress.pruned:
        ui.step(True, f"removed the old release {name}")
    ui.out.print(f"\n[bold]upgraded {old} -> {new}[/bold] in {time.monotonic() - started:.1f}s; Label Studio was "
                 f"stopped for about {progress.downtime:.0f}s. Back to {old} with the data as it was: "
                 f"fab -H {host.alias} rollback")
    if new != profile.label_studio.version:
        ui.warn(f"set label_studio.version: \"{new}\" in {profile.config_file}: provision refuses to go back to "
                f"{profile.label_studio.version}")


@task(help={"config": CONFIG_HELP, "yes": YES_HELP,
            "health-timeout": f"seconds the previous release may take to answer (default {SWAP_HEALTH_TIMEOUT})",
            "dry-run": "show what would happen, change nothing"})
@task_edge
def rollback(c, config=None, yes=False, health_timeout=SWAP_HEALTH_TIMEOUT, dry_run=False):
    """Go back to the release before the last upgrade, with the database as it was then (asks first)."""
    profile, host = open_host(c, config, sudo=True, not_on_a_site="rollback")
    refuse_on_postgresql(profile, host.alias, "rollback")
    found = facts.provision_facts(host, profile, "")
    check_host(profile, found)
    refuse_database_switch(host.alias, profile, found)
    refuse_media_switch(host.alias, profile, found)
    record = read_upgrade_record(host, profile)
    if record is None or found.previous_release != record[0] or found.label_studio_version != record[1]:
        raise UsageError(f"there is no upgrade to roll back on {host.alias}; nothing was changed",
                         hint=f"a snapshot can still be restored: fab -H {host.alias} backups, then restore-server")
    old, new, sha = record
    then = _counts_at_upgrade(profile, old)
    now = engine.server_counts(host, profile) or {}
    ui.out.print(f"[bold]rollback {host.alias}[/bold]: label-studio {new} -> {old}, and the database as it was "
                 "before the upgrade")
    ui.out.print(f"  now:           {counts_text(now)}")
    ui.out.print(f"  after rollback: {counts_text(then) if then else 'the database of before the upgrade'}")
    lost = {k: now.get(k, 0) - then.get(k, 0) for k in ("tasks", "annotations")} if then else {}
    question = f"go back to {old} on {host.alias}?"
    if any(v > 0 for v in lost.values()):
        question = (f"{lost['annotations']} annotation(s) and {lost['tasks']} task(s) made since the upgrade will be "
                    f"gone from the server (kept in a snapshot on this machine first). " + question)
    if dry_run:
        ui.out.print(f"  would: back up {host.alias} here, then switch {profile.remote.current} back to {old} with the "
                     "database of before the upgrade (health-gated, rolled forward again if it does not answer)")
        ui.out.print("dry run: nothing was changed")
        return
    confirm(question, yes)
    with local.local_lock(profile.backups_dir()), snapshots.server_lock(host, profile, "rollback"):
        report_snapshot(engine.take_server_snapshot(host, profile, label=f"pre-rollback-{release_label(new)}"),
                        "server backed up as")
        run_swap(host, profile, [DATABASE], health_timeout=int(health_timeout),
                 steps=commands.rollback_steps(profile, sha),
                 swapped=f"switched {profile.remote.current} back to {old} with the database of before the upgrade",
                 serving=f"label-studio {old}")
    ui.out.print(f"\n[bold]rolled back to {old}[/bold]. Set label_studio.version: \"{old}\" in {profile.config_file} "
                 "so that provision keeps it.")


def _counts_at_upgrade(profile: Profile, old: str) -> dict | None:
    label = f"pre-upgrade-{release_label(old)}"
    found = [s for s in catalog.list_snapshots(profile.backups_dir()) if s.label == label and s.verified]
    return found[-1].manifest.counts if found else None
