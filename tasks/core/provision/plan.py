"""One shape for every change on a server: a Change says what, whether it changes anything, the diff
of a file, the action that does it (data, not code) and what it notifies. Plans are built by pure
functions (tasks.core.provision.steps); `apply` is the one place that runs them, or only prints them."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Iterable, Union

from tasks.core import ui
from tasks.core.commands import balancer as balancer_commands
from tasks.core.commands import empty_private_file
from tasks.core.commands import install_file as install_file_command
from tasks.core.commands import offsite as offsite_commands
from tasks.core.commands import postgres as postgres_commands
from tasks.core.commands.provision import apply_nginx_site, ensure_admin
from tasks.core.commands.tls import (
    CERTBOT_TIMEOUT,
    certbot_certonly,
)
from tasks.core.commands.tls import install_tls_files as install_tls_files_command
from tasks.core.connect import Host
from tasks.core.database import PASSWORD_ENV, secret_line
from tasks.core.defaults import FIRST_START_TIMEOUT
from tasks.core.errors import RemoteError
from tasks.core.profile import PROJECT_ROOT, Profile
from tasks.core.provision.facts import ProvisionFacts
from tasks.core.provision.health import wait_for_health
from tasks.core.provision.tls import Eab, LocalPair, certbot_failure, certbot_ini
from tasks.core.render import RenderedFile
from tasks.core.transfer import remote_tempdir, secret_file, upload_bytes

ENSURE_ADMIN_SCRIPT = PROJECT_ROOT / "templates" / "scripts" / "ensure_admin.py"

# What a change notifies: the handlers run once, after every step of a plan.
DAEMON_RELOAD_NEEDED = "daemon-reload"
NGINX_RELOAD = "nginx-reload"
RESTART = "restart"
HEALTH = "health"


# ------------------------------------------------------------------------------------------------
# Actions: what a change does, as data a test can compare.


@dataclass(frozen=True)
class Run:
    """A root script."""

    script: str
    what: str                      # names the step in an error message
    timeout: float | None = None
    status: str | None = None      # spinner text while it runs
    show_output: bool = False      # print what it prints (indented)


@dataclass(frozen=True)
class InstallFile:
    """A rendered file uploaded, then put in place by rename; with `check` ("haproxy"), only once the
    program that reads it accepts the uploaded copy."""

    file: RenderedFile
    check: str = ""


@dataclass(frozen=True)
class NginxSite:
    """Site file (when `site` is given), enable link and default site, validated by nginx -t; the
    previous state comes back when the test fails."""

    profile: Profile
    site: RenderedFile | None
    previous_exists: bool


@dataclass(frozen=True)
class AdminRequest:
    email: str | None
    password: str | None = field(default=None, repr=False)
    reset: bool = False


@dataclass(frozen=True)
class EnsureAdmin:
    profile: Profile
    admin: AdminRequest


@dataclass(frozen=True)
class WaitForHealth:
    profile: Profile
    timeout: int = FIRST_START_TIMEOUT


@dataclass(frozen=True)
class InstallTlsFiles:
    """tls.mode files: the checked chain and key, the key root-only 0600."""

    profile: Profile
    pair: LocalPair


@dataclass(frozen=True)
class ObtainCertificate:
    """tls.mode acme: certbot, http-01 answered from the webroot our nginx site serves."""

    profile: Profile
    name: str
    force: bool = False
    eab: Eab | None = None


@dataclass(frozen=True)
class StoreDatabasePassword:
    """database.host: the password given on this machine, on the SSH channel's stdin into the root-only
    secret file; a login with it proves it."""

    profile: Profile
    password: str = field(repr=False)


@dataclass(frozen=True)
class StoreOffsiteSecret:
    """offsite: the S3 keys taken from this machine's environment, or restic's password, on the SSH
    channel's stdin into a root-only file systemd reads for the replication user's programs."""

    path: PurePosixPath
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class RunWithSecret:
    """A root script that reads a secret on the SSH channel's stdin (never argv, never a file of ours)."""

    script: str
    secret: bytes = field(repr=False)
    what: str


Action = Union[Run, InstallFile, NginxSite, EnsureAdmin, WaitForHealth, InstallTlsFiles, ObtainCertificate,
               StoreDatabasePassword, StoreOffsiteSecret, RunWithSecret]


@dataclass(frozen=True)
class Change:
    what: str                              # what was done, or found ("nginx site is up to date")
    changed: bool = False
    plan: str = ""                         # what would be done, for plan mode ("install nginx")
    diff: str = ""                         # of a file, shown in plan mode
    action: Action | None = None           # run by `apply` whenever present
    notifies: frozenset[str] = frozenset()

    def line(self, dry_run: bool) -> str:
        if dry_run and self.plan and (self.changed or self.action is not None):
            return f"would {self.plan}"
        return self.what


def notified(changes: Iterable[Change]) -> frozenset[str]:
    """Everything the changes that change something notify."""
    return frozenset().union(*(c.notifies for c in changes if c.changed))


def apply(host: Host, changes: list[Change], *, dry_run: bool) -> list[Change]:
    """Run every action in order and report each change; in plan mode only report (with diffs).
    Returns the changes as they turned out."""
    done = []
    for change in changes:
        if not dry_run and change.action is not None:
            change = execute(host, change)
        ui.step(change.changed, change.line(dry_run))
        if dry_run and change.diff:
            ui.out.print(change.diff, markup=False, highlight=False, end="")
        done.append(change)
    return done


def execute(host: Host, change: Change) -> Change:
    action = change.action
    if isinstance(action, Run):
        with ui.err.status(action.status) if action.status else contextlib.nullcontext():
            output = host.run(action.script, sudo=True, what=action.what, timeout=action.timeout)
        if action.show_output:
            for text in output.stdout.splitlines():
                ui.out.print(f"  {text}", markup=False, highlight=False)
    elif isinstance(action, InstallFile):
        install_file(host, action.file, action.check)
    elif isinstance(action, NginxSite):
        install_nginx_site(host, action)
    elif isinstance(action, EnsureAdmin):
        outcome = run_ensure_admin(host, action.profile, action.admin)
        email = action.admin.email
        words = {"created": f"created admin {email}", "password-reset": f"reset the password of {email}",
                 "exists": f"admin {email} exists"}
        return dataclasses.replace(change, changed=outcome != "exists", what=words.get(outcome, outcome))
    elif isinstance(action, WaitForHealth):
        wait_for_health(host, action.profile, via_nginx=False, timeout=action.timeout)
    elif isinstance(action, InstallTlsFiles):
        install_tls_files(host, action)
    elif isinstance(action, ObtainCertificate):
        obtain_certificate(host, action)
    elif isinstance(action, StoreDatabasePassword):
        store_database_password(host, action)
    elif isinstance(action, StoreOffsiteSecret):
        run_with_secret(host, offsite_commands.store_secret(action.path), action.content, f"storing {action.path}")
    elif isinstance(action, RunWithSecret):
        run_with_secret(host, action.script, action.secret, action.what)
    else:  # pragma: no cover - a new Action type without an executor is a bug here
        raise TypeError(f"no executor for {action!r}")
    return change


# ------------------------------------------------------------------------------------------------
# Executors that move files.


def install_file(host: Host, file: RenderedFile, check: str = "") -> None:
    """Upload to a private temp dir, then `install` next to the target and rename over it."""
    with remote_tempdir(host) as tmp:
        staged = tmp / "upload"
        upload_bytes(host, file.content.encode(), staged)
        if check == "haproxy":
            result = host.run(balancer_commands.install_config(staged), sudo=True, check=False,
                              what=f"installing {file.path}")
            if result.exited == 3:
                raise RemoteError(f"HAProxy refused the new configuration ({result.last_line()}); the previous one "
                                  "keeps serving")
            result.checked(f"installing {file.path}", host.alias)
            return
        host.run(install_file_command(staged, file.path, mode=file.mode, owner=file.owner, group=file.group),
                 sudo=True, what=f"installing {file.path}")


def install_nginx_site(host: Host, action: NginxSite) -> None:
    with remote_tempdir(host) as tmp:
        staged: PurePosixPath | None = None
        if action.site is not None:
            staged = tmp / "site"
            upload_bytes(host, action.site.content.encode(), staged)
        result = host.run(apply_nginx_site(action.profile, staged, previous_exists=action.previous_exists),
                          sudo=True, check=False, what="nginx site")
    if result.exited == 3:
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "nginx -t failed"
        raise RemoteError(f"nginx rejected the new site ({detail}); the previous site is back in place "
                          "and nginx keeps serving it")
    if not result.ok:
        raise RemoteError(f"setting up the nginx site failed: {result.last_line()}")


def run_ensure_admin(host: Host, profile: Profile, admin: AdminRequest) -> str:
    """Create the admin (or reset its password) with Label Studio's own models; the password goes
    through a 0600 file read on stdin. Returns created, password-reset or exists."""
    request = json.dumps({"email": admin.email, "password": admin.password, "reset": admin.reset}).encode()
    with secret_file(host, request) as secret:
        script_path = secret.parent / "ensure_admin.py"
        upload_bytes(host, ENSURE_ADMIN_SCRIPT.read_bytes(), script_path)
        output = host.run(ensure_admin(profile, script_path, secret), sudo=True, check=False,
                          what="creating the admin user")
    results = [line for line in output.stdout.splitlines() if line.startswith("RESULT ")]
    if not output.ok or not results:
        raise RemoteError(f"could not create the admin user: {output.last_line()}")
    return json.loads(results[-1][len("RESULT "):])["outcome"]


def install_tls_files(host: Host, action: InstallTlsFiles) -> None:
    """Upload into a private temp dir (the key into a 0600 file made before a byte is written), then
    put the three files in place as root."""
    with remote_tempdir(host) as tmp:
        host.run(empty_private_file(tmp / "privkey.pem"), what="creating a private file")
        for name, data in (("privkey.pem", action.pair.key), ("fullchain.pem", action.pair.fullchain),
                           ("chain.pem", action.pair.chain)):
            upload_bytes(host, data, tmp / name)
        host.run(install_tls_files_command(action.profile, tmp), sudo=True, what="installing the certificate")


def store_database_password(host: Host, action: StoreDatabasePassword) -> None:
    db = action.profile.database
    channel = host.root_channel(postgres_commands.store_password(action.profile))
    try:
        channel.write(secret_line(action.password))
        channel.finish("storing the database password")
    except RemoteError as exc:
        raise RemoteError(f"PostgreSQL at {db.address}:{db.port} refused {db.user} with that password "
                          f"({exc.message.split(': ', 1)[-1]})",
                          hint=f"check database.* in the profile and ${PASSWORD_ENV}") from None
    finally:
        channel.close()


def run_with_secret(host: Host, script: str, secret: bytes, what: str) -> None:
    channel = host.root_channel(script)
    try:
        channel.write(secret)
        channel.finish(what)
    finally:
        channel.close()


def obtain_certificate(host: Host, action: ObtainCertificate) -> None:
    """certbot certonly; a failure is one line saying why (the site keeps serving over HTTP)."""
    profile = action.profile
    ini = certbot_ini(action.eab)
    with secret_file(host, ini) if ini else contextlib.nullcontext() as config:
        script = certbot_certonly(profile, action.name, config=config, force=action.force)
        with ui.err.status(f"certbot: asking {profile.tls.acme.directory} for a certificate for {action.name}"):
            result = host.run(script, sudo=True, check=False, timeout=CERTBOT_TIMEOUT, what="certbot")
    if not result.ok:
        reason = certbot_failure(result.stdout + "\n" + result.stderr, profile.tls.acme.directory, action.name)
        raise RemoteError(f"no certificate: {reason}", hint="the site keeps serving over HTTP")


def unified_diff(path: PurePosixPath, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{path} (on server)", tofile=f"{path} (wanted)",
    ))


def managed_file(facts: ProvisionFacts, key: str, file: RenderedFile, label: str,
                 notifies: frozenset[str]) -> Change:
    current = facts.files.get(key)
    if current == file.content:
        return Change(f"{label} is up to date")
    verb = "update" if current is not None else "create"
    return Change(f"{verb}d {label} {file.path}", True, plan=f"{verb} {label} {file.path}",
                  diff=unified_diff(file.path, current or "", file.content), action=InstallFile(file),
                  notifies=notifies)
