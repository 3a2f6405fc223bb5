"""Append-only history on an S3 target with versioning: moto's S3 server (PyPI `moto[server]`, in a venv
on a second test VM) with versioning on, as an owner sets a bucket up. Litestream and restic keep their
copies there; the nightly drill then asks the bucket itself whether the VM's keys could erase the
history, and with keys that may delete old versions (moto's server checks no IAM policy) it fails in
words that say so and point at `fab offsite --iam-policy`: `fab offsite` and `status` exit non-zero.
What the printed policy denies is proven against moto's IAM in tests/unit/programs/test_offsite_history.py.
A deletion by the VM's keys only hides a copy: its old version stays for the owner.

One VM and one S3 host on one Debian release, 12 (CI time: 13 carries the other offsite tests)."""

from __future__ import annotations

import json
import shlex

import pytest

from tests.integration.support.machines import TEST_WORKERS, provisioned_clone, start_test_vm

pytestmark = pytest.mark.one_release("bookworm")

KEYS = {"AWS_ACCESS_KEY_ID": "lsvm-history-key", "AWS_SECRET_ACCESS_KEY": "lsvm-history-secret"}
BUCKET, PREFIX = "lsvm-history", "team/vm1"
MOTO = "/opt/moto"


def owner(vm, code: str) -> str:
    """Python with boto3 (moto's venv) on the S3 host, as the bucket's owner."""
    script = ("import boto3, json\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:9000', "
              "region_name='us-east-1', aws_access_key_id='owner', aws_secret_access_key='owner')\n" + code)
    return vm.exec(f"{MOTO}/bin/python -c {shlex.quote(script)}").stdout.decode()


@pytest.fixture(scope="module")
def s3host(vm_image, tmp_path_factory):
    vm = start_test_vm(vm_image, tmp_path_factory.mktemp("moto"))
    vm.exec(f"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && "
            f"python3 -m venv {MOTO} && {MOTO}/bin/pip install -q --disable-pip-version-check 'moto[server]==5.2.1' && "
            f"systemd-run --unit=moto {MOTO}/bin/moto_server -H 0.0.0.0 -p 9000", timeout=600)
    vm.exec("i=0; until python3 -c \"import socket; socket.create_connection(('127.0.0.1', 9000), 1).close()\" "
            "2>/dev/null; do i=$((i+1)); [ $i -lt 150 ] || { journalctl -u moto --no-pager >&2; exit 1; }; "
            "sleep 0.2; done")  # poll interval between real checks
    owner(vm, f"s3.create_bucket(Bucket='{BUCKET}')\n"
              f"s3.put_bucket_versioning(Bucket='{BUCKET}', VersioningConfiguration={{'Status': 'Enabled'}})")
    vm.address = vm.container.get_wrapped_container().attrs["NetworkSettings"]["IPAddress"]
    yield vm
    vm.stop()


@pytest.fixture(scope="module")
def site(provisioned, s3host, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"home-offsite-history-{provisioned.suite}")
    section = f"offsite:\n  target: s3://{BUCKET}/{PREFIX}\n  s3_endpoint: http://{s3host.address}:9000\n"
    machine = provisioned_clone(provisioned, home, "offsite-history", edits=((TEST_WORKERS, TEST_WORKERS + section),),
                                env=KEYS)
    yield machine
    machine.vm.stop()


def test_keys_that_may_delete_old_versions_fail_the_drill_and_status(site, s3host):
    out = site.first_run.stdout
    assert "boto3 1.44.5" in out and "created history check /opt/label-studio/offsite-history.py" in out, out
    drill = site.fab("offsite", "--drill")
    said = drill.stdout + drill.stderr
    assert drill.returncode != 0, said
    # Litestream's restore and restic's check passed on this S3; the history is what fails.
    assert "the server's keys can erase the offsite history: they may delete old versions " \
           "(s3:DeleteObjectVersion); see `fab offsite --iam-policy`" in drill.stderr, said
    history = next(line for line in drill.stdout.splitlines() if line.startswith("history"))
    assert "ERASABLE by the VM's keys (bucket versioning enabled)" in history, drill.stdout
    status = site.fab("status")
    assert status.returncode != 0 and "erase the offsite history" in status.stdout + status.stderr
    # The probe's own object has versions on the bucket: the drill wrote it there.
    versions = json.loads(owner(s3host, f"print(json.dumps([v['Key'] for v in s3.list_object_versions("
                                        f"Bucket='{BUCKET}', Prefix='{PREFIX}/').get('Versions', [])]))"))
    assert any(key.startswith(f"{PREFIX}/litestream/") for key in versions)


def test_a_delete_with_the_vms_keys_only_hides_a_copy(s3host):
    """What a compromised VM's keys can do to restic's config: hide it, while its old version stays."""
    key = f"{PREFIX}/restic/config"
    code = (f"vm = boto3.client('s3', endpoint_url='http://127.0.0.1:9000', region_name='us-east-1', "
            f"aws_access_key_id='{KEYS['AWS_ACCESS_KEY_ID']}', aws_secret_access_key='x')\n"
            f"before = s3.get_object(Bucket='{BUCKET}', Key='{key}')['Body'].read()\n"
            f"vm.delete_object(Bucket='{BUCKET}', Key='{key}')\n"
            "try:\n"
            f"    s3.get_object(Bucket='{BUCKET}', Key='{key}'); hidden = False\n"
            "except s3.exceptions.NoSuchKey:\n"
            "    hidden = True\n"
            f"old = s3.list_object_versions(Bucket='{BUCKET}', Prefix='{key}')['Versions']\n"
            f"kept = s3.get_object(Bucket='{BUCKET}', Key='{key}', VersionId=old[0]['VersionId'])['Body'].read()\n"
            "print(json.dumps({'hidden': hidden, 'kept': kept == before and len(kept) > 0}))")
    assert json.loads(owner(s3host, code)) == {"hidden": True, "kept": True}
