"""Offsite replication to an SFTP target: a second test VM is the SSH server (OpenSSH from Debian, host keys
of its own), with an account that holds nothing else. Provision stores the private key named by
$LSVM_OFFSITE_SFTP_KEY on this machine root-only on the VM (sent on stdin, never in argv); systemd hands
it to the replication user's programs alone, with the profile's host key, which Litestream and restic's
ssh verify (a wrong one is refused before anything is sent). The database streams there, .env and media
go there with restic, the drill passes on it, and a point-in-time restore from it brings a deleted project
back.

Two VMs, on one Debian release (CI time: the S3 and path targets run on the other; what an SFTP target
adds is the same on both)."""

from __future__ import annotations

import subprocess
import time

import pytest

from dev.lsclient import LabelStudio
from tests.integration.support.labelstudio import api_token, sdk_view
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_WORKERS, provisioned_clone, start_test_vm

pytestmark = pytest.mark.one_release("bookworm")

ACCOUNT, FOLDER = "keeper", "/srv/offsite/vm1"
KEY_FILE = "/opt/label-studio/label-studio-offsite-sftp.key"
UNIT = "label-studio-offsite"


def sh(vm, command: str, **kwargs) -> str:
    return vm.exec(command, **kwargs).stdout.decode()


def new_key(path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lsvm-offsite-test", "-f", str(path)],
                   check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def sftphost(vm_image, tmp_path_factory):
    home = tmp_path_factory.mktemp("sftphost")
    vm = start_test_vm(vm_image, home)
    # Host keys of its own (the test image's are every test VM's), an account for the copies alone.
    vm.exec("rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && systemctl restart ssh")
    public = new_key(home / "offsite_key")
    vm.exec(f"useradd --create-home --shell /bin/sh {ACCOUNT} && install -d -m 700 -o {ACCOUNT} -g {ACCOUNT} "
            f"/home/{ACCOUNT}/.ssh && cat > /home/{ACCOUNT}/.ssh/authorized_keys && chown {ACCOUNT}: "
            f"/home/{ACCOUNT}/.ssh/authorized_keys && install -d -o {ACCOUNT} -g {ACCOUNT} /srv/offsite",
            input=(public + "\n").encode())
    vm.address = vm.container.get_wrapped_container().attrs["NetworkSettings"]["IPAddress"]
    # Every key the server has (what `ssh-keyscan` would list, read here from the server itself).
    vm.host_keys = [" ".join(line.split()[:2]) for line in sh(vm, "cat /etc/ssh/ssh_host_*_key.pub").splitlines()]
    vm.key_file = home / "offsite_key"
    yield vm
    vm.stop()


def offsite_section(sftphost, host_keys: list[str]) -> str:
    return (f"offsite:\n  target: sftp://{ACCOUNT}@{sftphost.address}{FOLDER}\n  sftp_host_keys:\n"
            + "".join(f"    - {key}\n" for key in host_keys))


@pytest.fixture(scope="module")
def site(provisioned, sftphost, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"home-offsite-sftp-{provisioned.suite}")
    machine = provisioned_clone(provisioned, home, "offsite-sftp",
                                edits=((TEST_WORKERS, TEST_WORKERS + offsite_section(sftphost, sftphost.host_keys)),),
                                env={"LSVM_OFFSITE_SFTP_KEY": str(sftphost.key_file)})
    yield machine
    machine.vm.stop()


def on_target(site, sftphost, wanted, timeout: float = 60) -> list[str]:
    """Poll (the real signal) a restore from the SFTP server, made there by Litestream on the VM, until the
    project titles it holds satisfy `wanted`; those titles."""
    restored = "/var/lib/label-studio-offsite/check.sqlite3"
    restore = (f"rm -f {restored}; systemd-run --quiet --pipe --wait --collect --uid=labelstudio-offsite "
               f"-p LoadCredential=offsite-sftp-key:{KEY_FILE} /opt/label-studio/offsite/bin/litestream restore "
               f"-config /opt/label-studio/label-studio-litestream.yml -o {restored} "
               f"/var/lib/label-studio/label_studio.sqlite3 && sqlite3 {restored} 'select title from project'; "
               f"rm -f {restored}")
    deadline, titles = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        titles = sh(site.vm, restore, check=False).splitlines()
        if wanted(titles):
            return titles
        time.sleep(0.5)  # poll interval between real checks
    raise AssertionError(f"the SFTP target never held what was wanted within {timeout}s: {titles}")


def test_the_key_is_root_only_and_the_database_streams_to_the_account(site, sftphost):
    out = site.first_run.stdout + site.first_run.stderr
    assert site.first_run.returncode == 0, out
    assert f"stored the SFTP target's key in {KEY_FILE} (root, 0600)" in out, out
    private = sftphost.key_file.read_text()
    assert private.splitlines()[1] not in out
    vm = site.vm
    assert sh(vm, f"stat -c '%U:%G:%a' {KEY_FILE}").strip() == "root:root:600"
    assert sh(vm, f"cat {KEY_FILE}") == private
    active = vm.exec(f"systemctl is-active {UNIT}", check=False).stdout.decode().strip()
    assert active == "active", sh(vm, f"journalctl -u {UNIT} --no-pager | tail -n 20")
    # The service user (what a Label Studio exploit runs) reads neither the key nor the credentials systemd
    # gave the replication.
    for path in (KEY_FILE, f"/run/credentials/{UNIT}.service/offsite-sftp-key"):
        denied = vm.exec(f"runuser -u labelstudio -- cat {path}", check=False)
        assert denied.returncode != 0 and b"PRIVATE KEY" not in denied.stdout, path
    assert "PRIVATE KEY" not in sh(vm, "ps -eo args")
    client = LabelStudio(site.url)
    assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    title = f"kept over SFTP ({site.suite})"
    client.create_project(title)
    assert title in on_target(site, sftphost, lambda titles: title in titles)
    # The copies are the account's files on the other VM, Litestream's and restic's side by side.
    listing = sh(sftphost, f"find {FOLDER} -maxdepth 2 -printf '%u %P\\n'")
    assert f"{ACCOUNT} litestream" in listing and f"{ACCOUNT} restic/config" in listing, listing


def test_env_and_media_snapshot_and_the_drill_pass_on_the_sftp_target(site):
    files = site.fab("offsite", "--files")
    assert files.returncode == 0, files.stdout + files.stderr
    drill = site.fab("offsite", "--drill")
    out = drill.stdout + drill.stderr
    assert drill.returncode == 0, out
    row = next(line for line in drill.stdout.splitlines() if line.startswith("restore drill"))
    assert " passed " in row and "integrity_check ok" in row and "restic check read back 5%" in row, row
    history = next(line for line in drill.stdout.splitlines() if line.startswith("history"))
    assert "an SFTP account the VM's key writes" in " ".join(history.split()), history
    status = site.fab("status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_point_in_time_restore_from_the_sftp_target_brings_a_deleted_project_back(site, sftphost):
    token = api_token(site)
    client = LabelStudio(site.url)
    assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    title = f"deleted, then restored over SFTP ({site.suite})"
    project = client.create_project(title)
    on_target(site, sftphost, lambda titles: title in titles)
    seen = sh(site.vm, "date -u +%Y-%m-%dT%H:%M:%SZ").strip()
    moment = seen
    while moment == seen:
        time.sleep(0.1)  # poll interval: the VM's clock moves to the next second (a real signal)
        moment = sh(site.vm, "date -u +%Y-%m-%dT%H:%M:%SZ").strip()
    assert client.request("DELETE", f"/api/projects/{project}/").status == 204
    on_target(site, sftphost, lambda titles: title not in titles)
    result = site.fab("restore-server", "--offsite", "--at", moment, "--yes")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "server backed up as" in out and "integrity_check passed" in out, out
    assert title in sdk_view(site.url, token)["projects"]


def test_a_host_key_that_is_not_the_servers_is_refused_before_anything_is_sent(site, sftphost, tmp_path):
    """The profile names another host key (as a server that changed keys, or a man in the middle, would
    present): ssh refuses the server before logging in, provision fails in words and nothing reaches the
    account; with the right key back, provision and the copies go on."""
    stranger = " ".join(new_key(tmp_path / "stranger").split()[:2])
    profile = site.profile.read_text()
    before = sh(sftphost, f"find {FOLDER}/restic -type f | sort | xargs sha256sum")
    site.profile.write_text(profile.replace(offsite_section(sftphost, sftphost.host_keys),
                                            offsite_section(sftphost, [stranger])))
    try:
        provision = site.fab("provision")
        out = provision.stdout + provision.stderr
        assert provision.returncode != 0, out
        assert "Host key verification failed" in out, out
        assert "Traceback" not in out
        listing = site.fab("offsite")
        assert listing.returncode != 0, listing.stdout + listing.stderr
    finally:
        site.profile.write_text(profile)
    assert sh(sftphost, f"find {FOLDER}/restic -type f | sort | xargs sha256sum") == before   # restic: nothing sent
    again = site.fab("provision")
    assert again.returncode == 0, again.stdout + again.stderr
    listing = site.fab("offsite")
    assert listing.returncode == 0, listing.stdout + listing.stderr
