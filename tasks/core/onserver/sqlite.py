"""SQLite work for snapshots: a consistent copy (a raw copy under SQLite's shared lock, or the online
backup API), integrity and Label Studio checks, counts, checksums, and page deltas (which pages of a
copy differ from an earlier one, and a new file built from an old one plus those pages).

Standard library only and free of package imports, because the same source runs on the server:
`python3 -c "<this file>" prepare ...` prints one JSON document. One implementation, both sides.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import glob
import hashlib
import json
import os
import queue
import shutil
import sqlite3
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import time

try:  # python3-xxhash (provision installs it): page digests 5x faster than SHA-1; SHA-1 without it
    import xxhash
except ImportError:
    xxhash = None

LABEL_STUDIO_TABLES = ("django_migrations", "htx_user", "project", "task", "task_completion")
COUNTS = {"users": "htx_user", "projects": "project", "tasks": "task", "annotations": "task_completion"}
CHUNK = 1024 * 1024


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


SQLITE_MAGIC = b"SQLite format 3\0"


def _rollback_journal_file(header: bytes) -> bool:
    """A database in rollback-journal mode (header bytes 18-19 are 1; 2 means WAL)."""
    return len(header) >= 100 and header.startswith(SQLITE_MAGIC) and header[18] == 1 and header[19] == 1


def _copy_fd(src: int, dst: int) -> None:
    """Every byte of src from offset 0 into dst, in the kernel (no Python buffers)."""
    offset = 0
    while True:
        sent = os.sendfile(dst, src, offset, 64 * CHUNK)
        if sent == 0:
            return
        offset += sent


WAL_HEADER, WAL_FRAME_HEADER = 32, 24


def _wal_index(shm: bytes) -> dict | None:
    """The wal-index header at the start of the -shm (native byte order; SQLite keeps two copies, equal
    unless a writer is updating them): page size, the last committed frame, the database's size in
    pages at that commit, and the salts every frame of this generation of the -wal carries."""
    if len(shm) < 2 * WAL_INDEX_HEADER or shm[:WAL_INDEX_HEADER] != shm[WAL_INDEX_HEADER:2 * WAL_INDEX_HEADER]:
        return None
    if not shm[12]:   # isInit
        return None
    size = struct.unpack("=H", shm[14:16])[0]
    page_size = 65536 if size == 1 else size
    max_frame, pages = struct.unpack("=II", shm[16:24])
    if max_frame and (not 512 <= page_size <= 65536 or page_size & (page_size - 1) or not pages):
        return None   # (an empty -wal has no page size yet: the file alone is the database)
    return {"page_size": page_size, "max_frame": max_frame, "pages": pages, "salts": shm[32:40]}


def _wal_frames(wal_fd: int, index: dict) -> dict | None:
    """Where the newest committed version of each page is in the -wal: {page number from 0: offset of its
    bytes}, from frames 1..max_frame (later frames win). Those frames were complete when the wal-index
    named them, and stay as they are while a read transaction holds its mark: a restart of the -wal (the
    only rewrite) gives every frame new salts, so a frame with other salts than the index's means the
    copy cannot be trusted (None)."""
    page_size, frames = index["page_size"], index["max_frame"]
    newest: dict = {}
    if frames == 0:
        return newest
    header = os.pread(wal_fd, WAL_HEADER, 0)
    if len(header) != WAL_HEADER or header[16:24] != index["salts"] or \
            struct.unpack(">I", header[8:12])[0] != page_size:
        return None
    frame = WAL_FRAME_HEADER + page_size
    per_read = max(1, (4 * CHUNK) // frame)
    for first in range(0, frames, per_read):
        count = min(per_read, frames - first)
        block = os.pread(wal_fd, count * frame, WAL_HEADER + first * frame)
        if len(block) != count * frame:
            return None
        for n in range(count):
            at = n * frame
            if block[at + 8:at + 16] != index["salts"]:
                return None
            page_no = struct.unpack_from(">I", block, at)[0]
            if page_no == 0:
                return None
            newest[page_no - 1] = WAL_HEADER + (first + n) * frame + WAL_FRAME_HEADER
    return newest


def _wal_overlay(db_fd: int, wal_fd: int, out: int, index: dict) -> bool:
    """The database file copied in the kernel, the newest committed version of each page in the -wal
    written over it, the file cut to the database's size at that commit."""
    newest = _wal_frames(wal_fd, index)
    if newest is None:
        return False
    _copy_fd(db_fd, out)
    if index["max_frame"] == 0:
        return True
    page_size, pages = index["page_size"], index["pages"]
    for page_no in sorted(p for p in newest if p < pages):
        os.pwrite(out, os.pread(wal_fd, page_size, newest[page_no]), page_no * page_size)
    os.ftruncate(out, pages * page_size)
    return True


def _wal_image_digested(db_fd: int, wal_fd: int, out: int | None, index: dict, digests_for) -> "PageDigests | None":
    """The same image as `_wal_overlay`, built in one pass in page order (each block of pages read from
    the file, the -wal's newer versions put in, then written to `out` unless it is None) and fed to
    `digests_for(page_size, pages)` as it goes: the copy's sha256, page index and delta with no second
    read of it. Already in rollback-journal mode (page 1's bytes 18-19), as the caller would set it.
    None when it cannot be trusted (the digests then dropped)."""
    newest = _wal_frames(wal_fd, index)
    if newest is None:
        return None
    file_size = os.fstat(db_fd).st_size
    if index["max_frame"]:
        page_size, pages = index["page_size"], index["pages"]
    else:   # an empty -wal: the file alone is the database
        page_size = _page_size(os.pread(db_fd, 100, 0)) or 0
        if not 512 <= page_size <= 65536 or file_size % page_size:
            return None
        pages = file_size // page_size
    in_file = file_size // page_size
    if any(p not in newest for p in range(in_file, pages)):
        return None   # a page neither in the file nor in the -wal
    changed = sorted(p for p in newest if p < pages)
    digests = digests_for(page_size, pages)
    at = 0
    try:
        for first in range(0, pages, PAGES_PER_READ):
            count = min(PAGES_PER_READ, pages - first)
            block = bytearray(os.pread(db_fd, count * page_size, first * page_size))
            block.extend(bytes(count * page_size - len(block)))   # past the file's end: from the -wal below
            while at < len(changed) and changed[at] < first + count:
                offset = (changed[at] - first) * page_size
                block[offset:offset + page_size] = os.pread(wal_fd, page_size, newest[changed[at]])
                at += 1
            if first == 0:
                if not block.startswith(SQLITE_MAGIC):
                    raise ValueError("not an SQLite database")
                block[18:20] = b"\x01\x01"   # rollback-journal mode: one self-contained file
            view, written = memoryview(block), 0
            while out is not None and written < len(block):
                written += os.write(out, view[written:])
            digests.feed(block)
    except (OSError, ValueError):
        digests.drop()
        raise
    return digests


@contextlib.contextmanager
def _descriptors(path: str):
    """Read-only descriptors of the database, its -wal and its -shm (None for one not there), for the
    caller to open its SQLite connection inside and close it before they go. Closing any descriptor of a
    file drops every POSIX lock this process holds on it, SQLite's own included (its shared lock on
    the database, the read marks and the in-use lock in the -shm): so every read of those files by
    other means goes through these, and they are closed only once the connection is."""
    fds = {}
    try:
        for key, name in (("db", path), ("wal", path + "-wal"), ("shm", path + "-shm")):
            try:
                fds[key] = os.open(name, os.O_RDONLY)
            except FileNotFoundError:
                fds[key] = None
        yield fds
    finally:
        for fd in fds.values():
            if fd is not None:
                os.close(fd)


def _raw_wal_copy(source: str, target: str | None, src, fds: dict, digests_for=None):
    """WAL mode: the database file copied in the kernel, then the -wal's committed frames written over it,
    all inside a read transaction of `src` (`fds`: `_descriptors`, held by the caller past `src`'s
    close): checkpoints then copy no frame past its mark into the file and the -wal is not restarted,
    so file plus frames are one commit's image. Four to five times faster than the backup API. The copy
    is put in rollback-journal mode (header bytes 18-19). Given `digests_for`, the image is built in one
    pass and digested as it goes (`_wal_image_digested`), written to `target` unless that is None. True
    (or the digests), or False, with no `target` left, whenever anything is not as expected (the caller
    uses the backup API)."""
    db_fd, wal_fd, shm_fd = fds["db"], fds["wal"], fds["shm"]
    if wal_fd is None or shm_fd is None or not os.access(source + "-shm", os.W_OK):
        return False   # (SQLite reads a -shm it cannot write without read marks, from a heap copy)
    if os.pread(db_fd, 20, 0)[18:20] != b"\x02\x02":
        return False   # not a WAL database (a -wal left beside one in rollback-journal mode is not read)
    out, digests, trusted = None, None, False
    try:
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()   # takes the read mark
        try:
            index = _wal_index(os.pread(shm_fd, 2 * WAL_INDEX_HEADER, 0))
            if index is None:
                return False
            if target is not None:
                out = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            if digests_for is not None:
                try:
                    digests = _wal_image_digested(db_fd, wal_fd, out, index, digests_for)
                except ValueError:
                    return False
                if digests is None:
                    return False
            elif not _wal_overlay(db_fd, wal_fd, out, index):
                return False
            # A restart of the -wal writes new salts into the index before any frame of its own: the
            # same salts now mean no frame the copy read was being rewritten.
            after = _wal_index(os.pread(shm_fd, 2 * WAL_INDEX_HEADER, 0))
            if after is None or after["salts"] != index["salts"]:
                return False
            if out is not None:
                if not os.pread(out, 100, 0).startswith(SQLITE_MAGIC):
                    return False
                os.pwrite(out, b"\x01\x01", 18)   # rollback-journal mode: one self-contained file
            trusted = True
            return digests if digests is not None else True
        finally:
            src.execute("COMMIT")
    finally:
        if out is not None:
            os.close(out)
        if not trusted:
            if digests is not None:
                digests.drop()
            if out is not None and os.path.exists(target):
                os.unlink(target)


def consistent_copy(source: str, target: str, busy_timeout: float = 60.0) -> str:
    """A consistent image of a live database, even while Label Studio writes. In rollback-journal mode
    (Label Studio's own), a read transaction holds SQLite's SHARED lock, under which no writer may touch
    the database file: the file is then copied as it is, in the kernel (a few tenths of a second per GiB,
    ten times faster than the backup API, so writers wait that much less). In WAL mode (the toolkit's
    app server sets it: the file alone is not the database, the -wal file holds the newest commits) the
    same raw copy with the -wal's committed frames written over it, inside one read transaction
    (`_raw_wal_copy`); where that cannot be done, SQLite's online backup API in one step: it reads every
    page through one read transaction. Either way the copy holds each commit made before the copy began,
    the -wal's included, and no checkpoint is needed (one would wait for readers; WAL writers never wait
    for this reader). The copy is in rollback-journal mode: a snapshot is one self-contained file, never
    a pair with a -wal. Returns which way ran."""
    with _descriptors(source) as fds:
        return _consistent_copy(source, target, busy_timeout, fds)[0]


def _digests_for(base_index: bytes | None, delta: str):
    """What a one-pass image feeds, once it knows the page size and count: PageDigests against `base_index`."""
    return lambda page_size, pages: PageDigests(page_size, pages * page_size, base_index, delta)


def copy_and_digest(source: str, target: str, base_index: bytes | None, delta: str,
                    busy_timeout: float = 60.0) -> tuple[str, dict | None]:
    """consistent_copy, in WAL mode digested as it is written: (which way copied, what digest_copy would
    find), one read of the live database and none of the copy (at 10 GiB that second read was half the
    server's time). None for the digests where the copy was made another way: then digest_copy."""
    with _descriptors(source) as fds:
        way, digests = _consistent_copy(source, target, busy_timeout, fds, _digests_for(base_index, delta))
    return (way + ", digested as written", digests.result()) if digests is not None else (way, None)


def digest_live(source: str, base_index: bytes, delta: str, busy_timeout: float = 60.0) -> dict | None:
    """What copy_and_digest would find, with no copy written: in WAL mode the image is read and digested
    in one read transaction (writers go on; the -wal grows meanwhile, as no checkpoint passes the read
    mark), and only the changed pages are written (into `delta`). None where that cannot be done or
    the pages cannot go as a delta (no usable base, more than DELTA_MAX_SHARE of them changed): then a
    copy is needed (copy_and_digest), and no `delta` is left."""
    if base_index is None:
        return None
    with _descriptors(source) as fds:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=busy_timeout)
        try:
            if os.fstat(fds["db"]).st_ino != os.stat(source).st_ino:
                return None
            digests = _raw_wal_copy(source, None, src, fds, _digests_for(base_index, delta))
        finally:
            src.close()
    if not digests:
        return None
    found = digests.result()
    if found["delta"] is None or found["delta"]["changed"] > found["pages"] * DELTA_MAX_SHARE:
        if os.path.exists(delta):
            os.unlink(delta)
        return None
    return found


def _consistent_copy(source: str, target: str, busy_timeout: float, fds: dict, digests_for=None):
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=busy_timeout)
    try:
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the SHARED lock
        # The file our descriptors read is the one the connection opened (none was put in its place).
        ours = os.fstat(fds["db"]).st_ino == os.stat(source).st_ino
        try:
            if ours and _rollback_journal_file(os.pread(fds["db"], 100, 0)) and not os.path.exists(source + "-wal"):
                # Digested after the lock is let go, not under it: writers wait only for the copy.
                out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    _copy_fd(fds["db"], out)
                finally:
                    os.close(out)
                return "raw copy under a shared lock", None
        finally:
            src.execute("COMMIT")
        if ours:
            raw = _raw_wal_copy(source, target, src, fds, digests_for)
            if raw:
                return "raw copy and the -wal's frames in one read transaction", (None if raw is True else raw)
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))   # 0600, never over a file
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE").fetchone()
        finally:
            dst.close()
        return "online backup API", None
    finally:
        src.close()


def inspect(path: str, full: bool = True) -> dict:
    """integrity_check, whether it is a Label Studio database, and row counts. Never raises for a bad
    file: a report says what is wrong. `full` False: no integrity_check yet (it says None), the rest
    in moments."""
    report = {"integrity_check": "", "label_studio": False, "missing_tables": [], "counts": {}, "error": None}
    if not os.path.isfile(path):
        report["error"] = "no such file"
        return report
    try:
        report["integrity_check"] = integrity_check(path) if full else None
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
            missing = [t for t in LABEL_STUDIO_TABLES if t not in tables]
            report["missing_tables"] = missing
            report["label_studio"] = not missing
            if not missing:
                for key, table in COUNTS.items():
                    report["counts"][key] = con.execute(f"select count(*) from {table}").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        report["error"] = str(exc)
    return report


def integrity_check(path: str, threads: int | None = None) -> str:
    """What `PRAGMA integrity_check` says of the file ("ok", or its first problems), on every core:
    `quick_check` of the whole file (pages, b-trees, free list, every page used once) beside
    `integrity_check(TABLE)` of each table (its indexes hold exactly its rows, UNIQUE holds), the
    largest first; together they check what one integrity_check does. sqlite3 lets go of the GIL
    while a statement runs, so the threads run side by side. SQLite before 3.33 (no table argument):
    one integrity_check. Raises sqlite3.DatabaseError for a file that is not a database."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if sqlite3.sqlite_version_info < (3, 33, 0):
            return _answer(con.execute("PRAGMA integrity_check").fetchall())
        tables = [name for (name,) in con.execute(
            "select name from sqlite_schema where type = 'table' order by name")]
        sizes = {name: _weight(con, name) for name in tables}
    finally:
        con.close()
    checks = ["PRAGMA quick_check"] + [
        f"PRAGMA integrity_check({_quoted(name)})" for name in sorted(tables, key=lambda t: -sizes[t])]
    answers: dict[str, list] = {}
    failures: list[BaseException] = []
    pending = list(reversed(checks))
    lock = threading.Lock()

    def work() -> None:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        try:
            while True:
                with lock:
                    if not pending or failures:
                        return
                    statement = pending.pop()
                try:
                    answers[statement] = connection.execute(statement).fetchall()
                except sqlite3.Error as exc:
                    with lock:
                        failures.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=work) for _ in range(max(1, min(threads or os.cpu_count() or 1,
                                                                        len(checks))))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]
    problems = [row for statement in checks for row in answers[statement] if row != ("ok",)]
    return _answer(problems or [("ok",)])


def _answer(rows: list) -> str:
    return "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:3])


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _weight(con, table: str) -> int:
    """How long a table's check takes, roughly: its largest rowid (a b-tree descent, not a scan) times
    its b-trees (the table and each index); 0 when it has no rowid."""
    try:
        rows = con.execute(f"select max(rowid) from {_quoted(table)}").fetchone()[0] or 0
    except sqlite3.Error:
        rows = 0
    indexes = con.execute("select count(*) from sqlite_schema where type = 'index' and tbl_name = ?",
                          (table,)).fetchone()[0]
    return int(rows) * (1 + indexes)


def describe_problem(report: dict) -> str | None:
    """None when the database is a healthy Label Studio database, else what is wrong, in words."""
    if report["error"]:
        return f"not a usable SQLite database ({report['error']})"
    if report["integrity_check"] not in ("ok", None):   # None: not run yet (inspect's full=False)
        return f"integrity_check failed: {report['integrity_check']}"
    if not report["label_studio"]:
        return "not a Label Studio database (missing tables: " + ", ".join(report["missing_tables"]) + ")"
    return None


def tree_sha256(top: str, skip: tuple = ()) -> dict:
    """{path relative to top: {size, sha256}} of every regular file under top but those in `skip` (files
    already hashed otherwise), never through a link (names kept by surrogateescape, as media_listing keeps
    them)."""
    found = {}
    base = os.fsencode(top)
    if os.path.islink(base) or not os.path.isdir(base):
        return found
    for root, _dirs, names in os.walk(base):
        for name in names:
            full = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                rel = os.path.relpath(full, base).decode("utf-8", "surrogateescape").replace(os.sep, "/")
                if rel not in skip:
                    found[rel] = {"size": os.path.getsize(full), "sha256": sha256_file(full)}
    return found


def media_listing(media_dir: str) -> list[dict]:
    """Every regular file under media_dir, never through a link (not even media_dir itself). Names
    are read as bytes and kept by surrogateescape, so newlines, quotes and non-UTF-8 bytes survive JSON."""
    files = []
    top = os.fsencode(media_dir)
    if os.path.islink(top) or not os.path.isdir(top):
        return files
    parent = os.path.dirname(top)
    for root, _dirs, names in os.walk(top):
        for name in names:
            full = os.path.join(root, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue  # deleted since the folder was read
            if stat.S_ISREG(st.st_mode):
                rel = os.path.relpath(full, parent).decode("utf-8", "surrogateescape").replace(os.sep, "/")
                files.append({"path": rel, "size": st.st_size, "mtime": int(st.st_mtime)})
    return sorted(files, key=lambda f: f["path"])


def label_studio_version(venv: str) -> str | None:
    found = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "label_studio-*.dist-info"))
    if not found:
        return None
    name = os.path.basename(found[0])
    return name[len("label_studio-"):-len(".dist-info")]


WAL_INDEX_HEADER = 48   # the wal-index header at the start of the -shm; SQLite keeps two copies of it


def _wal_state(fds: dict) -> dict | None:
    """Where the -wal stands, from the wal-index header in the -shm (read as SQLite's readers do: both
    copies, equal): iChange (bumped by every commit), mxFrame (the last valid frame), the salts (new at
    each restart of the log), plus the -wal's own header (checkpoint sequence, salts). None when the two
    copies differ (a writer is updating them: the caller reads no marker, the backup copies)."""
    if fds["shm"] is None or fds["wal"] is None:
        return None
    shm, wal_header = os.pread(fds["shm"], 2 * WAL_INDEX_HEADER, 0), os.pread(fds["wal"], WAL_HEADER, 0)
    if len(shm) < 2 * WAL_INDEX_HEADER or shm[:WAL_INDEX_HEADER] != shm[WAL_INDEX_HEADER:]:
        return None
    change, max_frame = struct.unpack("=I", shm[8:12])[0], struct.unpack("=I", shm[16:20])[0]
    return {"change": change, "max_frame": max_frame, "salts": shm[32:40].hex(), "wal_header": wal_header.hex()}


def change_marker(path: str) -> dict | None:
    """What changes whenever the database does, read inside a read transaction: in rollback-journal
    mode SQLite's file change counter (header bytes 24-27, bumped by every committed write) plus size,
    mtime and inode; in WAL mode (a -wal beside it) the same of the main file, which only checkpoints
    change, plus where the -wal stands (`_wal_state`), which every commit moves. None when it cannot be
    told: the backup then copies, never the reverse."""
    with _descriptors(path) as fds:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        try:
            con.execute("BEGIN")
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the shared lock / a read mark
            header, ours = os.pread(fds["db"], 100, 0), os.fstat(fds["db"]).st_ino
            st = os.stat(path)
            in_wal_mode = os.path.exists(path + "-wal")
            wal = _wal_state(fds) if in_wal_mode else None
            con.execute("COMMIT")
        finally:
            con.close()
    if ours != st.st_ino:
        return None   # the file was replaced while it was read: no marker, the backup copies
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0") or (in_wal_mode and wal is None):
        return None
    marker = {"counter": int.from_bytes(header[24:28], "big"), "size": st.st_size,
              "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    if wal is not None:
        marker["wal"] = wal
    return marker


def _marker_or_none(path: str) -> dict | None:
    """change_marker, None when SQLite cannot read it (the backup then copies)."""
    try:
        return change_marker(path)
    except sqlite3.Error:
        return None


def settle(path: str) -> dict:
    """With Label Studio stopped: a -wal left beside the database (an app server killed mid-write keeps
    its commits there) is checkpointed into the file, and SQLite removes it and the -shm as its last
    connection closes (a read-write one: a read-only one cannot). The file alone is then the database,
    as a copy by `cp` or a swap needs it. Nothing to do without a -wal."""
    if not os.path.exists(path + "-wal"):
        return {"settled": False}
    size = os.path.getsize(path + "-wal")
    con = sqlite3.connect(path, timeout=60)
    try:
        busy = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        con.close()
    if busy or os.path.exists(path + "-wal"):
        return {"error": f"{path}-wal is still there: another process has the database open"}
    return {"settled": True, "wal_bytes": size}


DATABASE_NAME = "label_studio.sqlite3"
DELTA = "label_studio.sqlite3.delta"


def prepare(data_dir: str, work_dir: str, venv: str, previous_marker: str = "null") -> dict:
    """A consistent DB copy into work_dir (to migrate, or to compare with a snapshot), unless the database
    has not changed since the snapshot whose marker is given; .env hashed, media listed."""
    database = os.path.join(data_dir, "label_studio.sqlite3")
    result = {"database_exists": os.path.isfile(database)}
    if result["database_exists"]:
        marker = _marker_or_none(database)
        result["marker"] = marker
        if marker is not None and marker == json.loads(previous_marker):
            result["unchanged"] = True
        else:
            snapshot = os.path.join(work_dir, "label_studio.sqlite3")
            try:
                result["copy"] = consistent_copy(database, snapshot)
            except (sqlite3.Error, OSError) as exc:
                result["copy_error"] = str(exc)
                return result
            result["database"] = {"size": os.path.getsize(snapshot)}
    env = os.path.join(data_dir, ".env")
    if os.path.isfile(env):
        result["env"] = {"size": os.path.getsize(env), "sha256": sha256_file(env)}
    result["media"] = media_listing(os.path.join(data_dir, "media"))
    result["label_studio_version"] = label_studio_version(venv)
    return result


def apply_to_live_copy(data_dir: str, incoming: str) -> dict:
    """Server side of an incremental push: the uploaded delta applied to a consistent copy of the live
    database, into incoming/label_studio.sqlite3 (size and sha256 reported, to compare with the
    pushed file's). Intermediate files go whatever happens; {"error": ...} when it cannot be built."""
    target = os.path.join(incoming, DATABASE_NAME)
    delta = os.path.join(incoming, DELTA)
    try:
        consistent_copy(os.path.join(data_dir, DATABASE_NAME), target)
        return apply_delta(target, delta, target)   # the copy is ours alone: its pages change in place
    except (sqlite3.Error, OSError, ValueError) as exc:
        if os.path.exists(target):
            os.unlink(target)
        return {"error": str(exc)}
    finally:
        if os.path.exists(delta):
            os.unlink(delta)


def migrations(path: str) -> dict:
    """The applied Django migrations, {app: [names, sorted]}, from django_migrations (read-only)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        found: dict = {}
        for app, name in con.execute("select app, name from django_migrations"):
            found.setdefault(app, []).append(name)
        return {app: sorted(names) for app, names in sorted(found.items())}
    finally:
        con.close()


def check(path: str, full: bool = True) -> dict:
    """sha256 and inspect() of a finished copy, side by side (both release the GIL: two cores)."""
    found = {}
    hasher = threading.Thread(target=lambda: found.update(sha256=sha256_file(path)))
    hasher.start()
    report = inspect(path, full)
    hasher.join()
    return {"sha256": found.get("sha256"), "report": report}


def send(path: str, digest_file: str) -> int:
    """A restored database handed over by its owner: the file to stdout while its integrity_check runs
    on the other cores; `digest_file` gets the sha256 of what was sent only when the check says ok (the
    receiver's digest is compared with it). Exit 1 and the problem on stderr otherwise."""
    found: dict = {}

    def verdict() -> None:
        try:
            found["check"] = integrity_check(path)
        except sqlite3.DatabaseError as exc:
            found["check"] = str(exc)

    checker = threading.Thread(target=verdict)
    checker.start()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 * CHUNK), b""):
            digest.update(block)
            sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()
    checker.join()
    if found["check"] != "ok":
        print(f"integrity_check failed: {found['check']}", file=sys.stderr)
        return 1
    with open(digest_file + ".partial", "w") as handle:
        handle.write(digest.hexdigest() + "\n")
    os.replace(digest_file + ".partial", digest_file)
    return 0


def receive(target: str) -> str:
    """The other end of send(): stdin into a new file `target` (0600, never over an existing one),
    on disk (fsync) before the sha256 of what was written is returned."""
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        for block in iter(lambda: sys.stdin.buffer.read(4 * CHUNK), b""):
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------
# Page deltas. An index is a database's page size and one 8-byte digest per page: XXH3-64 (measured 5x
# faster than SHA-1 here, python3-xxhash on the server, the xxhash wheel on this machine), or the first
# 8 bytes of the page's SHA-1 where xxhash is missing (an index says which: its magic). Never trusted
# alone: a file built from a delta is kept only when its sha256 equals the server's.

INDEX_MAGICS = {"sha1": b"LSVM-PAGE-INDEX-1\n", "xxh3": b"LSVM-PAGE-INDEX-2\n"}
INDEX_MAGIC = INDEX_MAGICS["sha1"]
DELTA_MAGIC = b"LSVM-PAGE-DELTA-1\n"
DELTA_MAX_SHARE = 0.5   # more pages changed than this share: the whole database goes
DIGEST = 8
PAGES_PER_READ = 256
ALGORITHM = "xxh3" if xxhash is not None else "sha1"   # what a new index here uses


def _sha1_prefix(page) -> bytes:
    return hashlib.sha1(page).digest()[:DIGEST]


def page_digester(algorithm: str = ALGORITHM):
    """The page digest function of `algorithm`; ValueError when this machine lacks it."""
    if algorithm == "sha1":
        return _sha1_prefix
    if algorithm == "xxh3" and xxhash is not None:
        return xxhash.xxh3_64_digest
    raise ValueError(f"page digests by {algorithm} need python3-xxhash here (`fab provision` installs it)")


def page_digest(page, algorithm: str = ALGORITHM) -> bytes:
    return page_digester(algorithm)(page)


def _page_size(header: bytes) -> int | None:
    """The page size a database header names (bytes 16-17; 1 means 65536); None for no SQLite header."""
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        return None
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def page_size_of(path: str) -> int | None:
    with open(path, "rb") as handle:
        return _page_size(handle.read(100))


def _pages(handle, page_size: int):
    """(page number, page) of an open file, a few hundred pages per read."""
    number = 0
    for block in iter(lambda: handle.read(page_size * PAGES_PER_READ), b""):
        view = memoryview(block)
        for offset in range(0, len(block), page_size):
            yield number, view[offset:offset + page_size]
            number += 1


def page_index(path: str, algorithm: str = ALGORITHM) -> bytes:
    """The index of a database file: its algorithm's magic, page size, digests."""
    page_size = page_size_of(path)
    if page_size is None:
        raise ValueError(f"{path} is not an SQLite database")
    digest = page_digester(algorithm)
    out = bytearray(INDEX_MAGICS[algorithm] + struct.pack(">I", page_size))
    with open(path, "rb") as handle:
        for _number, page in _pages(handle, page_size):
            out += digest(page)
    return bytes(out)


def parse_index(index: bytes) -> tuple[int, bytes, str]:
    """(page size, digests, algorithm) of an index; ValueError when it is not one."""
    head = len(INDEX_MAGIC) + 4
    algorithm = next((name for name, magic in INDEX_MAGICS.items() if index.startswith(magic)), None)
    if algorithm is None or len(index) < head or (len(index) - head) % DIGEST:
        raise ValueError("not a page index")
    return struct.unpack(">I", index[len(INDEX_MAGIC):head])[0], index[head:], algorithm


def make_delta(path: str, base_index: bytes, delta: str) -> dict:
    """Write the pages of `path` whose digest differs from `base_index` (or that it lacks) into `delta`:
    DELTA_MAGIC, page size, page count, then (page number, page) in order. A different page size makes
    every page differ: then {"usable": false}."""
    page_size = page_size_of(path)
    base_size, digests, algorithm = parse_index(base_index)
    size = os.path.getsize(path)
    if page_size is None or page_size != base_size or size % page_size:
        return {"usable": False, "why": "the page size changed"}
    page_digest = page_digester(algorithm)
    changed = 0
    with open(path, "rb") as handle, open(delta, "xb") as out:
        out.write(DELTA_MAGIC + struct.pack(">IQ", page_size, size // page_size))
        for number, page in _pages(handle, page_size):
            at = number * DIGEST
            if digests[at:at + DIGEST] != page_digest(page):
                out.write(struct.pack(">I", number))
                out.write(page)
                changed += 1
    return {"usable": True, "page_size": page_size, "pages": size // page_size, "changed": changed,
            "size": os.path.getsize(delta)}


def _delta_records(handle, page_size: int):
    while True:
        head = handle.read(4)
        if not head:
            return
        page = handle.read(page_size)
        if len(head) != 4 or len(page) != page_size:
            raise ValueError("the page delta is cut short")
        yield struct.unpack(">I", head)[0], page


FICLONE = 0x40049409   # linux/fs.h: _IOW(0x94, 9, int)
NO_REFLINK = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS)


def _clone_or_create(base: str, target: str) -> str:
    """"reflink": a new file `target` (0600) with `base`'s blocks, shared until one file changes them (btrfs,
    XFS: it takes no space), or "copy" (ext4): then a new empty `target` (0600) for `_rebuild` to
    write whole, with the sha256 worked out in the same pass (no second read of it)."""
    src = os.open(base, os.O_RDONLY)
    try:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.ioctl(out, FICLONE, src)
            return "reflink"
        except OSError as exc:
            if exc.errno in NO_REFLINK:
                return "copy"
            os.unlink(target)
            raise
        finally:
            os.close(out)
    finally:
        os.close(src)


def _rebuild(source: int, out: int, records, page_size: int, pages: int, base_pages: int, *, write_all: bool,
             digests: bytearray | None, page_digest) -> str:
    """One pass in page order: each block read from `source` (the base, or the clone itself), the delta's
    pages put in (also into `digests`), written to `out` (every block when `write_all`, else the changed
    pages alone), fed to the sha256. Returns the sha256. ValueError for a delta out of order, past the
    end, or leaving a page beyond the base unknown."""
    sha = Sha256Beside()
    try:
        record, last, new_pages = next(records, None), -1, 0
        for first in range(0, pages, PAGES_PER_READ):
            count = min(PAGES_PER_READ, pages - first)
            block = bytearray(os.pread(source, count * page_size, first * page_size) if first < base_pages else b"")
            block.extend(bytes(count * page_size - len(block)))   # beyond the base: from the delta
            while record is not None and record[0] < first + count:
                page_no, page = record
                if page_no <= last:
                    raise ValueError("the page delta is out of order")
                at = (page_no - first) * page_size
                block[at:at + page_size] = page
                if not write_all:
                    os.pwrite(out, page, page_no * page_size)
                if digests is not None:
                    digests[page_no * DIGEST:(page_no + 1) * DIGEST] = page_digest(page)
                new_pages += page_no >= base_pages
                last = page_no
                record = next(records, None)
            if write_all:
                view, written = memoryview(block), 0
                while written < len(block):
                    written += os.pwrite(out, view[written:], first * page_size + written)
            sha.feed(block)
        if record is not None:
            raise ValueError("the page delta has pages past the end of the database")
        if base_pages + new_pages < pages:
            raise ValueError(f"page {base_pages + new_pages + 1} is neither in the base nor in the delta")
    finally:
        sha.close()
    return sha.hexdigest()


def apply_delta(base: str, delta: str, target: str, base_index: bytes | None = None, *,
                durable: bool = True) -> dict:
    """A new file `target` (0600, fsynced unless not `durable`): `base` cloned (a reflink: only the
    changed pages take space) with the pages of `delta` written in place, or where the filesystem has no
    reflinks `base` copied with them, cut or grown to the delta's page count; hashed in the same pass
    (`_rebuild`). Returns its size, sha256 and how it was made, and (given the base's index) the new
    file's index (bytes). ValueError when the delta is malformed or leaves a page unknown: then no
    `target` is left. `target` == `base`: a file of the caller's own, changed where it is (no clone).
    `durable` False: the caller fsyncs it later, before anything trusts it (a local snapshot: its check)."""
    with open(delta, "rb") as changes:
        head = changes.read(len(DELTA_MAGIC) + 12)
        if not head.startswith(DELTA_MAGIC) or len(head) != len(DELTA_MAGIC) + 12:
            raise ValueError("not a page delta")
        page_size, pages = struct.unpack(">IQ", head[len(DELTA_MAGIC):])
        # Bounded before anything is read or allocated: the delta comes from the server.
        if not 512 <= page_size <= 65536 or page_size & (page_size - 1):
            raise ValueError(f"the page delta names an impossible page size ({page_size})")
        records = (os.path.getsize(delta) - len(head)) // (4 + page_size)
        base_pages = os.path.getsize(base) // page_size
        if pages > base_pages + records:
            raise ValueError(f"the page delta claims {pages} pages, more than it and the base hold")
        digests, algorithm = None, ALGORITHM
        if base_index is not None:
            index_page_size, old, algorithm = parse_index(base_index)
            if index_page_size == page_size:
                digests = bytearray(old[:pages * DIGEST].ljust(pages * DIGEST, b"\0"))
        page_digest = page_digester(algorithm)
        cloned = "in place" if target == base else _clone_or_create(base, target)
        try:
            with open(target, "r+b") as out, open(base, "rb") as source:
                if cloned != "copy":
                    out.truncate(min(base_pages, pages) * page_size)
                sha = _rebuild(source.fileno() if cloned == "copy" else out.fileno(), out.fileno(),
                               _delta_records(changes, page_size), page_size, pages, base_pages,
                               write_all=cloned == "copy", digests=digests, page_digest=page_digest)
                if durable:
                    os.fsync(out.fileno())
        except BaseException:
            os.unlink(target)
            raise
    result = {"size": pages * page_size, "sha256": sha, "cloned": cloned}
    if digests is not None:
        result["index"] = INDEX_MAGICS[algorithm] + struct.pack(">I", page_size) + bytes(digests)
    return result


# ------------------------------------------------------------------------------------------------
# A whole backup on one channel (`serve-backup`): this machine asks, the server copies, hashes and
# compares, says what it found, this machine chooses, the server streams. The page index of each copy
# stays on the server (in the data dir, the service user's), so the next backup compares against it
# without this machine uploading one.

KEEP_INDEXES = 3
MAX_INDEX = 64 * 1024 * 1024   # 8 bytes a page: the index of a 32 GiB database at 4 KiB pages


def _say(answer: dict) -> None:
    """One answer on stdout: its length on a line, then the JSON (a listing of many media files is read
    whole by the other end, not byte by byte)."""
    data = json.dumps(answer).encode()
    sys.stdout.buffer.write(b"%d\n" % len(data) + data)
    sys.stdout.buffer.flush()


def _heard(stdin) -> dict:
    line = stdin.readline(1024 * 1024)
    if not line.endswith(b"\n"):
        raise ValueError("the request was cut short")
    found = json.loads(line)
    if not isinstance(found, dict):
        raise ValueError("the request is not a JSON object")
    return found


def kept_index(index_dir: str, sha256: str | None) -> bytes | None:
    """The page index kept of the copy whose sha256 is given, None when there is none (or no name)."""
    if not isinstance(sha256, str) or len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        return None
    try:
        with open(os.path.join(index_dir, sha256 + ".pages"), "rb") as handle:
            index = handle.read(MAX_INDEX + 1)
        parse_index(index)
        return index
    except (OSError, ValueError):
        return None


def keep_index(index_dir: str, sha256: str, index: bytes) -> None:
    """The index of a copy, kept by its sha256 (whole, by a rename); only the newest KEEP_INDEXES stay."""
    os.makedirs(index_dir, mode=0o700, exist_ok=True)
    path = os.path.join(index_dir, sha256 + ".pages")
    with open(path + ".partial", "wb") as handle:
        handle.write(index)
    os.replace(path + ".partial", path)
    kept = sorted((os.path.join(index_dir, n) for n in os.listdir(index_dir)), key=os.path.getmtime, reverse=True)
    for old in kept[KEEP_INDEXES:]:
        os.unlink(old)


class Sha256Beside:
    """The sha256 of blocks fed in order, worked out on another core (hashlib lets go of the GIL) while
    the caller reads and writes the next ones."""

    def __init__(self):
        self.sha = hashlib.sha256()
        self.blocks: queue.Queue = queue.Queue(maxsize=8)
        self.thread = threading.Thread(target=lambda: [self.sha.update(b) for b in iter(self.blocks.get, None)])
        self.thread.start()

    def feed(self, block) -> None:
        self.blocks.put(block)

    def close(self) -> None:
        if self.thread.is_alive():
            self.blocks.put(None)
            self.thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self.sha.hexdigest()


class PageDigests:
    """The sha256, page index and (against a base index) delta of a database's bytes, fed in order a
    block of whole pages at a time: the sha256 beside (Sha256Beside), the page digests here. A base of
    another page size, or by a digest this machine lacks: no delta, and `why` says why."""

    def __init__(self, page_size: int, size: int, base_index: bytes | None, delta: str):
        self.page_size, self.size, self.delta_path = page_size, size, delta
        self.digests, algorithm, self.why = None, ALGORITHM, None
        if base_index is not None:
            base_size, self.digests, algorithm = parse_index(base_index)
            if base_size != page_size or size % page_size:
                self.digests, algorithm, self.why = None, ALGORITHM, "the page size changed"
        try:
            self.digest = page_digester(algorithm)
        except ValueError as exc:   # an older index by a digest this server lacks
            self.digests, algorithm, self.why = None, ALGORITHM, str(exc)
            self.digest = page_digester(algorithm)
        self.based = base_index is not None
        self.index = bytearray(INDEX_MAGICS[algorithm] + struct.pack(">I", page_size))
        self.head = len(self.index)
        self.changed = 0
        self.sha = Sha256Beside()
        self.out = open(delta, "xb") if self.digests is not None else None
        if self.out is not None:
            self.out.write(DELTA_MAGIC + struct.pack(">IQ", page_size, size // page_size))

    def feed(self, block) -> None:
        self.sha.feed(block)
        page_size = self.page_size
        view = memoryview(block)
        first = (len(self.index) - self.head) // DIGEST
        marks = b"".join([self.digest(view[at:at + page_size]) for at in range(0, len(block), page_size)])
        self.index += marks
        if self.out is None:
            return
        before = self.digests[first * DIGEST:first * DIGEST + len(marks)]
        if before != marks:   # most blocks are unchanged: one comparison for their 256 pages
            for n in range(len(marks) // DIGEST):
                if before[n * DIGEST:(n + 1) * DIGEST] != marks[n * DIGEST:(n + 1) * DIGEST]:
                    self.out.write(struct.pack(">I", first + n))
                    self.out.write(view[n * page_size:(n + 1) * page_size])
                    self.changed += 1

    def _close(self) -> None:
        self.sha.close()
        if self.out is not None and not self.out.closed:
            self.out.close()

    def drop(self) -> None:
        """Given up: the hasher stopped, the delta file removed."""
        self._close()
        if self.out is not None and os.path.exists(self.delta_path):
            os.unlink(self.delta_path)

    def result(self) -> dict:
        self._close()
        pages = self.size // self.page_size
        found = {"sha256": self.sha.hexdigest(), "size": self.size, "index": bytes(self.index), "pages": pages}
        found["delta"] = ({"pages": pages, "changed": self.changed, "size": os.path.getsize(self.delta_path)}
                          if self.out is not None else None)
        found["why"] = self.why if self.out is None and self.based else None
        return found


def digest_copy(path: str, base_index: bytes | None, delta: str) -> dict:
    """One read of a copy: its sha256, its page index (the base index's algorithm, else ALGORITHM), and,
    against `base_index`, the delta of the pages that differ into `delta` (as make_delta writes it).
    "delta" is None without a usable base: {"why": ...} says why not."""
    page_size = page_size_of(path)
    if page_size is None:
        raise ValueError(f"{path} is not an SQLite database")
    digests = PageDigests(page_size, os.path.getsize(path), base_index, delta)
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(page_size * PAGES_PER_READ), b""):
                digests.feed(block)
    except BaseException:
        digests.drop()
        raise
    return digests.result()


def _open_beneath(top: str, name: str) -> int:
    """A descriptor of the regular file `name` under `top`, never through a link (each folder on the way
    opened with O_NOFOLLOW): a link planted anywhere in the path leads nowhere. OSError otherwise."""
    parts = name.split("/")
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise OSError(errno.EINVAL, "not a plain relative name")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        found = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(found).st_mode):
        os.close(found)
        raise OSError(errno.EINVAL, "not a regular file")
    return found


def _add(tar, fd: int, name: str, size: int | None = None) -> None:
    st = os.fstat(fd)
    info = tarfile.TarInfo(name)
    info.size = st.st_size if size is None else size
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = int(st.st_mtime), 0o600, 0, 0, "root", "root"
    with os.fdopen(fd, "rb") as handle:
        tar.addfile(info, handle)


# The stream's zstd: level 1 while the link takes what it makes (loopback, a LAN), up to level 4 while the
# link is the bottleneck (zstd --adapt). On 1 GiB of Label Studio's database behind a 100 Mbit/s link:
# 236 MiB in 20 s against level 1's 308 MiB in 26 s, 6.6 s of server CPU against 2.8 (level 6 would take
# 13 s for 5% fewer bytes); with nothing slowing it, 2.5 s against 2.0.
ZSTD_STREAM = ("zstd", "-q", "--adapt=min=1,max=4", "-T0", "-c")


def stream_files(codec: str, members: list) -> None:
    """A compressed tar on stdout (zstd, ZSTD_STREAM, or gzip) of `members`: (descriptor, name in the
    archive), or (opener, name): a callable that opens the file safely when its turn comes, so that any number of
    files go with one descriptor at a time; one it can no longer open (deleted, or replaced by a link,
    since the listing) is left out, and this machine sees it missing. The tar is written here, so every
    file was opened safely before it goes."""
    if codec == "zstd":
        compressor = subprocess.Popen(ZSTD_STREAM, stdin=subprocess.PIPE,
                                      stdout=sys.stdout.fileno())
        target = compressor.stdin
    else:
        import gzip

        compressor, target = None, gzip.GzipFile(fileobj=sys.stdout.buffer, mode="wb", compresslevel=1)
    try:
        with tarfile.open(fileobj=target, mode="w|", bufsize=CHUNK, format=tarfile.PAX_FORMAT, encoding="utf-8",
                          errors="surrogateescape") as tar:
            for opener, name in members:
                if isinstance(opener, int):
                    fd = opener
                else:
                    try:
                        fd = opener()
                    except OSError:
                        continue
                _add(tar, fd, name)
    finally:
        target.close()
        if compressor is not None and compressor.wait() != 0:
            raise OSError("zstd failed")
    sys.stdout.buffer.flush()


def serve_backup(data_dir: str, venv: str, index_dir: str, work_dir: str) -> int:
    """The server's whole part of a backup, on stdin/stdout (see this section's head). Request: one JSON
    line {"marker": the base's change marker, "base": the base database's sha256, "keep": false when
    no page index may be kept in this data dir (one not ours yet)}. Then, when it keeps
    no index of that base: {"need_index": true}, answered by 8 bytes of length and the index (length 0:
    none). Then the findings: one JSON line. Then this machine's choice: one JSON line {"database":
    "delta" | "whole" | null, "files": [names from the findings' listing]}. Then the tar stream."""
    stdin = sys.stdin.buffer
    request = _heard(stdin)
    database = os.path.join(data_dir, DATABASE_NAME)
    copy = os.path.join(work_dir, DATABASE_NAME)
    delta_path = os.path.join(work_dir, DELTA)
    found = {"database_exists": os.path.isfile(database), "timeline": {}}
    timeline = found["timeline"]
    if found["database_exists"]:
        marker = _marker_or_none(database)
        found["marker"] = marker
        if marker is not None and marker == request.get("marker"):
            found["unchanged"] = True
        else:
            base_index = None
            keep = request.get("keep", True) is not False   # False: a data dir not ours (adopt) gets no index folder
            if request.get("base"):   # asked first: with it only the changed pages need writing (digest_live)
                base_index = kept_index(index_dir, request["base"]) if keep else None
                found["index_kept"] = base_index is not None
                if base_index is None:
                    _say({"need_index": True})
                    length = int.from_bytes(stdin.read(8), "big")
                    if length > MAX_INDEX:
                        raise ValueError("the page index sent is too large")
                    base_index = stdin.read(length) if length else None
                    if base_index is not None and len(base_index) != length:
                        raise ValueError("the page index sent was cut short")
                    try:
                        if base_index is not None:
                            parse_index(base_index)
                    except ValueError as exc:   # then no delta: the whole database goes
                        base_index, found["delta_why"] = None, f"the page index sent: {exc}"
            digested = None
            if base_index is not None:   # only the changed pages go: no copy needed
                started = time.monotonic()
                try:
                    digested = digest_live(database, base_index, delta_path)
                except (sqlite3.Error, OSError, ValueError):
                    digested = None   # the copy below says what is wrong, if anything is
                if digested is not None:
                    found["copy"] = "none: the live database read and digested in one read transaction"
                    timeline["server digests, no copy"] = time.monotonic() - started
            if digested is None:
                size = os.path.getsize(database)
                st = os.statvfs(work_dir)
                if st.f_bavail * st.f_frsize < size + CHUNK:
                    found["copy_error"] = (f"No space left: the copy needs {size} bytes, "
                                           f"{st.f_bavail * st.f_frsize} are free in {os.path.dirname(work_dir)}")
                    _say(found)
                    return 0
                started = time.monotonic()
                try:
                    found["copy"], digested = copy_and_digest(database, copy, base_index, delta_path)
                except (sqlite3.Error, OSError) as exc:
                    found["copy_error"] = str(exc)
                    _say(found)
                    return 0
                timeline["server copy and digests" if digested else "server copy"] = time.monotonic() - started
                if digested is None:
                    started = time.monotonic()
                    try:
                        digested = digest_copy(copy, base_index, delta_path)
                    except ValueError as exc:
                        found["delta_why"] = str(exc)
                    timeline["server digests"] = time.monotonic() - started
            if digested is not None:
                try:   # an index not kept costs the next backup an upload of this machine's, nothing more
                    if keep:
                        keep_index(index_dir, digested["sha256"], digested["index"])
                except OSError as exc:
                    found["index_not_kept"] = str(exc)
                found["database"] = {"size": digested["size"], "sha256": digested["sha256"]}
                found["delta"] = digested["delta"]
                found["delta_why"] = digested["why"] or found.get("delta_why")
            else:
                found["database"] = {"size": os.path.getsize(copy), "sha256": sha256_file(copy)}
    env = os.path.join(data_dir, ".env")
    if os.path.isfile(env) and not os.path.islink(env):
        found["env"] = {"size": os.path.getsize(env), "sha256": sha256_file(env)}
    found["media"] = media_listing(os.path.join(data_dir, "media"))
    found["label_studio_version"] = label_studio_version(venv)
    found["codec"] = "zstd" if shutil.which("zstd") else "gzip"
    _say(found)
    choice = _heard(stdin)
    members = []
    if choice.get("database") == "delta" and found.get("delta"):
        members.append((os.open(delta_path, os.O_RDONLY), DELTA))
    elif choice.get("database") == "whole" and "database" in found:
        members.append((os.open(copy, os.O_RDONLY), DATABASE_NAME))
    listed = {m["path"] for m in found["media"]} | ({".env"} if "env" in found else set())
    for name in choice.get("files", []):
        if name not in listed:
            raise ValueError(f"{name!r} was not in the listing")
        # Opened when its turn comes (thousands of uploads would pass the limit of open descriptors).
        members.append((functools.partial(_open_beneath, data_dir, name), name))
    stream_files(found["codec"], members)
    return 0


def main(argv: list[str]) -> int:
    command = argv[0]
    if command == "prepare":
        print(json.dumps(prepare(*argv[1:5])))
    elif command == "check":
        print(json.dumps(check(argv[1])))
    elif command == "counts":
        con = sqlite3.connect(f"file:{argv[1]}?mode=ro", uri=True, timeout=30)
        try:
            print(json.dumps({k: con.execute(f"select count(*) from {t}").fetchone()[0]
                              for k, t in COUNTS.items()}))
        except sqlite3.DatabaseError as exc:
            print(json.dumps({"error": str(exc)}))
        finally:
            con.close()
    elif command == "migrations":
        try:
            print(json.dumps(migrations(argv[1])))
        except sqlite3.DatabaseError as exc:
            print(json.dumps({"error": str(exc)}))
    elif command == "serve-backup":
        return serve_backup(*argv[1:5])
    elif command == "apply-live":
        print(json.dumps(apply_to_live_copy(argv[1], argv[2])))
    elif command == "settle":
        try:
            result = settle(argv[1])
        except sqlite3.Error as exc:
            result = {"error": str(exc)}
        print(json.dumps(result))
        return 1 if "error" in result else 0
    elif command == "sha256":
        print(json.dumps({p: {"size": os.path.getsize(p), "sha256": sha256_file(p)} for p in argv[1:]}))
    elif command == "send":
        return send(argv[1], argv[2])
    elif command == "receive":
        print(receive(argv[1]))
    elif command == "tree-sha256":
        print(json.dumps(tree_sha256(argv[1], tuple(argv[2:]))))
    else:
        print(json.dumps({"error": f"unknown command {command}"}))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
