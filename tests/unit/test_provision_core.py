"""Provision's pure core: facts from recorded probe output, comparisons, rendered files."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from tasks.core import commands, parse, render, steps
from tasks.core.commands import probes, provision as provision_commands
from tasks.core.commands.service import service_manager
from tasks.core.facts import provision_facts_from_probe
from tasks.core.plan import AdminRequest
from tasks.core.profile import parse_profile, Profile

from tests.unit.conftest import DATA, PROFILE


def test_recorded_provisioned_host(provisioned):
    f = provisioned
    assert f.installed_packages == {"nginx", "python3-venv", "sqlite3", "ufw", "zstd"}
    assert steps.missing_packages(PROFILE, f) == []
    assert (f.os_id, f.os_version) == ("debian", "12")
    assert f.label_studio_version == "1.23.2" and f.venv_exists and f.db_exists
    assert f.db_users == 1 and f.admin_exists
    assert f.service.running and f.service.enabled == "enabled"
    assert f.sshd_ports == (22,)
    assert f.ufw_active and {"22/tcp", "80/tcp"} <= f.ufw_allowed
    assert f.app_dir_meta == "root:root:755"
    assert f.data_dir_meta == "labelstudio:labelstudio:750"
    assert f.files["screen_launcher"] is None


def test_recorded_host_matches_what_we_render_today(provisioned):
    """The recorded server was provisioned from these templates: every file must still match,
    otherwise a template change would make every server 'changed' (record the probe again with it)."""
    assert provisioned.files["env_file"] == service_manager(PROFILE).env_file().content
    assert provisioned.files["unit_file"] == render.unit_file(PROFILE).content
    assert provisioned.files["nginx_site"] == render.nginx_site(PROFILE, ipv6=False).content


def test_nothing_missing_on_a_provisioned_host(provisioned):
    assert steps.firewall_rules_missing(PROFILE, provisioned) == []
    assert not steps.needs_password(provisioned, AdminRequest("admin@example.com"))
    assert steps.needs_password(provisioned, AdminRequest("admin@example.com", reset=True))


def test_bare_host_needs_everything(bare):
    assert not bare.user_exists and not bare.venv_exists and not bare.db_exists
    assert bare.db_users is None and not bare.admin_exists
    assert not bare.service.exists
    assert all(content is None for content in bare.files.values())
    assert steps.missing_packages(PROFILE, bare) == ["python3-venv", "nginx", "sqlite3", "zstd", "ufw"]
    # Every SSH port sshd listens on is allowed before ufw is enabled, then HTTP.
    two_ports = dataclasses.replace(bare, sshd_ports=(22, 2222))
    assert steps.firewall_rules_missing(PROFILE, two_ports) == ["22/tcp", "2222/tcp", "80/tcp"]
    assert steps.needs_password(bare, AdminRequest("admin@example.com"))
    assert not steps.needs_password(bare, AdminRequest(None))


def test_packages_follow_the_profile():
    screen_no_fw = parse_profile("service:\n  manager: screen\nfirewall:\n  enabled: false\n")
    assert provision_commands.wanted_packages(screen_no_fw) == ["python3-venv", "nginx", "sqlite3", "zstd", "screen"]


def test_firewall_uses_port_22_when_sshd_ports_are_unknown(bare):
    unknown = dataclasses.replace(bare, sshd_ports=())
    assert steps.firewall_rules_missing(Profile(http_port=8081), unknown) == ["22/tcp", "8081/tcp"]


def test_env_file_has_the_security_settings_and_no_secrets():
    text = service_manager(PROFILE).env_file().content
    for line in ("LABEL_STUDIO_HOST=http://127.0.0.1:56749", "CSRF_TRUSTED_ORIGINS=http://127.0.0.1:56749",
                 "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true", "LATEST_VERSION_CHECK=false",
                 "COLLECT_ANALYTICS=false", "SENTRY_DSN=", "LABEL_STUDIO_BASE_DATA_DIR=/var/lib/label-studio"):
        assert line in text.splitlines()
    assert "PASSWORD" not in text and "USERNAME" not in text
    assert "DJANGO_ALLOWED_HOSTS" not in text  # Label Studio does not read it
    assert service_manager(PROFILE).env_file().mode == "0600"
    # systemd reads it as root; the screen launcher runs as the service user and must read it.
    assert service_manager(PROFILE).env_file().owner == "root"
    assert service_manager(parse_profile("service:\n  manager: screen\n")).env_file().owner == "labelstudio"


def test_env_file_is_valid_for_sh():
    text = service_manager(PROFILE).env_file().content
    result = subprocess.run(["sh", "-c", text + "\necho \"$LABEL_STUDIO_HOST\""], capture_output=True, text=True)
    assert result.stdout.strip() == "http://127.0.0.1:56749"


def test_unit_binds_loopback_and_restarts():
    text = render.unit_file(PROFILE).content
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert "--internal-host 127.0.0.1" in exec_start
    assert "--port 8080" in exec_start and "--no-browser" in exec_start
    assert "Restart=on-failure" in text and "WantedBy=multi-user.target" in text
    assert "User=labelstudio" in text


@pytest.mark.parametrize("deny", [True, False])
def test_nginx_site(deny):
    profile = parse_profile(f"server_name: labels.example.org\nnginx:\n  deny_export: {str(deny).lower()}\n"
                            "  client_max_body_size: 1g\n")
    text = render.nginx_site(profile, ipv6=True).content
    assert "server_name labels.example.org;" in text
    assert "client_max_body_size 1g;" in text
    assert "proxy_set_header Host $http_host;" in text
    assert "X-Forwarded-Proto $scheme" in text
    assert "listen [::]:80;" in text
    assert ("return 403;" in text) is deny
    assert "listen [::]" not in render.nginx_site(profile, ipv6=False).content
    assert text.count("{") == text.count("}")


def test_unified_diff_marks_old_and_new():
    diff = steps.unified_diff(Path("/etc/x"), "a\nb\n", "a\nc\n")
    assert "-b" in diff.splitlines() and "+c" in diff.splitlines()


def test_screen_commands_quote_and_run_as_the_service_user():
    start = service_manager(parse_profile("service:\n  manager: screen\n")).start()
    assert ("runuser -u labelstudio -- env -C /var/lib/label-studio HOME=/var/lib/label-studio "
            "screen -dmS label-studio") in start
    assert re.search(r"install -d -m 0700 .* /run/screen/S-labelstudio", start)


def test_service_user_commands_start_in_the_data_dir_never_the_login_cwd(tmp_path):
    """Debian 13 homes are 0700: whatever runs as the service user must not inherit the SSH user's cwd."""
    import os

    profile = dataclasses.replace(PROFILE, paths=dataclasses.replace(PROFILE.paths, data_dir=str(tmp_path)))
    line = commands.as_service_user(profile, "sh", "-c", 'pwd; echo "$HOME"')
    assert line.startswith("runuser -u labelstudio -- ")
    # Run what follows `runuser -u USER --` here (as ourselves) from an unreadable cwd.
    words = line.split(" -- ", 1)[1]
    closed = tmp_path / "closed-home"
    closed.mkdir(mode=0o000)
    try:
        result = subprocess.run(["sh", "-c", words], cwd=closed, capture_output=True, text=True)
    finally:
        os.chmod(closed, 0o700)
    assert result.stdout.split() == [str(tmp_path), str(tmp_path)], result.stderr


@pytest.mark.parametrize("lines, expected", [
    (["Status: inactive"], (False, set())),
    (["Status: active", "22                         ALLOW       Anywhere"], (True, {"22"})),
    (["Status: active", "80/tcp                     ALLOW IN    Anywhere"], (True, {"80/tcp"})),
    (["Status: active", "22/tcp                     ALLOW       192.168.1.0/24"], (True, set())),
    (["Status: active", "22/tcp                     DENY        Anywhere"], (True, set())),
])
def test_ufw_parser(lines, expected):
    assert parse.ufw_status(lines) == expected


def test_dpkg_parser_ignores_removed_packages():
    lines = ["nginx installed", "ufw not-installed", "screen config-files", "python3-venv:amd64 installed"]
    assert parse.dpkg_installed(lines) == {"nginx", "python3-venv"}
