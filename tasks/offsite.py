"""offsite: what the VM keeps off itself (the profile's `offsite:` section; tasks.core.offsite)."""

from __future__ import annotations

import json
import sys

from rich.table import Table

from tasks.core import offsite as core, ui
from tasks.core.commands import offsite as commands
from tasks.core.edge import CONFIG_HELP, host_alias, open_host, profile_for, task, task_edge
from tasks.core.errors import RemoteError, UsageError
from tasks.core.replication import read_replication


@task(help={"config": CONFIG_HELP,
            "drill": "run the restore drill now (the newest point restored on the server and checked), then show",
            "files": "take a snapshot of .env and media now (restic), then show",
            "iam-policy": "print the IAM policy for the VM's keys on an S3 target (nothing that erases history); "
                          "connects to nothing"})
@task_edge
def offsite(c, config=None, drill=False, files=False, iam_policy=False):
    """List the offsite restore points (oldest, newest, size on the target), replication and the last drill."""
    if iam_policy:
        _print_iam_policy(c, config)
        return
    profile, host = open_host(c, config, sudo=True)
    target = profile.offsite.parsed
    if target is None:
        raise UsageError(f"no offsite target in {profile.config_file}",
                         hint="set offsite.target (a path on the VM or s3://bucket/prefix), then `fab provision`")
    if files:
        with ui.err.status(f"snapshot of .env and media to {target.describe()} (restic)"):
            host.run(commands.files_now(profile), sudo=True, check=False, timeout=None, what="the files snapshot")
    if drill:
        with ui.err.status(f"restore drill: the newest point from {target.describe()}, restored and checked on the server"):
            host.run(commands.drill_now(profile), sudo=True, check=False, timeout=None, what="the restore drill")
    state = read_replication(host, profile)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("target", target.describe())
    if state.streams:
        table.add_row("replication", f"Litestream, {state.unit.describe()}")
        points = state.replication.points
        table.add_row("database", state.describe())
        table.add_row("restore points", points.describe() if points else "-")
        table.add_row(".env and media", core.describe_files(state.replication.files))
    else:
        table.add_row("replication", f"none: PostgreSQL is dumped (pg_dump -Fc) into each snapshot of .env and "
                                     f"media ({profile.offsite.files_schedule})")
        table.add_row("database", state.describe())
    table.add_row("files timer", f"{state.files_timer.describe()} ({profile.offsite.files_schedule})")
    table.add_row("restore drill", core.drill_text(state.replication.drill))
    table.add_row("history", core.history_text(profile.offsite, state.replication.drill))
    table.add_row("drill timer", state.timer.describe())
    table.add_row("watch", f"{core.watch_text(state.replication.watch, profile.offsite.notify)}; timer "
                           f"{state.watch_timer.describe()}")
    ui.out.print(table)
    problem = state.problem()
    if problem:
        raise RemoteError(problem, hint=f"`fab -H {host.alias} provision` sets the replication up again; "
                                        f"`sudo journalctl -u {commands.unit_name(profile)}` on the server says why it stopped")


def _print_iam_policy(c, config: str | None) -> None:
    alias = host_alias(c)
    if alias is None:
        raise UsageError("--iam-policy needs -H HOST: the policy names that host's bucket and prefix")
    profile = profile_for(c, config, alias)
    target = profile.offsite.parsed
    if target is None or target.kind != "s3":
        raise UsageError(f"{profile.config_file}: offsite.target is not an S3 bucket; an IAM policy is for one")
    sys.stdout.write(json.dumps(core.iam_policy(profile.offsite), indent=2) + "\n")
