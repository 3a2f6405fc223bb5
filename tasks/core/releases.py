"""Which Label Studio releases exist: read from the package index on this machine (never from the server,
and only when asked)."""

from __future__ import annotations

import json
import urllib.request

from packaging.version import InvalidVersion, Version

from tasks.core.errors import RemoteError
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
