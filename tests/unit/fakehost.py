"""A recording stand-in for tasks.core.connect.Host: scripted answers, every command and upload kept.

Answers are matched in order by a regex on the command; the first match wins, and a command nothing
matches succeeds with no output. Root channels (streams, the data lock) are scripted the same way with
`stream`: a real RootChannel around a FakeChannel that plays the scripted bytes and keeps what is written.
Used by unit tests of plan apply, restore, locks and transfers."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from typing import Callable

from tasks.core.connect import Host, Output, RootChannel

Answer = Output | Callable[[str], Output]


def ok(stdout: str = "") -> Output:
    return Output(0, stdout, "")


def fail(stderr: str = "failed", code: int = 1, stdout: str = "") -> Output:
    return Output(code, stdout, stderr)


@dataclass
class Ran:
    command: str
    sudo: bool
    what: str | None


@dataclass
class Stream:
    """What a scripted root channel's command prints, its stderr and its exit status."""

    stdout: bytes = b""
    stderr: bytes = b""
    status: int = 0


class FakeChannel:
    """The part of a paramiko Channel that RootChannel uses."""

    def __init__(self, command: str, stream: Stream):
        self.command = command
        self.stdout = io.BytesIO(stream.stdout)
        self.stderr = stream.stderr
        self.status = stream.status
        self.written = bytearray()
        self.closed = False
        self.write_shut = False

    def recv(self, size: int) -> bytes:
        return self.stdout.read(size)

    def sendall(self, data: bytes) -> None:
        assert not self.write_shut, "write after shutdown_write"
        self.written += data

    def shutdown_write(self) -> None:
        self.write_shut = True

    def recv_exit_status(self) -> int:
        return self.status

    def recv_stderr_ready(self) -> bool:
        return bool(self.stderr)

    def recv_stderr(self, size: int) -> bytes:
        data, self.stderr = self.stderr[:size], self.stderr[size:]
        return data

    def close(self) -> None:
        self.closed = True


class _Connection:
    def __init__(self, host: "FakeHost"):
        self.host = host

    def put(self, local, remote: str) -> None:
        data = local.read() if hasattr(local, "read") else open(local, "rb").read()
        self.host.uploads[remote] = data
        self.host.log.append(Ran(f"<upload {remote}>", False, None))


@dataclass
class FakeHost:
    answers: list[tuple[str, Answer]] = field(default_factory=list)
    alias: str = "fake"
    sudo_mode: str = "passwordless"
    log: list[Ran] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    streams: list[tuple[str, Stream]] = field(default_factory=list)
    channels: list[FakeChannel] = field(default_factory=list)

    def __post_init__(self):
        self.connection = _Connection(self)

    @property
    def target(self) -> str:
        return f"ops@{self.alias}:22"

    def answer(self, pattern: str, reply: Answer) -> "FakeHost":
        self.answers.append((pattern, reply))
        return self

    def stream(self, pattern: str, stdout: bytes = b"", *, stderr: bytes = b"", status: int = 0) -> "FakeHost":
        self.streams.append((pattern, Stream(stdout, stderr, status)))
        return self

    def connect(self) -> None:
        pass

    def check_sudo(self) -> str:
        return self.sudo_mode

    def errors(self):
        return contextlib.nullcontext()

    def run(self, command: str, *, sudo: bool = False, check: bool = True, timeout=None, what=None,
            stream: bool = False) -> Output:
        self.log.append(Ran(command, sudo, what))
        output = ok()
        for pattern, reply in self.answers:
            if re.search(pattern, command, re.DOTALL):
                output = reply(command) if callable(reply) else reply
                break
        return output.checked(what, self.alias) if check else output

    run_json = Host.run_json   # the real one, over the fake run

    def root_channel(self, command: str) -> RootChannel:
        self.log.append(Ran(command, True, "root channel"))
        stream = next((reply for pattern, reply in self.streams if re.search(pattern, command, re.DOTALL)), Stream())
        channel = FakeChannel(command, stream)
        self.channels.append(channel)
        return RootChannel(self.alias, channel)

    @property
    def commands(self) -> list[str]:
        return [r.command for r in self.log if not r.command.startswith("<upload ")]

    def ran(self, pattern: str) -> list[str]:
        return [c for c in self.commands if re.search(pattern, c, re.DOTALL)]


def upload_of(host: FakeHost, name: str) -> bytes:
    """The bytes uploaded to a remote path ending in `name`."""
    matches = [data for remote, data in host.uploads.items() if remote.endswith(name)]
    assert len(matches) == 1, f"{len(matches)} uploads end with {name}: {list(host.uploads)}"
    return matches[0]
