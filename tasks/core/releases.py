"""Which Label Studio releases exist: read from the package index on this machine (never from the server,
and only when asked)."""

from __future__ import annotations

import json
import urllib.request

from packaging.version import InvalidVersion, Version

from tasks.core import ui
from tasks.core.commands.provision import build_release
from tasks.core.connect import Host
from tasks.core.defaults import PIP_TIMEOUT
from tasks.core.errors import RemoteError, UsageError
from tasks.core.profile import Profile

PYPI_SIMPLE = "https://pypi.org/simple/"


def pypi_versions(profile: Profile) -> list[str]:
    """Released versions of label-studio on the profile's index (PEP 691 JSON), newest first."""
    index = (profile.pip.index_url or PYPI_SIMPLE).rstrip("/") + "/label-studio/"
    request = urllib.request.Request(index, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            body = json.load(answer)
    except (OSError, ValueError) as exc:
        raise RemoteError(f"could not read the releases from {index}: {exc}") from None
    found = set(body.get("versions") or [])
    for file in body.get("files", []):
        name = file.get("filename", "")
        if name.startswith("label_studio-") and name.endswith(".whl"):
            found.add(name.split("-")[1])
    versions = []
    for value in found:
        try:
            parsed = Version(value)
        except InvalidVersion:
            continue
        if not parsed.is_prerelease:
            versions.append(parsed)
    return [str(v) for v in sorted(versions, reverse=True)]


def release_label(version: str) -> str:
    """A snapshot label for a version (labels take letters, digits and '-')."""
    return "".join(ch if ch.isalnum() else "-" for ch in version.lower())[:28]


def checked_version(value: str) -> str:
    try:
        Version(value)
    except InvalidVersion:
        raise UsageError(f"'{value}' is not a version pip accepts (for example 1.23.2)") from None
    return value


def build_beside(host: Host, profile: Profile, version: str, *, built: bool) -> None:
    """Release `version` in its own venv beside the running one (no service impact). One `built` already
    only gets what an older toolkit's build lacked (gunicorn)."""
    where = profile.release_dir(version)
    if built:
        host.run(build_release(profile, version), sudo=True, timeout=PIP_TIMEOUT,
                 what=f"checking the app server of label-studio {version}")
        ui.step(False, f"label-studio {version} is already built in {where} on {host.alias}")
        return
    with ui.err.status(f"{host.alias}: pip install label-studio=={version} into {where} (a minute or more)"):
        host.run(build_release(profile, version), sudo=True, timeout=PIP_TIMEOUT,
                 what=f"building label-studio {version}")
    ui.step(True, f"built label-studio {version} in {where} on {host.alias} (the service kept running)")
