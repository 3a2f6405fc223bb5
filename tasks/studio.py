"""SageMaker Studio tasks: run them in a Studio terminal (no -H): `fab studio.bootstrap`, ..."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from fabric import Connection, task
from invoke import Collection

from .core import studio, ui
from .core.edge import task_edge
from .core.errors import RemoteError, UsageError
from .core.ops import validate_admin_password
from .core.profile import _email
from .core.studio import StudioPaths

DEFAULT_VERSION = "1.23.2"


def _local_only(c) -> None:
    if isinstance(c, Connection):
        raise UsageError("studio tasks run where you are (a Studio terminal): drop -H")


def _ask(prompt: str, secret: bool = False) -> str:
    if not sys.stdin.isatty():
        raise UsageError(f"missing {prompt.rstrip(': ').lower()}, and no terminal to ask for it")
    return (ui.ask_secret(prompt) if secret else ui.err.input(prompt)).strip()


@task(help={"region": "AWS region, e.g. eu-west-2 (taken from the URL when it has one)",
            "studio-url": "your Studio URL (any form) or just its token",
            "username": "Label Studio login email (created on first start)",
            "version": f"label-studio version to pin (default {DEFAULT_VERSION})",
            "home": "home folder to set up (default: $HOME)", "port": "Label Studio port (default 8080)"})
@task_edge
def bootstrap(c, region=None, studio_url=None, username=None, version=DEFAULT_VERSION, home=None, port=8080):
    """Set up Label Studio in SageMaker Studio: env (conda or venv), env files, launcher. Idempotent."""
    _local_only(c)
    paths = StudioPaths(Path(home or os.path.expanduser("~")))
    target = studio.parse_studio_url(studio_url or _ask("Studio URL or token: "), region)
    username = username or studio.read_env_value(paths.static_env, "LABEL_STUDIO_USERNAME") or _ask("Label Studio email: ")
    if _email(username):
        raise UsageError(f"'{username}' is not an email address")
    password = (os.environ.get("LABEL_STUDIO_PASSWORD")
                or studio.read_env_value(paths.static_env, "LABEL_STUDIO_PASSWORD")
                or _ask(f"Password for {username}: ", secret=True))
    validate_admin_password(password)

    ui.out.print(f"[bold]studio bootstrap[/bold] ({paths.home})")
    for changed, what in studio.ensure_environment(paths, version, studio.SDK_VERSION):
        ui.step(changed, what)
    files = [
        (paths.static_env, studio.render_static_env(username, password), 0o600, "static.env"),
        (paths.session_env, studio.render_session_env(target, int(port)), 0o600, "session.env"),
        (paths.launcher, studio.render_launcher(paths, int(port)), 0o755, "launcher"),
    ]
    paths.config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(paths.config_dir, 0o700)
    for path, content, mode, label in files:
        changed = studio.write_file(path, content, mode)
        ui.step(changed, f"wrote {label} {path}" if changed else f"{label} is up to date")
    ui.out.print(f"\nStart it with [bold]{paths.launcher}[/bold]; then open {target.proxy_url(int(port))}")


@task(help={"studio-url": "the new Studio URL or token", "region": "AWS region (for a bare token)",
            "home": "home folder (default: $HOME)", "port": "Label Studio port (default 8080)"})
@task_edge
def session(c, studio_url=None, region=None, home=None, port=8080):
    """Point session.env at a new Studio URL (when Studio hands out a new token)."""
    _local_only(c)
    if not studio_url:
        raise UsageError("--studio-url is required")
    paths = StudioPaths(Path(home or os.path.expanduser("~")))
    target = studio.parse_studio_url(studio_url, region)
    changed = studio.write_file(paths.session_env, studio.render_session_env(target, int(port)), 0o600)
    ui.step(changed, f"session.env now points at {target.proxy_url(int(port))}" if changed
            else "session.env is up to date")


@task(help={"region": "AWS region", "account-id": "12-digit AWS account id", "domain-id": "Studio domain id (d-...)",
            "user-profile": "Studio user profile name", "out": "write to this file instead of stdout",
            "trust": "print the role's trust policy instead"})
@task_edge
def iam_policy(c, region=None, account_id=None, domain_id=None, user_profile=None, out=None, trust=False):
    """Print the customer-managed IAM policy that lets your profile create Studio apps (or --trust)."""
    _local_only(c)
    if trust:
        policy = studio.trust_policy()
    else:
        missing = [n for n, v in (("--region", region), ("--account-id", account_id), ("--domain-id", domain_id),
                                  ("--user-profile", user_profile)) if not v]
        if missing:
            raise UsageError("missing " + ", ".join(missing))
        policy = studio.iam_policy(region, account_id, domain_id, user_profile)
    text = json.dumps(policy, indent=2) + "\n"
    if out:
        Path(out).write_text(text)
        ui.step(True, f"wrote {out}")
    else:
        sys.stdout.write(text)


@task(help={"domain-id": "Studio domain id (d-...)", "user-profile": "Studio user profile name",
            "region": "AWS region (default: the AWS configuration's)"})
@task_edge
def presigned_url(c, domain_id=None, user_profile=None, region=None):
    """Print a presigned Studio login URL (boto3 if installed, else the aws CLI)."""
    _local_only(c)
    if not domain_id or not user_profile:
        raise UsageError("--domain-id and --user-profile are required")
    studio.check_iam_values(region or "us-east-1", "000000000000", domain_id, user_profile)
    try:
        import boto3  # type: ignore
    except ImportError:
        boto3 = None
    if boto3 is not None:
        client = boto3.client("sagemaker", region_name=region) if region else boto3.client("sagemaker")
        try:
            url = client.create_presigned_domain_url(DomainId=domain_id, UserProfileName=user_profile)["AuthorizedUrl"]
        except Exception as exc:  # botocore's errors: credentials, permissions, network
            raise RemoteError(f"AWS refused the presigned URL: {exc}") from None
        print(url)
        return
    aws = shutil.which("aws")
    if not aws:
        raise UsageError("neither boto3 nor the aws CLI is installed",
                         hint="pip install boto3, or install the AWS CLI")
    command = [aws, "sagemaker", "create-presigned-domain-url", "--domain-id", domain_id,
               "--user-profile-name", user_profile, "--query", "AuthorizedUrl", "--output", "text"]
    if region:
        command[1:1] = ["--region", region]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RemoteError(f"aws CLI failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    print(result.stdout.strip())


ns = Collection("studio")
for _task in (bootstrap, session, iam_policy, presigned_url):
    ns.add_task(_task)
