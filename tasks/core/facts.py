"""Remote reads: run a probe, parse it. Nothing here changes the server."""

from __future__ import annotations

from dataclasses import dataclass

from . import commands, parse
from .connect import Host
from .profile import Profile


@dataclass(frozen=True)
class UnitState:
    load: str = ""
    active: str = ""
    sub: str = ""
    enabled: str = ""

    @classmethod
    def from_show(cls, props: dict[str, str]) -> "UnitState":
        return cls(props.get("LoadState", ""), props.get("ActiveState", ""),
                   props.get("SubState", ""), props.get("UnitFileState", ""))

    @property
    def exists(self) -> bool:
        return self.load not in ("", "not-found")

    @property
    def running(self) -> bool:
        return self.active == "active"

    def describe(self) -> str:
        if not self.exists:
            return "not installed"
        text = f"{self.active} ({self.sub})" if self.sub else self.active
        return f"{text}, {self.enabled} at boot" if self.enabled else text


@dataclass(frozen=True)
class HostStatus:
    os: str
    kernel: str
    python3: str | None
    systemd: bool
    disk_free: int | None
    disk_mount: str
    installed: bool
    label_studio_version: str | None
    db_size: int | None
    unit_file: bool
    nginx_site: bool
    screen_session: bool
    service: UnitState
    nginx: UnitState
    health_via_nginx: str | None
    health_direct: str | None

    @property
    def provisioned(self) -> bool:
        return self.installed or self.unit_file or self.nginx_site

    @property
    def healthy(self) -> bool:
        return parse.health_is_up(self.health_via_nginx)


def host_status(host: Host, profile: Profile) -> HostStatus:
    output = host.run(commands.status_probe(profile), sudo=True, what="status probe")
    return status_from_probe(output.stdout)


def status_from_probe(text: str) -> HostStatus:
    s = parse.sections(text)
    h, i = s.get("host", {}), s.get("install", {})
    disk_free, mount = parse.df_avail(h.get("disk", ""))
    health = s.get("health", {})
    return HostStatus(
        os=h.get("os", "unknown"),
        kernel=h.get("kernel", ""),
        python3=h.get("python3") or None,
        systemd=h.get("systemd") == "yes",
        disk_free=disk_free,
        disk_mount=mount,
        installed=i.get("installed") == "yes",
        label_studio_version=parse.dist_info_version(i.get("dist", "")),
        db_size=parse.int_or_none(i.get("db_size")),
        unit_file=i.get("unit_file") == "yes",
        nginx_site=i.get("nginx_site") == "yes",
        screen_session=i.get("screen") == "yes",
        service=UnitState.from_show(s.get("service", {})),
        nginx=UnitState.from_show(s.get("nginx", {})),
        health_via_nginx=health.get("via_nginx"),
        health_direct=health.get("direct"),
    )
