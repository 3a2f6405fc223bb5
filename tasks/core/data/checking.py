"""The check of a SQLite snapshot, on this machine: its database written back to the disk (the backup
leaves the fsync to the check) and re-hashed (it must still be the bytes whose sha256 the server gave)
beside SQLite's full integrity_check on every core, and Label Studio's row counts. A backup stores a
snapshot *pending*; this check turns it *verified* or *failed* by rewriting its manifest (written
here, never taken from the server). Nothing uses a pending snapshot:
each consumer runs the check first, or waits for the one already running (an flock on the snapshot's
folder), and refuses a failed one.

`python -m tasks.core.data.checking FOLDER` is the detached, low-priority check `backup --no-wait`
starts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from tasks.core import ui
from tasks.core.data import catalog
from tasks.core.data.catalog import Snapshot
from tasks.core.defaults import DATABASE
from tasks.core.errors import SnapshotError
from tasks.core.onserver import sqlite

PROJECT_ROOT = Path(__file__).resolve().parents[3]


@contextlib.contextmanager
def _held(folder: Path, blocking: bool) -> Iterator[bool]:
    """The snapshot's check lock (an flock on its folder); yields whether it was taken."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _reread(snapshot: Snapshot) -> Snapshot:
    """The snapshot as its folder says now (another process may have checked it)."""
    return next((s for s in catalog.list_snapshots(snapshot.path.parent) if s.path == snapshot.path), snapshot)


def _write_back(path: Path) -> str | None:
    """fsync the file (what the kernel still holds of it goes to the disk); None, or what went wrong."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"the database could not be written to this machine's disk ({exc})"
    return None


def verdict(snapshot: Snapshot, *, rehash: bool = True) -> tuple[str, dict]:
    """(integrity_check as the manifest keeps it, counts) of a snapshot's database file: "ok" only when
    it is on the disk (fsynced), its sha256 is still the one the server gave, SQLite's integrity_check
    passes and it holds Label Studio's tables; else what is wrong. `rehash` False: this process proved
    the sha256 of these bytes moments ago (it wrote and hashed them), so the check spends its cores on
    integrity_check alone."""
    entry = snapshot.manifest.file(DATABASE)
    path = snapshot.path / DATABASE
    if entry is None or not path.is_file():
        return "the database file is missing", {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync") as pool:
        # The backup left the file's write-back to now: it runs on the disk while the check runs on the
        # cores, and ends before the verdict. A crash before it leaves the snapshot pending, and a check
        # after it reads the sha256 again (rehash), so bytes that never reached the disk fail it.
        flushed = pool.submit(_write_back, path)
        found = sqlite.check(str(path)) if rehash else {"sha256": entry.sha256, "report": sqlite.inspect(str(path))}
        problem = flushed.result()
    if problem:
        return problem, {}
    report = found["report"]
    if found["sha256"] != entry.sha256:
        return "damaged: the database's sha256 differs from the server's copy", report.get("counts", {})
    problem = sqlite.describe_problem(report)
    if problem is None:
        return "ok", report["counts"]
    return (report["integrity_check"] if report["integrity_check"] not in ("", "ok") else problem), \
        report.get("counts", {})


def _record(snapshot: Snapshot, integrity: str, counts: dict, seconds: float, by: str) -> Snapshot:
    m = snapshot.manifest
    checked = {"on": "this machine", "by": by, "seconds": round(seconds, 2),
               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    manifest = dataclasses.replace(m, integrity_check=integrity, counts=counts or m.counts,
                                   extra={**m.extra, "check": checked})
    catalog.write_manifest(snapshot.path, manifest)
    return dataclasses.replace(snapshot, manifest=manifest)


def check_pending(snapshot: Snapshot, *, by: str, quiet: bool = False, just_proven: bool = False) -> Snapshot:
    """The snapshot once it is no longer pending: checked here now, or after waiting for the check that
    already runs (a background one); a snapshot that is not pending is returned as it is. `just_proven`:
    the caller is the backup that stored it, in this process (verdict's `rehash`)."""
    if not snapshot.pending:
        return snapshot
    with contextlib.ExitStack() as stack:
        if not stack.enter_context(_held(snapshot.path, blocking=False)):
            with ui.err.status(f"waiting for the check of {snapshot.id} that runs in the background"):
                stack.enter_context(_held(snapshot.path, blocking=True))
        snapshot = _reread(snapshot)
        if not snapshot.pending:
            return snapshot
        started = time.monotonic()
        what = "integrity_check on every core" + ("" if just_proven else ", its sha256 again")
        status = contextlib.nullcontext() if quiet else ui.err.status(f"checking {snapshot.id} on this machine ({what})")
        with status:
            integrity, counts = verdict(snapshot, rehash=not just_proven)
        checked = _record(snapshot, integrity, counts, time.monotonic() - started, by)
    if not quiet:
        took = f"{time.monotonic() - started:.1f}s"
        if checked.verified:
            ui.step(True, f"checked {checked.id} on this machine in {took}: integrity ok, "
                          f"{catalog.counts_text(checked.manifest.counts)}")
        else:
            ui.warn(f"snapshot {checked.id} failed its check ({integrity}); it is kept, marked failed, and nothing "
                    "will use it")
    return checked


def require_verified(snapshot: Snapshot, *, by: str) -> Snapshot:
    """The snapshot checked (check_pending) and verified, else a SnapshotError saying why."""
    snapshot = check_pending(snapshot, by=by)
    if not snapshot.verified:
        raise SnapshotError(f"snapshot {snapshot.id} failed its check ({snapshot.manifest.integrity_check}): "
                            "nothing uses it", hint=f"it is kept for a look in {snapshot.path}")
    return snapshot


class CheckBeside:
    """A snapshot's check in a thread, while this command goes on with other work (push: the upload);
    `settled()` waits for it. Only bytes that are not the server's stop what comes next: a server
    database that is itself broken was copied faithfully, and is replaced with its copy kept, marked
    failed."""

    def __init__(self, snapshot: Snapshot, *, by: str, just_proven: bool = False):
        self.snapshot = snapshot
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="check")
        self.future = pool.submit(check_pending, snapshot, by=by, quiet=True, just_proven=just_proven)
        pool.shutdown(wait=False)

    def result(self) -> Snapshot:
        """The snapshot once its check ended, whatever it found."""
        with ui.err.status(f"waiting for the check of {self.snapshot.id} on this machine"):
            return self.future.result()

    def ended(self) -> None:
        """Wait for the check, if it still runs, and let go of whatever it found (a command that stops
        early: its snapshot's folder may be removed once nothing reads it)."""
        concurrent.futures.wait([self.future])

    def settled(self) -> Snapshot:
        checked = self.result()
        if checked.verified:
            if self.snapshot.pending:
                ui.step(True, f"checked {checked.id} on this machine (beside the upload): integrity ok, "
                              f"{catalog.counts_text(checked.manifest.counts)}")
            return checked
        problem = checked.manifest.integrity_check
        if problem.startswith("damaged") or "missing" in problem:
            raise SnapshotError(f"the copy of the server's data in {checked.id} is not the server's ({problem}): "
                                "nothing was replaced", hint="take a backup again, then try again")
        ui.warn(f"the server's database fails its check ({problem}); its copy is kept in {checked.id}, marked "
                "failed, and the data is replaced")
        return checked


def newest_base(host_dir: Path) -> Snapshot | None:
    """The newest snapshot a backup may build on: the newest verified one, once every pending snapshot
    newer than it has been checked (one that passes is the newer base)."""
    for snapshot in reversed(catalog.list_snapshots(host_dir)):
        if snapshot.pending:
            snapshot = check_pending(snapshot, by="the next backup")
        if snapshot.verified:
            return snapshot
    return None


def check_in_background(snapshot: Snapshot) -> int:
    """`python -m tasks.core.data.checking FOLDER` detached, at the lowest CPU and I/O priority: it
    outlives this command (its own session) and takes the snapshot's check lock. Returns its pid."""
    command = [sys.executable, "-m", "tasks.core.data.checking", str(snapshot.path)]
    if shutil.which("ionice"):
        command = ["ionice", "-c", "3", *command]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=lambda: os.nice(19))
    return process.pid


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    snapshot = next((s for s in catalog.list_snapshots(folder.parent) if s.path == folder), None)
    if snapshot is None:
        return 1
    checked = check_pending(snapshot, by="backup --no-wait (in the background)", quiet=True)
    return 0 if checked.verified else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
