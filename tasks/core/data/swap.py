"""The swap job, followed from here: stop -> swap -> start -> health check -> rollback on any failure, run
ON the server (commands/swap.py) as one job that finishes by itself, so a Ctrl-C or a cut connection here
never leaves half a swap. push-local-db, restore-server, adopt, upgrade, rollback and migrate-db all
end in it; each gives the steps of its own (a release switch, a database switch) around the swap.
"""

from __future__ import annotations

from tasks.core import parse, ui
from tasks.core.commands import data as data_commands
from tasks.core.commands import instances as instance_commands
from tasks.core.commands import swap as swap_job
from tasks.core.connect import Host
from tasks.core.errors import JobStillRunning, RemoteError, SwapFailed
from tasks.core.profile import Profile


def unfinished_swap_error(alias: str, profile: Profile) -> RemoteError:
    """The previous data of an earlier swap is still set aside: it may be the only copy of the data
    that swap replaced, so nothing goes on until the user has looked."""
    previous = profile.remote.data_dir / data_commands.PREVIOUS
    return RemoteError(f"an earlier data swap on {alias} did not finish: the data it replaced is "
                       f"still in {previous}; nothing was changed",
                       hint="check what Label Studio serves now, keep or move that folder out of the "
                            "data dir, then run this again")


def refuse_unfinished_swap(host: Host, profile: Profile) -> None:
    out = host.run(data_commands.unfinished_swap(profile), sudo=True, what="looking for an unfinished swap")
    if out.stdout.strip() == "unfinished":
        raise unfinished_swap_error(host.alias, profile)


def refuse_foreign_port(host: Host, profile: Profile) -> None:
    """Another process on Label Studio's port would fail the start after the swap: refuse before."""
    out = host.run(instance_commands.port_holder(profile), sudo=True, what="checking who holds Label Studio's port")
    state, _, said = out.stdout.strip().partition(" ")
    if state == "other":
        raise RemoteError(f"{said}: Label Studio could not start there after the swap; nothing was changed",
                          hint="stop that process first (fab status names it)")


class _SwapReport:
    """Turns the swap job's events into the lines a user reads and, at the end, the outcome."""

    def __init__(self, host: Host, profile: Profile, parts: list[str], health_timeout: int, status,
                 swapped: str | None = None):
        self.host, self.profile, self.parts, self.timeout, self.status = host, profile, parts, health_timeout, status
        self.swapped = swapped or f"swapped in the new {', '.join(parts)} (atomic renames)"
        self.failure: str | None = None    # why the new data did not come up
        self.outcome: SwapFailed | None = None
        self.log_shown = False
        self.done = False

    def __call__(self, line: str) -> None:
        event, _, said = line.strip().partition(" ")
        said = said.strip()
        alias, where = self.host.alias, "through nginx"
        if event == swap_job.STOPPED:
            ui.step(True, "stopped Label Studio")
            self.status.update("swapping the data in")
        elif event == swap_job.SWAPPED:
            ui.step(True, self.swapped)
            self.status.update("starting Label Studio")
        elif event == swap_job.STARTED:
            self.status.update(f"waiting for Label Studio to answer /health {where} (first start runs migrations)")
        elif event == swap_job.LOG:
            if not self.log_shown:
                ui.err.print("[muted]last lines of the service log:[/muted]")
                self.log_shown = True
            ui.err.print(said, markup=False, highlight=False)
        elif event == swap_job.UNFINISHED:
            unfinished = unfinished_swap_error(alias, self.profile)
            self.outcome = SwapFailed(unfinished.message, hint=unfinished.hint)
        elif event == swap_job.STOP_FAILED:
            self.outcome = SwapFailed(f"stopping Label Studio failed on {alias}: {said or 'no message'}")
        elif event in (swap_job.SWAP_FAILED, swap_job.START_FAILED, swap_job.UNHEALTHY, swap_job.CHECK_FAILED):
            if event == swap_job.CHECK_FAILED:
                self.failure = f"the check after the start failed on {alias}: {said or 'no message'}"
            elif event == swap_job.SWAP_FAILED:
                self.failure = f"swapping the data in failed on {alias}: {said or 'no message'}"
            elif event == swap_job.START_FAILED:
                self.failure = f"starting Label Studio failed on {alias}: {said or 'no message'}"
            elif said.startswith("crashed"):
                self.failure = "Label Studio crashed on start (systemd had to restart it)"
            elif said.startswith('{"error"'):
                self.failure = (f"Label Studio answers /health but cannot read the new database: "
                                f"{parse.database_problem(said)}")
            else:
                self.failure = (f"Label Studio did not answer /health {where} within {self.timeout}s "
                                f"(last answer: {said or 'none'})")
            ui.error(f"{self.failure}; putting the previous data back")
            self.status.update("putting the previous data back")
        elif event == swap_job.ROLLBACK_FAILED:
            previous = self.profile.remote.data_dir / data_commands.PREVIOUS
            self.outcome = SwapFailed(f"rolling back failed on {alias}: {said or 'no message'}; Label Studio is "
                                      f"stopped and the previous data is in {previous}", why=self.failure)
        elif event == swap_job.ROLLED_BACK:
            self.status.update(f"waiting for Label Studio to answer /health {where} on the previous data")
        elif event == swap_job.BACK_HEALTHY:
            self.outcome = SwapFailed("the new data did not come up; the previous data is back in place and "
                                      "Label Studio is serving it", why=self.failure, previous_serving=True)
        elif event == swap_job.BACK_STOPPED:
            self.outcome = SwapFailed("the new data did not come up; it is rolled back and Label Studio is stopped",
                                      why=self.failure)
        elif event == swap_job.BACK_UNHEALTHY:
            self.outcome = SwapFailed("the new data did not come up; the previous data is back in place, but "
                                      f"Label Studio did not answer /health {where} (last answer: {said or 'none'})",
                                      why=self.failure)
        elif event == swap_job.DONE:
            self.done = True


def run_swap(host: Host, profile: Profile, parts: list[str], *, health_timeout: int, steps: dict | None = None,
             swapped: str | None = None, serving: str = "the new data") -> None:
    """Start the swap job on the server (with an upgrade's or rollback's own `steps`, see swap.job) and
    follow it to its end; SwapFailed (or RemoteError when it was lost track of) unless the new state
    serves."""
    host.run(swap_job.launch(profile, parts, health_timeout, **(steps or {})), sudo=True,
             what="starting the swap on the server")
    with ui.err.status("stopping Label Studio") as status:
        report = _SwapReport(host, profile, parts, health_timeout, status, swapped)
        channel = host.root_channel(swap_job.follow(profile))
        try:
            while not report.done:
                line = channel.read_line()
                if not line:
                    break
                report(line)
            if report.done:
                channel.finish("following the swap")
        except KeyboardInterrupt:
            ui.warn(f"the swap goes on by itself on {host.alias} (stop, swap, start, health check, rollback "
                    "if needed); the next data task waits for it")
            raise JobStillRunning() from None
        finally:
            channel.close()
    if not report.done:
        if channel.exit_status() == swap_job.GONE:
            previous = profile.remote.data_dir / data_commands.PREVIOUS
            raise RemoteError(f"the swap job on {host.alias} ended before it finished (killed, or the server "
                              f"restarted); the data it replaced may still be in {previous}",
                              hint="check what Label Studio serves (fab status) before the next push")
        raise RemoteError(f"lost track of the swap on {host.alias} before it ended",
                          hint="it goes on by itself there; `fab status` shows what Label Studio serves")
    if report.outcome is not None:
        raise report.outcome
    ui.step(True, f"Label Studio is up with {serving} at {profile.url}")

