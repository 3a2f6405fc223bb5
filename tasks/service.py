"""Service tasks: status, logs, start, stop, restart (systemd or screen, as the profile says)."""

from __future__ import annotations

import json as json_module
import sys

from packaging.version import InvalidVersion, Version
from rich.table import Table

from tasks.core import offsite, parse, ui
from tasks.core.commands.service import ServiceManager, service_manager
from tasks.core.data import catalog
from tasks.core.database import DatabaseSettings, same_database, server_engine, server_settings
from tasks.core.edge import CONFIG_HELP, open_host, task, task_edge
from tasks.core.errors import NotServing, RemoteError
from tasks.core.profile import Profile
from tasks.core.provision import facts, systems, tls
from tasks.core.provision.facts import HostStatus
from tasks.core.provision.health import wait_for_health
from tasks.core.releases import pypi_versions
from tasks.core.replication import replication_state
from tasks.core.ui import human_bytes


def certificate_row(mode: str, pem: str | None) -> tuple[str, str] | None:
    """("https", issuer, names, days left) of the served certificate; None when TLS is off."""
    if mode == "off":
        return None
    info = tls.leaf_info(pem)
    if info is None:
        return ("https", f"tls.mode {mode}, but no certificate on the server yet (run: provision)")
    return ("https", f"{mode}: {', '.join(info.names)}, issued by {info.issuer}, "
                     f"{info.days_left()} days left (until {info.not_after:%Y-%m-%d})")


def offsite_status(st: HostStatus, profile: Profile) -> tuple[list[tuple[str, str]], str | None]:
    """The "offsite", "offsite files" and "restore drill" rows (offsite on) and why the copies are not kept
    or proven, or None."""
    state = replication_state(st.offsite, profile)
    problem = state.problem()
    text = f"PROBLEM: {problem}" if problem else state.describe()
    return ([("offsite", f"{profile.offsite.parsed.describe()}: {text}"),
             ("offsite files", offsite.describe_files(state.replication.files)),
             ("restore drill", offsite.drill_text(state.replication.drill))], problem)


def releases_text(st: HostStatus) -> str:
    """`1.23.2 (current), 1.22.0 (previous)`: the release venvs on the server."""
    if not st.releases and st.current_release == "venv":
        return "one venv (from an earlier version of this toolkit)"
    words = []
    for release in sorted(st.releases, key=_version_key, reverse=True):
        role = " (current)" if release == st.current_release else (" (previous)" if release == st.previous_release else "")
        words.append(release + role)
    return ", ".join(words) or "-"


def _version_key(value: str):
    try:
        return (0, Version(value))
    except InvalidVersion:
        return (1, value)


def status_rows(alias: str, sudo_mode: str, st: HostStatus, manager: ServiceManager,
                last_backup: str | None = None, profile_tls_mode: str = "off",
                database: DatabaseSettings | None = None) -> list[tuple[str, str]]:
    rows = [
        ("host", alias),
        ("os", f"{st.os} (kernel {st.kernel})" if st.kernel else st.os),
        ("sudo", sudo_mode),
        ("systemd", "yes" if st.systemd else "no"),
        ("python3", st.python3 or "missing"),
        ("free disk", f"{human_bytes(st.disk_free)} on {st.disk_mount}" if st.disk_mount else "-"),
    ]
    others = st.neighbours
    found = [("unmanaged", u.describe()) for u in others.unmanaged]
    if others.port_taken_by_other:
        found.append(("port", others.port_said))
    if not st.provisioned:
        if others.unmanaged:
            rows += found + [("label studio", f"not managed by this toolkit (take it over: fab -H {alias} adopt)")]
        else:
            rows += found + [("label studio", f"not provisioned (run: fab -H {alias} provision)")]
        return rows
    code, body = parse.health(st.health_via_nginx)
    if st.healthy:
        health = "UP"
    elif parse.health_is_up(st.health_via_nginx):
        health = f"answers /health, but cannot read its database: {st.database_check}"
    else:
        health = f"HTTP {code} {body[:60]}" if code else (body or "no answer")
    rows += [
        ("label studio", st.label_studio_version or "not installed"),
        ("releases", releases_text(st)),
        ("service", manager.describe(st)),
        ("app server", app_server_text(st)),
        ("nginx", st.nginx.describe()),
        (health_row(profile_tls_mode), health),
        *filter(None, [certificate_row(profile_tls_mode, st.tls_cert)]),
        ("database", database_text(st, database, alias)),
        ("last backup", last_backup or "none on this machine"),
    ]
    return rows + found


def health_row(tls_mode: str) -> str:
    return f"health (via nginx{', https' if tls_mode != 'off' else ''})"


def app_server_text(st: HostStatus) -> str:
    """gunicorn's master, its workers and the memory they hold (what `ps` calls RSS; shared pages count
    in each process, so the sum is an upper bound)."""
    server = st.app_server
    if not server.masters:
        return "not running"
    name = f"gunicorn {st.app_server_version}" if st.app_server_version else "gunicorn"
    parts = []
    for master in server.masters:
        workers = server.workers(master)
        sizes = ", ".join(human_bytes(rss * 1024) for _, _, rss in workers)
        parts.append(f"{name}, master pid {master}, {len(workers)} worker(s) ({sizes})")
    return "; ".join(parts) + f"; {human_bytes(server.total_rss)} in all"


def database_text(st: HostStatus, database: DatabaseSettings | None, alias: str = "HOST") -> str:
    """The database Label Studio runs on as its env file says; the profile's when they differ."""
    database = database or DatabaseSettings()
    server = server_settings(st.env_file)
    if st.env_file is not None and server is None:
        return f"DJANGO_DB={server_engine(st.env_file)} (not managed by this toolkit)"
    if server is not None and not same_database(server, database):
        size = f", {human_bytes(st.db_size)}" if not server.postgresql and st.db_size is not None else ""
        move = (f"fab -H {alias} migrate-db --to {database.engine}" if server.engine != database.engine
                else "restore-server onto a host with the new settings")
        return f"{server.describe()}{size}; the profile says {database.describe()} (to move the data: {move})"
    if not database.postgresql:
        return f"SQLite, {human_bytes(st.db_size)}" if st.db_size is not None else "SQLite, not created yet"
    ready = st.postgres_ready or ""
    if "accepting connections" in ready:
        version = f" {st.postgres_version}" if st.postgres_version else ""
        login = "" if st.postgres_version else " (the stored password does not log in)"
        return f"{database.describe()}, answers (PostgreSQL{version}){login}"
    return f"{database.describe()}, does not answer ({ready or 'pg_isready missing'})"


# `fab status --json`: these keys, always (documented in the README); values null where they do not apply.
STATUS_KEYS = ("host", "os", "sudo", "provisioned", "serving", "health", "label_studio_version", "releases",
               "service", "app_server", "nginx", "https", "database", "db_size_bytes", "last_backup",
               "newer_release", "offsite", "offsite_files", "restore_drill", "exit_code", "problem")


def status_record(alias: str, sudo_mode: str, st: HostStatus, rows: list[tuple[str, str]], tls_mode: str,
                  last_backup: str | None, failure: Exception | None) -> dict:
    """What status shows, as `status --json` prints it."""
    shown = dict(rows)
    provisioned = st.provisioned
    return {
        "host": alias, "os": st.os, "sudo": sudo_mode, "provisioned": provisioned,
        "serving": bool(provisioned and st.healthy),
        "health": shown.get(health_row(tls_mode)) if provisioned else None,
        "label_studio_version": st.label_studio_version if provisioned else None,
        "releases": sorted(st.releases, key=_version_key, reverse=True) if provisioned else [],
        "service": shown.get("service"), "app_server": shown.get("app server"), "nginx": shown.get("nginx"),
        "https": shown.get("https"), "database": shown.get("database"),
        "db_size_bytes": st.db_size if provisioned else None, "last_backup": last_backup,
        "newer_release": shown.get("newer release"), "offsite": shown.get("offsite"),
        "offsite_files": shown.get("offsite files"), "restore_drill": shown.get("restore drill"),
        "exit_code": getattr(failure, "exit_code", 0), "problem": str(failure) if failure else None,
    }


@task(help={"config": CONFIG_HELP,
            "check-updates": "also ask the package index for the newest Label Studio release (an outbound call)",
            "json": "print one JSON object instead of the table (its keys: the README's 'Errors, exit codes and machine-readable output')"})
@task_edge
def status(c, config=None, check_updates=False, json=False):
    """Show the server: OS, sudo, disk and, once provisioned, service, nginx, health, version, DB size."""
    profile, host = open_host(c, config)
    sudo_mode = host.check_sudo()
    st = facts.host_status(host, profile)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    last = catalog.newest_complete(profile.backups_dir())
    described = (f"{last.id} ({human_bytes(last.manifest.total_size)}{'' if last.verified else ', ' + last.state})"
                 if last else None)
    rows = status_rows(host.alias, sudo_mode, st, service_manager(profile), described, profile.tls.mode,
                       profile.database)
    if check_updates:
        newest = next(iter(pypi_versions(profile)), None)
        installed = st.label_studio_version
        if newest and installed and Version(newest) > Version(installed):
            rows.append(("newer release", f"{newest} (fab -H {host.alias} upgrade --version {newest})"))
        else:
            rows.append(("newer release", f"none ({newest or 'no answer'} is the newest)"))
    replication_failed = None
    if st.provisioned and profile.offsite.enabled:
        offsite_rows, replication_failed = offsite_status(st, profile)
        rows += offsite_rows
    failure = None
    if st.provisioned and not st.healthy:
        failure = NotServing(f"Label Studio on {host.alias} is not serving: {dict(rows).get(health_row(profile.tls.mode))}",
                             hint=f"`fab -H {host.alias} logs` shows why; `fab -H {host.alias} start` starts it")
    elif replication_failed:
        failure = RemoteError(replication_failed,
                              hint=f"`fab -H {host.alias} offsite` shows the target; `fab -H {host.alias} provision` "
                                   "sets the replication up again")
    if json:
        record = status_record(host.alias, sudo_mode, st, rows, profile.tls.mode, last.id if last else None, failure)
        sys.stdout.write(json_module.dumps(record, indent=2) + "\n")
        if failure:
            raise failure
        return
    for key, value in rows:
        table.add_row(key, value)
    ui.out.print(table)
    served = tls.leaf_info(st.tls_cert) if st.provisioned and profile.tls.enabled else None
    warning = tls.expiry_warning(served) if served else None
    if warning:
        ui.warn(f"{warning}: renew it (acme: `sudo certbot renew` on the server; files: a new pair, then provision)")
    warning = systems.support_warning(st.os_id, st.os_version)
    if warning:
        ui.warn(warning)
    if failure:
        raise failure


@task(help={"config": CONFIG_HELP, "lines": "how many lines to show (default 50)",
            "follow": "keep printing new lines until Ctrl-C"})
@task_edge
def logs(c, config=None, lines=50, follow=False):
    """Show Label Studio's log (journald, or the screen log in screen mode)."""
    profile, host = open_host(c, config)
    host.run(service_manager(profile).logs(int(lines), follow=follow), sudo=True, stream=True,
             what="reading the log")


def _service_action(c, config, verb: str) -> None:
    profile, host = open_host(c, config)
    st = facts.host_status(host, profile)
    if not st.provisioned:
        raise RemoteError(f"Label Studio is not provisioned on {host.alias}", hint=f"run: fab -H {host.alias} provision")
    manager = service_manager(profile)
    running = manager.is_running(st)
    name = profile.service.name
    if verb != "stop" and st.neighbours.port_taken_by_other:
        raise RemoteError(f"{st.neighbours.port_said}: Label Studio cannot listen there; nothing was changed",
                          hint="stop that process (fab status names any unmanaged Label Studio; adopt takes one over)")
    if verb == "start" and running:
        ui.step(False, f"{name} is already running")
        return
    if verb == "stop" and not running:
        ui.step(False, f"{name} is already stopped")
        return
    host.run(manager.command(verb), sudo=True, what=f"{verb} {name}")
    if verb != "stop":
        wait_for_health(host, profile, via_nginx=True)
    done = {"start": "started", "stop": "stopped", "restart": "restarted"}[verb]
    ui.step(True, f"{done} {name}" + ("" if verb == "stop" else f"; {profile.url} answers /health"))


@task(help={"config": CONFIG_HELP})
@task_edge
def start(c, config=None):
    """Start Label Studio and wait until it answers /health through nginx."""
    _service_action(c, config, "start")


@task(help={"config": CONFIG_HELP})
@task_edge
def stop(c, config=None):
    """Stop Label Studio (nginx stays up and answers 502 until it is started again)."""
    _service_action(c, config, "stop")


@task(help={"config": CONFIG_HELP})
@task_edge
def restart(c, config=None):
    """Restart Label Studio and wait until it answers /health through nginx."""
    _service_action(c, config, "restart")
