"""VMs that `fab provision` took from bare Debian to Label Studio behind nginx, and clones of them started
from the image committed right after (a fresh provision takes minutes)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dev.testvm.image import SUITES
from dev.testvm.machine import NOPASSWD_USER, PASSWORD_USER, TestVM, make_key, remove_image_later, start_vm
from tests.integration.support.fab import Fab

# uv's cache, shared by every test VM (see dev/testvm/machine.start_vm): Label Studio's packages are
# downloaded once, not once per fresh provision. Kept between runs; LSVM_PACKAGE_CACHE moves it.
PACKAGE_CACHE = Path(os.environ.get("LSVM_PACKAGE_CACHE") or Path.home() / ".cache" / "lsvm-test" / "uv")
# pip's, for the Studio test's bootstrap on this machine (its HOME is a temporary folder).
PIP_CACHE = PACKAGE_CACHE.parent / "pip"

# The SSH user's home mode on each system: Debian 13 creates homes 0700 (HOME_MODE in login.defs),
# Debian 12 0755. Label Studio must never run from there.
DEFAULT_HOME_MODE = {"bookworm": "755", "trixie": "700"}
# Ubuntu 22.04/24.04 create homes 0750: the Debian 12 screen-mode VM gets that mode to prove the case.
UBUNTU_HOME_MODE = "750"


# Two gunicorn workers on the test VMs (CI time: two VMs share two cores, and every start boots each
# worker); test_app_server.py's VM sizes them itself, as a user's does.
TEST_WORKERS = "  workers: 2\n"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "first-admin-pw-1"


@dataclass
class ProvisionedVM:
    """A VM that `fab provision` took from bare Debian to Label Studio behind nginx."""

    vm: TestVM
    fab: Fab
    profile: Path
    first_run: subprocess.CompletedProcess
    suite: str
    login_home_mode: str  # of the SSH user who provisioned, as `stat -c %a` prints it
    image: str | None = None  # this VM right after its fresh provision, committed (see `provisioned`)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.vm.http_port}"


def provision_fresh(vm_image: str, suite: str, home: Path, name: str, user_host: str, extra_yaml: str = "",
                 env: dict | None = None, login_home_mode: str | None = None) -> ProvisionedVM:
    vm = start_test_vm(vm_image, home)
    if login_home_mode:
        vm.exec(f"chmod {login_home_mode} /home/{_login(user_host)}")
    return _provision(vm, suite, home, name, user_host, env,
                      f"public_url: http://127.0.0.1:{vm.http_port}\n"
                      f"label_studio:\n  admin_email: {ADMIN_EMAIL}\n{TEST_WORKERS}{extra_yaml}")


def _login(user_host: str) -> str:
    return PASSWORD_USER if user_host == "vm-student" else NOPASSWD_USER


def _provision(vm: TestVM, suite: str, home: Path, name: str, user_host: str, env: dict | None,
               profile_text: str) -> ProvisionedVM:
    """`fab provision` of `vm` from `home`, with the profile `<home>/<name>.yaml`."""
    profile = home / f"{name}.yaml"
    profile.write_text(profile_text)
    fab = Fab(vm, home, env={"LSVM_CONFIG": str(profile)})
    first = fab("provision", host=user_host, env={"LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD, **(env or {})})
    mode = vm.exec(f"stat -c %a /home/{_login(user_host)}").stdout.decode().strip()
    return ProvisionedVM(vm, fab, profile, first, suite, mode)


def committed(machine: ProvisionedVM) -> ProvisionedVM:
    """The VM, committed as an image right after a fresh provision that succeeded (before any test
    changes it), for `provisioned_clone`."""
    if machine.first_run.returncode == 0:
        machine.image = f"lsvm-{SUITES[machine.suite]}-provisioned:{machine.vm.id[:12]}"
        subprocess.run(["docker", "commit", machine.vm.id, machine.image], check=True, capture_output=True)
    return machine


def discard(machine: ProvisionedVM) -> None:
    machine.vm.stop()
    if machine.image:
        remove_image_later(machine.image)


def start_test_vm(image: str, home: Path, extra_ports: tuple[int, ...] = ()) -> TestVM:
    """A test VM of `image`, logged into with a key kept in `home`, with the run's shared uv cache."""
    return start_vm(image, make_key(home / "keys"), extra_ports=extra_ports, package_cache=PACKAGE_CACHE)


def start_clone(image: str, home: Path, extra_ports: tuple[int, ...] = ()) -> TestVM:
    """A VM started from an image committed right after a fresh provision, its Label Studio stopped and
    its SECRET_KEY gone (the next provision makes one of its own: no session or token of one VM is valid
    on another, as between real VMs)."""
    vm = start_test_vm(image, home, extra_ports)
    try:
        vm.exec("systemctl stop label-studio && sed -i '/^SECRET_KEY=/d' /var/lib/label-studio/.env")
    except BaseException:
        vm.stop()
        raise
    return vm


def provisioned_clone(template: ProvisionedVM, home: Path, name: str,
                      edits: tuple[tuple[str, str], ...] = (), env: dict | None = None) -> ProvisionedVM:
    """Another VM as a fresh `fab provision` with the template's profile leaves one (CI time: a fresh
    provision takes minutes): `start_clone` of the template's image, then provisioned from a fab home of
    its own with its own public URL (a real re-provision that changes the configuration and starts the
    service)."""
    assert template.image, template.first_run.stdout + template.first_run.stderr
    vm = start_clone(template.image, home)
    try:
        text = template.profile.read_text().replace(template.url, f"http://127.0.0.1:{vm.http_port}")
        for old, new in edits:
            text = text.replace(old, new)
        machine = _provision(vm, template.suite, home, name, "vm", env, text)
        assert machine.first_run.returncode == 0, machine.first_run.stdout + machine.first_run.stderr
    except BaseException:
        vm.stop()
        raise
    return machine
