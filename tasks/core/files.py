"""Files on this machine that hold data or secrets: private folders, 0600 files written once with their
sha256, atomic replacement, hard links with a copy where the filesystem has none, and a full disk said in
words. Used by the snapshots here, the transfers and the SageMaker Studio set-up."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Iterator

from tasks.core.errors import SnapshotError


def private_dir(path: Path) -> Path:
    """mkdir -p where every folder created is 0700 (Path.mkdir(parents=True) gives parents 0777-umask)."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)
    return path


def write_private(target: Path, source, *, chunk: int = 1024 * 1024, fsync: bool = False) -> tuple[int, str]:
    """Copy a readable stream into a new 0600 file (never over an existing one), hashing as it goes.
    Returns (size, sha256)."""
    private_dir(target.parent)
    digest = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        for block in iter(lambda: source.read(chunk), b""):
            digest.update(block)
            size += len(block)
            out.write(block)
        if fsync:
            out.flush()
            os.fsync(out.fileno())
    return size, digest.hexdigest()


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link an unchanged file from an earlier snapshot; copy it (0600, same mtime) where the
    filesystem has no hard links (exFAT, vfat, many SMB mounts) or refuses this one."""
    with space_needed(target.parent):
        private_dir(target.parent)
        try:
            os.link(source, target)
            return
        except OSError as exc:
            if disk_full(exc) or exc.errno in (errno.EEXIST, errno.ENOENT):
                raise
        with open(source, "rb") as src:
            write_private(target, src)
        stat = os.stat(source)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# ------------------------------------------------------------------------------------------------
# A full disk on this machine


SQLITE_FULL = 13  # SQLite's result code for "database or disk is full"


def disk_full(exc: BaseException) -> bool:
    """Whether a failure is a full disk (or quota), from the OS or from SQLite."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(exc)
    return False


@contextlib.contextmanager
def space_needed(where: Path) -> Iterator[None]:
    """A full disk while writing under `where` becomes a SnapshotError in words, not a traceback.
    Callers remove what they had half written (a snapshot folder is removed whole)."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        if not disk_full(exc):
            raise
        raise SnapshotError(f"no space left on this machine in {where}",
                            hint="free some space, then try again") from None


# ------------------------------------------------------------------------------------------------
# Retention




def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` in one rename (written and fsynced beside it first): a reader sees
    the old file or the new one, never half of one. Its folder is made private when missing."""
    private_dir(path.parent)
    partial = path.with_name(path.name + ".partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, mode)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
