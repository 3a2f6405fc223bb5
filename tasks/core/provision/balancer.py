"""The site's load balancer as a plan: facts read by one probe, pure steps (packages, the edge's
certificate, HAProxy's configuration, the firewall), then the same `apply` as provision."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from tasks.core import parse, site
from tasks.core.commands import balancer as commands
from tasks.core.commands.probes import SSH_CONNECTION
from tasks.core.commands.provision import apt_install
from tasks.core.commands.service import HTTPS_PORT, UnitState
from tasks.core.connect import Host
from tasks.core.defaults import APT_TIMEOUT
from tasks.core.provision.facts import decoded
from tasks.core.provision.plan import Change, InstallFile, Run, StoreOffsiteSecret, notified, unified_diff
from tasks.core.provision.steps import firewall_changes, rules_missing
from tasks.core.provision.tls import LocalPair
from tasks.core.render import RenderedFile

RELOAD = "haproxy-reload"


@dataclass(frozen=True)
class BalancerFacts:
    installed_packages: frozenset[str]
    os_id: str
    config: str | None                 # HAProxy's configuration file, None when missing
    pem_meta: str                      # owner:group:mode of the edge's certificate and key, "" when missing
    pem_sha256: str
    haproxy: UnitState
    sshd_ports: tuple[int, ...]
    ufw_active: bool
    ufw_rules: tuple[parse.UfwRule, ...]
    servers: dict                      # site.ServerState of each app VM, as HAProxy's checks see it
    login_port: int | None = None
    client_ip: str | None = None

    @property
    def ours(self) -> bool:
        return bool(self.config and self.config.startswith(site.MARKER))


def facts_from_probe(text: str) -> BalancerFacts:
    b = parse.blocks(text)
    h = parse.key_values(b.get("host", []))
    f = parse.key_values(b.get("files", []))
    return BalancerFacts(
        installed_packages=frozenset(parse.dpkg_installed(b.get("packages", []))),
        os_id=h.get("os_id", ""),
        config=decoded(f.get("config", "-")),
        pem_meta=f.get("pem_meta", ""),
        pem_sha256=f.get("pem_sha256", ""),
        haproxy=UnitState.from_show(parse.key_values(b.get("haproxy", []))),
        sshd_ports=tuple(parse.sshd_ports(b.get("sshd", []))),
        ufw_active=parse.ufw_active(b.get("ufw", [])),
        ufw_rules=tuple(parse.ufw_rules(b.get("ufw_rules", []))),
        servers=site.servers_from_stat("\n".join(b.get("stat", []))),
    )


def balancer_facts(host: Host) -> BalancerFacts:
    output = host.run(commands.probe(), sudo=True, what="balancer probe")
    session = parse.key_values(host.run(SSH_CONNECTION, what="reading $SSH_CONNECTION").stdout.splitlines())
    client_ip, login_port = parse.ssh_connection(session.get("ssh_connection", ""))
    return dataclasses.replace(facts_from_probe(output.stdout), login_port=login_port, client_ip=client_ip)


def edge_pem(pair: LocalPair) -> bytes:
    """What HAProxy reads for a tls files pair: the chain, then the key."""
    return pair.fullchain.rstrip(b"\n") + b"\n" + pair.key.rstrip(b"\n") + b"\n"


def plan(facts: BalancerFacts, the_site: site.Site, config: str, name: str,
         pair: LocalPair | None = None) -> list[Change]:
    """Packages, the edge's certificate, HAProxy's configuration (checked by HAProxy before it is put in
    place), the firewall, then one reload when anything HAProxy reads changed."""
    missing = [p for p in commands.PACKAGES if p not in facts.installed_packages]
    steps = [Change("packages are installed: " + ", ".join(commands.PACKAGES)) if not missing else
             Change(f"installed {', '.join(missing)}", True, plan=f"install {', '.join(missing)}",
                    action=Run(apt_install(missing), "apt-get install", timeout=APT_TIMEOUT,
                               status=f"apt-get install {' '.join(missing)}"))]
    steps += certificate(facts, the_site, name, pair)
    steps.append(configuration(facts, config))
    ports = [80] + ([HTTPS_PORT] if the_site.balancer.tls != "off" else [])
    steps += firewall_changes(facts, rules_missing(ports, facts),
                              "ufw allows SSH and HTTP" + (" and HTTPS" if len(ports) > 1 else ""))
    if RELOAD in notified(steps) or not facts.haproxy.running:
        steps.append(Change("reloaded HAProxy" if facts.haproxy.running else "started HAProxy", True,
                            plan="reload HAProxy" if facts.haproxy.running else "start HAProxy",
                            action=Run(commands.RELOAD, "reloading HAProxy")))
    else:
        steps.append(Change("HAProxy is running"))
    return steps


def certificate(facts: BalancerFacts, the_site: site.Site, name: str, pair: LocalPair | None) -> list[Change]:
    path = site.PATHS.pem
    mode = the_site.balancer.tls
    if mode == "off":
        return [Change("TLS is off at the balancer (balancer.tls: off)")]
    reload = frozenset({RELOAD})
    if mode == "self-signed":
        if facts.pem_meta == "root:root:600":
            return [Change(f"the balancer's self-signed certificate is in {path} (root, 0600)")]
        return [Change(f"made a self-signed certificate for {name} ({path}, root 0600)", True,
                       plan=f"make a self-signed certificate for {name} in {path}",
                       action=Run(commands.self_signed_pem(name), "making the certificate", show_output=True),
                       notifies=reload)]
    assert pair is not None
    content = edge_pem(pair)
    if facts.pem_sha256 == hashlib.sha256(content).hexdigest() and facts.pem_meta == "root:root:600":
        return [Change(f"the certificate and key are in {path} (root, 0600)")]
    verb = "replaced" if facts.pem_meta else "stored"
    return [Change(f"{path.parent} is root's (0700)", action=Run(f"install -d -m 0700 -o root -g root {path.parent}",
                                                                 "making the certificates folder")),
            Change(f"{verb} the certificate and key in {path} (root, 0600)", True,
                   plan=f"{verb[:-1]} the certificate and key in {path} (root, 0600)",
                   action=StoreOffsiteSecret(path, content), notifies=reload)]


def configuration(facts: BalancerFacts, config: str) -> Change:
    path = site.PATHS.config
    if facts.config == config:
        return Change(f"HAProxy's configuration is up to date ({path})")
    aside = "" if facts.ours or facts.config is None else f" (the one there is kept as {path}.before-lsvm)"
    verb = "updated" if facts.ours else "wrote"
    return Change(f"{verb} HAProxy's configuration {path}{aside}", True,
                  plan=f"{'update' if facts.ours else 'write'} HAProxy's configuration {path}{aside}",
                  diff=unified_diff(path, facts.config or "", config),
                  action=InstallFile(RenderedFile(path, config, "0644", "root", "root"), check="haproxy"),
                  notifies=frozenset({RELOAD}))
