"""The data tasks' layer (backup, restore, moves); here what several of its modules share."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core.commands import read_as_service_user
from tasks.core.connect import Host, Output
from tasks.core.profile import Profile


def read_service_file(host: Host, profile: Profile, path: PurePosixPath, limit: int, what: str) -> Output:
    """A file the service user wrote, read as that user (not checked: the caller says what a missing one
    means); RemoteError when it is longer than `limit` bytes, before anything parses it."""
    out = host.run(read_as_service_user(profile, path, limit), sudo=True, check=False, what=what)
    return out.within(limit, what, host.alias)
