"""SQLite work for snapshots: a consistent copy with the online backup API, integrity and Label Studio
checks, counts, checksums.

Standard library only and free of package imports, because the same source runs on the server:
`python3 -c "<this file>" prepare ...` prints one JSON document. One implementation, both sides.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sqlite3
import stat
import sys

LABEL_STUDIO_TABLES = ("django_migrations", "htx_user", "project", "task", "task_completion")
COUNTS = {"users": "htx_user", "projects": "project", "tasks": "task", "annotations": "task_completion"}
CHUNK = 1024 * 1024


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def consistent_copy(source: str, target: str, busy_timeout: float = 60.0) -> None:
    """SQLite's online backup API in one step: a consistent image even while Label Studio writes
    (writers wait for the read lock, as they would for any reader). Never a raw file copy."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=busy_timeout)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def inspect(path: str) -> dict:
    """integrity_check, whether it is a Label Studio database, and row counts. Never raises for a bad
    file: a report says what is wrong."""
    report = {"integrity_check": "", "label_studio": False, "missing_tables": [], "counts": {}, "error": None}
    if not os.path.isfile(path):
        report["error"] = "no such file"
        return report
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
            report["integrity_check"] = "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:3])
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


def describe_problem(report: dict) -> str | None:
    """None when the database is a healthy Label Studio database, else what is wrong, in words."""
    if report["error"]:
        return f"not a usable SQLite database ({report['error']})"
    if report["integrity_check"] != "ok":
        return f"integrity_check failed: {report['integrity_check']}"
    if not report["label_studio"]:
        return "not a Label Studio database (missing tables: " + ", ".join(report["missing_tables"]) + ")"
    return None


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


def change_marker(path: str) -> dict | None:
    """What changes whenever the database does: SQLite's file change counter (header bytes 24-27,
    bumped by every committed write in rollback-journal mode), read under a shared lock, plus size,
    mtime and inode. None in WAL mode, where the counter does not move."""
    if os.path.exists(path + "-wal"):
        return None
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        con.execute("BEGIN")
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the shared lock
        with open(path, "rb") as handle:
            header = handle.read(100)
        st = os.stat(path)
        con.execute("COMMIT")
    finally:
        con.close()
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return None
    return {"counter": int.from_bytes(header[24:28], "big"), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def prepare(data_dir: str, work_dir: str, venv: str, previous_marker: str = "null") -> dict:
    """Server side of a backup: a consistent DB copy into work_dir, unless the database has not changed
    since the snapshot whose marker is given; .env hashed, media listed. The copy's check and hash run
    later, beside the stream (see `check`)."""
    database = os.path.join(data_dir, "label_studio.sqlite3")
    result = {"database_exists": os.path.isfile(database)}
    if result["database_exists"]:
        try:
            marker = change_marker(database)
        except sqlite3.Error:
            marker = None
        result["marker"] = marker
        if marker is not None and marker == json.loads(previous_marker):
            result["unchanged"] = True
        else:
            snapshot = os.path.join(work_dir, "label_studio.sqlite3")
            try:
                consistent_copy(database, snapshot)
            except sqlite3.Error as exc:
                result["copy_error"] = str(exc)
                return result
            result["database"] = {"size": os.path.getsize(snapshot)}
    env = os.path.join(data_dir, ".env")
    if os.path.isfile(env):
        result["env"] = {"size": os.path.getsize(env), "sha256": sha256_file(env)}
    result["media"] = media_listing(os.path.join(data_dir, "media"))
    result["label_studio_version"] = label_studio_version(venv)
    return result


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


def check(path: str) -> dict:
    """sha256 and inspect() of a finished copy."""
    return {"sha256": sha256_file(path), "report": inspect(path)}


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
    elif command == "sha256":
        print(json.dumps({p: {"size": os.path.getsize(p), "sha256": sha256_file(p)} for p in argv[1:]}))
    else:
        print(json.dumps({"error": f"unknown command {command}"}))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
