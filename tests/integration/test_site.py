"""A site: one Label Studio on two app VMs behind a load balancer VM (HAProxy from Debian), its data in
PostgreSQL on a VM of its own and its uploads in an S3 bucket served by `rclone serve s3` on another.

`fab site-provision` sets up every host from the site file: PostgreSQL on the database VM from bare Debian
(TLS with a certificate made there, hostssl for the app VMs alone, a password generated there), the first
app VM (it migrates the database), the second with the first one's SECRET_KEY, then the balancer from bare
Debian with an active /health check of each app VM. Proven with clients nobody on the team wrote (Label Studio's official SDK through the
balancer and on each app VM): sessions and API tokens are valid on either VM, an upload made on one is
served by the other; a rolling restart under load (bench.load's clients) fails no request; an app VM
killed with `docker kill` is taken out within seconds while the site keeps serving; a single VM's data
moves onto the site (its SDK view equal through the balancer).

Five VMs for one feature, on one Debian release (CI time; the app VMs start from the committed image of
a fresh provision, their database removed: the fresh provision itself is proven by test_provision.py).
The tests run in file order, each on the state the one before left."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from bench.load import run_load
from dev.lsclient import LabelStudio
from dev.testvm.image import NOPASSWD_USER
from tasks.core.commands import balancer as balancer_commands
from tests.integration.support.fab import Fab
from tests.integration.support.labelstudio import LABEL_CONFIG, api_token, png, sdk_view
from tests.integration.support.machines import (ADMIN_EMAIL, ADMIN_PASSWORD, provisioned_clone, start_clone,
                                                start_test_vm)
from tests.integration.support.servers import address, start_s3_host

pytestmark = pytest.mark.one_release("trixie")

KEY_ID, SECRET = "lsvm-site-key", "lsvm-site-secret/0123456789+ABC="
BUCKET = "lsvm-site"
APPS = ("app1", "app2")
# The release the site starts on; site-upgrade takes it to OLD (new migrations: every VM out, the first
# migrates), then to NEW (the provisioned image's, built there already; the same migrations as OLD: the
# app VMs roll one at a time).
FIRST, OLD, NEW = "1.22.0", "1.23.1", "1.23.2"
IMAGE_CONFIG = '<View><Image name="image" value="$image"/><Choices name="c" toName="image"><Choice value="a"/></Choices></View>'


class SiteFab(Fab):
    """`fab` with an ssh_config naming every VM of the site, run without -H."""

    machines: dict = {}

    def ssh_config(self):
        path = self.home / "ssh_config"
        path.write_text("".join(vm.ssh_config(alias, NOPASSWD_USER) for alias, vm in self.machines.items()))
        return path


class Site:
    def __init__(self, home, lb, apps, db, s3, fab, site_file, first_run):
        self.home, self.lb, self.apps, self.db, self.s3 = home, lb, apps, db, s3
        self.fab, self.site_file, self.first_run = fab, site_file, first_run
        self.url = f"http://127.0.0.1:{lb.http_port}"
        self.suite = "trixie"

    def run(self, *args, **kwargs):
        return self.fab(*args, "--site", str(self.site_file), host=None, **kwargs)

    def app_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.apps[name].http_port}"


@pytest.fixture(scope="module")
def site(provisioned, vm_image, tmp_path_factory):
    home = tmp_path_factory.mktemp("site")
    started = []
    try:
        db = start_test_vm(vm_image, home)                            # bare Debian: site-provision sets it up
        started.append(db)
        s3 = start_s3_host(vm_image, tmp_path_factory.mktemp("site-s3"), [(KEY_ID, SECRET)], [BUCKET])
        started.append(s3)
        lb = start_test_vm(vm_image, home, extra_ports=(443,))       # bare Debian
        started.append(lb)
        apps = {}
        for name in APPS:
            # A provisioned VM's image, its SQLite database and uploads removed: an app VM holds no data.
            vm = start_clone(provisioned.image, home)
            started.append(vm)
            vm.exec("rm -rf /var/lib/label-studio/label_studio.sqlite3* /var/lib/label-studio/media "
                    "/var/lib/label-studio/.lsvm-*")
            # The site starts on the release before (site-upgrade's test): its VMs keep the newer one built.
            vm.exec("rm -f /opt/label-studio/current /opt/label-studio/previous")
            apps[name] = vm
        profile = home / "labels.yaml"
        profile.write_text(
            f"public_url: http://127.0.0.1:{lb.http_port}\n"
            f"label_studio:\n  version: \"{FIRST}\"\n  admin_email: {ADMIN_EMAIL}\n  workers: 2\n"
            f"database:\n  engine: postgresql\n  host: {address(db)}\n  name: ls_site\n  user: ls_site\n"
            f"  ca_file: {home / 'database-ca.pem'}\n"     # site-provision keeps the database VM's certificate there
            f"media:\n  storage: s3://{BUCKET}/labels\n  s3_endpoint: http://{s3.address}:9000\n")
        site_file = home / "site.yaml"
        # The tests reach the app VMs directly too (through Docker's published ports: from the containers'
        # gateway), as an admin network would: the site file lets that address in beside the balancer.
        site_file.write_text(
            "profile: labels.yaml\n"
            "database:\n  host: db\n"
            "apps:\n" + "".join(f"  - host: {name}\n    address: {address(vm)}\n" for name, vm in apps.items()) +
            f"app_firewall:\n  also_from: [{gateway(lb)}]\n"
            "balancer:\n  host: lb\n  check_interval_ms: 500\n")     # last: a test adds to it
        fab = SiteFab(lb, home, env={"LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD,
                                     "LSVM_MEDIA_ACCESS_KEY_ID": KEY_ID, "LSVM_MEDIA_SECRET_ACCESS_KEY": SECRET})
        fab.machines = {"db": db, "lb": lb, **apps}
        first = fab("site-provision", "--site", str(site_file), host=None)
        yield Site(home, lb, apps, db, s3, fab, site_file, first)
    finally:
        for vm in started:
            vm.stop()


def sh(vm, command: str) -> str:
    return vm.exec(command).stdout.decode()


def gateway(vm) -> str:
    """The containers' gateway: where this machine's connections to a published port come from."""
    return sh(vm, "ip route show default").split()[2]


def reaches(vm, to: str, port: int) -> bool:
    """Whether `vm` opens a TCP connection to `to`:`port` within 3 s."""
    return vm.exec(f"python3 -c 'import socket; socket.create_connection((\"{to}\", {port}), 3)'",
                   check=False).returncode == 0


def test_site_provision_sets_up_every_host_in_order(site):
    out = site.first_run.stdout + site.first_run.stderr
    print(out)
    assert site.first_run.returncode == 0, out
    # The app VMs first (the first one migrates the database), then the balancer from bare Debian.
    assert out.index("provision app1") < out.index("provision app2") < out.index("\nbalancer lb (HAProxy)")
    assert "set the SECRET_KEY in /var/lib/label-studio/.env with the site's" in out, out
    assert "installed haproxy" in out and "wrote HAProxy's configuration /etc/haproxy/haproxy.cfg" in out, out
    password = sh(site.db, "sed -n 's/^POSTGRE_PASSWORD=//p' /opt/label-studio/label-studio-database.env").strip()
    assert len(password) >= 32 and "The site is up" in out and SECRET not in out and password not in out
    # PostgreSQL first, from bare Debian, for the app VMs alone: TLS (hostssl) from their addresses only.
    assert out.index("\ndatabase db (PostgreSQL") < out.index("provision app1"), out
    assert sh(site.db, "stat -c '%U:%G:%a' /opt/label-studio/label-studio-database.env").strip() == "root:root:600"
    hba = sh(site.db, "cat /etc/postgresql/*/main/pg_hba.conf")
    db_rules = sh(site.db, "ufw show added")
    for vm in site.apps.values():
        assert f"hostssl all ls_site {address(vm)}/32 scram-sha-256" in hba, hba
        assert f"ufw allow from {address(vm)} to any port 5432 proto tcp" in db_rules, db_rules
        assert reaches(vm, address(site.db), 5432)
    assert all("from" in line for line in db_rules.splitlines() if "5432" in line), db_rules
    assert not reaches(site.s3, address(site.db), 5432)
    served = sh(site.db, "cat /etc/postgresql/lsvm-server.crt")
    assert (site.home / "database-ca.pem").read_text() == served
    assert sh(site.db, "stat -c '%U:%a' /etc/postgresql/lsvm-server.key").strip() == "postgres:600"
    # One SECRET_KEY on both app VMs, never on a command line.
    keys = {name: sh(vm, "grep '^SECRET_KEY=' /var/lib/label-studio/.env") for name, vm in site.apps.items()}
    assert keys["app1"] == keys["app2"] and len(keys["app1"]) > 40
    # HAProxy checks each app VM actively; its admin socket is root's alone.
    config = sh(site.lb, "cat /etc/haproxy/haproxy.cfg")
    assert "http-check send meth GET uri /health" in config
    for name, vm in site.apps.items():
        assert f"server {name} {address(vm)}:80 check" in config
    assert sh(site.lb, "stat -c '%U %a' /run/haproxy/lsvm-admin.sock").strip() == "root 600"
    assert "80/tcp" in sh(site.lb, "ufw status")
    # Each app VM's HTTP is the balancer's (and the admin network's) alone: another VM is not let in.
    for name, vm in site.apps.items():
        rules = sh(vm, "ufw show added")
        assert f"ufw allow from {address(site.lb)} to any port 80 proto tcp" in rules, rules
        assert f"ufw allow from {gateway(vm)} to any port 80 proto tcp" in rules, rules
        assert "ufw allow 80/tcp" not in rules, rules
        assert "Status: active" in sh(vm, "ufw status")
        assert reaches(site.lb, address(vm), 80) and not reaches(site.s3, address(vm), 80), name
    assert "ufw no longer lets anyone reach 80/tcp (the balancer does)" in out, out
    # A second run changes nothing (and so drains nothing).
    again = site.run("site-provision")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "drained" not in again.stdout
    assert len(re.findall(r"\b0 changed\b", again.stdout)) == 2, again.stdout
    status = site.run("site-status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("UP (answers and reads its database); UP at the balancer") == 2, status.stdout
    assert "ls_site@" in status.stdout and "(shared), accepts connections" in status.stdout, status.stdout


def test_one_vm_tasks_that_would_change_the_sites_data_refuse_an_app_vm(site):
    for name, vm in site.apps.items():
        assert sh(vm, "stat -c '%U:%G:%a' /opt/label-studio/label-studio-site").strip() == "root:root:644", name
        assert "balancer=lb\n" in sh(vm, "cat /opt/label-studio/label-studio-site")
    profile = str(site.home / "labels.yaml")
    for args in (("provision", "--dry-run"), ("restore-server", "--snapshot", "20990101T000000Z", "--yes"),
                 ("migrate-media", "--to", "local", "--yes")):
        refused = site.fab(*args, "--config", profile, host="app2")
        assert refused.returncode != 0, refused.stdout
        assert f"app2 is an app VM of a site (balancer lb): `{args[0]}` on it alone" in refused.stderr, refused.stderr


def test_tokens_sessions_and_uploads_work_on_either_app_vm(site):
    token = api_token(site)
    through_balancer = sdk_view(site.url, token)
    # The token made through the balancer is valid on each app VM, which read the one database.
    assert sdk_view(site.app_url("app1"), token) == through_balancer == sdk_view(site.app_url("app2"), token)
    # A session made on app1 is valid on app2; an upload made on app1 is served by app2 from the bucket.
    ls = LabelStudio(site.app_url("app1"))
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    project = ls.post_json("/api/projects", {"title": "Made on app1", "label_config": IMAGE_CONFIG}).json()["id"]
    image = png(30, 22)
    assert ls.import_file(project, "photo.png", image).status == 201
    ls.base = site.app_url("app2")
    [task] = ls.get(f"/api/tasks?project={project}").json()["tasks"]
    url = task["data"]["image"]
    served = ls.get(url[url.index("/storage-data/"):])
    assert served.status == 200 and served.body == image, served.status
    stored = sh(site.s3, f"find /srv/s3/{BUCKET}/labels/upload -type f -name '*photo.png'").split()
    assert len(stored) == 1 and site.s3.exec(f"cat {stored[0]}").stdout == image
    assert sh(site.apps["app2"], "find /var/lib/label-studio/media -type f 2>/dev/null").strip() == ""


def _load_project(site, title: str) -> tuple[str, int]:
    from label_studio_sdk import LabelStudio as SDK
    token = api_token(site)
    client = SDK(base_url=site.url, api_key=token)
    project = client.projects.create(title=title, label_config=LABEL_CONFIG)
    client.projects.import_tasks(id=project.id, request=[{"text": f"load {i}"} for i in range(32)])
    return token, project.id


def _stat(site, server: str, field: str, proxy: str = "app_vms") -> str:
    """One field of HAProxy's `show stat` row for the server (found by the CSV header)."""
    return sh(site.lb, "echo 'show stat' | socat stdio UNIX-CONNECT:/run/haproxy/lsvm-admin.sock | "
                       f"awk -F, -v px={proxy} -v sv={server} -v f={field} 'NR == 1 {{ sub(/^# /, \"\"); "
                       "for (i = 1; i <= NF; i++) c[$i] = i; next } $1 == px && $2 == sv { print $c[f] }'").strip()


def _answers_5xx(site) -> int:
    """The 5xx answers the balancer gave its clients so far (from the app VMs or its own)."""
    return int(_stat(site, "FRONTEND", "hrsp_5xx", proxy="label_studio") or 0)


def _masters(site) -> dict[str, str]:
    return {name: sh(vm, "systemctl show -p MainPID --value label-studio").strip() for name, vm in site.apps.items()}


def under_load(site, title: str, action):
    """`action()` while four bench.load clients (the official SDK) save annotations through the balancer:
    (what it returned, the load's result, how many 5xx answers the balancer gave meanwhile). The SDK retries
    a 5xx itself; the balancer's own count sees every one."""
    token, project = _load_project(site, title)
    stop, box = threading.Event(), {}
    load = threading.Thread(target=lambda: box.update(result=run_load(
        site.url, token, project, clients=4, seconds=900, max_requests=100_000, timeout=120, stop=stop)))
    answered_5xx = _answers_5xx(site)
    load.start()
    try:
        done = action()
    finally:
        stop.set()
        load.join(300)
    return done, box["result"], _answers_5xx(site) - answered_5xx


def fab_under_load(site, title: str, *args: str):
    done, result, answered_5xx = under_load(site, title, lambda: site.run(*args))
    assert done.returncode == 0, done.stdout + done.stderr
    return done, result, answered_5xx


def test_a_rolling_restart_under_load_fails_no_request(site):
    before = _masters(site)
    restart, result, answered_5xx = fab_under_load(site, "Restarted under load", "site-restart")
    print(f"rolling restart under load: {result.summary()}; the balancer answered {answered_5xx} 5xx")
    assert result.ok > 0 and result.failed == 0 and answered_5xx == 0, result.summary()
    after = _masters(site)
    assert all(after[name] != before[name] for name in APPS), (before, after)
    assert restart.stdout.count("took ") == 2 and restart.stdout.count("put ") == 2, restart.stdout


def test_a_changed_setting_reaches_the_app_vms_one_at_a_time_under_load(site):
    profile = site.home / "labels.yaml"
    profile.write_text(profile.read_text().replace("  workers: 2\n", "  workers: 1\n"))
    before = _masters(site)
    provision, result, answered_5xx = fab_under_load(site, "Reconfigured under load", "site-provision")
    print(f"rolling provision under load: {result.summary()}; the balancer answered {answered_5xx} 5xx")
    assert result.ok > 0 and result.failed == 0 and answered_5xx == 0, result.summary()
    out = provision.stdout
    for name in APPS:
        assert out.index(f"took {name} out of the balancer (drained)") < out.index(f"put {name} back"), out
    assert out.index("put app1 back") < out.index("provision app2"), out
    after = _masters(site)
    assert all(after[name] != before[name] for name in APPS), (before, after)
    for vm in site.apps.values():
        assert "workers = worker_count(1, " in sh(vm, "cat /opt/label-studio/label-studio-gunicorn.conf.py")




def test_a_killed_app_vm_is_taken_out_within_seconds_and_the_site_keeps_serving(site):
    moments = {}

    def kill_app2():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and int(_stat(site, "app2", "stot") or 0) < 20:
            pass   # until the load reached app2 (HAProxy's count of the requests it sent there)
        moments["killed"] = time.monotonic()
        subprocess.run(["docker", "kill", site.apps["app2"].id], check=True, capture_output=True)
        deadline, status = moments["killed"] + 30, ""
        while time.monotonic() < deadline and status != "DOWN":   # HAProxy's own view: the real signal
            status = _stat(site, "app2", "status")
        moments["ejected"] = time.monotonic()
        # The site keeps serving from app1 (the load keeps running meanwhile).
        ls = LabelStudio(site.url)
        assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        assert all(ls.get("/api/projects").status == 200 for _ in range(20))
        return status

    status, result, answered_5xx = under_load(site, "Under load at the kill", kill_app2)
    killed_at = moments["killed"]
    late = [t - killed_at for t in result.failed_at if t > killed_at]
    print(f"killed app VM: ejected after {moments['ejected'] - killed_at:.1f} s; {result.summary()}; "
          f"failures {[round(t, 1) for t in late]} s after the kill; the balancer answered {answered_5xx} 5xx")
    assert status == "DOWN"
    # The target is 5 s; the assertions leave room for a loaded CI machine (the note reports the run).
    assert moments["ejected"] - killed_at <= 10
    assert all(t <= 10 for t in late), late
    token = api_token(site)
    assert sdk_view(site.url, token)["projects"]["Under load at the kill"] == 32
    down = site.run("site-status")
    assert down.returncode != 0 and "the site serves from 1 of 2 app VM(s): app1" in down.stderr, down.stdout + down.stderr
    assert "unreachable" in down.stdout, down.stdout


def _until(site, server: str, status: str) -> str:
    deadline, found = time.monotonic() + 120, ""
    while time.monotonic() < deadline and found != status:   # HAProxy's own checks: the real signal
        found = _stat(site, server, "status")
        time.sleep(0.2)  # poll interval between real checks
    return found


def test_with_no_app_vm_up_the_balancer_answers_for_maintenance_and_a_vm_back_is_put_back(site):
    app1, app2 = site.apps["app1"], site.apps["app2"]
    app1.exec("systemctl stop label-studio")
    try:
        assert _until(site, "app1", "DOWN") == "DOWN"
        api = LabelStudio(site.url).get("/api/projects")
        assert api.status == 503 and api.json()["status"] == "maintenance", (api.status, api.body[:200])
        page = LabelStudio(site.url).get("/")
        assert page.status == 503 and b"Label Studio is being updated" in page.body
    finally:
        app1.exec("systemctl start label-studio")
    assert _until(site, "app1", "UP") == "UP"
    # The killed VM boots again: Label Studio starts at boot, and the balancer's checks put it back. Another
    # machine takes its address meanwhile (Docker gives the lowest free one), as DHCP may: until the site file
    # says so, the database VM does not let it in, so its boot waits for PostgreSQL, and site-provision mends.
    old = address(app2)
    image = subprocess.run(["docker", "inspect", "-f", "{{.Config.Image}}", app2.id], check=True,
                           capture_output=True, text=True).stdout.strip()
    squatter = subprocess.run(["docker", "run", "-d", "--rm", "--entrypoint", "sleep", image, "1800"],
                              check=True, capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["docker", "start", app2.id], check=True, capture_output=True)
        app2.refresh_ports()
        app2.wait_for_ssh()
        if address(app2) != old:
            site.site_file.write_text(site.site_file.read_text().replace(old, address(app2)))
            again = site.run("site-provision")
            assert again.returncode == 0, again.stdout + again.stderr
            assert f"the balancer sends app2's requests to {old}:" in again.stderr, again.stderr
            hba = sh(site.db, "cat /etc/postgresql/*/main/pg_hba.conf")
            assert f"hostssl all ls_site {address(app2)}/32 scram-sha-256" in hba, hba
            # The old address (the squatter's now) no longer reaches PostgreSQL: its line and rule are gone.
            assert f" {old}/32 " not in hba, hba
            assert f"ufw no longer allows 5432/tcp from {old} (no app VM of the site)" in again.stdout, again.stdout
            assert f"from {old} " not in sh(site.db, "ufw show added")
        assert _until(site, "app2", "UP") == "UP"
    finally:
        subprocess.run(["docker", "rm", "-f", squatter], capture_output=True)
    # A VM a failed rolling step left drained: site-provision proves it and puts it back.
    sh(site.lb, balancer_commands.set_state("app2", "drain"))
    assert _stat(site, "app2", "status") == "DRAIN"
    again = site.run("site-provision")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "put app2 back: it was DRAIN at the balancer" in again.stdout, again.stdout
    assert _until(site, "app2", "UP") == "UP"
    status = site.run("site-status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_backup_of_the_site_is_restored_onto_every_app_vm(site):
    token = api_token(site)
    before = sdk_view(site.url, token)
    # The site's backup is the first app VM's: the shared database, the SECRET_KEY, the bucket's listing.
    backup = site.fab("backup", "--config", str(site.home / "labels.yaml"), host="app1")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert f"of s3://{BUCKET}/labels" in backup.stdout, backup.stdout
    snapshot = re.search(r"snapshot (\d{8}T\d{6}Z\S*):", backup.stdout).group(1)
    from label_studio_sdk import LabelStudio as SDK
    SDK(base_url=site.url, api_key=token).projects.create(title="After the backup", label_config=LABEL_CONFIG)
    assert "After the backup" in sdk_view(site.url, token)["projects"]
    dry = site.run("site-restore", "--snapshot", snapshot, "--dry-run")
    assert dry.returncode == 0 and "nothing was changed" in dry.stdout, dry.stdout + dry.stderr
    restored = site.run("site-restore", "--snapshot", snapshot, "--yes")
    out = restored.stdout + restored.stderr
    assert restored.returncode == 0, out
    assert "server backed up as" in out and "stopped label-studio.service on app2" in out, out
    # The same data through the balancer and on each app VM, read with the token made before the backup.
    assert sdk_view(site.url, token) == before
    assert sdk_view(site.app_url("app1"), token) == before == sdk_view(site.app_url("app2"), token)
    keys = {name: sh(vm, "grep '^SECRET_KEY=' /var/lib/label-studio/.env") for name, vm in site.apps.items()}
    assert keys["app1"] == keys["app2"]
    status = site.run("site-status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_an_upgrade_with_migrations_takes_every_app_vm_out_and_the_first_migrates_once(site):
    token = api_token(site)
    before = sdk_view(site.url, token)
    profile = site.home / "labels.yaml"
    profile.write_text(profile.read_text().replace(f'version: "{FIRST}"', f'version: "{OLD}"'))
    upgrade = site.run("site-upgrade", "--yes")
    out = upgrade.stdout + upgrade.stderr
    assert upgrade.returncode == 0, out
    migrations = int(re.search(rf"label-studio {re.escape(OLD)} has (\d+) migration\(s\)", out).group(1))
    assert migrations > 0, out
    assert f"built label-studio {OLD} in /opt/label-studio/releases/{OLD} on app2" in out, out
    assert out.index("drained every app VM") < out.index("stopped label-studio.service on app2") \
        < out.index(f"app1 runs label-studio {OLD}") < out.index("started label-studio.service on app2"), out
    for name, vm in site.apps.items():
        assert sh(vm, "readlink /opt/label-studio/current").strip() == f"releases/{OLD}", name
    # The database migrated once, by the first VM's start: the same data, read with the same token.
    assert sdk_view(site.url, token) == before
    assert sdk_view(site.app_url("app2"), token) == before
    again = site.run("site-upgrade", "--dry-run")
    assert again.returncode == 0 and "nothing to upgrade" in again.stdout, again.stdout + again.stderr


def test_an_upgrade_without_migrations_rolls_the_app_vms_under_load(site):
    profile = site.home / "labels.yaml"
    profile.write_text(profile.read_text().replace(f'version: "{OLD}"', f'version: "{NEW}"'))
    dry = site.run("site-upgrade", "--dry-run")
    assert dry.returncode == 0 and f"label-studio {OLD} -> {NEW}" in dry.stdout, dry.stdout + dry.stderr
    upgrade, result, answered_5xx = fab_under_load(site, "Upgraded under load", "site-upgrade", "--yes")
    print(f"rolling upgrade under load: {result.summary()}; the balancer answered {answered_5xx} 5xx")
    out = upgrade.stdout
    assert "site backed up as" in out and f"label-studio {NEW} is already built in /opt/label-studio/releases/{NEW} on app1" in out, out
    assert f"label-studio {NEW} has 0 migration(s) for the database" in out, out
    assert result.ok > 0 and result.failed == 0 and answered_5xx == 0, result.summary()
    for name, vm in site.apps.items():
        assert sh(vm, "readlink /opt/label-studio/current").strip() == f"releases/{NEW}", name
        assert sh(vm, "readlink /opt/label-studio/previous").strip() == f"releases/{OLD}", name
    ls = LabelStudio(site.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert ls.get("/api/version").json()["release"] == NEW
    again = site.run("site-upgrade")
    assert again.returncode == 0 and "nothing to upgrade" in again.stdout, again.stdout + again.stderr


def test_a_single_vm_moves_onto_the_site_and_the_sdk_reads_the_same_through_the_balancer(site, provisioned,
                                                                                       tmp_path_factory):
    """What a team that outgrew one VM does: the VM's uploads moved into the site's bucket (migrate-media),
    a backup of it, then site-restore from that VM's snapshot: its SQLite converted into the site's
    PostgreSQL, its SECRET_KEY given to every app VM. The official SDK, with the token made on the single
    VM, reads the same through the balancer; the upload comes back byte for byte."""
    single = provisioned_clone(provisioned, tmp_path_factory.mktemp("site-single"), "single")
    site.fab.machines["single"] = single.vm
    try:
        ls = LabelStudio(single.url)
        assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        project = ls.post_json("/api/projects", {"title": "Made on the single VM", "label_config": IMAGE_CONFIG}).json()["id"]
        image = png(26, 38)
        assert ls.import_file(project, "single.png", image).status == 201
        [task] = ls.get(f"/api/tasks?project={project}").json()["tasks"]
        assert ls.post_json(f"/api/tasks/{task['id']}/annotations", {"result": [{
            "from_name": "c", "to_name": "image", "type": "choices", "value": {"choices": ["a"]}}]}).status == 201
        token = ls.post_json("/api/token/", {}).json()["token"]
        before = sdk_view(single.url, token)
        assert before["projects"]["Made on the single VM"] == 1 and before["annotations"] >= 1

        single_profile = single.profile
        single_profile.write_text(single_profile.read_text() + f"media:\n  storage: s3://{BUCKET}/labels\n"
                                                               f"  s3_endpoint: http://{site.s3.address}:9000\n")
        on_single = ("--config", str(single_profile))
        moved = site.fab("migrate-media", "--to", "s3", "--yes", *on_single, host="single")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        backup = site.fab("backup", *on_single, host="single")
        assert backup.returncode == 0, backup.stdout + backup.stderr
        snapshot = re.search(r"snapshot (\d{8}T\d{6}Z\S*):", backup.stdout).group(1)

        onto = site.run("site-restore", "--snapshot", f"single/{snapshot}", "--yes")
        out = onto.stdout + onto.stderr
        assert onto.returncode == 0, out
        assert "SQLite -> PostgreSQL: converted on the server" in out, out
        assert re.search(r"holds all \d+ objects snapshot \S+ links to, sha256 for sha256", out), out
        # The single VM's token, sessions and data, through the balancer and on each app VM.
        assert sdk_view(site.url, token) == before
        assert sdk_view(site.app_url("app2"), token) == before
        site.api_token = token
        through = LabelStudio(site.url)
        assert through.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        [moved_task] = through.get(f"/api/tasks?project={project}").json()["tasks"]
        link = moved_task["data"]["image"]
        served = through.get(link[link.index("/data/"):] if "/data/" in link else link[link.index("/storage-data/"):])
        assert served.status == 200 and served.body == image, (link, served.status)
        # The single VM's local copy (kept until migrate-media --prune) stays out of the app VMs.
        assert "left out the snapshot's 1 local media file(s)" in out, out
        assert sh(site.apps["app1"], "find /var/lib/label-studio/media -type f 2>/dev/null").strip() == ""
    finally:
        site.fab.machines.pop("single")
        single.vm.stop()


def test_tls_at_the_edge_with_a_self_signed_certificate(site):
    public = f"https://127.0.0.1:{site.lb.published_port(443)}"
    profile = site.home / "labels.yaml"
    profile.write_text(profile.read_text().replace(site.url, public))
    site.site_file.write_text(site.site_file.read_text() + "  tls: self-signed\n")
    result = site.run("site-provision")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "made a self-signed certificate for 127.0.0.1 (/etc/haproxy/certs/label-studio.pem, root 0600)" in out, out
    assert out.count("took ") == 2 and "ufw allows 443/tcp" in out, out
    assert sh(site.lb, "stat -c '%U:%G:%a' /etc/haproxy/certs/label-studio.pem").strip() == "root:root:600"
    cert = site.home / "edge.pem"
    cert.write_text(sh(site.lb, "openssl x509 -in /etc/haproxy/certs/label-studio.pem"))
    # Verified against the balancer's own certificate (its fingerprint is what site-provision printed).
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"{public}/health", context=context, timeout=30) as answer:
        assert answer.status == 200 and json.loads(answer.read())["status"] == "UP"
    plain = urllib.request.Request(f"{site.url}/user/login/")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(plain, timeout=30)
        raise AssertionError("plain HTTP was served")
    except urllib.error.HTTPError as exc:
        assert exc.code == 301 and exc.headers["Location"] == f"https://127.0.0.1:{site.lb.http_port}/user/login/"
    for vm in site.apps.values():
        env = sh(vm, "cat /opt/label-studio/label-studio.env")
        assert f"LABEL_STUDIO_HOST={public}\n" in env and "SESSION_COOKIE_SECURE=1\n" in env


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
