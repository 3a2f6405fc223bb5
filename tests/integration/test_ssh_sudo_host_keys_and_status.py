"""Foundation, proven over real SSH: status for both kinds of sudo, host keys checked as OpenSSH does, and
clean errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dev.testvm.machine import NOPASSWD_USER, PASSWORD_USER
from tasks.core.commands.instances import instances_tool
from tests.integration.support.fab import PROJECT_ROOT, Fab
from tests.integration.support.preload import preload_library


def assert_one_line_error(result, *words: str, code: int | None = None):
    assert result.returncode != 0, result.stdout
    if code is not None:
        assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


SYSTEMS = {"bookworm": ("Debian GNU/Linux 12 (bookworm)", "3.11"), "trixie": ("Debian GNU/Linux 13 (trixie)", "3.13")}


def test_status_with_passwordless_sudo(fab, suite):
    result = fab("status")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    system, python = SYSTEMS[suite]
    assert re.search(rf"os\s+{re.escape(system)}", out)
    assert "not tested" not in result.stderr  # both Debian releases are
    assert re.search(r"sudo\s+passwordless", out)
    assert re.search(r"systemd\s+yes", out)
    assert re.search(rf"python3\s+{re.escape(python)}\.\d+", out)
    assert re.search(r"free disk\s+[\d.]+ (GiB|MiB|TiB) on /", out)
    assert re.search(r"label studio\s+not provisioned", out)


UBUNTU_OS_RELEASE = """\
PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
ID=ubuntu
ID_LIKE=debian
"""


def test_status_warns_on_a_system_that_is_not_tested(fab, vm):
    vm.exec("mv /etc/os-release /etc/os-release.lsvm-test && cat > /etc/os-release",
            input=UBUNTU_OS_RELEASE.encode())
    try:
        result = fab("status")
    finally:
        vm.exec("mv -f /etc/os-release.lsvm-test /etc/os-release")
    assert result.returncode == 0, result.stderr
    assert re.search(r"os\s+Ubuntu 24\.04\.1 LTS", result.stdout)
    assert "warning: Ubuntu 24.04 is expected to work but is not tested" in result.stderr


def test_status_with_sudo_password_from_environment(fab, sudo_password):
    result = fab("status", host="vm-student", env={"FABRIC_SUDO_PASSWORD": sudo_password})
    assert result.returncode == 0, result.stderr
    assert re.search(r"sudo\s+password", result.stdout)
    assert sudo_password not in result.stdout + result.stderr


def test_status_with_sudo_password_from_prompt(fab, sudo_password):
    # --prompt-for-sudo-password reads the password with getpass, which falls back to stdin here.
    result = fab("--prompt-for-sudo-password", "status", host="vm-student", input=sudo_password + "\n")
    assert result.returncode == 0, result.stderr
    assert re.search(r"sudo\s+password", result.stdout)


def test_status_when_sudo_needs_a_password_nobody_gave(fab):
    result = fab("status", host="vm-student")
    assert_one_line_error(result, "needs a password", "--prompt-for-sudo-password", "FABRIC_SUDO_PASSWORD", code=4)


def test_status_with_a_wrong_sudo_password(fab):
    result = fab("status", host="vm-student", env={"FABRIC_SUDO_PASSWORD": "not-it"})
    assert_one_line_error(result, "refused the password", code=4)
    assert "not-it" not in result.stderr


def test_unknown_host_is_a_one_line_error(fab):
    result = fab("status", host="no-such-host.invalid")
    assert_one_line_error(result, "cannot resolve host 'no-such-host.invalid'", code=3)


def test_refused_key_is_a_one_line_error(fab, test_home: Path):
    other_key = test_home / "not-authorized"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    config = test_home / "ssh_config_wrong_key"
    config.write_text(fab.vm.ssh_config("vm").replace(str(fab.vm.key_file), str(other_key)))
    result = subprocess.run(
        [sys.executable, "-m", "fabric", "-S", str(config), "-H", "vm", "status"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(test_home)},
    )
    assert_one_line_error(result, "refused our SSH key", code=3)


def test_profile_with_unknown_key_fails_before_connecting(fab, test_home: Path):
    bad = test_home / "bad.yaml"
    bad.write_text("server_name: labels.example.org\nnginx:\n  colour: blue\n")
    # An unreachable host proves no connection is attempted: the profile error comes first.
    result = fab("status", "--config", str(bad), host="no-such-host.invalid")
    assert_one_line_error(result, f"{bad}:3:", "unknown key 'nginx.colour'", code=2)


def test_profile_yaml_syntax_error_names_file_and_line(fab, test_home: Path):
    bad = test_home / "broken.yaml"
    bad.write_text("server_name: a\nhttp_port: [80\n")
    result = fab("status", host="no-such-host.invalid", env={"LSVM_CONFIG": str(bad)})
    assert_one_line_error(result, f"{bad}:", "YAML syntax error", code=2)
    assert re.search(rf"{re.escape(str(bad))}:\d+:", result.stderr)


def test_task_without_host_says_how_to_name_one(fab):
    result = fab("status", host=None)
    assert_one_line_error(result, "-H", code=2)


def test_fab_list_shows_every_task_with_a_description(fab):
    result = fab("--list", host=None)
    assert result.returncode == 0, result.stderr
    from tasks import ns

    listed = {}
    for line in result.stdout.splitlines()[1:]:
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and line.startswith("  ") and not line.startswith("   "):
            listed[parts[0]] = parts[1]
    expected = set(ns.task_names)
    assert expected <= set(listed), (expected, listed)
    for name, text in listed.items():
        assert len(text) > 10, f"{name} has no description"


@pytest.mark.parametrize("yaml_text, key", [
    ("server_name: 'labels example.org'\n", "server_name"),
    ("server_name: 'labels.example.org;'\n", "server_name"),
    ("service:\n  manager: supervisord\n", "service.manager"),
    ("http_port: 0\n", "http_port"),
    ("label_studio:\n  version: '1.23.2-latest!'\n", "label_studio.version"),
])
def test_provision_refuses_bad_input_before_connecting(fab, test_home: Path, yaml_text, key):
    bad = test_home / "bad-provision.yaml"
    bad.write_text(yaml_text)
    result = fab("provision", "--config", str(bad), host="no-such-host.invalid")
    assert_one_line_error(result, f"'{key}'", code=2)


def test_closed_port_is_a_one_line_error(fab, test_home: Path):
    from dev.testvm.machine import free_port

    config = test_home / "ssh_config_closed"
    config.write_text(fab.vm.ssh_config("vm").replace(f"Port {fab.vm.ssh_port}", f"Port {free_port()}"))
    result = subprocess.run(
        [sys.executable, "-m", "fabric", "-S", str(config), "-H", "vm", "status"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(test_home)},
    )
    assert_one_line_error(result, "refused the connection", code=3)


# ------------------------------------------------------------------------------------------------
# Host keys: known_hosts and StrictHostKeyChecking honoured, a changed key refused before anything is sent


@dataclass
class CheckingFab(Fab):
    """`fab` with an ssh_config that checks host keys (the VMs' own says StrictHostKeyChecking no) and
    the default UserKnownHostsFile, ~/.ssh/known_hosts in this test's own HOME."""

    strict: str = "yes"

    def ssh_config(self) -> Path:
        text = self.vm.ssh_config("vm", NOPASSWD_USER) + self.vm.ssh_config("vm-student", PASSWORD_USER)
        checking = (text.replace("  StrictHostKeyChecking no\n", f"  StrictHostKeyChecking {self.strict}\n")
                    .replace("  UserKnownHostsFile /dev/null\n", "  GlobalKnownHostsFile /dev/null\n"))
        assert checking.count(f"StrictHostKeyChecking {self.strict}") == 2 and "/dev/null" in checking, text
        path = self.home / "ssh_config"
        path.write_text(checking)
        return path

    @property
    def known_hosts(self) -> Path:
        return self.home / ".ssh" / "known_hosts"

    def know(self, line: str) -> None:
        self.known_hosts.parent.mkdir(mode=0o700, exist_ok=True)
        self.known_hosts.write_text(line)


def checking_fab(vm, tmp_path: Path, strict: str) -> CheckingFab:
    home = tmp_path / "home"
    home.mkdir()
    return CheckingFab(vm, home, strict=strict)


def vm_host_key(vm) -> tuple[str, str]:
    """The VM's ED25519 host key as 'type base64', and its fingerprint as ssh-keygen -lf prints it."""
    key = vm.exec("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.decode().split()
    printed = vm.exec("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").stdout.decode().split()
    return f"{key[0]} {key[1]}", printed[1]


def another_key(tmp_path: Path) -> str:
    path = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def sshd_cursor(vm) -> str:
    """Where the VM's journal ends now, to read only what comes after."""
    out = vm.exec("journalctl -n 0 --show-cursor --no-pager").stdout.decode()
    return out.strip().rsplit("-- cursor: ", 1)[1]


def sshd_logins_since(vm, cursor: str, user: str) -> list[str]:
    # No unit filter: Debian 13's sshd logs logins from sshd-session, and may be socket-activated.
    lines = vm.exec(f"journalctl --after-cursor '{cursor}' --no-pager -o cat").stdout.decode().splitlines()
    return [line for line in lines if line.startswith(f"Accepted publickey for {user} ")]


@pytest.mark.parametrize("hashed", [False, True], ids=["plain", "hashed"])
def test_a_known_host_key_with_strict_checking_connects(vm, tmp_path, hashed):
    fab = checking_fab(vm, tmp_path, "yes")
    key, _ = vm_host_key(vm)
    fab.know(f"[127.0.0.1]:{vm.ssh_port} {key}\n")
    if hashed:  # as HashKnownHosts leaves it: |1|salt|hash names only
        subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(fab.known_hosts)], check=True, capture_output=True)
        assert "127.0.0.1" not in fab.known_hosts.read_text()
    result = fab("status")
    assert result.returncode == 0, result.stderr
    assert re.search(r"sudo\s+passwordless", result.stdout)


def test_a_changed_host_key_is_refused_before_any_login(vm, tmp_path, sudo_password):
    fab = checking_fab(vm, tmp_path, "no")  # refused whatever StrictHostKeyChecking says
    key, fingerprint = vm_host_key(vm)
    fab.know(f"[127.0.0.1]:{vm.ssh_port} {another_key(tmp_path)}\n")
    cursor = sshd_cursor(vm)
    result = fab("status", host="vm-student", env={"FABRIC_SUDO_PASSWORD": sudo_password})
    assert_one_line_error(result, f"host key of {PASSWORD_USER}@127.0.0.1:{vm.ssh_port} does not match known_hosts",
                          f"ED25519 key {fingerprint}", f"ssh-keygen -R '[127.0.0.1]:{vm.ssh_port}'", code=3)
    assert sudo_password not in result.stdout + result.stderr
    # The same account with the right key logs in, and that is the only login sshd saw: the refused run
    # never authenticated, so no sudo password or data can have gone to the server.
    fab.know(f"[127.0.0.1]:{vm.ssh_port} {key}\n")
    good = fab("status", host="vm-student", env={"FABRIC_SUDO_PASSWORD": sudo_password})
    assert good.returncode == 0, good.stderr
    assert len(sshd_logins_since(vm, cursor, PASSWORD_USER)) == 1


def test_an_unknown_host_key_with_strict_checking_names_its_fingerprint(vm, tmp_path):
    fab = checking_fab(vm, tmp_path, "yes")
    _, fingerprint = vm_host_key(vm)
    result = fab("status")
    assert_one_line_error(result, "is not in known_hosts (StrictHostKeyChecking yes)",
                          f"ED25519 key {fingerprint}", f"ssh-keyscan -p {vm.ssh_port} 127.0.0.1 >> ~/.ssh/known_hosts",
                          code=3)
    assert not fab.known_hosts.exists()


def test_accept_new_records_the_host_key_and_the_next_run_trusts_it(vm, tmp_path):
    fab = checking_fab(vm, tmp_path, "accept-new")
    _, fingerprint = vm_host_key(vm)
    first = fab("status")
    assert first.returncode == 0, first.stderr
    assert f"added [127.0.0.1]:{vm.ssh_port} (ED25519 key {fingerprint}) to ~/.ssh/known_hosts" in first.stderr
    assert oct(fab.known_hosts.stat().st_mode & 0o777) == "0o600"
    assert oct(fab.known_hosts.parent.stat().st_mode & 0o777) == "0o700"
    # OpenSSH reads what was recorded, and finds the VM's key under its name.
    found = subprocess.run(["ssh-keygen", "-lF", f"[127.0.0.1]:{vm.ssh_port}", "-f", str(fab.known_hosts)],
                           capture_output=True, text=True)
    assert fingerprint in found.stdout, found.stdout + found.stderr
    fab.strict = "yes"
    second = fab("status")
    assert second.returncode == 0, second.stderr
    assert "added" not in second.stderr


def test_adopts_way_back_never_hands_the_old_environment_to_root(vm, tmp_path):
    """`revive` (adopt's way back) run as root on a record whose environment holds LD_PRELOAD, as a
    hand-made instance's user can set it: root's runuser loads nothing; the process it starts gets the
    recorded variables, less those that load code."""
    library = preload_library(vm, tmp_path)
    marks = f"ls /home/{NOPASSWD_USER}/ | grep '^preload-ran-as-' || true"
    uid = vm.exec(f"id -u {NOPASSWD_USER}").stdout.decode().strip()
    vm.exec(f"runuser -u {NOPASSWD_USER} -- env LD_PRELOAD={library} true")
    assert vm.exec(marks).stdout.decode().split() == [f"preload-ran-as-{uid}"]   # the library loads
    record = {"user": NOPASSWD_USER, "uid": int(uid), "argv": ["/bin/sleep", "300"], "cwd": "/", "screen": None,
              "environ": {"LD_PRELOAD": library, "PATH": "/usr/bin:/bin", "MARK": "kept", "PYTHONPATH": "/tmp"},
              "disabled_sites": [], "site_backup": None, "data_dir": "/nowhere"}
    vm.exec("install -d -m 0700 /var/lib/lsvm-test && cat > /var/lib/lsvm-test/record.json",
            input=json.dumps(record).encode())
    try:
        vm.exec(instances_tool("revive", "/var/lib/lsvm-test/record.json", "/etc/nginx/sites-available/none"))
        find = f"pgrep -u {NOPASSWD_USER} -x sleep"
        deadline = time.monotonic() + 30
        while not vm.exec(find, check=False).stdout.strip():
            assert time.monotonic() < deadline, "the recorded command did not start"
            time.sleep(0.2)  # poll interval between real checks
        pid = vm.exec(find).stdout.decode().split()[0]
        assert vm.exec(marks).stdout.decode().split() == [f"preload-ran-as-{uid}"]   # never as root (0)
        seen = vm.exec(f"tr '\\000' '\\n' < /proc/{pid}/environ").stdout.decode().splitlines()
        assert sorted(seen) == ["MARK=kept", "PATH=/usr/bin:/bin"]
    finally:
        vm.exec(f"pkill -u {NOPASSWD_USER} -x sleep; rm -rf /var/lib/lsvm-test /home/{NOPASSWD_USER}/preload*",
                check=False)
