"""Where Label Studio keeps uploads: the profile's `media:` section. Pure: the settings and their checks,
the lines of Label Studio's own settings (`STORAGE_TYPE=s3`, `STORAGE_AWS_*`), the credentials' file and
what nginx needs to hand a bucket's file to the browser.

    storage: local (files in the data dir's media/) | s3://bucket[/prefix] (an S3-compatible bucket)
    s3_endpoint, s3_region: the service's URL (MinIO, Ceph, R2, rclone ...), no endpoint = AWS

With a bucket, Label Studio (django-storages) writes each upload there under the prefix and answers a
request for it with `X-Accel-Redirect: /file_download/<scheme>/<host>/<path>?<signature>` (a URL it signs
for that one object); nginx fetches it from the bucket and streams it to the browser. nginx proxies that
internal location to the profile's endpoint alone, so a redirect can never make it fetch another host.
The keys come from this machine's environment (LSVM_MEDIA_ACCESS_KEY_ID, LSVM_MEDIA_SECRET_ACCESS_KEY) at
provision time into a root-only 0600 file systemd reads (EnvironmentFile=): never the profile, argv or
a log. Label Studio's own processes hold them (they sign the URLs); keys allowed on that bucket alone
are the ones to give.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tasks.core import offsite
from tasks.core.errors import RemoteError, UsageError
from tasks.core.offsite import Target, parse_target, target_problem
from tasks.core.offsite import _endpoint, _region

CREDENTIAL_ENV = ("LSVM_MEDIA_ACCESS_KEY_ID", "LSVM_MEDIA_SECRET_ACCESS_KEY")
# Label Studio's names for them (label_studio/core/settings/base.py, STORAGE_TYPE == 's3').
SETTING_KEYS = ("STORAGE_AWS_ACCESS_KEY_ID", "STORAGE_AWS_SECRET_ACCESS_KEY")
DOWNLOAD_LOCATION = "/file_download/"


def _storage(value: str) -> str | None:
    if value == "local":
        return None
    if not value.startswith("s3://"):
        return "must be local or s3://bucket/prefix (an S3-compatible bucket)"
    return target_problem(value)


def _opt(default, check=None):
    return field(default=default, metadata={"check": check} if check else {})


@dataclass(frozen=True)
class MediaSettings:
    storage: str = _opt("local", _storage)
    s3_endpoint: str | None = _opt(None, _endpoint)
    s3_region: str = _opt("us-east-1", _region)

    @property
    def in_bucket(self) -> bool:
        return self.storage != "local"

    @property
    def bucket(self) -> Target | None:
        return parse_target(self.storage) if self.in_bucket else None

    @property
    def endpoint(self) -> str:
        """The URL Label Studio signs for: the profile's endpoint, else AWS's regional one."""
        if self.s3_endpoint:
            return self.s3_endpoint.rstrip("/")
        return f"https://s3.{self.s3_region}.amazonaws.com"

    def describe(self) -> str:
        if not self.in_bucket:
            return "local files in the data dir"
        return f"{self.bucket.describe()} at {self.endpoint}"


def label_studio_env(settings: MediaSettings) -> list[tuple[str, str]]:
    """The env file's lines for uploads in the bucket (none for local files); no secret among them."""
    bucket = settings.bucket
    if bucket is None:
        return []
    scheme = urlsplit(settings.endpoint).scheme
    lines = [("STORAGE_TYPE", "s3"), ("STORAGE_AWS_BUCKET_NAME", bucket.bucket),
             ("STORAGE_AWS_REGION_NAME", settings.s3_region), ("STORAGE_AWS_ENDPOINT_URL", settings.endpoint),
             ("STORAGE_AWS_S3_USE_SSL", "true" if scheme == "https" else "false"),
             # boto3 signs a custom endpoint's download URLs with SigV2 otherwise, which AWS's newer regions
             # and S3-compatible services refuse ("UnsupportedAlgorithm").
             ("STORAGE_AWS_S3_SIGNATURE_VERSION", "s3v4")]
    if bucket.prefix:
        lines.append(("STORAGE_AWS_FOLDER", bucket.prefix))
    return lines


def server_lines(env_file: str | None) -> list[tuple[str, str]]:
    """The uploads' lines of the server's env file (label_studio_env's, as written there), in order."""
    found = []
    for line in (env_file or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("STORAGE_"):
            found.append((key, value))
    return found


def describe_lines(lines: list[tuple[str, str]]) -> str:
    """Where a server's env file keeps uploads, in words."""
    values = dict(lines)
    folder = values.get("STORAGE_AWS_FOLDER")
    return (f"s3://{values.get('STORAGE_AWS_BUCKET_NAME', '?')}{'/' + folder if folder else ''} at "
            f"{values.get('STORAGE_AWS_ENDPOINT_URL', 'AWS')}")


@dataclass(frozen=True)
class DownloadProxy:
    """nginx's internal location for Label Studio's X-Accel-Redirect to a signed bucket URL: the one host
    it may fetch from, the endpoint's."""

    scheme: str
    host: str          # what the URL names (and the signature covers): host[:port]

    @property
    def server(self) -> str:
        """host:port for nginx's upstream (resolved when nginx loads its configuration)."""
        if re.search(r":\d+$", self.host):
            return self.host
        return f"{self.host}:{443 if self.scheme == 'https' else 80}"

    @property
    def pattern(self) -> str:
        """The location's regex: /file_download/<scheme>/<host>/<rest>, the host matched literally."""
        return f"^{DOWNLOAD_LOCATION}{self.scheme}/{re.escape(self.host)}/(.*)$"


def download_proxy(settings: MediaSettings) -> DownloadProxy | None:
    """With an endpoint URL set (the env file always sets one), boto3 signs path-style URLs on that host."""
    if not settings.in_bucket:
        return None
    url = urlsplit(settings.endpoint)
    return DownloadProxy(url.scheme, url.netloc)


def profile_problem(settings: MediaSettings, *, service_manager: str) -> str | None:
    if settings.in_bucket and service_manager != "systemd":
        return ("media.storage in a bucket needs service.manager: systemd (its keys are root-only, read by "
                "systemd; the screen launcher runs as the service user)")
    return None


def copier_report(text: str) -> dict:
    """The copier's last line (onserver/media_copy.py: its JSON report); RemoteError when there is none."""
    last = (text.strip().splitlines() or [""])[-1]
    try:
        report = json.loads(last)
    except ValueError:
        report = None
    if not isinstance(report, dict) or "files" not in report:
        raise RemoteError(f"the copier gave no report ({last[:200] or 'nothing'})")
    return report


def credentials_from_env(env: dict[str, str]) -> dict[str, str] | None:
    """The bucket's keys when this machine's environment holds any of them, else None (the stored ones
    stay)."""
    return offsite.credentials_from_env(env, CREDENTIAL_ENV)


def credentials_problem(values: dict[str, str | None]) -> str | None:
    return offsite.credentials_problem(values, CREDENTIAL_ENV)


def keys_given(settings: MediaSettings, env: dict[str, str], *, stored: bool) -> dict[str, str] | None:
    """The bucket's keys from this machine's environment (checked), None to keep the ones stored on the
    server (or for local files); UsageError when there are none anywhere."""
    if not settings.in_bucket:
        return None
    values = credentials_from_env(env)
    if values is None and stored:
        return None
    problem = credentials_problem(values or {})
    if problem:
        raise UsageError(f"media.storage {settings.storage}: {problem}; nothing was changed",
                         hint="the keys of an account that may read and write that bucket (and only it)")
    return values


def credentials_file(values: dict[str, str]) -> bytes:
    """The root-only 0600 file systemd reads for Label Studio (EnvironmentFile=); sent on stdin."""
    return "".join(f"{name}={values[key]}\n" for key, name in zip(CREDENTIAL_ENV, SETTING_KEYS)).encode()
