"""The nightly restore drill, run ON the server by the replication user (systemd timer): the newest point
restored from the offsite target alone into a scratch file, Litestream's full integrity_check and ours,
Label Studio's tables present, their row counts beside the live database's; the result written whole
(by a rename) as JSON for `status` and `fab offsite`. Standard library only; installed by `fab provision`
as <app_dir>/offsite-drill.py.

    offsite-drill.py LITESTREAM CONFIG DATABASE SCRATCH_DIR RESULT
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

# Label Studio's own tables a restored database must hold (users, projects, tasks, annotations, its migrations).
TABLES = ("django_migrations", "htx_user", "project", "task", "task_completion")
RESTORE_TIMEOUT = 6 * 3600


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


def write_whole(path: str, data: dict) -> None:
    partial = path + ".partial"
    with open(partial, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    litestream, config, database, scratch, result_path = argv
    os.umask(0o077)
    started = time.time()
    try:
        result = drill(litestream, config, database, scratch)
    except (OSError, sqlite3.Error, subprocess.SubprocessError) as exc:
        result = {"problem": f"the drill could not run: {exc}"}
    result.update(ok="problem" not in result, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)))
    write_whole(result_path, result)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
