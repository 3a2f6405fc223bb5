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
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dev.lsclient import LabelStudio
from dev.testvm.image import SUITES, build_image
from dev.testvm.machine import (
    NOPASSWD_USER, PASSWORD_USER, PASSWORD_USER_SUDO_PASSWORD, TestVM, make_key, start_vm,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]

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


# The SSH user's home mode on each system: Debian 13 creates homes 0700 (HOME_MODE in login.defs),
# Debian 12 0755. Label Studio must never run from there.
DEFAULT_HOME_MODE = {"bookworm": "755", "trixie": "700"}
# Ubuntu 22.04/24.04 create homes 0750: the Debian 12 screen-mode VM gets that mode to prove the case.
UBUNTU_HOME_MODE = "750"


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
    machine = start_vm(vm_image, make_key(test_home / "keys"))
    yield machine
    machine.stop()


@dataclass
class Fab:
    """Runs `fab` the way a user does, against the test VM, through our own ssh_config."""

    vm: TestVM
    home: Path
    env: dict = field(default_factory=dict)

    def ssh_config(self) -> Path:
        path = self.home / "ssh_config"
        path.write_text(
            self.vm.ssh_config("vm", NOPASSWD_USER)
            + self.vm.ssh_config("vm-student", PASSWORD_USER)
        )
        return path

    def __call__(self, *args: str, host: str | None = "vm", env: dict | None = None,
                 input: str | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run(self._command(args, host), cwd=PROJECT_ROOT, env=self._environment(env),
                              capture_output=True, text=True, input=input, timeout=timeout)

    def popen(self, *args: str, host: str | None = "vm", env: dict | None = None,
              merge_stderr: bool = False) -> subprocess.Popen:
        """`fab` started in the background, for what a test does to the VM while it runs."""
        return subprocess.Popen(self._command(args, host), cwd=PROJECT_ROOT, env=self._environment(env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                                text=True)

    def _command(self, args: tuple[str, ...], host: str | None) -> list[str]:
        return [sys.executable, "-m", "fabric", "-S", str(self.ssh_config()), *(["-H", host] if host else []),
                *args]

    def _environment(self, env: dict | None) -> dict:
        full_env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("SSH_", "FABRIC_", "LSVM_", "LABEL_STUDIO_"))
        }
        # TMPDIR in the test's home: what a killed `fab` leaves (tests kill it on purpose) goes with it.
        tmp = self.home / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        full_env.update(HOME=str(self.home), LSVM_BACKUPS_DIR=str(self.home / "backups"), COLUMNS="200",
                        TMPDIR=str(tmp))
        full_env.update(self.env)
        full_env.update(env or {})
        return full_env


@pytest.fixture
def fab(vm: TestVM, test_home: Path) -> Fab:
    return Fab(vm, test_home)


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


def _provisioned(vm_image: str, suite: str, home: Path, name: str, user_host: str, extra_yaml: str = "",
                 env: dict | None = None, login_home_mode: str | None = None) -> ProvisionedVM:
    vm = start_vm(vm_image, make_key(home / "keys"))
    if login_home_mode:
        vm.exec(f"chmod {login_home_mode} /home/{_login(user_host)}")
    return _provision(vm, suite, home, name, user_host, env,
                      f"public_url: http://127.0.0.1:{vm.http_port}\n"
                      f"label_studio:\n  admin_email: {ADMIN_EMAIL}\n{extra_yaml}")


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


@pytest.fixture(scope="session")
def provisioned(vm_image: str, suite: str, tmp_path_factory):
    """systemd mode, provisioned from bare Debian by the passwordless-sudo user (home as the system
    makes it). Right after that fresh provision the VM is committed as an image, from which
    `provisioned_clone` starts the other default-profile VMs (CI time: a fresh provision is minutes)."""
    machine = _committed(_provisioned(vm_image, suite, tmp_path_factory.mktemp(f"home-provisioned-{suite}"),
                                      "provisioned", "vm"))
    yield machine
    _discard(machine)


@pytest.fixture(scope="session")
def postgres_provisioned(vm_image: str, suite: str, tmp_path_factory):
    """`database: {engine: postgresql}`, provisioned from bare Debian, committed like `provisioned`."""
    machine = _committed(_provisioned(vm_image, suite, tmp_path_factory.mktemp(f"home-postgres-{suite}"),
                                      "postgres", "vm", "database:\n  engine: postgresql\n"))
    yield machine
    _discard(machine)


def _committed(machine: ProvisionedVM) -> ProvisionedVM:
    """The VM, committed as an image right after a fresh provision that succeeded (before any test
    changes it), for `provisioned_clone`."""
    if machine.first_run.returncode == 0:
        machine.image = f"lsvm-{SUITES[machine.suite]}-provisioned:{machine.vm.id[:12]}"
        subprocess.run(["docker", "commit", machine.vm.id, machine.image], check=True, capture_output=True)
    return machine


def _discard(machine: ProvisionedVM) -> None:
    machine.vm.stop()
    if machine.image:
        subprocess.run(["docker", "image", "rm", machine.image], capture_output=True)


def provisioned_clone(template: ProvisionedVM, home: Path, name: str) -> ProvisionedVM:
    """Another VM as a fresh `fab provision` with the template's profile leaves one (CI time: a fresh
    provision takes minutes): started from the image committed right after the template's provision,
    given a SECRET_KEY of its own (no session or token of one VM is valid on another, as between real
    VMs), then provisioned from a fab home of its own with its own public URL (a real re-provision that
    changes the configuration and starts the service)."""
    assert template.image, template.first_run.stdout + template.first_run.stderr
    vm = start_vm(template.image, make_key(home / "keys"))
    try:
        vm.exec("systemctl stop label-studio && sed -i '/^SECRET_KEY=/d' /var/lib/label-studio/.env")
        machine = _provision(vm, template.suite, home, name, "vm", None,
                             template.profile.read_text().replace(template.url, f"http://127.0.0.1:{vm.http_port}"))
        assert machine.first_run.returncode == 0, machine.first_run.stdout + machine.first_run.stderr
    except BaseException:
        vm.stop()
        raise
    return machine


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
    machine = _provisioned(vm_image, suite, home, "screen", "vm-student", "service:\n  manager: screen\n",
                           env={"FABRIC_SUDO_PASSWORD": PASSWORD_USER_SUDO_PASSWORD},
                           login_home_mode=UBUNTU_HOME_MODE if suite == "bookworm" else None)
    machine.fab.env["FABRIC_SUDO_PASSWORD"] = PASSWORD_USER_SUDO_PASSWORD
    yield machine
    machine.vm.stop()


@pytest.fixture
def sudo_password() -> str:
    return PASSWORD_USER_SUDO_PASSWORD


def project_titles(machine: ProvisionedVM) -> list[str]:
    """The titles of the projects Label Studio serves, read through its API as the admin."""
    ls = LabelStudio(machine.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    resp = ls.get("/api/projects?page_size=100")
    assert resp.status == 200, resp.text[:200]
    return sorted(p["title"] for p in resp.json()["results"])


def sdk_view(url: str, token: str) -> dict:
    """Users, projects with their task counts, annotations: as Label Studio's official SDK reads them
    with an API token (a client nobody on this team wrote)."""
    from label_studio_sdk import LabelStudio as SDK
    client = SDK(base_url=url, api_key=token)
    users = sorted(u.email for u in client.users.list())
    projects = {}
    annotations = 0
    for project in client.projects.list():
        tasks = list(client.tasks.list(project=project.id))
        projects[project.title] = len(tasks)
        annotations += sum(t.total_annotations or 0 for t in tasks)
    return {"users": users, "projects": projects, "annotations": annotations}


ARTIFACTS = Path(os.environ.get("LSVM_ARTIFACTS_DIR", PROJECT_ROOT / "artifacts"))
LOAD_CLIENTS, LOAD_SECONDS = 16, 60


def concurrent_annotators(machine: ProvisionedVM, token: str, engine: str):
    """bench.load against the VM: 16 official-SDK clients save annotations for 60 s (each loop bounded)
    in a project of their own, deleted afterwards. The summary line is kept in artifacts/ for the report."""
    from label_studio_sdk import LabelStudio as SDK

    from bench.load import run_load
    client = SDK(base_url=machine.url, api_key=token)
    project = client.projects.create(title=f"Load on {engine}", label_config=(
        '<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
        '<Choice value="pos"/><Choice value="neg"/></Choices></View>'))
    try:
        client.projects.import_tasks(id=project.id, request=[{"text": f"load task {i}"} for i in range(64)])
        result = run_load(machine.url, token, project.id, clients=LOAD_CLIENTS, seconds=LOAD_SECONDS,
                          max_requests=5000, timeout=120)
    finally:
        client.projects.delete(id=project.id)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    line = f"{engine} on {machine.suite}: {result.summary()}"
    (ARTIFACTS / f"load-{engine}-{machine.suite}.txt").write_text(line + "\n")
    print(line)
    return result


def api_token(machine: ProvisionedVM) -> str:
    """The admin's personal access token, made once per VM (Label Studio answers POST /api/token/ once
    per user) and kept on the machine for every module that shares it."""
    if getattr(machine, "api_token", None) is None:
        session = LabelStudio(machine.url)
        assert session.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        resp = session.post_json("/api/token/", {})
        assert resp.status in (200, 201), resp.text[:300]
        machine.api_token = resp.json()["token"]
    return machine.api_token


# A library that, loaded into any process, leaves a mark in a user's home named after its effective uid
# (/home/<user>/preload-ran-as-<uid>): the tests of adopt's way back look for a mark of root (0).
PRELOAD_SOURCE = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    char path[128];
    snprintf(path, sizeof path, "/home/%s/preload-ran-as-%d", MARK_USER, (int)geteuid());
    FILE *f = fopen(path, "a");
    if (f) { fputs("loaded\n", f); fclose(f); }
}
"""


def preload_library(vm: TestVM, workdir: Path, user: str = NOPASSWD_USER) -> str:
    """PRELOAD_SOURCE built here (the VM has no compiler) and put in `user`'s home, where its marks go."""
    source, library = workdir / "preload.c", workdir / "preload.so"
    source.write_text(PRELOAD_SOURCE)
    subprocess.run(["gcc", "-shared", "-fPIC", f"-DMARK_USER=\"{user}\"", "-o", str(library), str(source)],
                   check=True, capture_output=True)
    target = f"/home/{user}/preload.so"
    vm.exec(f"cat > {target} && chown {user}: {target} && chmod 0755 {target}", input=library.read_bytes())
    return target
