"""HTTPS, the pure part: certificates read and checked here (with `cryptography`), the profile's TLS
rules, the EAB credentials from the environment, and certbot's failures in one line. No I/O on a server."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

from tasks.core.defaults import CERT_WARN_DAYS
from tasks.core.errors import ProfileError, UsageError
from tasks.core.profile import Profile

EAB_KID_ENV = "LSVM_ACME_EAB_KID"
EAB_HMAC_ENV = "LSVM_ACME_EAB_HMAC_KEY"


# ------------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class CertInfo:
    """What a person (and provision) needs to know about a served certificate."""

    subject: str
    issuer: str
    names: tuple[str, ...]          # DNS names and IP addresses of the subjectAltName
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str                     # AB:CD:... as browsers show it
    ocsp: bool                      # has an OCSP responder URL (stapling possible)
    self_signed: bool

    def days_left(self, now: dt.datetime | None = None) -> int:
        now = now or dt.datetime.now(dt.timezone.utc)
        return int((self.not_after - now).total_seconds() // 86400)

    def covers(self, name: str) -> bool:
        return any(name_matches(pattern, name) for pattern in self.names)

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.timezone.utc)) >= self.not_after


def _name(name: x509.Name) -> str:
    """`CN (O)` of a subject or issuer, or its full RFC 4514 form when it has neither."""
    def first(oid) -> str | None:
        values = name.get_attributes_for_oid(oid)
        return str(values[0].value) if values else None
    common, org = first(NameOID.COMMON_NAME), first(NameOID.ORGANIZATION_NAME)
    if common and org:
        return f"{common} ({org})"
    return common or org or name.rfc4514_string() or "-"


def cert_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return ()
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


def has_ocsp(cert: x509.Certificate) -> bool:
    try:
        aia = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_INFORMATION_ACCESS).value
    except x509.ExtensionNotFound:
        return False
    return any(d.access_method == AuthorityInformationAccessOID.OCSP for d in aia)


def fingerprint(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def cert_info(cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        subject=_name(cert.subject), issuer=_name(cert.issuer), names=cert_names(cert),
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        sha256=fingerprint(cert), ocsp=has_ocsp(cert), self_signed=cert.issuer == cert.subject,
    )


def parse_chain(pem: bytes | str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in order; [] when there is none or it does not parse."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


def leaf_info(pem: bytes | str | None) -> CertInfo | None:
    """The first certificate of a PEM bundle read from a server, or None when missing or garbled."""
    chain = parse_chain(pem) if pem else []
    return cert_info(chain[0]) if chain else None


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125: exact (case-insensitive), or one `*.` wildcard covering exactly one leftmost label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern == name:
        return True
    if pattern.startswith("*.") and not _is_ip(name):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# The profile's TLS rules (checked before connecting)


def check_profile(profile: Profile) -> None:
    """What a TLS mode needs from the rest of the profile, in words, before any connection."""
    tls = profile.tls
    if tls.mode in ("acme", "files"):
        name = profile.server_name
        if not name or name == "_":
            raise ProfileError(f"{profile.config_file}: tls.mode {tls.mode} needs server_name: the DNS name "
                               "people open (the certificate is for that name)")
        if tls.mode == "acme" and _is_ip(name):
            raise ProfileError(f"{profile.config_file}: tls.mode acme needs a DNS name in server_name, not an IP "
                               "address (use tls.mode self-signed for a VM reached by IP)")
    if tls.mode == "files" and not (tls.files.certificate and tls.files.key):
        raise ProfileError(f"{profile.config_file}: tls.mode files needs tls.files.certificate and tls.files.key "
                           "(paths on this machine)")
    if profile.public_url and tls.enabled and not profile.public_url.startswith("https://"):
        raise ProfileError(f"{profile.config_file}: public_url must start with https:// when tls.mode is {tls.mode}")


@dataclass(frozen=True)
class LocalPair:
    """A certificate chain and its key from this machine, checked."""

    fullchain: bytes     # the chain as nginx serves it (leaf first), normalised PEM
    chain: bytes         # what the health check trusts: the intermediates, or the leaf when there are none
    key: bytes = b""     # never printed, never in argv
    info: CertInfo | None = None

    @property
    def key_sha256(self) -> str:
        return hashlib.sha256(self.key).hexdigest()

    def __repr__(self) -> str:  # the key stays out of tracebacks and logs
        return f"LocalPair(info={self.info!r})"


def _public_bytes(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_pair(cert_pem: bytes, key_pem: bytes, server_name: str, *, cert_source: str = "certificate",
               key_source: str = "key", now: dt.datetime | None = None) -> LocalPair:
    """The chain parses, the key parses (unencrypted) and belongs to the first certificate, its names
    cover `server_name`, it is valid now. Any problem: a one-line ProfileError."""
    now = now or dt.datetime.now(dt.timezone.utc)
    chain = parse_chain(cert_pem)
    if not chain:
        raise ProfileError(f"{cert_source}: no PEM certificate in it")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ProfileError(f"{key_source}: the key is encrypted; nginx needs it without a passphrase") from None
    except ValueError:
        raise ProfileError(f"{key_source}: not a PEM private key") from None
    leaf = chain[0]
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise ProfileError(f"{key_source} does not belong to {cert_source} (their public keys differ)")
    info = cert_info(leaf)
    if not info.covers(server_name):
        names = ", ".join(info.names) or "none"
        raise ProfileError(f"{cert_source} is for {names}, not for server_name {server_name}")
    if info.expired(now):
        raise ProfileError(f"{cert_source} expired on {info.not_after:%Y-%m-%d}")
    if now < info.not_before:
        raise ProfileError(f"{cert_source} is not valid before {info.not_before:%Y-%m-%d %H:%M} UTC")
    for child, parent in zip(chain, chain[1:]):
        if child.issuer != parent.subject:
            raise ProfileError(f"{cert_source}: the chain is out of order (leaf first, then each issuer)")
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    anchor = chain[1:] or chain[:1]
    return LocalPair(pem, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in anchor), key_pem, info)


def load_local_pair(profile: Profile, now: dt.datetime | None = None) -> LocalPair:
    """tls.mode files: read and check the two local files (before anything is sent)."""
    files = profile.tls.files
    assert files.certificate and files.key and profile.server_name  # check_profile ran first
    paths = Path(files.certificate).expanduser(), Path(files.key).expanduser()
    try:
        cert_pem, key_pem = (path.read_bytes() for path in paths)
    except OSError as exc:
        raise ProfileError(f"tls.files: cannot read {exc.filename}: {exc.strerror}") from None
    return check_pair(cert_pem, key_pem, profile.server_name, cert_source=str(paths[0]), key_source=str(paths[1]),
                      now=now)


def expiry_warning(info: CertInfo, now: dt.datetime | None = None) -> str | None:
    days = info.days_left(now)
    if days < 0:
        return f"the certificate expired {-days} day(s) ago"
    if days < CERT_WARN_DAYS:
        return f"the certificate expires in {days} day(s)"
    return None


# ------------------------------------------------------------------------------------------------
# ACME


@dataclass(frozen=True)
class Eab:
    kid: str
    hmac_key: str

    def __repr__(self) -> str:
        return f"Eab(kid={self.kid!r})"


def eab_from_env(env: typing.Mapping[str, str] | None = None) -> Eab | None:
    """External Account Binding for institutional ACME CAs: only from the environment, never the profile."""
    env = os.environ if env is None else env
    kid, key = env.get(EAB_KID_ENV, "").strip(), env.get(EAB_HMAC_ENV, "").strip()
    if bool(kid) != bool(key):
        raise UsageError(f"set both {EAB_KID_ENV} and {EAB_HMAC_ENV} (External Account Binding), or neither")
    return Eab(kid, key) if kid else None


def certbot_ini(eab: Eab | None) -> bytes:
    """certbot's --config file for the values that must not be in argv (they are secrets)."""
    if eab is None:
        return b""
    return f"eab-kid = {eab.kid}\neab-hmac-key = {eab.hmac_key}\n".encode()


def renewal_server(conf: str | None) -> str | None:
    """The ACME directory a certbot lineage renews against (`server = ...` in its renewal file)."""
    for line in (conf or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "server":
            return value.strip()
    return None


_DETAIL = re.compile(r"^\s*Detail:\s*(.+)$", re.MULTILINE)


def certbot_failure(output: str, directory: str, name: str) -> str:
    """certbot's error output -> one line saying why no certificate was issued."""
    text = output.strip()
    low = text.lower()
    if "ratelimited" in low or "too many certificates" in low or "rate limit" in low:
        match = re.search(r"(too many [^\n:]*|rate ?limit[^\n]*)", text, re.IGNORECASE)
        return f"the ACME CA refused: rate limit ({match.group(1).strip() if match else 'try again later'})"
    if "externalaccountrequired" in low or "external account" in low:
        return (f"the ACME CA requires External Account Binding: set {EAB_KID_ENV} and {EAB_HMAC_ENV} "
                "from your CA's account page")
    detail = _DETAIL.search(text)
    if detail:
        why = detail.group(1).strip()
        if "dns" in why.lower() or "nxdomain" in why.lower():
            return f"DNS for {name} does not point here: {why}"
        if "timeout" in why.lower() or "connection refused" in why.lower() or "connect" in why.lower():
            return f"the CA could not reach http://{name}/ on port 80 (closed, or DNS points elsewhere): {why}"
        return f"the CA could not validate {name}: {why}"
    if ("connectionerror" in low or "connection refused" in low or "max retries" in low
            or "name or service not known" in low or "failed to establish" in low):
        return f"cannot reach the ACME server {directory} from the server (connection refused or no route)"
    if "certificate verify failed" in low:
        return f"the ACME server {directory} presents a certificate the server does not trust"
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.lower().startswith(("saving debug log", "ask for help", "see the logfile"))]
    return f"certbot failed: {lines[-1] if lines else 'no output'}"
