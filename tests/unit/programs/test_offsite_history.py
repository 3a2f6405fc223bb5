"""Can the VM's keys erase the offsite history? offsite_history.probe asked of moto's S3 (versioning and
IAM as AWS evaluates them), with keys holding exactly the policy `fab offsite --iam-policy` prints, and
with keys allowed everything; then the drill's verdict on each answer."""

from __future__ import annotations

import json
import sys

import boto3
import pytest
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count

from tasks.core import offsite
from tasks.core.onserver import offsite_drill, offsite_history

BUCKET, PREFIX = "lsvm-history", "team/vm1"
SETTINGS = offsite.OffsiteSettings(target=f"s3://{BUCKET}/{PREFIX}")
REGION = "us-east-1"


def _keys(iam, policy: dict, name: str = "vm"):
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="offsite", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return boto3.client("s3", region_name=REGION, aws_access_key_id=key["AccessKeyId"],
                        aws_secret_access_key=key["SecretAccessKey"])


@set_initial_no_auth_action_count(8)   # the set-up below; every later request is IAM-checked
@mock_aws
def test_the_printed_policy_on_a_versioned_bucket_keeps_history_the_vm_cannot_erase():
    setup, iam = boto3.client("s3", region_name=REGION), boto3.client("iam", region_name=REGION)
    setup.create_bucket(Bucket=BUCKET)
    setup.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    owner = _keys(iam, {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
                  name="owner")
    vm = _keys(iam, offsite.iam_policy(SETTINGS))
    found = offsite_history.probe(vm, BUCKET, PREFIX)
    assert found == {"versioning": "Enabled", "erasable": False, "problem": None}
    # What Litestream and restic do with these keys works; deleting a copy only hides it.
    key = f"{PREFIX}/litestream/0000000000000001.ltx"
    first = vm.put_object(Bucket=BUCKET, Key=key, Body=b"pages")["VersionId"]
    vm.delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(vm.exceptions.ClientError, match="AccessDenied"):
        vm.delete_object(Bucket=BUCKET, Key=key, VersionId=first)
    with pytest.raises(vm.exceptions.ClientError, match="AccessDenied"):
        vm.put_object(Bucket=BUCKET, Key="another-team/x", Body=b"outside the prefix")
    with pytest.raises(vm.exceptions.ClientError, match="AccessDenied"):
        vm.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"})
    assert owner.get_object(Bucket=BUCKET, Key=key, VersionId=first)["Body"].read() == b"pages"
    assert offsite_drill_verdict(found) == {"history": found}
    assert offsite.history_text(SETTINGS, {"history": found}).startswith("append-only: bucket versioning enabled")


@mock_aws
def test_keys_that_may_delete_versions_are_found_and_fail_the_drill():
    owner = boto3.client("s3", region_name=REGION)
    owner.create_bucket(Bucket=BUCKET)
    owner.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    found = offsite_history.probe(owner, BUCKET, PREFIX)
    assert found == {"versioning": "Enabled", "erasable": True, "problem": None}
    verdict = offsite_drill_verdict(found)
    assert verdict["problem"].startswith("the server's keys can erase the offsite history: they may delete old "
                                         "versions (s3:DeleteObjectVersion)")
    assert offsite.history_text(SETTINGS, {"history": found}).startswith("ERASABLE by the VM's keys")


@mock_aws
def test_a_bucket_without_versioning_is_erasable():
    owner = boto3.client("s3", region_name=REGION)
    owner.create_bucket(Bucket=BUCKET)
    found = offsite_history.probe(owner, BUCKET, PREFIX)
    assert found == {"versioning": "off", "erasable": True, "problem": None}
    assert "versioning is off on the bucket" in offsite_drill_verdict(found)["problem"]


def offsite_drill_verdict(found: dict) -> dict:
    """The drill's history step, given a history program that answers `found`."""
    return offsite_drill.history_drill([sys.executable, "-c", f"print({json.dumps(json.dumps(found))})"])


def test_a_failing_history_program_fails_the_drill_in_its_words():
    verdict = offsite_drill.history_drill([sys.executable, "-c", "import sys; sys.exit('no module named boto3')"])
    assert verdict == {"problem": "the history check failed: no module named boto3"}


def test_the_history_row_for_each_kind_of_target():
    path = offsite.OffsiteSettings(target="/mnt/backup/ls")
    assert offsite.history_text(path, None).startswith("a path on this VM: root here can erase it")
    off = offsite.OffsiteSettings(target=f"s3://{BUCKET}/{PREFIX}", append_only=False)
    assert offsite.history_text(off, None).startswith("not checked (offsite.append_only: false)")
    assert offsite.history_text(SETTINGS, {"ok": True}).startswith("not checked yet")
    assert SETTINGS.checks_history and not off.checks_history and not path.checks_history


def test_the_policy_names_the_bucket_and_prefix_and_nothing_that_erases():
    policy = offsite.iam_policy(SETTINGS)
    actions = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert {"s3:PutObject", "s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:GetBucketVersioning"} <= actions
    assert not any("Version" in a and a != "s3:GetBucketVersioning" for a in actions)   # no DeleteObjectVersion
    assert not any(a.startswith(("s3:PutBucket", "s3:PutLifecycle", "s3:Bypass", "s3:DeleteBucket")) for a in actions)
    resources = {statement["Resource"] for statement in policy["Statement"]}
    assert resources == {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/{PREFIX}/*"}
