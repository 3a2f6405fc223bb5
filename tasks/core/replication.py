"""The offsite replication as the server has it: its unit and what Litestream says of the database and
the target, in one round trip (tasks.core.commands.probes.offsite_report, read by tasks.core.offsite)."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core import parse
from tasks.core.commands import probes
from tasks.core.commands.service import UnitState
from tasks.core.connect import Host
from tasks.core.offsite import Replication, replication_from, replication_problem
from tasks.core.profile import Profile


@dataclass(frozen=True)
class ReplicationState:
    unit: UnitState            # the replication service
    timer: UnitState           # the restore drill's timer
    replication: Replication

    def problem(self) -> str | None:
        return replication_problem(self.unit.running, self.unit.describe(), self.replication,
                                   self.timer.running, self.timer.describe())


def replication_state(sections: dict[str, dict[str, str]], profile: Profile) -> ReplicationState:
    """From the report's sections (also inside the status probe's output)."""
    return ReplicationState(UnitState.from_show(sections.get("offsite_unit", {})),
                            UnitState.from_show(sections.get("drill_timer", {})),
                            replication_from(sections.get("offsite_report", {}), str(profile.remote.database)))


def read_replication(host: Host, profile: Profile) -> ReplicationState:
    output = host.run(probes.offsite_report(profile), sudo=True, check=False, what="reading the offsite replication")
    return replication_state(parse.sections(output.stdout), profile)
