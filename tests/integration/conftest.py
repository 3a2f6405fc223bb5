"""The real test VMs: Debian 12 and Debian 13 containers with systemd and sshd, reached over SSH on
127.0.0.1. Every VM fixture is parametrized by the Debian suite, so each integration test runs on both
systems (pytest groups the tests by suite: one system's VMs are gone before the next one's start).
`LSVM_TEST_SUITES=trixie` narrows a local run to one system.

Tests call `fab` as a subprocess with an ssh_config of their own (never the developer's ~/.ssh/config,
and with HOME pointed at a temporary folder), exactly as a user does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dev.testvm.image import SUITES, build_image
from dev.testvm.machine import PASSWORD_USER_SUDO_PASSWORD, TestVM
from tests.integration.support.fab import Fab
from tests.integration.support.machines import (
    UBUNTU_HOME_MODE,
    ProvisionedVM,
    committed,
    discard,
    provision_fresh,
    provisioned_clone,
    start_test_vm,
)

pytestmark = pytest.mark.integration


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def _suites() -> list[str]:
    chosen = os.environ.get("LSVM_TEST_SUITES", "").replace(",", " ").split() or list(SUITES)
    unknown = [s for s in chosen if s not in SUITES]
    if unknown:
        raise pytest.UsageError(f"LSVM_TEST_SUITES: unknown suite(s) {unknown} (known: {', '.join(SUITES)})")
    return chosen


@pytest.fixture(scope="session", params=_suites())
def suite(request) -> str:
    return request.param



@pytest.fixture(scope="session")
def vm_image(suite: str) -> str:
    if not _docker_answers():
        pytest.skip("no Docker engine answers (start dockerd, or run `bash .ci/run`)")
    return build_image(suite)


@pytest.fixture(scope="session")
def test_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / ".ssh").mkdir(mode=0o700)
    return home


@pytest.fixture(scope="session")
def vm(vm_image: str, test_home: Path):
    # not ~/.ssh: only the IdentityFile in our ssh_config may log in
    machine = start_test_vm(vm_image, test_home)
    yield machine
    machine.stop()


@pytest.fixture
def fab(vm: TestVM, test_home: Path) -> Fab:
    return Fab(vm, test_home)


@pytest.fixture(scope="session")
def provisioned(vm_image: str, suite: str, tmp_path_factory):
    """systemd mode, provisioned from bare Debian by the passwordless-sudo user (home as the system
    makes it). Right after that fresh provision the VM is committed as an image, from which
    `provisioned_clone` starts the other default-profile VMs (CI time: a fresh provision is minutes)."""
    machine = committed(provision_fresh(vm_image, suite, tmp_path_factory.mktemp(f"home-provisioned-{suite}"),
                                      "provisioned", "vm"))
    yield machine
    discard(machine)


@pytest.fixture(scope="session")
def postgres_provisioned(vm_image: str, suite: str, tmp_path_factory):
    """`database: {engine: postgresql}`, provisioned from bare Debian, committed like `provisioned`."""
    machine = committed(provision_fresh(vm_image, suite, tmp_path_factory.mktemp(f"home-postgres-{suite}"),
                                      "postgres", "vm", "database:\n  engine: postgresql\n"))
    yield machine
    discard(machine)


@pytest.fixture(scope="session")
def data_vm(provisioned: ProvisionedVM, tmp_path_factory):
    """systemd mode, for the data tasks (their own VM: they replace its database many times)."""
    machine = provisioned_clone(provisioned, tmp_path_factory.mktemp(f"home-data-{provisioned.suite}"), "data")
    yield machine
    machine.vm.stop()


@pytest.fixture(scope="session")
def screen_provisioned(vm_image: str, suite: str, tmp_path_factory):
    """screen mode, provisioned by the user whose sudo needs a password; on Debian 12 that user's
    home is 0750 as Ubuntu makes it."""
    home = tmp_path_factory.mktemp(f"home-screen-{suite}")
    machine = provision_fresh(vm_image, suite, home, "screen", "vm-student", "service:\n  manager: screen\n",
                           env={"FABRIC_SUDO_PASSWORD": PASSWORD_USER_SUDO_PASSWORD},
                           login_home_mode=UBUNTU_HOME_MODE if suite == "bookworm" else None)
    machine.fab.env["FABRIC_SUDO_PASSWORD"] = PASSWORD_USER_SUDO_PASSWORD
    yield machine
    machine.vm.stop()


@pytest.fixture
def sudo_password() -> str:
    return PASSWORD_USER_SUDO_PASSWORD


