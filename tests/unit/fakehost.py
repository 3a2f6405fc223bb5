"""A recording stand-in for tasks.core.connect.Host: scripted answers, every command and upload kept.

Answers are matched in order by a regex on the command; the first match wins, and a command nothing
matches succeeds with no output. Used by unit tests of plan apply, restore, locks and transfers."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Callable

from tasks.core.connect import Output

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

    def __post_init__(self):
        self.connection = _Connection(self)

    @property
    def target(self) -> str:
        return f"ops@{self.alias}:22"

    def answer(self, pattern: str, reply: Answer) -> "FakeHost":
        self.answers.append((pattern, reply))
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
