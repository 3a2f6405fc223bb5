"""Taking snapshots of a SQLite server: the data lock, the one-channel backup (sqlite.serve_backup on the
server, this side here), counts and migrations of the live database.

Rules kept here: a snapshot is consistent (SQLite online backup, or a copy under SQLite's shared lock,
never a copy of a file being written), byte-identical to the server's copy (sha256 on both ends), and
gets its manifest last; it is then pending until its check here (checking.py) says verified or failed.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import socket
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from tasks.core import database, ui
from tasks.core.commands import as_service_user, dbcheck, read_file
from tasks.core.commands import data as data_commands
from tasks.core.commands import offsite as offsite_commands
from tasks.core.connect import CHUNK, Host, removed_afterwards
from tasks.core.data import bucket_media, catalog, checking
from tasks.core.data.catalog import FileEntry, Manifest, Snapshot
from tasks.core.defaults import DATABASE, SECRET_ENV
from tasks.core.errors import LockedError, RemoteError, SnapshotError, UsageError
from tasks.core.files import disk_full, space_needed
from tasks.core.onserver import sqlite
from tasks.core.profile import Profile
from tasks.core.transfer import Codec, check_free_space, receive_tar

DELTA = data_commands.DELTA
# More changed pages than this share of the database: the whole file goes (a delta would be as big,
# and a database that shares little with the base is another history).
DELTA_MAX_SHARE = sqlite.DELTA_MAX_SHARE   # the server's rule too: it writes no copy when a delta will do

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
                        previous: Snapshot | None) -> ServerData:
    """Consistent copy of the live database into work_dir (to migrate, or adopt's comparison), skipped
    when SQLite's change counter says the database is the one in `previous`."""
    database = profile.remote.database
    size = host.run(data_commands.file_size(profile, database), sudo=True).stdout.strip()
    check_free_space(host, work_dir, int(size or 0) + 1024 * 1024, "a consistent copy of the database")
    marker = json.dumps(previous.manifest.source.get("marker")) if previous and previous.manifest else "null"
    with ui.err.status("consistent copy of the server database (SQLite online backup)"):
        out = host.run(data_commands.prepare_copy(profile, work_dir, marker), sudo=True, check=False,
                       what="snapshot on the server")
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
    return ServerData(work_dir, info)


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
    """What download_snapshot brought: the files, the database's report (pending unless it is the base's),
    what the server said (marker, version), manifest extras (the timeline)."""

    files: list[FileEntry]
    report: dict
    info: dict
    extra: dict


def stored_page_index(snapshot: Snapshot | None) -> bytes | None:
    """The page index of a snapshot's database, worked out from the file (for a server that kept none,
    and for push); None without a database to index."""
    if snapshot is None or snapshot.manifest is None or snapshot.manifest.file(DATABASE) is None:
        return None
    database = snapshot.path / DATABASE
    if not database.is_file():
        return None
    try:
        return sqlite.page_index(str(database))
    except (OSError, ValueError):
        return None


def _answer(channel, alias: str) -> dict:
    """One answer of serve_backup: a length on a line, then that much JSON."""
    head = channel.read_line().strip()
    data = b""
    if head.isdigit() and int(head) <= 256 * 1024 * 1024:
        while len(data) < int(head):
            chunk = channel.read(min(CHUNK, int(head) - len(data)))
            if not chunk:
                break
            data += chunk
    try:
        found = json.loads(data) if data else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        channel.finish("the backup on the server")     # a failure says what it was
        raise SnapshotError(f"the backup on {alias} gave no answer ({head[:200] or 'nothing'})")
    return found


def _say(channel, answer: dict) -> None:
    channel.write((json.dumps(answer) + "\n").encode())


def _refuse_what_the_server_found(info: dict, host: Host, profile: Profile, data_dir: PurePosixPath | None) -> None:
    if not info.get("database_exists"):
        database = (data_dir / DATABASE) if data_dir else profile.remote.database
        raise SnapshotError(f"there is no Label Studio database on {host.alias} yet ({database})")
    if "copy_error" in info:
        error = info["copy_error"]
        where = profile.backup.server_tmp_dir
        if "No space" in error or "full" in error or "space" in error:
            raise SnapshotError(f"the server's temp space ({where}) is full while copying the database: {error}",
                                hint="free some space, or set backup.server_tmp_dir in the profile")
        raise SnapshotError(f"the consistent copy of the database failed on {host.alias}: {error}")


def _choose_database(info: dict, base: Snapshot | None) -> str:
    """"delta" when few enough pages changed since `base` to send only those, else "whole" (saying why)."""
    delta = info.get("delta")
    if base is None or base.manifest.file(DATABASE) is None:
        return "whole"
    if delta is None:
        ui.out.print(f"  whole database sent: {info.get('delta_why') or 'no page comparison'}")
        return "whole"
    if delta["changed"] > delta["pages"] * DELTA_MAX_SHARE:
        ui.out.print(f"  whole database sent: {delta['changed']} of {delta['pages']} pages changed since {base.id}")
        return "whole"
    return "delta"


def _assemble(base: Snapshot, dest: Path) -> tuple[int, str] | None:
    """dest's database: base's cloned, the received pages written in (the delta then goes); None when the
    delta does not fit the base."""
    delta = dest / DELTA
    try:
        with space_needed(dest):
            built = sqlite.apply_delta(str(base.path / DATABASE), str(delta), str(dest / DATABASE),
                                           durable=False)   # fsynced beside its check (checking.verdict)
    except (ValueError, OSError) as exc:
        if disk_full(exc):
            raise
        ui.warn(f"the changed pages do not fit {base.id} ({exc})")
        (dest / DATABASE).unlink(missing_ok=True)
        return None
    finally:
        delta.unlink(missing_ok=True)
    return built["size"], built["sha256"]


def _why_it_differs(base: Snapshot) -> str:
    entry = base.manifest.file(DATABASE)
    if sqlite.sha256_file(str(base.path / DATABASE)) != entry.sha256:
        return f"the database of {base.id} is damaged (its sha256 differs from its manifest)"
    return f"the changed pages do not rebuild the server's copy from {base.id}"


def _serve(host: Host, profile: Profile, dest: Path, request: dict, choose, *, work_dir: PurePosixPath | None,
           data_dir: PurePosixPath | None, base: Snapshot | None) -> tuple[dict, dict, dict]:
    """One serve_backup channel: the request, the page index if the server asks for it, its findings,
    `choose(findings)` -> (choice, {name in the stream: announced size}), the stream into dest. Returns
    (findings, what was received, seconds on the wire)."""
    channel = host.root_channel(data_commands.serve_backup(profile, work_dir=work_dir, data_dir=data_dir))
    try:
        _say(channel, request)
        with ui.err.status("consistent copy of the server database, its sha256 and page digests (on the server)"):
            info = _answer(channel, host.alias)
            if info.get("need_index"):
                index = stored_page_index(base) or b""
                channel.write(len(index).to_bytes(8, "big") + index)
                info = _answer(channel, host.alias)
        _refuse_what_the_server_found(info, host, profile, data_dir)
        if info.get("codec") not in ("zstd", "gzip"):
            raise SnapshotError(f"the backup on {host.alias} names no known compression ({info.get('codec')!r})")
        choice, expected = choose(info)
        _say(channel, choice)
        total = sum(expected.values())
        started = time.monotonic()
        try:
            received = receive_tar(channel, Codec(info["codec"]), dest, total=total, description=f"backup {host.alias}",
                                   expected=expected, unsynced=frozenset({DATABASE}))   # checking.verdict fsyncs it
        except tarfile.TarError as exc:
            channel.finish("the backup on the server")       # a failure there says what it was
            raise SnapshotError(f"the backup stream from {host.alias} was cut short ({exc})",
                                hint="try again; `fab status` shows whether the server is well") from None
        channel.finish("the backup on the server")
    finally:
        channel.close()
    wire = time.monotonic() - started
    ui.transfer_summary("downloaded", total, wire, wire=channel.received)
    return info, received, {"wire": wire}


def download_snapshot(host: Host, profile: Profile, dest: Path, *, media: bool, previous: Snapshot | None,
                      work_dir: PurePosixPath | None = None, data_dir: PurePosixPath | None = None,
                      managed: bool = True) -> Downloaded:
    """A backup on one channel (serve_backup): what changed since `previous` comes into `dest`, what did
    not is hard-linked. A changed database comes as its changed pages when the server compared them with
    `previous`'s (it keeps the page index of its last copies), rebuilt here on a clone of the base; else
    whole. Its sha256 (the server's, worked out in the same read as the page digests) must equal the
    file's here; a rebuilt file that differs is replaced by the whole one, saying why. The database is
    then pending: its check runs here afterwards (checking.py). `data_dir`: the offsite restore (no
    change marker: always copied). `managed` False: the data dir is not the toolkit's (adopt), so the
    server keeps no page index in it."""
    base = previous if previous is not None and previous.manifest is not None else None
    entry = base.manifest.file(DATABASE) if base else None
    request = {"marker": None if data_dir or base is None else base.manifest.source.get("marker"),
               "base": entry.sha256 if entry else None, **({} if managed else {"keep": False})}
    decided: dict = {}

    def choose(info: dict) -> tuple[dict, dict]:
        wanted: list = [(DATABASE, entry.size, entry.sha256, None) if info.get("unchanged")
                        else (DATABASE, info["database"]["size"], None, None)]
        if "env" in info:
            wanted.append((SECRET_ENV, info["env"]["size"], info["env"]["sha256"], None))
        if media:
            wanted += [(m["path"], m["size"], None, m["mtime"]) for m in info["media"]]
        decided["linked"], decided["fetch"] = catalog.link_unchanged(wanted, base, dest)
        fetch = decided["fetch"]
        database = _choose_database(info, base) if any(f[0] == DATABASE for f in fetch) else None
        decided["database"] = database
        expected = {f[0]: f[1] for f in fetch if f[0] != DATABASE}
        if database == "delta":
            expected[DELTA] = info["delta"]["size"]
        elif database == "whole":
            expected[DATABASE] = info["database"]["size"]
        return {"database": database, "files": [f[0] for f in fetch if f[0] != DATABASE]}, expected

    info, received, timeline = _serve(host, profile, dest, request, choose, work_dir=work_dir, data_dir=data_dir,
                                      base=base)
    linked, fetch = decided["linked"], decided["fetch"]
    timeline.update(info.get("timeline", {}))
    if info.get("copy") == "raw copy under a shared lock":
        ui.out.print(f"  writers' lock held {info['timeline'].get('server copy', 0):.2f}s (the server's consistent copy)")
    server_sha = (info.get("database") or {}).get("sha256")
    if decided["database"] == "delta":
        if DELTA not in received:
            raise SnapshotError(f"the changed pages did not arrive from {host.alias}")
        started = time.monotonic()
        with ui.err.status(f"building the database on a clone of {base.id} with the changed pages"):
            built = _assemble(base, dest)
        timeline["rebuild"] = time.monotonic() - started
        if built is not None:
            received[DATABASE] = built
            ui.out.print(f"  database: {info['delta']['changed']} of {info['delta']['pages']} pages changed since "
                         f"{base.id}; rebuilt here into a complete file")
        if received.get(DATABASE, (0, None))[1] != server_sha:
            ui.warn(f"{_why_it_differs(base) if built else 'the changed pages could not be applied to it'}: "
                    "fetching the whole database instead")
            (dest / DATABASE).unlink(missing_ok=True)
            info, received[DATABASE], again = _whole_database(host, profile, dest, work_dir, data_dir)
            server_sha = info["database"]["sha256"]
            timeline["wire"] += again["wire"]

    entries = list(linked) + catalog.received_entries(fetch, received, host.alias, expected={DATABASE: server_sha})
    if linked:
        ui.out.print(f"  {len(linked)} unchanged file(s) hard-linked from {base.id} "
                     f"({ui.human_bytes(sum(f.size for f in linked))} not transferred)")
    if info.get("unchanged"):
        m = base.manifest
        report = {"integrity_check": m.integrity_check, "counts": m.counts}
        ui.out.print(f"  the database has not changed since {base.id} (SQLite change counter)")
    else:
        report = {"integrity_check": catalog.PENDING, "counts": {}}   # checking.py's, on this machine
    extra = {"timeline": {k: round(v, 3) for k, v in timeline.items()}}
    return Downloaded(sorted(entries, key=lambda f: f.path), report, info, extra)


def _whole_database(host: Host, profile: Profile, dest: Path, work_dir: PurePosixPath | None,
                    data_dir: PurePosixPath | None) -> tuple[dict, tuple[int, str], dict]:
    """A second channel for the whole database alone (a new consistent copy): (findings, (size, sha256),
    timeline); SnapshotError when its sha256 differs too."""
    def choose(info: dict) -> tuple[dict, dict]:
        return {"database": "whole", "files": []}, {DATABASE: info["database"]["size"]}

    info, received, timeline = _serve(host, profile, dest, {"marker": None, "base": None}, choose,
                                      work_dir=work_dir, data_dir=data_dir, base=None)
    got = received.get(DATABASE)
    if got is None or got[1] != info["database"]["sha256"]:
        raise SnapshotError(f"{DATABASE}: sha256 differs between {host.alias} and this machine (transfer corrupted)")
    return info, got, timeline


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
                  label_studio_version: str | None = None, offsite: OffsitePoint | None = None,
                  managed: bool = True) -> Snapshot:
    """A SQLite server's backup (callers hold the locks): consistent copy on the server -> snapshot folder
    here proven byte-identical to it, manifest last; pending until its check (checking.py) unless the
    database is the verified base's. A failure leaves no half snapshot behind. The version is read from
    the profile's venv unless given (adopt: the unmanaged instance's own venv). `offsite`: the data
    restored on the server from its offsite target instead of the live data (backup --from-offsite).
    `managed` False: a data dir not the toolkit's (adopt): nothing is left in it."""
    host_dir = profile.backups_dir()
    previous = checking.newest_base(host_dir)
    with contextlib.ExitStack() as stack:
        work_dir = restored = listing = None
        if offsite is not None:
            work_dir = stack.enter_context(server_work_dir(host, profile, "backup"))
            restored = work_dir / "offsite"
            restore_offsite_point(host, profile, restored, offsite)
            listing = bucket_media.read_listing(host, profile, restored) if offsite.files else None
        with catalog.new_snapshot(host_dir, label) as pending:
            got = download_snapshot(host, profile, pending.path, media=media, previous=previous, work_dir=work_dir,
                                    data_dir=restored, managed=managed)
            pending.manifest = Manifest(
                host=host.alias,
                created=pending.created,
                label=label,
                label_studio_version=label_studio_version or got.info.get("label_studio_version"),
                source={"host": host.alias, "address": profile.address, "data_dir": str(profile.remote.data_dir),
                        # A restored file's change counter says nothing of the live one's: never a base for "unchanged".
                        "database": str(profile.remote.database), "marker": None if offsite else got.info.get("marker"),
                        **({"offsite": offsite.describe()} if offsite else {})},
                files=got.files,
                integrity_check=got.report["integrity_check"] or "unknown",
                counts=got.report.get("counts", {}),
                media_included=media,
                extra=got.extra,
            )
    if listing is not None:     # the bucket's objects as the offsite snapshot of .env and media recorded them
        return bucket_media.record_listing(pending.snapshot, listing, listing["where"])
    return pending.snapshot


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
