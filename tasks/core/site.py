"""A site: one Label Studio served by several app VMs behind one load balancer (HAProxy from Debian),
on engines that already scale: PostgreSQL for the data, an S3-compatible bucket for the uploads.

The site file names the hosts (ssh_config aliases) and the one profile every app VM runs; it is read and
checked here before any connection. Also here, pure: the balancer's HAProxy configuration and what its
runtime API answers."""

from __future__ import annotations

import csv
import io
import ipaddress
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

from tasks.core import render
from tasks.core.errors import ProfileError, RemoteError, UsageError
from tasks.core.profile import (
    CONFIGS_DIR,
    Profile,
    build_settings,
    load_profile,
    read_mapping,
    read_profile_text,
    where,
)

SITE_ENV = "LSVM_SITE"
DEFAULT_SITE = CONFIGS_DIR / "site.yaml"
BACKEND = "app_vms"
_ALIAS = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,62})$")
_ADDRESS = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.:-]{0,252})$")
# Down after FALL failed checks in a row, back after RISE good ones (HAProxy's own counting).
FALL, RISE = 2, 2


def _alias(value: str) -> str | None:
    return None if _ALIAS.match(value) else "must be an ssh_config alias (letters, digits, '-' and '.')"


def _ip_address(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address (where the app VMs see the balancer's requests come from)"
    return None


def source_words(value: str) -> str | None:
    """An address or network as ufw takes it ("10.0.0.5", "10.0.0.0/24"), None when it is neither."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None
    single = network.num_addresses == 1
    return str(network.network_address) if single else str(network)


def _interval(value: int) -> str | None:
    return None if 200 <= value <= 60_000 else "must be between 200 and 60000 (milliseconds)"


@dataclass(frozen=True)
class BalancerSettings:
    host: str = field(default="", metadata={"check": _alias, "coerce": None})
    tls: Literal["off", "self-signed", "files"] = field(
        default="off", metadata={"check": None, "coerce": lambda v: "off" if v is False else v})
    certificate: str | None = field(default=None, metadata={"check": None, "coerce": None})
    key: str | None = field(default=None, metadata={"check": None, "coerce": None})
    check_interval_ms: int = field(default=1000, metadata={"check": _interval, "coerce": None})
    # Where the app VMs see the balancer's requests come from; None: found on the balancer (the source
    # address of its route to each app VM). Their firewall lets it alone reach Label Studio.
    from_address: str | None = field(default=None, metadata={"check": _ip_address, "coerce": None})


@dataclass(frozen=True)
class AppVM:
    host: str                    # ssh_config alias
    address: str | None = None   # where the balancer reaches it; None = the alias's HostName

    @property
    def server(self) -> str:
        """Its name in HAProxy's configuration and runtime API."""
        return self.host


@dataclass(frozen=True)
class DatabaseRole:
    host: str                    # ssh_config alias of the VM site-provision sets PostgreSQL up on


@dataclass(frozen=True)
class Site:
    profile: str
    apps: tuple[AppVM, ...]
    balancer: BalancerSettings
    source: str = "<site>"
    also_from: tuple[str, ...] = ()     # app_firewall.also_from: who else may reach the app VMs' HTTP
    database: DatabaseRole | None = None  # None: PostgreSQL is yours (database.host in the profile)

    @property
    def profile_path(self) -> Path:
        path = Path(self.profile).expanduser()
        return path if path.is_absolute() else Path(self.source).parent / path

    @property
    def hosts(self) -> tuple[str, ...]:
        return (*([self.database.host] if self.database else []), self.balancer.host, *(app.host for app in self.apps))

    def app(self, host: str) -> AppVM:
        for app in self.apps:
            if app.host == host:
                return app
        raise ProfileError(f"{self.source}: {host} is not an app VM of this site (its app VMs: "
                           f"{', '.join(a.host for a in self.apps)})")


def site_path(explicit: str | None, env: typing.Mapping[str, str] | None = None) -> Path:
    """--site, else $LSVM_SITE, else configs/site.yaml."""
    env = os.environ if env is None else env
    chosen = explicit or env.get(SITE_ENV)
    path = Path(chosen).expanduser() if chosen else DEFAULT_SITE
    if not path.is_file():
        origin = "--site" if explicit else f"${SITE_ENV}" if chosen else "the default"
        raise ProfileError(f"{path}: no such site file (given by {origin})",
                           hint="copy configs/site.example.yaml and name your hosts in it (docs/site.md)")
    return path


def parse_site(text: str, *, source: str = "<site>") -> Site:
    data, lines = read_mapping(text, source, "site file")
    if data is None:
        raise ProfileError(f"{source}: the site file is empty: it names a profile, app VMs and a balancer")
    known = ("profile", "database", "apps", "balancer", "app_firewall")
    for key in data:
        if key not in known:
            raise ProfileError(f"{where(source, lines, (str(key),))}: unknown key '{key}' (known here: {', '.join(known)})")
    profile = data.get("profile")
    if not isinstance(profile, str) or not profile.strip():
        raise ProfileError(f"{where(source, lines, ('profile',))}: 'profile' must name the profile file every app VM runs")
    balancer = data.get("balancer")
    if not isinstance(balancer, dict) or not balancer.get("host"):
        raise ProfileError(f"{where(source, lines, ('balancer',))}: 'balancer.host' must name the load balancer VM")
    settings = build_settings(BalancerSettings, balancer, ("balancer",), source, lines)
    apps = _apps(data.get("apps"), where(source, lines, ("apps",)))
    also_from = _also_from(data.get("app_firewall"), where(source, lines, ("app_firewall",)))
    database = _database(data.get("database"), where(source, lines, ("database",)))
    site = Site(profile, apps, settings, source, also_from, database)
    problem = _site_problem(site)
    if problem:
        raise ProfileError(f"{source}: {problem}")
    return site


def _apps(value, at: str) -> tuple[AppVM, ...]:
    if not isinstance(value, list) or not value:
        raise ProfileError(f"{at}: 'apps' must list the app VMs (ssh_config aliases), at least one")
    apps = []
    for item in value:
        host, address = (item, None) if isinstance(item, str) else (
            (item.get("host"), item.get("address")) if isinstance(item, dict) and set(item) <= {"host", "address"}
            else (None, None))
        if not isinstance(host, str) or _alias(host):
            raise ProfileError(f"{at}: each app VM is an ssh_config alias, or host: and address: ({item!r} is not)")
        if address is not None and (not isinstance(address, str) or not _ADDRESS.match(address)):
            raise ProfileError(f"{at}: the address of {host} must be an IP address or a host name ({address!r} is not)")
        apps.append(AppVM(host, address))
    return tuple(apps)


def _database(value, at: str) -> DatabaseRole | None:
    """database: {host: alias}: the VM site-provision sets PostgreSQL up on (None: the profile's
    database.host is a server of yours)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"host"} or not isinstance(value["host"], str) or _alias(value["host"]):
        raise ProfileError(f"{at}: 'database' takes one key, host: the ssh_config alias of the PostgreSQL VM")
    return DatabaseRole(value["host"])


def _also_from(value, at: str) -> tuple[str, ...]:
    """app_firewall: {also_from: [addresses or networks]}: who may reach the app VMs' HTTP besides the
    balancer (an admin network; nobody by default)."""
    if value is None:
        return ()
    if not isinstance(value, dict) or set(value) - {"also_from"}:
        raise ProfileError(f"{at}: 'app_firewall' takes one key, also_from: a list of addresses or networks")
    listed = value.get("also_from") or []
    if not isinstance(listed, list):
        raise ProfileError(f"{at}: 'app_firewall.also_from' must be a list of addresses or networks")
    found = []
    for item in listed:
        words = source_words(item) if isinstance(item, str) else None
        if words is None:
            raise ProfileError(f"{at}: app_firewall.also_from: {item!r} is not an IP address or network (10.0.0.0/24)")
        found.append(words)
    return tuple(found)


def route_source(text: str, toward: str) -> str:
    """A host's answer to commands.probes.source_toward: one IP address, checked (it goes into firewall
    rules and pg_hba lines)."""
    answer = text.strip()
    if _ip_address(answer) is not None:
        raise RemoteError(f"no source address for the route to {toward} ({answer[:80]!r})",
                          hint=f"the host needs python3 and a route to {toward} (for the balancer, "
                               "balancer.from_address in the site file says it instead)")
    return str(ipaddress.ip_address(answer))


def _site_problem(site: Site) -> str | None:
    hosts = site.hosts
    if len(set(hosts)) != len(hosts):
        return "a host is named twice (the balancer and each app VM are VMs of their own)"
    b = site.balancer
    if b.tls == "files" and not (b.certificate and b.key):
        return "balancer.tls files needs balancer.certificate and balancer.key (files on this machine)"
    if b.tls != "files" and (b.certificate or b.key):
        return f"balancer.certificate and balancer.key are for balancer.tls files (it is {b.tls})"
    return None


def load_site(explicit: str | None = None) -> tuple[Site, Profile]:
    """The site file and its app profile, both checked, before any connection."""
    path = site_path(explicit)
    site = parse_site(read_profile_text(path), source=str(path))
    if not site.profile_path.is_file():
        raise ProfileError(f"{path}: profile {site.profile_path}: no such file")
    profile = load_profile(site.apps[0].host, str(site.profile_path))
    problem = profile_problem(site, profile)
    if problem:
        raise ProfileError(f"{site.profile_path}: {problem}", hint="docs/site.md says what a site's profile holds")
    return site, profile


def profile_problem(site: Site, profile: Profile) -> str | None:
    """What an app profile must say for several app VMs to serve one Label Studio."""
    db, media = profile.database, profile.media
    if not (db.postgresql and not db.local):
        return ("the app VMs of a site share one database: database.engine postgresql with database.host "
                "(a server of its own)")
    if not media.in_bucket:
        return "the app VMs of a site share the uploads: media.storage s3://bucket/prefix"
    if profile.offsite.enabled:
        return "offsite copies are kept per VM: turn offsite off in a site's profile (the database and bucket keep the data)"
    if profile.tls.enabled:
        return "TLS ends at the balancer (balancer.tls in the site file): the profile's tls.mode must be off"
    if site.database is not None and not (db.ca_file and db.effective_sslmode == "verify-full"):
        return ("with a database VM in the site file, database.ca_file names where site-provision keeps the "
                "certificate it makes there (the app VMs verify PostgreSQL with it: sslmode verify-full)")
    if not profile.public_url:
        return "public_url must be the address users open: the balancer's (https://... with balancer.tls on)"
    https = profile.public_url.startswith("https://")
    if https != (site.balancer.tls != "off"):
        return (f"public_url {profile.public_url} and balancer.tls {site.balancer.tls} disagree: "
                "https:// exactly when the balancer has TLS")
    return None


def app_profile(profile: Profile, alias: str) -> Profile:
    """The site's profile as one app VM runs it (its own alias in messages and backups)."""
    return load_profile(alias, profile.source)


# ------------------------------------------------------------------------------------------------
# The balancer's files


@dataclass(frozen=True)
class BalancerPaths:
    config: PurePosixPath = PurePosixPath("/etc/haproxy/haproxy.cfg")
    pem: PurePosixPath = PurePosixPath("/etc/haproxy/certs/label-studio.pem")
    socket: PurePosixPath = PurePosixPath("/run/haproxy/lsvm-admin.sock")


PATHS = BalancerPaths()
MARKER = "# Managed by labelstudio-vm"


def member_marker(the_site: Site, app_host: str) -> str:
    """What site-provision leaves on each app VM: the site it serves in. One-VM tasks that would change
    the site's data or release (restore-server, upgrade ...) read it and refuse."""
    return (f"{MARKER}: {app_host} is an app VM of a site; its data and release are the site's (docs/site.md).\n"
            f"balancer={the_site.balancer.host}\n"
            f"apps={' '.join(app.host for app in the_site.apps)}\n")


def member_of(text: str | None) -> str | None:
    """The balancer a site marker names ("?" when it names none); None when the VM is no site's."""
    if not text or not text.startswith(MARKER):
        return None
    named = [line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith("balancer=")]
    return (named[0] if named else "") or "?"


# The one-VM tasks an app VM of a site refuses, and what to run instead.
NOT_ON_AN_APP_VM = {
    "provision": "`fab site-provision`: it drains each app VM before it changes it",
    "restore-server": "`fab site-restore --snapshot ID` (or OTHERHOST/ID): every app VM out, the data replaced once",
    "push-local-db": "`fab site-restore --snapshot OTHERHOST/ID`: a site takes a server's snapshot",
    "upgrade": "`fab site-upgrade`: the migrations once, every app VM on the new release",
    "rollback": "`fab site-restore` of the pre-upgrade backup (docs/site.md: a site-rollback is not built yet)",
    "migrate-db": "nothing: a site runs on PostgreSQL by design; `fab site-restore` moves data onto it",
    "migrate-media": "nothing: a site keeps its uploads in its bucket by design",
}


def refuse_member(alias: str, marker: str | None, task: str) -> None:
    """A one-VM task that would change what every app VM of a site shares, or change one undrained."""
    balancer = member_of(marker)
    if balancer is not None:
        raise UsageError(f"{alias} is an app VM of a site (balancer {balancer}): `{task}` on it alone would act "
                         "behind the balancer's back on what every app VM shares; nothing was changed",
                         hint=f"instead: {NOT_ON_AN_APP_VM[task]}")


def public_host(profile: Profile) -> str:
    """The Host header users send (name[:port] of the public URL): what the health checks send too."""
    return urlsplit(profile.url).netloc


def edge_name(profile: Profile) -> str:
    """The name the balancer's certificate is for (DNS name or IP address of the public URL)."""
    return urlsplit(profile.url).hostname or ""


def balancer_config(site: Site, profile: Profile, addresses: dict[str, str]) -> str:
    """HAProxy's configuration: TLS at the edge (when on), an active /health check of each app VM, a
    maintenance answer (JSON for API clients) when none is up."""
    servers = [(app.server, addresses[app.host], profile.http_port) for app in site.apps]
    return render.render("haproxy/haproxy.cfg.j2", site=site, servers=servers, backend=BACKEND, paths=PATHS,
                         tls=site.balancer.tls != "off", hsts=profile.tls.hsts, host_header=public_host(profile),
                         timeout=profile.nginx.proxy_timeout, interval=site.balancer.check_interval_ms,
                         fall=FALL, rise=RISE, origin=profile.origin)


# ------------------------------------------------------------------------------------------------
# What HAProxy's runtime API answers


@dataclass(frozen=True)
class ServerState:
    status: str          # UP, DOWN, DRAIN, MAINT, "UP 1/2" (rising), "DOWN 1/2" (falling), no check: "no check"
    sessions: int        # requests on it now (scur)
    check: str           # the last check's result (L7OK, L4TOUT, ...)
    addr: str = ""       # where HAProxy sends its requests: "ADDRESS:PORT"

    @property
    def up(self) -> bool:
        return self.status == "UP"

    def elsewhere_than(self, address: str) -> bool:
        """HAProxy sends this server's requests to another address than `address` (the VM's address in the
        site file: it changed since the balancer's configuration was written)."""
        return bool(self.addr) and self.addr.rsplit(":", 1)[0].strip("[]") != address


def servers_from_stat(text: str, backend: str = BACKEND) -> dict[str, ServerState]:
    """`show stat` (CSV, header first) -> each server of `backend`."""
    body = text.lstrip()
    if not body.startswith("# "):
        return {}
    rows = csv.DictReader(io.StringIO(body[2:]))
    found = {}
    for row in rows:
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND", None):
            continue
        sessions = row.get("scur") or "0"
        found[row["svname"]] = ServerState(row.get("status", ""), int(sessions) if sessions.isdigit() else 0,
                                           row.get("check_status", ""), row.get("addr") or "")
    return found
