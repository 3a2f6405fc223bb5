"""Data scripts: the data lock, the server's temp folder, the SQLite tool, the snapshot stream, the
upload and the swap (and its rollback) of the live data. Pure: each returns a shell command run as root."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Iterable

from .. import sqlite
from ..catalog import DATABASE, SECRET_ENV
from ..profile import Profile
from . import Arg, join, q, remove

SQLITE_SOURCE = Path(sqlite.__file__).read_text()

INCOMING = ".lsvm-incoming"
PREVIOUS = ".lsvm-previous"
STALE_SUFFIXES = ("-journal", "-wal", "-shm")
FILE_LIST = "files.list"
CHECK_REPORT = "check.json"

LOCKED, BUSY = "LOCKED", "BUSY"

CODEC_PROBE = "command -v zstd >/dev/null && echo zstd || echo gzip"
COMPRESS = {"zstd": "zstd -q -1 -T0 -c", "gzip": "gzip -1 -c"}
DECOMPRESS = {"zstd": "zstd -q -d -c", "gzip": "gzip -d -c"}


def sqlite_tool(*args: Arg) -> str:
    """Runs tasks/core/sqlite.py on the server with its system python3."""
    return join("python3", "-c", SQLITE_SOURCE, *args)


def server_counts(database: PurePosixPath) -> str:
    """Row counts of the live database as JSON, nothing when there is no database."""
    return f"[ -e {q(database)} ] && {sqlite_tool('counts', database)} || true"


def lock(lock_file: PurePosixPath, holder: str) -> str:
    """Prints LOCKED and holds a flock until stdin closes, or prints BUSY and who holds it."""
    owner = PurePosixPath(f"{lock_file}.owner")
    return (
        f"exec 9>>{q(lock_file)}; "
        f"if flock -n 9; then printf '%s\\n' {q(holder)} > {q(owner)}; echo {LOCKED}; cat >/dev/null; "
        f"else echo {BUSY}; cat {q(owner)} 2>/dev/null; fi"
    )


def make_work_dir(base: str, purpose: str) -> str:
    """A fresh root-only temp folder under `base` (printed); leftovers of dead runs removed first."""
    return (f"umask 077 && mkdir -p {q(base)} && rm -rf {q(base)}/lsvm-*.?????? && "
            f"mktemp -d {q(base + '/lsvm-' + purpose + '.XXXXXX')}")


def free_space(where: PurePosixPath) -> str:
    """Bytes free on the filesystem holding `where`."""
    return f"df -B1 --output=avail {q(where)} | tail -n 1"


def file_size(path: PurePosixPath) -> str:
    """A file's size in bytes, 0 when it does not exist."""
    return f"stat -c %s {q(path)} 2>/dev/null || echo 0"


def prepare_copy(profile: Profile, work_dir: PurePosixPath, previous_marker: str) -> str:
    """The consistent copy of the database into work_dir (see sqlite.prepare), its findings as JSON."""
    p = profile.remote
    return sqlite_tool("prepare", p.data_dir, work_dir, p.venv, previous_marker)


def write_file_list(work_dir: PurePosixPath, names: Iterable[str]) -> str:
    """The names tar streams from the data dir, one a line (read back with --verbatim-files-from)."""
    return f"cat > {q(work_dir / FILE_LIST)} <<'LSVM_EOF'\n" + "\n".join(names) + "\nLSVM_EOF"


def stream_snapshot(work_dir: PurePosixPath, data_dir: PurePosixPath, codec: str, *, database: bool,
                    listed_files: bool) -> str:
    """A compressed tar on stdout of the database copy and/or the listed files. With the database, its
    hash and integrity_check run beside the stream, on another core, into the check report."""
    parts, side = [], ""
    if database:
        parts.append(f"-C {q(work_dir)} {q(DATABASE)}")
        side = f"{sqlite_tool('check', work_dir / DATABASE)} > {q(work_dir / CHECK_REPORT)} & "
    if listed_files:
        parts.append(f"-C {q(data_dir)} --verbatim-files-from -T {q(work_dir / FILE_LIST)}")
    return (f"{side}tar --ignore-failed-read -cf - {' '.join(parts)} | {COMPRESS[codec]}; "
            "status=$?; wait; exit $status")


def read_check_report(work_dir: PurePosixPath) -> str:
    return f"cat {q(work_dir / CHECK_REPORT)}"


def incoming_dir(profile: Profile) -> PurePosixPath:
    return profile.remote.data_dir / INCOMING


def make_incoming(profile: Profile) -> str:
    """An empty root-only incoming folder beside the live data (same filesystem: renames are atomic)."""
    incoming = incoming_dir(profile)
    return f"rm -rf {q(incoming)} && install -d -m 0700 {q(incoming)}"


def receive_upload(profile: Profile, codec: str) -> str:
    """Unpacks a compressed tar from stdin into the incoming folder."""
    return f"{DECOMPRESS[codec]} | tar -xf - -C {q(incoming_dir(profile))} --no-same-owner"


def hash_incoming(profile: Profile, names: Iterable[str]) -> str:
    """{path: {size, sha256}} as JSON of the named files in the incoming folder."""
    return sqlite_tool("sha256", *[incoming_dir(profile) / name for name in names])


def remove_incoming(profile: Profile) -> str:
    return remove(incoming_dir(profile))


def remove_swap_leftovers(profile: Profile) -> str:
    """The incoming and previous folders, once the swap is done or undone."""
    data = profile.remote.data_dir
    return remove(data / INCOMING, data / PREVIOUS)


def swap(profile: Profile, parts: list[str]) -> str:
    """Old parts aside into .lsvm-previous (a marker notes parts that did not exist), new ones in."""
    p = profile.remote
    data, incoming, previous = p.data_dir, p.data_dir / INCOMING, p.data_dir / PREVIOUS
    user = q(profile.service.user)
    steps = [f"set -e; rm -rf {q(previous)}; install -d -m 0700 {q(previous)}"]
    for stale in STALE_SUFFIXES:
        name = DATABASE + stale
        steps.append(f"if [ -e {q(data / name)} ]; then mv {q(data / name)} {q(previous / name)}; fi")
    for part in parts:
        steps.append(f"if [ -e {q(data / part)} ]; then mv {q(data / part)} {q(previous / part)}; "
                     f"else touch {q(previous / ('absent' + part))}; fi")
        steps.append(f"mv {q(incoming / part)} {q(data / part)}")
        steps.append(f"chown -R {user}:{user} {q(data / part)}")
    steps.append(f"chmod 0600 {q(data / DATABASE)}")
    if SECRET_ENV in parts:
        steps.append(f"chmod 0600 {q(data / SECRET_ENV)}")
    return "; ".join(steps)


def rollback(profile: Profile, parts: list[str]) -> str:
    """Undo `swap`: every part back as it was, including parts that were absent."""
    p = profile.remote
    data, previous = p.data_dir, p.data_dir / PREVIOUS
    steps = ["set -e"]
    for part in parts + [DATABASE + s for s in STALE_SUFFIXES]:
        steps.append(f"if [ -e {q(previous / part)} ]; then rm -rf {q(data / part)}; "
                     f"mv {q(previous / part)} {q(data / part)}; "
                     f"elif [ -e {q(previous / ('absent' + part))} ]; then rm -rf {q(data / part)}; fi")
    return "; ".join(steps)
