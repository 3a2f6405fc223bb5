"""Host profiles: YAML -> frozen dataclasses, validated before any connection is made.

The profile for `fab -H NAME` is `--config PATH`, else `$LSVM_CONFIG`, else `configs/NAME.yaml` when it
exists, else the built-in defaults. Every remote and local path the toolkit uses is derived here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from packaging.version import InvalidVersion, Version

from tasks.core import defaults
from tasks.core.database import DatabaseSettings
from tasks.core.database import profile_problem as database_problem
from tasks.core.errors import ProfileError
from tasks.core.media import MediaSettings
from tasks.core.media import profile_problem as media_problem
from tasks.core.offsite import OffsiteSettings, offsite_user
from tasks.core.offsite import profile_problem as offsite_problem

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = PROJECT_ROOT / "configs"
CONFIG_ENV = "LSVM_CONFIG"
BACKUPS_ENV = "LSVM_BACKUPS_DIR"

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_IPV4 = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
_UNIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_NGINX_SIZE = re.compile(r"^\d+[kKmMgG]?$")
_EMAIL = re.compile(r"^[^@\s'\"\\;]+@[^@\s'\"\\;]+$")
_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?(/[A-Za-z0-9._~/-]*)?$")


# Validators: each returns an error message (str) or None. Types are checked by the loader.

def _server_name(value: str) -> str | None:
    if value == "_":
        return None
    ipv4 = _IPV4.match(value)
    if ipv4:
        return None if all(int(part) <= 255 for part in ipv4.groups()) else "is not a valid IPv4 address"
    if not _HOSTNAME.match(value):
        return "must be a host name or IP address (letters, digits, '-' and '.'; no spaces or ';')"
    return None


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a port number between 1 and 65535"


def _version(value: str) -> str | None:
    try:
        Version(value)
    except InvalidVersion:
        return f"'{value}' is not a version pip accepts (for example 1.23.2)"
    return None


def _absolute_path(value: str) -> str | None:
    if not _SAFE_PATH.match(value) or value == "/" or "/../" in value + "/":
        return "must be an absolute path of letters, digits, '.', '_', '-' and '/'"
    return None


def _unix_name(value: str) -> str | None:
    return None if _UNIX_NAME.match(value) else "must be a lower-case user name (a-z, 0-9, '_', '-')"


# Accounts a Debian or Ubuntu system (or a package on it) already owns: the service user gets Label
# Studio's files and runs what a Label Studio exploit runs, so it must be an account of its own.
SYSTEM_ACCOUNTS = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "www-data",
    "backup", "list", "irc", "gnats", "nobody", "nogroup", "sshd", "messagebus", "syslog", "postgres", "nginx",
    "polkitd", "dnsmasq", "ntp", "chrony", "uuidd", "tcpdump", "landscape", "pollinate", "lxd", "ubuntu",
    "admin", "debian", "sudo", "adm", "staff", "users", "shadow", "utmp", "tty", "disk", "kmem", "docker",
})


def _service_user(value: str) -> str | None:
    if _unix_name(value):
        return _unix_name(value)
    if value in SYSTEM_ACCOUNTS or value.startswith("systemd-"):
        return f"'{value}' is a system account: name an account of Label Studio's own (the default is labelstudio)"
    return None


# Where root must never hand a tree to the service user or build one it then trusts: the system's own
# directories and world-writable ones (each and everything under it), and the tops of the usual places.
SYSTEM_TREES = ("/etc", "/usr", "/boot", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                "/sys", "/dev", "/run", "/root", "/home", "/tmp", "/var/tmp", "/snap", "/lost+found")
SYSTEM_TOPS = ("/var", "/opt", "/srv", "/mnt", "/media", "/var/lib", "/var/log", "/var/cache", "/var/spool",
               "/var/backups", "/var/mail", "/var/www", "/usr/local")


def _managed_dir(value: str) -> str | None:
    problem = _absolute_path(value)
    if problem:
        return problem
    path = PurePosixPath(os.path.normpath(value))
    for tree in SYSTEM_TREES:
        if path == PurePosixPath(tree) or PurePosixPath(tree) in path.parents:
            return f"must not be {tree} or inside it (a system directory, or another user's home)"
    if str(path) in SYSTEM_TOPS:
        return f"must be a directory of its own, such as {path}/label-studio, not {path} itself"
    return None


def _nginx_size(value: str) -> str | None:
    return None if _NGINX_SIZE.match(value) else "must be an nginx size such as 200m, 1g or 512k"


def check_email(value: str | None) -> str | None:
    return None if value is None or _EMAIL.match(value) else "must be an email address"


def _url(value: str | None) -> str | None:
    if value is None:
        return None
    if not _URL.match(value):
        return "must be an http(s):// URL with no query, such as https://labels.example.org"
    return None


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _workers(value: int) -> str | None:
    return None if 0 <= value <= 64 else "must be 0 (sized from the VM's cores and memory) or 1 to 64"


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be more than 0"


def _https_url(value: str) -> str | None:
    if not value.startswith("https://") or _url(value):
        return "must be an https:// URL with no query, such as https://acme-v02.api.letsencrypt.org/directory"
    return None


def _local_file(value: str | None) -> str | None:
    return None if value is None or value.strip() else "must be the path of a file on this machine"


def _yaml_off(value: Any) -> Any:
    """YAML 1.1 reads a bare `off` as false: `mode: off` means the mode named off."""
    return "off" if value is False else value


def _opt(default: Any, check=None, coerce=None) -> Any:
    return field(default=default, metadata={"check": check, "coerce": coerce})


@dataclass(frozen=True)
class LabelStudioSettings:
    version: str = _opt(defaults.LABEL_STUDIO_VERSION, _version)
    port: int = _opt(defaults.LABEL_STUDIO_PORT, _port)
    admin_email: str | None = _opt(None, check_email)
    workers: int = _opt(0, _workers)


@dataclass(frozen=True)
class ServiceSettings:
    manager: Literal["systemd", "screen"] = _opt("systemd")
    user: str = _opt("labelstudio", _service_user)
    name: str = _opt("label-studio", _unix_name)

    @property
    def unit(self) -> str:
        """The systemd unit (also used to name what the other manager must stop)."""
        return f"{self.name}.service"


@dataclass(frozen=True)
class PathSettings:
    app_dir: str = _opt("/opt/label-studio", _managed_dir)
    data_dir: str = _opt("/var/lib/label-studio", _managed_dir)


@dataclass(frozen=True)
class NginxSettings:
    client_max_body_size: str = _opt("200m", _nginx_size)
    proxy_timeout: int = _opt(300, _positive)
    deny_export: bool = _opt(True)


@dataclass(frozen=True)
class FirewallSettings:
    enabled: bool = _opt(True)


@dataclass(frozen=True)
class BackupSettings:
    keep_last: int = _opt(10, _non_negative)
    keep_daily: int = _opt(7, _non_negative)
    keep_weekly: int = _opt(4, _non_negative)
    server_tmp_dir: str = _opt("/var/tmp", _absolute_path)


@dataclass(frozen=True)
class PipSettings:
    index_url: str | None = _opt(None, _url)


@dataclass(frozen=True)
class AcmeSettings:
    directory: str = _opt(defaults.ACME_DIRECTORY, _https_url)
    email: str | None = _opt(None, check_email)


@dataclass(frozen=True)
class TlsFileSettings:
    certificate: str | None = _opt(None, _local_file)
    key: str | None = _opt(None, _local_file)


@dataclass(frozen=True)
class TlsSettings:
    mode: Literal["off", "acme", "files", "self-signed"] = _opt("off", coerce=_yaml_off)
    hsts: bool = _opt(False)
    acme: AcmeSettings = field(default_factory=AcmeSettings)
    files: TlsFileSettings = field(default_factory=TlsFileSettings)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True)
class RemotePaths:
    """Every path on the server, derived from the profile in one place."""

    app_dir: PurePosixPath
    data_dir: PurePosixPath
    releases_dir: PurePosixPath   # one venv per Label Studio release: releases/<version>/
    current: PurePosixPath        # link to the release that runs (the unit starts current/bin/gunicorn)
    previous: PurePosixPath       # link to the release that ran before the last switch (rollback)
    legacy_venv: PurePosixPath    # the single venv of earlier versions of this toolkit
    venv: PurePosixPath           # = current: every command runs the release through the link
    label_studio_bin: PurePosixPath
    gunicorn_bin: PurePosixPath
    venv_python: PurePosixPath
    gunicorn_conf: PurePosixPath      # the app server's settings (tasks/core/onserver/app_server.py)
    prepare_database: PurePosixPath   # run before each start: WAL mode, migrations (onserver/prepare_database.py)
    prepare_stamp: PurePosixPath      # the service user's: what a start needs, so the next one can skip Django
    env_file: PurePosixPath
    database_env: PurePosixPath       # root-only 0600: the PostgreSQL password (tasks.core.database)
    database_ca: PurePosixPath        # the CA certificate an external PostgreSQL's is checked against
    media_env: PurePosixPath          # root-only 0600: the media bucket's keys (tasks.core.media), read by systemd
    site_marker: PurePosixPath        # root's: the site this VM is an app VM of (site-provision writes it)
    database: PurePosixPath
    secret_env: PurePosixPath
    media_dir: PurePosixPath
    media_state: PurePosixPath        # the media copier's record of what it sent, fetched or hashed (the service user's)
    page_index_dir: PurePosixPath     # the service user's: page digests of the last backups' copies (sqlite.serve_backup)
    unit_file: PurePosixPath
    nginx_site: PurePosixPath
    nginx_site_enabled: PurePosixPath
    screen_launcher: PurePosixPath
    screen_log: PurePosixPath
    screen_dir: PurePosixPath         # the service user's own screen sockets (SCREENDIR), in its tree
    lock_file: PurePosixPath
    tls_dir: PurePosixPath            # files and self-signed: fullchain.pem, chain.pem, privkey.pem
    acme_live: PurePosixPath          # certbot's lineage (named after the service)
    acme_renewal: PurePosixPath
    acme_webroot: PurePosixPath       # http-01 answers, served by our nginx site on port 80
    acme_deploy_hook: PurePosixPath
    offsite_venv: PurePosixPath       # Litestream's own venv (root's)
    litestream_bin: PurePosixPath
    litestream_config: PurePosixPath  # no secret: the credentials come from offsite_env
    offsite_env: PurePosixPath        # root-only 0600: the target's credentials, read by systemd
    offsite_key: PurePosixPath        # root-only 0600: an SFTP target's private key (systemd's LoadCredential=)
    offsite_unit: PurePosixPath       # the replication service
    offsite_state: PurePosixPath      # the replication user's own (0700): Litestream's local state
    litestream_meta: PurePosixPath
    offsite_drill: PurePosixPath      # the restore drill (tasks/core/onserver/offsite_drill.py), root's
    drill_unit: PurePosixPath
    drill_timer: PurePosixPath
    drill_result: PurePosixPath       # the last drill's JSON, the replication user's
    restic_env: PurePosixPath         # root-only 0600: restic's repository password, read by systemd
    restic_cache: PurePosixPath       # restic's local cache, the replication user's
    offsite_files: PurePosixPath      # tar of .env and media into restic (tasks/core/onserver/offsite_files.py)
    files_unit: PurePosixPath
    files_timer: PurePosixPath
    notify_env: PurePosixPath         # root-only 0600: where notifications go (apprise URLs), read by systemd
    offsite_python: PurePosixPath     # the offsite venv's python: apprise runs through it (-c APPRISE_CLI)
    offsite_watch: PurePosixPath      # the watch (tasks/core/onserver/offsite_watch.py), root's
    offsite_history: PurePosixPath    # the drill's look at an S3 target's history (onserver/offsite_history.py), root's
    offsite_pgtool: PurePosixPath     # PostgreSQL's dump for the files snapshot (onserver/postgres_tool.py), root's
    offsite_copier: PurePosixPath     # the bucket's listing for the files snapshot (onserver/media_copy.py), root's
    watch_unit: PurePosixPath
    watch_timer: PurePosixPath
    watch_state: PurePosixPath        # its last look, the replication user's

    def tls_files(self, mode: str) -> tuple[PurePosixPath, PurePosixPath, PurePosixPath]:
        """(full chain, chain without the leaf, private key) nginx uses in this TLS mode."""
        base = self.acme_live if mode == "acme" else self.tls_dir
        return base / "fullchain.pem", base / "chain.pem", base / "privkey.pem"


@dataclass(frozen=True)
class Profile:
    server_name: str | None = _opt(None, lambda v: None if v is None else _server_name(v))
    http_port: int = _opt(defaults.HTTP_PORT, _port)
    public_url: str | None = _opt(None, _url)
    label_studio: LabelStudioSettings = field(default_factory=LabelStudioSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    nginx: NginxSettings = field(default_factory=NginxSettings)
    firewall: FirewallSettings = field(default_factory=FirewallSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    pip: PipSettings = field(default_factory=PipSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    offsite: OffsiteSettings = field(default_factory=OffsiteSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    # Where the settings came from, for messages; not a YAML key.
    source: str = field(default="built-in defaults", metadata={"internal": True})
    host: str = field(default="", metadata={"internal": True})
    # The address behind the alias (ssh_config HostName), once connected.
    address: str = field(default="", metadata={"internal": True})

    @property
    def offsite_user(self) -> str:
        """The replication user: in the service user's group, never the service user (see tasks.core.offsite)."""
        return offsite_user(self.service.user)

    @property
    def offsite_streams_database(self) -> bool:
        """SQLite streams to the offsite target (Litestream); PostgreSQL's dump rides in each files snapshot."""
        return self.offsite.enabled and self.database.engine == "sqlite"

    @property
    def config_file(self) -> str:
        """The YAML file to edit for this host: the one in use, else configs/<host>.yaml."""
        return self.source if self.source.endswith((".yaml", ".yml")) else f"configs/{self.host or '<host>'}.yaml"

    @property
    def effective_server_name(self) -> str:
        """nginx server_name: the profile's, else the host we connect to."""
        return self.server_name or self.address or self.host or "_"

    @property
    def url(self) -> str:
        """The public base URL users open (LABEL_STUDIO_HOST)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        name = self.effective_server_name
        if name == "_":
            name = "localhost"
        if self.tls.enabled:
            return f"https://{name}"
        port = "" if self.http_port == 80 else f":{self.http_port}"
        return f"http://{name}{port}"

    @property
    def origin(self) -> str:
        """scheme://host[:port] of the public URL, for CSRF_TRUSTED_ORIGINS."""
        match = re.match(r"^(https?://[^/]+)", self.url)
        assert match, self.url
        return match.group(1)

    @property
    def remote(self) -> RemotePaths:
        app = PurePosixPath(self.paths.app_dir)
        data = PurePosixPath(self.paths.data_dir)
        venv = app / "current"
        name = self.service.name
        return RemotePaths(
            app_dir=app,
            data_dir=data,
            releases_dir=app / "releases",
            current=venv,
            previous=app / "previous",
            legacy_venv=app / "venv",
            venv=venv,
            label_studio_bin=venv / "bin" / "label-studio",
            gunicorn_bin=venv / "bin" / "gunicorn",
            venv_python=venv / "bin" / "python",
            gunicorn_conf=app / f"{name}-gunicorn.conf.py",
            prepare_database=app / "prepare-database.py",
            prepare_stamp=data / ".lsvm-prepared.json",
            env_file=app / f"{name}.env",
            database_env=app / f"{name}-database.env",
            database_ca=app / f"{name}-database-ca.pem",
            media_env=app / f"{name}-media.env",
            site_marker=app / f"{name}-site",
            database=data / "label_studio.sqlite3",
            secret_env=data / ".env",
            media_dir=data / "media",
            media_state=data / ".lsvm-media-copy.json",
            page_index_dir=data / ".lsvm-pages",
            unit_file=PurePosixPath("/etc/systemd/system") / self.service.unit,
            nginx_site=PurePosixPath("/etc/nginx/sites-available") / name,
            nginx_site_enabled=PurePosixPath("/etc/nginx/sites-enabled") / name,
            screen_launcher=app / "start-label-studio.sh",
            screen_log=app / "screen.log",
            screen_dir=data / ".screen",
            lock_file=PurePosixPath("/run/lsvm") / f"{name}-data.lock",  # root-only 0700 dir
            tls_dir=PurePosixPath("/etc") / name / "tls",
            acme_live=PurePosixPath("/etc/letsencrypt/live") / name,
            acme_renewal=PurePosixPath("/etc/letsencrypt/renewal") / f"{name}.conf",
            acme_webroot=PurePosixPath("/var/www") / f"{name}-acme",
            acme_deploy_hook=PurePosixPath("/etc/letsencrypt/renewal-hooks/deploy") / f"{name}-nginx",
            offsite_venv=app / "offsite",
            litestream_bin=app / "offsite" / "bin" / "litestream",
            litestream_config=app / f"{name}-litestream.yml",
            offsite_env=app / f"{name}-offsite.env",
            offsite_key=app / f"{name}-offsite-sftp.key",
            offsite_unit=PurePosixPath("/etc/systemd/system") / f"{name}-offsite.service",
            offsite_state=PurePosixPath("/var/lib") / f"{name}-offsite",
            litestream_meta=PurePosixPath("/var/lib") / f"{name}-offsite" / "litestream",
            offsite_drill=app / "offsite-drill.py",
            drill_unit=PurePosixPath("/etc/systemd/system") / f"{name}-offsite-drill.service",
            drill_timer=PurePosixPath("/etc/systemd/system") / f"{name}-offsite-drill.timer",
            drill_result=PurePosixPath("/var/lib") / f"{name}-offsite" / "drill.json",
            restic_env=app / f"{name}-offsite-restic.env",
            restic_cache=PurePosixPath("/var/lib") / f"{name}-offsite" / "restic-cache",
            offsite_files=app / "offsite-files.py",
            files_unit=PurePosixPath("/etc/systemd/system") / f"{name}-offsite-files.service",
            files_timer=PurePosixPath("/etc/systemd/system") / f"{name}-offsite-files.timer",
            notify_env=app / f"{name}-offsite-notify.env",
            offsite_python=app / "offsite" / "bin" / "python",
            offsite_watch=app / "offsite-watch.py",
            offsite_history=app / "offsite-history.py",
            offsite_pgtool=app / "offsite-postgres-tool.py",
            offsite_copier=app / "offsite-media-copy.py",
            watch_unit=PurePosixPath("/etc/systemd/system") / f"{name}-offsite-watch.service",
            watch_timer=PurePosixPath("/etc/systemd/system") / f"{name}-offsite-watch.timer",
            watch_state=PurePosixPath("/var/lib") / f"{name}-offsite" / "watch.json",
        )

    def release_dir(self, version: str) -> PurePosixPath:
        """Where a release's venv lives (the version passed the profile's version check)."""
        return self.remote.releases_dir / version

    def backups_dir(self, base: Path | None = None) -> Path:
        """Local snapshots of this host: backups/<host>/ (or $LSVM_BACKUPS_DIR/<host>/)."""
        return (base or backups_root()) / (self.host or "local")


def backups_root() -> Path:
    """Where local snapshots live: $LSVM_BACKUPS_DIR, else backups/ in this project."""
    return Path(os.environ.get(BACKUPS_ENV) or PROJECT_ROOT / "backups")


# ----------------------------------------------------------------------------------------------
# Loading


def resolve_profile_path(
    host: str, explicit: str | None = None, env: typing.Mapping[str, str] | None = None,
    configs_dir: Path | None = None,
) -> Path | None:
    """Which YAML file configures `host`, or None for the built-in defaults."""
    env = os.environ if env is None else env
    chosen = explicit or env.get(CONFIG_ENV)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            origin = "--config" if explicit else f"${CONFIG_ENV}"
            raise ProfileError(f"{path}: no such profile file (given by {origin})")
        return path
    candidate = (configs_dir or CONFIGS_DIR) / f"{host}.yaml"
    return candidate if host and candidate.is_file() else None


def load_profile(
    host: str, explicit: str | None = None, env: typing.Mapping[str, str] | None = None,
    configs_dir: Path | None = None,
) -> Profile:
    path = resolve_profile_path(host, explicit, env, configs_dir)
    if path is None:
        return Profile(host=host)
    return parse_profile(read_profile_text(path), source=str(path), host=host)


def read_profile_text(path: Path) -> str:
    """A profile file's text; ProfileError in words when it cannot be read or is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read it ({exc.strerror or exc})") from None


# Settings that come from this machine's environment, never from a profile: (variable, what it gives,
# whether its value is a secret that is never shown).
ENVIRONMENT_INPUTS = (
    (CONFIG_ENV, "the profile file to use instead of configs/<host>.yaml", False),
    (BACKUPS_ENV, "where snapshots are kept instead of backups/", False),
    ("LABEL_STUDIO_USERNAME", "the admin's email when label_studio.admin_email is not set", False),
    ("LABEL_STUDIO_PASSWORD", "the admin's password (else asked on a terminal)", True),
    ("LSVM_DB_PASSWORD", "an external PostgreSQL server's password for Label Studio (else asked)", True),
    ("AWS_ACCESS_KEY_ID", "offsite S3 keys, stored on the VM at provision", True),
    ("AWS_SECRET_ACCESS_KEY", "offsite S3 keys, stored on the VM at provision", True),
    ("LSVM_OFFSITE_SFTP_KEY", "the offsite SFTP target's private key file, stored on the VM at provision", False),
    ("LSVM_NOTIFY_URL", "where the offsite watch notifies (apprise URLs), stored on the VM at provision", True),
)


def explain_profile(profile: Profile, text: str | None, env: typing.Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(dotted key, value, where it came from) of every setting of a parsed profile (`text`: its YAML, None for
    the built-in defaults), then the environment variables that feed a task, secrets shown only as set."""
    lines = _key_lines(yaml.compose(text)) if text and text.strip() else {}
    rows = []
    for key in profile_keys():
        path = tuple(key.split("."))
        value: Any = profile
        for part in path:
            value = getattr(value, part)
        if path in lines:
            source = f"{profile.source}:{lines[path]}"
        elif key == "label_studio.admin_email" and value is None and env.get("LABEL_STUDIO_USERNAME"):
            value, source = env["LABEL_STUDIO_USERNAME"], "environment ($LABEL_STUDIO_USERNAME)"
        else:
            source = "default"
        rows.append((key, "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value),
                     source))
    for name, what, secret in ENVIRONMENT_INPUTS:
        if env.get(name):
            rows.append((f"${name}", "(set)" if secret else env[name], f"environment: {what}"))
    return rows


def read_mapping(text: str, source: str, what: str = "profile") -> tuple[dict | None, dict]:
    """YAML text -> (its mapping, None when empty; the line of every key); any problem is a one-line
    ProfileError naming file and line."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"{source}:{mark.line + 1}" if mark else source
        problem = exc.problem or exc.context or "invalid YAML"
        raise ProfileError(f"{at}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source}: YAML error: {exc}") from None
    if data is None:
        return None, {}
    lines = _key_lines(node)
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: the {what} must be a mapping of keys, not {type(data).__name__}")
    return data, lines


def parse_profile(text: str, *, source: str = "<profile>", host: str = "") -> Profile:
    """Parse and validate YAML text; any problem is a one-line ProfileError naming file, line and key."""
    data, lines = read_mapping(text, source)
    if data is None:
        return Profile(source=source, host=host)
    values = build_settings(Profile, data, (), source, lines)
    problem = database_problem(values.database, values.service.manager)
    if problem:
        raise ProfileError(f"{where(source, lines, ('database', 'engine'))}: {problem}")
    problem = offsite_problem(values.offsite, service_manager=values.service.manager,
                              data_dir=values.paths.data_dir, app_dir=values.paths.app_dir,
                              service_user=values.service.user)
    if problem:
        raise ProfileError(f"{where(source, lines, ('offsite', problem[0]))}: {problem[1]}")
    problem = media_problem(values.media, service_manager=values.service.manager)
    if problem:
        raise ProfileError(f"{where(source, lines, ('media', 'storage'))}: {problem}")
    target = values.offsite.parsed
    # Root makes a path target and hands it to the replication user: never in a system or world-writable
    # tree (a link planted in /tmp would take root's chown elsewhere), as for the app and data dirs.
    problem = _managed_dir(str(target.path)) if target is not None and target.kind == "path" else None
    if problem:
        raise ProfileError(f"{where(source, lines, ('offsite', 'target'))}: 'offsite.target' {problem}")
    for key, problem in _combination_problems(values):
        raise ProfileError(f"{where(source, lines, key)}: {problem}")
    return dataclasses.replace(values, source=source, host=host)


def _combination_problems(profile: Profile) -> list[tuple[tuple[str, ...], str]]:
    """Values that are fine alone and wrong together, with the key to blame."""
    found = []
    if profile.http_port == profile.label_studio.port:
        found.append((("http_port",), f"'http_port' {profile.http_port} is also label_studio.port: nginx "
                                      "and Label Studio cannot both listen there"))
    app, data = PurePosixPath(profile.paths.app_dir), PurePosixPath(profile.paths.data_dir)
    if app == data or data in app.parents:
        found.append((("paths", "app_dir"), "'paths.app_dir' must not be paths.data_dir or inside it: the "
                                            "service user owns the data dir, and root runs what the app dir holds"))
    return found


def _key_lines(node: yaml.Node, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Line number (1-based) of every key, and a check for keys given twice."""
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            if key in lines:
                raise ProfileError(
                    f"line {key_node.start_mark.line + 1}: key '{'.'.join(key)}' is given twice"
                )
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key))
    return lines


def where(source: str, lines: dict, path: tuple[str, ...]) -> str:
    line = lines.get(path)
    return f"{source}:{line}" if line else source


def build_settings(cls: type, data: dict, prefix: tuple[str, ...], source: str, lines: dict) -> Any:
    """A settings dataclass from a YAML mapping: unknown keys, types and each field's check in words."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = (*prefix, str(key))
        dotted = ".".join(path)
        if key not in fields:
            known = ", ".join(fields)
            raise ProfileError(f"{where(source, lines, path)}: unknown key '{dotted}' (known here: {known})")
        hint = hints[key]
        coerce = fields[key].metadata.get("coerce")
        if coerce:
            value = coerce(value)
        if dataclasses.is_dataclass(hint):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ProfileError(f"{where(source, lines, path)}: '{dotted}' must be a mapping of keys")
            kwargs[key] = build_settings(hint, value, path, source, lines)
            continue
        problem = _type_problem(hint, value)
        if problem is None:
            check = fields[key].metadata.get("check")
            problem = check(value) if check else None
        if problem:
            raise ProfileError(f"{where(source, lines, path)}: '{dotted}' {problem}")
        kwargs[key] = value
    return cls(**kwargs)


def _type_problem(hint: Any, value: Any) -> str | None:
    """None when `value` fits the annotation, else what is wrong, in words."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        return None if value in args else "must be one of: " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _type_problem(inner, value)
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be a whole number"
    if hint is str:
        if isinstance(value, str):
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"must be a string: write it in quotes (\"{value}\")"
        return "must be a string"
    raise TypeError(f"unsupported profile field type {hint!r}")  # a bug in this module, not input


def profile_keys(cls: type = Profile, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every YAML key the profile accepts, dotted (for docs and tests)."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(profile_keys(hints[f.name], (*prefix, f.name)))
        else:
            keys.append(".".join((*prefix, f.name)))
    return keys
