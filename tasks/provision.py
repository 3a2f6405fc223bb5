"""provision: a bare Debian VM -> Label Studio behind nginx, reboot-proof, idempotent."""

from __future__ import annotations

import time

from fabric import task

from .core import facts, plan, steps, systems, ui
from .core.commands.service import service_manager
from .core.edge import CONFIG_HELP, admin_email, ask_new_password, open_host, task_edge
from .core.errors import RemoteError, UsageError
from .core.health import wait_for_health
from .core.plan import AdminRequest
from .core.profile import Profile


def refuse_neighbours(alias: str, found: facts.ProvisionFacts) -> None:
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


def check_host(profile: Profile, found: facts.ProvisionFacts) -> None:
    if service_manager(profile).needs_systemd and not found.systemd:
        raise RemoteError("this host does not run systemd: set `service: {manager: screen}` in the profile")
    version = tuple(int(x) for x in (found.python3 or "0.0").split(".")[:2])
    if version < (3, 10):
        raise RemoteError(f"Label Studio needs Python 3.10 or newer; the host has {found.python3 or 'none'}")
    warning = systems.support_warning(found.os_id, found.os_version)
    if warning:
        ui.warn(warning)


@task(help={
    "config": CONFIG_HELP,
    "dry-run": "connect and read, show every step and file diff, change nothing",
    "reset-password": "set a new password for the admin (asked, or LABEL_STUDIO_PASSWORD)",
})
@task_edge
def provision(c, config=None, dry_run=False, reset_password=False):
    """Install Label Studio behind nginx: packages, venv, systemd (or screen), admin, firewall. Idempotent."""
    started = time.monotonic()
    profile, host = open_host(c, config, sudo=True)
    email = admin_email(profile)
    if reset_password and not email:
        raise UsageError("--reset-password needs label_studio.admin_email in the profile (or LABEL_STUDIO_USERNAME)")
    found = facts.provision_facts(host, profile, email or "")
    check_host(profile, found)
    refuse_neighbours(host.alias, found)
    problem = steps.version_problem(found, profile)
    if problem:
        raise UsageError(f"{problem}; nothing was changed",
                         hint=f"to go back to the release that ran before the last upgrade: fab -H {host.alias} rollback")
    if not email and not found.db_users:
        raise UsageError(f"no admin to create: set label_studio.admin_email in {profile.config_file} "
                         "or LABEL_STUDIO_USERNAME")
    admin = AdminRequest(email, reset=reset_password)
    if not dry_run and steps.needs_password(found, admin):
        admin = AdminRequest(email, ask_new_password(email), reset_password)

    mode = "plan only: nothing on the server changes" if dry_run else f"profile: {profile.source}"
    ui.out.print(f"[bold]provision {host.alias}[/bold] ({mode})")
    changes = plan.apply(host, steps.plan(found, profile, admin), dry_run=dry_run)
    if not dry_run:
        wait_for_health(host, profile, via_nginx=True)
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
    hint = service_manager(profile).reboot_hint()
    if hint:
        ui.warn("screen mode does not survive a reboot. To start it at boot, add this line with "
                f"`sudo crontab -e` on the server:\n  {hint}")
