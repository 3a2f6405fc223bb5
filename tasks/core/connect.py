"""The one place a Connection is used for commands and root data channels: host keys checked as OpenSSH
does, sudo mode, timeouts, and errors in words."""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import socket
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import paramiko
from fabric import Connection
from invoke.exceptions import AuthFailure, CommandTimedOut, Failure
from paramiko.ssh_exception import NoValidConnectionsError

from tasks.core import commands, parse, ui
from tasks.core.errors import ConnectError, JobStillRunning, RemoteError, SudoError
from tasks.core.hostkeys import HostKeyRefused, verify_host_keys

# paramiko's transport thread logs what went wrong (with a traceback) before the caller hears of it; with no
# handler, Python prints that to stderr. The caller turns the failure into one line of ours instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

SUDO_PASSWORD_HINT = "run with --prompt-for-sudo-password, or set FABRIC_SUDO_PASSWORD in the environment"
CHUNK = 1024 * 1024
# A data channel's window: above 1 Gbit/s times 100 ms in flight. Where this end is the slower one (loopback),
# paramiko holds up to this much ahead of it: at 32 MiB the full backup's peak RSS went past 100 MB.
WINDOW = 16 * 1024 * 1024
# SSH commands (exec channels) opened per host alias in this process; LSVM_SSH_COUNT=1 prints them when a
# task ends (the backup benchmark counts round trips with it).
SSH_COMMANDS: collections.Counter = collections.Counter()


@dataclass
class Output:
    """What a remote command left behind."""

    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exited == 0

    def last_line(self) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return parse.printable(text[-1]) if text else f"exit code {self.exited}"

    def answer(self) -> dict | None:
        """The program's answer: its last stdout line that is a JSON object (parse.last_json)."""
        return parse.last_json(self.stdout)

    def within(self, limit: int, what: str, alias: str) -> "Output":
        """Itself when its stdout is at most `limit` bytes: the answer of a bounded read
        (commands.read_as_service_user), refused whole when the file was longer."""
        if len(self.stdout.encode()) > limit:
            raise RemoteError(f"{what} on {alias} is larger than {limit} bytes: not read")
        return self

    def checked(self, what: str | None, alias: str) -> "Output":
        """Itself when the command succeeded, else RemoteError naming the step and its last line."""
        if not self.ok:
            raise RemoteError(f"{what or 'command'} failed on {alias}: {self.last_line()}")
        return self


class Host:
    """A connected server: runs commands as the login user or as root, with errors turned into ours."""

    def __init__(self, connection: Connection):
        self.connection = connection
        if isinstance(connection, Connection):  # a real one: Fabric made it trust any host key
            verify_host_keys(connection)

    @property
    def alias(self) -> str:
        """The name the user typed after -H (an ssh_config alias or a host name)."""
        return getattr(self.connection, "original_host", None) or self.connection.host

    @property
    def target(self) -> str:
        c = self.connection
        return f"{c.user}@{c.host}:{c.port}"

    def connect(self) -> None:
        """Open the SSH session now, so an unreachable host fails before anything else."""
        with self.errors():
            self.connection.open()

    def run_json(self, command: str, *, sudo: bool = False, what: str, timeout: float | None = None) -> dict:
        """Run a program that answers with a JSON object as its last stdout line, and return that object;
        RemoteError naming `what` when it fails or gives no answer."""
        out = self.run(command, sudo=sudo, timeout=timeout, what=what)
        answer = out.answer()
        if answer is None:
            raise RemoteError(f"{what} on {self.alias} gave no answer: {out.last_line()}")
        return answer

    def run(self, command: str, *, sudo: bool = False, check: bool = True,
            timeout: float | None = None, what: str | None = None, stream: bool = False) -> Output:
        """Run `command` (as root when `sudo`). `check` raises RemoteError on a non-zero exit.
        `stream` shows the output as it comes (for logs), instead of capturing it quietly."""
        options = dict(hide=not stream, warn=True, in_stream=False, timeout=timeout)
        SSH_COMMANDS[self.alias] += 1
        with self.errors():
            if sudo and self.sudo_mode == "password":
                # The password goes once, on stdin, to sudo itself (never Fabric's sudo(), whose
                # responder answers every prompt-like line of the command's output with it).
                result = self.connection.run(commands.sudo_with_password_first(command),
                                             **{**options, "in_stream": self._password_line()})
            else:
                line = commands.sudo_noninteractive(command) if sudo else command
                result = self.connection.run(line, **options)
        output = Output(result.exited, result.stdout, result.stderr)
        return output.checked(what, self.alias) if check else output

    def _password_line(self) -> io.StringIO:
        return io.StringIO(self.connection.config.sudo.password + "\n")

    @cached_property
    def sudo_mode(self) -> str:
        """'passwordless' or 'password'; raises SudoError when root cannot be had."""
        SSH_COMMANDS[self.alias] += 1
        with self.errors():
            probe = self.connection.run(commands.SUDO_CHECK, hide=True, warn=True, in_stream=False)
        if probe.exited == 0:
            return "passwordless"
        message = (probe.stderr or probe.stdout).strip()
        user = self.connection.user
        if "password is required" not in message:
            raise SudoError(f"user '{user}' cannot use sudo on {self.alias}: {message or 'sudo failed'}",
                            hint="this toolkit needs a login with sudo rights")
        if not self.connection.config.sudo.password:
            raise SudoError(f"sudo on {self.alias} needs a password for '{user}'", hint=SUDO_PASSWORD_HINT)
        SSH_COMMANDS[self.alias] += 1
        with self.errors():
            checked = self.connection.run(commands.sudo_with_password_first("true"), hide=True, warn=True,
                                          in_stream=self._password_line())
        if checked.exited != 0:
            raise SudoError(f"sudo on {self.alias} refused the password given",
                            hint="check FABRIC_SUDO_PASSWORD / the password typed")
        return "password"

    def check_sudo(self) -> str:
        """Root can be had (else SudoError, in words): 'passwordless' or 'password'."""
        return self.sudo_mode

    def root_channel(self, command: str) -> "RootChannel":
        """`command` run as root on its own exec channel, whose stdin and stdout carry data."""
        self.connect()
        SSH_COMMANDS[self.alias] += 1
        with self.errors():
            channel = self.connection.client.get_transport().open_session(window_size=WINDOW)
            if self.sudo_mode == "password":
                channel.exec_command(commands.sudo_with_password_on_stdin(command))
                channel.sendall((self.connection.config.sudo.password + "\n").encode())
            else:
                channel.exec_command(commands.sudo_noninteractive(command))
        return RootChannel(self.alias, channel)

    def errors(self) -> "_ErrorTranslator":
        """A context in which socket, paramiko and invoke failures become our one-line errors."""
        return _ErrorTranslator(self)


@contextlib.contextmanager
def removed_afterwards(host: "Host", command: str, *, kept: str = "") -> Iterator[None]:
    """Runs `command` (root) when the block ends, also when it fails, but not after a Ctrl-C that left a
    job on the server using what it removes (JobStillRunning): then `kept` is said, when given."""
    try:
        yield
    except JobStillRunning:
        if kept:
            ui.warn(kept)
        raise
    except BaseException:
        host.run(command, sudo=True, check=False)
        raise
    host.run(command, sudo=True, check=False)


class RootChannel:
    """File-like ends of a root command's stdin and stdout (paramiko channel inside), counting bytes."""

    def __init__(self, alias: str, channel):
        self.alias = alias
        self.channel = channel
        self.received = 0
        self.sent = 0

    # file-like for readers
    def read(self, size: int = CHUNK) -> bytes:
        data = self.channel.recv(size)
        self.received += len(data)
        return data

    def readable(self) -> bool:
        return True

    def read_line(self) -> str:
        """One line of stdout, read byte by byte so nothing after it is consumed."""
        line = b""
        while not line.endswith(b"\n"):
            data = self.channel.recv(1)
            if not data:
                break
            line += data
        return line.decode(errors="replace")

    def read_rest(self) -> str:
        """Everything left on stdout, until the command closes it."""
        rest = b""
        while True:
            data = self.channel.recv(4096)
            if not data:
                return rest.decode(errors="replace")
            rest += data

    # file-like for writers
    def write(self, data: bytes) -> int:
        self.channel.sendall(data)
        self.sent += len(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def finish(self, what: str) -> None:
        """Close our side, wait for the command (its stdout drained), raise RemoteError on failure."""
        if not self.channel.closed:
            self.channel.shutdown_write()
        while self.channel.recv(CHUNK):
            pass
        status = self.channel.recv_exit_status()
        err = b""
        while self.channel.recv_stderr_ready():
            err += self.channel.recv_stderr(CHUNK)
        self.channel.close()
        if status != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise RemoteError(f"{what} failed on {self.alias}: {lines[-1] if lines else f'exit {status}'}")

    def exit_status(self) -> int:
        """The command's exit status (waits for it to end)."""
        return self.channel.recv_exit_status()

    def close(self) -> None:
        self.channel.close()


class _ErrorTranslator:
    """Turns socket/paramiko/invoke failures into one-line ConnectError/SudoError messages."""

    def __init__(self, host: Host):
        self.host = host

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            return False
        alias, target = self.host.alias, self.host.target
        if isinstance(exc, HostKeyRefused):
            raise ConnectError(exc.message, hint=exc.hint) from None
        if isinstance(exc, AuthFailure):
            raise SudoError(f"sudo on {alias} refused the password given",
                            hint="check FABRIC_SUDO_PASSWORD / the password typed") from None
        if isinstance(exc, socket.gaierror):
            raise ConnectError(
                f"cannot resolve host '{alias}'",
                hint=f"check the name, or add a 'Host {alias}' entry with its HostName to ~/.ssh/config",
            ) from None
        if isinstance(exc, NoValidConnectionsError) or isinstance(exc, ConnectionRefusedError):
            raise ConnectError(f"{target} refused the connection",
                               hint="is sshd running and the port right?") from None
        if isinstance(exc, (socket.timeout, TimeoutError)):
            raise ConnectError(f"timed out connecting to {target}",
                               hint="is the host up, and reachable from here (VPN)?") from None
        if isinstance(exc, paramiko.AuthenticationException):
            raise ConnectError(
                f"{target} refused our SSH key",
                hint="check User and IdentityFile in ~/.ssh/config, or load the key with ssh-add",
            ) from None
        if isinstance(exc, paramiko.BadHostKeyException):
            raise ConnectError(f"the host key of {target} does not match known_hosts",
                               hint="if the server was rebuilt, remove its old key with ssh-keygen -R") from None
        if isinstance(exc, (paramiko.SSHException, EOFError, OSError)):
            raise ConnectError(f"SSH to {target} failed: {str(exc) or type(exc).__name__}") from None
        if isinstance(exc, CommandTimedOut):
            raise RemoteError(f"a command on {alias} did not finish within {exc.timeout}s") from None
        if isinstance(exc, Failure):
            output = Output(exc.result.exited, exc.result.stdout, exc.result.stderr)
            raise RemoteError(f"command failed on {alias}: {output.last_line()}") from None
        return False
