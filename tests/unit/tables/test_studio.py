"""SageMaker Studio core: URL/token parsing (table), IAM policy vs the seed, env files and launcher."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tasks.core import studio
from tasks.core.errors import UsageError
from tasks.core.studio import StudioPaths, StudioTarget

GOOD = [
    ("abcd1234", "eu-west-2", StudioTarget("abcd1234", "eu-west-2")),
    ("  abcd1234  ", "EU-WEST-2", StudioTarget("abcd1234", "eu-west-2")),
    ("https://abcd1234.studio.eu-west-2.sagemaker.aws", None, StudioTarget("abcd1234", "eu-west-2")),
    ("https://abcd1234.studio.eu-west-2.sagemaker.aws/", None, StudioTarget("abcd1234", "eu-west-2")),
    ("HTTPS://ABCD1234.STUDIO.EU-WEST-2.SAGEMAKER.AWS/JupyterLab/default/lab", None, StudioTarget("abcd1234", "eu-west-2")),
    ("https://d-x1y2z3.studio.us-east-1.sagemaker.aws/jupyterlab/default/proxy/8080/", None,
     StudioTarget("d-x1y2z3", "us-east-1")),
    ("abcd1234.studio.ap-southeast-2.sagemaker.aws", None, StudioTarget("abcd1234", "ap-southeast-2")),
    ("https://qwerty99.studio.us-gov-west-1.sagemaker.aws?foo=bar#x", None, StudioTarget("qwerty99", "us-gov-west-1")),
    ("https://abcd1234.studio.eu-west-2.sagemaker.aws", "eu-west-2", StudioTarget("abcd1234", "eu-west-2")),
]

BAD = [
    ("", None, "no Studio URL"),
    ("abcd1234", None, "needs --region"),
    ("abcd1234", "europe", "not an AWS region"),
    ("http://abcd1234.studio.eu-west-2.sagemaker.aws", None, "https://"),
    ("https://example.com/jupyterlab", None, "not a Studio URL"),
    ("https://abcd1234.studio.eu-west-2.amazonaws.com", None, "not a Studio URL"),
    ("abc_d1234", "eu-west-2", "neither a Studio token"),
    ("abcd 1234", "eu-west-2", "neither a Studio token"),
    ("https://abcd1234.studio.eu-west-2.sagemaker.aws", "us-east-1", "differs"),
    ("ftp://abcd1234.studio.eu-west-2.sagemaker.aws", None, "https://"),
]


@pytest.mark.parametrize("value, region, expected", GOOD)
def test_good_studio_urls(value, region, expected):
    assert studio.parse_studio_url(value, region) == expected


@pytest.mark.parametrize("value, region, words", BAD)
def test_bad_studio_urls(value, region, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace("+", r"\+")):
        studio.parse_studio_url(value, region)


def test_proxy_url_and_origin():
    target = StudioTarget("abcd1234", "eu-west-2")
    assert target.origin == "https://abcd1234.studio.eu-west-2.sagemaker.aws"
    assert target.proxy_url() == "https://abcd1234.studio.eu-west-2.sagemaker.aws/jupyterlab/default/proxy/8080/"


SEED_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "AllowCreateDeleteAppsForUserProfile",
      "Effect": "Allow",
      "Action": ["sagemaker:CreateApp", "sagemaker:DeleteApp", "sagemaker:AddTags"],
      "Resource": "arn:aws:sagemaker:<REGION>:<ACCOUNT_ID>:app/<DOMAIN_ID>/user-profile/<USER_PROFILE_NAME>/*/*",
      "Condition": {"ArnEquals": {"sagemaker:OwnerUserProfileArn":
        "arn:aws:sagemaker:<REGION>:<ACCOUNT_ID>:user-profile/<DOMAIN_ID>/<USER_PROFILE_NAME>"}}
    },
    {
      "Sid": "AllowCreateDeleteAppsForPrivateSpaces",
      "Effect": "Allow",
      "Action": ["sagemaker:CreateApp", "sagemaker:DeleteApp", "sagemaker:AddTags"],
      "Resource": "arn:aws:sagemaker:<REGION>:<ACCOUNT_ID>:app/<DOMAIN_ID>/space/*/*/*",
      "Condition": {"StringEquals": {"sagemaker:SpaceSharingType": "Private"}}
    }
  ]
}"""


def seed_policy(region: str, partition: str = "aws") -> dict:
    """The seed's policy with values filled in, plus what it lacks: the private-space statement is
    limited to the user's own spaces (sagemaker:OwnerUserProfileArn, as in AWS's example)."""
    policy = json.loads(SEED_POLICY.replace("<REGION>", region).replace("<ACCOUNT_ID>", "123456789012")
                        .replace("<DOMAIN_ID>", "d-abc123xyz").replace("<USER_PROFILE_NAME>", "alice-1")
                        .replace("arn:aws:", f"arn:{partition}:"))
    own, spaces = policy["Statement"]
    spaces["Condition"]["ArnEquals"] = own["Condition"]["ArnEquals"]
    return policy


def test_iam_policy_equals_the_seed_with_values_filled_in():
    expected = seed_policy("eu-west-2")
    assert expected["Statement"][1]["Condition"] == {
        "StringEquals": {"sagemaker:SpaceSharingType": "Private"},
        "ArnEquals": {"sagemaker:OwnerUserProfileArn":
                      "arn:aws:sagemaker:eu-west-2:123456789012:user-profile/d-abc123xyz/alice-1"}}
    assert studio.iam_policy("eu-west-2", "123456789012", "d-abc123xyz", "alice-1") == expected
    assert studio.trust_policy() == {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


@pytest.mark.parametrize("region, partition", [
    ("eu-west-2", "aws"), ("us-east-1", "aws"), ("us-gov-west-1", "aws-us-gov"), ("cn-north-1", "aws-cn"),
    ("cn-northwest-1", "aws-cn"), ("us-iso-east-1", "aws-iso"), ("us-isob-east-1", "aws-iso-b"),
])
def test_iam_policy_arns_are_in_the_region_s_partition(region, partition):
    assert studio.partition(region) == partition
    assert studio.iam_policy(region, "123456789012", "d-abc123xyz", "alice-1") == seed_policy(region, partition)


@pytest.mark.parametrize("args, words", [
    (("eu-west-2", "12345", "d-abc", "alice"), "12 digits"),
    (("eu-west-2", "123456789012", "abc", "alice"), "d-"),
    (("eu-west-2", "123456789012", "d-abc", "alice smith"), "user profile"),
    (("westeurope", "123456789012", "d-abc", "alice"), "AWS region"),
])
def test_iam_policy_refuses_bad_values(args, words):
    with pytest.raises(UsageError, match=words):
        studio.iam_policy(*args)


def test_env_files_are_shell_safe_and_lf(tmp_path: Path):
    nasty = "pa$$ 'w\"ord; rm -rf ~"
    static = studio.render_static_env("me@example.com", nasty)
    assert "\r" not in static
    path = tmp_path / "static.env"
    path.write_text(static)
    assert studio.read_env_value(path, "LABEL_STUDIO_PASSWORD") == nasty
    assert studio.read_env_value(path, "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK") == "true"
    session = studio.render_session_env(StudioTarget("abcd1234", "eu-west-2"))
    (tmp_path / "session.env").write_text(session)
    assert studio.read_env_value(tmp_path / "session.env", "LABEL_STUDIO_HOST") == \
        "https://abcd1234.studio.eu-west-2.sagemaker.aws/jupyterlab/default/proxy/8080/"
    assert studio.read_env_value(tmp_path / "session.env", "CSRF_TRUSTED_ORIGINS") == \
        "https://abcd1234.studio.eu-west-2.sagemaker.aws"
    assert "DJANGO_ALLOWED_HOSTS" not in session + static


def test_launcher_is_valid_bash_with_the_right_flags(tmp_path: Path):
    text = studio.render_launcher(StudioPaths(tmp_path))
    assert text.startswith("#!/usr/bin/env bash\n") and "\r" not in text
    assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0
    for flag in ("--internal-host 127.0.0.1", "--no-browser", "--port 8080", f"--data-dir {tmp_path}/labelstudio-data"):
        assert flag in text


def test_write_file_changes_only_when_needed(tmp_path: Path):
    path = tmp_path / "f"
    assert studio.write_file(path, "a\r\nb\n", 0o600) is True
    assert path.read_bytes() == b"a\nb\n" and oct(path.stat().st_mode & 0o777) == "0o600"
    assert studio.write_file(path, "a\nb\n", 0o600) is False
    path.chmod(0o644)
    assert studio.write_file(path, "a\nb\n", 0o600) is True
