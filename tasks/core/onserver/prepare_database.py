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
- with `--stamp FILE` (the service user's, in the data dir): after Django found nothing left to apply, it
  records the SQLite file Django uses and the migrations the release needs, for this release and this
  environment. The next start reads that file's django_migrations rows with the standard library alone:
  when every needed migration is there, nothing would be applied and Django's start-up (seconds) is
  skipped; anything else (another release, another environment, a missing row, PostgreSQL, no stamp)
  goes the whole way through Django, which decides.

Prints what it did, one line each. Standard library at the top (Django comes from the release).
Installed by `fab provision` as <app_dir>/prepare-database.py.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import sqlite3
import sys


def label_studio_dir() -> str:
    spec = importlib.util.find_spec("label_studio")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("label_studio is not installed in this release")
    return list(spec.submodule_search_locations)[0]


def wal_mode(connection) -> str:
    """WAL mode on a DB-API connection (Django's cursor, or sqlite3's own)."""
    cursor = connection.cursor()
    try:
        before = cursor.execute("PRAGMA journal_mode").fetchone()[0]
        if before.lower() == "wal":
            return "SQLite is in WAL mode"
        after = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        cursor.close()
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


# ------------------------------------------------------------------------------------------------
# The stamp: what a start needs, so that the next one can tell without Django that nothing is to apply.

STAMP_FORMAT = 1
# What Label Studio's settings choose the database by (core/settings/base.py, get_env's prefixes).
DATABASE_SETTINGS = ("DJANGO_DB", "DATABASE_NAME", "BASE_DATA_DIR")
ENV_PREFIXES = ("LABEL_STUDIO_", "HEARTEX_", "")


def needed_migrations(disk_migrations: dict) -> list[list[str]]:
    """The rows django_migrations must hold for Django to find nothing to apply, from the release's
    migration files ({(app, name): migration}): each plain migration, and for a squashed one the
    migrations it replaces (Django records those when it applies one, and counts a squashed migration as
    applied only when all of them are there)."""
    needed = set()
    for key, migration in disk_migrations.items():
        if migration.replaces:
            needed.update(tuple(replaced) for replaced in migration.replaces)
        else:
            needed.add(tuple(key))
    return [list(pair) for pair in sorted(needed)]


def release_identity(environ: dict) -> dict:
    """What the stamp holds for: this release (its folder and version) and the environment settings that
    choose the database. Standard library only, in milliseconds."""
    chosen = {prefix + name: environ[prefix + name] for name in DATABASE_SETTINGS for prefix in ENV_PREFIXES
              if prefix + name in environ}
    chosen["DJANGO_SETTINGS_MODULE"] = environ.get("DJANGO_SETTINGS_MODULE", "")
    return {"release": os.path.realpath(label_studio_dir()), "version": importlib.metadata.version("label-studio"),
            "environment": hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()}


def write_stamp(path: str, database: str, needed: list, identity: dict) -> None:
    partial = f"{path}.partial"
    with open(partial, "w") as handle:
        json.dump({"format": STAMP_FORMAT, **identity, "database": database, "needed": needed}, handle)
    os.replace(partial, path)


def applied_rows(database: str) -> set:
    """django_migrations' rows; never creates the file (sqlite3.OperationalError when it is missing)."""
    connection = sqlite3.connect(f"file:{database}?mode=rw", uri=True, timeout=30)
    try:
        return {(app, name) for app, name in connection.execute("SELECT app, name FROM django_migrations")}
    finally:
        connection.close()


def without_django(path: str, identity: dict) -> str | None:
    """The SQLite file when the stamp at `path` is this release's and this environment's and the file
    holds every migration the release needs: nothing to apply. None whenever that is not certain."""
    try:
        with open(path) as handle:
            stamp = json.load(handle)
        if not isinstance(stamp, dict) or stamp.get("format") != STAMP_FORMAT or \
                any(stamp.get(key) != value for key, value in identity.items()):
            return None
        database, needed = stamp["database"], {tuple(pair) for pair in stamp["needed"]}
        if not isinstance(database, str) or not needed <= applied_rows(database):
            return None
        return database
    except (OSError, ValueError, TypeError, KeyError, sqlite3.Error):
        return None


def quick_start(stamp: str, identity: dict, share: bool) -> bool:
    """The start without Django, when the stamp allows it: WAL mode, the group's access, said as the
    Django path says it. False: the caller goes through Django."""
    database = without_django(stamp, identity)
    if database is None:
        return False
    connection = sqlite3.connect(database, timeout=30)
    try:
        print(wal_mode(connection), flush=True)
    finally:
        connection.close()
    print("no migrations to apply (every one this release needs is recorded in the database)", flush=True)
    if share:
        print(share_with_group(database), flush=True)
    return True


def main(stamp: tuple[str, dict] | None = None) -> int:
    """Django's way; `stamp` (its file, release_identity()) is written once nothing is left to apply."""
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
        if stamp and connection.vendor == "sqlite":
            _stamp_after_django(stamp, connection)
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
    if not left and stamp and connection.vendor == "sqlite":
        _stamp_after_django(stamp, connection)
    return 1 if left else 0


def _stamp_after_django(stamp: tuple[str, dict], connection) -> None:
    from django.db.migrations.loader import MigrationLoader

    path, identity = stamp
    try:
        needed = needed_migrations(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)
        write_stamp(path, str(connection.settings_dict["NAME"]), needed, identity)
    except (OSError, ValueError) as exc:   # the next start goes through Django again: no harm
        print(f"the start-up stamp {path} was not written: {exc}", flush=True)


def main_with_options(argv: list[str]) -> int:
    path = argv[argv.index("--stamp") + 1] if "--stamp" in argv[:-1] else None
    share = "--share-with-group" in argv
    # Read before main() sets its defaults: the next start compares the environment as systemd gives it.
    try:
        stamp = (path, release_identity(os.environ)) if path else None
    except importlib.metadata.PackageNotFoundError:   # a release without its metadata: Django's way, no stamp
        stamp = None
    if stamp and quick_start(*stamp, share):
        return 0
    status = main(stamp)
    if status == 0 and share:
        from django.db import connection

        if connection.vendor == "sqlite":
            print(share_with_group(str(connection.settings_dict["NAME"])), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main_with_options(sys.argv[1:]))
