"""Replacing the server's data (push-local-db, restore-server) without ever losing what was there.

Order: the caller has taken a full server snapshot -> upload into `<data_dir>/.lsvm-incoming/` while the
service still runs -> sha256 checked on the server -> stop -> rename the old parts into
`<data_dir>/.lsvm-previous/`, the new ones into place (same filesystem: atomic) -> start -> health check.
Any failure after the stop puts the previous parts back and starts the service again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import ui
from .catalog import DATABASE, MEDIA, SECRET_ENV, FileEntry
from .commands import q
from .connect import Host
from .errors import RemoteError, SnapshotError, ToolkitError
from .commands.service import service_manager
from .health import wait_for_health
from .profile import Profile
from .snapshots import _check_free_space, sqlite_tool
from .transfer import RootChannel, send_tar, server_codec

INCOMING = ".lsvm-incoming"
PREVIOUS = ".lsvm-previous"


def _parts_present(files: list[FileEntry]) -> list[str]:
    parts = [DATABASE]
    if any(f.path == SECRET_ENV for f in files):
        parts.append(SECRET_ENV)
    if any(f.path.startswith(MEDIA + "/") for f in files):
        parts.append(MEDIA)
    return parts


def upload(host: Host, profile: Profile, source: Path, files: list[FileEntry]) -> None:
    """Stream the files into the incoming folder and prove on the server that every byte arrived."""
    p = profile.remote
    incoming = p.data_dir / INCOMING
    total = sum(f.size for f in files)
    _check_free_space(host, p.data_dir, total + 1024 * 1024, "the incoming data")
    codec = server_codec(host)
    host.run(f"rm -rf {q(incoming)} && install -d -m 0700 {q(incoming)}", sudo=True, what="incoming folder")
    started = time.monotonic()
    channel = RootChannel(host, f"{codec.remote_decompress} | tar -xf - -C {q(incoming)} --no-same-owner")
    try:
        send_tar(channel, codec, [(source / f.path, f.path) for f in files], total=total,
                 description=f"upload to {host.alias}")
        channel.finish("receiving the upload")
    finally:
        channel.close()
    ui.transfer_summary("uploaded", total, time.monotonic() - started, wire=channel.sent)
    check = [f for f in files if not f.path.startswith(MEDIA + "/")]
    out = host.run(sqlite_tool("sha256", *[incoming / f.path for f in check]), sudo=True,
                   what="checking the upload").stdout
    found = json.loads(out.strip().splitlines()[-1])
    for entry in check:
        got = found.get(str(incoming / entry.path))
        if not got or got["sha256"] != entry.sha256:
            raise SnapshotError(f"{entry.path} arrived damaged on {host.alias} (sha256 differs); nothing was replaced")


def swap_script(profile: Profile, parts: list[str]) -> str:
    """Old parts aside into .lsvm-previous (a marker notes parts that did not exist), new ones in."""
    p = profile.remote
    data, incoming, previous = p.data_dir, p.data_dir / INCOMING, p.data_dir / PREVIOUS
    user = q(profile.service.user)
    lines = [f"set -e; rm -rf {q(previous)}; install -d -m 0700 {q(previous)}"]
    for stale in ("-journal", "-wal", "-shm"):
        name = DATABASE + stale
        lines.append(f"if [ -e {q(data / name)} ]; then mv {q(data / name)} {q(previous / name)}; fi")
    for part in parts:
        lines.append(f"if [ -e {q(data / part)} ]; then mv {q(data / part)} {q(previous / part)}; "
                     f"else touch {q(previous / ('absent' + part))}; fi")
        lines.append(f"mv {q(incoming / part)} {q(data / part)}")
        lines.append(f"chown -R {user}:{user} {q(data / part)}")
    lines.append(f"chmod 0600 {q(data / DATABASE)}")
    if SECRET_ENV in parts:
        lines.append(f"chmod 0600 {q(data / SECRET_ENV)}")
    return "; ".join(lines)


def rollback_script(profile: Profile, parts: list[str]) -> str:
    """Undo swap_script: every part back as it was, including parts that were absent."""
    p = profile.remote
    data, previous = p.data_dir, p.data_dir / PREVIOUS
    lines = ["set -e"]
    for part in parts + [DATABASE + s for s in ("-journal", "-wal", "-shm")]:
        lines.append(f"if [ -e {q(previous / part)} ]; then rm -rf {q(data / part)}; "
                     f"mv {q(previous / part)} {q(data / part)}; "
                     f"elif [ -e {q(previous / ('absent' + part))} ]; then rm -rf {q(data / part)}; fi")
    return "; ".join(lines)


def replace_server_data(host: Host, profile: Profile, source: Path, files: list[FileEntry], *,
                        health_timeout: int) -> None:
    """Upload, then stop -> swap -> start -> health; rolls back on any failure after the stop."""
    p = profile.remote
    parts = _parts_present(files)
    try:
        upload(host, profile, source, files)
    except BaseException:
        host.run(f"rm -rf {q(p.data_dir / INCOMING)}", sudo=True, check=False)
        raise
    ui.step(True, f"uploaded and verified {', '.join(parts)} on the server")
    stopped = False
    try:
        host.run(service_manager(profile).stop(), sudo=True, what="stopping Label Studio")
        stopped = True
        ui.step(True, "stopped Label Studio")
        host.run(swap_script(profile, parts), sudo=True, what="swapping the data in")
        ui.step(True, f"swapped in the new {', '.join(parts)} (atomic renames)")
        host.run(service_manager(profile).start(), sudo=True, what="starting Label Studio")
        wait_for_health(host, profile, via_nginx=True, timeout=health_timeout, fail_on_crash=True)
    except (ToolkitError, OSError) as failure:
        if not stopped:
            host.run(f"rm -rf {q(p.data_dir / INCOMING)}", sudo=True, check=False)
            raise
        ui.error(f"{failure}; putting the previous data back")
        host.run(service_manager(profile).stop(), sudo=True, check=False)
        host.run(rollback_script(profile, parts), sudo=True, what="rolling back")
        host.run(service_manager(profile).start(), sudo=True, what="starting Label Studio")
        wait_for_health(host, profile, via_nginx=True, timeout=max(health_timeout, 300))
        host.run(f"rm -rf {q(p.data_dir / INCOMING)} {q(p.data_dir / PREVIOUS)}", sudo=True, check=False)
        raise RemoteError("the new data did not come up; the previous data is back in place and Label "
                          "Studio is serving it") from None
    host.run(f"rm -rf {q(p.data_dir / INCOMING)} {q(p.data_dir / PREVIOUS)}", sudo=True, check=False)
    ui.step(True, f"Label Studio is up with the new data at {profile.url}")
