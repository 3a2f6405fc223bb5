"""A snapshot put on a server in place of its data: the checks made first (engine, database, the snapshot
itself, the bucket's objects), the server's counts, and the replace after a backup of what was there.
restore-server, push-local-db and site-restore share it."""

from __future__ import annotations

from tasks.core import ui
from tasks.core.data import bucket_media, engine, local, snapshots
from tasks.core.data.catalog import Snapshot, report_snapshot
from tasks.core.defaults import DATABASE
from tasks.core.profile import Profile

CONVERTED = ("SQLite -> PostgreSQL: converted on the server into a new database while Label Studio serves "
             "(schema by its own migrations, every row with its id, each table's rows and checksum compared)")


def checked_before_restore(host, profile: Profile, chosen: Snapshot) -> dict:
    """Everything that refuses a restore before anything changes: another engine or database than the
    server's, a snapshot that fails its check, objects the bucket no longer holds. The snapshot's report."""
    engine.refuse_other_engine(chosen, profile, host.alias)
    snapshots.refuse_other_database(host, profile)
    report = local.verify_snapshot(chosen)
    bucket_media.require_held(host, profile, chosen)
    return report


def server_counts_for(host, profile: Profile, source: Snapshot) -> dict | None:
    """The server's counts (None: no database yet), once a SQLite server is known to run a release that
    knows the source's migrations (onto PostgreSQL the converter compares them)."""
    server = engine.server_counts(host, profile)
    if server is not None and not profile.database.postgresql:
        local.require_known_migrations(source.path / DATABASE, snapshots.release_migrations(host, profile), host.alias)
    return server


def say_if_converted(source: Snapshot, profile: Profile) -> None:
    if engine.converted_on_the_way(source, profile):
        ui.out.print(f"  {CONVERTED}")


def replace_after_backup(host, profile: Profile, source: Snapshot, files: list, *, backup: bool, label: str,
                          task_name: str, health_timeout: int, gate=None) -> None:
    """Under the server's lock: a snapshot of what the server holds first (`backup`), then its data
    replaced by `files` of `source` (PostgreSQL: a new database switched in; SQLite: the verified swap).
    `gate`: the source's check, running beside that backup and the upload, passed before anything is
    replaced."""
    kept = bucket_media.without_local_copies(profile, source, files)
    if len(kept) < len(files):
        ui.step(False, f"left out the snapshot's {len(files) - len(kept)} local media file(s): {host.alias} reads "
                       f"its uploads from {profile.media.describe()}")
    files = kept
    with snapshots.server_lock(host, profile, task_name):
        before = None
        if backup:   # checked beside the upload; the swap waits for the check
            before = engine.take_server_snapshot(host, profile, label=label, check=False)
            report_snapshot(before, "server backed up as")
        engine.put_on_server(host, profile, source, files, health_timeout=health_timeout, base=before,
                             before_replace=(lambda uploaded: gate.passed(backed_up=before, uploaded=uploaded))
                             if gate else None)
