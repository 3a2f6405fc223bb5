"""site-*: one Label Studio on several app VMs behind a load balancer (docs/site.md). The hosts come from
the site file (--site, $LSVM_SITE or configs/site.yaml), not from -H."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

from fabric import Connection
from rich.table import Table

from tasks.core import site as sites
from tasks.core import ui
from tasks.core.commands import secret_key
from tasks.core.commands.service import service_manager
from tasks.core.connect import Host
from tasks.core.data import catalog, local, restore
from tasks.core.data.catalog import counts_text
from tasks.core.defaults import SWAP_HEALTH_TIMEOUT
from tasks.core.edge import HEALTH_HELP, YES_HELP, confirm, host_alias, task, task_edge
from tasks.core.errors import ConnectError, NotServing, ProfileError, RemoteError, ToolkitError, UsageError
from tasks.core.profile import Profile, backups_root
from tasks.core.provision import balancer, facts, plan
from tasks.core.provision.health import wait_for_health
from tasks.core.provision.run import provision_host
from tasks.core.provision.tls import check_pair
from tasks.core.rolling import Balancer, taken_out

SITE_HELP = "site file to use instead of configs/site.yaml (or set LSVM_SITE)"


def no_host(c) -> None:
    if host_alias(c) is not None:
        raise UsageError("site tasks take their hosts from the site file: drop -H")


def _connect(c, alias: str) -> Host:
    host = Host(Connection(alias, config=c.config))
    host.connect()
    host.check_sudo()
    return host


def _apps(c, the_site: sites.Site, profile: Profile) -> list[tuple[sites.AppVM, Profile, Host]]:
    """Each app VM connected, with the site's profile as it runs there (its address once connected)."""
    found = []
    for app in the_site.apps:
        host = _connect(c, app.host)
        app_profile = sites.app_profile(profile, app.host)
        found.append((app, dataclasses.replace(app_profile, address=host.connection.host), host))
    return found


def _edge_pair(the_site: sites.Site, profile: Profile):
    b = the_site.balancer
    if b.tls != "files":
        return None
    paths = [Path(p).expanduser() for p in (b.certificate, b.key)]
    try:
        cert, key = (path.read_bytes() for path in paths)
    except OSError as exc:
        raise ProfileError(f"balancer.tls files: cannot read {exc.filename}: {exc.strerror}") from None
    return check_pair(cert, key, sites.edge_name(profile), cert_source=str(paths[0]), key_source=str(paths[1]))


def _site_key(host: Host, profile: Profile) -> str | None:
    """The first app VM's SECRET_KEY (read on the SSH channel, never shown), None when it has none yet."""
    key = host.run(secret_key.on_server(profile, secret_key.value), sudo=True, check=False,
                   what="reading the site's SECRET_KEY").stdout.strip()
    if not key:
        return None
    problem = secret_key.key_problem(key)
    if problem:
        raise RemoteError(f"the SECRET_KEY on {host.alias} {problem}: it cannot be the site's",
                          hint=f"`fab -H {host.alias} provision` writes a key that can")
    return key


def _serving_balancer(lb: Host, the_site: sites.Site, found: balancer.BalancerFacts) -> Balancer | None:
    """The balancer when it already serves this site (then app VMs change one at a time), else None."""
    return Balancer(lb, the_site.balancer.check_interval_ms) if found.ours and found.haproxy.running else None


@task(name="site-provision", help={
    "site": SITE_HELP,
    "dry-run": "connect and read every host, show every step and file diff, change nothing",
})
@task_edge
def site_provision(c, site=None, dry_run=False):
    """Provision a site: each app VM in turn (one SECRET_KEY, drained while it changes), then the load balancer."""
    no_host(c)
    started = time.monotonic()
    the_site, profile = sites.load_site(site)
    pair = _edge_pair(the_site, profile)
    lb = _connect(c, the_site.balancer.host)
    apps = _apps(c, the_site, profile)
    lb_found = balancer.balancer_facts(lb)
    rolling = _serving_balancer(lb, the_site, lb_found) if len(apps) > 1 else None
    mode = "plan only: nothing on any host changes" if dry_run else f"site: {the_site.source}"
    ui.out.print(f"[bold]site-provision[/bold] {len(apps)} app VM(s), then the balancer {lb.alias} ({mode})")
    key = None
    for index, (app, app_profile, host) in enumerate(apps):
        ui.out.print("")
        # The first VM migrates the database (its start runs the migrations; the others find none to run).
        drained = []

        def drain(server=app.server):
            rolling.drain(server, app_profile.nginx.proxy_timeout)
            drained.append(server)
            ui.step(True, f"took {server} out of the balancer (drained)")

        provision_host(host, app_profile, dry_run=dry_run, site_key=key,
                       before_changes=drain if rolling is not None else None)
        if drained:
            rolling.ready(app.server)
            ui.step(True, f"put {app.server} back: the balancer's checks see it up")
        if index == 0:
            key = _site_key(host, app_profile)
    addresses = {app.host: app.address or app_profile.address for app, app_profile, _ in apps}
    config = sites.balancer_config(the_site, profile, addresses)
    ui.out.print(f"\n[bold]balancer {lb.alias}[/bold] (HAProxy)")
    plan.apply(lb, balancer.plan(lb_found, the_site, config, sites.edge_name(profile), pair), dry_run=dry_run)
    took = time.monotonic() - started
    if dry_run:
        ui.out.print(f"\nPlan shown in {took:.1f}s. Nothing was changed.")
        return
    check = Balancer(lb, the_site.balancer.check_interval_ms)
    for app, _, _ in apps:
        check.wait_up(app.server)
    ui.out.print(f"\n[bold]The site is up[/bold] at [bold]{profile.url}[/bold]: {len(apps)} app VM(s) behind "
                 f"{lb.alias}, every one checked up by the balancer ({took:.1f}s).")


@task(name="site-restart", help={"site": SITE_HELP})
@task_edge
def site_restart(c, site=None):
    """Restart every app VM, one at a time: drained at the balancer, restarted, proven, put back."""
    no_host(c)
    the_site, profile = sites.load_site(site)
    lb = _connect(c, the_site.balancer.host)
    apps = _apps(c, the_site, profile)
    found = balancer.balancer_facts(lb)
    if not found.ours:
        raise RemoteError(f"{lb.alias} is not this site's balancer yet", hint="run: fab site-provision")
    rolling = Balancer(lb, the_site.balancer.check_interval_ms)
    up = [name for name, state in found.servers.items() if state.up]
    for app, app_profile, host in apps:
        others = [name for name in up if name != app.server]
        if not others:
            raise RemoteError(f"no other app VM is up to serve while {app.server} restarts; nothing was changed "
                              "on it", hint="`fab site-status` shows which are down")
        ui.out.print(f"\n[bold]{app.server}[/bold]")
        with taken_out(rolling, app.server, app_profile.nginx.proxy_timeout):
            manager = service_manager(app_profile)
            host.run(manager.restart(), sudo=True, what=f"restarting {manager.label}")
            wait_for_health(host, app_profile, via_nginx=True)
            ui.step(True, f"restarted {manager.label}; it answers and reads its database")
        up = [name for name, state in rolling.servers().items() if state.up]
    ui.out.print(f"\n[bold]Restarted {len(apps)} app VM(s)[/bold], one at a time; {profile.url} served throughout.")


@task(name="site-status", help={"site": SITE_HELP})
@task_edge
def site_status(c, site=None):
    """Show every host of the site and its role: balancer, app VMs (health, state at the balancer), database, bucket."""
    no_host(c)
    the_site, profile = sites.load_site(site)
    table = Table(show_header=True, box=None, pad_edge=False)
    for column in ("role", "host", "state"):
        table.add_column(column, overflow="fold")
    servers: dict[str, sites.ServerState] = {}
    try:
        lb = _connect(c, the_site.balancer.host)
        found = balancer.balancer_facts(lb)
        servers = found.servers
        state = (f"HAProxy {found.haproxy.describe()}; {profile.url}" if found.ours
                 else "not this site's balancer yet (run: fab site-provision)")
    except ToolkitError as exc:
        state = f"unreachable: {exc}"
    table.add_row("balancer", the_site.balancer.host, state)
    serving = []
    for app in the_site.apps:
        at_balancer = servers.get(app.server)
        where = (f"{at_balancer.status} at the balancer ({at_balancer.sessions} open request(s), last check "
                 f"{at_balancer.check or '-'})") if at_balancer else "not at the balancer"
        try:
            host = _connect(c, app.host)
            st = facts.host_status(host, sites.app_profile(profile, app.host))
            health = ("UP (answers and reads its database)" if st.healthy else
                      f"answers /health, cannot read its database: {st.database_check}" if st.database_check
                      else "not serving")
            label = f"Label Studio {st.label_studio_version or '?'}, {health}; {where}"
            if st.healthy and at_balancer is not None and at_balancer.up:
                serving.append(app.server)
        except (ConnectError, RemoteError) as exc:
            label = f"unreachable: {exc}; {where}"
        table.add_row("app", app.host, label)
    db = profile.database
    table.add_row("database", db.address, f"PostgreSQL {db.user}@{db.address}:{db.port}/{db.name} (shared)")
    table.add_row("bucket", profile.media.storage, f"uploads, endpoint {profile.media.endpoint}")
    ui.out.print(table)
    if len(serving) < len(the_site.apps):
        raise NotServing(f"the site serves from {len(serving)} of {len(the_site.apps)} app VM(s)"
                         + (f": {', '.join(serving)}" if serving else ""),
                         hint="`fab -H <app VM> logs` shows why one is down; `fab site-provision` sets it up again")
    ui.out.print(f"Every app VM is up and in the balancer: {profile.url} is served by {len(serving)}.")


@task(name="site-restore", help={
    "site": SITE_HELP,
    "snapshot": "ID of a backup of the first app VM (`fab -H <it> backups`), or OTHERHOST/ID: a move onto the site",
    "yes": YES_HELP, "dry-run": "check the snapshot and show what would happen; change nothing",
    "health-timeout": HEALTH_HELP})
@task_edge
def site_restore(c, site=None, snapshot=None, yes=False, dry_run=False, health_timeout=SWAP_HEALTH_TIMEOUT):
    """Put a snapshot on the site: every app VM out, the data replaced once (through the first), every VM back."""
    no_host(c)
    if not snapshot:
        raise UsageError("which data? --snapshot ID (a backup of the first app VM: `fab -H <it> backups`) or "
                         "--snapshot OTHERHOST/ID (a move onto the site)")
    the_site, profile = sites.load_site(site)
    lb = _connect(c, the_site.balancer.host)
    apps = _apps(c, the_site, profile)
    if not balancer.balancer_facts(lb).ours:
        raise RemoteError(f"{lb.alias} is not this site's balancer yet", hint="run: fab site-provision")
    first, first_profile, first_host = apps[0]
    source_dir = backups_root() / catalog.snapshot_host(snapshot, first_host.alias)
    with contextlib.ExitStack() as locks:
        locks.enter_context(local.local_lock(first_profile.backups_dir()))
        if source_dir != first_profile.backups_dir():
            locks.enter_context(local.local_lock(source_dir))
        chosen = catalog.find_snapshot(catalog.list_snapshots(source_dir), catalog.snapshot_name(snapshot))
        report = restore.checked_before_restore(first_host, first_profile, chosen)
        server = restore.server_counts_for(first_host, first_profile, chosen)
        others = apps[1:]
        ui.out.print(f"restore {chosen.host}/{chosen.id} -> the site ({len(apps)} app VM(s) behind {lb.alias})")
        ui.out.print(f"  site now:   {counts_text(server)}")
        ui.out.print(f"  restored:   {counts_text(report['counts'])}, "
                     + ", ".join(sorted({f.path.split('/')[0] for f in chosen.manifest.files})))
        restore.say_if_converted(chosen, first_profile)
        ui.out.print(f"  1. every app VM drained at {lb.alias}: the site answers 503 (maintenance) until step 4")
        if others:
            ui.out.print(f"  2. Label Studio stopped on {', '.join(a.host for a, _, _ in others)} (nothing else "
                         "holds the database)")
        ui.out.print(f"  3. {first.host}: backed up here, then its data replaced (health-gated, put back as it was "
                     "on any failure)")
        ui.out.print("  4. the restored SECRET_KEY given to every other app VM; each started, proven, put back")
        if dry_run:
            ui.out.print("dry run: the snapshot passed its checks; nothing was changed on the site")
            return
        confirm(f"replace the site's data with {chosen.host}/{chosen.id}? (it is backed up first; the site answers "
                "for maintenance meanwhile)", yes)
        rolling = Balancer(lb, the_site.balancer.check_interval_ms)
        for app, app_profile, _ in apps:
            rolling.drain(app.server, app_profile.nginx.proxy_timeout)
        ui.step(True, f"drained every app VM at {lb.alias}: the site answers for maintenance")
        try:
            for app, app_profile, host in others:
                manager = service_manager(app_profile)
                host.run(manager.stop(), sudo=True, what=f"stopping {manager.label}")
                ui.step(True, f"stopped {manager.label} on {app.host}")
            restore.replace_after_backup(first_host, first_profile, chosen, chosen.manifest.files,
                                         backup=server is not None, label="pre-restore", task_name="site-restore",
                                         health_timeout=int(health_timeout))
        finally:
            _back_in_turn(rolling, apps)
    ui.out.print(f"\n[bold]The site serves {chosen.host}/{chosen.id}[/bold] from {len(apps)} app VM(s) at {profile.url}.")


def _back_in_turn(rolling: Balancer, apps: list[tuple[sites.AppVM, Profile, Host]]) -> None:
    """After the first app VM's data changed (or was put back): the others get its SECRET_KEY, each one
    is started and proven, then every one goes back into the balancer."""
    first, first_profile, first_host = apps[0]
    wait_for_health(first_host, first_profile, via_nginx=True)
    key = _site_key(first_host, first_profile)
    for app, app_profile, host in apps[1:]:
        if key is not None:
            plan.run_with_secret(host, secret_key.on_server(app_profile, secret_key.install_from_stdin),
                                 f"{key}\n".encode(), "writing the site's SECRET_KEY")
        manager = service_manager(app_profile)
        host.run(manager.start(), sudo=True, what=f"starting {manager.label}")
        wait_for_health(host, app_profile, via_nginx=True)
        ui.step(True, f"started {manager.label} on {app.host} with the site's SECRET_KEY; it reads the database")
    for app, _, _ in apps:
        rolling.ready(app.server)
        ui.step(True, f"put {app.server} back: the balancer's checks see it up")
