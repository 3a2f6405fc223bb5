"""Recorded probe output of real test VMs (a bare Debian 12 and a provisioned one), parsed into facts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.facts import provision_facts_from_probe
from tasks.core.profile import Profile

DATA = Path(__file__).parent / "data"
# The profile the recorded server (data/provision_probe_provisioned.txt) was provisioned with.
PROFILE = Profile(host="vm", address="127.0.0.1", public_url="http://127.0.0.1:59503")


@pytest.fixture
def provisioned():
    return provision_facts_from_probe((DATA / "provision_probe_provisioned.txt").read_text())


@pytest.fixture
def bare():
    return provision_facts_from_probe((DATA / "provision_probe_bare.txt").read_text())
