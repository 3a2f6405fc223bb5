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
from .commands import data as data_commands
from .commands.service import service_manager
from .connect import Host
from .errors import RemoteError, SnapshotError, ToolkitError
from .health import wait_for_health
from .profile import Profile
from .transfer import check_free_space, send_tar, server_codec


def _parts_present(files: list[FileEntry]) -> list[str]:
    parts = [DATABASE]
    if any(f.path == SECRET_ENV for f in files):
        parts.append(SECRET_ENV)
    if any(f.path.startswith(MEDIA + "/") for f in files):
        parts.append(MEDIA)
    return parts


def upload(host: Host, profile: Profile, source: Path, files: list[FileEntry]) -> None:
    """Stream the files into the incoming folder and prove on the server that every byte arrived."""
    incoming = data_commands.incoming_dir(profile)
    total = sum(f.size for f in files)
    check_free_space(host, profile.remote.data_dir, total + 1024 * 1024, "the incoming data")
    codec = server_codec(host)
    host.run(data_commands.make_incoming(profile), sudo=True, what="incoming folder")
    started = time.monotonic()
    channel = host.root_channel(data_commands.receive_upload(profile, codec.name))
    try:
        send_tar(channel, codec, [(source / f.path, f.path) for f in files], total=total,
                 description=f"upload to {host.alias}")
        channel.finish("receiving the upload")
    finally:
        channel.close()
    ui.transfer_summary("uploaded", total, time.monotonic() - started, wire=channel.sent)
    check = [f for f in files if not f.path.startswith(MEDIA + "/")]
    out = host.run(data_commands.hash_incoming(profile, [f.path for f in check]), sudo=True,
                   what="checking the upload").stdout
    found = json.loads(out.strip().splitlines()[-1])
    for entry in check:
        got = found.get(str(incoming / entry.path))
        if not got or got["sha256"] != entry.sha256:
            raise SnapshotError(f"{entry.path} arrived damaged on {host.alias} (sha256 differs); nothing was replaced")


def replace_server_data(host: Host, profile: Profile, source: Path, files: list[FileEntry], *,
                        health_timeout: int) -> None:
    """Upload, then stop -> swap -> start -> health; rolls back on any failure after the stop."""
    parts = _parts_present(files)
    try:
        upload(host, profile, source, files)
    except BaseException:
        host.run(data_commands.remove_incoming(profile), sudo=True, check=False)
        raise
    ui.step(True, f"uploaded and verified {', '.join(parts)} on the server")
    stopped = False
    try:
        host.run(service_manager(profile).stop(), sudo=True, what="stopping Label Studio")
        stopped = True
        ui.step(True, "stopped Label Studio")
        host.run(data_commands.swap(profile, parts), sudo=True, what="swapping the data in")
        ui.step(True, f"swapped in the new {', '.join(parts)} (atomic renames)")
        host.run(service_manager(profile).start(), sudo=True, what="starting Label Studio")
        wait_for_health(host, profile, via_nginx=True, timeout=health_timeout, fail_on_crash=True)
    except (ToolkitError, OSError) as failure:
        if not stopped:
            host.run(data_commands.remove_incoming(profile), sudo=True, check=False)
            raise
        ui.error(f"{failure}; putting the previous data back")
        host.run(service_manager(profile).stop(), sudo=True, check=False)
        host.run(data_commands.rollback(profile, parts), sudo=True, what="rolling back")
        host.run(service_manager(profile).start(), sudo=True, what="starting Label Studio")
        wait_for_health(host, profile, via_nginx=True, timeout=max(health_timeout, 300))
        host.run(data_commands.remove_swap_leftovers(profile), sudo=True, check=False)
        raise RemoteError("the new data did not come up; the previous data is back in place and Label "
                          "Studio is serving it") from None
    host.run(data_commands.remove_swap_leftovers(profile), sudo=True, check=False)
    ui.step(True, f"Label Studio is up with the new data at {profile.url}")
