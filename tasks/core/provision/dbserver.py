"""The site's database VM as a plan: facts read by one probe, pure steps (packages, the certificate,
PostgreSQL's settings and the app VMs' hostssl lines, the role and its database, the firewall), then
the same `apply` as provision. Its certificate and the role's password then go to the app VMs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tasks.core import parse
from tasks.core.commands import dbserver as commands
from tasks.core.commands.probes import SSH_CONNECTION
from tasks.core.commands.provision import apt_install
from tasks.core.commands.tls import is_ip
from tasks.core.connect import Host
from tasks.core.defaults import APT_TIMEOUT
from tasks.core.profile import Profile
from tasks.core.provision.facts import decoded
from tasks.core.provision.plan import Change, Run
from tasks.core.provision.steps import firewall_changes, rules_missing, same_source

SECRET_META = "root:root:600"


@dataclass(frozen=True)
class DatabaseVMFacts:
    installed_packages: frozenset[str]
    os_id: str
    version: str                      # the cluster's ("" when PostgreSQL is not installed)
    conf: str | None                  # our conf.d drop-in
    hba: bool                         # every app VM's hostssl line is in pg_hba.conf
    hba_marked: int                   # lines of ours in it (commands.MARK): more than the app VMs' are stale
    active: bool
    role_createdb: str                # "t", "f", or "" (no role)
    database: bool
    secret_meta: str
    login: bool                       # the stored password logs in over TLS
    key_meta: str
    names: tuple[str, ...]            # the certificate's subjectAltName entries ("IP Address:10.0.0.5")
    sshd_ports: tuple[int, ...]
    ufw_active: bool
    ufw_rules: tuple[parse.UfwRule, ...]
    login_port: int | None = None
    client_ip: str | None = None


def facts_from_probe(text: str) -> DatabaseVMFacts:
    b = parse.blocks(text)
    h = parse.key_values(b.get("host", []))
    pg = parse.key_values(b.get("postgres", []))
    cert = parse.key_values(b.get("certificate", []))
    return DatabaseVMFacts(
        installed_packages=frozenset(parse.dpkg_installed(b.get("packages", []))),
        os_id=h.get("os_id", ""),
        version=pg.get("version", ""),
        conf=decoded(pg.get("conf") or "-"),
        hba=pg.get("hba") == "yes",
        hba_marked=int(pg["hba_marked"]) if pg.get("hba_marked", "").isdigit() else 0,
        active=pg.get("active") == "active",
        role_createdb=pg.get("role", ""),
        database=pg.get("db") == "1",
        secret_meta=pg.get("secret_meta", ""),
        login=pg.get("login") == "yes",
        key_meta=cert.get("key_meta", ""),
        names=tuple(n for n in cert.get("names", "").split(",") if n),
        sshd_ports=tuple(parse.sshd_ports(b.get("sshd", []))),
        ufw_active=parse.ufw_active(b.get("ufw", [])),
        ufw_rules=tuple(parse.ufw_rules(b.get("ufw_rules", []))),
    )


def database_vm_facts(host: Host, profile: Profile, sources: tuple[str, ...]) -> DatabaseVMFacts:
    output = host.run(commands.probe(profile, sources), sudo=True, what="database VM probe")
    session = parse.key_values(host.run(SSH_CONNECTION, what="reading $SSH_CONNECTION").stdout.splitlines())
    client_ip, login_port = parse.ssh_connection(session.get("ssh_connection", ""))
    return dataclasses.replace(facts_from_probe(output.stdout), login_port=login_port, client_ip=client_ip)


def certificate_name(name: str) -> str:
    """How openssl lists a subjectAltName entry for `name`."""
    return f"IPAddress:{name}" if is_ip(name) else f"DNS:{name}"


def plan(facts: DatabaseVMFacts, profile: Profile, sources: tuple[str, ...]) -> list[Change]:
    """Packages, the certificate for the address the app VMs connect to, PostgreSQL's settings and their
    hostssl lines (one restart when any changed), the role (CREATEDB) and its database with a password
    made here, then a firewall that lets only the app VMs reach PostgreSQL."""
    db = profile.database
    missing = [p for p in commands.PACKAGES if p not in facts.installed_packages]
    steps = [Change("packages are installed: " + ", ".join(commands.PACKAGES)) if not missing else
             Change(f"installed {', '.join(missing)}", True, plan=f"install {', '.join(missing)}",
                    action=Run(apt_install(missing), "apt-get install", timeout=APT_TIMEOUT,
                               status=f"apt-get install {' '.join(missing)}"))]
    name = db.address
    fresh_certificate = not (facts.key_meta == "postgres:postgres:600" and certificate_name(name) in facts.names)
    if fresh_certificate:
        steps.append(Change(f"made a self-signed certificate for {name} ({commands.CERT}; its key postgres's, 0600)",
                            True, plan=f"make a self-signed certificate for {name} in {commands.CERT}",
                            action=Run(commands.make_certificate(name), "making the certificate", show_output=True)))
    else:
        steps.append(Change(f"PostgreSQL's certificate is for {name} ({commands.CERT})"))
    settings = f"TLS only, scram-sha-256, {db.user} from {', '.join(sources)}"
    restart = facts.conf != commands.server_conf() or not facts.active or fresh_certificate
    if not restart and facts.hba and facts.hba_marked == len(sources):
        steps.append(Change(f"PostgreSQL {facts.version} listens: {settings}"))
    else:
        # Only app VMs' lines (new ones in, those of addresses gone out): a reload, which drops no session
        # of the app VMs serving meanwhile.
        how = "restarted" if restart else "reloaded"
        steps.append(Change(f"configured PostgreSQL: {settings} ({how})", True,
                            plan=f"configure PostgreSQL: {settings} ({how[:-1]})",
                            action=Run(commands.configure(profile, sources, restart=restart), "configuring PostgreSQL",
                                       timeout=APT_TIMEOUT)))
    secret = profile.remote.database_env
    if facts.role_createdb == "t" and facts.database and facts.secret_meta == SECRET_META and facts.login:
        steps.append(Change(f"role {db.user} (CREATEDB) and database {db.name} exist; the password logs in "
                            f"({secret}, root 0600)"))
    else:
        steps.append(Change(f"role {db.user} (CREATEDB) and database {db.name} ready, the password generated here "
                            f"into {secret} (root, 0600)", True,
                            plan=f"create role {db.user} (CREATEDB) and database {db.name}, a password generated here",
                            action=Run(commands.ensure_site_role(profile), "creating the PostgreSQL role and database")))
    port = db.port
    wanted = rules_missing([], facts)
    for source in sources:
        if not any(rule.covers(port) and same_source(rule.source, source) for rule in facts.ufw_rules):
            wanted.append((commands.allow_app_vm(source, port), f"{port}/tcp from {source}"))
    steps += firewall_changes(facts, wanted, f"ufw allows SSH, and PostgreSQL from {', '.join(sources)} alone")
    gone = [rule.source for rule in facts.ufw_rules if rule.comment == commands.MARK and rule.covers(port)
            and not any(same_source(rule.source, source) for source in sources)]
    if gone:
        steps.append(Change(f"ufw no longer allows {port}/tcp from {', '.join(gone)} (no app VM of the site)", True,
                            plan=f"remove ufw's rules for {port}/tcp from {', '.join(gone)} (no app VM of the site)",
                            action=Run(commands.remove_other_app_vm_rules(port, sources), "ufw delete")))
    return steps
