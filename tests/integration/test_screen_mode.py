"""Screen mode (the seed guide's way), provisioned by a user whose sudo needs a password."""

from __future__ import annotations

import re
import shlex

from fabric import Config, Connection

from dev.lsclient import LabelStudio, wait_for_health
from dev.testvm.image import PASSWORD_USER_SUDO_PASSWORD
from tasks.core.commands import as_service_user
from tasks.core.commands import provision as provision_commands
from tasks.core.connect import Host
from tasks.core.profile import parse_profile
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, UBUNTU_HOME_MODE


def test_provision_in_screen_mode_with_a_sudo_password(screen_provisioned):
    # Neither the admin script nor screen may start in the SSH user's home: 0750 (Ubuntu's mode, on
    # Debian 12) or 0700 (Debian 13's) closes it to the service user.
    expected = UBUNTU_HOME_MODE if screen_provisioned.suite == "bookworm" else "700"
    assert screen_provisioned.login_home_mode == expected
    result = screen_provisioned.first_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started screen session label-studio" in result.stdout
    assert "installed python3-venv, nginx, sqlite3, zstd, python3-xxhash, ufw, screen" in result.stdout
    assert "does not survive a reboot" in result.stderr and "@reboot" in result.stderr
    for secret in (ADMIN_PASSWORD, PASSWORD_USER_SUDO_PASSWORD):
        assert secret not in result.stdout + result.stderr
    assert wait_for_health(screen_provisioned.url, timeout=10) == {"status": "UP"}
    assert LabelStudio(screen_provisioned.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)
    # No systemd unit in screen mode; the session runs as the service user.
    vm = screen_provisioned.vm
    assert vm.exec("test -e /etc/systemd/system/label-studio.service", check=False).returncode != 0
    assert set(vm.exec("ps -o user= -C gunicorn").stdout.decode().split()) == {"labelstudio"}
    ps = vm.exec("ps auxww").stdout.decode()
    assert ADMIN_PASSWORD not in ps


def test_screen_mode_second_run_changes_nothing(screen_provisioned):
    result = screen_provisioned.fab("provision", host="vm-student")
    assert result.returncode == 0, result.stderr
    assert "0 changed" in result.stdout
    assert "screen session label-studio is running" in result.stdout


def test_screen_mode_status_stop_start(screen_provisioned):
    fab = screen_provisioned.fab
    status = fab("status", host="vm-student")
    assert status.returncode == 0, status.stderr
    assert re.search(r"service\s+running in screen", status.stdout)
    assert re.search(r"sudo\s+password", status.stdout)

    stopped = fab("stop", host="vm-student")
    assert stopped.returncode == 0, stopped.stderr
    assert re.search(r"service\s+no screen session", fab("status", host="vm-student").stdout)
    assert LabelStudio(screen_provisioned.url, timeout=10).get("/health").status == 502

    started = fab("start", host="vm-student")
    assert started.returncode == 0, started.stderr
    assert wait_for_health(screen_provisioned.url, timeout=10) == {"status": "UP"}

    logs = fab("logs", "--lines", "20", host="vm-student")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.strip()


# ------------------------------------------------------------------------------------------------
# The service user (what a Label Studio exploit gets) against root and the sudo password.

DATA_DIR = "/var/lib/label-studio"
PLANTED_JSON = """import os, sys
with open('/tmp/planted-json-ran', 'a') as out:
    out.write(f'uid={os.getuid()} stdin={sys.stdin.read()!r}\\n')
"""
PLANTED_SQLITERC = ".print '[sudo] password:'\n.shell head -n 1 > /tmp/planted-sqliterc-read\n"


def test_a_planted_json_py_and_sqliterc_run_nothing_and_capture_no_password(screen_provisioned):
    """The admin script reads the password from stdin: it starts in the app dir, isolated, so a json.py the
    service user put in its data dir (its cwd and HOME) is never imported; sqlite3 never reads ~/.sqliterc."""
    vm = screen_provisioned.vm
    vm.exec(f"cat > {DATA_DIR}/json.py && chown labelstudio: {DATA_DIR}/json.py", input=PLANTED_JSON.encode())
    vm.exec(f"cat > {DATA_DIR}/.sqliterc && chown labelstudio: {DATA_DIR}/.sqliterc", input=PLANTED_SQLITERC.encode())
    try:
        # The planted file would run if anything imported json from the data dir (proved: it does here).
        vm.exec(f"cd {DATA_DIR} && runuser -u labelstudio -- python3 -c 'import json' < /dev/null")
        assert vm.exec("cat /tmp/planted-json-ran").stdout.decode().startswith("uid=")
        vm.exec("rm -f /tmp/planted-json-ran")
        result = screen_provisioned.fab("provision", "--reset-password", host="vm-student",
                                        env={"LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
                                             "LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD})
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"reset the password of {ADMIN_EMAIL}" in result.stdout
        assert vm.exec("test -e /tmp/planted-json-ran", check=False).returncode != 0
        # The pre-upgrade copy's sqlite3 line, as provision runs it: ~/.sqliterc is not read.
        copy = provision_commands.pre_upgrade_copy(parse_profile("service:\n  manager: screen\n"), "0.0")
        vm.exec(copy)
        assert vm.exec("test -e /tmp/planted-sqliterc-read", check=False).returncode != 0
    finally:
        vm.exec(f"rm -rf {DATA_DIR}/json.py {DATA_DIR}/.sqliterc {DATA_DIR}/pre-upgrade /tmp/planted-*")
    assert LabelStudio(screen_provisioned.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)


def test_output_that_fakes_the_sudo_prompt_gets_no_password(screen_provisioned):
    """With password sudo, our one connection layer sends the password to sudo alone: a command whose
    output (here the service user's) prints sudo's prompt and reads a line reads nothing."""
    config = Config(runtime_ssh_path=str(screen_provisioned.fab.ssh_config()),
                    overrides={"sudo": {"password": PASSWORD_USER_SUDO_PASSWORD}})
    host = Host(Connection("vm-student", config=config))
    profile = parse_profile("service:\n  manager: screen\n")
    fake = as_service_user(profile, "sh", "-c", "printf '[sudo] password: \\n'; read -r line; echo \"read=$line\"")
    out = host.run(fake, sudo=True, check=False)
    assert host.sudo_mode == "password"
    assert "read=" in out.stdout and PASSWORD_USER_SUDO_PASSWORD not in out.stdout + out.stderr, out


def test_a_flipping_screen_socket_dir_changes_no_root_owned_directory(screen_provisioned):
    """Debian's /run/screen is 1777: the service user flips S-labelstudio between a file and a link to a
    root-owned directory while provision's screen session is stopped and started; root never follows it."""
    vm, fab = screen_provisioned.vm, screen_provisioned.fab
    vm.exec("mkdir -p /srv/root-owned && chmod 0755 /srv/root-owned")
    flip = ("cd /run/screen && while :; do rm -rf S-labelstudio; ln -s /srv/root-owned S-labelstudio; "
            "rm -f S-labelstudio; : > S-labelstudio; done")
    vm.exec(f"runuser -u labelstudio -- setsid sh -c {shlex.quote(flip)} </dev/null >/dev/null 2>&1 &")
    try:
        for task in ("restart", "stop", "start"):
            result = fab(task, host="vm-student")
            assert result.returncode == 0, result.stdout + result.stderr
    finally:
        vm.exec("pkill -u labelstudio -f 'while :; do rm -rf S-labelstudio' || true; rm -rf /run/screen/S-labelstudio")
    assert vm.exec("stat -c '%U:%G %a' /srv/root-owned").stdout.decode().strip() == "root:root 755"
    assert wait_for_health(screen_provisioned.url, timeout=60) == {"status": "UP"}
    # The session's sockets are in the service user's own tree.
    assert vm.exec(f"stat -c '%U %a' {DATA_DIR}/.screen").stdout.decode().strip() == "labelstudio 700"
