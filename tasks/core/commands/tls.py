"""The scripts HTTPS needs on a server: certbot (http-01 through our nginx's webroot), certificate files
put in place for `tls.mode files`, and a self-signed certificate made on the server."""

from __future__ import annotations

import ipaddress
from pathlib import PurePosixPath

from tasks.core.commands import join, q
from tasks.core.profile import Profile

ENABLE_CERTBOT_TIMER = "systemctl enable --now certbot.timer"
CERTBOT_TIMEOUT = 600
SELF_SIGNED_DAYS = 825        # the longest validity browsers accept for a certificate people add by hand


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def certbot_certonly(profile: Profile, name: str, *, config: PurePosixPath | None, force: bool) -> str:
    """Obtain (or replace) the certificate of our lineage with http-01 answered from our webroot, which
    the nginx site serves on port 80. Secrets (EAB) come in `config`, a 0600 file, never in argv."""
    p = profile.remote
    acme = profile.tls.acme
    words = ["certbot", "certonly", "--non-interactive", "--agree-tos", "--webroot", "--webroot-path", p.acme_webroot,
             "--cert-name", profile.service.name, "--domains", name, "--server", acme.directory]
    words += ["--email", acme.email, "--no-eff-email"] if acme.email else ["--register-unsafely-without-email"]
    if force:
        words.append("--force-renewal")
    if config is not None:
        words += ["--config", config]
    return f"install -d -m 0755 -o root -g root {q(p.acme_webroot)} && {join(*words)} 2>&1"


def install_tls_files(profile: Profile, staged: PurePosixPath) -> str:
    """fullchain.pem, chain.pem (0644) and privkey.pem (root-only 0600) from `staged` into the TLS dir,
    each by rename: nginx never reads half a file."""
    tls_dir = profile.remote.tls_dir
    steps = [f"install -d -m 0755 -o root -g root {q(tls_dir.parent)}",
             f"install -d -m 0700 -o root -g root {q(tls_dir)}"]
    for name, mode in (("fullchain.pem", "0644"), ("chain.pem", "0644"), ("privkey.pem", "0600")):
        partial = tls_dir / f"{name}.lsvm-new"
        steps.append(f"install -m {mode} -o root -g root {q(staged / name)} {q(partial)} && "
                     f"mv -f {q(partial)} {q(tls_dir / name)}")
    return " && ".join(steps)


def self_signed_request(name: str, key: PurePosixPath, cert: PurePosixPath) -> str:
    """openssl making a P-256 key and a self-signed certificate for `name` (DNS name or IP address)."""
    san = f"IP:{name}" if is_ip(name) else f"DNS:{name}"
    return join("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-days", SELF_SIGNED_DAYS, "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}",
                "-keyout", key, "-out", cert)


def make_self_signed(profile: Profile, name: str) -> str:
    """A new key and self-signed certificate for `name` (DNS name or IP address), made on the server:
    the key never travels. Prints the certificate's SHA-256 fingerprint."""
    tls_dir = profile.remote.tls_dir
    full, chain, key = (tls_dir / n for n in ("fullchain.pem", "chain.pem", "privkey.pem"))
    new_key, new_cert = PurePosixPath(f"{key}.lsvm-new"), PurePosixPath(f"{full}.lsvm-new")
    request = self_signed_request(name, new_key, new_cert)
    return (f"install -d -m 0755 -o root -g root {q(tls_dir.parent)} && "
            f"install -d -m 0700 -o root -g root {q(tls_dir)} && "
            f"(umask 077 && {request} 2>/dev/null) && chmod 0644 {q(new_cert)} && "
            f"cp {q(new_cert)} {q(chain)}.lsvm-new && mv -f {q(chain)}.lsvm-new {q(chain)} && "
            f"mv -f {q(new_key)} {q(key)} && mv -f {q(new_cert)} {q(full)} && "
            f"openssl x509 -noout -fingerprint -sha256 -in {q(full)}")
