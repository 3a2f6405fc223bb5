"""SageMaker Studio tasks: run them in a Studio terminal (no -H): `fab studio.bootstrap`, ..."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tasks.core import studio, ui
from tasks.core.defaults import LABEL_STUDIO_VERSION as DEFAULT_VERSION
from tasks.core.edge import ask, local_only, task, task_edge, validate_admin_password, write_out
from tasks.core.errors import UsageError
from tasks.core.profile import check_email
from tasks.core.studio import StudioPaths

STUDIO_TASKS = "studio tasks (a Studio terminal)"


def _ask(prompt: str, secret: bool = False) -> str:
    return ask(prompt, secret=secret, otherwise=f"missing {prompt.rstrip(': ').lower()}: pass it as an option")


@task(help={"region": "AWS region, e.g. eu-west-2 (taken from the URL when it has one)",
            "studio-url": "your Studio URL (any form) or just its token",
            "username": "Label Studio login email (created on first start)",
            "version": f"label-studio version to pin (default {DEFAULT_VERSION})",
            "home": "home folder to set up (default: $HOME)", "port": "Label Studio port (default 8080)"})
@task_edge
def bootstrap(c, region=None, studio_url=None, username=None, version=DEFAULT_VERSION, home=None, port=8080):
    """Set up Label Studio in SageMaker Studio: env (conda or venv), env files, launcher. Idempotent."""
    local_only(c, STUDIO_TASKS)
    paths = StudioPaths(Path(home or os.path.expanduser("~")))
    target = studio.parse_studio_url(studio_url or _ask("Studio URL or token: "), region)
    username = username or studio.read_env_value(paths.static_env, "LABEL_STUDIO_USERNAME") or _ask("Label Studio email: ")
    if check_email(username):
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
    local_only(c, STUDIO_TASKS)
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
    local_only(c, STUDIO_TASKS)
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
        write_out(out, text)
        ui.step(True, f"wrote {out}")
    else:
        sys.stdout.write(text)


@task(help={"domain-id": "Studio domain id (d-...)", "user-profile": "Studio user profile name",
            "region": "AWS region (default: the AWS configuration's)"})
@task_edge
def presigned_url(c, domain_id=None, user_profile=None, region=None):
    """Print a presigned Studio login URL (boto3 if installed, else the aws CLI)."""
    local_only(c, STUDIO_TASKS)
    if not domain_id or not user_profile:
        raise UsageError("--domain-id and --user-profile are required")
    studio.check_iam_values(region or "us-east-1", "000000000000", domain_id, user_profile)
    ui.out.print(studio.presigned_url(domain_id, user_profile, region), markup=False, highlight=False)
