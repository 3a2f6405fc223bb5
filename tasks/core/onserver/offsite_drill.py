"""The nightly restore drill, run ON the server by the replication user (systemd timer): the newest point
restored from the offsite target alone into a scratch file, Litestream's full integrity_check and ours,
Label Studio's tables present, their row counts beside the live database's; then restic's snapshots of
.env and media listed and `restic check` reading back a share of its packs in full. The result written
whole (by a rename) as JSON for `status` and `fab offsite`. Standard library only; installed by
`fab provision` as <app_dir>/offsite-drill.py.

.env and media listed and `restic check` reading back a share of its packs in full; last, with an S3 target
and offsite.append_only, whether the server's own keys could erase the history (offsite-history.py).

With PostgreSQL (LITESTREAM is "-": its dump rides in each files snapshot) the newest snapshot's
label_studio.pgdump is read back through `pg_restore --list` (its table of contents whole, Label Studio's
tables in it) beside the row counts taken with it, instead of a Litestream restore.

    offsite-drill.py LITESTREAM CONFIG DATABASE SCRATCH_DIR RESULT -- RESTIC... -- CHECK... [-- HISTORY...]
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time

# Label Studio's own tables a restored database must hold (users, projects, tasks, annotations, its migrations).
TABLES = ("django_migrations", "htx_user", "project", "task", "task_completion")
RESTORE_TIMEOUT = 6 * 3600
FILES_TAG = "files"
FILES_NAME = "files.tar"
DUMP, DUMP_COUNTS = "label_studio.pgdump", "label_studio.pgdump.json"   # in the files snapshot's tar
NO_LITESTREAM = "-"                # PostgreSQL: no stream to restore, a dump in each files snapshot
LOCKED = "repository is already locked"
LOCK_WAIT = 3600                   # the hourly snapshot of .env and media holds restic's lock meanwhile
LOCK_POLL = 15


def counts(path: str) -> dict:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        present = {row[0] for row in connection.execute("select name from sqlite_master where type='table'")}
        return {table: connection.execute(f'select count(*) from "{table}"').fetchone()[0] if table in present
                else None for table in TABLES}
    finally:
        connection.close()


def integrity(path: str) -> str:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return connection.execute("pragma integrity_check").fetchone()[0]
    finally:
        connection.close()


def drill(litestream: str, config: str, database: str, scratch: str) -> dict:
    restored = os.path.join(scratch, "drill.sqlite3")
    for leftover in (restored, restored + "-wal", restored + "-shm"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    started = time.monotonic()
    run = subprocess.run([litestream, "restore", "-config", config, "-integrity-check", "full", "-o", restored, database],
                         capture_output=True, text=True, timeout=RESTORE_TIMEOUT)
    result: dict = {"seconds": round(time.monotonic() - started, 1)}
    try:
        if run.returncode != 0:
            said = (run.stderr or run.stdout).strip().splitlines()
            result["problem"] = "litestream restore failed: " + (said[-1] if said else f"exit {run.returncode}")
            return result
        result["size"] = os.path.getsize(restored)
        checked = integrity(restored)
        if checked != "ok":
            result["problem"] = f"the restored database fails integrity_check: {checked[:200]}"
            return result
        restored_counts = counts(restored)
        result["counts"] = restored_counts
        missing = [table for table, n in restored_counts.items() if n is None]
        if missing:
            result["problem"] = f"the restored database lacks Label Studio's tables: {', '.join(missing)}"
            return result
        try:
            result["live_counts"] = counts(database)
        except sqlite3.Error as exc:
            result["live_counts_error"] = str(exc)
        return result
    finally:
        for leftover in (restored, restored + "-wal", restored + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)


# What ssh says when it will not or cannot log in to an SFTP target (restic's own last line only says the
# session did not start).
SSH_REASONS = ("Host key verification failed", "Permission denied", "Could not resolve hostname",
               "Connection refused", "Connection timed out", "No route to host")


def last_line(text: str) -> str:
    """The last line, after ssh's reason when ssh gave one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    why = [line for line in lines if any(reason in line for reason in SSH_REASONS)]
    last = lines[-1] if lines else ""
    return f"{why[-1]} ({last})" if why and why[-1] != last else last


def restic_run(words: list[str]) -> subprocess.CompletedProcess:
    """restic, waiting while another restic of this VM holds the repository's lock."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        run = subprocess.run(words, capture_output=True, text=True, timeout=RESTORE_TIMEOUT)
        if run.returncode == 0 or LOCKED not in run.stderr or time.monotonic() > deadline:
            return run
        time.sleep(LOCK_POLL)   # poll: the lock is restic's, with no other signal to wait on


def files_drill(restic: list[str], check: list[str]) -> dict:
    """restic's snapshots of .env and media listed, then its check reading back a share of the data."""
    found: dict = {}
    listed = restic_run([*restic, "snapshots", "--json", "--tag", FILES_TAG])
    if listed.returncode != 0:
        found["problem"] = "restic snapshots failed: " + (last_line(listed.stderr) or f"exit {listed.returncode}")
        return found
    snapshots = sorted(json.loads(listed.stdout or "[]"), key=lambda s: s["time"])
    found["files_snapshots"] = len(snapshots)
    if not snapshots:
        found["problem"] = "the target holds no snapshot of .env and media"
        return found
    found["files_newest"], found["files_newest_id"] = snapshots[-1]["time"], snapshots[-1]["id"]
    started = time.monotonic()
    checked = restic_run([*restic, *check])
    found["files_check_seconds"] = round(time.monotonic() - started, 1)
    if checked.returncode != 0:
        found["problem"] = "restic check failed: " + (last_line(checked.stdout + checked.stderr)
                                                       or f"exit {checked.returncode}")
    return found


def table_of(toc_line: str) -> str:
    """The table a `pg_restore --list` line names: `3380; 0 16390 TABLE DATA public project owner`."""
    words = toc_line.split()
    at = words.index("DATA")
    return words[at + 2] if len(words) > at + 2 else ""


def dump_drill(restic: list[str], snapshot: str, scratch: str) -> dict:
    """PostgreSQL: the snapshot's dump out of restic into the scratch dir, read by `pg_restore --list`,
    and the row counts taken in the dump's own transaction (its .json)."""
    started = time.monotonic()
    restored = os.path.join(scratch, "drill.pgdump")
    dumped = subprocess.Popen([*restic, "dump", snapshot, f"/{FILES_NAME}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    found: dict = {"engine": "postgresql", "snapshot": snapshot}
    listing = None
    try:
        with tarfile.open(fileobj=dumped.stdout, mode="r|") as archive:
            for member in archive:
                if member.name == DUMP_COUNTS:
                    found["dump_counts"] = json.load(archive.extractfile(member)).get("counts")
                elif member.name == DUMP:
                    found["size"] = member.size
                    with open(restored, "wb") as out:
                        shutil.copyfileobj(archive.extractfile(member), out, 1 << 20)
                    listing = subprocess.run(["pg_restore", "--list", restored], capture_output=True, text=True,
                                             timeout=RESTORE_TIMEOUT)
    except (tarfile.TarError, ValueError) as exc:
        found["problem"] = f"the snapshot's tar could not be read: {exc}"
    finally:
        if os.path.exists(restored):
            os.unlink(restored)
    dumped.stdout.close()
    err = dumped.stderr.read().decode(errors="replace")
    dumped.wait()
    found["seconds"] = round(time.monotonic() - started, 1)
    if "problem" in found:
        return found
    if dumped.returncode != 0:
        found["problem"] = "restic dump failed: " + (last_line(err) or f"exit {dumped.returncode}")
    elif listing is None or "dump_counts" not in found:
        found["problem"] = f"snapshot {snapshot[:8]} holds no database dump"
    elif listing.returncode != 0:
        found["problem"] = "pg_restore --list failed: " + (last_line(listing.stderr) or f"exit {listing.returncode}")
    else:
        entries = [line for line in listing.stdout.splitlines() if line and not line.startswith(";")]
        tables = {table_of(line) for line in entries if " TABLE DATA " in line}
        missing = [table for table in TABLES if table not in tables]
        found["toc_entries"] = len(entries)
        if missing:
            found["problem"] = f"the dump lacks Label Studio's tables: {', '.join(missing)}"
    return found


def history_drill(history: list[str]) -> dict:
    """offsite-history.py's answer: the target's history is append-only only when an old version could
    not be deleted with the server's keys."""
    run = subprocess.run(history, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        return {"problem": "the history check failed: " + (last_line(run.stderr) or f"exit {run.returncode}")}
    found = json.loads(run.stdout)
    result: dict = {"history": found}
    if found.get("problem"):
        result["problem"] = f"the history check failed: {found['problem']}"
    elif found.get("erasable") is not False:
        why = ("versioning is off on the bucket" if found.get("versioning") in ("off", "Suspended")
               else "they may delete old versions (s3:DeleteObjectVersion)")
        result["problem"] = (f"the server's keys can erase the offsite history: {why}; see `fab offsite "
                             "--iam-policy`, or set offsite.append_only: false")
    return result


def write_whole(path: str, data: dict) -> None:
    partial = path + ".partial"
    with open(partial, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    parts, start = [], 0
    for index, word in enumerate(argv + ["--"]):
        if word == "--":
            parts.append(argv[start:index])
            start = index + 1
    litestream, config, database, scratch, result_path = parts[0]
    restic, check, history = (parts[1:] + [[], [], []])[:3]
    os.umask(0o077)
    started = time.time()
    try:
        if litestream == NO_LITESTREAM:
            result = files_drill(restic, check)
            if "problem" not in result:
                result.update(dump_drill(restic, result["files_newest_id"], scratch))
        else:
            result = drill(litestream, config, database, scratch)
            if "problem" not in result and restic:
                result.update(files_drill(restic, check))
        if "problem" not in result and history:
            result.update(history_drill(history))
    except (OSError, ValueError, KeyError, sqlite3.Error, subprocess.SubprocessError) as exc:
        result = {"problem": f"the drill could not run: {exc}"}
    result.update(ok="problem" not in result, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)))
    write_whole(result_path, result)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
