"""Data tasks: backup, backups, prune, push-local-db, pull-server-db, restore-local, restore-server."""

from __future__ import annotations

import contextlib
import json as json_module
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from rich.table import Table

from tasks.core import offsite, ui
from tasks.core.data import catalog, checking, diskuse, engine, local, postgres_snapshots, restore, snapshots
from tasks.core.data.catalog import LOCAL_HOST, Snapshot, counts_text, report_snapshot
from tasks.core.database import snapshot_engine
from tasks.core.defaults import DATABASE, MEDIA, SWAP_HEALTH_TIMEOUT
from tasks.core.edge import (
    CONFIG_HELP,
    HEALTH_HELP,
    YES_HELP,
    confirm,
    host_alias,
    open_host,
    open_other_host,
    profile_for,
    task,
    task_edge,
    whole_number,
)
from tasks.core.data.replace import other_source, read_files, read_source, replace_from_offsite
from tasks.core.errors import SnapshotError, UsageError
from tasks.core.onserver import sqlite
from tasks.core.profile import Profile, backups_root, load_profile
from tasks.core.commands import offsite as offsite_commands

LOCAL_DIR_HELP = "the local Label Studio data dir (default: $LABEL_STUDIO_BASE_DATA_DIR, else Label Studio's own default)"


def refuse_postgresql(profile: Profile, alias: str, task_name: str) -> None:
    """A PostgreSQL server's data to this machine's SQLite Label Studio would need a consistent
    conversion of a serving database: not built (push and restore-server convert the other way);
    said before anything is touched."""
    if profile.database.postgresql:
        raise UsageError(f"{alias} runs Label Studio on PostgreSQL: {task_name} moves SQLite databases only; "
                         "nothing was changed", hint=f"to move SQLite data: set database.engine: sqlite and run "
                         f"`fab -H {alias} migrate-db --to sqlite` first (and --to postgresql afterwards)")


def refuse_postgresql_snapshot(snapshot: Snapshot) -> None:
    if snapshot_engine(snapshot.manifest) == "postgresql":
        raise UsageError(f"snapshot {snapshot.host}/{snapshot.id} holds a PostgreSQL dump: a local Label Studio "
                         "reads SQLite; nothing was changed",
                         hint=f"restore it onto {snapshot.host} (restore-server), then `migrate-db --to sqlite` there "
                              "and pull-server-db")


# ------------------------------------------------------------------------------------------------


@task(help={"config": CONFIG_HELP, "label": "a word to add to the snapshot's name (a-z, 0-9, -)",
            "no-media": "leave uploaded media files out",
            "from-offsite": "the data as the offsite target holds it (its newest point, or --at), restored on the "
                            "server and brought here, instead of the live data",
            "at": "with --from-offsite: the database as it was at this time (UTC unless an offset is given)",
            "no-wait": "return once the snapshot is stored and proven byte-identical; its integrity_check runs "
                       "on in the background (low priority), and whatever needs the snapshot waits for it"})
@task_edge
def backup(c, config=None, label=None, no_media=False, from_offsite=False, at=None, no_wait=False):
    """Snapshot the server (DB via SQLite online backup, .env, media) into backups/<host>/<UTC time>/, checked here."""
    label = catalog.check_label(label)
    if at and not from_offsite:
        raise UsageError("--at goes with --from-offsite (the live data has one point: now)")
    _point_in_time(at)               # a bad --at is refused before connecting
    profile, host = open_host(c, config, sudo=True)
    point = _offsite_point(host, profile, at) if from_offsite else None
    with local.local_lock(profile.backups_dir()), snapshots.server_lock(host, profile, "backup"):
        if point is not None:
            snapshot = snapshots.take_snapshot(host, profile, label=label, media=not no_media, offsite=point)
        else:
            snapshot = engine.take_server_snapshot(host, profile, label=label, media=not no_media, check=False)
    report_snapshot(snapshot)
    if snapshot.pending and no_wait:
        pid = checking.check_in_background(snapshot)
        ui.out.print(f"  its check runs in the background (pid {pid}, lowest priority); `fab backups` shows its state, "
                     "and whatever needs the snapshot waits for it")
    elif snapshot.pending:
        snapshot = checking.check_pending(snapshot, by="backup", just_proven=True)
        if not snapshot.verified:
            raise SnapshotError(f"the server database failed its check ({snapshot.manifest.integrity_check})",
                                hint=f"the snapshot is kept, marked failed, in {snapshot.path}; nothing will use it")


def _offsite_point(host, profile: Profile, at: str | None) -> snapshots.OffsitePoint:
    """backup --from-offsite: the point asked for, checked against what the target holds."""
    if profile.offsite.parsed is None:
        raise UsageError(f"no offsite target in {profile.config_file}", hint="set offsite.target, then `fab provision`")
    if profile.database.postgresql:
        raise UsageError("backup --from-offsite brings SQLite's stream here; on PostgreSQL the target holds dumps",
                         hint="`fab restore-server --offsite` restores one on the server; `fab backup` takes one here")
    moment = _point_in_time(at)
    source = offsite_commands.own_source(profile)
    _, files = _what_the_target_holds(host, profile, source, moment, host.alias)
    chosen = offsite.files_snapshot_for(files, moment)
    if chosen is None:
        ui.warn(f"{source.settings.parsed.describe()} holds no snapshot of .env and media yet: the snapshot has the "
                "database only")
    ui.out.print(f"backup of {source.settings.parsed.describe()} ({_point_words(moment)})"
                 + (f", .env and media from restic snapshot {chosen.id[:8]}" if chosen else ""))
    return snapshots.OffsitePoint(source, offsite.rfc3339(moment) if moment else None, chosen.id if chosen else None)


def _point_in_time(at: str | None) -> datetime | None:
    """--at as a moment (None: the newest point); a bad or future time is a UsageError."""
    try:
        return offsite.parse_point(at, datetime.now(timezone.utc)) if at else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _point_words(moment: datetime | None) -> str:
    return f"as it was at {offsite.rfc3339(moment)}" if moment else "its newest point"


def _what_the_target_holds(host, profile: Profile, source: offsite_commands.Source, moment: datetime | None,
                           owner: str) -> tuple[offsite.RestorePoints, list[offsite.FilesSnapshot]]:
    """The source's restore points and snapshots of .env and media, refused when `moment` is not among
    the points (`owner`: the host whose target it is, for the hint)."""
    points, files = read_source(host, profile, source)
    problem = offsite.point_problem(moment or datetime.now(timezone.utc), points)
    if problem:
        raise UsageError(f"{source.settings.parsed.describe()}: {problem}; nothing was changed",
                         hint=f"`fab -H {owner} offsite` lists what the target holds")
    return points, files


@task(help={"config": CONFIG_HELP, "verify": "re-hash every file and re-run integrity_check",
            "json": "print a JSON list instead of tables (its keys: the README's 'Errors, exit codes and machine-readable output')"})
@task_edge
def backups(c, config=None, verify=False, json=False):
    """List snapshots (per host, or only -H's) with time, label, version, size, counts and state."""
    root = backups_root()
    if host_alias(c):
        hosts = [profile_for(c, config, LOCAL_HOST).backups_dir(root)]
    else:
        hosts = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    listed = {}
    for host_dir in hosts:
        found = catalog.list_snapshots(host_dir)
        on_disk = diskuse.added_bytes([s.path for s in found])
        listed[host_dir] = [_listing_record(s, verify, disk) for s, disk in zip(found, on_disk)]
    if json:
        sys.stdout.write(json_module.dumps([r for records in listed.values() for r in records], indent=2) + "\n")
        return
    shown = 0
    for host_dir, records in listed.items():
        if not records:
            continue
        disk = sum(r["disk_bytes"] for r in records)
        table = Table(title=f"{host_dir.name}  ({host_dir}): {ui.human_bytes(disk)} on disk", title_justify="left",
                      caption="on disk: what a snapshot adds beyond the older ones (hard links and reflinks "
                              "share unchanged bytes)", caption_justify="left")
        widest = max(len(r["id"]) for r in records)
        table.add_column("id", no_wrap=True, min_width=widest)   # what a user copies is never cut
        numbers = ("size", "on disk", "projects", "tasks", "annotations")
        for column in ("time (UTC)", "label", "LS version", "size", "on disk", "projects", "tasks", "annotations",
                       "state"):
            table.add_column(column, justify="right" if column in numbers else "left")
        for r in records:
            style = {"verified": "ok", "verified now": "ok", "pending": "warn"}.get(r["state"], "bad")
            state = r["state"] if r["state"] in ("verified", "verified now", "pending", "incomplete") else r["problem"]
            table.add_row(r["id"], r["time"].replace("T", " ").rstrip("Z"), r["label"] or "",
                          r["label_studio_version"] or "-",
                          ui.human_bytes(r["size_bytes"]) if r["size_bytes"] is not None else "-",
                          ui.human_bytes(r["disk_bytes"]),
                          *(str(r[k]) if r[k] is not None else "-" for k in ("projects", "tasks", "annotations")),
                          f"[{style}]{state}[/{style}]")
        ui.out.print(table)
        shown += len(records)
    if not shown:
        ui.out.print(f"no snapshots in {root}")


def _listing_record(snapshot, verify: bool, disk_bytes: int) -> dict:
    """One snapshot for `backups`; with `verify`, its files re-hashed and its integrity_check run again."""
    if verify and snapshot.manifest is not None:
        try:
            local.verify_snapshot(snapshot)
        except SnapshotError as exc:
            return catalog.listing_record(snapshot, exc.message, disk_bytes=disk_bytes)
        return catalog.listing_record(snapshot, checked_now=True, disk_bytes=disk_bytes)
    return catalog.listing_record(snapshot, disk_bytes=disk_bytes)


@task(help={"config": CONFIG_HELP, "keep-last": "keep the newest N (default: the profile's backup.keep_last)",
            "keep-daily": "also keep the newest of each of the last D days", "keep-weekly":
            "also keep the newest of each of the last W weeks", "dry-run": "show what would go, delete nothing",
            "yes": YES_HELP})
@task_edge
def prune(c, config=None, keep_last=None, keep_daily=None, keep_weekly=None, dry_run=False, yes=False):
    """Delete old snapshots by a keep-last/daily/weekly rule (shows the plan, asks; keeps what a restore picks)."""
    profile = profile_for(c, config, LOCAL_HOST)
    host_dir = profile.backups_dir(backups_root())
    rule = {name: whole_number(value, name.replace("_", "-")) if value is not None else getattr(profile.backup, name)
            for name, value in (("keep_last", keep_last), ("keep_daily", keep_daily), ("keep_weekly", keep_weekly))}
    if any(v < 0 for v in rule.values()):
        raise UsageError("keep counts must be 0 or more")
    with local.local_lock(host_dir):
        plan = catalog.retention_plan(catalog.list_snapshots(host_dir), **rule)
        ui.out.print(f"prune {host_dir} (keep last {rule['keep_last']}, daily {rule['keep_daily']}, "
                     f"weekly {rule['keep_weekly']})")
        for s in plan.keep:
            ui.out.print(f"  keep    {s.id}  ({plan.reasons[s.id]})")
        for s in plan.delete:
            ui.out.print(f"  [changed]delete[/changed]  {s.id}" + ("" if s.complete else "  (incomplete)"))
        partials = catalog.leftover_partials(host_dir)
        for folder in partials:
            ui.out.print(f"  [changed]delete[/changed]  {folder.name}  (left unfinished by a stopped run)")
        if not plan.delete and not partials:
            ui.step(False, "nothing to delete")
            return
        if dry_run:
            ui.out.print(f"{len(plan.delete) + len(partials)} folder(s) would be deleted (dry run: nothing deleted)")
            return
        confirm(f"delete these {len(plan.delete) + len(partials)} folder(s) from {host_dir}?", yes)
        catalog.delete_snapshots(plan.delete)
        catalog.delete_folders(partials)
        ui.step(True, f"deleted {len(plan.delete)} snapshot(s)" + (f" and {len(partials)} unfinished folder(s)"
                      if partials else "") + f", kept {len(plan.keep)}")


# ------------------------------------------------------------------------------------------------


class _LocalGate:
    """push's gate on the local data: the staged copy's integrity_check, running in a thread from the
    moment the copy is made (beside the server's counts, the question, the pre-push backup and the
    upload), waited for before anything on the server is replaced: before the question when a person is
    asked, else once the upload is proven, before the swap. The quick refusals (not SQLite, not Label
    Studio) come before it."""

    def __init__(self, staged: Snapshot, database: Path):
        self.database = database
        self.check = checking.CheckBeside(staged, by="push-local-db (its gate)", just_proven=True)

    def passed(self, backed_up: Snapshot | None = None, uploaded: bool = False) -> None:
        checked = self.check.result()
        if not checked.verified:
            kept = f"; the server's pre-push backup is kept as {backed_up.id}" if backed_up else ""
            done = "nothing on the server was replaced (the upload is removed)" if uploaded else "nothing was sent"
            raise SnapshotError(f"{self.database} failed SQLite's integrity_check: "
                                f"{checked.manifest.integrity_check}; {done}{kept}")
        ui.step(True, f"local database checked: integrity ok, {counts_text(checked.manifest.counts)}")


def _push_source(local_data_dir: str | None, snapshot_id: str | None, host_dir: Path, staging: Path,
                 with_media: bool) -> tuple[Snapshot, str, dict, _LocalGate | None]:
    """(snapshot, description, counts, gate) of what push sends: a verified stored snapshot (no gate),
    or a consistent copy of the live local data staged for the upload, its check running (the gate).
    Refuses anything that is not a SQLite Label Studio database before the server is touched."""
    if snapshot_id:
        pool = catalog.list_snapshots(host_dir) + catalog.list_snapshots(backups_root() / LOCAL_HOST)
        chosen = catalog.find_snapshot(pool, snapshot_id)
        refuse_postgresql_snapshot(chosen)
        return chosen, f"snapshot {chosen.id}", local.verify_snapshot(chosen)["counts"], None
    data_dir = local.local_data_dir(local_data_dir)
    staged, report = local.snapshot_local_data(data_dir, staging, label="push", media=with_media, check=False)
    if staged is None:
        raise SnapshotError(f"no Label Studio database in {data_dir}", hint="--local-data-dir names another")
    problem = sqlite.describe_problem(report)
    if problem:
        raise SnapshotError(f"{data_dir / DATABASE} is {problem}; nothing was sent")
    return staged, f"local data in {data_dir}", report["counts"], _LocalGate(staged, data_dir / DATABASE)


@task(help={"config": CONFIG_HELP, "snapshot": "push a stored snapshot instead of the local data",
            "with-media": "also replace the server's uploaded media", "yes": YES_HELP,
            "dry-run": "check and show what would happen; change nothing", "local-data-dir": LOCAL_DIR_HELP,
            "health-timeout": HEALTH_HELP})
@task_edge
def push_local_db(c, config=None, snapshot=None, with_media=False, yes=False, dry_run=False,
                  local_data_dir=None, health_timeout=SWAP_HEALTH_TIMEOUT):
    """Local Label Studio data -> server: server backed up first, verified swap, health check, auto-rollback."""
    profile, host = open_host(c, config, sudo=True, not_on_a_site="push-local-db")
    snapshots.refuse_other_database(host, profile)
    with local.local_lock(profile.backups_dir()), tempfile.TemporaryDirectory(prefix="lsvm-push-") as staging:
        source, described, local_counts, gate = _push_source(local_data_dir, snapshot, profile.backups_dir(),
                                                             Path(staging), with_media)
        try:
            files = [f for f in source.manifest.files
                     if f.path == DATABASE or (with_media and f.path.startswith(MEDIA + "/"))]
            server = restore.server_counts_for(host, profile, source)
            ui.out.print(f"push {described} -> {host.alias}")
            restore.say_if_converted(source, profile)
            ui.out.print(f"  server now: {counts_text(server)}")
            ui.out.print(f"  replaced by: {counts_text(local_counts)}"
                         + (" (with media)" if with_media else " (server media kept)"))
            if gate and (dry_run or not yes):   # a person is asked only about data that passed
                gate.passed()
                gate = None
            if dry_run:
                ui.out.print("dry run: the local database passed its checks; nothing was changed")
                return
            confirm(f"replace the Label Studio data on {host.alias}? (it is backed up first)", yes)
            restore.replace_after_backup(host, profile, source, files, backup=server is not None, label="pre-push",
                                  task_name="push-local-db", health_timeout=int(health_timeout), gate=gate)
        finally:
            if gate:
                gate.check.ended()   # its files are in `staging`, removed next


@task(help={"config": CONFIG_HELP,
            "snapshot": "the snapshot to restore: ID or unique prefix (see `fab backups`), or OTHERHOST/ID "
                        "to move another server's data here",
            "from": "back up the server OTHERHOST now and move that data here (a new VM taking over); with "
                    "--offsite: from OTHERHOST's offsite target, nothing asked of OTHERHOST (gone)",
            "from-config": "OTHERHOST's profile YAML (default configs/OTHERHOST.yaml)",
            "offsite": "restore the database from the profile's offsite target (its newest point, or --at); with "
                       "--from OLDHOST: OLDHOST's database, .env and media from OLDHOST's target (the old VM gone)",
            "at": "with --offsite: the database as it was at this time, every transaction before it (2026-12-03 "
                  "07:30, UTC unless an offset is given; `fab offsite` shows how far back the target reaches)",
            "yes": YES_HELP, "dry-run": "check and show what would happen; change nothing",
            "health-timeout": HEALTH_HELP})
@task_edge
def restore_server(c, config=None, snapshot=None, from_=None, from_config=None, offsite=False, at=None, yes=False,
                   dry_run=False, health_timeout=SWAP_HEALTH_TIMEOUT):
    """Put a snapshot (DB, .env, media) on the server, its own or another server's, with push's safety."""
    if offsite:
        if snapshot:
            raise UsageError("--offsite restores from an offsite target: give it no --snapshot")
        _restore_from_offsite(c, config, at, from_=from_, from_config=from_config, yes=yes, dry_run=dry_run,
                              health_timeout=int(health_timeout))
        return
    if at:
        raise UsageError("--at goes with --offsite (a snapshot is one point in time already)")
    if bool(snapshot) == bool(from_):
        raise UsageError("which data? --snapshot ID (see `fab -H HOST backups`), --snapshot OTHERHOST/ID, "
                         "--from OTHERHOST, or --offsite")
    profile, host = open_host(c, config, sudo=True, not_on_a_site="restore-server")
    source_host = from_ or catalog.snapshot_host(snapshot, host.alias)
    if source_host == host.alias and from_:
        raise UsageError(f"--from {from_} names the server being restored",
                         hint=f"`fab -H {host.alias} backup` then `restore-server --snapshot ID` puts back a state of its own")
    source_dir = backups_root() / source_host
    with contextlib.ExitStack() as locks:
        locks.enter_context(local.local_lock(profile.backups_dir()))
        if source_dir != profile.backups_dir():
            locks.enter_context(local.local_lock(source_dir))
        if from_:
            chosen = _fresh_snapshot_of(c, from_, from_config, host.alias)
        else:
            chosen = catalog.find_snapshot(catalog.list_snapshots(source_dir), catalog.snapshot_name(snapshot))
        report = restore.checked_before_restore(host, profile, chosen)
        server = restore.server_counts_for(host, profile, chosen)
        moving = chosen.host != host.alias
        ui.out.print(f"{'move' if moving else 'restore'} {chosen.host}/{chosen.id} -> {host.alias}")
        ui.out.print(f"  server now: {counts_text(server)}")
        ui.out.print(f"  restored:   {counts_text(report['counts'])}, "
                     + ", ".join(sorted({f.path.split('/')[0] for f in chosen.manifest.files})))
        restore.say_if_converted(chosen, profile)
        if moving:
            ui.out.print(f"  users, passwords, API tokens and SECRET_KEY come from {chosen.host}; the URL and "
                         f"settings stay {host.alias}'s (its profile)")
        if dry_run:
            ui.out.print("dry run: the snapshot passed its checks; nothing was changed on " + host.alias)
            return
        confirm(f"replace the Label Studio data on {host.alias} with {chosen.host}/{chosen.id}? "
                "(it is backed up first)", yes)
        restore.replace_after_backup(host, profile, chosen, chosen.manifest.files, backup=server is not None,
                              label="pre-restore", task_name="restore-server", health_timeout=int(health_timeout))


def _restore_from_offsite(c, config: str | None, at: str | None, *, from_: str | None, from_config: str | None,
                          yes: bool, dry_run: bool, health_timeout: int) -> None:
    """restore-server --offsite [--at] [--from OLDHOST]: the database (and with --from, .env and media) from
    an offsite target, with push's safety (a snapshot of the server first, the release's read, the swap
    job with its health gate and rollback)."""
    _point_in_time(at)               # a bad --at is refused before connecting
    profile, host = open_host(c, config, sudo=True, not_on_a_site="restore-server")
    if profile.offsite.parsed is None:
        raise UsageError(f"no offsite target in {profile.config_file}",
                         hint="set offsite.target and `fab provision` (it installs what reads the target); until "
                              "then restore a snapshot (--snapshot)")
    moment = _point_in_time(at)
    with contextlib.ExitStack() as stack:
        if from_:
            other = _other_offsite(from_, from_config, host.alias, profile)
            source = stack.enter_context(other_source(host, profile, other, *_other_secrets(other)))
        else:
            source = offsite_commands.own_source(profile)
        where = source.settings.parsed.describe()
        if profile.database.postgresql:
            files = read_files(host, profile, source)
            dump = offsite.dump_snapshot_for(files, moment)
            if dump is None:
                when = f"taken at or before {offsite.rfc3339(moment)}" if moment else "yet"
                raise UsageError(f"{where} holds no dump of the database {when}; nothing was changed",
                                 hint=f"`fab -H {from_ or host.alias} offsite` lists what it holds")
            chosen = dump if from_ else None
            held = offsite.describe_files(files)
        else:
            points, files = _what_the_target_holds(host, profile, source, moment, from_ or host.alias)
            chosen = offsite.files_snapshot_for(files, moment) if from_ else None
            held = points.describe()
        if from_ and chosen is None:
            raise UsageError(f"{where} holds no snapshot of {from_}'s .env and media; nothing was changed",
                             hint="without its SECRET_KEY, sessions and signed tokens would not carry over")
        server = engine.server_counts(host, profile)
        point = _point_words(moment)
        ui.out.print(f"restore {where} ({point}) -> {host.alias}")
        ui.out.print(f"  restore points on the target: {held}")
        ui.out.print(f"  server now: {counts_text(server)}")
        if profile.database.postgresql:
            ui.out.print(f"  the database: the dump in restic snapshot {dump.id[:8]} of {dump.time:%Y-%m-%d %H:%M:%S} UTC")
        if chosen:
            ui.out.print(f"  .env (SECRET_KEY) and media: restic snapshot {chosen.id[:8]} of "
                         f"{chosen.time:%Y-%m-%d %H:%M:%S} UTC; the URL and settings stay {host.alias}'s (its profile)")
        else:
            ui.out.print("  the database only: .env (SECRET_KEY) and media stay the server's")
        if dry_run:
            ui.out.print(f"dry run: the target answers; nothing was changed on {host.alias}")
            return
        confirm(f"replace the {'data' if chosen else 'database'} on {host.alias} with the offsite copy ({point})? "
                "(it is backed up first)", yes)
        with local.local_lock(profile.backups_dir()), snapshots.server_lock(host, profile, "restore-server --offsite"):
            if server is not None:
                before = engine.take_server_snapshot(host, profile, label="pre-restore")
                report_snapshot(before, "server backed up as")
            if profile.database.postgresql:
                postgres_snapshots.restore_from_offsite(host, profile, source, dump, everything=bool(from_),
                                                        health_timeout=health_timeout)
            else:
                replace_from_offsite(host, profile, source, offsite.rfc3339(moment) if moment else None, chosen,
                                     listed=offsite.files_snapshot_for(files, moment), health_timeout=health_timeout)


def _other_offsite(alias: str, config: str | None, here: str, profile: Profile) -> Profile:
    """OLDHOST's profile for --offsite --from: its target, which must not be this VM's own."""
    if alias == here:
        raise UsageError(f"--from {alias} names the server being restored", hint="without --from: its own target")
    other = load_profile(alias, config)
    if other.offsite.parsed is None:
        raise UsageError(f"{other.config_file} names no offsite target for {alias}; nothing was changed")
    if other.offsite.parsed == profile.offsite.parsed:
        raise UsageError(f"{here} streams to the same target as {alias} ({profile.offsite.parsed.describe()}): "
                         "two VMs on one target would overwrite each other's history; nothing was changed",
                         hint=f"give {here} a target of its own (another path or prefix) and `fab -H {here} provision`")
    if other.database.postgresql != profile.database.postgresql:
        kinds = {True: "PostgreSQL (a dump)", False: "SQLite (a stream)"}
        raise UsageError(f"{alias}'s offsite copies hold {kinds[other.database.postgresql]}, {here} runs "
                         f"{kinds[profile.database.postgresql].split(' (')[0]}; nothing was changed",
                         hint="provision the new VM with the old one's database.engine, restore, then migrate-db")
    return other


def _other_secrets(other: Profile) -> tuple[str, dict[str, str] | None, str | None]:
    """restic's password this machine kept for OLDHOST, and the S3 keys from this machine's environment
    (or the SFTP key from the file it names)."""
    kept = other.backups_dir() / offsite.PASSWORD_FILE
    if not kept.is_file():
        raise UsageError(f"no copy of {other.host}'s restic password here ({kept}); nothing was changed",
                         hint="put back the copy you keep elsewhere (provision made it and said where)")
    password = kept.read_text(errors="replace").strip()
    if offsite.password_problem(password):
        raise UsageError(f"{kept} {offsite.password_problem(password)}; nothing was changed")
    credentials = None
    if other.offsite.needs_credentials:
        credentials = offsite.credentials_from_env(dict(os.environ))
        problem = offsite.credentials_problem(credentials or {})
        if problem:
            raise UsageError(f"{other.offsite.target}: {problem}; nothing was changed",
                             hint="the keys that may read that bucket")
    key = None
    if other.offsite.needs_key:
        try:
            key = offsite.sftp_key_from(dict(os.environ))
        except ValueError as exc:
            raise UsageError(f"{other.offsite.target}: {exc}; nothing was changed") from None
        if key is None:
            raise UsageError(f"{other.offsite.target}: ${offsite.SFTP_KEY_ENV} must name the private key file of that "
                             "account on this machine; nothing was changed")
    return password, credentials, key


def _fresh_snapshot_of(c, alias: str, config: str | None, target: str) -> Snapshot:
    """restore-server --from: a backup of the other server taken now, into its own backups/<alias>/."""
    source_profile, source = open_other_host(c, alias, config, sudo=True)
    with snapshots.server_lock(source, source_profile, f"backup for a move to {target}"):
        taken = engine.take_server_snapshot(source, source_profile, label="move")
    report_snapshot(taken, f"{alias} backed up as")
    if not taken.verified:
        raise SnapshotError(f"the database on {alias} failed its check ({taken.manifest.integrity_check}): "
                            "nothing was moved", hint=f"the snapshot is kept, marked failed, in {taken.path}")
    return taken


# ------------------------------------------------------------------------------------------------


def _save_local(data_dir: Path, label: str) -> None:
    saved = local.save_local_data(data_dir, label)
    if saved is None:
        ui.step(False, f"no local database in {data_dir} to save")
        return
    report_snapshot(saved, "local data saved as")
    if saved.manifest.extra.get("pulled_copy"):
        ui.out.print("  (an untouched copy of an earlier pull)")


def _install_locally(chosen: Snapshot, data_dir: Path, with_env: bool) -> None:
    done = local.install_snapshot_locally(chosen, data_dir, with_env=with_env)
    ui.step(True, f"installed {', '.join(done)} from {chosen.host}/{chosen.id} into {data_dir}")


@task(help={"config": CONFIG_HELP, "yes": YES_HELP, "force": "go ahead even if a local Label Studio runs on the data dir",
            "local-data-dir": LOCAL_DIR_HELP, "dry-run": "show what would happen, change nothing"})
@task_edge
def pull_server_db(c, config=None, yes=False, force=False, local_data_dir=None, dry_run=False):
    """Server data -> your local Label Studio: server snapshot first, your local data saved first."""
    profile, host = open_host(c, config)
    refuse_postgresql(profile, host.alias, "pull-server-db")
    data_dir = local.local_data_dir(local_data_dir)
    local.require_no_local_server(data_dir, force)
    if dry_run:
        host.check_sudo()
        server = engine.server_counts(host, profile)
        if server is None:
            raise SnapshotError(f"{host.alias} has no Label Studio database to pull; nothing was changed")
        ui.out.print(f"pull-server-db {host.alias} ({counts_text(server)}) -> {data_dir}")
        ui.out.print(f"  would: snapshot {host.alias} into {profile.backups_dir()}, save the local data in {data_dir} "
                     f"into {backups_root() / LOCAL_HOST}, then put the server's database and media there")
        ui.out.print("dry run: nothing was changed")
        return
    confirm(f"replace the local Label Studio data in {data_dir} with {host.alias}'s? (it is saved first)", yes)
    host.check_sudo()
    with local.local_lock(profile.backups_dir()), local.local_lock(backups_root() / LOCAL_HOST):
        with snapshots.server_lock(host, profile, "pull-server-db"):
            pulled = engine.take_server_snapshot(host, profile, label="pull")
        report_snapshot(pulled, "server snapshot")
        local.require_verified_pull(pulled)
        _save_local(data_dir, "pre-pull")
        _install_locally(pulled, data_dir, with_env=False)
    ui.out.print("restore-local puts your own data back (fab restore-local).")


@task(help={"snapshot": "a snapshot id (default: the local data saved by the last pull)",
            "yes": YES_HELP, "force": "go ahead even if a local Label Studio runs on the data dir",
            "local-data-dir": LOCAL_DIR_HELP, "dry-run": "show what would happen, change nothing"})
@task_edge
def restore_local(c, snapshot=None, yes=False, force=False, local_data_dir=None, dry_run=False):
    """Put back the local data saved before the last pull (or any snapshot) into your local Label Studio."""
    data_dir = local.local_data_dir(local_data_dir)
    local.require_no_local_server(data_dir, force)
    local_root = backups_root() / LOCAL_HOST
    with local.local_lock(local_root):
        if snapshot:
            chosen = catalog.find_snapshot(catalog.all_snapshots(backups_root(), first=LOCAL_HOST), snapshot)
        else:
            chosen = local.own_saved_data(local_root)
        refuse_postgresql_snapshot(chosen)
        local.verify_snapshot(chosen)
        ui.out.print(f"restore-local {chosen.host}/{chosen.id} -> {data_dir} ({counts_text(chosen.manifest.counts)})")
        if dry_run:
            parts = "database, media" + (", .env" if chosen.host == LOCAL_HOST else "")
            ui.out.print(f"  would: save the local data in {data_dir} into {local_root}, then put the snapshot's "
                         f"{parts} there")
            ui.out.print("dry run: nothing was changed")
            return
        confirm(f"replace the local data in {data_dir}? (it is saved first)", yes)
        _save_local(data_dir, "pre-restore")
        _install_locally(chosen, data_dir, with_env=chosen.host == LOCAL_HOST)
