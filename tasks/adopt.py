"""adopt: take over a Label Studio set up by hand (the seed guide's screen + venv install) without
losing a byte: snapshot first, the old files left where they were, the old instance back on failure."""

from __future__ import annotations

import time
from dataclasses import dataclass


from tasks.core import parse, procedure, ui
from tasks.core.commands import instances, secret_key
from tasks.core.commands.service import service_manager
from tasks.core.connect import Host
from tasks.core.data import engine, local, snapshots
from tasks.core.data.catalog import Snapshot, report_snapshot
from tasks.core.data.replace import replace_server_data
from tasks.core.defaults import SECRET_ENV, SWAP_HEALTH_TIMEOUT
from tasks.core.edge import CONFIG_HELP, YES_HELP, admin_email, confirm, open_host, refuse_on_postgresql, task, task_edge
from tasks.core.errors import RemoteError, SnapshotError, ToolkitError, UsageError
from tasks.core.procedure import Step
from tasks.core.profile import Profile
from tasks.core.provision import adopt as core
from tasks.core.provision import facts, plan, steps
from tasks.core.provision.facts import Unmanaged
from tasks.core.provision.plan import AdminRequest
from tasks.core.provision.refusals import check_host

REVIVE_TIMEOUT = 600  # the old release may migrate nothing, but its first answer can take a while


def _listen_port(u: Unmanaged, default: int) -> int:
    for address in u.listen:
        port = address.rsplit(":", 1)[-1]
        if port.isdigit():
            return int(port)
    return default


def _put_back(host: Host, profile: Profile, u: Unmanaged) -> str:
    """After a failure past the stop: our service stopped and disabled, the old instance started again
    as it ran (its sites too). Returns what the user should read."""
    manager = service_manager(profile)
    host.run(manager.stop_and_disable(), sudo=True, check=False, what="stopping the managed service")
    revived = host.run(instances.revive_unmanaged(profile), sudo=True, check=False, what="starting the old instance")
    if not revived.ok:
        return f"starting the old instance again failed ({revived.last_line()}); its data is untouched in {u.data_dir}"
    if not u.running:
        return f"its data is untouched in {u.data_dir} and its nginx site is back"
    port = _listen_port(u, profile.label_studio.port)
    with ui.err.status("waiting for the old Label Studio to answer again"):
        serving = host.run(instances.wait_serving(port, REVIVE_TIMEOUT), sudo=True, check=False,
                           timeout=REVIVE_TIMEOUT + 30, what="waiting for the old instance")
    if serving.ok:
        return f"the old Label Studio is serving again on port {port}, with its data untouched in {u.data_dir}"
    return (f"the old Label Studio was started again but does not answer on port {port} yet "
            f"({serving.last_line()}); its data is untouched in {u.data_dir}")


def report_stop(output: str, u: Unmanaged) -> None:
    said = parse.last_json(output) or {}
    if u.running:
        ui.step(True, f"stopped the {u.describe()}")
    for site in said.get("disabled_sites") or []:
        ui.step(True, f"disabled the hand-written nginx site {site} (its file stays)")
    if said.get("site_backup"):
        ui.step(True, f"kept the hand-written nginx site as {said['site_backup']} (ours replaces it)")


def _warn_of_an_unreadable_secret_key(snapshot) -> None:
    env_file = snapshot.path / SECRET_ENV
    if env_file.is_file() and secret_key.state_of_text(env_file.read_text(errors="replace")) == secret_key.UNREADABLE:
        ui.warn("the SECRET_KEY this Label Studio made at its first start begins with $, which it reads back as "
                "empty (a Label Studio bug, one install in 50): it makes a new key when it starts again, so "
                "sessions and API tokens made since its first start end now; passwords keep working")


def _snapshot_after_stop(host: Host, source: Profile, first, version: str | None):
    """Writes between the live snapshot and the stop would be lost: the change counter tells; a second
    snapshot (unchanged files hard-linked) is taken only when the database moved."""
    with snapshots.server_work_dir(host, source, "adopt") as work_dir:
        unchanged = snapshots.prepare_server_copy(host, source, work_dir, first).info.get("unchanged")
    if unchanged:
        return first
    again = engine.take_server_snapshot(host, source, label="adopt", label_studio_version=version, managed=False)
    report_snapshot(again, "it changed before it stopped: snapshot again")
    return again


@dataclass
class _Progress:
    snapshot: Snapshot | None = None    # of the unmanaged data: what the take-over installs, kept whatever happens


def _steps(host: Host, profile: Profile, source: Profile, found, u: Unmanaged, health_timeout: int,
           progress: _Progress) -> tuple[list[Step], list[Step], list[Step]]:
    """adopt, step by step: what its plan says and what it does, as (before the stop, from the stop on,
    after the check). A failure from the stop on puts the old instance back."""
    words = core.plan_words(u, profile)

    def backup() -> None:
        snapshot = engine.take_server_snapshot(host, source, label="adopt", label_studio_version=u.version,
                                               managed=False)
        progress.snapshot = snapshot
        report_snapshot(snapshot, "snapshot of the unmanaged data")
        _warn_of_an_unreadable_secret_key(snapshot)
        if not snapshot.verified:
            raise SnapshotError(f"the snapshot of {u.data_dir} did not verify (integrity "
                                f"{snapshot.manifest.integrity_check}); nothing was changed")
        if found.db_exists:
            report_snapshot(engine.take_server_snapshot(host, profile, label="pre-adopt"),
                            "managed data backed up as")

    def stop() -> None:
        stopped = host.run(instances.stop_unmanaged(profile, u.pid, u.uid), sudo=True, check=False,
                           what="stopping the unmanaged Label Studio")
        if not stopped.ok:
            raise RemoteError(f"stopping it failed: {stopped.last_line()}")
        report_stop(stopped.stdout, u)
        if u.running:
            progress.snapshot = _snapshot_after_stop(host, source, progress.snapshot, u.version)

    def install() -> None:
        plan.apply(host, steps.plan(found, profile, AdminRequest(None), start=False), dry_run=False)

    def copy_and_start() -> None:
        snapshot = progress.snapshot
        # Nothing of ours served before: a failed start is rolled back and left stopped (the old
        # instance comes back instead).
        replace_server_data(host, profile, snapshot.path, snapshot.manifest.files,
                            health_timeout=health_timeout, restart_previous=found.db_exists)
        mismatches = core.count_mismatches(snapshot.manifest.counts, engine.server_counts(host, profile))
        if mismatches:
            raise RemoteError("the adopted data does not match the snapshot: " + "; ".join(mismatches))

    def record() -> None:
        host.run(instances.mark_adopted(profile), sudo=True, what="recording the take-over")

    return ([Step.of(backup, *words.backup)],
            [Step.of(stop, words.stop), Step.of(install, words.install), Step.of(copy_and_start, *words.copy)],
            [Step.of(record, words.leave)])


@task(help={"config": CONFIG_HELP, "dry-run": "show what would happen, change nothing", "yes": YES_HELP,
            "health-timeout": f"seconds the new start may take to answer (default {SWAP_HEALTH_TIMEOUT})"})
@task_edge
def adopt(c, config=None, dry_run=False, yes=False, health_timeout=SWAP_HEALTH_TIMEOUT):
    """Take over a Label Studio set up by hand (screen, venv): data, users, SECRET_KEY kept; old files left."""
    started = time.monotonic()
    profile, host = open_host(c, config, sudo=True)
    refuse_on_postgresql(profile, host.alias, "adopt")
    found = facts.provision_facts(host, profile, admin_email(profile) or "")
    check_host(profile, found)
    others = found.neighbours
    if not others.unmanaged:
        if found.db_exists:
            ui.step(False, f"nothing to adopt on {host.alias}: no Label Studio runs there but ours "
                           f"({profile.remote.data_dir})")
            return
        raise UsageError(f"found no Label Studio on {host.alias} to adopt",
                         hint=f"fab -H {host.alias} provision sets up a new one")
    u = core.choose(host.alias, others, profile.label_studio.version)
    if others.port_taken_by_stranger():
        raise UsageError(f"{others.port_said}: Label Studio cannot listen there after the take-over; nothing was "
                         "changed", hint="stop that process, or choose another label_studio.port in the profile")
    managed = engine.server_counts(host, profile) if found.db_exists else None
    problem = core.managed_data_problem(managed)
    if problem:
        raise UsageError(f"{problem}: adopting would replace it; nothing was changed",
                         hint="back it up (fab backup) and move it away, or adopt into another data dir")

    source = core.source_profile(profile, u)
    progress = _Progress()
    before, during, after = _steps(host, profile, source, found, u, int(health_timeout), progress)
    mode = "plan only: nothing on the server changes" if dry_run else f"profile: {profile.source}"
    ui.out.print(f"[bold]adopt on {host.alias}[/bold] ({mode})")
    procedure.show(before + during + after)
    if dry_run:
        ui.out.print("\nprovision steps it includes:")
        plan.apply(host, steps.plan(found, profile, AdminRequest(None), start=False), dry_run=True)
        ui.out.print(f"\nNothing was changed ({time.monotonic() - started:.1f}s).")
        return
    confirm(f"take over this Label Studio on {host.alias}?", yes)

    with local.local_lock(profile.backups_dir()), snapshots.server_lock(host, profile, "adopt"):
        procedure.run(before)
        try:
            procedure.run(during)
        except KeyboardInterrupt:
            ui.warn("interrupted: a data swap on the server finishes by itself; check `fab status`, then run "
                    "adopt again (the old data is untouched)")
            raise
        except ToolkitError as exc:
            ui.error(f"{exc.message}; putting the old Label Studio back")
            raise RemoteError(f"adopt failed: {exc.message}. {_put_back(host, profile, u)}; "
                              f"snapshot {progress.snapshot.id} is kept") from exc
        procedure.run(after)

    snapshot = progress.snapshot
    counts = snapshot.manifest.counts
    ui.step(True, "the adopted data matches the snapshot: " +
            ", ".join(f"{counts.get(k)} {k}" for k in core.COUNTED if k in counts))
    ui.out.print(f"\n[bold]adopted[/bold] in {time.monotonic() - started:.1f}s. Label Studio is up at "
                 f"[bold]{profile.url}[/bold]; log in with the same accounts and passwords as before.")
    ui.out.print(f"The old files are untouched where they were: data {u.data_dir}"
                 + (f", venv {u.venv}" if u.venv else "") + ". Remove them once you are satisfied.")
