"""Provision keeps the trust boundaries: an existing SSH restriction in ufw stays, every port sshd
accepts on (and the one this session uses) is open before ufw is enabled, root never writes through a
path the service user can replace, and in screen mode the env file is root's."""

from __future__ import annotations

import re

import pytest

from tasks.core.commands.provision import pre_upgrade_copy
from tasks.core.profile import Profile

RESTRICTED = "ufw allow from 10.9.0.0/16 to any port 22 proto tcp"


@pytest.fixture
def firewall_restored(provisioned):
    """Whatever a test does to ufw and sshd, the VM goes back to the provisioned state after it."""
    yield provisioned
    vm = provisioned.vm
    vm.exec("rm -f /etc/ssh/sshd_config.d/lsvm-test.conf && systemctl restart ssh && ufw --force reset >/dev/null")
    provisioned.vm.wait_for_ssh()
    restored = provisioned.fab("provision")
    assert restored.returncode == 0, restored.stdout + restored.stderr


def test_a_source_restricted_ssh_rule_is_kept(firewall_restored):
    vm = firewall_restored.vm
    vm.exec(f"ufw --force reset >/dev/null && {RESTRICTED} && ufw allow 80/tcp")
    result = firewall_restored.fab("provision")
    assert result.returncode == 0, result.stdout + result.stderr
    added = vm.exec("ufw show added").stdout.decode()
    assert RESTRICTED in added
    assert "ufw allow 22/tcp" not in added  # the restriction was not undone
    # This session does not come from 10.9.0.0/16: its own address is allowed, nothing wider.
    own = re.search(r"ufw allow from (\S+) to any port 22 proto tcp", added.replace(RESTRICTED, ""))
    assert own and not own.group(1).startswith("10.9."), added
    assert "(this SSH session; the existing restriction stays)" in result.stdout
    assert "Status: active" in vm.exec("ufw status").stdout.decode()
    assert firewall_restored.fab("status").returncode == 0  # still reachable over SSH


def test_every_port_sshd_listens_on_is_opened_before_ufw_is_enabled(firewall_restored):
    vm = firewall_restored.vm
    vm.exec("printf 'ListenAddress 0.0.0.0:22\\nListenAddress 0.0.0.0:2222\\n' > /etc/ssh/sshd_config.d/lsvm-test.conf "
            "&& systemctl restart ssh && ufw --force reset >/dev/null")
    firewall_restored.vm.wait_for_ssh()
    assert ":2222" in vm.exec("ss -ltnH").stdout.decode()
    result = firewall_restored.fab("provision")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ufw allows 2222/tcp" in result.stdout
    status = vm.exec("ufw status").stdout.decode()
    assert "Status: active" in status and "2222/tcp" in status and "22/tcp" in status


def test_the_pre_upgrade_copy_never_writes_through_a_planted_symlink(provisioned):
    vm = provisioned.vm
    script = pre_upgrade_copy(Profile(), "1.23.1")
    before = vm.exec("stat -c '%U:%G %a' /usr/local/sbin").stdout.decode()
    vm.exec("runuser -u labelstudio -- sh -c 'rm -rf /var/lib/label-studio/pre-upgrade && "
            "ln -s /usr/local/sbin /var/lib/label-studio/pre-upgrade'")
    try:
        planted = vm.exec(script, check=False)
        assert planted.returncode != 0  # the service user cannot write there: the upgrade stops
        assert vm.exec("stat -c '%U:%G %a' /usr/local/sbin").stdout.decode() == before
        assert vm.exec("ls /usr/local/sbin").stdout.decode().strip() == ""
    finally:
        vm.exec("rm -f /var/lib/label-studio/pre-upgrade")
    made = vm.exec(script).stdout.decode()
    copy = re.search(r"database copied to (\S+) before the upgrade", made).group(1)
    assert copy.startswith("/var/lib/label-studio/pre-upgrade/label_studio-1.23.1-")
    assert vm.exec(f"stat -c '%U:%G %a' {copy}").stdout.decode().strip() == "labelstudio:labelstudio 600"
    assert vm.exec(f"sqlite3 {copy} 'pragma integrity_check'").stdout.decode().strip() == "ok"
    vm.exec("rm -rf /var/lib/label-studio/pre-upgrade")


def test_screen_mode_env_file_is_roots_and_read_by_the_service_group(screen_provisioned):
    vm = screen_provisioned.vm
    assert vm.exec("stat -c '%U:%G %a' /opt/label-studio/label-studio.env").stdout.decode().strip() == \
        "root:labelstudio 640"
    # The service user can read it (the launcher sources it) but not change it.
    assert vm.exec("runuser -u labelstudio -- cat /opt/label-studio/label-studio.env").returncode == 0
    assert vm.exec("runuser -u labelstudio -- sh -c 'echo x >> /opt/label-studio/label-studio.env'",
                   check=False).returncode != 0


@pytest.mark.parametrize("yaml, key", [
    ("paths:\n  data_dir: /etc\n", "paths.data_dir"),
    ("paths:\n  app_dir: /usr/local/label-studio\n", "paths.app_dir"),
    ("paths:\n  data_dir: /home/admin/label-studio\n", "paths.data_dir"),
    ("service:\n  user: root\n", "service.user"),
    ("service:\n  user: www-data\n", "service.user"),
    ("http_port: 8080\n", "http_port"),
])
def test_profile_values_that_aim_root_at_the_system_are_refused_before_connecting(provisioned, yaml, key):
    bad = provisioned.profile.parent / "aims-at-the-system.yaml"
    bad.write_text(provisioned.profile.read_text() + yaml)
    before = provisioned.vm.exec("stat -c '%U:%G %a' /etc /usr/local /home; ls -la /etc | md5sum; "
                                 "journalctl -u ssh --no-pager -q | wc -l").stdout
    result = provisioned.fab("provision", env={"LSVM_CONFIG": str(bad)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"'{key}'" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    # Nothing changed, and no SSH session was even opened.
    assert provisioned.vm.exec("stat -c '%U:%G %a' /etc /usr/local /home; ls -la /etc | md5sum; "
                               "journalctl -u ssh --no-pager -q | wc -l").stdout == before
