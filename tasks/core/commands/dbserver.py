"""The site's database VM: PostgreSQL from Debian on a VM of its own, for the app VMs alone. TLS with a
certificate made there for the address they connect to (the key never leaves it), one `hostssl` line per
app VM's address (scram-sha-256), the role (LOGIN CREATEDB: the data tasks restore into a new database and
switch by renames) and its database, a password generated there (root-only 0600, as for PostgreSQL on an
app VM). Pure builders, run as root; the firewall is provision's (steps.rules_missing)."""

from __future__ import annotations

import ipaddress
from pathlib import PurePosixPath

from tasks.core.commands import join, lines, q
from tasks.core.commands.postgres import cluster_probe, configure_cluster, ensure_role, export_password, psql_superuser
from tasks.core.commands.probes import FIREWALL_PROBE, OS_RELEASE
from tasks.core.commands.provision import ufw_allow_from
from tasks.core.commands.tls import self_signed_request
from tasks.core.database import PASSWORD_KEY
from tasks.core.profile import Profile

PACKAGES = ("postgresql", "openssl", "ufw")
CERT = PurePosixPath("/etc/postgresql/lsvm-server.crt")   # public: the app VMs verify the server with it
KEY = PurePosixPath("/etc/postgresql/lsvm-server.key")    # postgres's, 0600


def server_conf() -> str:
    """conf.d drop-in: every address, TLS with the certificate made here, SCRAM for every password."""
    return ("# Managed by labelstudio-vm: PostgreSQL for a site's app VMs (TLS only: hostssl lines).\n"
            "listen_addresses = '*'\n"
            "password_encryption = 'scram-sha-256'\n"
            "ssl = on\n"
            f"ssl_cert_file = '{CERT}'\n"
            f"ssl_key_file = '{KEY}'\n")


# Ends each pg_hba line and names each ufw rule this toolkit writes for an app VM: those of an address no
# longer in the site file are removed (a VM gone, or moved: its old address may be someone else's now).
MARK = "labelstudio-vm site app VM"


def hba_lines(profile: Profile, sources: tuple[str, ...]) -> list[str]:
    """The role from each app VM's address, over TLS only, to any database (the data tasks' restores
    connect to `postgres` to rename)."""
    user = profile.database.user
    return [f"hostssl all {user} {ipaddress.ip_network(source)} scram-sha-256 # {MARK}" for source in sources]


def allow_app_vm(source: str, port: int) -> str:
    return ufw_allow_from(source, port, MARK)


def remove_other_app_vm_rules(port: int, sources: tuple[str, ...]) -> str:
    """Every ufw rule of ours (MARK) for `port` from an address not among `sources`, deleted. The addresses
    the server lists stay in the shell's variables, checked by their shape; never in this script's text."""
    keep = " ".join(str(ipaddress.ip_network(source)) for source in sources) + " " + " ".join(sources)
    pattern = f"s/^ufw allow from \\([0-9A-Fa-f.:/]*\\) to any port {int(port)} proto tcp comment '{MARK}'$/\\1/p"
    return (f"ufw show added | sed -n {q(pattern)} | while read -r src; do "
            f"case {q(' ' + keep + ' ')} in *\" $src \"*) ;; "
            f"*) ufw delete allow from \"$src\" to any port {int(port)} proto tcp >/dev/null || exit 1;; esac; done")


def probe(profile: Profile, sources: tuple[str, ...]) -> str:
    """Every fact the database VM's plan compares against."""
    db = profile.database
    login = (f"{export_password(profile)} && PGSSLMODE=require PGCONNECT_TIMEOUT=5 "
             f"psql -X -q -t -A -h 127.0.0.1 -U {q(db.user)} -d {q(db.name)} -c 'select 1' >/dev/null 2>&1")
    return lines(
        "echo '[packages]'",
        f"dpkg-query -W -f='${{Package}} ${{db:Status-Status}}\\n' {join(*PACKAGES)} 2>/dev/null || true",
        "echo '[host]'",
        *OS_RELEASE,
        "echo '[postgres]'",
        *cluster_probe(profile, hba_lines(profile, sources), "rolcreatedb"),
        f"echo \"hba_marked=$(grep -c {q(f' # {MARK}$')} \"$conf/pg_hba.conf\" 2>/dev/null)\"",
        f"echo \"secret_meta=$(stat -c '%U:%G:%a' {q(profile.remote.database_env)} 2>/dev/null)\"",
        f"if [ -s {q(profile.remote.database_env)} ] && command -v psql >/dev/null && {login}; then echo login=yes; "
        "else echo login=no; fi; unset PGPASSWORD",
        "echo '[certificate]'",
        f"echo \"key_meta=$(stat -c '%U:%G:%a' {q(KEY)} 2>/dev/null)\"",
        f"echo \"names=$(openssl x509 -noout -ext subjectAltName -in {q(CERT)} 2>/dev/null | tail -n +2 | tr -d ' ')\"",
        *FIREWALL_PROBE,
    )


def make_certificate(name: str) -> str:
    """A key and a self-signed certificate for `name` (the address the app VMs connect to), made here:
    the key, postgres's 0600, never travels; the certificate is public."""
    new_key, new_cert = PurePosixPath(f"{KEY}.lsvm-new"), PurePosixPath(f"{CERT}.lsvm-new")
    return (f"(umask 077 && {self_signed_request(name, new_key, new_cert)} 2>/dev/null) && "
            f"chown postgres:postgres {q(new_key)} && chmod 0644 {q(new_cert)} && "
            f"mv -f {q(new_key)} {q(KEY)} && mv -f {q(new_cert)} {q(CERT)} && "
            f"openssl x509 -noout -fingerprint -sha256 -in {q(CERT)}")


def configure(profile: Profile, sources: tuple[str, ...], *, restart: bool = True) -> str:
    return configure_cluster(server_conf(), hba_lines(profile, sources), restart=restart, mark=MARK)


def ensure_site_role(profile: Profile) -> str:
    """The role, its database and its password (generated here when there is none) as for PostgreSQL on
    an app VM, then CREATEDB (a restore makes a new database and switches by renames)."""
    return (f"install -d -m 0755 -o root -g root {q(profile.remote.database_env.parent)} && {ensure_role(profile)} && "
            f"{psql_superuser(f'ALTER ROLE {chr(34)}{profile.database.user}{chr(34)} CREATEDB')} >/dev/null")


def status() -> str:
    """Whether PostgreSQL runs and accepts connections (site-status)."""
    return lines("echo \"active=$(systemctl is-active postgresql 2>/dev/null)\"",
                 "if pg_isready -q -h 127.0.0.1 2>/dev/null; then echo ready=yes; else echo ready=no; fi")


def read_certificate() -> str:
    return join("cat", CERT)


def read_password(profile: Profile) -> str:
    """The role's password from the root-only file: for the app VMs, on the SSH channel (never shown)."""
    return join("sed", "-n", f"s/^{PASSWORD_KEY}=//p", profile.remote.database_env)
