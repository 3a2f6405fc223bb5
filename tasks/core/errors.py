"""One exception family. Every expected failure is one of these; the task edge turns it into a clean exit."""

from __future__ import annotations


class ToolkitError(Exception):
    """An expected failure: a one-line message for the user and an exit code."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ProfileError(ToolkitError):
    """The host profile (YAML) is missing, malformed or holds a bad value."""

    exit_code = 2


class UsageError(ToolkitError):
    """A task was called with options that cannot work together or a bad value."""

    exit_code = 2


class ConnectError(ToolkitError):
    """The host cannot be reached or refuses our key."""

    exit_code = 3


class SudoError(ToolkitError):
    """sudo on the host needs a password nobody gave, or refused the one given."""

    exit_code = 4


class RemoteError(ToolkitError):
    """A command on the host failed."""

    exit_code = 5


class SwapFailed(RemoteError):
    """The swap job on the server ended without the new state serving. `why`: why the new state did not come
    up (None when the job stopped before the swap, e.g. Label Studio would not stop); `previous_serving`: the
    previous data is back in place and Label Studio answers on it."""

    def __init__(self, message: str, *, hint: str | None = None, why: str | None = None,
                 previous_serving: bool = False):
        super().__init__(message, hint=hint)
        self.why = why
        self.previous_serving = previous_serving


class SnapshotError(ToolkitError):
    """A snapshot is missing, incomplete, corrupt, or could not be made."""

    exit_code = 6


class LockedError(ToolkitError):
    """Another data task holds the lock on this host."""

    exit_code = 7


class NotServing(ToolkitError):
    """status: Label Studio is provisioned but does not serve (no answer, or answers without reading its
    database); cron and monitoring see it in the exit code."""

    exit_code = 8


class JobStillRunning(KeyboardInterrupt):
    """Ctrl-C while a job on the server goes on by itself: what that job uses must stay until it ends."""
