"""Fixtures: recorded probe output of real test VMs (a bare Debian 12 and a provisioned one), parsed into facts.
What tests share besides fixtures is in tests/unit/samples.py."""

from __future__ import annotations

import pytest

from tasks.core.provision.facts import provision_facts_from_probe
from tests.unit.samples import DATA


@pytest.fixture
def provisioned():
    return provision_facts_from_probe((DATA / "provision_probe_provisioned.txt").read_text())


@pytest.fixture
def bare():
    return provision_facts_from_probe((DATA / "provision_probe_bare.txt").read_text())
