"""Waiting for Label Studio to answer /health, with the service log when it does not."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core import parse, ui
from tasks.core.commands import dbcheck
from tasks.core.commands.service import service_manager
from tasks.core.commands.service import wait_for_health as wait_script
from tasks.core.connect import Host
from tasks.core.defaults import FIRST_START_TIMEOUT
from tasks.core.errors import RemoteError
from tasks.core.profile import Profile


def wait_for_health(host: Host, profile: Profile, *, via_nginx: bool, timeout: int = FIRST_START_TIMEOUT,
                    fail_on_crash: bool = False) -> None:
    """Poll /health until UP (a real answer from our instance), or raise RemoteError with the last
    lines of the service log. `fail_on_crash` gives up as soon as systemd had to restart the service."""
    where = "through nginx" if via_nginx else "on 127.0.0.1"
    script = wait_script(profile, via_nginx=via_nginx, timeout=timeout, fail_on_crash=fail_on_crash)
    with ui.err.status(f"waiting for Label Studio to answer /health {where} (first start runs migrations)"):
        result = host.run(script, sudo=True, check=False, timeout=timeout + 30)
    if result.ok and parse.health_is_up(result.stdout.strip()):
        return require_readable_database(host, profile)
    log = host.run(service_manager(profile).recent_log(), sudo=True, check=False).stdout
    ui.err.print("[muted]last lines of the service log:[/muted]")
    ui.err.print(log.rstrip(), markup=False, highlight=False)
    last = result.stdout.strip()
    if last.startswith("crashed"):
        raise RemoteError("Label Studio crashed on start (systemd had to restart it)")
    raise RemoteError(f"Label Studio did not answer /health {where} within {timeout}s "
                      f"(last answer: {last or 'none'})")


def database_check(host: Host, profile: Profile, database: PurePosixPath | None = None) -> dict:
    """The installed release's read of every table of the live database (or the SQLite file `database`,
    about to be swapped in), as parse.check_answer gives it (`/health` never touches the database)."""
    with ui.err.status("reading every table through Label Studio's models"):
        result = host.run(dbcheck.read_every_table(profile, database), sudo=True, check=False,
                          timeout=dbcheck.CHECK_TIMEOUT + 30)
    return parse.check_answer(result.stdout, result.stderr)


def require_readable_database(host: Host, profile: Profile) -> None:
    problem = parse.check_problem(database_check(host, profile))
    if problem is not None:
        raise RemoteError(f"Label Studio answers /health but cannot read its database: {problem}")
