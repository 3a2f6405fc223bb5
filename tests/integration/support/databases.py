"""What a SQLite database holds, as one digest: its schema and every row of every table, in rowid order.
The server's database is in WAL mode: its file's bytes change at each checkpoint (and its header says WAL,
where a snapshot's says rollback journal), so "the same data" is compared through this, never by the
file's sha256. The same source runs here and, as the service user, on a VM."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from tasks.core.commands import join

DIGEST = """
import hashlib, sqlite3, sys
con = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)
digest = hashlib.sha256()
for kind, name, sql in con.execute("select type, name, sql from sqlite_master order by type, name").fetchall():
    digest.update(repr((kind, name, sql)).encode())
    if kind == 'table':
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            rows = con.execute('select * from ' + quoted + ' order by rowid').fetchall()
        except sqlite3.OperationalError:  # a WITHOUT ROWID table
            rows = sorted(con.execute('select * from ' + quoted).fetchall(), key=repr)
        for row in rows:
            digest.update(repr(row).encode())
print(digest.hexdigest())
"""


def database_digest(path: Path) -> str:
    return subprocess.run([sys.executable, "-I", "-c", DIGEST, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def server_database_digest(vm, path: str = "/var/lib/label-studio/label_studio.sqlite3") -> str:
    """Read by the service user (the file is its own) while Label Studio may run: one read transaction."""
    command = join("runuser", "-u", "labelstudio", "--", "python3", "-I", "-c", DIGEST, path)
    return vm.exec(command).stdout.decode().strip()


def index_out_of_step(database: Path, table: str, column: str, old: bytes, new: bytes) -> None:
    """A new index on `table`(`column`) whose page then has the key `old` changed to `new` (same length):
    the file's pages and row counts read fine, only a full integrity_check sees the index and the rows
    disagree."""
    assert len(old) == len(new)
    con = sqlite3.connect(database)
    con.execute(f"create index lsvm_test_{column} on {table}({column})")
    con.commit()
    root = con.execute(f"select rootpage from sqlite_master where name = 'lsvm_test_{column}'").fetchone()[0]
    size = con.execute("pragma page_size").fetchone()[0]
    con.close()
    raw = bytearray(database.read_bytes())
    page = raw[(root - 1) * size: root * size]
    assert old in page, f"{old!r} is not in the index's page"
    raw[(root - 1) * size: root * size] = page.replace(old, new)
    database.write_bytes(bytes(raw))


# Files of ours the data dir keeps between tasks (no leftover of a swap or an upload): the page index of the
# last backups' copies, and the start-up stamp the database step writes (both the service user's).
KEPT_IN_DATA_DIR = (".lsvm-pages", ".lsvm-prepared.json")


def leftovers_in_data_dir(vm, data_dir: str = "/var/lib/label-studio") -> list[str]:
    """Names in the data dir that a data task of ours left behind (swap, upload): none, after any task."""
    names = vm.exec(f"ls -A {data_dir}").stdout.decode().split()
    return [name for name in names if "lsvm" in name and name not in KEPT_IN_DATA_DIR]
