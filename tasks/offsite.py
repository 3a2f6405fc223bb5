"""offsite: what the VM keeps off itself (the profile's `offsite:` section; tasks.core.offsite)."""

from __future__ import annotations

from fabric import task
from rich.table import Table

from tasks.core import ui
from tasks.core.commands import offsite as commands
from tasks.core.edge import CONFIG_HELP, open_host, task_edge
from tasks.core.errors import RemoteError, UsageError
from tasks.core.offsite import replication_problem
from tasks.core.replication import read_replication


@task(help={"config": CONFIG_HELP})
@task_edge
def offsite(c, config=None):
    """List the offsite restore points (oldest, newest, size on the target) and whether replication keeps up."""
    profile, host = open_host(c, config, sudo=True)
    target = profile.offsite.parsed
    if target is None:
        raise UsageError(f"no offsite target in {profile.config_file}",
                         hint="set offsite.target (a path on the VM or s3://bucket/prefix), then `fab provision`")
    unit, replication = read_replication(host, profile)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("target", target.describe())
    table.add_row("replication", f"Litestream, {unit.describe()}")
    table.add_row("database", replication.describe())
    points = replication.points
    table.add_row("restore points", points.describe() if points else "-")
    ui.out.print(table)
    problem = replication_problem(unit.running, unit.describe(), replication)
    if problem:
        raise RemoteError(f"offsite copies are not being kept: {problem}",
                          hint=f"`fab -H {host.alias} provision` sets the replication up again; "
                               f"`sudo journalctl -u {commands.unit_name(profile)}` on the server says why it stopped")
