"""The one place the data tasks choose between SQLite and PostgreSQL: row counts, a server snapshot, and
putting a snapshot's data onto the server. Everything else asks this module."""

from __future__ import annotations

from typing import Callable

from tasks.core.connect import Host
from tasks.core.data import bucket_media, checking, postgres_snapshots, snapshots
from tasks.core.data.catalog import FileEntry, Snapshot
from tasks.core.data.replace import replace_server_data
from tasks.core.database import converts, snapshot_engine
from tasks.core.errors import SnapshotError
from tasks.core.profile import Profile


def server_counts(host: Host, profile: Profile) -> dict | None:
    """Row counts of the live server database (read-only, no integrity check), None without one."""
    if profile.database.postgresql:
        found = postgres_snapshots.server_counts(host, profile)
        return found["counts"] if found is not None else None
    return snapshots.server_counts(host, profile)


def take_server_snapshot(host: Host, profile: Profile, *, label: str | None, media: bool = True,
                         label_studio_version: str | None = None, check: bool = True, managed: bool = True) -> Snapshot:
    """The body of `backup` (callers hold the locks): a snapshot folder here, manifest last, checked on
    this machine (`check` False: left pending, for `backup --no-wait`); a failure leaves no half snapshot
    behind. `label_studio_version` and `managed` False: adopt's (the unmanaged instance's version; its
    data dir gets nothing of ours)."""
    snapshots.refuse_other_database(host, profile)
    if profile.database.postgresql:
        return _with_bucket(host, profile, postgres_snapshots.take_snapshot(host, profile, label=label, media=media))
    taken = _with_bucket(host, profile, snapshots.take_snapshot(
        host, profile, label=label, media=media, label_studio_version=label_studio_version, managed=managed))
    return checking.check_pending(taken, by=f"backup {label or ''}".strip(), just_proven=True) if check else taken


def _with_bucket(host: Host, profile: Profile, taken: Snapshot) -> Snapshot:
    """Uploads in a bucket: the snapshot records its objects, listed after the database's copy."""
    return bucket_media.record(host, profile, taken) if profile.media.in_bucket else taken


def put_on_server(host: Host, profile: Profile, source: Snapshot, files: list[FileEntry], *, health_timeout: int,
                  base: Snapshot | None, before_replace: Callable[[bool], object] | None = None) -> None:
    """`files` of `source` become the server's data: on PostgreSQL a new database switched in (a SQLite
    snapshot converted on the way), on SQLite the verified swap (only changed pages sent, from `base`,
    the snapshot of the server taken just before: its check runs beside the upload, and the swap waits
    for it). `before_replace(uploaded)` may refuse: on SQLite it runs once the upload is proven (True),
    on PostgreSQL before anything is sent (False)."""
    if profile.database.postgresql:
        if before_replace is not None:
            before_replace(False)
        postgres_snapshots.restore(host, profile, source, files=files, health_timeout=health_timeout)
        return
    beside = checking.CheckBeside(base, by="the backup before a replace") if base is not None else None
    replace_server_data(host, profile, source.path, files, health_timeout=health_timeout, base=base,
                        after_upload=(lambda: before_replace(True)) if before_replace is not None else None,
                        before_swap=beside.settled if beside else None)


def converted_on_the_way(source: Snapshot, profile: Profile) -> bool:
    """Whether the snapshot's database is converted into the server's engine (SQLite -> PostgreSQL)."""
    return converts(snapshot_engine(source.manifest), profile.database.engine)


def refuse_other_engine(snapshot: Snapshot, profile: Profile, alias: str) -> None:
    """A snapshot restores onto a host of its own engine, or (converted on the server) a SQLite one onto a
    PostgreSQL host; a dump onto a SQLite host would need PostgreSQL there: migrate-db's job."""
    engine = snapshot_engine(snapshot.manifest)
    here = profile.database.engine
    if engine != here and not converts(engine, here):
        raise SnapshotError(f"snapshot {snapshot.id} holds a {engine} database and {alias} runs on {here}: "
                            f"restore-server converts SQLite snapshots into PostgreSQL, not back; nothing was changed",
                            hint=f"restore it while {alias} runs on {engine} (database.engine: {engine}, "
                                 f"migrate-db --to {engine} first if it holds data), then `migrate-db --to {here}`")
