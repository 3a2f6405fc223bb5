"""Replacing the server's data (push-local-db, restore-server) without ever losing what was there.

Order: the caller has taken a full server snapshot -> upload into `<data_dir>/.lsvm-incoming/` (as the
service user) while the service still runs -> sha256 checked on the server -> a swap job started ON the
server (commands/swap.py): stop, rename the old parts into `<data_dir>/.lsvm-previous/` and the new
ones into place (same filesystem: atomic), start, health check, and on any failure after the stop the
previous parts back and the service started again. The job finishes by itself; this side follows its
progress, so a Ctrl-C or a cut connection here never leaves half a swap.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from tasks.core import parse, ui
from tasks.core.commands import data as data_commands
from tasks.core.commands import instances as instance_commands
from tasks.core.commands import swap as swap_job
from tasks.core.connect import Host
from tasks.core.data.catalog import DATABASE, MEDIA, SECRET_ENV, FileEntry, Snapshot
from tasks.core.data.snapshots import DELTA_MAX_SHARE, stored_page_index
from tasks.core.errors import JobStillRunning, RemoteError, SnapshotError
from tasks.core.onserver import sqlite
from tasks.core.profile import Profile
from tasks.core.provision.health import database_check
from tasks.core.transfer import check_free_space, send_tar, server_codec


def _parts_present(files: list[FileEntry]) -> list[str]:
    parts = [DATABASE]
    if any(f.path == SECRET_ENV for f in files):
        parts.append(SECRET_ENV)
    if any(f.path.startswith(MEDIA + "/") for f in files):
        parts.append(MEDIA)
    return parts


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


class DeltaRefused(SnapshotError):
    """The pages sent do not rebuild the pushed database on the server: the whole file must go."""


def upload(host: Host, profile: Profile, source: Path, files: list[FileEntry], *, delta: Path | None = None) -> None:
    """Stream the files into the incoming folder and prove on the server that every byte arrived. With
    `delta` (the database's changed pages, sqlite.make_delta), those pages go instead of the database,
    which the server rebuilds from a consistent copy of its own; SnapshotError(DeltaRefused) when the
    rebuilt file is not the pushed one (the server's database is not the base any more)."""
    sent = [(source / f.path, f.path) for f in files if not (delta and f.path == DATABASE)]
    database = next((f for f in files if f.path == DATABASE), None)
    if delta is not None:
        sent.insert(0, (delta, data_commands.DELTA))
    total = sum(local.stat().st_size for local, _ in sent)
    room = total + (2 * database.size if delta is not None and database else 0)
    check_free_space(host, profile.remote.data_dir, room + 1024 * 1024, "the incoming data")
    codec = server_codec(host)
    host.run(data_commands.make_incoming(profile), sudo=True, what="incoming folder")
    started = time.monotonic()
    channel = host.root_channel(data_commands.receive_upload(profile, codec.name))
    try:
        send_tar(channel, codec, sent, total=total, description=f"upload to {host.alias}")
        channel.finish("receiving the upload")
    finally:
        channel.close()
    ui.transfer_summary("uploaded", total, time.monotonic() - started, wire=channel.sent)
    if delta is not None:
        with ui.err.status("rebuilding the database on the server from its own and the changed pages"):
            out = host.run(data_commands.apply_delta_incoming(profile), sudo=True, what="rebuilding the database")
        built = json.loads(out.stdout.strip().splitlines()[-1])
        if built.get("sha256") != database.sha256:
            raise DeltaRefused(built.get("error") or "the server's database changed since it was backed up")
    check = [f for f in files if not (delta and f.path == DATABASE)]
    if not check:
        return
    with ui.err.status(f"checking the {len(check)} uploaded file(s) by sha256 on the server"):
        out = host.run(data_commands.hash_incoming(profile, [DATABASE] if delta else []), sudo=True,
                       what="checking the upload").stdout
    found = json.loads(out.strip().splitlines()[-1])
    for entry in check:
        got = found.get(entry.path)
        if not isinstance(got, dict) or got.get("sha256") != entry.sha256:
            raise SnapshotError(f"{parse.printable(entry.path)} arrived damaged on {host.alias} (sha256 differs); "
                                "nothing was replaced")


def page_delta(source: Path, base: Snapshot | None, work: Path) -> Path | None:
    """The pages of source's database that differ from `base`'s (the server's database, just backed
    up), in a file under `work`; None when the whole file should go (no base, another page size, or
    more than half the pages differ: another history)."""
    with ui.err.status(f"reading the pages of {base.id}"):
        index = stored_page_index(base)
    if index is None:
        return None
    delta = work / data_commands.DELTA
    delta.unlink(missing_ok=True)
    with ui.err.status(f"comparing the database page by page with the server's ({base.id})"):
        found = sqlite.make_delta(str(source / DATABASE), index, str(delta))
    if not found.get("usable") or found["changed"] > found["pages"] * DELTA_MAX_SHARE:
        why = found.get("why") or f"{found['changed']} of {found['pages']} pages differ"
        ui.out.print(f"  whole database sent: {why}")
        delta.unlink(missing_ok=True)
        return None
    ui.out.print(f"  database: {found['changed']} of {found['pages']} pages differ from the server's; "
                 "only those are sent")
    return delta


class _SwapReport:
    """Turns the swap job's events into the lines a user reads and, at the end, the outcome."""

    def __init__(self, host: Host, profile: Profile, parts: list[str], health_timeout: int, status,
                 swapped: str | None = None):
        self.host, self.profile, self.parts, self.timeout, self.status = host, profile, parts, health_timeout, status
        self.swapped = swapped or f"swapped in the new {', '.join(parts)} (atomic renames)"
        self.failure: str | None = None    # why the new data did not come up
        self.outcome: Exception | None = None
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
            self.outcome = unfinished_swap_error(alias, self.profile)
        elif event == swap_job.STOP_FAILED:
            self.outcome = RemoteError(f"stopping Label Studio failed on {alias}: {said or 'no message'}")
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
            self.outcome = RemoteError(f"rolling back failed on {alias}: {said or 'no message'}; Label Studio is "
                                       f"stopped and the previous data is in {previous}")
        elif event == swap_job.ROLLED_BACK:
            self.status.update(f"waiting for Label Studio to answer /health {where} on the previous data")
        elif event == swap_job.BACK_HEALTHY:
            self.outcome = RemoteError("the new data did not come up; the previous data is back in place and "
                                       "Label Studio is serving it")
            self.outcome.serving_previous = True
        elif event == swap_job.BACK_STOPPED:
            self.outcome = RemoteError("the new data did not come up; it is rolled back and Label Studio is stopped")
        elif event == swap_job.BACK_UNHEALTHY:
            self.outcome = RemoteError("the new data did not come up; the previous data is back in place, but "
                                       f"Label Studio did not answer /health {where} (last answer: {said or 'none'})")
        elif event == swap_job.DONE:
            self.done = True


def run_swap(host: Host, profile: Profile, parts: list[str], *, health_timeout: int, steps: dict | None = None,
             swapped: str | None = None, serving: str = "the new data") -> None:
    """Start the swap job on the server (with an upgrade's or rollback's own `steps`, see swap.job) and
    follow it to its end; RemoteError unless the new state serves."""
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
        report.outcome.failure = report.failure  # why the new state did not come up, for the caller's words
        raise report.outcome
    ui.step(True, f"Label Studio is up with {serving} at {profile.url}")


def require_usable_incoming(host: Host, profile: Profile) -> None:
    """Before anything stops: the server's own release reads every table of the uploaded database, with
    every column its models name (a database it cannot use is refused here, not after the swap)."""
    answer = database_check(host, profile, data_commands.incoming_dir(profile) / DATABASE)
    if "error" in answer:
        raise SnapshotError(f"the Label Studio on {host.alias} cannot use this database: {answer['error']}; "
                            "nothing was stopped or replaced",
                            hint="push a database that this release (or an older one) of Label Studio wrote")
    if "pending" in answer:
        ui.step(True, f"the database lacks {answer['pending']} of the release's migrations: Label Studio applies "
                      "them when it starts, and the check after the start reads every table")
    else:
        ui.step(True, f"the server's Label Studio reads all {answer['tables']} tables of the uploaded database")


def replace_server_data(host: Host, profile: Profile, source: Path, files: list[FileEntry], *,
                        health_timeout: int, restart_previous: bool = True, base: Snapshot | None = None) -> None:
    """Upload, then the swap job on the server: stop -> swap -> start -> health, rolled back on failure.
    `base`, a snapshot of the server's database taken just before, lets only the changed pages go."""
    parts = _parts_present(files)
    refuse_unfinished_swap(host, profile)
    refuse_foreign_port(host, profile)
    try:
        with tempfile.TemporaryDirectory(prefix="lsvm-delta-") as work:
            delta = page_delta(source, base, Path(work)) if base is not None and any(
                f.path == DATABASE for f in files) else None
            try:
                upload(host, profile, source, files, delta=delta)
            except DeltaRefused as refused:
                ui.warn(f"the changed pages did not rebuild the database on {host.alias} ({refused.message}): "
                        "sending the whole database")
                upload(host, profile, source, files)
        ui.step(True, f"uploaded and verified {', '.join(parts)} on the server")
        if DATABASE in parts and not profile.database.postgresql:
            require_usable_incoming(host, profile)
    except BaseException:
        host.run(data_commands.remove_incoming(profile), sudo=True, check=False)
        raise
    run_swap(host, profile, parts, health_timeout=health_timeout,
             steps=None if restart_previous else {"restart_previous": False})
