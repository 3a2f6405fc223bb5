"""The task edge: where a @task meets the core. Expected failures become a one-line error and an exit
code; the few things every task wrapper needs (which host, which profile, asking the user) live here."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Callable

import fabric
from fabric import Connection
from invoke import Argument, Exit

from tasks.core import site as sites
from tasks.core import ui
from tasks.core.commands import read_file
from tasks.core.connect import SSH_COMMANDS, Host
from tasks.core.data.catalog import LOCAL_HOST
from tasks.core.database import PASSWORD_ENV, password_problem
from tasks.core.defaults import MIN_PASSWORD_LENGTH, SWAP_HEALTH_TIMEOUT
from tasks.core.errors import ToolkitError, UsageError
from tasks.core.profile import Profile, check_email, load_profile

YES_HELP = "do not ask for confirmation"
HEALTH_HELP = f"seconds to wait for /health after the swap before rolling back (default {SWAP_HEALTH_TIMEOUT})"
CONFIG_HELP = "profile YAML to use instead of configs/<host>.yaml (or set LSVM_CONFIG)"


class _NumberArgument(Argument):
    """An option whose value must be a whole number: a bad one is a one-line usage error while the command
    line is read (Invoke would raise ValueError with a traceback)."""

    def set_value(self, value, cast: bool = True) -> None:
        try:
            super().set_value(value, cast)
        except ValueError:
            raise Exit(f"error: --{self.names[0]} {value!r}: must be a whole number", code=UsageError.exit_code) from None


class Task(fabric.Task):
    def get_arguments(self, ignore_unknown_help=None) -> list[Argument]:
        arguments = super().get_arguments(ignore_unknown_help)
        for argument in arguments:
            if argument.kind is int:
                argument.__class__ = _NumberArgument
        return arguments


def whole_number(value: str, flag: str) -> int:
    """An option given as text (no default to take its type from) that must be a whole number."""
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--{flag} {value!r}: must be a whole number") from None


def write_out(path: str, text: str, flag: str = "out") -> Path:
    """`text` into the file a user named with --out: a folder, a missing folder or a refusal is one line."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"--{flag} {path}: is a folder; name a file (in it)")
    if not target.parent.is_dir():
        raise UsageError(f"--{flag} {path}: the folder {target.parent} does not exist")
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--{flag} {path}: cannot write it ({exc.strerror or exc})") from None
    return target


def task(*args, **kwargs):
    """Fabric's @task without Invoke's automatic short flags (a short flag is never a guess: `-h` after a
    task is only ever its help), and with whole-number options checked as the command line is read."""
    kwargs.setdefault("auto_shortflags", False)
    kwargs.setdefault("klass", Task)
    return fabric.task(*args, **kwargs)


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
        finally:
            if os.environ.get("LSVM_SSH_COUNT") == "1":
                for alias, count in SSH_COMMANDS.items():
                    ui.err.print(f"ssh commands to {alias}: {count}", markup=False, highlight=False)

    return wrapper


# ------------------------------------------------------------------------------------------------
# Which host, which profile


def host_alias(c) -> str | None:
    """The name the user gave with -H (an ssh_config alias or a host name), None without -H."""
    if not isinstance(c, Connection):
        return None
    return getattr(c, "original_host", None) or c.host


def local_only(c, what: str) -> None:
    if host_alias(c) is not None:
        raise UsageError(f"{what} run where you are: drop -H")


def profile_for(c, config: str | None, default_host: str) -> Profile:
    """The profile of -H's host (or `default_host` without -H), without connecting."""
    return load_profile(host_alias(c) or default_host, config)


def refuse_local_name(alias: str) -> None:
    """`local` names this machine's snapshots (backups/local/): a server by that name (in any case or
    spelling of that folder) would mix its snapshots with them, and pull would lock the folder twice."""
    folder = os.path.normpath(os.path.join("backups", alias))
    if folder.casefold() == os.path.join("backups", LOCAL_HOST).casefold():
        raise UsageError(f"-H {alias}: '{LOCAL_HOST}' is the reserved name of this machine's snapshots, not a server",
                         hint="give the server another Host alias in ~/.ssh/config; tasks on this machine's "
                              "data need no -H")


def open_host(c, config: str | None = None, *, sudo: bool = False,
              not_on_a_site: str | None = None) -> tuple[Profile, Host]:
    """Profile first (bad YAML never costs a connection), then a live SSH session; with `sudo`, root
    is checked at once so a task fails early, in words, when it cannot be had. `not_on_a_site`: the
    task's name, when it must not run on one app VM of a site (site.NOT_ON_AN_APP_VM)."""
    alias = host_alias(c)
    if alias is None:
        raise UsageError("this task runs against a server: name it with -H, for example `fab -H vm status`")
    profile, host = _open(c, alias, config, sudo)
    if not_on_a_site is not None:
        marker = host.run(read_file(profile.remote.site_marker), sudo=True, what="reading the site marker").stdout
        sites.refuse_member(alias, marker, not_on_a_site)
    return profile, host


def open_other_host(c, alias: str, config: str | None = None, *, sudo: bool = False) -> tuple[Profile, Host]:
    """A second server beside -H's (restore-server --from): its own SSH session, its host key verified
    like any other, its own profile: `config`, else configs/<alias>.yaml ($LSVM_CONFIG is -H's)."""
    return _open(Connection(alias, config=c.config), alias, config, sudo, env={})


def _open(connection: Connection, alias: str, config: str | None, sudo: bool,
          env: dict | None = None) -> tuple[Profile, Host]:
    refuse_local_name(alias)
    host = Host(connection)
    profile = load_profile(alias, config, env)
    host.connect()
    if sudo:
        host.check_sudo()
    return dataclasses.replace(profile, address=connection.host), host


# ------------------------------------------------------------------------------------------------
# Asking the user (only on a terminal; otherwise say what to pass instead)


def ask(prompt: str, *, secret: bool = False, otherwise: str) -> str:
    if not sys.stdin.isatty():
        raise UsageError(f"no terminal to ask: {otherwise}")
    return (ui.ask_secret(prompt) if secret else ui.err.input(prompt)).strip()


def confirm(question: str, yes: bool) -> None:
    """Go on only after a yes (or --yes); anything else cancels with nothing changed."""
    if yes:
        return
    answer = ask(f"{question} [y/N] ", otherwise=f"{question} — add --yes to go ahead")
    if not answer.lower().startswith("y"):
        raise UsageError("cancelled; nothing was changed")


def validate_admin_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"the admin password must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


def ask_new_password(email: str) -> str:
    """From LABEL_STUDIO_PASSWORD when set, else a hidden prompt asked twice; never from argv or YAML."""
    password = os.environ.get("LABEL_STUDIO_PASSWORD")
    if not password:
        otherwise = f"set LABEL_STUDIO_PASSWORD in the environment for the password of {email}"
        password = ask(f"Password for the Label Studio admin {email}: ", secret=True, otherwise=otherwise)
        if ask("The same password again: ", secret=True, otherwise=otherwise) != password:
            raise UsageError("the two passwords differ")
    return validate_admin_password(password)


def ask_database_password(profile: Profile) -> str:
    """An external PostgreSQL's password: $LSVM_DB_PASSWORD, else a hidden prompt; never argv or YAML."""
    db = profile.database
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        password = ask(f"Password of PostgreSQL role {db.user} at {db.address}:{db.port}: ", secret=True,
                       otherwise=f"set {PASSWORD_ENV} in the environment for the password of {db.user}@{db.address}")
    problem = password_problem(password)
    if problem:
        raise UsageError(problem)
    return password


def refuse_on_postgresql(profile: Profile, alias: str, task_name: str) -> None:
    """Tasks built for SQLite only say so, before anything is touched."""
    if profile.database.postgresql:
        raise UsageError(f"{task_name} is not supported with database.engine postgresql yet; nothing was changed",
                         hint=f"fab -H {alias} backup and restore-server work on PostgreSQL")


def admin_email(profile: Profile) -> str | None:
    """The admin to create: the profile's label_studio.admin_email, else LABEL_STUDIO_USERNAME."""
    email = profile.label_studio.admin_email or os.environ.get("LABEL_STUDIO_USERNAME") or None
    if email and check_email(email):
        raise UsageError(f"LABEL_STUDIO_USERNAME '{email}' is not an email address")
    return email
