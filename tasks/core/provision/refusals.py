"""What provision, upgrade and adopt refuse before they change anything: a host they cannot serve, a
second Label Studio beside the user's own, a profile that names another database than the server's."""

from __future__ import annotations

from tasks.core import database, media, ui
from tasks.core.commands.service import service_manager
from tasks.core.errors import RemoteError, UsageError
from tasks.core.profile import Profile
from tasks.core.provision import systems
from tasks.core.provision.facts import ProvisionFacts


def refuse_neighbours(alias: str, found: ProvisionFacts) -> None:
    """Never start a second, empty Label Studio beside one the user already has, nor on a port another
    process holds: say who, change nothing."""
    others = found.neighbours
    if others.unmanaged:
        described = "; ".join(u.describe() for u in others.unmanaged)
        raise UsageError(f"found an {described}. Provision would start a second, empty Label Studio beside "
                         "it; nothing was changed",
                         hint=f"take it over with its data: fab -H {alias} adopt (--dry-run shows the plan)")
    if others.port_taken_by_other:
        raise UsageError(f"{others.port_said}: Label Studio cannot listen there; nothing was changed",
                         hint="stop that process, or choose another label_studio.port in the profile")


def _holds_data(found: ProvisionFacts) -> bool:
    """A SQLite file, or an env file that says PostgreSQL (whose database this probe does not see)."""
    return found.db_exists or database.server_engine(found.files.get("env_file")) == "postgresql"


def refuse_database_switch(alias: str, profile: Profile, found: ProvisionFacts) -> None:
    """The server's env file records the database Label Studio runs on: a profile that names another
    one is refused while there is data (moving it is migrate-db's job), never acted on."""
    env = found.files.get("env_file")
    problem = database.mismatch(database.server_settings(env), database.server_engine(env), profile.database,
                                has_data=_holds_data(found),
                                alias=alias, config=profile.config_file)
    if problem:
        raise UsageError(problem[0], hint=problem[1] or None)


def refuse_media_switch(alias: str, profile: Profile, found: ProvisionFacts) -> None:
    """Uploads stay where they are: a profile that moves them (local files to a bucket, a bucket to local
    files or to another bucket) is refused while the server holds uploads or data, never acted on."""
    wanted = media.label_studio_env(profile.media)
    server = media.server_lines(found.files.get("env_file"))
    if wanted == server:
        return
    if server:
        if _holds_data(found):
            raise UsageError(f"Label Studio on {alias} keeps its uploads in {media.describe_lines(server)}; the profile "
                             f"says media.storage: {profile.media.storage}"
                             f"{f' (at {profile.media.endpoint})' if profile.media.in_bucket else ''}. Its tasks "
                             "point at the uploads where they are; nothing was changed",
                             hint=(f"to move them to local files, every file checked: fab -H {alias} migrate-media "
                                   "--to local" if not profile.media.in_bucket else
                                   f"set media: as the server has it in {profile.config_file} (a move between two "
                                   "buckets is not supported)"))
    elif found.media.local_files:
        raise UsageError(f"Label Studio on {alias} keeps its uploads as files in {profile.remote.media_dir}; the "
                         f"profile says media.storage: {profile.media.storage}; nothing was changed",
                         hint=f"to move them into the bucket, every object checked: fab -H {alias} migrate-media --to s3")


def check_host(profile: Profile, found: ProvisionFacts) -> None:
    """A host whose service manager or Python cannot run Label Studio is refused; an untested system is named."""
    if service_manager(profile).needs_systemd and not found.systemd:
        raise RemoteError("this host does not run systemd: set `service: {manager: screen}` in the profile")
    version = tuple(int(x) for x in (found.python3 or "0.0").split(".")[:2])
    if version < (3, 10):
        raise RemoteError(f"Label Studio needs Python 3.10 or newer; the host has {found.python3 or 'none'}")
    warning = systems.support_warning(found.os_id, found.os_version)
    if warning:
        ui.warn(warning)
