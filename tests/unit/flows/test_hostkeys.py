"""Host keys are checked as OpenSSH does: known_hosts files from ssh_config, StrictHostKeyChecking, and a
changed key always refused. The last tests drive a real Fabric Connection against an in-process paramiko
server, so the check is proven wired in, and proven to run before anything is sent."""

from __future__ import annotations

import base64
import socket
import stat
import subprocess
import threading
from pathlib import Path

import paramiko
import pytest
from fabric import Config, Connection
from paramiko.hostkeys import HostKeys

from tasks.core.connect import Host
from tasks.core.errors import ConnectError
from tasks.core.hostkeys import (
    ACCEPT,
    MISMATCH,
    RECORD,
    REVOKED,
    TRUSTED,
    UNKNOWN,
    KnownKey,
    decide,
    describe_key,
    fingerprint,
    keys_for,
    known_hosts_settings,
    parse_known_hosts,
    preferred_key_types,
    record_key,
    strict_mode,
)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """~ is a fresh folder: the developer's known_hosts is never read or written."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def ssh_keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "test", "-f", str(path)], check=True)
    return path


def public_key(path: Path) -> paramiko.PKey:
    kind, data = Path(f"{path}.pub").read_text().split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, paramiko.PKey]:
    """Private keys: two ed25519 (made by ssh-keygen: paramiko cannot make them), one ECDSA."""
    folder = tmp_path_factory.mktemp("keys")
    return {
        "ed1": paramiko.Ed25519Key(filename=str(ssh_keygen(folder / "ed1"))),
        "ed2": paramiko.Ed25519Key(filename=str(ssh_keygen(folder / "ed2"))),
        "ecdsa": paramiko.ECDSAKey.generate(),
    }


def line(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def known(key: paramiko.PKey, *, revoked: bool = False) -> KnownKey:
    return KnownKey(("h",), key, revoked, Path("/kh"), 1)


# ------------------------------------------------------------------------------------------------
# Fingerprints, as OpenSSH prints them


def test_fingerprint_is_what_ssh_keygen_prints(tmp_path):
    path = ssh_keygen(tmp_path / "k")
    printed = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], capture_output=True, text=True, check=True)
    assert fingerprint(public_key(path)) == printed.stdout.split()[1]
    assert fingerprint(public_key(path)).startswith("SHA256:") and not fingerprint(public_key(path)).endswith("=")


def test_describe_key_names_the_type_as_openssh(keys):
    assert describe_key(keys["ed1"]) == f"ED25519 key {fingerprint(keys['ed1'])}"
    assert describe_key(keys["ecdsa"]).startswith("ECDSA key SHA256:")


# ------------------------------------------------------------------------------------------------
# The policy as a table: StrictHostKeyChecking x what known_hosts says


@pytest.mark.parametrize("strict, known_hosts, verdict", [
    ("yes", "known", TRUSTED), ("yes", "unknown", UNKNOWN), ("yes", "mismatch", MISMATCH),
    ("ask", "known", TRUSTED), ("ask", "unknown", UNKNOWN), ("ask", "mismatch", MISMATCH),
    (None, "known", TRUSTED), (None, "unknown", UNKNOWN), (None, "mismatch", MISMATCH),
    ("accept-new", "known", TRUSTED), ("accept-new", "unknown", RECORD), ("accept-new", "mismatch", MISMATCH),
    ("no", "known", TRUSTED), ("no", "unknown", ACCEPT), ("no", "mismatch", MISMATCH),
    ("off", "unknown", ACCEPT), ("off", "mismatch", MISMATCH),
])
def test_decide(keys, strict, known_hosts, verdict):
    ssh_config = {} if strict is None else {"stricthostkeychecking": strict}
    lines = {"known": [known(keys["ed1"])], "unknown": [], "mismatch": [known(keys["ed2"])]}[known_hosts]
    assert decide(keys["ed1"], lines, strict_mode(ssh_config)) == verdict


def test_a_key_of_another_type_than_the_known_ones_is_a_mismatch(keys):
    assert decide(keys["ed1"], [known(keys["ecdsa"])], "no") == MISMATCH


def test_any_of_several_known_keys_is_trusted(keys):
    assert decide(keys["ed1"], [known(keys["ed2"]), known(keys["ed1"])], "yes") == TRUSTED


@pytest.mark.parametrize("strict", ["yes", "accept-new", "no"])
def test_a_revoked_key_is_refused_even_when_listed(keys, strict):
    assert decide(keys["ed1"], [known(keys["ed1"]), known(keys["ed1"], revoked=True)], strict) == REVOKED


@pytest.mark.parametrize("value, mode", [("yes", "yes"), ("Yes", "yes"), ("true", "yes"), ("ask", "ask"),
                                         ("accept-new", "accept-new"), ("no", "no"), ("off", "no"), ("false", "no")])
def test_strict_mode_values(value, mode):
    assert strict_mode({"stricthostkeychecking": value}) == mode


def test_strict_mode_refuses_what_openssh_refuses():
    with pytest.raises(ConnectError, match="StrictHostKeyChecking 'maybe'"):
        strict_mode({"stricthostkeychecking": "maybe"})


# ------------------------------------------------------------------------------------------------
# Which files, which name


def settings(ssh_config: dict, host: str = "10.0.0.5", port: int = 22):
    return known_hosts_settings(ssh_config, host=host, port=port, user="alice", original_host="vm")


def test_default_files_are_openssh_defaults(home):
    s = settings({})
    assert s.user_files == (home / ".ssh/known_hosts", home / ".ssh/known_hosts2")
    assert s.global_files == (Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2"))
    assert (s.strict, s.hash_names) == ("ask", False)


def test_several_files_with_tilde_tokens_and_quotes(home, monkeypatch):
    monkeypatch.setenv("KH_DIR", "/srv/kh")
    s = settings({"userknownhostsfile": '~/a "~/with space" %d/b/%h-%p-%r-%n ${KH_DIR}/c'}, port=2222)
    assert s.user_files == (home / "a", home / "with space", home / "b/10.0.0.5-2222-alice-vm", Path("/srv/kh/c"))


@pytest.mark.parametrize("value", ["/dev/null", "none"])
def test_dev_null_and_none_name_no_file(value):
    s = settings({"userknownhostsfile": value, "globalknownhostsfile": value})
    assert s.files == ()


def test_the_name_is_host_on_port_22_and_bracketed_elsewhere():
    assert settings({}, host="Example.ORG").name == "example.org"
    assert settings({}, host="127.0.0.1", port=2222).name == "[127.0.0.1]:2222"


def test_host_key_alias_replaces_host_and_port():
    assert settings({"hostkeyalias": "labels"}, port=2222).name == "labels"


def test_hash_known_hosts():
    assert settings({"hashknownhosts": "yes"}).hash_names


# ------------------------------------------------------------------------------------------------
# Reading known_hosts


def test_lines_apply_by_name_port_hash_and_pattern(keys):
    ed1, ed2, ecdsa = keys["ed1"], keys["ed2"], keys["ecdsa"]
    text = (
        "# a comment\n\n"
        + line("10.0.0.5", ed1)
        + line("[10.0.0.5]:2222", ed2)
        + line(HostKeys.hash_host("[10.0.0.9]:2222"), ecdsa)
        + line("other,*.example.org,!bad.example.org", ed1)
        + "@cert-authority *.example.org " + line("", ed2).strip() + "\n"
        + "garbage line here\n"
        + "10.0.0.5\tssh-ed25519  not-base64!!\n"
    )
    lines = parse_known_hosts(text, Path("/kh"))
    assert [k.line for k in lines] == [3, 4, 5, 6]

    def keys_of(name):
        return [k.key for k in keys_for(lines, name)]

    assert keys_of("10.0.0.5") == [ed1]
    assert keys_of("[10.0.0.5]:2222") == [ed2]
    assert keys_of("[10.0.0.9]:2222") == [ecdsa]
    assert keys_of("10.0.0.9") == []
    assert keys_of("labels.EXAMPLE.org") == [ed1]
    assert keys_of("bad.example.org") == []
    assert keys_of("[labels.example.org]:2222") == []


def test_revoked_lines_apply_to_the_hosts_they_name(keys):
    text = "@revoked * " + line("", keys["ed1"]).strip() + "\n@revoked other " + line("", keys["ed2"]).strip()
    lines = parse_known_hosts(text, Path("/kh"))
    assert [(k.revoked, k.key) for k in keys_for(lines, "anything")] == [(True, keys["ed1"])]


def test_the_known_types_are_asked_for_first():
    available = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
    assert preferred_key_types(available, {"ecdsa-sha2-nistp256"})[0] == "ecdsa-sha2-nistp256"
    assert preferred_key_types(available, {"ssh-rsa"})[:3] == ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
    assert preferred_key_types(available, set()) == list(available)


# ------------------------------------------------------------------------------------------------
# accept-new writes the key


def test_record_key_creates_ssh_folder_0700_and_file_0600(home, keys):
    path = home / ".ssh/known_hosts"
    record_key(path, "[127.0.0.1]:2222", keys["ed1"], hashed=False)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [k.key for k in keys_for(parse_known_hosts(path.read_text(), path), "[127.0.0.1]:2222")] == [keys["ed1"]]


def test_record_key_appends_on_a_line_of_its_own_and_can_hash(home, keys):
    path = home / "kh"
    path.write_text(line("a", keys["ed2"]).rstrip("\n"))
    record_key(path, "b", keys["ed1"], hashed=True)
    text = path.read_text()
    assert text.count("\n") == 2 and "|1|" in text and " b " not in text
    assert [k.key for k in keys_for(parse_known_hosts(text, path), "b")] == [keys["ed1"]]


# ------------------------------------------------------------------------------------------------
# Wired in: a real Fabric Connection against an in-process SSH server


class Server(paramiko.ServerInterface):
    """Accepts the password 'pw' and records every authentication attempt."""

    def __init__(self):
        self.attempts: list[str] = []

    def get_allowed_auths(self, username):
        return "password"

    def check_auth_password(self, username, password):
        self.attempts.append(password)
        return paramiko.AUTH_SUCCESSFUL if password == "pw" else paramiko.AUTH_FAILED


@pytest.fixture
def server():
    """Serves one SSH connection on loopback with the host keys put in `server.host_keys`."""
    listener = socket.create_server(("127.0.0.1", 0))
    state = Server()
    state.host_keys, state.port = [], listener.getsockname()[1]
    transports = []

    def serve():
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        transport = paramiko.Transport(sock)
        transports.append(transport)
        for key in state.host_keys:
            transport.add_server_key(key)
        try:
            transport.start_server(server=state)
        except (paramiko.SSHException, EOFError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    state.start = thread.start
    yield state
    listener.close()
    for transport in transports:
        transport.close()


def connect(server, home: Path, options: str, known_hosts: str = "") -> Host:
    """Host.connect() to the server, as `fab -H vm` would, with these ssh_config options."""
    (home / "known_hosts").write_text(known_hosts)
    config_text = (f"Host vm\n  HostName 127.0.0.1\n  Port {server.port}\n  User alice\n"
                   f"  UserKnownHostsFile {home}/known_hosts\n  GlobalKnownHostsFile /dev/null\n{options}")
    config = Config(ssh_config=paramiko.SSHConfig.from_text(config_text),
                    overrides={"connect_kwargs": {"password": "pw", "look_for_keys": False, "allow_agent": False}})
    server.start()
    host = Host(Connection("vm", config=config))
    host.connect()
    return host


def test_a_known_key_connects(server, home, keys):
    server.host_keys = [keys["ed1"]]
    host = connect(server, home, "  StrictHostKeyChecking yes\n", line(f"[127.0.0.1]:{server.port}", keys["ed1"]))
    assert host.connection.is_connected and server.attempts == ["pw"]


def test_the_known_key_type_is_negotiated_when_the_server_has_several(server, home, keys):
    server.host_keys = [keys["ed1"], keys["ecdsa"]]
    host = connect(server, home, "  StrictHostKeyChecking yes\n", line(f"[127.0.0.1]:{server.port}", keys["ecdsa"]))
    assert host.connection.is_connected


@pytest.mark.parametrize("strict", ["yes", "accept-new", "no"])
def test_a_changed_key_is_refused_before_authentication(server, home, keys, strict):
    server.host_keys = [keys["ed2"]]
    with pytest.raises(ConnectError) as caught:
        connect(server, home, f"  StrictHostKeyChecking {strict}\n", line(f"[127.0.0.1]:{server.port}", keys["ed1"]))
    error = caught.value
    assert error.exit_code == 3 and "\n" not in str(error)
    assert error.message.startswith(f"the host key of alice@127.0.0.1:{server.port} does not match known_hosts")
    assert f"ED25519 key {fingerprint(keys['ed2'])}" in error.message
    assert f"ssh-keygen -R '[127.0.0.1]:{server.port}' -f ~/known_hosts" in error.hint
    assert server.attempts == []


def test_an_unknown_key_is_refused_under_strict_checking_with_its_fingerprint(server, home, keys):
    server.host_keys = [keys["ed1"]]
    with pytest.raises(ConnectError) as caught:
        connect(server, home, "")  # StrictHostKeyChecking unset: OpenSSH's ask, and no one to ask
    error = caught.value
    assert "is not in known_hosts (StrictHostKeyChecking ask)" in error.message
    assert f"ED25519 key {fingerprint(keys['ed1'])}" in error.message
    assert f"ssh-keyscan -p {server.port} 127.0.0.1 >> ~/known_hosts" in error.hint
    assert "\n" not in str(error) and server.attempts == []


def test_accept_new_records_the_key_then_trusts_it(server, home, keys):
    server.host_keys = [keys["ed1"]]
    host = connect(server, home, "  StrictHostKeyChecking accept-new\n")
    assert host.connection.is_connected
    recorded = keys_for(parse_known_hosts((home / "known_hosts").read_text(), home), f"[127.0.0.1]:{server.port}")
    assert [k.key for k in recorded] == [keys["ed1"]]


def test_no_accepts_an_unknown_key_without_recording_it(server, home, keys):
    server.host_keys = [keys["ed1"]]
    host = connect(server, home, "  StrictHostKeyChecking no\n")
    assert host.connection.is_connected and (home / "known_hosts").read_text() == ""


def test_proxy_jump_hops_are_checked_too(home):
    config = Config(ssh_config=paramiko.SSHConfig.from_text(
        "Host vm\n  HostName 10.0.0.5\n  ProxyJump bastion\nHost bastion\n  HostName 10.0.0.1\n  Port 2200\n"))
    host = Host(Connection("vm", config=config))
    hop = host.connection.gateway
    check = hop.connect_kwargs["transport_factory"].__self__
    assert check.settings.name == "[10.0.0.1]:2200"
    assert host.connection.connect_kwargs["transport_factory"].__self__.settings.name == "10.0.0.5"
