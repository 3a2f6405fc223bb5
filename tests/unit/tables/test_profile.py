"""The profile loader: defaults, every documented key, and one-line errors naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.errors import ProfileError
from tasks.core.profile import (
    CONFIGS_DIR,
    Profile,
    load_profile,
    parse_profile,
    profile_keys,
    resolve_profile_path,
)

EXAMPLE = CONFIGS_DIR / "example.yaml"


def test_example_documents_every_key_with_a_comment_and_equals_the_defaults():
    text = EXAMPLE.read_text()
    documented = []
    sections: list[tuple[int, str]] = []  # (indent, name) of the mappings we are in
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        key = line.split(":", 1)[0].strip()
        while sections and sections[-1][0] >= indent:
            sections.pop()
        dotted = ".".join([name for _, name in sections] + [key])
        if not line.split(":", 1)[1].split("#", 1)[0].strip():
            sections.append((indent, key))
            continue
        documented.append(dotted)
        assert "#" in line, f"example.yaml: key {dotted} has no comment"
    assert documented == profile_keys()
    assert parse_profile(text, source="x", host="h") == Profile(source="x", host="h")


def test_empty_file_means_defaults():
    assert parse_profile("", source="f", host="vm") == Profile(source="f", host="vm")
    assert parse_profile("# only a comment\n", source="f", host="vm") == Profile(source="f", host="vm")


def test_values_are_read_into_sections():
    p = parse_profile(
        "server_name: labels.example.org\nhttp_port: 8081\n"
        "service:\n  manager: screen\nnginx:\n  deny_export: false\n",
        host="vm",
    )
    assert p.server_name == "labels.example.org"
    assert p.service.manager == "screen"
    assert p.nginx.deny_export is False
    assert p.nginx.client_max_body_size == "200m"  # untouched keys keep defaults
    assert p.url == "http://labels.example.org:8081"
    assert p.origin == "http://labels.example.org:8081"


@pytest.mark.parametrize(
    "text, line, key, words",
    [
        ("colour: blue\n", 1, "colour", "unknown key"),
        ("nginx:\n  deny_exports: true\n", 2, "nginx.deny_exports", "unknown key"),
        ("http_port: eighty\n", 1, "http_port", "whole number"),
        ("http_port: 70000\n", 1, "http_port", "between 1 and 65535"),
        ("http_port: true\n", 1, "http_port", "whole number"),
        ("server_name: 'a b'\n", 1, "server_name", "no spaces"),
        ("server_name: 'x.org;rm -rf /'\n", 1, "server_name", "no spaces or ';'"),
        ("service:\n  manager: upstart\n", 2, "service.manager", "one of: systemd, screen"),
        ("label_studio:\n  version: 1.23\n", 2, "label_studio.version", "quotes"),
        ("label_studio:\n  version: 'latest!'\n", 2, "label_studio.version", "not a version pip accepts"),
        ("nginx:\n  client_max_body_size: lots\n", 2, "nginx.client_max_body_size", "nginx size"),
        ("nginx:\n  deny_export: maybe\n", 2, "nginx.deny_export", "true or false"),
        ("paths:\n  data_dir: relative/dir\n", 2, "paths.data_dir", "absolute path"),
        ("paths:\n  data_dir: '/var/lib/my data'\n", 2, "paths.data_dir", "absolute path"),
        ("service:\n  user: Root\n", 2, "service.user", "user name"),
        ("backup:\n  keep_last: -1\n", 2, "backup.keep_last", "0 or more"),
        ("public_url: ftp://x\n", 1, "public_url", "http(s)://"),
        ("label_studio:\n  admin_email: nobody\n", 2, "label_studio.admin_email", "email"),
        ("nginx: 5\n", 1, "nginx", "mapping"),
    ],
)
def test_bad_values_name_file_line_and_key(text, line, key, words):
    with pytest.raises(ProfileError) as info:
        parse_profile(text, source="configs/vm.yaml")
    message = str(info.value)
    assert message.startswith(f"configs/vm.yaml:{line}: ")
    assert f"'{key}'" in message
    assert words in message
    assert "\n" not in message


def test_yaml_syntax_error_names_file_and_line():
    with pytest.raises(ProfileError) as info:
        parse_profile("server_name: a\nnginx:\n  deny_export: [true\n", source="configs/vm.yaml")
    message = str(info.value)
    assert message.startswith("configs/vm.yaml:")
    assert "YAML syntax error" in message
    assert "\n" not in message


def test_duplicate_key_is_an_error():
    with pytest.raises(ProfileError, match="given twice"):
        parse_profile("http_port: 80\nhttp_port: 81\n", source="f")


def test_top_level_must_be_a_mapping():
    with pytest.raises(ProfileError, match="must be a mapping"):
        parse_profile("- a\n- b\n", source="f")


def test_profile_lookup_order(tmp_path: Path):
    (tmp_path / "vm.yaml").write_text("http_port: 8081\n")
    other = tmp_path / "other.yaml"
    other.write_text("http_port: 8082\n")
    assert resolve_profile_path("vm", configs_dir=tmp_path, env={}) == tmp_path / "vm.yaml"
    assert resolve_profile_path("nohost", configs_dir=tmp_path, env={}) is None
    assert resolve_profile_path("vm", configs_dir=tmp_path, env={"LSVM_CONFIG": str(other)}) == other
    assert resolve_profile_path("vm", str(other), configs_dir=tmp_path, env={}) == other
    assert load_profile("vm", configs_dir=tmp_path, env={}).http_port == 8081
    assert load_profile("nohost", configs_dir=tmp_path, env={}) == Profile(host="nohost")
    with pytest.raises(ProfileError, match="no such profile file"):
        resolve_profile_path("vm", str(tmp_path / "missing.yaml"), env={})


def test_derived_paths_and_url():
    p = Profile(host="vm", address="203.0.113.5")
    r = p.remote
    assert str(r.venv) == str(r.current) == "/opt/label-studio/current"
    assert str(p.release_dir("1.23.2")) == "/opt/label-studio/releases/1.23.2"
    assert str(r.legacy_venv) == "/opt/label-studio/venv"
    assert str(r.database) == "/var/lib/label-studio/label_studio.sqlite3"
    assert str(r.secret_env) == "/var/lib/label-studio/.env"
    assert str(r.unit_file) == "/etc/systemd/system/label-studio.service"
    assert str(r.nginx_site_enabled) == "/etc/nginx/sites-enabled/label-studio"
    assert p.url == "http://203.0.113.5"
    assert Profile(public_url="https://labels.example.org/ls/").url == "https://labels.example.org/ls"
    assert Profile(public_url="https://labels.example.org/ls/").origin == "https://labels.example.org"


def test_backups_dir_is_per_host(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LSVM_BACKUPS_DIR", str(tmp_path))
    assert Profile(host="vm").backups_dir() == tmp_path / "vm"


@pytest.mark.parametrize("text, line, key, words", [
    ("service:\n  user: root\n", 2, "service.user", "is a system account"),
    ("service:\n  user: www-data\n", 2, "service.user", "is a system account"),
    ("service:\n  user: systemd-network\n", 2, "service.user", "is a system account"),
    ("paths:\n  data_dir: /\n", 2, "paths.data_dir", "absolute path"),
    ("paths:\n  data_dir: /etc\n", 2, "paths.data_dir", "must not be /etc or inside it"),
    ("paths:\n  data_dir: /etc/label-studio\n", 2, "paths.data_dir", "must not be /etc or inside it"),
    ("paths:\n  app_dir: /usr/local/label-studio\n", 2, "paths.app_dir", "must not be /usr or inside it"),
    ("paths:\n  app_dir: /lib64/x\n", 2, "paths.app_dir", "must not be /lib64"),
    ("paths:\n  data_dir: /home/alice/label-studio\n", 2, "paths.data_dir", "another user's home"),
    ("paths:\n  data_dir: /root/ls\n", 2, "paths.data_dir", "must not be /root"),
    ("paths:\n  data_dir: /run/ls\n", 2, "paths.data_dir", "must not be /run"),
    ("paths:\n  data_dir: /tmp/ls\n", 2, "paths.data_dir", "must not be /tmp"),
    ("paths:\n  data_dir: /var\n", 2, "paths.data_dir", "a directory of its own"),
    ("paths:\n  app_dir: /opt\n", 2, "paths.app_dir", "a directory of its own"),
    ("paths:\n  app_dir: /var/lib/label-studio/app\n", 2, "paths.app_dir", "must not be paths.data_dir or inside it"),
    ("paths:\n  app_dir: /var/lib/label-studio\n", 2, "paths.app_dir", "must not be paths.data_dir or inside it"),
    ("http_port: 8080\n", 1, "http_port", "is also label_studio.port"),
])
def test_values_that_aim_root_at_the_system_are_refused(text, line, key, words):
    """Root chowns the data dir to the service user and runs what the app dir holds."""
    with pytest.raises(ProfileError) as caught:
        parse_profile(text, source="configs/vm.yaml")
    message = caught.value.message
    assert message.startswith(f"configs/vm.yaml:{line}: '{key}'") and words in message, message


@pytest.mark.parametrize("text", ["paths:\n  data_dir: /srv/label-studio\n  app_dir: /opt/ls\n",
                                  "paths:\n  data_dir: /var/lib/ls-data\n  app_dir: /var/lib/ls-app\n",
                                  "service:\n  user: annotation\n", "http_port: 8081\n"])
def test_a_place_of_its_own_is_accepted(text):
    parse_profile(text)
