"""Recorded probe output of real test VMs (a bare Debian 12 and a provisioned one), parsed into facts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tasks.core.provision.facts import provision_facts_from_probe
from tasks.core.profile import Profile, parse_profile

DATA = Path(__file__).parent / "data"
# The profile the recorded server (data/provision_probe_provisioned.txt) was provisioned with.
PROFILE = Profile(host="vm", address="127.0.0.1", public_url="http://127.0.0.1:59503")


@pytest.fixture
def provisioned():
    return provision_facts_from_probe((DATA / "provision_probe_provisioned.txt").read_text())


@pytest.fixture
def bare():
    return provision_facts_from_probe((DATA / "provision_probe_bare.txt").read_text())


def profile_on_this_machine(text: str = "", *, user: str | None = None, app_dir=None, data_dir=None,
                            host: str = "vm") -> Profile:
    """A profile whose paths are a test's temporary folders (and whose service user is whoever runs the
    tests), for scripts run for real here: values the profile refuses from a user's YAML (a folder under
    /tmp, root), set after its checks."""
    profile = parse_profile(text, host=host)
    paths = dataclasses.replace(profile.paths, **{k: str(v) for k, v in (("app_dir", app_dir), ("data_dir", data_dir))
                                                  if v is not None})
    service = profile.service if user is None else dataclasses.replace(profile.service, user=user)
    return dataclasses.replace(profile, paths=paths, service=service)
