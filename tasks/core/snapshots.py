"""Taking, checking and installing snapshots, on the server side and on this machine.

Rules kept here: a snapshot is consistent (SQLite online backup, never a raw copy of a live file), is
checked (integrity_check, Label Studio tables, sha256 end to end) and gets its manifest last. Local data
is never replaced before a verified copy of it exists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from . import catalog, sqlite, ui
from .catalog import DATABASE, MEDIA, SECRET_ENV, FileEntry, Manifest, Snapshot
from .commands import data as data_commands
from .connect import Host
from .errors import LockedError, RemoteError, SnapshotError
from .profile import Profile
from .transfer import check_free_space, receive_tar, server_codec

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


def server_counts(host: Host, profile: Profile) -> dict | None:
    """Row counts of the live server database (read-only, no integrity check), None without one."""
    out = host.run(data_commands.server_counts(profile), sudo=True,
                   what="reading server counts").stdout.strip()
    return json.loads(out) if out else None


def server_migrations(host: Host, profile: Profile) -> dict | None:
    """The live server database's Django migrations, {app: [names]} or {"error": ...}; None if no answer."""
    out = host.run(data_commands.server_migrations(profile), sudo=True,
                   what="reading the server's migrations").stdout.strip()
    try:
        return json.loads(out.splitlines()[-1]) if out else None
    except ValueError:
        return None


@contextlib.contextmanager
def server_work_dir(host: Host, profile: Profile, purpose: str) -> Iterator[PurePosixPath]:
    """A private temp folder on the server, the service user's (it does the work there), removed
    afterwards whatever happens. Callers hold the data lock, so any other lsvm-* folder there is a
    leftover of a run that died: removed too."""
    base = profile.backup.server_tmp_dir
    out = host.run(data_commands.make_work_dir(profile, purpose), sudo=True, check=False,
                   what="creating a temp folder on the server")
    if not out.ok:
        raise SnapshotError(f"cannot create a temp folder in {base} on {host.alias}: {out.last_line()}")
    path = PurePosixPath(out.stdout.strip())
    try:
        yield path
    finally:
        host.run(data_commands.remove_work_dir(profile, path), sudo=True, check=False)


def prepare_server_copy(host: Host, profile: Profile, work_dir: PurePosixPath,
                        previous: Snapshot | None) -> ServerData:
    """Consistent copy of the live database into work_dir, skipped when SQLite's change counter says
    the database is the one in `previous`."""
    p = profile.remote
    size = host.run(data_commands.file_size(profile, p.database), sudo=True).stdout.strip()
    check_free_space(host, work_dir, int(size or 0) + 1024 * 1024, "a consistent copy of the database")
    marker = json.dumps(previous.manifest.source.get("marker")) if previous and previous.manifest else "null"
    with ui.err.status("consistent copy of the server database (SQLite online backup)"):
        out = host.run(data_commands.prepare_copy(profile, work_dir, marker), sudo=True, check=False,
                       what="snapshot on the server")
    if not out.ok:
        if "No space" in out.stderr or "disk is full" in out.stderr:
            raise SnapshotError(f"the server's temp space ({work_dir.parent}) is full", hint="free some space")
        raise SnapshotError(f"snapshot on {host.alias} failed: {out.last_line()}")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    if not info.get("database_exists"):
        raise SnapshotError(f"there is no Label Studio database on {host.alias} yet ({p.database})")
    if "copy_error" in info:
        error = info["copy_error"]
        if "full" in error or "space" in error:
            raise SnapshotError(f"the server's temp space ({work_dir.parent}) is full while copying the database",
                                hint="free some space, or set backup.server_tmp_dir in the profile")
        raise SnapshotError(f"the consistent copy of the database failed on {host.alias}: {error}")
    return ServerData(work_dir, info)


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


def download_snapshot(host: Host, profile: Profile, data: ServerData, dest: Path, *, media: bool,
                      previous: Snapshot | None) -> tuple[list[FileEntry], dict]:
    """Stream what changed since `previous` into `dest`; hard-link what did not. The copy's sha256 and
    integrity check run on the server beside the stream; the sha256 is compared with the bytes that
    landed here. Returns the files and the database's check report."""
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

    linked: list[FileEntry] = []
    fetch: list[tuple[str, int, str | None, int | None]] = []
    for path, size, sha, mtime in wanted:
        old = reuse.get(path)
        same = old is not None and old.size == size and (
            (sha is not None and old.sha256 == sha) or (sha is None and mtime is not None and old.mtime == mtime))
        if same:
            catalog.link_or_copy(previous.path / path, dest / path)
            linked.append(old)
        else:
            fetch.append((path, size, sha, mtime))

    received: dict[str, tuple[int, str]] = {}
    check: dict = {}
    if fetch:
        codec = server_codec(host)
        names_from_data = [f[0] for f in fetch if f[0] != DATABASE]
        with_database = any(f[0] == DATABASE for f in fetch)
        if names_from_data:
            send_file_list(host, profile, data.work_dir, names_from_data)
        command = data_commands.stream_snapshot(profile, data.work_dir, codec.name,
                                                database=with_database, listed_files=bool(names_from_data))
        total = sum(f[1] for f in fetch)
        started = time.monotonic()
        channel = host.root_channel(command)
        try:
            received = receive_tar(channel, codec, dest, total=total, description=f"backup {host.alias}",
                                   expected={f[0]: f[1] for f in fetch})
            channel.finish("streaming the snapshot")
        finally:
            channel.close()
        ui.transfer_summary("downloaded", total, time.monotonic() - started, wire=channel.received)
        if with_database:
            out = host.run(data_commands.read_check_report(profile, data.work_dir), sudo=True,
                           what="reading the check").stdout
            check = json.loads(out.strip().splitlines()[-1])

    entries = list(linked)
    for path, size, sha, mtime in fetch:
        got = received.get(path)
        if got is None:
            if path.startswith(MEDIA + "/"):
                continue  # deleted on the server between listing and streaming
            raise SnapshotError(f"{path} did not arrive from {host.alias}")
        expected = check.get("sha256") if path == DATABASE else sha
        if expected is not None and got[1] != expected:
            raise SnapshotError(f"{path}: sha256 differs between {host.alias} and this machine (transfer corrupted)")
        entries.append(FileEntry(path, got[0], got[1], mtime))
    if linked:
        ui.out.print(f"  {len(linked)} unchanged file(s) hard-linked from {previous.id} "
                     f"({ui.human_bytes(sum(f.size for f in linked))} not transferred)")
    if unchanged_db:
        m = previous.manifest
        report = {"integrity_check": m.integrity_check, "counts": m.counts, "label_studio": True, "error": None,
                  "missing_tables": []}
        ui.out.print(f"  the database has not changed since {previous.id} (SQLite change counter)")
    else:
        report = check["report"]
    return sorted(entries, key=lambda f: f.path), report


def take_server_snapshot(host: Host, profile: Profile, *, label: str | None, media: bool = True,
                         label_studio_version: str | None = None) -> Snapshot:
    """The body of `backup` (callers hold the locks): consistent copy on the server -> verified
    snapshot folder here, manifest last. A failure leaves no half snapshot behind. The version is read
    from the profile's venv unless given (adopt: the unmanaged instance's own venv)."""
    host_dir = profile.backups_dir()
    previous = next((s for s in reversed(catalog.list_snapshots(host_dir)) if s.verified), None)
    with server_work_dir(host, profile, "backup") as work_dir:
        data = prepare_server_copy(host, profile, work_dir, previous)
        dest = catalog.new_snapshot_dir(host_dir, label)
        try:
            files, report = download_snapshot(host, profile, data, dest, media=media, previous=previous)
            problem = sqlite.describe_problem(report)
            if problem:
                ui.warn(f"the server database is {problem}; keeping the snapshot anyway, marked unverified")
            manifest = Manifest(
                host=host.alias,
                created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                label=label,
                label_studio_version=label_studio_version or data.info.get("label_studio_version"),
                source={"host": host.alias, "address": profile.address, "data_dir": str(profile.remote.data_dir),
                        "database": str(profile.remote.database), "marker": data.info.get("marker")},
                files=files,
                integrity_check=report["integrity_check"] or "unknown",
                counts=report.get("counts", {}),
                media_included=media,
            )
            catalog.write_manifest(dest, manifest)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return next(s for s in catalog.list_snapshots(host_dir) if s.path == dest)
