"""Run before the app server starts (systemd's ExecStartPre, the screen launcher's first command), by the
release's python as the service user, with the service's environment: the one step that changes the
database's shape, so the app server's workers never migrate.

- SQLite: WAL mode (kept by the file once set): readers no longer wait for a writer, nor a writer for
  readers. Set while nothing else has the database open (the service is stopped), so it cannot be refused.
- the release's migrations, once: on PostgreSQL under Label Studio's own `locked_migrate` (an advisory
  lock): two app servers starting together never apply one twice; SQLite's own write lock does that there.
- with `--share-with-group` (the profile's offsite: section is on): the SQLite database and its -wal and
  -shm files group-writable (0660), whoever made them and however (a restore, a first migration): the
  replication user reads and checkpoints the database through the service user's group. SQLite gives a
  new -wal or -shm file the database's mode.

Prints what it did, one line each. Standard library at the top (Django comes from the release).
Installed by `fab provision` as <app_dir>/prepare-database.py.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys


def label_studio_dir() -> str:
    spec = importlib.util.find_spec("label_studio")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("label_studio is not installed in this release")
    return list(spec.submodule_search_locations)[0]


def wal_mode(connection) -> str:
    with connection.cursor() as cursor:
        before = cursor.execute("PRAGMA journal_mode").fetchone()[0]
        if before.lower() == "wal":
            return "SQLite is in WAL mode"
        after = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if after.lower() != "wal":
        return f"SQLite stays in {after} mode (WAL was refused)"
    return f"SQLite switched from {before} to WAL mode"


SHARED_MODE = 0o660


def share_with_group(database: str) -> str:
    changed = []
    for path in (database, database + "-wal", database + "-shm"):
        try:
            if os.stat(path).st_mode & 0o777 != SHARED_MODE:
                os.chmod(path, SHARED_MODE)
                changed.append(os.path.basename(path))
        except FileNotFoundError:
            continue
    return f"made {', '.join(changed)} group-writable (offsite replication)" if changed else \
        "the database is group-writable (offsite replication)"


def pending(connection) -> list[str]:
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    return [f"{m.app_label}.{m.name}" for m, _ in executor.migration_plan(executor.loader.graph.leaf_nodes())]


def main() -> int:
    sys.path.insert(0, label_studio_dir())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings.label_studio")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor == "sqlite":
        print(wal_mode(connection), flush=True)
    todo = pending(connection)
    if not todo:
        print("no migrations to apply", flush=True)
        return 0
    command = "locked_migrate" if connection.vendor == "postgresql" else "migrate"
    print(f"{len(todo)} migration(s) to apply: {command}", flush=True)
    said = io.StringIO()
    call_command(command, interactive=False, verbosity=1, no_color=True, stdout=said)
    # What this process applied, as Django reports each one: another start may have applied them while
    # this one waited for the lock (it then finds nothing left to do).
    applied = sum(1 for line in said.getvalue().splitlines() if line.lstrip().startswith("Applying "))
    left = pending(connection)
    print(f"applied {applied} migration(s)" + (f", {len(left)} still pending" if left else ""), flush=True)
    return 1 if left else 0


def main_with_options(argv: list[str]) -> int:
    status = main()
    if status == 0 and "--share-with-group" in argv:
        from django.db import connection

        if connection.vendor == "sqlite":
            print(share_with_group(str(connection.settings_dict["NAME"])), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main_with_options(sys.argv[1:]))
