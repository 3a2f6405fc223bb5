"""Provision's pure core: facts from recorded probe output, comparisons, rendered files."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from tasks.core import commands, parse, render
from tasks.core.commands import provision as provision_commands
from tasks.core.commands.service import service_manager
from tasks.core.profile import Profile, parse_profile
from tasks.core.provision import steps
from tasks.core.provision.plan import AdminRequest
from tests.unit.samples import PROFILE


def test_recorded_provisioned_host(provisioned):
    f = provisioned
    assert f.installed_packages >= {"nginx", "python3-venv", "sqlite3", "ufw", "zstd"}
    assert f.app_server_version == "23.0.0" and f.site_packages == "lib/python3.11/site-packages"
    assert steps.missing_packages(PROFILE, f) == []
    assert (f.os_id, f.os_version) == ("debian", "12")
    assert f.label_studio_version == "1.23.2" and f.venv_exists and f.db_exists
    assert f.db_users == 1 and f.admin_exists
    assert f.service.running and f.service.enabled == "enabled"
    assert f.sshd_ports == (22,)
    assert f.ufw_active and [r.ports for r in f.ufw_rules] == [{22}, {80}]
    assert f.app_dir_meta == "root:root:755"
    assert f.data_dir_meta == "labelstudio:labelstudio:750"
    assert f.files["screen_launcher"] is None


def test_recorded_host_matches_what_we_render_today(provisioned):
    """The recorded server was provisioned from these templates: every file must still match,
    otherwise a template change would make every server 'changed' (record the probe again with it)."""
    assert provisioned.files["env_file"] == service_manager(PROFILE).env_file().content
    assert provisioned.files["unit_file"] == render.unit_file(PROFILE).content
    assert provisioned.files["nginx_site"] == render.nginx_site(PROFILE, ipv6=False,
                                                                site_packages=provisioned.site_packages).content
    assert provisioned.files["gunicorn_conf"] == render.app_server_config(PROFILE).content
    assert provisioned.files["prepare_database"] == render.prepare_database_script(PROFILE).content


def test_nothing_missing_on_a_provisioned_host(provisioned):
    assert steps.firewall_rules_missing(PROFILE, provisioned) == []
    assert not steps.needs_password(provisioned, AdminRequest("admin@example.com"))
    assert steps.needs_password(provisioned, AdminRequest("admin@example.com", reset=True))


def test_bare_host_needs_everything(bare):
    assert not bare.user_exists and not bare.venv_exists and not bare.db_exists
    assert bare.db_users is None and not bare.admin_exists
    assert not bare.service.exists
    assert all(content is None for content in bare.files.values())
    assert steps.missing_packages(PROFILE, bare) == ["python3-venv", "nginx", "sqlite3", "zstd", "python3-xxhash", "ufw"]
    # Every SSH port sshd listens on is allowed before ufw is enabled, then HTTP.
    two_ports = dataclasses.replace(bare, sshd_ports=(22, 2222))
    assert allowed(PROFILE, two_ports) == ["22/tcp", "2222/tcp", "80/tcp"]
    assert steps.needs_password(bare, AdminRequest("admin@example.com"))
    assert not steps.needs_password(bare, AdminRequest(None))


def test_packages_follow_the_profile():
    screen_no_fw = parse_profile("service:\n  manager: screen\nfirewall:\n  enabled: false\n")
    assert provision_commands.wanted_packages(screen_no_fw) == ["python3-venv", "nginx", "sqlite3", "zstd", "python3-xxhash", "screen"]


def allowed(profile, facts) -> list[str]:
    return [what for _, what in steps.firewall_rules_missing(profile, facts)]


def test_firewall_uses_port_22_when_sshd_ports_are_unknown(bare):
    unknown = dataclasses.replace(bare, sshd_ports=(), login_port=None)
    assert allowed(Profile(http_port=8081), unknown) == ["22/tcp", "8081/tcp"]


def test_the_port_of_this_session_is_always_allowed(bare):
    # sshd -T says 22, but we came in on 2222 (socket activation, a port forward inside the VM...).
    facts = dataclasses.replace(bare, sshd_ports=(22,), login_port=2222, client_ip="198.51.100.7")
    assert allowed(PROFILE, facts) == ["22/tcp", "2222/tcp", "80/tcp"]


def rules(*lines):
    return tuple(parse.ufw_rules(["Added user rules (see 'ufw status' for running firewall):", *lines]))


def test_a_source_restricted_ssh_rule_is_kept_and_this_session_is_added(bare):
    facts = dataclasses.replace(bare, sshd_ports=(22,), login_port=22, client_ip="198.51.100.7",
                                ufw_rules=rules("ufw allow from 10.9.0.0/16 to any port 22 proto tcp"))
    missing = steps.firewall_rules_missing(PROFILE, facts)
    assert [command for command, _ in missing] == [
        "ufw allow from 198.51.100.7 to any port 22 proto tcp", "ufw allow 80/tcp"]
    # From inside the allowed network nothing is added for SSH: the restriction is the user's choice.
    inside = dataclasses.replace(facts, client_ip="10.9.3.4")
    assert allowed(PROFILE, inside) == ["80/tcp"]


def test_app_profiles_and_ranges_count_as_open(bare):
    facts = dataclasses.replace(bare, sshd_ports=(22, 2222), login_port=22, client_ip="10.0.0.1",
                                ufw_rules=rules("ufw allow OpenSSH", "ufw limit 2000:3000/tcp comment 'alt ssh'",
                                                "ufw allow 'Nginx Full'"))
    assert allowed(PROFILE, facts) == []


def test_env_file_has_the_security_settings_and_no_secrets():
    text = service_manager(PROFILE).env_file().content
    for line in ("LABEL_STUDIO_HOST=http://127.0.0.1:59503", "CSRF_TRUSTED_ORIGINS=http://127.0.0.1:59503",
                 "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true", "LATEST_VERSION_CHECK=false",
                 "COLLECT_ANALYTICS=false", "SENTRY_DSN=", "LABEL_STUDIO_BASE_DATA_DIR=/var/lib/label-studio"):
        assert line in text.splitlines()
    assert "PASSWORD" not in text and "USERNAME" not in text
    assert "DJANGO_ALLOWED_HOSTS" not in text  # Label Studio does not read it
    assert service_manager(PROFILE).env_file().mode == "0600"
    # systemd reads it as root; the screen launcher runs as the service user and must read it.
    assert service_manager(PROFILE).env_file().owner == "root"
    # Screen mode: the launcher runs as the service user and reads it through its group; only root writes it.
    screen_env = service_manager(parse_profile("service:\n  manager: screen\n")).env_file()
    assert (screen_env.owner, screen_env.group, screen_env.mode) == ("root", "labelstudio", "0640")


def test_the_admin_step_gets_the_environment_without_root_sourcing_a_file():
    for manager in ("systemd", "screen"):
        profile = parse_profile(f"service:\n  manager: {manager}\n")
        command = provision_commands.ensure_admin(profile, Path("/tmp/x/ensure_admin.py"), Path("/tmp/x/secret"))
        assert ". /opt/label-studio/label-studio.env" not in command and "set -a" not in command
        # Started in the app dir (root's), isolated: a json.py the service user planted in its data dir
        # is never imported by the script that reads the admin password.
        assert command.startswith("runuser -u labelstudio -- env -C /opt/label-studio HOME=/var/lib/label-studio ")
        assert "/opt/label-studio/current/bin/python -I -c " in command
        assert "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true" in command


def test_env_file_is_valid_for_sh():
    text = service_manager(PROFILE).env_file().content
    result = subprocess.run(["sh", "-c", text + "\necho \"$LABEL_STUDIO_HOST\""], capture_output=True, text=True)
    assert result.stdout.strip() == "http://127.0.0.1:59503"


def test_unit_binds_loopback_and_restarts():
    text = render.unit_file(PROFILE).content
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split()[1:] == ["--config", str(PROFILE.remote.gunicorn_conf), "core.wsgi:application"]
    assert 'bind = ["127.0.0.1:8080"]' in render.app_server_config(PROFILE).content
    pre = next(line for line in text.splitlines() if line.startswith("ExecStartPre="))
    assert pre.endswith(f"-I {PROFILE.remote.prepare_database} --stamp {PROFILE.remote.prepare_stamp}")
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text and "Type=notify" in text
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
    assert start.startswith("runuser -u labelstudio -- env -C /var/lib/label-studio HOME=/var/lib/label-studio ")
    # Its sockets in its own tree, made by itself; root never creates or chowns anything in /run/screen.
    assert "SCREENDIR=/var/lib/label-studio/.screen install -d -m 0700 /var/lib/label-studio/.screen" in start
    assert "SCREENDIR=/var/lib/label-studio/.screen screen -dmS label-studio" in start
    assert "/run/screen" not in start and "install -d -m 0700 -o" not in start


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


@pytest.mark.parametrize("line, ports, source", [
    ("ufw allow 22/tcp", {22}, "any"),
    ("ufw allow 22", {22}, "any"),
    ("ufw limit 22/tcp", {22}, "any"),
    ("ufw allow OpenSSH", {22}, "any"),
    ("ufw allow 'Nginx Full'", {80, 443}, "any"),
    ("ufw allow 80,443/tcp", {80, 443}, "any"),
    ("ufw allow 8000:8002/tcp", {8000, 8001, 8002}, "any"),
    ("ufw allow from 10.9.0.0/16 to any port 22 proto tcp", {22}, "10.9.0.0/16"),
    ("ufw allow from 192.0.2.4", None, "192.0.2.4"),
    ("ufw allow in on eth0 to any port 22", {22}, "any"),
    ("ufw allow from 2001:db8::/32 to any app OpenSSH", {22}, "2001:db8::/32"),
    ("ufw allow 22/tcp comment 'ssh from anywhere'", {22}, "any"),
])
def test_ufw_rule_parser(line, ports, source):
    (rule,) = parse.ufw_rules([line])
    assert rule.ports == (None if ports is None else frozenset(ports)) and rule.source == source


@pytest.mark.parametrize("line", ["ufw deny 22/tcp", "ufw reject 80", "ufw allow out 53", "(None)",
                                  "Added user rules (see 'ufw status' for running firewall):", "ufw allow 'broken"])
def test_ufw_rule_parser_ignores_what_does_not_open_a_port(line):
    assert parse.ufw_rules([line]) == []


def test_a_restricted_rule_admits_only_its_network():
    (rule,) = parse.ufw_rules(["ufw allow from 10.9.0.0/16 to any port 22 proto tcp"])
    assert rule.admits("10.9.200.1") and not rule.admits("10.10.0.1") and not rule.admits("not an ip")


@pytest.mark.parametrize("lines, ports", [
    (["port 22"], [22]),
    (["port 22", "listenaddress 0.0.0.0:2222", "listenaddress [::]:2222"], [22, 2222]),
    (["Listen=[::]:2200 (Stream)"], [2200]),
    (["Listen=0.0.0.0:22 (Stream)", "Listen="], [22]),
    ([], []),
])
def test_sshd_ports_from_sshd_t_and_the_ssh_socket(lines, ports):
    assert parse.sshd_ports(lines) == ports


@pytest.mark.parametrize("value, expected", [
    ("198.51.100.7 51234 10.0.0.5 22", ("198.51.100.7", 22)),
    ("2001:db8::1 51234 2001:db8::2 2222", ("2001:db8::1", 2222)),
    ("", (None, None)),
    ("garbage", (None, None)),
    ("x;rm 1 2 22", (None, 22)),
])
def test_ssh_connection_parser(value, expected):
    assert parse.ssh_connection(value) == expected


def test_dpkg_parser_ignores_removed_packages():
    lines = ["nginx installed", "ufw not-installed", "screen config-files", "python3-venv:amd64 installed"]
    assert parse.dpkg_installed(lines) == {"nginx", "python3-venv"}
