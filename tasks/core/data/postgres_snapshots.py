"""Data tasks on PostgreSQL (`database.engine: postgresql`): backup and restore-server.

backup: one consistent `pg_dump --format=custom`, taken in the snapshot of a repeatable-read
transaction that also counts the rows of every table (postgres_tool.py dump), into the usual snapshot layout:
`label_studio.pgdump` beside `.env` and `media/`, the manifest saying engine, server version and those
counts. restore-server: the dump restored into a NEW database and its row counts compared with the
manifest while Label Studio keeps serving; then the swap job (commands/swap.py) stops it, renames the
live database aside and the new one into its name, swaps .env and media, starts it and waits for the
health gate; on any failure the names go back and the original serves again.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Iterator

from tasks.core import offsite, ui
from tasks.core.commands import data as data_commands
from tasks.core.commands import offsite as offsite_commands
from tasks.core.commands import postgres as pg
from tasks.core.connect import Host
from tasks.core.data import bucket_media, catalog, migrate, read_service_file
from tasks.core.data.catalog import FileEntry, Manifest, Snapshot
from tasks.core.data.replace import upload
from tasks.core.data.snapshots import send_file_list, server_work_dir
from tasks.core.data.swap import refuse_foreign_port, refuse_unfinished_swap, run_swap
from tasks.core.database import DUMP, DUMP_COUNTS, converts, restore_names, snapshot_engine
from tasks.core.defaults import DATABASE, MEDIA, SECRET_ENV
from tasks.core.errors import RemoteError, SnapshotError
from tasks.core.profile import Profile
from tasks.core.transfer import receive_tar, server_codec


def server_counts(host: Host, profile: Profile, database: str | None = None) -> dict | None:
    """Row counts of the live database (or `database`): {"counts", "tables", "server_version"}; None
    when it does not exist; RemoteError when PostgreSQL cannot be read."""
    out = host.run(pg.counts(profile, database), sudo=True, check=False, what="reading the PostgreSQL counts")
    found = out.answer() or {}
    if found.get("missing"):
        return None
    if not found or "error" in found:
        raise RemoteError(f"cannot read the PostgreSQL database on {host.alias}: "
                          f"{found.get('error') or out.last_line() or 'no answer'}")
    return found


def table_differences(expected: dict, found: dict) -> list[str]:
    """The tables whose row counts differ between the manifest and a restored database, in words."""
    names = sorted(set(expected) | set(found))
    return [f"{name}: {expected.get(name, 'absent')} in the snapshot, {found.get(name, 'absent')} restored"
            for name in names if expected.get(name) != found.get(name)]


# ------------------------------------------------------------------------------------------------
# backup


def take_snapshot(host: Host, profile: Profile, *, label: str | None, media: bool = True) -> Snapshot:
    host_dir = profile.backups_dir()
    previous = next((s for s in reversed(catalog.list_snapshots(host_dir)) if s.verified), None)
    with server_work_dir(host, profile, "backup") as work_dir:
        out = host.run(data_commands.prepare_copy(profile, work_dir, "null"), sudo=True, check=False,
                       what="listing the server's data")
        info = out.answer() or {}
        if not out.ok or not info:
            raise SnapshotError(f"listing the data on {host.alias} failed: {out.last_line()}")
        with ui.err.status("pg_dump of the server database (one consistent snapshot)"):
            out = host.run(pg.dump(profile, work_dir / DUMP), sudo=True, check=False, what="pg_dump")
        dumped = out.answer() or {}
        if not out.ok or "error" in dumped or "sha256" not in dumped:
            raise SnapshotError(f"pg_dump on {host.alias} failed: {dumped.get('error') or out.last_line()}")
        with catalog.new_snapshot(host_dir, label) as pending:
            files = _download(host, profile, work_dir, pending.path, info, dumped, media=media, previous=previous)
            integrity = dumped["integrity_check"] if dumped["label_studio"] else "not a Label Studio database"
            pending.manifest = Manifest(
                host=host.alias,
                created=pending.created,
                label=label,
                label_studio_version=info.get("label_studio_version"),
                source={"host": host.alias, "address": profile.address, "data_dir": str(profile.remote.data_dir),
                        "engine": "postgresql", "database": profile.database.name,
                        "database_host": profile.database.address, "marker": None},
                files=files,
                integrity_check=integrity,
                counts=dumped["counts"],
                media_included=media,
                extra={"engine": "postgresql", "server_version": dumped["server_version"],
                       "tables": dumped["tables"]},
            )
    return pending.snapshot


def _download(host: Host, profile: Profile, work_dir, dest, info: dict, dumped: dict, *, media: bool,
              previous: Snapshot | None) -> list[FileEntry]:
    """The dump, .env and media into dest; .env and media unchanged since `previous` are hard-linked."""
    wanted = [(DUMP, dumped["size"], dumped["sha256"], None)]
    if "env" in info:
        wanted.append((SECRET_ENV, info["env"]["size"], info["env"]["sha256"], None))
    if media:
        wanted += [(m["path"], m["size"], None, m["mtime"]) for m in info.get("media", [])]
    entries, fetch = catalog.link_unchanged(wanted, previous, dest, always_fetch=frozenset({DUMP}))
    listed = [f[0] for f in fetch if f[0] != DUMP]
    if listed:
        send_file_list(host, profile, work_dir, listed)
    codec = server_codec(host)
    total = sum(f[1] for f in fetch)
    started = time.monotonic()
    channel = host.root_channel(data_commands.stream_snapshot(profile, work_dir, codec.name,
                                                              listed_files=bool(listed), work_file=DUMP))
    try:
        received = receive_tar(channel, codec, dest, total=total, description=f"backup {host.alias}",
                               expected={f[0]: f[1] for f in fetch})
        channel.finish("streaming the snapshot")
    finally:
        channel.close()
    ui.transfer_summary("downloaded", total, time.monotonic() - started, wire=channel.received)
    entries += catalog.received_entries(fetch, received, host.alias)
    return sorted(entries, key=lambda f: f.path)


# ------------------------------------------------------------------------------------------------
# restore-server


def restore(host: Host, profile: Profile, snapshot: Snapshot, *, health_timeout: int,
            files: list[FileEntry] | None = None) -> None:
    """The dump (or, converted, a SQLite database) into a new database, checked, then the switch by the
    swap job (see the module). `files`: what of the snapshot goes (default: all of it)."""
    refuse_unfinished_swap(host, profile)
    refuse_foreign_port(host, profile)
    files = snapshot.manifest.files if files is None else files
    converting = converts(snapshot_engine(snapshot.manifest), profile.database.engine)
    parts = [part for part in (SECRET_ENV, MEDIA)
             if any(f.path == part or f.path.startswith(part + "/") for f in files)]
    with _new_database(host, profile) as (new, aside):
        upload(host, profile, snapshot.path, files)
        ui.step(True, f"uploaded and verified the {'SQLite database' if converting else 'dump'}"
                      f"{', ' if parts else ''}{', '.join(parts)} on the server")
        _create_database(host, profile, new)
        if converting:
            migrate.convert_snapshot(host, profile, data_commands.incoming_dir(profile) / DATABASE, new,
                                     f"{snapshot.host}/{snapshot.id}")
        else:
            _restore_checked(host, profile, snapshot.manifest.extra.get("tables") or {}, f"snapshot {snapshot.id}", new)
    _switch(host, profile, parts, new, aside, health_timeout)


def restore_incoming_dump(host: Host, profile: Profile, tables: dict, what: str, parts: list[str], *,
                          health_timeout: int) -> None:
    """A dump already in the incoming folder (restore-server --offsite put it there, with `parts` of
    .env and media) into a new database, its row counts compared with `tables`, then the switch."""
    with _new_database(host, profile) as (new, aside):
        _create_database(host, profile, new)
        _restore_checked(host, profile, tables, what, new)
    _switch(host, profile, parts, new, aside, health_timeout)


@contextlib.contextmanager
def _new_database(host: Host, profile: Profile) -> Iterator[tuple[str, str]]:
    """The names of the database a restore fills and of the live one set aside; on any failure while it is
    filled, the incoming folder and that new database go (the live one was never touched)."""
    new, aside = restore_names(profile.database, time.strftime("%Y%m%d%H%M%S", time.gmtime()))
    try:
        yield new, aside
    except BaseException:
        host.run(data_commands.remove_incoming(profile), sudo=True, check=False)
        host.run(pg.drop_database(profile, new), sudo=True, check=False)
        raise


def _switch(host: Host, profile: Profile, parts: list[str], new: str, aside: str, health_timeout: int) -> None:
    """The swap job: the live database aside, `new` in its name, `parts` swapped in; back on a failure."""
    swapped = (f"switched databases: {profile.database.name} -> {aside}, {new} -> {profile.database.name}"
               + (f"; swapped in {', '.join(parts)}" if parts else ""))
    run_swap(host, profile, parts, health_timeout=health_timeout, swapped=swapped, steps={
        "after_swap": pg.switch_in(profile, new, aside),
        "undo_swap": f"{pg.switch_back(profile, new, aside)}; {pg.drop_database(profile, new)}",
        "on_success": pg.drop_database(profile, aside),
    })


def _create_database(host: Host, profile: Profile, new: str) -> None:
    out = host.run(pg.create_database(profile, new), sudo=True, check=False, what="creating the database")
    if not out.ok:
        raise RemoteError(f"cannot create database {new} on {profile.database.address}: {out.last_line()}; "
                          "nothing was changed", hint="the role needs CREATEDB on an external server")


def _restore_checked(host: Host, profile: Profile, tables: dict, what: str, new: str) -> None:
    """pg_restore of the incoming dump into `new`, whose row counts must equal `tables` (what the dump's
    own transaction counted); `what`: the dump's name in messages ("snapshot ID")."""
    dump = data_commands.incoming_dir(profile) / DUMP
    with ui.err.status(f"pg_restore into a new database {new} (Label Studio keeps serving)"):
        out = host.run(pg.restore_into(profile, dump, new), sudo=True, check=False, what="pg_restore")
    if not out.ok:
        raise SnapshotError(f"the dump of {what} did not restore ({out.last_line()}); nothing was changed")
    found = server_counts(host, profile, new) or {}
    differs = table_differences(tables, found.get("tables") or {})
    if differs:
        raise SnapshotError(f"the restored database differs from {what} ({'; '.join(differs[:3])}); "
                            "nothing was changed")
    ui.step(True, f"restored into {new}: {len(found.get('tables') or {})} tables, row counts equal to the dump's")


def restore_from_offsite(host: Host, profile: Profile, source: offsite_commands.Source, files: offsite.FilesSnapshot,
                         *, everything: bool, health_timeout: int) -> None:
    """restore-server --offsite on PostgreSQL: the dump in restic's snapshot `files` (with `everything`,
    its .env and media too) into the incoming folder on the server, then restore_incoming_dump against
    the row counts taken in the dump's own transaction."""
    refuse_unfinished_swap(host, profile)
    refuse_foreign_port(host, profile)
    incoming = data_commands.incoming_dir(profile)
    where = source.settings.parsed.describe()
    try:
        host.run(data_commands.make_incoming(profile), sudo=True, what="incoming folder")
        started = time.monotonic()
        with ui.err.status(f"restoring restic snapshot {files.id[:8]} from {where} on the server"):
            host.run(offsite_commands.restore_files_into_incoming(profile, incoming, files.id, source,
                                                                  () if everything else (DUMP, DUMP_COUNTS)),
                     sudo=True, what="restoring from the offsite target", timeout=None)
        said = read_service_file(host, profile, incoming / DUMP_COUNTS, migrate.REPORT_LIMIT, "the dump's row counts")
        try:
            tables = json.loads(said.stdout)["tables"]
        except (ValueError, KeyError, TypeError):
            raise SnapshotError(f"restic snapshot {files.id[:8]} holds no dump of PostgreSQL with its row counts; "
                                "nothing was changed") from None
        present = host.run(offsite_commands.parts_in_incoming(profile, incoming), sudo=True,
                           what="the restored parts").stdout.split() if everything else []
        found = bucket_media.offsite_listing(host, profile, incoming, source, files.id, extracted=everything)
        bucket_media.require_listed(host, profile, found, f"offsite snapshot {files.id[:8]}")
    except BaseException:
        host.run(data_commands.remove_incoming(profile), sudo=True, check=False)
        raise
    parts = [part for part in (SECRET_ENV, MEDIA) if part in present]
    ui.step(True, f"restored the dump{', ' if parts else ''}{', '.join(parts)} from restic snapshot {files.id[:8]} "
                  f"in {time.monotonic() - started:.1f}s")
    restore_incoming_dump(host, profile, tables, f"offsite snapshot {files.id[:8]}", parts,
                          health_timeout=health_timeout)
