"""Scripts around tasks/core/onserver/instances.py (run on the server as root): who runs Label Studio there,
whose is its port, and the stop/revive of an instance the toolkit takes over. Values from the profile
only; whatever the server reports comes back as JSON and never returns into a script."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path, PurePosixPath

from tasks.core.commands import Arg, join
from tasks.core.onserver import instances
from tasks.core.profile import Profile

INSTANCES_SOURCE = Path(instances.__file__).read_text()
# The source travels compressed: health probes embed it in loops and jobs, and a command line has limits.
_PACKED = base64.b64encode(zlib.compress(INSTANCES_SOURCE.encode(), 9)).decode()
LOADER = f"import base64,zlib;exec(zlib.decompress(base64.b64decode('{_PACKED}')))"
ADOPT_RECORDS = PurePosixPath("/var/lib/lsvm/adopt")  # root-only: how a taken-over instance ran


def instances_tool(*args: Arg) -> str:
    """tasks/core/onserver/instances.py by the system python3, isolated (-I)."""
    return join("python3", "-I", "-c", LOADER, *args)


def ours(profile: Profile) -> tuple[Arg, ...]:
    """(port, unit, service user, data dir) that make an instance ours; the unit only with systemd,
    whose cgroup proves it (screen mode has none)."""
    unit = profile.service.unit if profile.service.manager == "systemd" else ""
    return profile.label_studio.port, unit, profile.service.user, profile.remote.data_dir


def detect(profile: Profile) -> str:
    """JSON: unmanaged instances (running or data at rest), the port's holder, hand-written sites."""
    return instances_tool("detect", *ours(profile), ADOPT_RECORDS)


def port_holder(profile: Profile) -> str:
    """`free ...`, `ours ...` or `other <who>` for Label Studio's port."""
    return instances_tool("holder", *ours(profile))


def owned_health(profile: Profile, url: str, host_header: str, *, trust: PurePosixPath | None = None) -> str:
    """`<status> <body>` of GET url, or `0 <why>` when our own instance does not hold the port. An
    https url is checked against `trust` (CA file), SNI and name being `host_header`."""
    port, unit, user, data_dir = ours(profile)
    return instances_tool("health", url, host_header, port, unit, user, data_dir, *([trust] if trust else []))


def adopt_record(profile: Profile) -> PurePosixPath:
    return ADOPT_RECORDS / f"{profile.service.name}.json"


def stop_unmanaged(profile: Profile, pid: int | None, uid: int) -> str:
    """Record how the unmanaged instance runs (process `pid`, or data at rest in the home of `uid`),
    disable hand-written sites proxying to it, stop it (JSON). Only numbers from the server go in."""
    return instances_tool("stop", int(pid or 0), int(uid), profile.label_studio.port, adopt_record(profile),
                          profile.remote.nginx_site)


def revive_unmanaged(profile: Profile) -> str:
    """Undo stop_unmanaged from its record: sites back, the old command started again (JSON)."""
    return instances_tool("revive", adopt_record(profile), profile.remote.nginx_site)


def wait_serving(port: int, timeout: int) -> str:
    """Until a Label Studio process listens on `port` and answers /health UP (exit 1 on timeout)."""
    return instances_tool("wait-serving", int(port), int(timeout))


def mark_adopted(profile: Profile) -> str:
    return instances_tool("adopted", adopt_record(profile))
