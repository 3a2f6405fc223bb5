"""The task edge: where a @task meets the core. Expected failures become a one-line error and an exit code."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from fabric import Connection
from invoke import Exit

from . import ui
from .connect import Host
from .errors import ToolkitError, UsageError
from .profile import Profile, load_profile


def task_edge(body: Callable) -> Callable:
    """Wrap a task body: ToolkitError -> `error: ...` on stderr and its exit code; never a traceback."""

    @functools.wraps(body)
    def wrapper(c, *args, **kwargs):
        try:
            return body(c, *args, **kwargs)
        except ToolkitError as exc:
            ui.error(str(exc))
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            ui.error("interrupted")
            raise Exit(code=130) from None

    return wrapper


def open_host(c, config: str | None = None) -> tuple[Profile, Host]:
    """Profile first (bad YAML never costs a connection), then a live SSH session."""
    if not isinstance(c, Connection):
        raise UsageError("this task runs against a server: name it with -H, for example `fab -H vm status`")
    host = Host(c)
    profile = load_profile(host.alias, config)
    host.connect()
    return dataclasses.replace(profile, address=c.host), host
