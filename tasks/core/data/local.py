"""Label Studio data on this machine: where it is, whether a local Label Studio uses it, saving it as
a snapshot, checking snapshots, and installing one in place without a half-written file ever being seen.
Local data is never replaced before a verified copy of it exists."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sqlite3 as sqlite3_module
from pathlib import Path
from typing import Iterator

import platformdirs

from tasks.core import ui
from tasks.core.data import catalog, checking
from tasks.core.data.catalog import LOCAL_HOST, FileEntry, Manifest, Snapshot, private_dir
from tasks.core.database import snapshot_engine
from tasks.core.defaults import DATABASE, MEDIA, SECRET_ENV
from tasks.core.errors import LockedError, SnapshotError, UsageError
from tasks.core.files import disk_full, space_needed, write_atomic, write_private
from tasks.core.onserver import sqlite
from tasks.core.profile import backups_root

DATA_DIR_ENV = "LABEL_STUDIO_BASE_DATA_DIR"
LAST_INSTALL = "last-install.json"


@contextlib.contextmanager
def local_lock(directory: Path) -> Iterator[None]:
    """One data task at a time per snapshot folder on this machine (prune waits for a backup)."""
    with space_needed(directory):
        private_dir(directory)
        handle = open(directory / ".lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"another task is using {directory} on this machine; try again when it ends") from None
        yield
    finally:
        handle.close()


def default_local_data_dir(env: dict | None = None) -> Path:
    """Where Label Studio itself keeps data on this machine."""
    env = os.environ if env is None else env
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]).expanduser()
    return Path(platformdirs.user_data_dir("label-studio", appauthor=False))


def local_data_dir(option: str | None) -> Path:
    return Path(option).expanduser() if option else default_local_data_dir()


def running_label_studio(data_dir: Path) -> list[int]:
    """PIDs of Label Studio processes on this machine that use `data_dir` (Linux /proc)."""
    pids = []
    target = data_dir.resolve()
    default = default_local_data_dir({}).resolve()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args if a]
        if not any("label-studio" in w or "label_studio" in w for w in words[:3]):
            continue
        if not any(w in ("start", "label-studio") or w.endswith("/label-studio") for w in words):
            continue
        used = None
        if "--data-dir" in words and words.index("--data-dir") + 1 < len(words):
            used = Path(words[words.index("--data-dir") + 1])
        else:
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                for item in environ:
                    if item.startswith(DATA_DIR_ENV.encode() + b"="):
                        used = Path(item.split(b"=", 1)[1].decode())
            except OSError:
                pass
        try:
            resolved = (used or default).resolve()
        except OSError:
            continue
        if resolved == target:
            pids.append(int(entry.name))
    return pids


def snapshot_local_data(data_dir: Path, backups_root: Path, *, label: str, extra: dict | None = None,
                        media: bool = True, check: bool = True) -> tuple[Snapshot, dict] | tuple[None, None]:
    """Save the local Label Studio data (consistent DB copy + .env + media) as backups/local/<id>, with
    the database's check report. (None, None) when there is no local database to save. `check` False:
    the snapshot is stored pending, its integrity_check left to checking.check_pending (the report has
    the rest: its tables and counts)."""
    database = data_dir / DATABASE
    if not database.is_file():
        return None, None
    host_dir = backups_root / catalog.LOCAL_HOST
    with catalog.new_snapshot(host_dir, label) as pending, space_needed(pending.path):
        report = _save_into(pending, data_dir, extra, media, check)
    return pending.snapshot, report


def _save_into(pending: catalog.PendingSnapshot, data_dir: Path, extra: dict | None, media: bool,
               check: bool) -> dict:
    """The body of snapshot_local_data: files into the pending snapshot, its manifest; the database's check
    report."""
    dest = pending.path
    database = data_dir / DATABASE
    try:
        sqlite.consistent_copy(str(database), str(dest / DATABASE))
    except sqlite3_module.DatabaseError as exc:
        if disk_full(exc):
            raise
        raise SnapshotError(f"{database} is not a usable SQLite database ({exc})") from None
    os.chmod(dest / DATABASE, 0o600)
    checked = sqlite.check(str(dest / DATABASE), full=check)
    report = checked["report"]
    files = [FileEntry(DATABASE, (dest / DATABASE).stat().st_size, checked["sha256"])]
    env = data_dir / SECRET_ENV
    if env.is_file():
        files.append(_copy_private(env, dest / SECRET_ENV, SECRET_ENV))
    media_root = data_dir / MEDIA
    if media and media_root.is_dir():
        for item in sqlite.media_listing(str(media_root)):
            files.append(_copy_private(data_dir / item["path"], dest / item["path"], item["path"], item["mtime"]))
    pending.manifest = Manifest(
        host=catalog.LOCAL_HOST,
        created=pending.created,
        label=pending.label, label_studio_version=None,
        source={"host": socket.gethostname(), "data_dir": str(data_dir)},
        files=sorted(files, key=lambda f: f.path),
        integrity_check=(report["integrity_check"] or "unknown") if check else catalog.PENDING,
        counts=report.get("counts", {}), media_included=media, extra=extra or {},
    )
    return report


def _copy_private(source: Path, target: Path, rel: str, mtime: int | None = None) -> FileEntry:
    with open(source, "rb") as src:
        size, sha = write_private(target, src, chunk=sqlite.CHUNK)
    return FileEntry(rel, size, sha, mtime)


def verify_snapshot(snapshot: Snapshot) -> dict:
    """Re-hash every file against the manifest and run integrity_check on the database (a pending
    snapshot: its check, recorded in its manifest)."""
    manifest = snapshot.manifest
    if manifest is None:
        raise SnapshotError(f"snapshot {snapshot.id} is incomplete (no manifest)")
    if snapshot.pending:   # its first check is this one: run here now, or waited for
        checked = checking.require_verified(snapshot, by="a restore")
        return {"integrity_check": "ok", "counts": checked.manifest.counts, "label_studio": True, "error": None,
                "missing_tables": []}
    if not snapshot.verified:
        raise SnapshotError(f"snapshot {snapshot.id} failed its check ({manifest.integrity_check}): nothing uses it",
                            hint=f"it is kept for a look in {snapshot.path}")
    with ui.err.status(f"verifying snapshot {snapshot.id} (sha256 of every file, integrity_check)"):
        for entry in manifest.files:
            path = snapshot.path / entry.path
            if not path.is_file():
                raise SnapshotError(f"snapshot {snapshot.id}: {entry.path} is missing")
            if path.stat().st_size != entry.size or sqlite.sha256_file(str(path)) != entry.sha256:
                raise SnapshotError(f"snapshot {snapshot.id}: {entry.path} does not match its sha256 (damaged)")
        if snapshot_engine(manifest) == "postgresql":
            # The dump's sha256 (just checked) is its check here; restore-server compares the restored
            # database's row counts with the manifest's.
            return {"integrity_check": manifest.integrity_check, "counts": manifest.counts,
                    "label_studio": manifest.integrity_check == "ok", "error": None, "missing_tables": []}
        report = sqlite.inspect(str(snapshot.path / DATABASE))
    problem = sqlite.describe_problem(report)
    if problem:
        raise SnapshotError(f"snapshot {snapshot.id}: the database is {problem}")
    return report


INCOMING = (".lsvm-incoming.sqlite3", ".lsvm-incoming-media", ".lsvm-incoming.env")


def install_local(snapshot: Snapshot, data_dir: Path, *, with_env: bool) -> list[str]:
    """Put a verified snapshot's DB (+ media, + .env) into the local data dir: each part copied next to
    its place first, then renamed over it, so Label Studio never sees a half-written file. A full disk
    is a SnapshotError, with no half-copied part left behind."""
    try:
        with space_needed(data_dir):
            return _install_parts(snapshot, data_dir, with_env=with_env)
    except BaseException:
        for name in INCOMING:
            _remove(data_dir / name)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _install_parts(snapshot: Snapshot, data_dir: Path, *, with_env: bool) -> list[str]:
    """The body of install_local: database, then media, then (with_env) .env."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    done = []
    incoming = data_dir / INCOMING[0]
    shutil.copyfile(snapshot.path / DATABASE, incoming)
    os.chmod(incoming, 0o600)
    with open(incoming, "rb+") as handle:
        os.fsync(handle.fileno())
    for stale in ("-journal", "-wal", "-shm"):
        (data_dir / (DATABASE + stale)).unlink(missing_ok=True)
    os.replace(incoming, data_dir / DATABASE)
    done.append("database")
    source_media = snapshot.path / MEDIA
    if source_media.is_dir():
        staged = data_dir / INCOMING[1]
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(source_media, staged)
        old = data_dir / ".lsvm-replaced-media"
        shutil.rmtree(old, ignore_errors=True)
        if (data_dir / MEDIA).exists():
            os.replace(data_dir / MEDIA, old)
        os.replace(staged, data_dir / MEDIA)
        shutil.rmtree(old, ignore_errors=True)
        done.append("media")
    if with_env and (snapshot.path / SECRET_ENV).is_file():
        staged_env = data_dir / INCOMING[2]
        shutil.copyfile(snapshot.path / SECRET_ENV, staged_env)
        os.chmod(staged_env, 0o600)
        os.replace(staged_env, data_dir / SECRET_ENV)
        done.append(".env")
    return done


def database_sha(path: Path) -> str | None:
    return sqlite.sha256_file(str(path)) if path.is_file() else None


def require_no_local_server(data_dir: Path, force: bool) -> None:
    pids = running_label_studio(data_dir)
    if pids and not force:
        raise UsageError(f"a local Label Studio is running on {data_dir} (pid {', '.join(map(str, pids))})",
                         hint="stop it first (Ctrl-C in its terminal, or `kill " + " ".join(map(str, pids))
                         + "`), or pass --force")


def require_verified_pull(pulled: Snapshot) -> None:
    """Never install a server database that failed integrity_check here: its snapshot stays, for a look."""
    if not pulled.verified:
        raise SnapshotError(f"the server database failed its check ({pulled.manifest.integrity_check}): "
                            "nothing was installed locally",
                            hint=f"the server snapshot is kept, marked failed, in {pulled.path}")


# ------------------------------------------------------------------------------------------------
# Pushing: the server must know every migration the pushed database has


def unknown_migrations(pushed: dict, server: dict) -> list[tuple[str, str]]:
    """(app, migration) applied in `pushed` and absent from `server` ({app: [names]}), sorted."""
    known = {app: set(names) for app, names in server.items()}
    return [(app, name) for app, names in sorted(pushed.items()) for name in sorted(names)
            if name not in known.get(app, ())]


def _cannot_compare(alias: str, why: str) -> None:
    ui.warn(f"could not compare Django migrations with {alias} ({why}); going on without that check")


def require_known_migrations(database: Path, server: dict | None, alias: str) -> None:
    """Refuse a database migrated by a newer Label Studio than the server runs: it would start on it
    (health says UP) and fail later. `server` is the migrations the server's release ships, None when
    unknown."""
    if server is None or isinstance(server.get("error"), str):
        return _cannot_compare(alias, (server or {}).get("error") or "no answer from the server")
    try:
        pushed = sqlite.migrations(str(database))
    except sqlite3_module.DatabaseError as exc:
        return _cannot_compare(alias, f"{database}: {exc}")
    unknown = unknown_migrations(pushed, server)
    if unknown:
        app, name = unknown[0]
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise SnapshotError(f"this database was migrated by a newer Label Studio than {alias} runs: migration "
                            f"{app}.{name}{more} is unknown to the server's release; nothing was sent",
                            hint=f"upgrade Label Studio on {alias} first: `fab -H {alias} upgrade --version X`")


# ------------------------------------------------------------------------------------------------
# Saving and replacing the local data (pull-server-db, restore-local)


def last_install_file() -> Path:
    """What was last installed into a local data dir (which snapshot, the database's sha256)."""
    return backups_root() / LOCAL_HOST / LAST_INSTALL


def save_local_data(data_dir: Path, label: str) -> Snapshot | None:
    """Snapshot the local data before it is replaced, marked when it is an untouched copy of a pull
    (so restore-local never mistakes it for the user's own work). None when there is nothing to save."""
    sha = database_sha(data_dir / DATABASE)
    record = last_install_file()
    installed = json.loads(record.read_text()) if record.is_file() else {}
    pulled_copy = sha is not None and installed.get("sha256") == sha and installed.get("data_dir") == str(data_dir)
    saved, _ = snapshot_local_data(data_dir, backups_root(), label=label, extra={"pulled_copy": pulled_copy})
    return saved


def install_snapshot_locally(chosen: Snapshot, data_dir: Path, *, with_env: bool) -> list[str]:
    """install_local, then remember what went in (so the next save can tell an untouched pull)."""
    done = install_local(chosen, data_dir, with_env=with_env)
    record = {"sha256": chosen.manifest.file(DATABASE).sha256, "data_dir": str(data_dir), "snapshot": chosen.id,
              "host": chosen.host}
    write_atomic(last_install_file(), (json.dumps(record) + "\n").encode())
    return done


def own_saved_data(local_root: Path) -> Snapshot:
    """The newest local data saved by a pull that was the user's own work (not a copy of a pull)."""
    candidates = [s for s in catalog.list_snapshots(local_root) if s.complete and s.label == "pre-pull"
                  and not s.manifest.extra.get("pulled_copy")]
    if not candidates:
        raise SnapshotError("no local data saved by a pull to restore", hint="name one with --snapshot")
    return candidates[-1]
