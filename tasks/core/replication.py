"""The offsite copies as the server has them: the units and what Litestream and restic say of the
database, the files and the target, in one round trip (tasks.core.commands.probes.offsite_report, read
by tasks.core.offsite)."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core import parse
from tasks.core.commands import probes
from tasks.core.commands.service import UnitState
from tasks.core.connect import Host
from tasks.core.offsite import Replication, describe_files, files_job_problems, replication_from, replication_problem
from tasks.core.profile import Profile


@dataclass(frozen=True)
class ReplicationState:
    unit: UnitState            # the replication service
    timer: UnitState           # the restore drill's timer
    replication: Replication
    files_timer: UnitState = UnitState()   # restic's snapshots of .env and media
    files_unit: UnitState = UnitState()    # its last run ("failed" when it did)
    watch_timer: UnitState = UnitState()   # the watch that notifies without the laptop
    streams: bool = True                   # SQLite streams (Litestream); PostgreSQL's dumps ride in the files

    def problem(self) -> str | None:
        more = files_job_problems(self.files_timer.running, self.files_timer.describe(),
                                  self.files_unit.active == "failed")
        if not self.watch_timer.running:
            more.append(f"nothing watches the offsite copies on the server: its timer is {self.watch_timer.describe()}")
        return replication_problem(self.unit.running or not self.streams, self.unit.describe(), self.replication,
                                   self.timer.running, self.timer.describe(), more)

    def describe(self) -> str:
        """Where the database's copies stand, in words."""
        if self.streams:
            return self.replication.describe()
        return f"PostgreSQL, dumped into each snapshot below: {describe_files(self.replication.files)}"


def replication_state(sections: dict[str, dict[str, str]], profile: Profile) -> ReplicationState:
    """From the report's sections (also inside the status probe's output)."""
    unit = {key: UnitState.from_show(sections.get(key, {}))
            for key in ("offsite_unit", "drill_timer", "files_timer", "files_unit", "watch_timer")}
    return ReplicationState(unit["offsite_unit"], unit["drill_timer"],
                            replication_from(sections.get("offsite_report", {}), str(profile.remote.database)),
                            unit["files_timer"], unit["files_unit"], unit["watch_timer"],
                            streams=profile.offsite_streams_database)


def read_replication(host: Host, profile: Profile) -> ReplicationState:
    output = host.run(probes.offsite_report(profile), sudo=True, check=False, what="reading the offsite replication")
    return replication_state(parse.sections(output.stdout), profile)
