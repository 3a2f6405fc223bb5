"""The SSH layer: socket, paramiko and invoke failures become one-line errors of the right class; sudo
is asked the right way in each mode, for commands and for root data channels."""

from __future__ import annotations

import socket
import subprocess
from types import SimpleNamespace

import paramiko
import pytest
from invoke.exceptions import AuthFailure, CommandTimedOut, UnexpectedExit
from invoke.runners import Result
from paramiko.ssh_exception import NoValidConnectionsError

from tasks.core import commands, parse
from tasks.core.connect import WINDOW, Host, Output
from tasks.core.errors import ConnectError, RemoteError, SudoError


class Key:
    def get_name(self):
        return "ssh-ed25519"

    def get_base64(self):
        return "AAAAkey"


class Channel:
    """What Host.root_channel does with a paramiko channel."""

    def __init__(self):
        self.executed, self.sent = [], b""

    def exec_command(self, command):
        self.executed.append(command)

    def sendall(self, data):
        self.sent += data


class Connection:
    """The part of a fabric Connection that Host uses, recording calls."""

    def __init__(self, *, sudo_probe=Result(exited=0), password=None, password_check=Result(exited=0)):
        self.host, self.original_host, self.user, self.port = "10.0.0.5", "vm", "alice", 22
        self.config = SimpleNamespace(sudo=SimpleNamespace(password=password, prompt="[sudo] password: "))
        self.sudo_probe, self.password_check = sudo_probe, password_check
        self.ran, self.sudoed, self.windows, self.stdin = [], [], [], []
        self.channel = Channel()
        transport = SimpleNamespace(open_session=self.open_session)
        self.client = SimpleNamespace(get_transport=lambda: transport)

    def open(self):
        pass

    def open_session(self, window_size):
        self.windows.append(window_size)
        return self.channel

    def run(self, command, **options):
        self.ran.append(command)
        self.stdin.append(options["in_stream"].read() if options.get("in_stream") else options.get("in_stream"))
        if command == commands.SUDO_CHECK:
            return self.sudo_probe
        if command == commands.sudo_with_password_first("true"):
            return self.password_check
        return Result(stdout="out\n", stderr="", exited=0)

    def sudo(self, command, **options):
        self.sudoed.append(command)
        return Result(stdout="out\n", stderr="[sudo] password: warning\n", exited=0)


NEEDS_PASSWORD = Result(exited=1, stderr="sudo: a password is required\n")
RESULT = Result(command="sleep 9", exited=1)

FAILURES = [
    (socket.gaierror(-2, "Name or service not known"), ConnectError, "cannot resolve host 'vm'"),
    (NoValidConnectionsError({("10.0.0.5", 22): ConnectionRefusedError()}), ConnectError,
     "alice@10.0.0.5:22 refused the connection"),
    (ConnectionRefusedError(), ConnectError, "alice@10.0.0.5:22 refused the connection"),
    (socket.timeout("timed out"), ConnectError, "timed out connecting to alice@10.0.0.5:22"),
    (paramiko.AuthenticationException("Authentication failed."), ConnectError, "alice@10.0.0.5:22 refused our SSH key"),
    (paramiko.BadHostKeyException("vm", Key(), Key()), ConnectError, "the host key of alice@10.0.0.5:22 does not match"),
    (paramiko.SSHException("Error reading SSH protocol banner"), ConnectError,
     "SSH to alice@10.0.0.5:22 failed: Error reading SSH protocol banner"),
    (EOFError(), ConnectError, "SSH to alice@10.0.0.5:22 failed: EOFError"),
    (AuthFailure(RESULT, "[sudo] password: "), SudoError, "sudo on vm refused the password given"),
    (CommandTimedOut(RESULT, 30), RemoteError, "a command on vm did not finish within 30s"),
    (UnexpectedExit(Result(command="x", exited=1, stderr="line one\nno such file\n")), RemoteError,
     "command failed on vm: no such file"),
]


@pytest.mark.parametrize("failure, kind, message", FAILURES, ids=[type(f[0]).__name__ + str(i) for i, f in enumerate(FAILURES)])
def test_failures_inside_errors_become_our_errors(failure, kind, message):
    host = Host(Connection())
    with pytest.raises(kind) as caught:
        with host.errors():
            raise failure
    assert type(caught.value) is kind
    assert caught.value.message.startswith(message)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize("failure", [f[0] for f in FAILURES], ids=[type(f[0]).__name__ for f in FAILURES])
def test_every_failure_is_one_line(failure):
    with pytest.raises(Exception) as caught:
        with Host(Connection()).errors():
            raise failure
    assert "\n" not in str(caught.value)


def test_anything_else_passes_through():
    with pytest.raises(KeyError):
        with Host(Connection()).errors():
            raise KeyError("ours")


def test_output_checked_names_the_step_and_the_last_line():
    assert Output(0, "fine\n", "").checked("reading", "vm").stdout == "fine\n"
    with pytest.raises(RemoteError, match=r"^installing nginx failed on vm: E: Unable to locate package$"):
        Output(100, "", "Reading lists\nE: Unable to locate package\n").checked("installing nginx", "vm")
    with pytest.raises(RemoteError, match=r"^command failed on vm: exit code 3$"):
        Output(3, "", "").checked(None, "vm")
    assert Output(1, "only stdout\n", "  ").last_line() == "only stdout"


def test_alias_is_what_the_user_typed_and_target_where_we_go():
    host = Host(Connection())
    assert (host.alias, host.target) == ("vm", "alice@10.0.0.5:22")


# ------------------------------------------------------------------------------------------------
# sudo


def test_without_a_password_root_commands_use_sudo_n():
    connection = Connection()
    host = Host(connection)
    output = host.run("echo 'a b'", sudo=True)
    assert connection.ran[-1] == commands.sudo_noninteractive("echo 'a b'")
    assert (host.sudo_mode, output.stdout, connection.sudoed) == ("passwordless", "out\n", [])


def test_with_a_password_it_goes_once_on_stdin_to_sudo_and_never_through_fabric_sudo():
    """Fabric's sudo() answers every prompt-like line of a command's output with the password."""
    connection = Connection(sudo_probe=NEEDS_PASSWORD, password="pw")
    host = Host(connection)
    output = host.run("echo 'a b'", sudo=True)
    assert host.sudo_mode == "password"
    assert connection.ran[-1] == commands.sudo_with_password_first("echo 'a b'")
    assert connection.ran[-1].startswith("sudo -k -S -p '' sh -c ")   # -k: sudo always reads that line
    assert connection.stdin[-1] == "pw\n" and connection.sudoed == []
    assert output.stdout == "out\n"


def test_what_sudo_leaves_of_stdin_never_reaches_the_script():
    script = commands.sudo_with_password_first("read -r line; echo \"read=$line\"")
    inner = script.split(" sh -c ", 1)[1]
    out = subprocess.run(["sh", "-c", f"sh -c {inner}"], input="pw\n", capture_output=True, text=True)
    assert out.stdout == "read=\n"


def test_a_wrong_sudo_password_is_a_sudo_error_before_any_command():
    connection = Connection(sudo_probe=NEEDS_PASSWORD, password="bad", password_check=Result(exited=1))
    with pytest.raises(SudoError, match="refused the password"):
        Host(connection).run("touch /x", sudo=True)
    assert not any("touch /x" in command for command in connection.ran)


def test_login_user_commands_are_run_as_given():
    connection = Connection()
    Host(connection).run("uname -r")
    assert connection.ran == ["uname -r"]


def test_sudo_needing_a_password_nobody_gave_is_a_sudo_error():
    host = Host(Connection(sudo_probe=NEEDS_PASSWORD))
    with pytest.raises(SudoError, match="sudo on vm needs a password for 'alice'") as caught:
        host.check_sudo()
    assert "--prompt-for-sudo-password" in caught.value.hint


def test_a_user_without_sudo_rights_is_told_so():
    host = Host(Connection(sudo_probe=Result(exited=1, stderr="alice is not in the sudoers file.\n")))
    with pytest.raises(SudoError, match="user 'alice' cannot use sudo on vm: alice is not in the sudoers file"):
        host.check_sudo()


def test_a_root_channel_without_a_password_uses_sudo_n():
    connection = Connection()
    channel = Host(connection).root_channel("cat > /x")
    assert connection.channel.executed == [commands.sudo_noninteractive("cat > /x")]
    assert connection.channel.sent == b"" and connection.windows == [WINDOW]
    assert channel.alias == "vm"


def test_a_root_channel_with_a_password_sends_it_first_on_stdin():
    connection = Connection(sudo_probe=NEEDS_PASSWORD, password="pw")
    channel = Host(connection).root_channel("cat > /x")
    assert connection.channel.executed == [commands.sudo_with_password_on_stdin("cat > /x")]
    assert connection.channel.sent == b"pw\n"
    channel.write(b"data")
    assert connection.channel.sent == b"pw\ndata" and channel.sent == 4  # the password is not counted


@pytest.mark.parametrize("stdout, answer", [
    ('talk\n{"ok": true}\n', {"ok": True}),
    ('{"first": 1}\n{"second": 2}\nwarning: after\n', {"second": 2}),
    ("[1, 2]\n", None),
    ("{not json\n", None),
    ("", None),
])
def test_a_program_s_answer_is_its_last_json_object_line(stdout, answer):
    assert parse.last_json(stdout) == answer
    assert Output(0, stdout, "").answer() == answer


def test_run_json_returns_the_answer_and_names_the_step_without_one():
    from tests.unit.fakehost import FakeHost

    host = FakeHost().answer("counts", Output(0, 'x\n{"tasks": 3}\n', "")).answer("silent", Output(0, "", "boom"))
    assert host.run_json("counts", what="reading counts") == {"tasks": 3}
    with pytest.raises(RemoteError, match="reading nothing on fake gave no answer: boom"):
        host.run_json("silent", what="reading nothing")
    with pytest.raises(RemoteError, match="failing failed on fake"):
        host.answer("fails", Output(1, '{"x": 1}', "")).run_json("fails", what="failing")
