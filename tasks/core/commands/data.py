"""Data scripts: the data lock, the server's temp folder, the SQLite tool, the snapshot stream, the
upload and the swap (and its rollback) of the live data. Pure: each returns a shell command run as root.

The service user owns the data dir and everything in it, so whatever reads or writes there runs AS that
user (`owner`): a symlink it plants leads nowhere it could not go itself. Root only takes the lock
(in a root-only folder), creates the temp folder and hands it over, and stops and starts the service
(commands/swap.py). No name found on the server is ever pasted into a script: file lists travel
NUL-separated on stdin."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Iterable

from tasks.core.commands import Arg, as_service_user, join, q
from tasks.core.defaults import DATABASE, SECRET_ENV
from tasks.core.onserver import sqlite
from tasks.core.profile import Profile

SQLITE_SOURCE = Path(sqlite.__file__).read_text()

INCOMING = ".lsvm-incoming"
PREVIOUS = ".lsvm-previous"
STALE_SUFFIXES = ("-journal", "-wal", "-shm")
FILE_LIST = "files.list"
DELTA = sqlite.DELTA
ABSENT = "absent"  # + a part's name, in PREVIOUS: the part did not exist before the swap

LOCKED, BUSY = "LOCKED", "BUSY"
SWAP_RUNNING = "a data swap is still finishing on the server (stop, swap, start, health check, rollback if needed)"

CODEC_PROBE = "command -v zstd >/dev/null && echo zstd || echo gzip"
COMPRESS = {"zstd": join(*sqlite.ZSTD_STREAM), "gzip": "gzip -1 -c"}
DECOMPRESS = {"zstd": "zstd -q -d -c", "gzip": "gzip -d -c"}


def sqlite_words(*args: Arg) -> list[Arg]:
    """tasks/core/onserver/sqlite.py run by the system python3, isolated (-I: no script dir, no user site,
    no PYTHON* variables: the data dir it runs in never shadows a module)."""
    return ["python3", "-I", "-c", SQLITE_SOURCE, *args]


def sqlite_tool(*args: Arg) -> str:
    return join(*sqlite_words(*args))


def owner(profile: Profile, script: str) -> str:
    """`script` run by sh as the service user, in the data dir (see commands.as_service_user)."""
    return as_service_user(profile, "sh", "-c", script)


# ------------------------------------------------------------------------------------------------
# The lock and the toolkit's root-only run folder


def run_dir(profile: Profile) -> PurePosixPath:
    """Root-only (0700): the data lock, its holder, the swap job's lock and status."""
    return profile.remote.lock_file.parent


def swap_lock_file(profile: Profile) -> PurePosixPath:
    """Held by a running swap job (commands/swap.py) for its whole life."""
    return run_dir(profile) / f"{profile.service.name}-swap.lock"


def lock(lock_file: PurePosixPath, swap_lock: PurePosixPath, holder: str, *, dir_owner: str = "root") -> str:
    """Prints LOCKED and holds a flock until stdin closes, or prints BUSY and who holds it (another
    task, or a swap job still finishing on its own)."""
    owner_file = PurePosixPath(f"{lock_file}.owner")
    return (
        f"install -d -m 0700 -o {q(dir_owner)} -g {q(dir_owner)} {q(lock_file.parent)} && "
        f"exec 9>>{q(lock_file)} && "
        f"if flock -n 9; then "
        f"if flock -n -s {q(swap_lock)} true; then printf '%s\\n' {q(holder)} > {q(owner_file)}; echo {LOCKED}; "
        f"cat >/dev/null; else echo {BUSY}; echo {q(SWAP_RUNNING)}; fi; "
        f"else echo {BUSY}; cat {q(owner_file)} 2>/dev/null; fi"
    )


def data_lock(profile: Profile, holder: str) -> str:
    return lock(profile.remote.lock_file, swap_lock_file(profile), holder)


# ------------------------------------------------------------------------------------------------
# The server's temp folder for a backup: made by root where the profile says, handed to the service
# user, who does the work in it and removes it.


def make_work_dir(profile: Profile, purpose: str) -> str:
    """A fresh temp folder under the profile's server_tmp_dir (printed), owned by the service user;
    leftovers of dead runs removed first: the service user's emptied by that user (root then removes
    the empty folders; rmdir never follows a link), old root-only ones by root (nobody else writes there)."""
    base = profile.backup.server_tmp_dir
    user = profile.service.user
    leftovers = as_service_user(profile, "sh", "-c", 'rm -rf -- "$1"/lsvm-*.??????', "sh", base)
    return (f"umask 022 && mkdir -p {q(base)} && "
            f"{{ {leftovers} 2>/dev/null; "
            f"find {q(base)} -mindepth 1 -maxdepth 1 -type d -user root -name 'lsvm-*.??????' "
            "-exec rm -rf -- {} + ; "
            f"find {q(base)} -mindepth 1 -maxdepth 1 -type d -name 'lsvm-*.??????' -empty -delete; true; }} && "
            f"umask 077 && d=$(mktemp -d {q(base + '/lsvm-' + purpose + '.XXXXXX')}) && "
            f"{{ ! id -u {q(user)} >/dev/null 2>&1 || chown -h {q(user)}: \"$d\"; }} && printf '%s\\n' \"$d\"")


def remove_work_dir(profile: Profile, work_dir: PurePosixPath) -> str:
    """The service user empties (and, in a sticky folder, removes) its temp folder; root only removes
    what is left of it when it is an empty folder (rmdir never follows a link)."""
    return remove_work_dir_named(profile, q(work_dir))


def remove_work_dir_named(profile: Profile, word: str) -> str:
    """remove_work_dir of the folder a shell word names (`"$d"`: make_work_dir's answer, kept in a variable
    of the same script)."""
    return f"{as_service_user(profile, 'rm', '-rf', '--')} {word} 2>/dev/null; rmdir -- {word} 2>/dev/null; true"


def free_space(where: PurePosixPath) -> str:
    """Bytes free on the filesystem holding `where`."""
    return f"df -B1 --output=avail {q(where)} | tail -n 1"


def file_size(profile: Profile, path: PurePosixPath) -> str:
    """A file's size in bytes as the service user sees it, 0 when it does not exist."""
    return f"{as_service_user(profile, 'stat', '-c', '%s', '--', path)} 2>/dev/null || echo 0"


def server_counts(profile: Profile) -> str:
    """Row counts of the live database as JSON, nothing when there is no database."""
    database = profile.remote.database
    return f"[ -e {q(database)} ] && {as_service_user(profile, *sqlite_words('counts', database))} || true"


def settle_database(profile: Profile) -> str:
    """With Label Studio stopped: the database's -wal checkpointed into it and removed (sqlite.settle),
    as the service user; nothing when there is no -wal (or no database)."""
    database = profile.remote.database
    return f"if [ -e {q(database)} ]; then {as_service_user(profile, *sqlite_words('settle', database))}; fi"


def prepare_copy(profile: Profile, work_dir: PurePosixPath, previous_marker: str) -> str:
    """The consistent copy of the live database into work_dir (see sqlite.prepare), its findings as JSON
    (a copy to migrate or to compare: backups go through serve_backup)."""
    p = profile.remote
    words = sqlite_words("prepare", p.data_dir, work_dir, p.venv, previous_marker)
    return (f"if [ -d {q(p.data_dir)} ]; then {as_service_user(profile, *words)}; "
            "else echo '{\"database_exists\": false}'; fi")


def file_list_script(work_dir: PurePosixPath) -> str:
    return f"umask 077 && cat > {q(work_dir / FILE_LIST)}"


def write_file_list(profile: Profile, work_dir: PurePosixPath) -> str:
    """Stores stdin (the names tar streams from the data dir, each ended by a NUL) in work_dir."""
    return owner(profile, file_list_script(work_dir))


def encode_file_list(names: Iterable[str]) -> bytes:
    """Names as the server's file system spells them (bytes kept by surrogateescape), NUL-ended."""
    return b"".join(name.encode("utf-8", "surrogateescape") + b"\0" for name in names)


def stream_script(work_dir: PurePosixPath, data_dir: PurePosixPath, codec: str, *, listed_files: bool,
                  work_file: str | None = None) -> str:
    """A compressed tar on stdout of `work_file` (a file of work_dir: a PostgreSQL dump) and/or the
    listed files of the data dir."""
    parts = []
    if work_file:
        parts.append(f"-C {q(work_dir)} {q(work_file)}")
    if listed_files:
        parts.append(f"-C {q(data_dir)} --null --verbatim-files-from -T {q(work_dir / FILE_LIST)}")
    return f"tar --ignore-failed-read -cf - {' '.join(parts)} | {COMPRESS[codec]}"


def stream_snapshot(profile: Profile, work_dir: PurePosixPath, codec: str, *, listed_files: bool,
                    work_file: str | None = None) -> str:
    """stream_script, as the service user: it reads only what that user can read."""
    return owner(profile, stream_script(work_dir, profile.remote.data_dir, codec, listed_files=listed_files,
                                        work_file=work_file))


WORK_DIR = '"$d"'   # serve_backup's temp folder: make_work_dir's answer, in a shell variable


def serve_backup(profile: Profile, *, work_dir: PurePosixPath | None = None,
                 data_dir: PurePosixPath | None = None) -> str:
    """A whole backup on one channel (sqlite.serve_backup, as the service user): in a fresh temp folder
    root makes and the service user empties afterwards whatever the program's end (`work_dir`: one the
    caller made and removes). `data_dir`: another folder laid out like the data dir (a restore from the
    offsite target), else the live one."""
    p = profile.remote
    program = as_service_user(profile, *sqlite_words("serve-backup", data_dir or p.data_dir, p.venv, p.page_index_dir))
    if work_dir is not None:
        return f"{program} {q(work_dir)}"
    return (f"d=$({make_work_dir(profile, 'backup')}) || exit 1\n"
            f"{program} {WORK_DIR}\n"
            "status=$?\n"
            f"{remove_work_dir_named(profile, WORK_DIR)}\n"
            "exit $status")


# ------------------------------------------------------------------------------------------------
# The upload: into .lsvm-incoming beside the live data, as the service user (the files it unpacks
# are its own: no chown afterwards).


def incoming_dir(profile: Profile) -> PurePosixPath:
    return profile.remote.data_dir / INCOMING


def make_incoming_script(data_dir: PurePosixPath) -> str:
    incoming = data_dir / INCOMING
    return f"rm -rf -- {q(incoming)} && mkdir -m 0700 -- {q(incoming)}"


def make_incoming(profile: Profile) -> str:
    """An empty private incoming folder beside the live data (same filesystem: renames are atomic)."""
    return owner(profile, make_incoming_script(profile.remote.data_dir))


def receive_script(data_dir: PurePosixPath, codec: str) -> str:
    return (f"umask 077 && {DECOMPRESS[codec]} | tar -xf - -C {q(data_dir / INCOMING)} --no-same-owner "
            "--no-same-permissions --warning=no-unknown-keyword")


def receive_upload(profile: Profile, codec: str) -> str:
    """Unpacks a compressed tar from stdin into the incoming folder."""
    return owner(profile, receive_script(profile.remote.data_dir, codec))


def apply_delta_incoming(profile: Profile) -> str:
    """The uploaded page delta applied to a consistent copy of the live database, into the incoming
    folder (sqlite.apply_to_live_copy): its size and sha256 as JSON."""
    return as_service_user(profile, *sqlite_words("apply-live", profile.remote.data_dir, incoming_dir(profile)))


def hash_incoming(profile: Profile, skip: Iterable[str] = ()) -> str:
    """{path relative to the incoming folder: {size, sha256}} as JSON, of every file in it (media too:
    a list of names could outgrow a command line) but the names in `skip` (ours, never the server's:
    a database rebuilt from pages, already hashed as it was built)."""
    return as_service_user(profile, *sqlite_words("tree-sha256", incoming_dir(profile), *skip))


def remove_incoming(profile: Profile) -> str:
    return as_service_user(profile, "rm", "-rf", "--", incoming_dir(profile))


def remove_leftovers_script(data_dir: PurePosixPath) -> str:
    return "rm -rf -- " + join(data_dir / INCOMING, data_dir / PREVIOUS)


def remove_swap_leftovers(profile: Profile) -> str:
    """The incoming and previous folders, once the swap is done or undone."""
    return owner(profile, remove_leftovers_script(profile.remote.data_dir))


def unfinished_swap(profile: Profile) -> str:
    """Prints `unfinished` when the previous data of an earlier swap is still set aside."""
    previous = profile.remote.data_dir / PREVIOUS
    return f"if [ -e {q(previous)} ] || [ -L {q(previous)} ]; then echo unfinished; fi"


# ------------------------------------------------------------------------------------------------
# The swap and its rollback: renames inside the data dir, as the service user (see commands/swap.py
# for the job that runs them with the service stopped).


def _exists(path: PurePosixPath) -> str:
    return f"{{ [ -e {q(path)} ] || [ -L {q(path)} ]; }}"


def swap_script(data_dir: PurePosixPath, parts: list[str]) -> str:
    """Old parts aside into .lsvm-previous (a marker notes parts that did not exist), new ones in.
    Refuses when .lsvm-previous exists: it may hold the only copy of older data."""
    incoming, previous = data_dir / INCOMING, data_dir / PREVIOUS
    steps = ["set -e", "umask 077", f"mkdir -m 0700 -- {q(previous)}"]
    for stale in STALE_SUFFIXES:
        name = DATABASE + stale
        steps.append(f"if {_exists(data_dir / name)}; then mv -- {q(data_dir / name)} {q(previous / name)}; fi")
    for part in parts:
        steps.append(f"if {_exists(data_dir / part)}; then mv -- {q(data_dir / part)} {q(previous / part)}; "
                     f"else : > {q(previous / (ABSENT + part))}; fi")
        steps.append(f"mv -- {q(incoming / part)} {q(data_dir / part)}")
    if DATABASE in parts:  # a PostgreSQL host swaps only .env and media here
        steps.append(f"chmod 0600 -- {q(data_dir / DATABASE)}")
    if SECRET_ENV in parts:
        steps.append(f"chmod 0600 -- {q(data_dir / SECRET_ENV)}")
    return "; ".join(steps)


def rollback_script(data_dir: PurePosixPath, parts: list[str]) -> str:
    """Undo `swap_script`, also half of one: every part back as it was, including parts that were absent."""
    previous = data_dir / PREVIOUS
    steps = ["set -e"]
    for part in parts + [DATABASE + s for s in STALE_SUFFIXES]:
        steps.append(f"if {_exists(previous / part)}; then rm -rf -- {q(data_dir / part)}; "
                     f"mv -- {q(previous / part)} {q(data_dir / part)}; "
                     f"elif [ -e {q(previous / (ABSENT + part))} ]; then rm -rf -- {q(data_dir / part)}; fi")
    return "; ".join(steps)


def swap(profile: Profile, parts: list[str]) -> str:
    return owner(profile, swap_script(profile.remote.data_dir, parts))


def rollback(profile: Profile, parts: list[str]) -> str:
    return owner(profile, rollback_script(profile.remote.data_dir, parts))
