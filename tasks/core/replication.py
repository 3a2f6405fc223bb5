"""The offsite replication as the server has it: its unit and what Litestream says of the database and
the target, in one round trip (tasks.core.commands.offsite.report, read by tasks.core.offsite)."""

from __future__ import annotations

from tasks.core import parse
from tasks.core.commands import offsite as commands
from tasks.core.commands.service import UnitState
from tasks.core.connect import Host
from tasks.core.offsite import Replication, replication_from
from tasks.core.profile import Profile


def read_replication(host: Host, profile: Profile) -> tuple[UnitState, Replication]:
    output = host.run(commands.report(profile), sudo=True, check=False, what="reading the offsite replication")
    blocks = parse.blocks(output.stdout)
    unit = UnitState.from_show(parse.key_values(blocks.get("offsite_unit", [])))
    return unit, replication_from(parse.key_values(blocks.get("offsite_report", [])), str(profile.remote.database))
