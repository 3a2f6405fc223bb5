"""Scripts for offsite replication (tasks.core.offsite): the replication user, Litestream's venv, the
credentials, the database shared with that user, restic's repository, restores from the target, and how
anything runs as that user with its credentials (its probe lines are in tasks.core.commands.probes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from tasks.core.commands import as_service_user, join, private_file_from_stdin, q
from tasks.core.commands.data import sqlite_words
from tasks.core.commands.provision import create_system_user, index_options, pip_options
from tasks.core.defaults import DATABASE
from tasks.core.offsite import (
    APPRISE_CLI,
    APPRISE_PACKAGE,
    BOTO3_PACKAGE,
    FILES_NAME,
    FILES_TAG,
    LITESTREAM_PACKAGE,
    OffsiteSettings,
    credential_properties,
    restic_words,
    sftp_command,
)
from tasks.core.onserver.offsite_files import SSH_REASONS
from tasks.core.profile import Profile


@dataclass(frozen=True)
class Source:
    """Where a restore reads from: this VM's own target with its stored settings and secrets, or another
    VM's (restore-server --offsite --from), with settings and secrets put on this VM for the restore."""

    settings: OffsiteSettings
    litestream_config: PurePosixPath
    database: PurePosixPath                    # the name its copies were made under (the config's dbs path)
    env_files: tuple[PurePosixPath, ...]       # root-only files systemd reads: keys and restic's password
    credentials: tuple[str, ...] = ()          # systemd properties: an SFTP target's key and host key


def own_source(profile: Profile) -> Source:
    p = profile.remote
    return Source(profile.offsite, p.litestream_config, p.database, env_files(profile), own_credentials(profile))


def own_credentials(profile: Profile) -> tuple[str, ...]:
    """This VM's SFTP key and host key for its replication user's programs (none for other targets)."""
    return tuple(credential_properties(profile.offsite, profile.remote.offsite_key))


def env_files(profile: Profile) -> tuple[PurePosixPath, ...]:
    """The root-only files the replication user's programs get their secrets from."""
    p = profile.remote
    return ((p.offsite_env,) if profile.offsite.needs_credentials else ()) + (p.restic_env,)


def restic(profile: Profile, *words: str, settings: OffsiteSettings | None = None) -> list[str]:
    """restic on `settings`' repository (this VM's by default), with this VM's cache."""
    return [*restic_words(settings or profile.offsite, profile.remote.restic_cache), *words]


def unit_name(profile: Profile) -> str:
    return profile.remote.offsite_unit.name


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
    """Litestream's, apprise's and boto3's pinned releases in a venv of their own (root's): uv from the current
    Label Studio release when it has one (its cache), else pip. Built beside, then renamed into place."""
    venv = profile.remote.offsite_venv
    new = PurePosixPath(f"{venv}.lsvm-new")
    python = new / "bin" / "python"
    uv = profile.remote.current / "bin" / "uv"
    packages = join(LITESTREAM_PACKAGE, APPRISE_PACKAGE, BOTO3_PACKAGE)
    return (f"rm -rf {q(new)} && python3 -m venv {q(new)} && "
            f"{{ {{ [ -x {q(uv)} ] && {q(uv)} pip install -q --python {q(python)} {join(*index_options(profile))} "
            f"{packages}; }} || {q(python)} -m pip install {join(*pip_options(profile))} {packages}; }} && "
            f"{q(new / 'bin' / 'litestream')} version >/dev/null && {join(python, '-I', '-c', APPRISE_CLI, '--version')} >/dev/null && "
            f"{join(python, '-I', '-c', 'import boto3')} && "
            f"rm -rf {q(venv)} && mv -T {q(new)} {q(venv)}")


def watch_now(profile: Profile) -> str:
    """The offsite watch, now, waited for."""
    return f"systemctl start {q(profile.remote.watch_unit.name)}"


def store_secret(path: PurePosixPath) -> str:
    """A secret from stdin into a new root-only file (0600 before a byte is written), renamed over the
    old one."""
    new = PurePosixPath(f"{path}.lsvm-new")
    return f"{private_file_from_stdin(new)} && mv -f {q(new)} {q(path)}"


def as_replication_user(profile: Profile, *words: str | PurePosixPath,
                        secrets: tuple[PurePosixPath, ...] | None = None,
                        credentials: tuple[str, ...] | None = None) -> str:
    """A command run the way the replication service runs: its user and groups, its secrets read by
    systemd from the root-only files (never on a command line), stdout back on this channel. `secrets`
    and `credentials` default to this VM's own (secrets=() alone: none)."""
    properties = [f"--uid={profile.offsite_user}", f"--gid={profile.offsite_user}",
                  "-p", f"SupplementaryGroups={profile.service.user}", "-p", "NoNewPrivileges=yes",
                  "-p", f"Environment=HOME={profile.remote.offsite_state}"]
    for path in env_files(profile) if secrets is None else secrets:
        properties += ["-p", f"EnvironmentFile={path}"]
    if credentials is None:
        credentials = own_credentials(profile) if secrets is None else ()
    for credential in credentials:
        properties += ["-p", credential]
    return join("systemd-run", "--quiet", "--pipe", "--wait", "--collect", "--service-type=exec",
                *properties, *words)


# restic init unless the repository answers; ssh's reason (an SFTP target) printed last, where the error
# message takes it from, instead of restic's "unable to start the sftp session". restic relays ssh's
# stderr from a thread and may exit before it did, so when its output holds no reason, the same ssh ($1,
# words without spaces or patterns, empty for other targets) is asked once more, to say it itself.
# (The reasons are the files job's own list: offsite_files.SSH_REASONS, one word set for both.)
INIT_UNLESS_THERE = ('probe=$1; shift; "$@" cat config >/dev/null 2>&1 && exit 0; e=$("$@" init 2>&1 >/dev/null); s=$?; '
                     f"reasons='{'|'.join(SSH_REASONS)}'; "
                     '[ "$s" -eq 0 ] || [ -z "$probe" ] || printf "%s\\n" "$e" | grep -Eq "$reasons" || '
                     '{ set -f; e="$e\n$($probe </dev/null 2>&1 >/dev/null)"; set +f; }; '
                     'printf "%s\\n" "$e" | grep -Ev "$reasons" >&2; printf "%s\\n" "$e" | grep -E "$reasons" >&2; exit $s')


def init_repository(profile: Profile) -> str:
    """restic's repository on the target, made when it is not there yet (never over one that is)."""
    ssh = sftp_command(profile.offsite)
    return as_replication_user(profile, "sh", "-c", INIT_UNLESS_THERE, "sh", " ".join(ssh or ()), *restic(profile))


def files_now(profile: Profile) -> str:
    """The snapshot of .env and media, now, waited for (exit non-zero when it failed)."""
    return f"systemctl start {q(profile.remote.files_unit.name)}"


def write_as_replication_user(profile: Profile, path: PurePosixPath) -> str:
    """stdin into a file of the replication user's (a setting of no secret, for a restore --from)."""
    return as_replication_user(profile, "sh", "-c", 'umask 077 && cat > "$1"', "sh", path, secrets=())


RESTORE_STAGING = "restore.sqlite3"
RESTORE_DIGEST = "restore.sha256"      # written by sqlite.send once the check passed


def restore_into_incoming(profile: Profile, incoming: PurePosixPath, timestamp: str | None,
                          source: Source | None = None) -> str:
    """The database as the target holds it (at `timestamp`, RFC 3339, or the newest point), restored by
    Litestream as the replication user into its own state dir, then sent by that user (integrity_check
    on the other core while the bytes go, sqlite.send) to the service user, who writes it into the
    incoming folder (`incoming`, its own; sqlite.receive): root only joins the two with a pipe and never
    touches a path either of them could replace. The digest of what was sent exists only when the check
    passed, and must equal that of what was written."""
    p = profile.remote
    source = source or own_source(profile)
    staged, sent = p.offsite_state / RESTORE_STAGING, p.offsite_state / RESTORE_DIGEST
    point = ["-timestamp", timestamp] if timestamp else []
    restore = as_replication_user(profile, p.litestream_bin, "restore", "-config", source.litestream_config,
                                  *point, "-o", staged, source.database, secrets=source.env_files,
                                  credentials=source.credentials)
    remove = as_replication_user(profile, "rm", "-f", staged, sent, secrets=())
    send = as_replication_user(profile, *sqlite_words("send", staged, sent), secrets=())
    receive = as_service_user(profile, *sqlite_words("receive", incoming / DATABASE))
    same = (f"b=$({send} | {receive}) && a=$({as_replication_user(profile, 'cat', sent, secrets=())}) && "
            f"[ -n \"$a\" ] && [ \"$a\" = \"$b\" ]")
    return f"{remove} && {restore} && {same}; status=$?; {remove}; exit $status"


def list_points(profile: Profile, source: Source | None = None) -> str:
    """Litestream's restore points on the source's target (`ltx -json -level all`)."""
    source = source or own_source(profile)
    return as_replication_user(profile, profile.remote.litestream_bin, "ltx", "-json", "-level", "all", "-config",
                               source.litestream_config, source.database, secrets=source.env_files,
                               credentials=source.credentials)


def parts_in_incoming(profile: Profile, incoming: PurePosixPath) -> str:
    """The names of .env and media that a restore put into the incoming folder, one per line."""
    return as_service_user(profile, "sh", "-c", 'for p in .env media; do [ ! -e "$1/$p" ] || echo "$p"; done',
                           "sh", incoming)


def list_files(profile: Profile, source: Source | None = None) -> str:
    """restic's snapshots of .env and media on the source's target, as JSON."""
    source = source or own_source(profile)
    return as_replication_user(profile, *restic(profile, "snapshots", "--json", "--tag", FILES_TAG,
                                                settings=source.settings),
                               secrets=source.env_files, credentials=source.credentials)


def restore_files_into_incoming(profile: Profile, incoming: PurePosixPath, snapshot: str,
                                source: Source | None = None, members: tuple[str, ...] = ()) -> str:
    """.env and media (and PostgreSQL's dump) of one restic snapshot, streamed by restic (which checks
    every blob it decrypts) as the replication user into tar run by the service user in the incoming
    folder (`members`: only these); bash's pipefail makes either end's failure the script's."""
    source = source or own_source(profile)
    dump = as_replication_user(profile, *restic(profile, "dump", snapshot, f"/{FILES_NAME}", settings=source.settings),
                               secrets=source.env_files, credentials=source.credentials)
    unpack = as_service_user(profile, "tar", "-xf", "-", "-C", incoming, "--no-same-owner", "--no-same-permissions",
                             *(["--", *members] if members else []))
    return join("bash", "-c", f"set -o pipefail; {dump} | {unpack}")
