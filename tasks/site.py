"""site-*: one Label Studio on several app VMs behind a load balancer (docs/site.md). The hosts come from
the site file (--site, $LSVM_SITE or configs/site.yaml), not from -H."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

from fabric import Connection
from packaging.version import Version
from rich.table import Table

from tasks.core import site as sites
from tasks.core import parse, procedure, ui
from tasks.core.commands import dbserver as dbserver_commands
from tasks.core.commands import probes
from tasks.core.commands import secret_key
from tasks.core.commands import upgrade as upgrade_commands
from tasks.core.commands.service import service_manager
from tasks.core.connect import Host
from tasks.core.data import catalog, engine, local, restore, snapshots
from tasks.core.data.catalog import counts_text, report_snapshot
from tasks.core.defaults import SWAP_HEALTH_TIMEOUT
from tasks.core.edge import HEALTH_HELP, YES_HELP, confirm, host_alias, task, task_edge
from tasks.core.errors import ConnectError, NotServing, ProfileError, RemoteError, ToolkitError, UsageError
from tasks.core.files import write_atomic
from tasks.core.procedure import Step
from tasks.core.profile import Profile, backups_root
from tasks.core.provision import balancer, dbserver, facts, plan
from tasks.core.provision.health import wait_for_health
from tasks.core.provision.run import provision_host
from tasks.core.provision.tls import check_pair, leaf_info, name_matches
from tasks.core.releases import build_beside, checked_version, release_label
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


def _route_source(host: Host, toward: str) -> str:
    """The address `host`'s connections to `toward` come from (checked: it goes into rules)."""
    answer = host.run(probes.source_toward(toward), check=False, what=f"{host.alias}'s route to {toward}").stdout
    return sites.route_source(answer, toward)


def _http_from(lb: Host, the_site: sites.Site, app: sites.AppVM, app_profile: Profile) -> tuple[str, ...]:
    """Who the app VM's firewall lets reach Label Studio: the balancer (the address its requests come from)
    and the site file's app_firewall.also_from."""
    source = the_site.balancer.from_address or _route_source(lb, app.address or app_profile.address)
    return tuple(dict.fromkeys((source, *the_site.also_from)))


def _database_certificate_file(profile: Profile) -> Path:
    return Path(profile.database.ca_file or "").expanduser()


def _keep_database_certificate(alias: str, profile: Profile, served: str) -> None:
    """The certificate the database VM serves, checked to be one for database.host, in database.ca_file
    here (written when it differs; public)."""
    name = profile.database.address
    info = leaf_info(served)
    if info is None or not any(name_matches(pattern, name) for pattern in info.names):
        raise RemoteError(f"{alias} serves no certificate for {name}; the app VMs were not changed",
                          hint="run site-provision again (it makes one)")
    path = _database_certificate_file(profile)
    if path.is_file() and path.read_text(errors="replace") == served:
        return
    write_atomic(path, served.encode(), mode=0o644)
    ui.step(True, f"kept {alias}'s certificate in {path} (public: the app VMs verify PostgreSQL with it; "
                  f"SHA-256 {info.sha256[:23]}...)")


def _database_vm(c, the_site: sites.Site, profile: Profile, apps, dry_run: bool) -> str | None:
    """site-provision's first part with a database VM: PostgreSQL set up for the app VMs (their addresses
    as its route sees them), its certificate kept in database.ca_file here (public: what the app VMs
    verify it with), and the role's password, read on the SSH channel for the app VMs (never shown or
    written here). None in a dry run (nothing is made)."""
    db_host = _connect(c, the_site.database.host)
    db_profile = sites.app_profile(profile, db_host.alias)
    sources = tuple(dict.fromkeys(_route_source(host, profile.database.address) for _, _, host in apps))
    ui.out.print(f"\n[bold]database {db_host.alias}[/bold] (PostgreSQL for {len(apps)} app VM(s))")
    found = dbserver.database_vm_facts(db_host, db_profile, sources)
    plan.apply(db_host, dbserver.plan(found, db_profile, sources), dry_run=dry_run)
    if dry_run:
        return None
    served = db_host.run(dbserver_commands.read_certificate(), sudo=True, what="reading PostgreSQL's certificate").stdout
    _keep_database_certificate(db_host.alias, profile, served)
    password = db_host.run(dbserver_commands.read_password(db_profile), sudo=True,
                           what="reading the role's password").stdout.strip()
    if not password:
        raise RemoteError(f"{db_host.alias} holds no password for {profile.database.user}",
                          hint="run site-provision again (it generates one)")
    return password


def _built_site(c, site: str | None):
    """The site file, its profile, the balancer and every app VM connected, once site-provision has set the
    balancer up (what the tasks that act on a running site need)."""
    the_site, profile = sites.load_site(site)
    lb = _connect(c, the_site.balancer.host)
    apps = _apps(c, the_site, profile)
    found = balancer.balancer_facts(lb)
    if not found.ours:
        raise RemoteError(f"{lb.alias} is not this site's balancer yet", hint="run: fab site-provision")
    return the_site, profile, Balancer(lb), apps, found


def _serving_balancer(lb: Host, found: balancer.BalancerFacts) -> Balancer | None:
    """The balancer when it already serves this site (then app VMs change one at a time), else None."""
    return Balancer(lb) if found.ours and found.haproxy.running else None


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
    rolling = _serving_balancer(lb, lb_found) if len(apps) > 1 else None
    mode = "plan only: nothing on any host changes" if dry_run else f"site: {the_site.source}"
    first = f"the database VM {the_site.database.host}, then " if the_site.database else ""
    ui.out.print(f"[bold]site-provision[/bold] {first}{len(apps)} app VM(s), then the balancer {lb.alias} ({mode})")
    database_password = _database_vm(c, the_site, profile, apps, dry_run) if the_site.database else None
    waiting = bool(the_site.database and dry_run and not _database_certificate_file(profile).is_file())
    if waiting:
        ui.out.print(f"\nThe app VMs' plans follow once {the_site.database.host} has made its certificate "
                     f"({profile.database.ca_file}): run site-provision without --dry-run.")
    key = None
    addresses = {app.host: app.address or app_profile.address for app, app_profile, _ in apps}
    at_balancer = rolling.servers() if rolling is not None else {}
    for index, (app, app_profile, host) in enumerate([] if waiting else apps):
        ui.out.print("")
        # The first VM migrates the database (its start runs the migrations; the others find none to run).
        # Once the balancer serves, a VM about to change is taken out first and put back after; one whose
        # address changed gets no request meanwhile, and goes in once the balancer's configuration names it.
        moved = app.server in at_balancer and at_balancer[app.server].elsewhere_than(addresses[app.host])
        with contextlib.ExitStack() as out:
            def drain(server=app.server, timeout=app_profile.nginx.proxy_timeout):
                out.enter_context(taken_out(rolling, server, timeout))

            if moved:
                ui.warn(f"the balancer sends {app.server}'s requests to {at_balancer[app.server].addr}; the site "
                        f"file says {addresses[app.host]}: it gets none until the balancer's configuration says so "
                        "(last step)")
            provision_host(host, app_profile, dry_run=dry_run, site_key=key,
                           site_marker=sites.member_marker(the_site, app.host),
                           http_from=_http_from(lb, the_site, app, app_profile),
                           site_database_password=database_password,
                           before_changes=drain if rolling is not None and not moved else None)
        if index == 0:
            key = _site_key(host, app_profile)
    config = sites.balancer_config(the_site, profile, addresses)
    ui.out.print(f"\n[bold]balancer {lb.alias}[/bold] (HAProxy)")
    plan.apply(lb, balancer.plan(lb_found, the_site, config, sites.edge_name(profile), pair), dry_run=dry_run)
    took = time.monotonic() - started
    if dry_run:
        ui.out.print(f"\nPlan shown in {took:.1f}s. Nothing was changed.")
        return
    check = Balancer(lb)
    states = check.servers()
    for app, _, _ in apps:
        # Provision proved each VM healthy: one an operator or a failed rolling step left drained (or in
        # maintenance) goes back; `ready` changes nothing on one that is in already.
        check.ready(app.server)
        was = states[app.server].status if app.server in states else ""
        if was.startswith(("DRAIN", "MAINT")):
            ui.step(True, f"put {app.server} back: it was {was} at the balancer")
    ui.out.print(f"\n[bold]The site is up[/bold] at [bold]{profile.url}[/bold]: {len(apps)} app VM(s) behind "
                 f"{lb.alias}, every one checked up by the balancer ({took:.1f}s).")


@task(name="site-restart", help={"site": SITE_HELP})
@task_edge
def site_restart(c, site=None):
    """Restart every app VM, one at a time: drained at the balancer, restarted, proven, put back."""
    no_host(c)
    the_site, profile, rolling, apps, _ = _built_site(c, site)
    for app, app_profile, host in apps:
        # A busy VM may miss a check or two: the others get the balancer's rise time to be seen up again.
        if rolling.any_up([a.server for a, _, _ in apps if a is not app]) is None:
            raise RemoteError(f"no other app VM is up to serve while {app.server} restarts; nothing was changed "
                              "on it", hint="`fab site-status` shows which are down")
        ui.out.print(f"\n[bold]{app.server}[/bold]")
        with taken_out(rolling, app.server, app_profile.nginx.proxy_timeout):
            manager = service_manager(app_profile)
            host.run(manager.restart(), sudo=True, what=f"restarting {manager.label}")
            wait_for_health(host, app_profile, via_nginx=True)
            ui.step(True, f"restarted {manager.label}; it answers and reads its database")
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
        except ToolkitError as exc:
            label = f"{'unreachable' if isinstance(exc, ConnectError) else 'not read'}: {exc}; {where}"
        table.add_row("app", app.host, label)
    db = profile.database
    where = f"PostgreSQL {db.user}@{db.address}:{db.port}/{db.name} (shared)"
    if the_site.database is not None:
        try:
            said = parse.key_values(_connect(c, the_site.database.host).run(
                dbserver_commands.status(), sudo=True, what="PostgreSQL's state").stdout.splitlines())
            where += (", accepts connections" if said.get("ready") == "yes"
                      else f", not accepting connections (postgresql {said.get('active') or 'unknown'})")
        except ToolkitError as exc:
            where += f"; the database VM is unreachable: {exc}"
    table.add_row("database", the_site.database.host if the_site.database else db.address, where)
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
    the_site, profile, rolling, apps, _ = _built_site(c, site)
    lb = rolling.host
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
        with _in_maintenance(rolling, apps):
            restore.replace_after_backup(first_host, first_profile, chosen, chosen.manifest.files,
                                         backup=server is not None, label="pre-restore", task_name="site-restore",
                                         health_timeout=int(health_timeout))
    ui.out.print(f"\n[bold]The site serves {chosen.host}/{chosen.id}[/bold] from {len(apps)} app VM(s) at {profile.url}.")


@contextlib.contextmanager
def _in_maintenance(rolling: Balancer, apps: list[tuple[sites.AppVM, Profile, Host]]):
    """Every app VM drained (the balancer answers for maintenance) and Label Studio stopped on all but the
    first, for a body that changes the database through the first; then, whatever the body did, every
    VM started on the first one's SECRET_KEY, proven and put back."""
    for app, app_profile, _ in apps:
        rolling.drain(app.server, app_profile.nginx.proxy_timeout)
    ui.step(True, f"drained every app VM at {rolling.host.alias}: the site answers for maintenance")
    try:
        for app, app_profile, host in apps[1:]:
            manager = service_manager(app_profile)
            host.run(manager.stop(), sudo=True, what=f"stopping {manager.label}")
            ui.step(True, f"stopped {manager.label} on {app.host}")
        yield
    finally:
        _back_in_turn(rolling, apps)


def _back_in_turn(rolling: Balancer, apps: list[tuple[sites.AppVM, Profile, Host]]) -> None:
    """After the first app VM's data changed (or was put back): it goes back into the balancer as soon as
    it is proven (the maintenance answer ends there); then each other one gets its SECRET_KEY, is started,
    proven and put back."""
    first, first_profile, first_host = apps[0]
    wait_for_health(first_host, first_profile, via_nginx=True)
    rolling.ready(first.server)
    ui.step(True, f"put {first.server} back: the balancer's checks see it up (the site serves again)")
    key = _site_key(first_host, first_profile)
    for app, app_profile, host in apps[1:]:
        if key is not None:
            plan.run_with_secret(host, secret_key.on_server(app_profile, secret_key.install_from_stdin),
                                 f"{key}\n".encode(), "writing the site's SECRET_KEY")
        manager = service_manager(app_profile)
        host.run(manager.start(), sudo=True, what=f"starting {manager.label}")
        wait_for_health(host, app_profile, via_nginx=True)
        ui.step(True, f"started {manager.label} on {app.host} with the site's SECRET_KEY; it reads the database")
        rolling.ready(app.server)
        ui.step(True, f"put {app.server} back: the balancer's checks see it up")


@task(name="site-upgrade", help={
    "site": SITE_HELP, "version": "the release to upgrade to (default: the profile's label_studio.version)",
    "yes": YES_HELP, "dry-run": "show what would happen, change nothing", "health-timeout": HEALTH_HELP})
@task_edge
def site_upgrade(c, site=None, version=None, yes=False, dry_run=False, health_timeout=SWAP_HEALTH_TIMEOUT):
    """Upgrade every app VM: a backup, the release built beside the old one, migrations once, the VMs rolled."""
    no_host(c)
    if version:
        checked_version(version)     # before connecting
    _, profile, rolling, apps, _ = _built_site(c, site)
    found = {app.host: facts.provision_facts(host, app_profile, "") for app, app_profile, host in apps}
    running = {f.label_studio_version for f in found.values()}
    if len(running) != 1 or None in running:
        raise UsageError(f"the app VMs run {', '.join(sorted(str(v) for v in running))}: a site upgrades from one "
                         "release; nothing was changed", hint="fab site-provision puts the profile's on every one")
    old = running.pop()
    new = checked_version(version or profile.label_studio.version)
    if Version(new) == Version(old):
        ui.step(False, f"label-studio {old} runs on every app VM: nothing to upgrade")
        return
    if Version(new) < Version(old):
        raise UsageError(f"{new} is older than the running {old}: a database {old} migrated does not go back by "
                         "installing an older release; nothing was changed",
                         hint=f"fab site-restore --snapshot {apps[0][0].host}/<the pre-upgrade backup> with {new} "
                              "built returns the data of then")
    first, first_profile, first_host = apps[0]
    state: dict = {}

    def backup() -> None:
        with snapshots.server_lock(first_host, first_profile, "site-upgrade"):
            taken = engine.take_server_snapshot(first_host, first_profile, label=f"pre-upgrade-{release_label(old)}")
        report_snapshot(taken, "site backed up as")
        state["backup"] = taken

    def build() -> None:
        for app, app_profile, host in apps:
            build_beside(host, app_profile, new, built=new in found[app.host].releases)

    def ask_migrations() -> None:
        out = first_host.run(upgrade_commands.migration_plan(first_profile, new), sudo=True, check=False,
                             timeout=900, what="the migration plan")
        line = next((text[5:] for text in out.stdout.splitlines() if text.startswith("PLAN ")), None)
        if not out.ok or line is None:
            raise RemoteError(f"label-studio {new} could not read the database's migrations: {out.last_line()}; "
                              "nothing was changed (the site kept serving)")
        state["migrations"] = json.loads(line)
        ui.step(True, f"label-studio {new} has {len(state['migrations'])} migration(s) for the database")

    def switch() -> None:
        migrations = state["migrations"]
        how = ("every VM out at once (the schema changes: the site answers for maintenance until the first VM "
               "runs the new release)" if migrations else "one VM at a time (no migration: the site keeps serving)")
        confirm(f"switch the site to label-studio {new}, {how}?", yes)
        if migrations:
            _upgrade_in_maintenance(rolling, apps, old, new, state["backup"], int(health_timeout))
        else:
            for app, app_profile, host in apps:
                with taken_out(rolling, app.server, app_profile.nginx.proxy_timeout):
                    _switch(host, app_profile, new, old)

    steps = [
        Step.of(backup, f"verified backup of the site (through {first.host}) on this machine, label "
                        f"pre-upgrade-{release_label(old)}"),
        Step.of(build, f"build label-studio {new} beside {old} on every app VM (they keep serving)"),
        Step.of(ask_migrations, f"ask {new} which migrations the database lacks (reading only)"),
        Step.of(switch, "none: each app VM drained, switched, restarted, proven, put back, one at a time",
                "some: every app VM drained (the site answers 503 for maintenance), the others stopped; the first "
                "switched and started (it migrates the database once), proven, put back; then each other one",
                f"a failure: the VM goes back to {old}; after a migration, the site gets the backup back"),
    ]
    ui.out.print(f"[bold]site-upgrade[/bold]: label-studio {old} -> {new} on {len(apps)} app VM(s)")
    procedure.show(steps)
    if dry_run:
        ui.out.print("\nNothing was changed.")
        return
    procedure.run(steps)
    ui.out.print(f"\n[bold]The site runs label-studio {new}[/bold] on {len(apps)} app VM(s) at {profile.url}.")
    if new != profile.label_studio.version:
        ui.warn(f"set label_studio.version: \"{new}\" in {profile.config_file}: site-provision refuses to go back "
                f"to {profile.label_studio.version}")


def _switch(host: Host, profile: Profile, new: str, old: str) -> None:
    """The VM's `current` release to `new`, restarted, proven; back to `old` (restarted) when it fails."""
    manager = service_manager(profile)
    host.run(upgrade_commands.switch_release(profile, new), sudo=True, what=f"switching to {new}")
    try:
        host.run(manager.restart(), sudo=True, what=f"restarting {manager.label}")
        wait_for_health(host, profile, via_nginx=True)
    except ToolkitError:
        host.run(upgrade_commands.switch_release(profile, old), sudo=True, what=f"switching back to {old}")
        host.run(manager.restart(), sudo=True, what=f"restarting {manager.label}")
        raise
    ui.step(True, f"{host.alias} runs label-studio {new}; it answers and reads its database")


def _upgrade_in_maintenance(rolling: Balancer, apps, old: str, new: str, backup: catalog.Snapshot,
                            health_timeout: int) -> None:
    """The schema changes: no VM of the old release may write meanwhile. The first VM migrates the database
    as it starts the new release; the others follow. Should the first fail, it goes back to `old` and the
    site gets the pre-upgrade backup back (the migration may have changed the database half-way)."""
    first, first_profile, first_host = apps[0]
    with _in_maintenance(rolling, apps):
        try:
            _switch(first_host, first_profile, new, old)
        except ToolkitError as exc:
            ui.warn(f"{first.host} did not come up on {new} ({exc}); it is back on {old}: the database as it was "
                    f"before the upgrade comes back from {backup.id}")
            restore.replace_after_backup(first_host, first_profile, backup, backup.manifest.files, backup=False,
                                         label="", task_name="site-upgrade", health_timeout=health_timeout)
            raise
        for app, app_profile, host in apps[1:]:
            host.run(upgrade_commands.switch_release(app_profile, new), sudo=True, what=f"switching to {new}")
            ui.step(True, f"switched {app.host} to label-studio {new} (it starts with the others)")
