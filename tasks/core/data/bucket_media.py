"""Uploads in a bucket and the snapshots of this machine: a backup records every object (path, size,
ETag, sha256) in the snapshot, not its bytes (the bucket keeps those; its versioning keeps old ones);
a restore checks that the server's bucket still holds each one, sha256 for sha256, before anything
changes, and refuses a snapshot whose uploads live elsewhere than where the server reads them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tasks.core import media, ui
from tasks.core.commands import media as commands
from tasks.core.connect import Host
from tasks.core.data import catalog
from tasks.core.data.catalog import Snapshot
from tasks.core.defaults import MEDIA
from tasks.core.errors import RemoteError, SnapshotError, UsageError
from tasks.core.files import write_atomic
from tasks.core.onserver.sqlite import sha256_file
from tasks.core.profile import Profile

LISTING = "media-bucket.json"    # in the snapshot's folder, beside its files; its sha256 in the manifest
SHOWN = 5                        # objects named in a refusal


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
    found = _list(host, profile)
    path = snapshot.path / LISTING
    write_atomic(path, json.dumps(found["objects"], sort_keys=True).encode())
    entry = {"where": profile.media.describe(), "objects": found["files"], "bytes": found["bytes"],
             "listing": LISTING, "sha256": sha256_file(str(path))}
    manifest = dataclasses.replace(snapshot.manifest, extra={**snapshot.manifest.extra, "media_bucket": entry})
    catalog.write_manifest(snapshot.path, manifest)
    ui.step(True, f"recorded the {found['files']} objects of {entry['where']} ({ui.human_bytes(found['bytes'])}; "
                  f"{found['hashed']} read to hash them): their bytes stay in the bucket")
    return dataclasses.replace(snapshot, manifest=manifest)


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
    if not profile.media.in_bucket or profile.media.describe() != entry["where"]:
        here = profile.media.describe()
        raise UsageError(f"snapshot {snapshot.id} links to uploads in {entry['where']}; {host.alias} keeps them "
                         f"in {here}, where its tasks would not find them; nothing was changed",
                         hint=f"set media: to that bucket in {profile.config_file} (and provision), then run this again")
    now = _list(host, profile)["objects"]
    missing = sorted(rel for rel in objects if rel not in now)
    changed = sorted(rel for rel, (_, _, sha) in objects.items() if rel in now and now[rel][2] != sha)
    if missing or changed:
        named = ", ".join((missing + changed)[:SHOWN])
        raise SnapshotError(f"{entry['where']} no longer holds {len(missing)} of the {len(objects)} objects snapshot "
                            f"{snapshot.id} links to, and {len(changed)} have other bytes ({named}); nothing was "
                            "changed", hint="put them back (the bucket's versioning keeps old versions), then "
                                            "run this again")
    ui.step(True, f"{entry['where']} holds all {len(objects)} objects snapshot {snapshot.id} links to, sha256 for sha256")


def without_local_copies(profile: Profile, snapshot: Snapshot, files: list) -> list:
    """The files of `snapshot` a server that reads its uploads from a bucket gets: none under media/ when
    the snapshot records the bucket's objects (its media files are the local copy migrate-media keeps
    until --prune: on an app VM they would only sit on its disk)."""
    if not profile.media.in_bucket or not snapshot.manifest.extra.get("media_bucket"):
        return list(files)
    return [f for f in files if not f.path.startswith(f"{MEDIA}/")]

