"""Screen mode (the seed guide's way), provisioned by a user whose sudo needs a password."""

from __future__ import annotations

import re

from dev.lsclient import LabelStudio, wait_for_health
from dev.testvm.image import PASSWORD_USER_SUDO_PASSWORD
from tests.integration.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, UBUNTU_HOME_MODE


def test_provision_in_screen_mode_with_a_sudo_password(screen_provisioned):
    # Neither the admin script nor screen may start in the SSH user's home: 0750 (Ubuntu's mode, on
    # Debian 12) or 0700 (Debian 13's) closes it to the service user.
    expected = UBUNTU_HOME_MODE if screen_provisioned.suite == "bookworm" else "700"
    assert screen_provisioned.login_home_mode == expected
    result = screen_provisioned.first_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started screen session label-studio" in result.stdout
    assert "installed python3-venv, nginx, sqlite3, zstd, ufw, screen" in result.stdout
    assert "does not survive a reboot" in result.stderr and "@reboot" in result.stderr
    for secret in (ADMIN_PASSWORD, PASSWORD_USER_SUDO_PASSWORD):
        assert secret not in result.stdout + result.stderr
    assert wait_for_health(screen_provisioned.url, timeout=10) == {"status": "UP"}
    assert LabelStudio(screen_provisioned.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)
    # No systemd unit in screen mode; the session runs as the service user.
    vm = screen_provisioned.vm
    assert vm.exec("test -e /etc/systemd/system/label-studio.service", check=False).returncode != 0
    assert "labelstudio" in vm.exec("ps -o user= -C label-studio").stdout.decode()
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
