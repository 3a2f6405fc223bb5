"""Taking over a VM set up by hand exactly as the seed guide says (dev/testvm/guide.py): status names the
hand-made instance, provision refuses beside it and changes nothing, adopt moves it under management
without losing a byte (users, passwords, tokens, sessions, projects, tasks, annotations, uploads), a
reboot keeps it, a second run changes nothing; an older release is migrated on the way; a failing start
puts the old instance back; a port held by an impostor that answers /health is never taken for ours."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from dev.lsclient import LabelStudio, wait_for_health
from dev.testvm import machine
from dev.testvm.guide import (
    GUIDE_SESSION,
    GUIDE_USER,
    GuideData,
    guide_image,
    listens_on_all_interfaces,
    make_data,
    restart_in_screen,
    start_by_the_guide,
    wait_until_listening,
)
from tests.integration.support.fab import Fab
from tests.integration.support.labelstudio import png, sdk_view
from tests.integration.support.machines import start_test_vm
from tests.integration.support.preload import preload_library

OLD_RELEASE = "1.22.0"
CURRENT = "1.23.2"
OLD_DATA = f"/home/{GUIDE_USER}/.local/share/label-studio"


@dataclass
class GuideVM:
    vm: machine.TestVM
    fab: Fab
    data: GuideData
    before: dict        # what the official SDK saw before the take-over

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.vm.http_port}"


def fingerprint(vm: machine.TestVM) -> str:
    """Everything provision could have touched: packages, units, nginx, firewall, data, processes."""
    return vm.exec(
        "dpkg-query -W -f='${Package} ${Version}\\n' | sort; ls -la /etc/systemd/system /etc/nginx/sites-enabled "
        "/etc/nginx/sites-available; cat /etc/nginx/sites-available/*; ufw status verbose; "
        f"find /opt /var/lib/label-studio {OLD_DATA} -xdev -type f -exec sha256sum {{}} + 2>/dev/null | sort; "
        "id labelstudio 2>&1; systemctl list-unit-files --no-pager | grep -i label || true",
    ).stdout.decode()


def guide_vm(image: str, home: Path, version: str) -> GuideVM:
    vm = start_test_vm(guide_image(image, version, home), home)
    try:
        start_by_the_guide(vm)
        url = f"http://127.0.0.1:{vm.http_port}"
        data = make_data(url, png())
        profile = home / "adopt.yaml"
        profile.write_text(f"public_url: {url}\n")
        fab = Fab(vm, home, env={"LSVM_CONFIG": str(profile)})
        return GuideVM(vm, fab, data, sdk_view(url, data.token))
    except BaseException:
        vm.stop()
        raise


@pytest.fixture(scope="module")
def guide(vm_image, suite, tmp_path_factory):
    machine = guide_vm(vm_image, tmp_path_factory.mktemp(f"home-guide-{suite}"), CURRENT)
    yield machine
    machine.vm.stop()


@pytest.mark.one_release("trixie")  # the current release's take-over on Debian 13, the older release's on Debian 12 (CI time)
def test_status_names_the_hand_made_instance(guide):
    result = guide.fab("status")
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert f"unmanaged Label Studio {CURRENT} in screen `{GUIDE_SESSION}` as {GUIDE_USER}" in out
    assert f"data ~{GUIDE_USER}/.local/share/label-studio" in out
    assert "0.0.0.0:8080 (reachable from outside)" in out
    assert "take it over: fab -H vm adopt" in out
    assert not re.search(r"health.*\bUP\b", out)


@pytest.mark.one_release("trixie")  # the current release's take-over on Debian 13, the older release's on Debian 12 (CI time)
def test_provision_refuses_beside_it_and_changes_nothing(guide):
    before = fingerprint(guide.vm)
    for args in (("provision", "--dry-run"), ("provision",)):
        result = guide.fab(*args, env={"LABEL_STUDIO_USERNAME": "admin@example.com",
                                       "LABEL_STUDIO_PASSWORD": "first-admin-pw-1"})
        assert result.returncode == 2, result.stdout + result.stderr
        assert "unmanaged Label Studio" in result.stderr and "fab -H vm adopt" in result.stderr
        assert "Traceback" not in result.stderr
    assert fingerprint(guide.vm) == before


@pytest.mark.one_release("trixie")  # the current release's take-over on Debian 13, the older release's on Debian 12 (CI time)
def test_adopt_dry_run_changes_nothing(guide):
    before = fingerprint(guide.vm)
    result = guide.fab("adopt", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified snapshot of its data" in result.stdout and "Nothing was changed" in result.stdout
    assert "would install" in result.stdout or "would create" in result.stdout
    assert fingerprint(guide.vm) == before


@pytest.mark.one_release("trixie")  # the current release's take-over on Debian 13, the older release's on Debian 12 (CI time)
def test_adopt_keeps_every_byte_and_every_login(guide):
    old_files = guide.vm.exec(f"cd {OLD_DATA} && find . -type f | sort | xargs sha256sum").stdout
    result = guide.fab("adopt", "--yes", timeout=2400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the adopted data matches the snapshot" in result.stdout

    # The official SDK, with the API token taken before: the same users, projects, tasks, annotations.
    assert sdk_view(guide.url, guide.data.token) == guide.before
    assert guide.before["annotations"] == guide.data.annotations
    # The old password logs in; the session cookie from before still works.
    assert LabelStudio(guide.url).login(*guide.data.owner)
    assert LabelStudio(guide.url).login(*guide.data.annotator)
    old_session = LabelStudio(guide.url)
    old_session.opener.addheaders = [("Cookie", f"sessionid={guide.data.session_cookie}")]
    whoami = old_session.get("/api/current-user/whoami")
    assert whoami.status == 200 and whoami.json()["email"] == guide.data.owner[0]
    # The uploaded image, byte for byte, through nginx.
    viewer = LabelStudio(guide.url)
    assert viewer.login(*guide.data.owner)
    image = viewer.get(guide.data.upload_path)
    assert image.status == 200 and image.body == guide.data.upload_bytes

    # Ours now: loopback only, no screen session, the old files untouched where they were.
    assert not listens_on_all_interfaces(guide.vm, 8080)
    sessions = guide.vm.exec(f"runuser -u {GUIDE_USER} -- screen -ls", check=False).stdout.decode()
    assert GUIDE_SESSION not in sessions
    assert guide.vm.exec(f"cd {OLD_DATA} && find . -type f | sort | xargs sha256sum").stdout == old_files
    assert guide.vm.exec("systemctl is-active label-studio.service").stdout.decode().strip() == "active"
    snapshots = sorted((guide.fab.home / "backups" / "vm").glob("*-adopt"))
    assert snapshots and (snapshots[-1] / "manifest.json").exists()
    manifest = json.loads((snapshots[-1] / "manifest.json").read_text())
    assert manifest["label_studio_version"] == CURRENT
    status = guide.fab("status")
    assert re.search(r"health \(via nginx\)\s+UP", status.stdout), status.stdout
    assert "unmanaged" not in status.stdout


@pytest.mark.one_release("trixie")  # the current release's take-over on Debian 13, the older release's on Debian 12 (CI time)
def test_a_reboot_brings_the_adopted_instance_back(guide):
    guide.vm.restart()
    wait_for_health(guide.url)
    assert sdk_view(guide.url, guide.data.token) == guide.before
    status = guide.fab("status")
    assert re.search(r"health \(via nginx\)\s+UP", status.stdout), status.stdout


@pytest.mark.one_release("trixie")  # the current release's take-over on Debian 13, the older release's on Debian 12 (CI time)
def test_a_second_adopt_or_provision_changes_nothing(guide):
    again = guide.fab("adopt", "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to adopt" in again.stdout
    provision = guide.fab("provision")
    assert provision.returncode == 0, provision.stdout + provision.stderr
    assert re.search(r"\b0 changed\b", provision.stdout), provision.stdout


IMPOSTOR = """import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(b'{"status": "UP"}')
http.server.HTTPServer(("127.0.0.1", 8080), H).serve_forever()
"""


@pytest.mark.one_release("trixie")  # the current release's take-over on Debian 13, the older release's on Debian 12 (CI time)
def test_a_port_held_by_an_impostor_is_named_and_never_up(guide):
    guide.vm.exec("systemctl stop label-studio.service")
    guide.vm.exec("cat > /usr/local/bin/impostor.py", input=IMPOSTOR.encode())
    guide.vm.exec("systemd-run --unit=impostor python3 /usr/local/bin/impostor.py")
    # Poll until the impostor answers (a real signal), at most 30 s.
    guide.vm.exec("for i in $(seq 150); do python3 -c \"import urllib.request as u; "
                  "u.urlopen('http://127.0.0.1:8080/health', timeout=5)\" 2>/dev/null && exit 0; sleep 0.2; done; exit 1")
    try:
        status = guide.fab("status")
        out = " ".join(status.stdout.split())
        assert "port 8080 is held" in out and "impostor.py" in out
        assert not re.search(r"health \(via nginx\) UP", out)
        provision = guide.fab("provision")
        assert provision.returncode == 2 and "impostor.py" in provision.stderr, provision.stderr
        start = guide.fab("start")
        assert start.returncode != 0 and "impostor.py" in start.stderr, start.stderr
    finally:
        guide.vm.exec("systemctl stop impostor", check=False)
    assert guide.fab("start").returncode == 0


# ------------------------------------------------------------------------------------------------
# An older release in the guide's venv: a failed take-over puts it back; the next one migrates.


@pytest.fixture(scope="module")
def old_guide(vm_image, suite, tmp_path_factory):
    machine = guide_vm(vm_image, tmp_path_factory.mktemp(f"home-guide-old-{suite}"), OLD_RELEASE)
    yield machine
    machine.vm.stop()


BROKEN = "[Service]\nExecStart=\nExecStart=/bin/false\n"


@pytest.mark.one_release("bookworm")
def test_a_failed_start_puts_the_old_instance_back(old_guide, tmp_path):
    g = old_guide
    # The hand-made instance runs with LD_PRELOAD in its environment (anything its user can set): the way
    # back starts it again as that user, and root's own processes never load the library.
    library = preload_library(g.vm, tmp_path)
    restart_in_screen(g.vm, exports=f"export LD_PRELOAD={library} && ")
    marks = f"ls /home/{GUIDE_USER}/ | grep '^preload-ran-as-' || true"
    uid = g.vm.exec(f"id -u {GUIDE_USER}").stdout.decode().strip()
    assert g.vm.exec(marks).stdout.decode().split() == [f"preload-ran-as-{uid}"]  # it loads, as the user
    g.vm.exec("mkdir -p /etc/systemd/system/label-studio.service.d && "
              "cat > /etc/systemd/system/label-studio.service.d/broken.conf", input=BROKEN.encode())
    before = g.vm.exec(f"cd {OLD_DATA} && find . -type f | sort | xargs sha256sum").stdout
    result = g.fab("adopt", "--yes", "--health-timeout", "60", timeout=2400)
    assert result.returncode != 0, result.stdout
    assert "adopt failed" in result.stderr and "serving again" in result.stderr, result.stderr
    # The old one serves its data again, in its screen session, as before.
    wait_until_listening(g.vm)
    assert sdk_view(g.url, g.data.token) == g.before
    assert listens_on_all_interfaces(g.vm, 8080)
    assert g.vm.exec(f"cd {OLD_DATA} && find . -type f | sort | xargs sha256sum").stdout == before
    assert sorted((g.fab.home / "backups" / "vm").glob("*-adopt"))  # the snapshot is kept
    assert g.vm.exec(marks).stdout.decode().split() == [f"preload-ran-as-{uid}"]  # never as root (0)
    g.vm.exec("rm -rf /etc/systemd/system/label-studio.service.d && systemctl daemon-reload")


@pytest.mark.one_release("bookworm")
def test_adopting_an_older_release_migrates_it(old_guide):
    g = old_guide
    result = g.fab("adopt", "--yes", timeout=2400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Label Studio {OLD_RELEASE} -> {CURRENT}" in result.stdout
    assert sdk_view(g.url, g.data.token) == g.before
    assert LabelStudio(g.url).login(*g.data.owner)
    assert not listens_on_all_interfaces(g.vm, 8080)
