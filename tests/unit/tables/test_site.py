"""A site: the site file's checks, what a site's profile must hold, the balancer's HAProxy configuration
(checked by the real HAProxy), what its runtime API answers, the balancer's plan, and the SECRET_KEY step
that gives every app VM the site's key."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.core import parse, site
from tasks.core.commands import balancer as balancer_commands
from tasks.core.commands import probes
from tasks.core.commands import upgrade as upgrade_commands
from tasks.core.errors import ProfileError, RemoteError, UsageError
from tasks.core.profile import parse_profile
from tasks.core.provision import balancer, steps
from tasks.core.provision.facts import provision_facts_from_probe
from tasks.core.provision.plan import AdminRequest, InstallFile, Run, RunWithSecret, StoreOffsiteSecret
from tests.unit.samples import DATA

PROFILE = """\
public_url: http://labels.example.org
database:
  engine: postgresql
  host: 10.0.0.5
  sslmode: require
media:
  storage: s3://team/labels
  s3_endpoint: http://10.0.0.6:9000
"""
SITE = """\
profile: labels.yaml
apps:
  - app1
  - host: app2
    address: 10.0.0.12
balancer:
  host: lb
"""


def parsed(text: str = SITE) -> site.Site:
    return site.parse_site(text, source="/sites/site.yaml")


def test_the_site_file_names_the_hosts_and_the_profile_beside_it():
    found = parsed()
    assert found.apps == (site.AppVM("app1"), site.AppVM("app2", "10.0.0.12"))
    assert found.balancer == site.BalancerSettings(host="lb")
    assert found.hosts == ("lb", "app1", "app2")
    assert found.profile_path == Path("/sites/labels.yaml")


@pytest.mark.parametrize("text, problem", [
    ("", "the site file is empty"),
    ("profile: p.yaml\napps: [a]\nbalancer: {host: lb}\nextra: 1\n", "site.yaml:4: unknown key 'extra'"),
    ("apps: [a]\nbalancer: {host: lb}\n", "'profile' must name"),
    ("profile: p.yaml\napps: [a]\n", "'balancer.host' must name"),
    ("profile: p.yaml\napps: []\nbalancer: {host: lb}\n", "'apps' must list"),
    ("profile: p.yaml\napps: ['a;b']\nbalancer: {host: lb}\n", "each app VM is an ssh_config alias"),
    ("profile: p.yaml\napps: [{host: a, port: 1}]\nbalancer: {host: lb}\n", "each app VM is an ssh_config alias"),
    ("profile: p.yaml\napps: [{host: a, address: 'x y'}]\nbalancer: {host: lb}\n", "the address of a must be"),
    ("profile: p.yaml\napps: [a, lb]\nbalancer: {host: lb}\n", "a host is named twice"),
    ("profile: p.yaml\napps: [a]\nbalancer: {host: lb, tls: files}\n", "needs balancer.certificate and balancer.key"),
    ("profile: p.yaml\napps: [a]\nbalancer: {host: lb, key: k.pem}\n", "are for balancer.tls files"),
    ("profile: p.yaml\napps: [a]\nbalancer: {host: lb, tls: acme}\n", "'balancer.tls' must be one of: off, self-signed, files"),
    ("profile: p.yaml\napps: [a]\nbalancer: {host: lb, check_interval_ms: 50}\n", "between 200 and 60000"),
])
def test_a_wrong_site_file_is_one_line_naming_what_is_wrong(text, problem):
    with pytest.raises(ProfileError) as caught:
        parsed(text)
    assert problem in str(caught.value)


@pytest.mark.parametrize("edit, problem", [
    (("", ""), None),
    (("  engine: postgresql\n  host: 10.0.0.5\n  sslmode: require\n", "  engine: sqlite\n"), "share one database"),
    (("  engine: postgresql\n  host: 10.0.0.5\n  sslmode: require\n", "  engine: postgresql\n"), "share one database"),
    (("storage: s3://team/labels", "storage: local"), "share the uploads"),
    (("public_url: http://labels.example.org\n", ""), "public_url must be"),
    (("public_url: http://", "public_url: https://"), "disagree"),
    (("public_url: http://labels.example.org\n", "public_url: http://labels.example.org\ntls:\n  mode: self-signed\n"
                                                 "server_name: labels.example.org\n"), "TLS ends at the balancer"),
])
def test_a_site_profile_shares_the_database_and_the_bucket(edit, problem):
    profile = parse_profile(PROFILE.replace(*edit))
    found = site.profile_problem(parsed(), profile)
    assert (found is None) if problem is None else (problem in found), found


def test_https_at_the_edge_wants_an_https_public_url():
    profile = parse_profile(PROFILE.replace("http://", "https://"))
    assert site.profile_problem(parsed(SITE + "  tls: self-signed\n"), profile) is None


def config_for(site_text: str = SITE, profile_text: str = PROFILE) -> str:
    return site.balancer_config(parsed(site_text), parse_profile(profile_text),
                                {"app1": "10.0.0.11", "app2": "10.0.0.12"})


def test_the_balancer_checks_each_app_vm_and_answers_for_maintenance_when_none_is_up():
    config = config_for()
    assert config.startswith(site.MARKER)
    assert "server app1 10.0.0.11:80 check\n" in config and "server app2 10.0.0.12:80 check\n" in config
    assert "http-check send meth GET uri /health ver HTTP/1.1 hdr Host labels.example.org\n" in config
    assert "inter 1000 fastinter 1000 downinter 1000 fall 2 rise 2 on-marked-down shutdown-sessions" in config
    assert f"stats socket {site.PATHS.socket} mode 600 level admin" in config
    assert "nbsrv(app_vms) eq 0" in config and "application/json" in config
    assert "bind :443" not in config and "timeout server 300s" in config
    tls = config_for(SITE + "  tls: self-signed\n  check_interval_ms: 500\n", PROFILE.replace("http://l", "https://l"))
    assert f"bind :443 ssl crt {site.PATHS.pem} alpn h2,http/1.1" in tls
    assert "redirect scheme https code 301 unless { ssl_fc }" in tls and "inter 500 " in tls


@pytest.mark.parametrize("tls", ["off", "self-signed"])
def test_haproxy_accepts_the_configuration(tls, tmp_path):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(haproxy).exists(), "HAProxy is needed here (.ci/run installs Debian's)"
    config = config_for(SITE + f"  tls: {tls}\n",
                        PROFILE.replace("http://l", "https://l") if tls != "off" else PROFILE)
    # Paths of the balancer VM, made here: a certificate for the edge, no chroot, a socket in tmp.
    pem = tmp_path / "edge.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=labels.example.org", "-keyout", str(pem), "-out", str(pem) + ".crt"],
                   check=True, capture_output=True)
    pem.write_bytes(Path(str(pem) + ".crt").read_bytes() + pem.read_bytes())
    local = (config.replace(str(site.PATHS.pem), str(pem)).replace(str(site.PATHS.socket), str(tmp_path / "s"))
             .replace("    chroot /var/lib/haproxy\n", "").replace("    user haproxy\n    group haproxy\n", ""))
    (tmp_path / "haproxy.cfg").write_text(local)
    checked = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


STAT = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,
label_studio,FRONTEND,,,3,5,262120,40,1,2,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,1,0,4,,,,
app_vms,app1,0,0,2,4,,30,1,2,,0,,0,0,0,0,UP,1,1,0,0,0,50,0,,1,3,1,,30,,2,1,,3,L7OK,200,3,
app_vms,app2,0,0,0,2,,10,1,2,,0,,0,0,0,0,DRAIN,1,1,0,1,1,5,2,,1,3,2,,10,,2,0,,2,L4TOUT,,2001,
app_vms,BACKEND,0,0,2,5,,40,1,2,0,0,,0,0,0,0,UP,1,1,0,,0,50,0,,1,3,0,,40,,1,1,,4,,,,
"""


def test_the_runtime_api_gives_each_app_vm_its_state_and_open_requests():
    found = site.servers_from_stat(STAT)
    assert found == {"app1": site.ServerState("UP", 2, "L7OK"), "app2": site.ServerState("DRAIN", 0, "L4TOUT")}
    assert found["app1"].up and not found["app2"].up


def test_an_app_vm_whose_address_changed_is_found_at_the_balancer():
    # HAProxy 2.6's own `show stat` columns (Debian 12), its addr column among them.
    header = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,check_status,check_code,agent_health,addr,"
              "cookie,mode\n")
    text = header + "app_vms,app2,0,0,0,0,,0,DOWN,L4TOUT,,,172.17.0.7:80,,http\n"
    found = site.servers_from_stat(text)["app2"]
    assert found.addr == "172.17.0.7:80"
    assert found.elsewhere_than("172.17.0.8") and not found.elsewhere_than("172.17.0.7")
    assert not site.ServerState("UP", 0, "L7OK", "[fd00::7]:80").elsewhere_than("fd00::7")
    assert not site.ServerState("UP", 0, "L7OK").elsewhere_than("172.17.0.8")     # no addr column: not moved
    assert site.servers_from_stat("Unknown command\n") == {}


BARE = """\
[packages]
[host]
os_id=debian
[files]
config=-
pem_meta=
pem_sha256=
[haproxy]
LoadState=not-found
[sshd]
port 22
[ufw]
[ufw_rules]
[stat]
"""


def test_a_bare_balancer_gets_haproxy_its_configuration_and_a_firewall():
    found = balancer.facts_from_probe(BARE)
    the_site = parsed(SITE + "  tls: self-signed\n")
    config = config_for(SITE + "  tls: self-signed\n", PROFILE.replace("http://l", "https://l"))
    changes = balancer.plan(found, the_site, config, "labels.example.org")
    lines = [c.line(True) for c in changes]
    assert lines[0] == "would install haproxy, socat, openssl, ufw"
    assert "would make a self-signed certificate for labels.example.org in /etc/haproxy/certs/label-studio.pem" in lines
    assert "would write HAProxy's configuration /etc/haproxy/haproxy.cfg" in lines
    assert "would allow 443/tcp in ufw" in lines and lines[-1] == "would start HAProxy"
    install = next(c.action for c in changes if isinstance(c.action, InstallFile))
    assert install.check == "haproxy" and install.file.content == config and install.file.mode == "0644"


def test_a_balancer_as_wanted_changes_nothing_and_a_foreign_configuration_is_kept_aside():
    config = config_for()
    probe = (BARE.replace("[packages]\n", "[packages]\n" + "".join(f"{p} installed\n" for p in balancer_commands.PACKAGES))
             .replace("config=-", "config=" + __import__("base64").b64encode(config.encode()).decode())
             .replace("LoadState=not-found", "LoadState=loaded\nActiveState=active\nSubState=running")
             .replace("[ufw]\n", "[ufw]\nStatus: active\n").replace("[ufw_rules]\n", "[ufw_rules]\nufw allow 22/tcp\nufw allow 80/tcp\n"))
    found = balancer.facts_from_probe(probe)
    assert found.ours
    changes = balancer.plan(found, parsed(), config, "labels.example.org")
    assert [c.what for c in changes if c.changed] == []
    foreign = dataclasses.replace(found, config="global\n    daemon\n")
    [change] = [c for c in balancer.plan(foreign, parsed(), config, "x") if c.changed and "configuration" in c.what]
    assert change.line(False) == ("wrote HAProxy's configuration /etc/haproxy/haproxy.cfg (the one there is kept as "
                                  "/etc/haproxy/haproxy.cfg.before-lsvm)")


def test_a_tls_files_pair_goes_root_only_into_the_one_file_haproxy_reads():
    pair = type("Pair", (), {"fullchain": b"CHAIN\n", "key": b"KEY"})()
    found = balancer.facts_from_probe(BARE)
    changes = balancer.certificate(found, parsed(SITE + "  tls: files\n  certificate: c.pem\n  key: k.pem\n"),
                                   "labels.example.org", pair)
    store = next(c.action for c in changes if isinstance(c.action, StoreOffsiteSecret))
    assert store.path == site.PATHS.pem and store.content == b"CHAIN\nKEY\n"
    held = dataclasses.replace(found, pem_meta="root:root:600", pem_sha256=hashlib.sha256(b"CHAIN\nKEY\n").hexdigest())
    assert not any(c.changed for c in balancer.certificate(held, parsed(SITE + "  tls: files\n  certificate: c\n  key: k\n"),
                                                           "x", pair))


def test_every_app_vm_gets_the_site_key_and_restarts_only_when_it_had_another():
    profile = parse_profile(PROFILE)
    key = "k" * 64
    provisioned = provision_facts_from_probe((DATA / "provision_probe_provisioned.txt").read_text())
    change = steps.label_studio_secret_key(provisioned, profile, key)
    assert change.changed and change.notifies == frozenset({"restart"})
    assert isinstance(change.action, RunWithSecret) and change.action.secret == (key + "\n").encode()
    assert key not in change.what and key not in change.action.script
    same = dataclasses.replace(provisioned, secret_key_sha256=hashlib.sha256(key.encode()).hexdigest())
    assert not steps.label_studio_secret_key(same, profile, key).changed
    bare = provision_facts_from_probe((DATA / "provision_probe_bare.txt").read_text())
    first = steps.label_studio_secret_key(bare, profile, key)
    assert first.changed and first.notifies == frozenset() and first.line(True).startswith("would set the SECRET_KEY")
    assert isinstance(steps.label_studio_secret_key(bare, profile).action, Run)   # no site: a key of its own


def test_each_app_vm_is_marked_as_the_sites_and_one_vm_tasks_refuse_there():
    profile = parse_profile(PROFILE)
    marker = site.member_marker(parsed(), "app2")
    assert site.member_of(marker) == "lb" and "apps=app1 app2\n" in marker
    assert site.member_of(None) is None and site.member_of("") is None and site.member_of("someone's file") is None
    for task in site.NOT_ON_AN_APP_VM:
        with pytest.raises(UsageError, match=rf"app2 is an app VM of a site \(balancer lb\): `{task}` on it alone"):
            site.refuse_member("app2", marker, task)
        site.refuse_member("vm", "", task)   # no marker: a VM of its own
    provisioned = provision_facts_from_probe((DATA / "provision_probe_provisioned.txt").read_text())
    [new] = steps.site_membership(provisioned, profile, marker)
    assert new.changed and isinstance(new.action, InstallFile)
    assert (new.action.file.path, new.action.file.mode, new.action.file.owner) == (
        profile.remote.site_marker, "0644", "root")
    marked = dataclasses.replace(provisioned, files={**provisioned.files, "site_marker": marker})
    assert [c.changed for c in steps.site_membership(marked, profile, marker)] == [False]
    assert steps.site_membership(marked, profile, None) == []   # plain provision leaves it as it is
    planned = steps.plan(provisioned, profile, AdminRequest("admin@example.com"), site_marker=marker)
    assert any(c.what.startswith("created site membership") for c in planned if c.changed)


def test_balancer_scripts_are_valid_posix_shell():
    scripts = [balancer_commands.probe(), balancer_commands.set_state("app-1.x", "drain"),
               balancer_commands.wait_drained("app1", 300), balancer_commands.wait_status("app1", "UP", 60),
               balancer_commands.wait_any_up(["app1", "app-2"], 60),
               balancer_commands.install_config(site.PATHS.config.parent / "staged"),
               balancer_commands.self_signed_pem("labels.example.org"), balancer_commands.self_signed_pem("10.0.0.1"),
               upgrade_commands.switch_release(parse_profile(PROFILE), "1.23.2"),
               upgrade_commands.migration_plan(parse_profile(PROFILE), "1.23.2")]
    for script in scripts:
        checked = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
        assert checked.returncode == 0, (script, checked.stderr)


# ------------------------------------------------------------------------------------------------
# The app VMs' firewall: HTTP from the balancer (and the site's admin networks) alone


def test_the_site_file_says_who_else_may_reach_the_app_vms():
    found = parsed(SITE + "  from_address: 10.0.0.2\napp_firewall:\n  also_from: [192.0.2.7, 10.9.0.0/16, 10.1.2.3/32]\n")
    assert found.balancer.from_address == "10.0.0.2"
    assert found.also_from == ("192.0.2.7", "10.9.0.0/16", "10.1.2.3")
    assert parsed().also_from == ()
    for wrong, says in (("app_firewall:\n  also_from: [everyone]\n", "'everyone' is not an IP address or network"),
                        ("app_firewall:\n  allow: [10.0.0.1]\n", "takes one key, also_from"),
                        ("app_firewall:\n  also_from: 10.0.0.1\n", "must be a list"),
                        ("  from_address: lb.example.org\n", "must be an IP address")):
        with pytest.raises(ProfileError, match=says):
            parsed(SITE + wrong)


def test_the_balancers_source_address_is_checked_before_it_reaches_a_rule():
    assert site.route_source("10.0.0.2\n", "app1") == "10.0.0.2"
    assert site.route_source("fd00::2\n", "app1") == "fd00::2"
    for answer in ("", "10.0.0.2; ufw disable", "Traceback (most recent call last):"):
        with pytest.raises(RemoteError, match="no source address for the route to app1"):
            site.route_source(answer, "app1")
    script = probes.source_toward("app-1.example.org")
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0
    here = subprocess.run(["sh", "-c", script.replace("app-1.example.org", "127.0.0.1")], capture_output=True, text=True)
    assert site.route_source(here.stdout, "127.0.0.1") == "127.0.0.1"


def _app_firewall(*lines, active=True):
    provisioned = provision_facts_from_probe((DATA / "provision_probe_provisioned.txt").read_text())
    rules = tuple(parse.ufw_rules(list(lines)))
    found = dataclasses.replace(provisioned, ufw_rules=rules, ufw_active=active, sshd_ports=(22,), login_port=22,
                                client_ip=None)
    return steps.firewall(found, parse_profile(PROFILE), ("10.0.0.2", "192.0.2.7"))


def test_an_app_vm_lets_the_balancer_alone_reach_http():
    # As a single VM's provision left it: HTTP from anywhere. The balancer's rules go in first, then that one goes.
    changes = _app_firewall("ufw allow 22/tcp", "ufw allow 80/tcp")
    done = [c.action.script for c in changes if c.changed]
    assert done == ["ufw allow from 10.0.0.2 to any port 80 proto tcp",
                    "ufw allow from 192.0.2.7 to any port 80 proto tcp", "ufw delete allow 80/tcp"]
    # As wanted: nothing changes.
    again = _app_firewall("ufw allow 22/tcp", "ufw allow from 10.0.0.2 to any port 80 proto tcp",
                          "ufw allow from 192.0.2.7 to any port 80 proto tcp")
    assert not any(c.changed for c in again)
    assert "ufw allows SSH, and HTTP from 10.0.0.2, 192.0.2.7 alone" in [c.what for c in again]
    # Someone else's rules are named, not removed; SSH is never touched.
    theirs = _app_firewall("ufw allow 22/tcp", "ufw allow 'Nginx Full'", "ufw allow from 10.0.0.1 to any port 80 proto tcp",
                           "ufw allow from 10.0.0.2 to any port 80 proto tcp",
                           "ufw allow from 192.0.2.7 to any port 80 proto tcp")
    assert not any(c.changed for c in theirs)
    [warning] = [c.what for c in theirs if c.what.startswith("warning")]
    assert "let anyone, 10.0.0.1 reach port 80" in warning
    # A bare VM: SSH first, then the balancer, then ufw on.
    bare = _app_firewall(active=False)
    assert [c.action.script for c in bare if c.changed][:3] == [
        "ufw allow 22/tcp", "ufw allow from 10.0.0.2 to any port 80 proto tcp",
        "ufw allow from 192.0.2.7 to any port 80 proto tcp"]
    assert bare[-1].what == "enabled ufw (SSH allowed first)"


# ------------------------------------------------------------------------------------------------
# A database VM: PostgreSQL set up by site-provision for the app VMs alone

DB_PROFILE = PROFILE.replace("  host: 10.0.0.5\n  sslmode: require\n", "  host: 10.0.0.5\n  ca_file: database-ca.pem\n")


def test_the_site_file_may_name_a_database_vm():
    found = parsed(SITE + "database:\n  host: db\n")
    assert found.database == site.DatabaseRole("db") and found.hosts == ("db", "lb", "app1", "app2")
    assert parsed().database is None
    for wrong in ("database:\n  host: lb\n", "database: db\n", "database:\n  host: db\n  port: 5432\n"):
        with pytest.raises(ProfileError):
            parsed(SITE + wrong)
    with_vm = parsed(SITE + "database:\n  host: db\n")
    assert site.profile_problem(with_vm, parse_profile(DB_PROFILE)) is None
    assert "database.ca_file names where site-provision keeps" in site.profile_problem(with_vm, parse_profile(PROFILE))


def _database_vm(probe_text: str):
    from tasks.core.provision import dbserver
    return dbserver.facts_from_probe(probe_text)


BARE_DB = "[packages]\n[host]\nos_id=debian\n[postgres]\nversion=\nconf=\nhba=no\nactive=inactive\nsecret_meta=\nlogin=no\n" \
          "[certificate]\nkey_meta=\nnames=\n[sshd]\nport 22\n[ufw]\nStatus: inactive\n[ufw_rules]\n"


def test_a_bare_database_vm_gets_postgresql_for_the_app_vms_alone():
    from tasks.core.commands import dbserver as commands
    from tasks.core.provision import dbserver
    profile = parse_profile(DB_PROFILE, host="db")
    sources = ("10.0.0.11", "10.0.0.12")
    changes = dbserver.plan(_database_vm(BARE_DB), profile, sources)
    done = [c.what for c in changes if c.changed]
    assert done[0] == "installed postgresql, openssl, ufw"
    assert done[1].startswith("made a self-signed certificate for 10.0.0.5")
    assert done[2] == "configured PostgreSQL: TLS only, scram-sha-256, labelstudio from 10.0.0.11, 10.0.0.12 (restarted)"
    assert done[3].startswith("role labelstudio (CREATEDB) and database labelstudio ready")
    scripts = [c.action.script for c in changes if c.changed]
    mark = "comment 'labelstudio-vm site app VM'"
    assert f"ufw allow from 10.0.0.11 to any port 5432 proto tcp {mark}" in scripts
    assert f"ufw allow from 10.0.0.12 to any port 5432 proto tcp {mark}" in scripts
    assert scripts.index("ufw allow 22/tcp") < scripts.index(f"ufw allow from 10.0.0.11 to any port 5432 proto tcp {mark}")
    assert not any("5432/tcp" in s and "from" not in s for s in scripts)    # never from anywhere
    assert "hostssl all labelstudio 10.0.0.11/32 scram-sha-256" in commands.configure(profile, sources)
    assert "ssl = on\n" in commands.server_conf() and "listen_addresses = '*'" in commands.server_conf()
    for script in (commands.probe(profile, sources), *scripts):
        assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0, script


def _database_vm_probe(hba: str, rules: str) -> str:
    """What the database VM's probe prints for a VM set up as the plan wants, but for `hba` and `rules`."""
    import base64
    from tasks.core.commands import dbserver as commands
    conf = base64.b64encode(commands.server_conf().encode()).decode()
    return (f"[packages]\npostgresql installed\nopenssl installed\nufw installed\n"
            f"[host]\nos_id=debian\n[postgres]\nversion=17\nconf={conf}\nhba={hba}\nactive=active\nrole=t\ndb=1\n"
            "secret_meta=root:root:600\nlogin=yes\n[certificate]\nkey_meta=postgres:postgres:600\n"
            f"names=IPAddress:10.0.0.5\n[sshd]\nport 22\n[ufw]\nStatus: active\n[ufw_rules]\nufw allow 22/tcp\n{rules}")


def test_a_database_vm_as_wanted_changes_nothing():
    from tasks.core.provision import dbserver
    profile = parse_profile(DB_PROFILE, host="db")
    ready = _database_vm_probe("yes\nhba_marked=1", "ufw allow from 10.0.0.11 to any port 5432 proto tcp\n")
    changes = dbserver.plan(_database_vm(ready), profile, ("10.0.0.11",))
    assert not any(c.changed for c in changes), [c.what for c in changes if c.changed]
    # A certificate for another name is made again, and PostgreSQL restarted to read it.
    other = ready.replace("names=IPAddress:10.0.0.5", "names=IPAddress:10.0.0.9")
    again = [c.what for c in dbserver.plan(_database_vm(other), profile, ("10.0.0.11",)) if c.changed]
    assert again[0].startswith("made a self-signed certificate for 10.0.0.5") and again[1].startswith("configured")
    # A role without CREATEDB (made by hand) gets it.
    plain = ready.replace("role=t", "role=f")
    assert any(c.what.startswith("role labelstudio (CREATEDB)") and c.changed
               for c in dbserver.plan(_database_vm(plain), profile, ("10.0.0.11",)))


def test_a_new_app_vm_reloads_postgresql_and_drops_no_session():
    from tasks.core.provision import dbserver
    profile = parse_profile(DB_PROFILE, host="db")
    one_missing = _database_vm_probe("no", "")
    [configured] = [c for c in dbserver.plan(_database_vm(one_missing), profile, ("10.0.0.11",))
                    if c.what.startswith("configured")]
    assert configured.what.endswith("(reloaded)") and "systemctl reload postgresql" in configured.action.script
    assert "systemctl restart" not in configured.action.script


def test_the_lines_and_rules_of_an_address_gone_from_the_site_are_removed(tmp_path):
    from tasks.core.commands import dbserver as commands
    from tasks.core.commands.postgres import hba_update
    from tasks.core.provision import dbserver
    profile = parse_profile(DB_PROFILE, host="db")
    mark = "comment 'labelstudio-vm site app VM'"
    # app2 moved from .12 to .13; a rule and a line someone added by hand (no mark) are theirs and stay.
    moved = _database_vm_probe("no\nhba_marked=2", f"ufw allow from 10.0.0.11 to any port 5432 proto tcp {mark}\n"
                                                   f"ufw allow from 10.0.0.12 to any port 5432 proto tcp {mark}\n"
                                                   "ufw allow from 192.168.9.9 to any port 5432 proto tcp\n")
    sources = ("10.0.0.11", "10.0.0.13")
    changes = {c.what: c for c in dbserver.plan(_database_vm(moved), profile, sources) if c.changed}
    assert "configured PostgreSQL: TLS only, scram-sha-256, labelstudio from 10.0.0.11, 10.0.0.13 (reloaded)" in changes
    assert "ufw allows 5432/tcp from 10.0.0.13" in changes
    removal = changes["ufw no longer allows 5432/tcp from 10.0.0.12 (no app VM of the site)"]
    assert "10.0.0.12" not in removal.action.script       # the server's addresses never enter a script
    # The removal, run with a stand-in ufw that lists the rules as `ufw show added` does and logs deletions.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ufw").write_text(
        "#!/bin/sh\n"
        f"if [ \"$1\" = show ]; then printf '%s\\n' 'Added user rules (see ufw status for running firewall):' "
        f"\"ufw allow from 10.0.0.11 to any port 5432 proto tcp {mark}\" "
        f"\"ufw allow from 10.0.0.12 to any port 5432 proto tcp {mark}\" "
        f"\"ufw allow from 10.0.0.99 to any port 80 proto tcp {mark}\" "
        "'ufw allow from 192.168.9.9 to any port 5432 proto tcp' "
        f"\"ufw allow from \\$(touch{chr(32)}/tmp/x) to any port 5432 proto tcp {mark}\"; exit 0; fi\n"
        f"echo \"$*\" >> {tmp_path}/deleted\n")
    (bin_dir / "ufw").chmod(0o755)
    ran = subprocess.run(["sh", "-c", removal.action.script], env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "deleted").read_text() == "delete allow from 10.0.0.12 to any port 5432 proto tcp\n"
    # pg_hba: the wanted lines first, every other line of ours gone, the others kept in their order.
    hba = tmp_path / "pg_hba.conf"
    old_line = "hostssl all labelstudio 10.0.0.12/32 scram-sha-256 # labelstudio-vm site app VM"
    hba.write_text(f"{old_line}\nlocal all postgres peer\nhostssl all labelstudio 192.168.9.9/32 scram-sha-256\n")
    lines = commands.hba_lines(profile, sources)
    for _ in range(2):                                   # and again: nothing more changes
        subprocess.run(["sh", "-c", hba_update(str(hba), lines, commands.MARK)], check=True)
        assert hba.read_text().splitlines() == [*lines, "local all postgres peer",
                                                "hostssl all labelstudio 192.168.9.9/32 scram-sha-256"]
