"""provision: a bare Debian VM -> Label Studio behind nginx, reboot-proof, idempotent."""

from __future__ import annotations

import os

from rich.table import Table

from tasks.core import ui
from tasks.core.edge import CONFIG_HELP, host_alias, open_host, profile_for, task, task_edge
from tasks.core.profile import explain_profile, load_profile, read_profile_text, resolve_profile_path
from tasks.core.provision.run import check_tls_locally, provision_host


@task(help={
    "config": CONFIG_HELP,
    "dry-run": "connect and read, show every step and file diff, change nothing",
    "reset-password": "set a new password for the admin (asked, or LABEL_STUDIO_PASSWORD)",
})
@task_edge
def provision(c, config=None, dry_run=False, reset_password=False):
    """Install Label Studio behind nginx: packages, venv, systemd (or screen), admin, firewall. Idempotent."""
    # The TLS settings and a tls.files pair are checked here, before anything reaches the server.
    tls_pair, eab = check_tls_locally(profile_for(c, config, ""))
    profile, host = open_host(c, config, sudo=True)
    provision_host(host, profile, dry_run=dry_run, reset_password=reset_password, tls_pair=tls_pair, eab=eab)


@task(name="config", help={"host": "the host whose profile to show (default: -H's, else the built-in defaults)",
                           "config": CONFIG_HELP})
@task_edge
def show_config(c, host=None, config=None):
    """Check a profile (no connection) and show every setting with where it came from: file, default, environment."""
    alias = host or host_alias(c) or ""
    path = resolve_profile_path(alias, config)
    text = read_profile_text(path) if path else None
    profile = load_profile(alias, config)
    where = f"{path} is valid" if path else f"no profile for {alias or 'this host'}: the built-in defaults"
    ui.out.print(f"[bold]profile[/bold] {where}")
    table = Table(show_header=True, box=None, pad_edge=False)
    for column in ("setting", "value", "from"):
        table.add_column(column, overflow="fold")
    for key, value, source in explain_profile(profile, text, os.environ):
        table.add_row(key, value, source)
    ui.out.print(table)
