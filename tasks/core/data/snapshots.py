"""Taking, checking and installing snapshots, on the server side and on this machine.

Rules kept here: a snapshot is consistent (SQLite online backup, never a raw copy of a live file), is
checked (integrity_check, Label Studio tables, sha256 end to end) and gets its manifest last. Local data
is never replaced before a verified copy of it exists.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import getpass
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from tasks.core import database, ui
from tasks.core.commands import as_service_user, dbcheck, read_file
from tasks.core.commands import data as data_commands
from tasks.core.commands import offsite as offsite_commands
from tasks.core.connect import Host, removed_afterwards
from tasks.core.data import catalog, checking
from tasks.core.data.catalog import PAGE_INDEX, FileEntry, Manifest, Snapshot
from tasks.core.defaults import DATABASE, SECRET_ENV
from tasks.core.errors import LockedError, RemoteError, SnapshotError, UsageError
from tasks.core.files import disk_full, link_or_copy, space_needed, write_atomic
from tasks.core.onserver import sqlite
from tasks.core.profile import Profile
from tasks.core.transfer import check_free_space, receive_tar, server_codec

DELTA = data_commands.DELTA
# More changed pages than this share of the database: the whole file goes (a delta would be as big,
# and a database that shares little with the base is another history).
DELTA_MAX_SHARE = 0.5

# ------------------------------------------------------------------------------------------------
# Locks


@contextlib.contextmanager
def server_lock(host: Host, profile: Profile, task: str) -> Iterator[None]:
    """A flock on the server held by a process tied to our SSH channel: released when we finish or
    when this machine dies or the connection drops, so a crash never leaves a stale lock."""
    me = f"{task} by {getpass.getuser()}@{socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    channel = host.root_channel(data_commands.data_lock(profile, me))
    answer = channel.read_line().strip()
    if answer != data_commands.LOCKED:
        holder = channel.read_rest().strip() or "another task"
        channel.close()
        if answer == data_commands.BUSY:
            raise LockedError(f"{host.alias} is busy: {holder}", hint="wait for it to finish, then try again")
        raise RemoteError(f"could not take the data lock on {host.alias}")
    try:
        yield
    finally:
        channel.finish("releasing the data lock")


# ------------------------------------------------------------------------------------------------
# Server -> local snapshot


@dataclass
class ServerData:
    """What `prepare` found on the server (the consistent copy sits in `work_dir`)."""

    work_dir: PurePosixPath
    info: dict
    data_dir: PurePosixPath | None = None    # where .env and media are read: None = the live data dir


@dataclass(frozen=True)
class OffsitePoint:
    """backup --from-offsite: what to restore on the server instead of reading the live data."""

    source: offsite_commands.Source
    timestamp: str | None                     # RFC 3339, None = the newest point
    files: str | None                         # restic's snapshot of .env and media, None = none

    def describe(self) -> dict:
        return {"target": self.source.settings.parsed.describe(), "point": self.timestamp or "newest",
                "files_snapshot": self.files}


def server_counts(host: Host, profile: Profile) -> dict | None:
    """Row counts of the live SQLite database (read-only, no integrity check), None without one."""
    out = host.run(data_commands.server_counts(profile), sudo=True, what="reading server counts")
    if not out.stdout.strip():
        return None
    counts = out.answer()
    if counts is None:   # never read as "no database": that would skip the backup before a replace
        raise RemoteError(f"reading server counts on {host.alias} gave no answer: {out.last_line()}")
    return counts


def release_migrations(host: Host, profile: Profile) -> dict | None:
    """The migrations the server's Label Studio release ships, {app: [names]} or {"error": ...}; None if
    no answer. Never the live database's rows: a database that lacks one would close the way back."""
    return host.run(dbcheck.shipped_migrations(profile), sudo=True, check=False,
                    what="reading the release's migrations").answer()


@contextlib.contextmanager
def server_work_dir(host: Host, profile: Profile, purpose: str) -> Iterator[PurePosixPath]:
    """A private temp folder on the server, the service user's (it does the work there), removed
    afterwards whatever happens, except while a job on the server still uses it (JobStillRunning).
    Callers hold the data lock, so any other lsvm-* folder there is a leftover of a run that died:
    removed too."""
    base = profile.backup.server_tmp_dir
    out = host.run(data_commands.make_work_dir(profile, purpose), sudo=True, check=False,
                   what="creating a temp folder on the server")
    if not out.ok:
        raise SnapshotError(f"cannot create a temp folder in {base} on {host.alias}: {out.last_line()}")
    path = PurePosixPath(out.stdout.strip())
    with removed_afterwards(host, data_commands.remove_work_dir(profile, path),
                            kept=f"{path} stays on {host.alias} while the job there uses it (the next data task "
                                 "removes it)"):
        yield path


def prepare_server_copy(host: Host, profile: Profile, work_dir: PurePosixPath,
                        previous: Snapshot | None, data_dir: PurePosixPath | None = None) -> ServerData:
    """Consistent copy of the live database into work_dir, skipped when SQLite's change counter says
    the database is the one in `previous`. `data_dir`: a restore from the offsite target instead (always
    copied: its change counter says nothing of the live file's)."""
    database = data_dir / DATABASE if data_dir else profile.remote.database
    size = host.run(data_commands.file_size(profile, database), sudo=True).stdout.strip()
    check_free_space(host, work_dir, int(size or 0) + 1024 * 1024, "a consistent copy of the database")
    marker = json.dumps(previous.manifest.source.get("marker")) if previous and previous.manifest and not data_dir \
        else "null"
    with ui.err.status("consistent copy of the server database (SQLite online backup)"):
        out = host.run(data_commands.prepare_copy(profile, work_dir, marker, data_dir=data_dir), sudo=True,
                       check=False, what="snapshot on the server")
    if not out.ok:
        if "No space" in out.stderr or "disk is full" in out.stderr:
            raise SnapshotError(f"the server's temp space ({work_dir.parent}) is full", hint="free some space")
        raise SnapshotError(f"snapshot on {host.alias} failed: {out.last_line()}")
    info = out.answer()
    if info is None:
        raise SnapshotError(f"snapshot on {host.alias} gave no answer: {out.last_line()}")
    if not info.get("database_exists"):
        raise SnapshotError(f"there is no Label Studio database on {host.alias} yet ({database})")
    if "copy_error" in info:
        error = info["copy_error"]
        if "full" in error or "space" in error:
            raise SnapshotError(f"the server's temp space ({work_dir.parent}) is full while copying the database",
                                hint="free some space, or set backup.server_tmp_dir in the profile")
        raise SnapshotError(f"the consistent copy of the database failed on {host.alias}: {error}")
    return ServerData(work_dir, info, data_dir)


def _reusable(previous: Snapshot | None) -> dict[str, FileEntry]:
    if previous is None or previous.manifest is None:
        return {}
    return {f.path: f for f in previous.manifest.files}


def send_file_list(host: Host, profile: Profile, work_dir: PurePosixPath, names: list[str]) -> None:
    """The names to stream, NUL-separated on stdin into work_dir: never part of a script."""
    channel = host.root_channel(data_commands.write_file_list(profile, work_dir))
    try:
        channel.write(data_commands.encode_file_list(names))
        channel.finish("sending the file list")
    finally:
        channel.close()


@dataclass
class Downloaded:
    """What download_snapshot brought: the files, the database's check report, manifest extras."""

    files: list[FileEntry]
    report: dict
    extra: dict


def stored_page_index(snapshot: Snapshot | None, stop: threading.Event | None = None) -> bytes | None:
    """The page index of a snapshot's database: its sidecar when the manifest vouches for it (sha256),
    else computed from the database file; None without a database to index."""
    if snapshot is None or snapshot.manifest is None or snapshot.manifest.file(DATABASE) is None:
        return None
    database = snapshot.path / DATABASE
    if not database.is_file():
        return None
    noted = snapshot.manifest.extra.get("page_index")
    sidecar = snapshot.path / PAGE_INDEX
    if isinstance(noted, dict) and sidecar.is_file():
        stored = sidecar.read_bytes()
        if hashlib.sha256(stored).hexdigest() == noted.get("sha256"):
            return stored
    try:
        return sqlite.page_index(str(database), stop)
    except (OSError, ValueError):
        return None


@dataclass
class PendingIndex:
    """stored_page_index(snapshot), worked out in a thread while the server makes its copy (hashlib
    lets go of the GIL while it hashes a page); dropped at once when nothing needs it."""

    future: concurrent.futures.Future
    stop: threading.Event

    @classmethod
    def start(cls, snapshot: Snapshot | None) -> "PendingIndex":
        stop = threading.Event()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="page-index")
        try:
            return cls(pool.submit(stored_page_index, snapshot, stop), stop)
        finally:
            pool.shutdown(wait=False)

    def result(self) -> bytes | None:
        return self.future.result()

    def drop(self) -> None:
        self.stop.set()


def write_page_index(dest: Path, index: bytes) -> dict:
    """The sidecar index of dest's database (not one of the snapshot's files); its manifest note."""
    with space_needed(dest):
        write_atomic(dest / PAGE_INDEX, index)
    return {"sha256": hashlib.sha256(index).hexdigest(), "page_size": sqlite.parse_index(index)[0]}


def _server_delta(host: Host, profile: Profile, data: ServerData, base: Snapshot | None,
                  base_index: PendingIndex | None) -> tuple[dict, bytes] | None:
    """The server's copy compared page by page with `base`'s database: (what make_delta said, base
    index) when few enough pages changed to send only those, else None (then the whole file goes)."""
    if base is None:
        return None
    if base_index is None:
        index = stored_page_index(base)
    else:
        with ui.err.status(f"reading the pages of {base.id}"):
            index = base_index.result()
    if index is None:
        return None
    channel = host.root_channel(data_commands.write_base_index(profile, data.work_dir))
    try:
        channel.write(index)
        channel.finish("sending the page index")
    finally:
        channel.close()
    with ui.err.status(f"comparing the server database page by page with {base.id}"):
        out = host.run(data_commands.make_delta(profile, data.work_dir), sudo=True, check=False,
                       what="comparing pages on the server")
    found = (out.answer() if out.ok else None) or {}
    if not found.get("usable"):
        ui.out.print(f"  whole database sent: {found.get('why') or out.last_line() or 'no page comparison'}")
        return None
    if found["changed"] > found["pages"] * DELTA_MAX_SHARE:
        ui.out.print(f"  whole database sent: {found['changed']} of {found['pages']} pages changed since {base.id}")
        return None
    return found, index


def _stream(host: Host, profile: Profile, data: ServerData, dest: Path, fetch: list, *, delta: bool) -> dict:
    """One compressed tar of `fetch` ([(name, size, ...)]) from the server into dest: {name: (size, sha256)}."""
    codec = server_codec(host)
    listed = [f[0] for f in fetch if f[0] not in (DATABASE, DELTA)]
    with_database = any(f[0] == DATABASE for f in fetch)
    if listed:
        send_file_list(host, profile, data.work_dir, listed)
    command = data_commands.stream_snapshot(profile, data.work_dir, codec.name, database=with_database and not delta,
                                            listed_files=bool(listed), delta=delta, data_dir=data.data_dir)
    expected = {(DELTA if delta and f[0] == DATABASE else f[0]): f[1] for f in fetch}
    total = sum(expected.values())
    started = time.monotonic()
    channel = host.root_channel(command)
    try:
        received = receive_tar(channel, codec, dest, total=total, description=f"backup {host.alias}",
                               expected=expected)
        channel.finish("streaming the snapshot")
    finally:
        channel.close()
    ui.transfer_summary("downloaded", total, time.monotonic() - started, wire=channel.received)
    return received


def _assemble(base: Snapshot, dest: Path, index: bytes) -> tuple[tuple[int, str], bytes] | None:
    """dest's database built from base's plus the received pages (the delta then goes); None when the
    delta does not fit the base."""
    delta = dest / DELTA
    try:
        with ui.err.status(f"building the database from {base.id} and the changed pages"), space_needed(dest):
            built = sqlite.apply_delta(str(base.path / DATABASE), str(delta), str(dest / DATABASE), index)
    except (ValueError, OSError) as exc:
        if disk_full(exc):
            raise
        ui.warn(f"the changed pages do not fit {base.id} ({exc})")
        (dest / DATABASE).unlink(missing_ok=True)
        return None
    finally:
        delta.unlink(missing_ok=True)
    return (built["size"], built["sha256"]), built["index"]


def _server_sha256(host: Host, profile: Profile, data: ServerData) -> str:
    """The sha256 the server worked out of its copy, beside the stream (sqlite.hash_in_background)."""
    found = host.run_json(data_commands.read_server_hash(profile, data.work_dir), sudo=True,
                          what="reading the copy's sha256")
    if "error" in found or not isinstance(found.get("sha256"), str):
        raise SnapshotError(f"hashing the database copy failed on {host.alias}: {found.get('error') or found}")
    return found["sha256"]


def _why_it_differs(base: Snapshot) -> str:
    entry = base.manifest.file(DATABASE)
    if sqlite.sha256_file(str(base.path / DATABASE)) != entry.sha256:
        return f"the database of {base.id} is damaged (its sha256 differs from its manifest)"
    return f"the page index of {base.id} does not match its database"


def download_snapshot(host: Host, profile: Profile, data: ServerData, dest: Path, *, media: bool,
                      previous: Snapshot | None, base_index: PendingIndex | None = None) -> Downloaded:
    """Bring what changed since `previous` into `dest`; hard-link what did not. A changed database
    comes as its changed pages when `previous` has it (then rebuilt here into a complete file), else
    whole. The server hashes its copy in the background; the sha256 is compared with the file here,
    and a rebuilt file that differs is replaced by the whole one, saying why. The database is then
    pending: its integrity_check runs here afterwards (checking.py). A database that came whole gets
    its page index when it is first a base (not on this critical path)."""
    info = data.info
    reuse = _reusable(previous)
    unchanged_db = bool(info.get("unchanged"))
    wanted: list[tuple[str, int | None, str | None, int | None]] = []
    if unchanged_db:
        old = reuse[DATABASE]
        wanted.append((DATABASE, old.size, old.sha256, None))
    else:
        wanted.append((DATABASE, info["database"]["size"], None, None))
    if "env" in info:
        wanted.append((SECRET_ENV, info["env"]["size"], info["env"]["sha256"], None))
    if media:
        wanted += [(m["path"], m["size"], None, m["mtime"]) for m in info["media"]]

    linked, fetch = catalog.link_unchanged(wanted, previous, dest)

    extra: dict = {}
    with_database = any(f[0] == DATABASE for f in fetch)
    delta = _server_delta(host, profile, data, previous, base_index) if with_database else None
    received: dict[str, tuple[int, str]] = {}
    index: bytes | None = None
    if fetch:
        received = _stream(host, profile, data, dest, fetch, delta=delta is not None)
    if delta is not None:
        found, base_pages = delta
        built = _assemble(previous, dest, base_pages)
        if built is not None:
            received[DATABASE], index = built
            ui.out.print(f"  database: {found['changed']} of {found['pages']} pages changed since {previous.id}; "
                         f"rebuilt here into a complete file")
    server_sha = _server_sha256(host, profile, data) if with_database else None
    if delta is not None and received.get(DATABASE, (0, None))[1] != server_sha:
        why = (_why_it_differs(previous) if DATABASE in received
               else "the changed pages could not be applied to it")
        ui.warn(f"{why}: fetching the whole database instead")
        (dest / DATABASE).unlink(missing_ok=True)
        entry = next(f for f in fetch if f[0] == DATABASE)
        received.update(_stream(host, profile, data, dest, [entry], delta=False))
        index = None

    entries = list(linked) + catalog.received_entries(fetch, received, host.alias,
                                                      expected={DATABASE: server_sha})
    if index is not None:
        extra["page_index"] = write_page_index(dest, index)
    if linked:
        ui.out.print(f"  {len(linked)} unchanged file(s) hard-linked from {previous.id} "
                     f"({ui.human_bytes(sum(f.size for f in linked))} not transferred)")
    if unchanged_db:
        m = previous.manifest
        report = {"integrity_check": m.integrity_check, "counts": m.counts, "label_studio": True, "error": None,
                  "missing_tables": []}
        noted = m.extra.get("page_index")
        if isinstance(noted, dict) and (previous.path / PAGE_INDEX).is_file():
            link_or_copy(previous.path / PAGE_INDEX, dest / PAGE_INDEX)
            extra["page_index"] = noted
        ui.out.print(f"  the database has not changed since {previous.id} (SQLite change counter)")
    else:
        report = {"integrity_check": catalog.PENDING, "counts": {}}   # checking.py's, on this machine
    return Downloaded(sorted(entries, key=lambda f: f.path), report, extra)


def refuse_other_database(host: Host, profile: Profile) -> None:
    """The data tasks act on the database the profile names: when the server's env file says Label
    Studio runs on another one (the profile edited without migrate-db, or back), they would copy or
    replace data it does not use (after a move to PostgreSQL the old SQLite file is still there)."""
    env = host.run(read_file(profile.remote.env_file), sudo=True, what="reading the env file").stdout or None
    problem = database.mismatch(database.server_settings(env), database.server_engine(env), profile.database,
                                has_data=True, alias=host.alias, config=profile.config_file,
                                why=database.DATA_TASKS_REFUSE)
    if problem:
        raise UsageError(problem[0], hint=problem[1] or None)


def take_snapshot(host: Host, profile: Profile, *, label: str | None, media: bool = True,
                  label_studio_version: str | None = None, offsite: OffsitePoint | None = None) -> Snapshot:
    """A SQLite server's backup (callers hold the locks): consistent copy on the server -> snapshot folder
    here proven byte-identical to it, manifest last; pending until its check (checking.py) unless the
    database is the verified base's. A failure leaves no half snapshot behind. The version is read
    from the profile's venv unless given (adopt: the unmanaged instance's own venv). `offsite`: the data
    restored on the server from its offsite target instead of the live data (backup --from-offsite)."""
    host_dir = profile.backups_dir()
    previous = checking.newest_base(host_dir)
    base_index = PendingIndex.start(previous)
    try:
        return _take(host, profile, label, media, host_dir, previous, base_index, label_studio_version, offsite)
    finally:
        base_index.drop()  # unneeded (an unchanged database, a failure): the thread stops at once


def restore_offsite_point(host: Host, profile: Profile, folder: PurePosixPath, point: OffsitePoint) -> None:
    """The database (Litestream) and .env and media (restic) of an offsite point, restored on the server
    into `folder`, the service user's, laid out like the data dir."""
    host.run(as_service_user(profile, "mkdir", "-m", "0700", "--", folder), sudo=True, what="a folder for the restore")
    where = point.source.settings.parsed.describe()
    with ui.err.status(f"restoring the database from {where} on the server"):
        host.run(offsite_commands.restore_into_incoming(profile, folder, point.timestamp, point.source), sudo=True,
                 what="restoring from the offsite target", timeout=None)
    if point.files:
        with ui.err.status(f"restoring .env and media (restic snapshot {point.files[:8]}) on the server"):
            host.run(offsite_commands.restore_files_into_incoming(profile, folder, point.files, point.source),
                     sudo=True, what="restoring .env and media from the offsite target", timeout=None)
    ui.step(True, f"restored {where} ({point.timestamp or 'its newest point'}) on the server (integrity_check passed)")


def _take(host: Host, profile: Profile, label: str | None, media: bool, host_dir: Path, previous: Snapshot | None,
          base_index: PendingIndex, label_studio_version: str | None, offsite: OffsitePoint | None) -> Snapshot:
    with server_work_dir(host, profile, "backup") as work_dir:
        restored = None
        if offsite is not None:
            restored = work_dir / "offsite"
            restore_offsite_point(host, profile, restored, offsite)
        data = prepare_server_copy(host, profile, work_dir, previous, data_dir=restored)
        if data.info.get("unchanged"):
            base_index.drop()
        with catalog.new_snapshot(host_dir, label) as pending:
            got = download_snapshot(host, profile, data, pending.path, media=media, previous=previous,
                                    base_index=base_index)
            files, report = got.files, got.report
            pending.manifest = Manifest(
                host=host.alias,
                created=pending.created,
                label=label,
                label_studio_version=label_studio_version or data.info.get("label_studio_version"),
                source={"host": host.alias, "address": profile.address, "data_dir": str(profile.remote.data_dir),
                        # A restored file's change counter says nothing of the live one's: never a base for "unchanged".
                        "database": str(profile.remote.database), "marker": None if offsite else data.info.get("marker"),
                        **({"offsite": offsite.describe()} if offsite else {})},
                files=files,
                integrity_check=report["integrity_check"] or "unknown",
                counts=report.get("counts", {}),
                media_included=media,
                extra=got.extra,
            )
    return pending.snapshot
