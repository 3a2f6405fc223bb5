"""provision: a bare Debian/Ubuntu VM -> Label Studio behind nginx, reboot-proof, idempotent."""

from __future__ import annotations

import os
import sys
import time

from fabric import task

from .core import facts, ops, systems, ui
from .core.edge import open_host, task_edge
from .core.errors import RemoteError, UsageError
from .core.ops import AdminRequest, Provisioner
from .core.profile import Profile, _email
from .service import CONFIG_HELP


def admin_email(profile: Profile) -> str | None:
    email = profile.label_studio.admin_email or os.environ.get("LABEL_STUDIO_USERNAME") or None
    if email and _email(email):
        raise UsageError(f"LABEL_STUDIO_USERNAME '{email}' is not an email address")
    return email


def admin_password(email: str) -> str:
    """From LABEL_STUDIO_PASSWORD when set, else a hidden prompt; never from argv or YAML."""
    password = os.environ.get("LABEL_STUDIO_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            raise UsageError(f"no terminal to ask for the password of {email}: "
                             "set LABEL_STUDIO_PASSWORD in the environment")
        password = ui.ask_secret(f"Password for the Label Studio admin {email}: ")
        if ui.ask_secret("The same password again: ") != password:
            raise UsageError("the two passwords differ")
    ops.validate_admin_password(password)
    return password


def check_host(profile: Profile, found: facts.ProvisionFacts) -> None:
    if profile.service.manager == "systemd" and not found.systemd:
        raise RemoteError("this host does not run systemd: set `service: {manager: screen}` in the profile")
    version = tuple(int(x) for x in (found.python3 or "0.0").split(".")[:2])
    if version < (3, 10):
        raise RemoteError(f"Label Studio needs Python 3.10 or newer; the host has {found.python3 or 'none'}")


@task(help={
    "config": CONFIG_HELP,
    "dry-run": "connect and read, show every step and file diff, change nothing",
    "reset-password": "set a new password for the admin (asked, or LABEL_STUDIO_PASSWORD)",
})
@task_edge
def provision(c, config=None, dry_run=False, reset_password=False):
    """Install Label Studio behind nginx: packages, venv, systemd (or screen), admin, firewall. Idempotent."""
    started = time.monotonic()
    profile, host = open_host(c, config)
    email = admin_email(profile)
    if reset_password and not email:
        raise UsageError("--reset-password needs label_studio.admin_email in the profile (or LABEL_STUDIO_USERNAME)")
    host.sudo_mode  # noqa: B018 - fails early, in words, when root cannot be had
    found = facts.provision_facts(host, profile, email or "")
    check_host(profile, found)
    warning = systems.support_warning(found.os_id, found.os_version)
    if warning:
        ui.warn(warning)
    if not email and not found.db_users:
        raise UsageError(f"no admin to create: set label_studio.admin_email in {profile.source if profile.source.endswith('.yaml') else f'configs/{host.alias}.yaml'} "
                         "or LABEL_STUDIO_USERNAME")
    admin = AdminRequest(email, reset=reset_password)
    if not dry_run and ops.needs_password(found, admin):
        admin = AdminRequest(email, admin_password(email), reset_password)

    mode = "plan only: nothing on the server changes" if dry_run else f"profile: {profile.source}"
    ui.out.print(f"[bold]provision {host.alias}[/bold] ({mode})")
    changes = Provisioner(host, profile, found, admin, dry_run=dry_run).run()
    if not dry_run:
        ops.wait_for_health(host, profile, via_nginx=True)
    changed = sum(change.changed for change in changes)
    took = time.monotonic() - started
    if dry_run:
        ui.out.print(f"\n{changed} step(s) would change, {len(changes) - changed} already as wanted "
                     f"({took:.1f}s). Nothing was changed.")
        return
    ui.out.print(f"\n[bold]{changed} changed[/bold], {len(changes) - changed} unchanged in {took:.1f}s. "
                 f"Label Studio is up at [bold]{profile.url}[/bold]")
    if email:
        ui.out.print(f"Log in as {email}.")
    if profile.service.manager == "screen":
        ui.warn("screen mode does not survive a reboot. To start it at boot, add this line with "
                f"`sudo crontab -e` on the server:\n  @reboot {ops.screen_start_command(profile)}")
