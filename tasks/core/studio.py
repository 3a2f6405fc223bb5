"""SageMaker Studio: URL parsing, env files, launcher, IAM policy. Runs where you are (a Studio terminal).

Pure parts (parsing, validation, rendering) are unit-tested; `bootstrap` compares and acts only if needed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tasks.core import defaults, render, ui
from tasks.core.commands import secret_key
from tasks.core.defaults import SECRET_ENV
from tasks.core.errors import RemoteError, ToolkitError, UsageError
from tasks.core.files import write_atomic

REGION = re.compile(r"^[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d$")
TOKEN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
STUDIO_HOST = re.compile(r"^([a-z0-9-]+)\.studio\.([a-z0-9-]+)\.sagemaker\.aws$")
ACCOUNT = re.compile(r"^\d{12}$")
DOMAIN = re.compile(r"^d-[a-z0-9]{1,60}$")
USER_PROFILE = re.compile(r"^[a-zA-Z0-9](?:-*[a-zA-Z0-9]){0,62}$")
DEFAULT_PORT = defaults.LABEL_STUDIO_PORT
SDK_VERSION = defaults.LABEL_STUDIO_SDK_VERSION


@dataclass(frozen=True)
class StudioTarget:
    token: str
    region: str

    @property
    def origin(self) -> str:
        return f"https://{self.token}.studio.{self.region}.sagemaker.aws"

    def proxy_url(self, port: int = DEFAULT_PORT) -> str:
        return f"{self.origin}/jupyterlab/default/proxy/{int(port)}/"


def check_region(region: str) -> str:
    value = (region or "").strip().lower()
    if not REGION.match(value):
        raise UsageError(f"'{region}' is not an AWS region (for example eu-west-2)")
    return value


def parse_studio_url(value: str, region: str | None = None) -> StudioTarget:
    """A bare token, or any form of a Studio URL (scheme optional, any path, trailing slash, upper case).
    The region comes from the URL when it has one; a bare token needs `region`."""
    text = (value or "").strip()
    if not text:
        raise UsageError("no Studio URL or token given")
    lowered = text.lower()
    if "://" in lowered:
        scheme, _, rest = lowered.partition("://")
        if scheme != "https":
            raise UsageError(f"'{text}' is not a Studio URL: Studio URLs start with https://")
    else:
        rest = lowered
    host = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "." not in host:
        if not TOKEN.match(host) or host != rest.rstrip("/"):
            raise UsageError(f"'{text}' is neither a Studio token (letters, digits, '-') nor a Studio URL")
        if not region:
            raise UsageError(f"a bare token ('{host}') needs --region (or give the whole Studio URL)")
        return StudioTarget(host, check_region(region))
    match = STUDIO_HOST.match(host.split(":")[0])
    if not match or not TOKEN.match(match.group(1)):
        raise UsageError(f"'{text}' is not a Studio URL like https://<token>.studio.<region>.sagemaker.aws")
    found_region = check_region(match.group(2))
    if region and check_region(region) != found_region:
        raise UsageError(f"--region {region} differs from the URL's region {found_region}")
    return StudioTarget(match.group(1), found_region)


def check_iam_values(region: str, account_id: str, domain_id: str, user_profile: str) -> dict:
    values = {"region": check_region(region), "account_id": str(account_id).strip(),
              "domain_id": str(domain_id).strip(), "user_profile": str(user_profile).strip()}
    if not ACCOUNT.match(values["account_id"]):
        raise UsageError(f"account id '{account_id}' must be 12 digits")
    if not DOMAIN.match(values["domain_id"]):
        raise UsageError(f"domain id '{domain_id}' must look like d-xxxxxxxxxxxx")
    if not USER_PROFILE.match(values["user_profile"]):
        raise UsageError(f"user profile '{user_profile}' must be letters, digits and '-' (at most 63)")
    return values


def partition(region: str) -> str:
    """The ARN partition of a region: aws-cn in China, aws-us-gov in GovCloud, aws-iso[-x] in the
    isolated regions, aws elsewhere."""
    area = region.split("-")[1]
    if region.startswith("cn-"):
        return "aws-cn"
    if area == "gov":
        return "aws-us-gov"
    if area.startswith("iso"):
        return "aws-iso" + (f"-{area[3:]}" if area[3:] else "")
    return "aws"


def iam_policy(region: str, account_id: str, domain_id: str, user_profile: str) -> dict:
    values = check_iam_values(region, account_id, domain_id, user_profile)
    return json.loads(render.render("studio/iam-policy.json.j2", partition=partition(values["region"]), **values))


def trust_policy() -> dict:
    return json.loads(render.render("studio/trust-policy.json.j2"))


# ------------------------------------------------------------------------------------------------
# Files and environment in the user's home


@dataclass(frozen=True)
class StudioPaths:
    home: Path

    @property
    def env_dir(self) -> Path:
        return self.home / "conda-envs" / "labelstudio"

    @property
    def config_dir(self) -> Path:
        return self.home / ".labelstudio"

    @property
    def static_env(self) -> Path:
        return self.config_dir / "static.env"

    @property
    def session_env(self) -> Path:
        return self.config_dir / "session.env"

    @property
    def launcher(self) -> Path:
        return self.home / "start_labelstudio.sh"

    @property
    def data_dir(self) -> Path:
        return self.home / "labelstudio-data"

    @property
    def label_studio_bin(self) -> Path:
        return self.env_dir / "bin" / "label-studio"

    @property
    def python(self) -> Path:
        return self.env_dir / "bin" / "python"


def render_static_env(username: str, password: str) -> str:
    return render.render("studio/static.env.j2", username=username, password=password)


def render_session_env(target: StudioTarget, port: int = DEFAULT_PORT) -> str:
    return render.render("studio/session.env.j2", origin=target.origin, proxy_url=target.proxy_url(port))


def render_launcher(paths: StudioPaths, port: int = DEFAULT_PORT) -> str:
    return render.render("studio/start_labelstudio.sh.j2", static_env=paths.static_env,
                         session_env=paths.session_env, data_dir=paths.data_dir,
                         label_studio_bin=paths.label_studio_bin, port=int(port),
                         ensure_secret_key=secret_key.ensure(PurePosixPath(paths.data_dir / SECRET_ENV)))


def read_env_value(path: Path, key: str) -> str | None:
    """A value from one of our env files (as `sh` would read it)."""
    if not path.is_file():
        return None
    result = subprocess.run(["sh", "-c", f'set -a; . "$1"; printf %s "${{{key}:-}}"', "sh", str(path)],
                            capture_output=True, text=True)
    return result.stdout if result.returncode == 0 and result.stdout else None


def write_file(path: Path, content: str, mode: int) -> bool:
    """Write (LF endings, given mode) only when content or mode differ; True when something changed."""
    data = content.replace("\r\n", "\n").encode()
    if path.is_file() and path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
        return False
    write_atomic(path, data, mode)
    return True


def conda_sh() -> Path | None:
    candidate = Path("/opt/conda/etc/profile.d/conda.sh")
    if candidate.is_file():
        return candidate
    conda = shutil.which("conda")
    if conda:
        guess = Path(conda).resolve().parents[1] / "etc" / "profile.d" / "conda.sh"
        return guess if guess.is_file() else None
    return None


def installed_versions(paths: StudioPaths) -> dict[str, str | None]:
    if not paths.python.exists():
        return {"label-studio": None, "label-studio-sdk": None}
    code = ("import importlib.metadata as m, json\nout = {}\nfor n in ('label-studio', 'label-studio-sdk'):\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: out[n] = None\nprint(json.dumps(out))")
    result = subprocess.run([str(paths.python), "-c", code], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else {"label-studio": None, "label-studio-sdk": None}


def run_logged(command: list[str], what: str, *, timeout: int = 3600) -> None:
    with ui.err.status(what):
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-5:]
        raise ToolkitError(f"{what} failed: " + " | ".join(tail))


def ensure_environment(paths: StudioPaths, version: str, sdk_version: str) -> list[tuple[bool, str]]:
    steps: list[tuple[bool, str]] = []
    conda = conda_sh()
    if paths.python.exists():
        steps.append((False, f"environment {paths.env_dir} exists"))
    elif conda:
        run_logged(["bash", "-c", '. "$1" && conda create -y -q -p "$2" python=3.11 pip',
                    "bash", str(conda), str(paths.env_dir)], f"conda create -p {paths.env_dir}")
        steps.append((True, f"created conda environment {paths.env_dir}"))
    else:
        run_logged(["python3", "-m", "venv", str(paths.env_dir)], f"python3 -m venv {paths.env_dir}")
        steps.append((True, f"created venv {paths.env_dir} (no conda here)"))
    have = installed_versions(paths)
    wanted = {"label-studio": version, "label-studio-sdk": sdk_version}
    if have == wanted:
        steps.append((False, f"label-studio {version} and label-studio-sdk {sdk_version} are installed"))
    else:
        run_logged([str(paths.python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"label-studio=={version}", f"label-studio-sdk=={sdk_version}"],
                   f"pip install label-studio=={version} label-studio-sdk=={sdk_version} (a minute or more)")
        before = ", ".join(f"{k} {v}" for k, v in have.items() if v) or "nothing"
        steps.append((True, f"installed label-studio {version}, label-studio-sdk {sdk_version} (was: {before})"))
    return steps


def presigned_url(domain_id: str, user_profile: str, region: str | None) -> str:
    """A presigned Studio login URL from boto3 when installed, else from the aws CLI."""
    try:
        import boto3  # type: ignore
    except ImportError:
        boto3 = None
    if boto3 is not None:
        client = boto3.client("sagemaker", region_name=region) if region else boto3.client("sagemaker")
        try:
            return client.create_presigned_domain_url(DomainId=domain_id, UserProfileName=user_profile)["AuthorizedUrl"]
        except Exception as exc:  # botocore's errors: credentials, permissions, network
            raise RemoteError(f"AWS refused the presigned URL: {exc}") from None
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
    return result.stdout.strip()
