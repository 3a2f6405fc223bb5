"""Replacing the server's data (push-local-db, restore-server, adopt) without ever losing what was there.

Order: the caller has taken a full server snapshot -> upload into `<data_dir>/.lsvm-incoming/` (as the
service user) while the service still runs -> sha256 checked on the server (or the database rebuilt there
from the changed pages) -> the release reads every table of it -> the swap job (tasks.core.data.swap).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from tasks.core import offsite, parse, ui
from tasks.core.commands import data as data_commands
from tasks.core.commands import offsite as offsite_commands
from tasks.core.connect import Host
from tasks.core.data import bucket_media
from tasks.core.data.catalog import FileEntry, Snapshot
from tasks.core.data.snapshots import DELTA_MAX_SHARE, stored_page_index
from tasks.core.data.swap import refuse_foreign_port, refuse_unfinished_swap, run_swap
from tasks.core.defaults import DATABASE, MEDIA, SECRET_ENV
from tasks.core.errors import RemoteError, SnapshotError
from tasks.core.onserver import sqlite
from tasks.core.profile import Profile
from tasks.core.provision.health import database_check
from tasks.core.transfer import check_free_space, secret_file, send_tar, server_codec


def _parts_present(files: list[FileEntry]) -> list[str]:
    parts = [DATABASE]
    if any(f.path == SECRET_ENV for f in files):
        parts.append(SECRET_ENV)
    if any(f.path.startswith(MEDIA + "/") for f in files):
        parts.append(MEDIA)
    return parts


class DeltaRefused(SnapshotError):
    """The pages sent do not rebuild the pushed database on the server: the whole file must go."""


def upload(host: Host, profile: Profile, source: Path, files: list[FileEntry], *, delta: Path | None = None) -> None:
    """Stream the files into the incoming folder and prove on the server that every byte arrived. With
    `delta` (the database's changed pages, sqlite.make_delta), those pages go instead of the database,
    which the server rebuilds from a consistent copy of its own; SnapshotError(DeltaRefused) when the
    rebuilt file is not the pushed one (the server's database is not the base any more)."""
    sent = [(source / f.path, f.path) for f in files if not (delta and f.path == DATABASE)]
    database = next((f for f in files if f.path == DATABASE), None)
    if delta is not None:
        sent.insert(0, (delta, data_commands.DELTA))
    total = sum(local.stat().st_size for local, _ in sent)
    room = total + (2 * database.size if delta is not None and database else 0)
    check_free_space(host, profile.remote.data_dir, room + 1024 * 1024, "the incoming data")
    codec = server_codec(host)
    host.run(data_commands.make_incoming(profile), sudo=True, what="incoming folder")
    started = time.monotonic()
    channel = host.root_channel(data_commands.receive_upload(profile, codec.name))
    try:
        send_tar(channel, codec, sent, total=total, description=f"upload to {host.alias}")
        channel.finish("receiving the upload")
    finally:
        channel.close()
    ui.transfer_summary("uploaded", total, time.monotonic() - started, wire=channel.sent)
    if delta is not None:
        with ui.err.status("rebuilding the database on the server from its own and the changed pages"):
            built = host.run_json(data_commands.apply_delta_incoming(profile), sudo=True,
                                  what="rebuilding the database")
        if built.get("sha256") != database.sha256:
            raise DeltaRefused(built.get("error") or "the server's database changed since it was backed up")
    check = [f for f in files if not (delta and f.path == DATABASE)]
    if not check:
        return
    with ui.err.status(f"checking the {len(check)} uploaded file(s) by sha256 on the server"):
        found = host.run_json(data_commands.hash_incoming(profile, [DATABASE] if delta else []), sudo=True,
                              what="checking the upload")
    for entry in check:
        got = found.get(entry.path)
        if not isinstance(got, dict) or got.get("sha256") != entry.sha256:
            raise SnapshotError(f"{parse.printable(entry.path)} arrived damaged on {host.alias} (sha256 differs); "
                                "nothing was replaced")


def page_delta(source: Path, base: Snapshot | None, work: Path) -> Path | None:
    """The pages of source's database that differ from `base`'s (the server's database, just backed
    up), in a file under `work`; None when the whole file should go (no base, another page size, or
    more than half the pages differ: another history)."""
    with ui.err.status(f"reading the pages of {base.id}"):
        index = stored_page_index(base)
    if index is None:
        return None
    delta = work / data_commands.DELTA
    delta.unlink(missing_ok=True)
    with ui.err.status(f"comparing the database page by page with the server's ({base.id})"):
        found = sqlite.make_delta(str(source / DATABASE), index, str(delta))
    if not found.get("usable") or found["changed"] > found["pages"] * DELTA_MAX_SHARE:
        why = found.get("why") or f"{found['changed']} of {found['pages']} pages differ"
        ui.out.print(f"  whole database sent: {why}")
        delta.unlink(missing_ok=True)
        return None
    ui.out.print(f"  database: {found['changed']} of {found['pages']} pages differ from the server's; "
                 "only those are sent")
    return delta


def require_usable_incoming(host: Host, profile: Profile) -> bool:
    """Before anything stops: the server's own release reads every table of the uploaded database, with
    every column its models name (a database it cannot use is refused here, not after the swap). True
    when it read them all with no migration left for the start to apply: then the same check after the
    start would read these same bytes with the same code, and the swap leaves it out."""
    answer = database_check(host, profile, data_commands.incoming_dir(profile) / DATABASE)
    if "error" in answer:
        raise SnapshotError(f"the Label Studio on {host.alias} cannot use this database: {answer['error']}; "
                            "nothing was stopped or replaced",
                            hint="push a database that this release (or an older one) of Label Studio wrote")
    if "pending" in answer:
        ui.step(True, f"the database lacks {answer['pending']} of the release's migrations: Label Studio applies "
                      "them when it starts, and the check after the start reads every table")
        return False
    ui.step(True, f"the server's Label Studio reads all {answer['tables']} tables of the uploaded database")
    return True


def replace_server_data(host: Host, profile: Profile, source: Path, files: list[FileEntry], *,
                        health_timeout: int, restart_previous: bool = True, base: Snapshot | None = None,
                        after_upload: Callable[[], object] | None = None,
                        before_swap: Callable[[], object] | None = None) -> None:
    """Upload, then the swap job on the server: stop -> swap -> start -> health, rolled back on failure.
    `base`, a snapshot of the server's database taken just before, lets only the changed pages go;
    `after_upload` runs once the upload is proven, `before_swap` once the release has read it, before
    anything stops; either may refuse (the checks run beside the upload: the source's, the base's)."""
    parts = _parts_present(files)
    refuse_unfinished_swap(host, profile)
    refuse_foreign_port(host, profile)
    try:
        with tempfile.TemporaryDirectory(prefix="lsvm-delta-") as work:
            delta = page_delta(source, base, Path(work)) if base is not None and any(
                f.path == DATABASE for f in files) else None
            try:
                upload(host, profile, source, files, delta=delta)
            except DeltaRefused as refused:
                ui.warn(f"the changed pages did not rebuild the database on {host.alias} ({refused.message}): "
                        "sending the whole database")
                upload(host, profile, source, files)
        ui.step(True, f"uploaded and verified {', '.join(parts)} on the server")
        if after_upload is not None:   # before the release reads the upload: what it refuses is the whole story
            after_upload()
        proven = DATABASE in parts and not profile.database.postgresql and require_usable_incoming(host, profile)
        if before_swap is not None:
            before_swap()
    except BaseException:
        host.run(data_commands.remove_incoming(profile), sudo=True, check=False)
        raise
    run_swap(host, profile, parts, health_timeout=health_timeout,
             steps={"restart_previous": restart_previous, "read_after_start": not proven})


# ------------------------------------------------------------------------------------------------
# From an offsite target (tasks.core.offsite): restored on the server itself, nothing through this machine.


@contextlib.contextmanager
def other_source(host: Host, profile: Profile, other: Profile, password: str,
                 credentials: dict[str, str] | None, sftp_key: str | None = None) -> Iterator[offsite_commands.Source]:
    """Another VM's target (restore-server --offsite --from), readable on this VM for the length of the
    block: its Litestream settings in the replication user's state dir (no secret in them), its keys
    and restic's password in a root-only file of the SSH user's private temp dir, read by systemd."""
    settings = offsite.litestream_config(other.offsite, other.remote.database,
                                         profile.remote.offsite_state / "restore-from-meta")
    config = profile.remote.offsite_state / "restore-from.yml"
    channel = host.root_channel(offsite_commands.write_as_replication_user(profile, config))
    try:
        channel.write(settings.encode())
        channel.finish("writing the other target's Litestream settings")
    finally:
        channel.close()
    secrets = (offsite.credentials_file(credentials) if credentials else b"") + offsite.password_file(password)
    try:
        with contextlib.ExitStack() as stack:
            env = stack.enter_context(secret_file(host, secrets))
            key = stack.enter_context(secret_file(host, offsite.sftp_key_file(sftp_key))) if sftp_key else None
            keys = tuple(offsite.credential_properties(other.offsite, key)) if key else ()
            yield offsite_commands.Source(other.offsite, config, other.remote.database, (env,), keys)
    finally:
        host.run(offsite_commands.as_replication_user(profile, "rm", "-f", config, secrets=()), sudo=True, check=False)


def read_source(host: Host, profile: Profile, source: offsite_commands.Source
                ) -> tuple[offsite.RestorePoints, list[offsite.FilesSnapshot]]:
    """What the source's target holds: Litestream's restore points and restic's snapshots of .env and media."""
    where = source.settings.parsed.describe()
    listed = host.run(offsite_commands.list_points(profile, source), sudo=True, check=False,
                      what=f"listing the restore points on {where}")
    if not listed.ok:
        raise RemoteError(f"the offsite target {where} cannot be read: litestream: {_last_line(listed.stderr)}; "
                          "nothing was changed")
    files = read_files(host, profile, source)
    try:
        return offsite.parse_ltx_listing(listed.stdout), files
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteError(f"litestream printed what this toolkit cannot read ({exc})") from None


def read_files(host: Host, profile: Profile, source: offsite_commands.Source) -> list[offsite.FilesSnapshot]:
    """restic's snapshots on the source's target (of .env and media; with PostgreSQL, its dumps too)."""
    where = source.settings.parsed.describe()
    files = host.run(offsite_commands.list_files(profile, source), sudo=True, check=False,
                     what=f"listing the snapshots of .env and media on {where}")
    if not files.ok:
        raise RemoteError(f"the offsite target {where} cannot be read: restic: {_last_line(files.stderr)}; "
                          "nothing was changed", hint="restic's password is backups/<host>/offsite-password here")
    try:
        return offsite.parse_files_snapshots(files.stdout)
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteError(f"restic printed what this toolkit cannot read ({exc})") from None


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed"


def replace_from_offsite(host: Host, profile: Profile, source: offsite_commands.Source, timestamp: str | None,
                         files: offsite.FilesSnapshot | None, *, listed: offsite.FilesSnapshot | None = None,
                         health_timeout: int) -> None:
    """The database as the target holds it (at `timestamp`, or its newest point), restored on the server
    itself into the incoming folder (integrity_check beside the hand-over, both ends hashed), with .env and
    media from restic's snapshot `files` when given; the bucket's listing in `files` (else in `listed`,
    the snapshot of .env and media that goes with that point) checked against the bucket; read by the
    release, then the swap job."""
    refuse_unfinished_swap(host, profile)
    refuse_foreign_port(host, profile)
    where = source.settings.parsed.describe()
    incoming = data_commands.incoming_dir(profile)
    parts = [DATABASE]
    try:
        host.run(data_commands.make_incoming(profile), sudo=True, what="incoming folder")
        started = time.monotonic()
        with ui.err.status(f"restoring the database from {where} on the server"):
            host.run(offsite_commands.restore_into_incoming(profile, incoming, timestamp, source),
                     sudo=True, what="restoring from the offsite target", timeout=None)
        ui.step(True, f"restored the database from {where} on the server in "
                      f"{time.monotonic() - started:.1f}s (integrity_check passed)")
        if files is not None:
            started = time.monotonic()
            with ui.err.status(f"restoring .env and media (restic snapshot {files.id[:8]}) on the server"):
                host.run(offsite_commands.restore_files_into_incoming(profile, incoming, files.id, source),
                         sudo=True, what="restoring .env and media from the offsite target", timeout=None)
            present = host.run(offsite_commands.parts_in_incoming(profile, incoming), sudo=True,
                               what="the restored parts").stdout.split()
            parts += [part for part in (SECRET_ENV, MEDIA) if part in present]
            ui.step(True, f"restored {', '.join(parts[1:]) or 'nothing more (the snapshot was empty)'} from restic "
                          f"snapshot {files.id[:8]} in {time.monotonic() - started:.1f}s")
        snapshot = files or listed
        found = bucket_media.offsite_listing(host, profile, incoming, source, snapshot.id if snapshot else None,
                                             extracted=files is not None)
        bucket_media.require_listed(host, profile, found, f"the offsite copy ({where})")
        require_usable_incoming(host, profile)
    except BaseException:
        host.run(data_commands.remove_incoming(profile), sudo=True, check=False)
        raise
    run_swap(host, profile, parts, health_timeout=health_timeout)
