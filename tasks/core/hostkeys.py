"""Host keys, checked as OpenSSH does (known_hosts, StrictHostKeyChecking), except that a changed key
is always refused. The check runs after key exchange and before authentication: a server that fails
it never sees a password, a key signature or a byte of data."""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Connection
from paramiko.hostkeys import HostKeyEntry, HostKeys

from tasks.core import ui
from tasks.core.errors import ConnectError

STRICT_MODES = {"yes": "yes", "true": "yes", "ask": "ask", "accept-new": "accept-new",
                "no": "no", "off": "no", "false": "no"}
DEFAULT_USER_KNOWN_HOSTS = "~/.ssh/known_hosts ~/.ssh/known_hosts2"
DEFAULT_GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"
NO_FILE = ("/dev/null", "none")
KEY_KINDS = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA", "ssh-dss": "DSA"}

# What to do with an offered key: the verdicts of `decide`.
TRUSTED, MISMATCH, REVOKED, UNKNOWN, RECORD, ACCEPT = "trusted", "mismatch", "revoked", "unknown", "record", "accept"


class HostKeyRefused(paramiko.SSHException):
    """The server's host key is not trusted: our one-line message and what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class KnownHostsSettings:
    """What ssh_config says about the host keys of one host."""

    name: str                       # looked up in known_hosts: HostKeyAlias, else host or [host]:port
    user_files: tuple[Path, ...]    # UserKnownHostsFile: new keys go to the first one
    global_files: tuple[Path, ...]  # GlobalKnownHostsFile: read only
    strict: str                     # yes | ask | accept-new | no
    hash_names: bool                # HashKnownHosts: record new keys under a hashed name

    @property
    def files(self) -> tuple[Path, ...]:
        return self.user_files + self.global_files


@dataclass(frozen=True)
class KnownKey:
    """One key line of a known_hosts file."""

    patterns: tuple[str, ...]
    key: paramiko.PKey
    revoked: bool
    path: Path
    line: int

    @property
    def where(self) -> str:
        return f"{shown(self.path)}:{self.line}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's fingerprint of a key: SHA256:base64-without-padding."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def describe_key(key: paramiko.PKey) -> str:
    """'ED25519 key SHA256:...', the words OpenSSH uses."""
    name = key.get_name()
    kind = "ECDSA" if name.startswith("ecdsa-") else KEY_KINDS.get(name, name)
    return f"{kind} key {fingerprint(key)}"


def shown(path: Path) -> str:
    """A path as the user would type it: ~ for the home folder."""
    home = os.path.expanduser("~")
    text = str(path)
    return "~" + text[len(home):] if text == home or text.startswith(home + "/") else text


def shell_path(path: Path) -> str:
    """A path for a command line to paste: ~ kept unquoted so the shell still expands it."""
    text = shown(path)
    return "~/" + shlex.quote(text[2:]) if text.startswith("~/") else shlex.quote(text)


def strict_mode(ssh_config: dict) -> str:
    """StrictHostKeyChecking as one of yes/ask/accept-new/no; OpenSSH's default is ask."""
    value = ssh_config.get("stricthostkeychecking", "ask")
    mode = STRICT_MODES.get(value.lower())
    if mode is None:
        raise ConnectError(f"StrictHostKeyChecking '{value}' in ssh_config is not one of yes, ask, accept-new, no")
    return mode


def known_hosts_name(host: str, port: int, alias: str | None = None) -> str:
    """The name a host's keys are stored under: HostKeyAlias as is, else the host, [host]:port off port 22."""
    if alias:
        return alias
    return host.lower() if port == 22 else f"[{host.lower()}]:{port}"


def expand_path(word: str, tokens: dict[str, str]) -> Path:
    """One file name of ssh_config: ~, ${VAR} and %-tokens expanded as OpenSSH does."""
    word = os.path.expanduser(word)
    word = re.sub(r"\$\{(\w+)\}", lambda m: os.environ.get(m.group(1), ""), word)
    word = re.sub(r"%(.)", lambda m: tokens.get(m.group(1), m.group(0)), word)
    return Path(word)


def known_hosts_files(value: str, tokens: dict[str, str]) -> tuple[Path, ...]:
    """The files a UserKnownHostsFile/GlobalKnownHostsFile value names; /dev/null and none name none."""
    return tuple(expand_path(word, tokens) for word in shlex.split(value) if word not in NO_FILE)


def known_hosts_settings(ssh_config: dict, *, host: str, port: int, user: str,
                         original_host: str) -> KnownHostsSettings:
    """ssh_config (Fabric's dict of lower-cased keys, for this host) -> where and how to check its key."""
    alias = ssh_config.get("hostkeyalias")
    tokens = {"%": "%", "d": os.path.expanduser("~"), "u": getpass.getuser(), "h": host, "p": str(port),
              "r": user, "n": original_host, "k": alias or original_host}
    return KnownHostsSettings(
        name=known_hosts_name(host, port, alias),
        user_files=known_hosts_files(ssh_config.get("userknownhostsfile", DEFAULT_USER_KNOWN_HOSTS), tokens),
        global_files=known_hosts_files(ssh_config.get("globalknownhostsfile", DEFAULT_GLOBAL_KNOWN_HOSTS), tokens),
        strict=strict_mode(ssh_config),
        hash_names=ssh_config.get("hashknownhosts", "no").lower() == "yes",
    )


def parse_known_hosts(text: str, path: Path) -> list[KnownKey]:
    """The key lines of a known_hosts file (hashed names included); @revoked lines are kept as revoked,
    @cert-authority lines and lines paramiko cannot read are skipped."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = fields.pop(0) if fields[0].startswith("@") else None
        if marker not in (None, "@revoked") or len(fields) < 3:
            continue  # host certificates: paramiko cannot check them
        try:
            entry = HostKeyEntry.from_line(" ".join(fields[:3]), number)
        except Exception:  # noqa: BLE001 - a damaged line is skipped, as OpenSSH does
            entry = None
        if entry is not None:
            keys.append(KnownKey(tuple(entry.hostnames), entry.key, marker == "@revoked", path, number))
    return keys


def read_known_hosts(paths: tuple[Path, ...]) -> list[KnownKey]:
    """Every key line of the files that exist and can be read."""
    keys = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        keys.extend(parse_known_hosts(text, path))
    return keys


def pattern_matches(pattern: str, name: str) -> bool:
    """One known_hosts name against ours: |1| hashes, * and ? wildcards, case-insensitive."""
    if pattern.startswith("|1|"):
        try:
            return HostKeys.hash_host(name, pattern) == pattern
        except Exception:  # noqa: BLE001 - a damaged hash matches nothing
            return False
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.fullmatch(regex, name.lower()) is not None


def names_match(patterns: tuple[str, ...], name: str) -> bool:
    """A known_hosts host field: any pattern matches, and no !pattern does."""
    if any(p.startswith("!") and pattern_matches(p[1:], name) for p in patterns):
        return False
    return any(not p.startswith("!") and pattern_matches(p, name) for p in patterns)


def keys_for(keys: list[KnownKey], name: str) -> list[KnownKey]:
    """The key lines (revoked or not) that apply to the host stored as `name`."""
    return [k for k in keys if names_match(k.patterns, name)]


def same_key(a: paramiko.PKey, b: paramiko.PKey) -> bool:
    return a.asbytes() == b.asbytes()


def decide(offered: paramiko.PKey, known: list[KnownKey], strict: str) -> str:
    """What to do with the key a server offers, given the known_hosts lines for it: OpenSSH's rules,
    except that a changed key is refused whatever StrictHostKeyChecking says."""
    if any(k.revoked and same_key(k.key, offered) for k in known):
        return REVOKED
    trusted = [k for k in known if not k.revoked]
    if trusted:
        return TRUSTED if any(same_key(k.key, offered) for k in trusted) else MISMATCH
    return {"yes": UNKNOWN, "ask": UNKNOWN, "accept-new": RECORD, "no": ACCEPT}[strict]


def preferred_key_types(available: tuple[str, ...], known: set[str]) -> list[str]:
    """`available` with the types of the known keys first, as OpenSSH orders them, so a server that has
    several host keys shows one we can check."""
    def key_type(algorithm: str) -> str:
        return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm

    first = [a for a in available if key_type(a) in known]
    return first + [a for a in available if a not in first]


def record_key(path: Path, name: str, key: paramiko.PKey, *, hashed: bool) -> None:
    """Append a known_hosts line for `name`, creating the file 0600 (and its folder 0700) when missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    before = path.read_bytes() if path.exists() else b""
    separator = "\n" if before and not before.endswith(b"\n") else ""
    stored = HostKeys.hash_host(name) if hashed else name
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as f:
        f.write(f"{separator}{stored} {key.get_name()} {key.get_base64()}\n")


class HostKeyCheck(paramiko.MissingHostKeyPolicy):
    """Decides on every key a server offers (paramiko's own key stores stay empty, so each one comes here)."""

    def __init__(self, settings: KnownHostsSettings, known: list[KnownKey], *, user: str, host: str, port: int,
                 original_host: str):
        self.settings = settings
        self.known = known
        self.host, self.port, self.original_host = host, port, original_host
        self.target = f"{user}@{host}:{port}"

    def transport(self, sock, **kwargs) -> paramiko.Transport:
        """paramiko's Transport, asking for the key types known_hosts holds for this host first."""
        transport = paramiko.Transport(sock, **kwargs)
        options = transport.get_security_options()
        known = {k.key.get_name() for k in self.known if not k.revoked}
        options.key_types = preferred_key_types(options.key_types, known)
        return transport

    def missing_host_key(self, client, hostname, key) -> None:
        """Called by paramiko after key exchange, before authentication: refuse, record or let it pass."""
        verdict = decide(key, self.known, self.settings.strict)
        if verdict == MISMATCH:
            raise self.mismatch(key)
        if verdict == REVOKED:
            where = next(k.where for k in self.known if k.revoked and same_key(k.key, key))
            raise HostKeyRefused(f"the host key of {self.target} is revoked ({where}): it offers "
                                 f"{describe_key(key)}; nothing was sent to it")
        if verdict == UNKNOWN:
            raise self.unknown(key)
        if verdict == RECORD:
            self.record(key)

    def mismatch(self, key: paramiko.PKey) -> HostKeyRefused:
        """The one line for a key that contradicts known_hosts, and how to clear an old key."""
        old = next(k for k in self.known if not k.revoked)
        remove = f"ssh-keygen -R {shlex.quote(self.settings.name)}"
        if old.path != Path(os.path.expanduser("~/.ssh/known_hosts")):
            remove += f" -f {shell_path(old.path)}"
        return HostKeyRefused(
            f"the host key of {self.target} does not match known_hosts ({old.where}): it offers "
            f"{describe_key(key)}; nothing was sent to it",
            hint=f"if the server was rebuilt, check that fingerprint and remove the old key with: {remove}; "
                 f"if not, someone may be intercepting the connection",
        )

    def unknown(self, key: paramiko.PKey) -> HostKeyRefused:
        """The one line for a key known_hosts does not hold, and how to accept it."""
        user_files = self.settings.user_files
        file = shell_path(user_files[0]) if user_files else "~/.ssh/known_hosts"
        keyscan = f", or with: ssh-keyscan -p {self.port} {self.host} >> {file}"
        if self.settings.name != known_hosts_name(self.host, self.port):
            keyscan = ""  # HostKeyAlias: ssh-keyscan would store the key under the wrong name
        return HostKeyRefused(
            f"the host key of {self.target} is not in known_hosts (StrictHostKeyChecking "
            f"{self.settings.strict}): it offers {describe_key(key)}",
            hint=f"check that fingerprint with the server's admin, then accept it once with "
                 f"`ssh -o StrictHostKeyChecking=ask {self.original_host}`{keyscan}",
        )

    def record(self, key: paramiko.PKey) -> None:
        """accept-new: the key goes to the first UserKnownHostsFile, as OpenSSH does."""
        if not self.settings.user_files:
            return
        path = self.settings.user_files[0]
        try:
            record_key(path, self.settings.name, key, hashed=self.settings.hash_names)
        except OSError as exc:
            ui.warn(f"could not add the host key of {self.target} to {shown(path)}: {exc.strerror}")
            return
        ui.warn(f"added {self.settings.name} ({describe_key(key)}) to {shown(path)}")


def verify_host_keys(connection: Connection) -> HostKeyCheck:
    """Make `connection` (and its ProxyJump hops) check host keys as OpenSSH does, replacing the
    AutoAddPolicy Fabric sets; call before it opens."""
    c = connection
    settings = known_hosts_settings(c.ssh_config, host=c.host, port=c.port, user=c.user,
                                    original_host=c.original_host)
    check = HostKeyCheck(settings, keys_for(read_known_hosts(settings.files), settings.name),
                         user=c.user, host=c.host, port=c.port, original_host=c.original_host)
    c.client.get_host_keys().clear()
    c.client._system_host_keys.clear()  # a key paramiko finds there would skip our check
    c.client.set_missing_host_key_policy(check)
    # A new dict: Fabric may hand every Connection the same connect_kwargs from its config.
    c.connect_kwargs = {**c.connect_kwargs, "transport_factory": check.transport}
    if isinstance(c.gateway, Connection):
        verify_host_keys(c.gateway)
    return check
