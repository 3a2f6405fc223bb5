"""Service tasks: status (and, with provisioning, logs/start/stop/restart)."""

from __future__ import annotations

from fabric import task
from rich.table import Table

from .core import facts, parse, ui
from .core.edge import open_host, task_edge
from .core.facts import HostStatus

CONFIG_HELP = "profile YAML to use instead of configs/<host>.yaml (or set LSVM_CONFIG)"


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def status_rows(alias: str, sudo_mode: str, st: HostStatus, service_manager: str) -> list[tuple[str, str]]:
    rows = [
        ("host", alias),
        ("os", f"{st.os} (kernel {st.kernel})" if st.kernel else st.os),
        ("sudo", sudo_mode),
        ("systemd", "yes" if st.systemd else "no"),
        ("python3", st.python3 or "missing"),
        ("free disk", f"{human_bytes(st.disk_free)} on {st.disk_mount}" if st.disk_mount else "-"),
    ]
    if not st.provisioned:
        rows.append(("label studio", f"not provisioned (run: fab -H {alias} provision)"))
        return rows
    if service_manager == "screen":
        service = "running in screen" if st.screen_session else "no screen session"
    else:
        service = st.service.describe()
    code, body = parse.health(st.health_via_nginx)
    health = "UP" if st.healthy else (f"HTTP {code} {body[:60]}" if code else (body or "no answer"))
    rows += [
        ("label studio", st.label_studio_version or "not installed"),
        ("service", service),
        ("nginx", st.nginx.describe()),
        ("health (via nginx)", health),
        ("database", human_bytes(st.db_size) if st.db_size is not None else "not created yet"),
    ]
    return rows


@task(help={"config": CONFIG_HELP})
@task_edge
def status(c, config=None):
    """Show the server: OS, sudo, disk and, once provisioned, service, nginx, health, version, DB size."""
    profile, host = open_host(c, config)
    sudo_mode = host.sudo_mode
    st = facts.host_status(host, profile)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in status_rows(host.alias, sudo_mode, st, profile.service.manager):
        table.add_row(key, value)
    ui.out.print(table)
