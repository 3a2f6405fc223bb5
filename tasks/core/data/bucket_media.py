"""Uploads in a bucket and the snapshots of this machine: a backup records every object (path, size,
ETag, sha256) in the snapshot, not its bytes (the bucket keeps those; its versioning keeps old ones);
a restore checks that the server's bucket still holds each one, sha256 for sha256, before anything
changes, and refuses a snapshot whose uploads live elsewhere than where the server reads them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path, PurePosixPath

from tasks.core import media, ui
from tasks.core.commands import media as commands
from tasks.core.commands import offsite as offsite_commands
from tasks.core.connect import Host
from tasks.core.data import catalog, read_service_file
from tasks.core.data.catalog import Snapshot
from tasks.core.defaults import MEDIA
from tasks.core.errors import RemoteError, SnapshotError, UsageError
from tasks.core.files import write_atomic
from tasks.core.onserver.offsite_files import LISTING   # in a snapshot's folder, beside its files; its sha256 in the manifest
from tasks.core.onserver.sqlite import sha256_file
from tasks.core.profile import Profile

SHOWN = 5                        # objects named in a refusal
LISTING_LIMIT = 256 * 1024 * 1024   # about 1.7 million objects; what the service user wrote is read no further


def _list(host: Host, profile: Profile) -> dict:
    with ui.err.status(f"listing {profile.media.describe()} on the server (the sha256 of each object)"):
        out = host.run(commands.copier_once(profile, profile.media, "list"), sudo=True, timeout=None,
                       what="listing the media bucket").stdout
    found = media.copier_report(out)
    if not isinstance(found.get("objects"), dict):
        raise RemoteError(f"the listing of {profile.media.describe()} gave no objects")
    return found


def record(host: Host, profile: Profile, snapshot: Snapshot) -> Snapshot:
    """The bucket's objects as of now (after the database's copy: every upload it links to is there)
    written into the snapshot, and its manifest says so."""
    return record_listing(snapshot, _list(host, profile), profile.media.describe())


def record_listing(snapshot: Snapshot, found: dict, where: str) -> Snapshot:
    """A listing of the bucket (the copier's `list` report: the one taken now, or the one an offsite
    snapshot holds) written into the snapshot, its manifest saying so."""
    path = snapshot.path / LISTING
    write_atomic(path, json.dumps(found["objects"], sort_keys=True).encode())
    entry = {"where": where, "objects": found["files"], "bytes": found["bytes"],
             "listing": LISTING, "sha256": sha256_file(str(path))}
    manifest = dataclasses.replace(snapshot.manifest, extra={**snapshot.manifest.extra, "media_bucket": entry})
    catalog.write_manifest(snapshot.path, manifest)
    ui.step(True, f"recorded the {found['files']} objects of {entry['where']} ({ui.human_bytes(found['bytes'])}; "
                  f"{found.get('hashed', 0)} read to hash them): their bytes stay in the bucket")
    return dataclasses.replace(snapshot, manifest=manifest)


def read_listing(host: Host, profile: Profile, folder: PurePosixPath) -> dict | None:
    """The listing an offsite snapshot of .env and media holds (restored into `folder`, the service
    user's: read as that user), None when it holds none (its VM kept files, or the snapshot is older)."""
    said = read_service_file(host, profile, folder / LISTING, LISTING_LIMIT, "the bucket's listing")
    if not said.ok:
        return None
    found = media.copier_report(said.stdout)
    if not isinstance(found.get("objects"), dict) or not isinstance(found.get("where"), str):
        raise RemoteError(f"the bucket's listing in {folder} is not one this toolkit wrote")
    return found


def _recorded(snapshot: Snapshot) -> tuple[dict, dict] | None:
    entry = snapshot.manifest.extra.get("media_bucket")
    if not entry:
        return None
    path = Path(snapshot.path) / entry.get("listing", LISTING)
    if not path.is_file() or sha256_file(str(path)) != entry.get("sha256"):
        raise SnapshotError(f"snapshot {snapshot.id}: its record of the bucket's objects is missing or damaged")
    return entry, json.loads(path.read_text())


def require_held(host: Host, profile: Profile, snapshot: Snapshot) -> None:
    """Before a restore changes anything: the snapshot's uploads are where the server reads them (the same
    bucket and prefix; or files for a server that keeps files), and the bucket holds every object the
    snapshot recorded, with the same sha256."""
    recorded = _recorded(snapshot)
    has_files = any(f.path.startswith(f"{MEDIA}/") for f in snapshot.manifest.files)
    if recorded is None:
        if has_files and profile.media.in_bucket:
            raise UsageError(f"snapshot {snapshot.id} holds its uploads as files; {host.alias} keeps them in "
                             f"{profile.media.describe()}, where its tasks would not find them; nothing was changed",
                             hint="restore it onto a server that keeps files (media.storage: local), then "
                                  "move them with migrate-media --to s3")
        return
    entry, objects = recorded
    require_objects(host, profile, entry["where"], objects, f"snapshot {snapshot.id}")


def offsite_listing(host: Host, profile: Profile, folder: PurePosixPath, source: offsite_commands.Source,
                    files_id: str | None, *, extracted: bool) -> dict | None:
    """The listing the offsite snapshot `files_id` of .env and media holds: read from `folder`, where it was
    restored whole when `extracted`; else that one member restored there first, when the server reads a
    bucket (a server that keeps files is not made to read its media from the target for it)."""
    if files_id is None or (not extracted and not profile.media.in_bucket):
        return None
    if not extracted:
        got = host.run(offsite_commands.restore_files_into_incoming(profile, folder, files_id, source, (LISTING,)),
                       sudo=True, check=False, timeout=None, what="the bucket's listing from the offsite target")
        if not got.ok:        # an older snapshot, from before it held one
            return None
    return read_listing(host, profile, folder)


def require_listed(host: Host, profile: Profile, found: dict | None, what: str) -> None:
    """restore-server --offsite, before anything changes: the listing the offsite snapshot holds (None:
    none) checked as require_held checks a snapshot's."""
    if found is None:
        if profile.media.in_bucket:
            ui.step(False, f"{what} holds no listing of {profile.media.describe()} (made before offsite snapshots "
                           "recorded one): the objects the database links to are not checked")
        return
    require_objects(host, profile, found["where"], found["objects"], what)


def require_objects(host: Host, profile: Profile, where: str, objects: dict, what: str) -> None:
    """The uploads `what` links to are in `where`, the bucket the server reads, which holds every one of
    `objects` ({path: [size, etag, sha256]}) with the same sha256."""
    if not profile.media.in_bucket or profile.media.describe() != where:
        here = profile.media.describe()
        raise UsageError(f"{what} links to uploads in {where}; {host.alias} keeps them "
                         f"in {here}, where its tasks would not find them; nothing was changed",
                         hint=f"set media: to that bucket in {profile.config_file} (and provision), then run this again")
    now = _list(host, profile)["objects"]
    missing = sorted(rel for rel in objects if rel not in now)
    changed = sorted(rel for rel, (_, _, sha) in objects.items() if rel in now and now[rel][2] != sha)
    if missing or changed:
        named = ", ".join((missing + changed)[:SHOWN])
        raise SnapshotError(f"{where} no longer holds {len(missing)} of the {len(objects)} objects {what} links "
                            f"to, and {len(changed)} have other bytes ({named}); nothing was changed",
                            hint="put them back (the bucket's versioning keeps old versions), then run this again")
    ui.step(True, f"{where} holds all {len(objects)} objects {what} links to, sha256 for sha256")


def without_local_copies(profile: Profile, snapshot: Snapshot, files: list) -> list:
    """The files of `snapshot` a server that reads its uploads from a bucket gets: none under media/ when
    the snapshot records the bucket's objects (its media files are the local copy migrate-media keeps
    until --prune: on an app VM they would only sit on its disk)."""
    if not profile.media.in_bucket or not snapshot.manifest.extra.get("media_bucket"):
        return list(files)
    return [f for f in files if not f.path.startswith(f"{MEDIA}/")]

