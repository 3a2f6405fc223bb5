"""Remote reads: run a probe, parse it. Nothing here changes the server."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass

from tasks.core import database, parse
from tasks.core.commands import dbcheck, probes
from tasks.core.commands.service import UnitState
from tasks.core.connect import Host
from tasks.core.errors import RemoteError
from tasks.core.profile import Profile


@dataclass(frozen=True)
class Unmanaged:
    """A Label Studio this toolkit does not manage (running, or its data at rest in a user's home)."""

    running: bool
    pid: int | None
    user: str
    uid: int
    home: str
    command: tuple[str, ...]
    venv: str | None
    version: str | None
    data_dir: str
    data_dir_from: str
    database: str
    engine: str
    listen: tuple[str, ...]
    screen_name: str | None
    database_size: int | None
    env_file: bool
    media_files: int
    media_bytes: int

    @classmethod
    def from_json(cls, item: dict) -> "Unmanaged":
        screen = item.get("screen") or {}
        return cls(
            running=bool(item.get("running")), pid=_int(item.get("pid")), user=str(item.get("user", "")),
            uid=_int(item.get("uid")) or 0,
            home=str(item.get("home", "")), command=tuple(item.get("command") or ()),
            venv=item.get("venv"), version=item.get("version"), data_dir=str(item.get("data_dir", "")),
            data_dir_from=str(item.get("data_dir_from", "")), database=str(item.get("database", "")),
            engine=str(item.get("engine", "sqlite")), listen=tuple(item.get("listen") or ()),
            screen_name=screen.get("name") if screen else None,
            database_size=item.get("database_size"), env_file=bool(item.get("env_file")),
            media_files=int(item.get("media_files") or 0), media_bytes=int(item.get("media_bytes") or 0),
        )

    @property
    def in_screen(self) -> bool:
        return self.screen_name is not None

    @property
    def holds_data(self) -> bool:
        return self.database_size is not None

    @property
    def reachable_from_outside(self) -> bool:
        return any(not parse.is_loopback(address) for address in self.listen)

    def short_path(self, path: str) -> str:
        home = self.home.rstrip("/")
        return f"~{self.user}{path[len(home):]}" if home and path.startswith(home + "/") else path

    def describe(self) -> str:
        version = f" {self.version}" if self.version else ""
        if not self.running:
            where = "not running"
        elif self.in_screen:
            where = f"in screen `{self.screen_name}`"
        else:
            where = f"as process {self.pid}"
        words = [f"unmanaged Label Studio{version} {where} as {self.user}",
                 f"data {self.short_path(self.data_dir)}"]
        if self.listen:
            outside = " (reachable from outside)" if self.reachable_from_outside else ""
            words.append(f"listening on {', '.join(self.listen)}{outside}")
        return ", ".join(words)


@dataclass(frozen=True)
class Neighbours:
    """Other Label Studio instances on the host and who holds our port (read by tasks/core/onserver/instances.py)."""

    unmanaged: tuple[Unmanaged, ...] = ()
    port_state: str = "free"     # free | ours | ours-elsewhere | other
    port_said: str = ""
    port_pid: int | None = None
    hand_written_sites: tuple[str, ...] = ()

    @classmethod
    def from_probe(cls, lines: list[str]) -> "Neighbours":
        text = "\n".join(lines).strip()
        if not text:
            return cls()
        data = parse.last_json(text)
        if data is None:   # talk but no answer: never read as "nobody else here"
            raise RemoteError(f"reading who runs Label Studio on the server gave no answer: "
                              f"{parse.printable(text.splitlines()[-1])}")
        port = data.get("port") or {}
        return cls(unmanaged=tuple(Unmanaged.from_json(i) for i in data.get("instances", [])),
                   port_state=str(port.get("state", "free")), port_said=str(port.get("said", "")),
                   port_pid=_int(port.get("pid")),
                   hand_written_sites=tuple(str(site["path"]) for site in data.get("sites", [])))

    @property
    def port_taken_by_other(self) -> bool:
        return self.port_state == "other"

    def port_taken_by_stranger(self) -> bool:
        """The port is held by something that is neither ours nor an unmanaged Label Studio found here."""
        return self.port_taken_by_other and not any(u.pid == self.port_pid for u in self.unmanaged if u.running)


def _int(value) -> int | None:
    """A number from the probe's JSON, or None: nothing else is ever taken from it as a number."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class HostStatus:
    os: str
    os_id: str
    os_version: str
    kernel: str
    python3: str | None
    systemd: bool
    disk_free: int | None
    disk_mount: str
    installed: bool
    label_studio_version: str | None
    current_release: str | None       # releases/<v> -> v, the legacy venv -> "venv"
    previous_release: str | None
    releases: tuple[str, ...]
    db_size: int | None
    unit_file: bool
    nginx_site: bool
    screen_running: bool
    service: UnitState
    nginx: UnitState
    health_via_nginx: str | None
    neighbours: Neighbours = Neighbours()
    tls_cert: str | None = None       # PEM of the certificate nginx is set to serve (TLS on), None when missing
    postgres_ready: str | None = None    # pg_isready's answer (engine postgresql), None otherwise
    postgres_version: str = ""           # the server's version, through the Label Studio role's login
    env_file: str | None = None          # the env file Label Studio reads (which database), None when missing
    database_check: str | None = None    # the release's read of every table: None when it read them, else why
    app_server: parse.AppServer = parse.AppServer()
    app_server_version: str | None = None
    # offsite on: commands.probes.offsite_report's sections (tasks.core.replication.replication_state reads them)
    offsite: dict = dataclasses.field(default_factory=dict)

    @property
    def provisioned(self) -> bool:
        return self.installed or self.unit_file or self.nginx_site

    @property
    def healthy(self) -> bool:
        """Our instance answers /health UP and its release reads every table of its database."""
        return parse.health_is_up(self.health_via_nginx) and self.database_check is None


def host_status(host: Host, profile: Profile) -> HostStatus:
    output = host.run(probes.status_probe(profile), sudo=True, what="status probe")
    st = status_from_probe(output.stdout)
    # The probe's read of every table ran with the profile's database settings. When the server's env file
    # names another database (the profile changed, migrate-db not run yet), read the one Label Studio reads.
    server = database.server_settings(st.env_file)
    if parse.health_is_up(st.health_via_nginx) and server is not None and not database.same_database(server, profile.database):
        check = host.run(dbcheck.read_every_table(dataclasses.replace(profile, database=server)), sudo=True,
                         check=False, what="the release's read of its database")
        st = dataclasses.replace(st, database_check=parse.database_problem(check.stdout, check.stderr))
    return st


def status_from_probe(text: str) -> HostStatus:
    s = parse.sections(text)
    h, i = s.get("host", {}), s.get("install", {})
    disk_free, mount = parse.df_avail(h.get("disk", ""))
    health = s.get("health", {})
    return HostStatus(
        os=h.get("os", "unknown"),
        os_id=h.get("os_id", ""),
        os_version=h.get("os_version", ""),
        kernel=h.get("kernel", ""),
        python3=h.get("python3") or None,
        systemd=h.get("systemd") == "yes",
        disk_free=disk_free,
        disk_mount=mount,
        installed=i.get("installed") == "yes",
        label_studio_version=parse.dist_info_version(i.get("dist", "")),
        current_release=parse.release_of(i.get("current", "")),
        previous_release=parse.release_of(i.get("previous", "")),
        releases=parse.release_names(i.get("releases", "")),
        db_size=parse.int_or_none(i.get("db_size")),
        unit_file=i.get("unit_file") == "yes",
        nginx_site=i.get("nginx_site") == "yes",
        screen_running=i.get("screen") == "yes",
        service=UnitState.from_show(s.get("service", {})),
        nginx=UnitState.from_show(s.get("nginx", {})),
        health_via_nginx=health.get("via_nginx"),
        app_server=parse.AppServer.from_lines(parse.blocks(text).get("app_server", [])),
        app_server_version=parse.dist_info_version(i.get("app_server", ""), "gunicorn"),
        neighbours=Neighbours.from_probe(parse.blocks(text).get("instances", [])),
        tls_cert=decoded(s.get("tls", {}).get("cert", "-")),
        postgres_ready=s["postgres"].get("ready") if "postgres" in s else None,
        postgres_version=s.get("postgres", {}).get("version", ""),
        env_file=decoded(i.get("env_file", "-")),
        database_check=parse.database_problem(s.get("database", {}).get("check", "")),
        offsite={key: s[key] for key in ("offsite_unit", "drill_timer", "files_timer", "files_unit", "watch_timer",
                                         "offsite_report") if key in s},
    )


@dataclass(frozen=True)
class TlsFacts:
    """The server's side of HTTPS: nginx's version, the certificate and key of the profile's TLS mode."""

    nginx_version: str = ""          # "" when nginx is not installed
    cert_pem: str | None = None      # full chain at the mode's path, None when missing
    key_sha256: str = ""
    key_meta: str = ""               # owner:group:mode of the private key, "" when missing
    renewal: str | None = None       # certbot's renewal file of our lineage
    resolvers: tuple[str, ...] = ()
    certbot_timer: UnitState = UnitState()
    assumed: bool = False            # plan mode's "as if the certificate were there" (never read from a server)


@dataclass(frozen=True)
class PostgresFacts:
    """The PostgreSQL side (engine postgresql only): the local server's settings, role, database, and
    whether the stored password logs in."""

    version: str = ""            # of the local cluster "main", "" when not installed (or external)
    conf: str | None = None      # our conf.d drop-in, None when missing
    hba: bool = False            # our pg_hba lines are there
    active: bool = False
    role: bool = False
    database: bool = False
    secret_meta: str = ""        # owner:group:mode of the secret file, "" when missing
    login: bool = False          # the stored password logs in (psql as the Label Studio role)

    @classmethod
    def from_block(cls, block: list[str]) -> "PostgresFacts":
        v = parse.key_values(block)
        return cls(version=v.get("version", ""), conf=decoded(v.get("conf") or "-"), hba=v.get("hba") == "yes",
                   active=v.get("active") == "active", role=v.get("role") == "1", database=v.get("db") == "1",
                   secret_meta=v.get("secret_meta", ""), login=v.get("login") == "yes")


@dataclass(frozen=True)
class OffsiteFacts:
    """Offsite replication as the server has it (read whether the profile wants it or not)."""

    user: bool = False
    groups: tuple[str, ...] = ()
    state_meta: str = ""         # owner:group:mode, "" when missing
    database_meta: str = ""
    credentials_meta: str = ""
    credentials_sha256: str = ""
    target_meta: str = ""        # a path target's
    litestream: str = ""         # `litestream version` of the installed venv ("0.5.17"), "" when missing
    restic_password_meta: str = ""
    restic_password_sha256: str = ""
    sftp_key_meta: str = ""
    sftp_key_sha256: str = ""
    restic_repository: bool = False   # restic's repository answers on the target
    notify_meta: str = ""
    notify_sha256: str = ""
    apprise: str = ""            # `apprise --version`'s first line ("Apprise v2.2.0"), "" when missing
    boto3: str = ""              # boto3.__version__ in the venv ("1.44.5"), "" when missing
    unit: UnitState = UnitState()
    drill_timer: UnitState = UnitState()
    files_timer: UnitState = UnitState()
    files_unit: UnitState = UnitState()
    watch_timer: UnitState = UnitState()

    @classmethod
    def from_blocks(cls, b: dict[str, list[str]]) -> "OffsiteFacts":
        v = parse.key_values(b.get("offsite", []))
        return cls(user=v.get("user") == "yes", groups=tuple(v.get("groups", "").split()),
                   state_meta=v.get("state_meta", ""), database_meta=v.get("database_meta", ""),
                   credentials_meta=v.get("credentials_meta", ""),
                   credentials_sha256=v.get("credentials_sha256", ""), target_meta=v.get("target_meta", ""),
                   litestream=v.get("litestream", "").strip(),
                   restic_password_meta=v.get("restic_password_meta", ""),
                   restic_password_sha256=v.get("restic_password_sha256", ""),
                   sftp_key_meta=v.get("sftp_key_meta", ""), sftp_key_sha256=v.get("sftp_key_sha256", ""),
                   restic_repository=v.get("restic_repository") == "yes",
                   notify_meta=v.get("notify_meta", ""), notify_sha256=v.get("notify_sha256", ""),
                   apprise=v.get("apprise", "").strip(), boto3=v.get("boto3", "").strip(),
                   unit=UnitState.from_show(parse.key_values(b.get("offsite_unit", []))),
                   drill_timer=UnitState.from_show(parse.key_values(b.get("drill_timer", []))),
                   files_timer=UnitState.from_show(parse.key_values(b.get("files_timer", []))),
                   files_unit=UnitState.from_show(parse.key_values(b.get("files_unit", []))),
                   watch_timer=UnitState.from_show(parse.key_values(b.get("watch_timer", []))))


@dataclass(frozen=True)
class MediaFacts:
    """Uploads as the server has them: the bucket's keys (as a hash) and whether there are local files."""

    credentials_meta: str = ""
    credentials_sha256: str = ""
    local_files: bool = False

    @classmethod
    def from_block(cls, block: list[str]) -> "MediaFacts":
        v = parse.key_values(block)
        return cls(credentials_meta=v.get("credentials_meta", ""), credentials_sha256=v.get("credentials_sha256", ""),
                   local_files=v.get("local_files") == "yes")


@dataclass(frozen=True)
class ProvisionFacts:
    """What provision compares against: read in one round trip, parsed here, never changed here."""

    installed_packages: frozenset[str]
    os_id: str
    os_version: str
    python3: str | None
    systemd: bool
    ipv6: bool
    user_exists: bool
    app_dir_meta: str      # owner:group:mode, "" when missing
    data_dir_meta: str
    env_file_meta: str
    secret_key: str        # commands.secret_key: ok, unreadable (Label Studio reads it as empty) or absent
    secret_key_sha256: str  # of the key as Label Studio reads it ("" when it could not be read)
    label_studio_version: str | None   # of the current release
    app_server_version: str | None     # gunicorn in the current release
    previous_app_server_version: str | None   # and in the previous one (what rollback starts)
    legacy_app_server_version: str | None     # and in the single venv of earlier toolkit versions
    site_packages: str | None          # of the current release (or the one provision builds), relative to it
    redis_answers: bool                # something accepts connections on localhost:6379
    redis_enabled: str                 # the current release's settings: "no" (REDIS_ENABLED = False), "maybe", "" (none)
    current_release: str | None        # releases/<v> -> v, the legacy venv -> "venv", no link -> None
    previous_release: str | None
    releases: tuple[str, ...]          # complete release venvs
    legacy_version: str | None         # in the single venv of earlier toolkit versions
    venv_exists: bool
    db_exists: bool
    db_users: int | None
    admin_exists: bool
    site_enabled_target: str
    default_site_enabled: bool
    screen_running: bool
    files: dict  # managed file key (probes.managed_files) -> its text on the server, None when missing
    service: UnitState
    nginx: UnitState
    sshd_ports: tuple[int, ...]
    ufw_active: bool
    ufw_rules: tuple[parse.UfwRule, ...]
    neighbours: Neighbours = Neighbours()
    login_port: int | None = None     # the port this SSH session reached on the server
    client_ip: str | None = None      # where this SSH session comes from, as the server sees it
    tls: TlsFacts = TlsFacts()
    postgres: PostgresFacts = PostgresFacts()
    offsite: OffsiteFacts = OffsiteFacts()
    media: MediaFacts = MediaFacts()


def provision_facts_from_probe(text: str) -> ProvisionFacts:
    b = parse.blocks(text)
    h = parse.key_values(b.get("host", []))
    db = parse.key_values(b.get("db", []))
    if "postgres" in b:  # engine postgresql: users and admin live there
        db = parse.key_values(b["postgres"])
    return ProvisionFacts(
        installed_packages=frozenset(parse.dpkg_installed(b.get("packages", []))),
        os_id=h.get("os_id", ""),
        os_version=h.get("os_version", ""),
        python3=h.get("python3") or None,
        systemd=h.get("systemd") == "yes",
        ipv6=h.get("ipv6") == "yes",
        user_exists=h.get("user") == "yes",
        app_dir_meta=h.get("app_dir", ""),
        data_dir_meta=h.get("data_dir", ""),
        env_file_meta=h.get("env_file_meta", ""),
        secret_key=h.get("secret_key") or "absent",
        secret_key_sha256=h.get("secret_key_sha256", ""),
        label_studio_version=parse.dist_info_version(h.get("dist", "")),
        app_server_version=parse.dist_info_version(h.get("app_server", ""), "gunicorn"),
        previous_app_server_version=parse.dist_info_version(h.get("previous_app_server", ""), "gunicorn"),
        legacy_app_server_version=parse.dist_info_version(h.get("legacy_app_server", ""), "gunicorn"),
        site_packages=parse.site_packages(h.get("dist", "") or h.get("legacy_dist", ""), h.get("python3")),
        redis_answers=h.get("redis") == "yes",
        redis_enabled=h.get("redis_enabled", ""),
        current_release=parse.release_of(h.get("current", "")),
        previous_release=parse.release_of(h.get("previous", "")),
        releases=parse.release_names(h.get("releases", "")),
        legacy_version=parse.dist_info_version(h.get("legacy_dist", "")),
        venv_exists=h.get("venv") == "yes",
        db_exists=h.get("db") == "yes",
        db_users=parse.int_or_none(db.get("users")),
        admin_exists=db.get("admin") in ("yes", "1"),
        site_enabled_target=h.get("site_enabled", ""),
        default_site_enabled=h.get("default_site") == "yes",
        screen_running=h.get("screen") == "yes",
        files={key: decoded(value) for key, value in parse.key_values(b.get("files", [])).items()},
        service=UnitState.from_show(parse.key_values(b.get("service", []))),
        nginx=UnitState.from_show(parse.key_values(b.get("nginx", []))),
        sshd_ports=tuple(parse.sshd_ports(b.get("sshd", []))),
        ufw_active=parse.ufw_active(b.get("ufw", [])),
        ufw_rules=tuple(parse.ufw_rules(b.get("ufw_rules", []))),
        neighbours=Neighbours.from_probe(b.get("instances", [])),
        tls=tls_facts(b),
        postgres=PostgresFacts.from_block(b.get("postgres", [])),
        offsite=OffsiteFacts.from_blocks(b),
        media=MediaFacts.from_block(b.get("media", [])),
    )


def tls_facts(b: dict[str, list[str]]) -> TlsFacts:
    t = parse.key_values(b.get("tls", []))
    return TlsFacts(
        nginx_version=t.get("nginx_version", ""),
        cert_pem=decoded(t.get("cert", "-")),
        key_sha256=t.get("key_sha256", ""),
        key_meta=t.get("key_meta", ""),
        renewal=decoded(t.get("renewal", "-")),
        resolvers=tuple(t.get("resolvers", "").split()),
        certbot_timer=UnitState.from_show(parse.key_values(b.get("certbot_timer", []))),
    )


def decoded(value: str) -> str | None:
    """base64 from the probe -> text; `-` (missing) or garbage -> None."""
    if value == "-":
        return None
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None


def provision_facts(host: Host, profile: Profile, admin_email: str) -> ProvisionFacts:
    output = host.run(probes.provision_probe(profile, admin_email), sudo=True, what="provision probe")
    session = parse.key_values(host.run(probes.SSH_CONNECTION, what="reading $SSH_CONNECTION").stdout.splitlines())
    client_ip, login_port = parse.ssh_connection(session.get("ssh_connection", ""))
    return dataclasses.replace(provision_facts_from_probe(output.stdout), login_port=login_port, client_ip=client_ip)
