"""The swap job: stop -> swap -> start -> health check -> rollback on any failure, run ON the server as
one detached job that finishes by itself (a transient systemd unit; setsid nohup in screen mode, whose
session must outlive the job), so a Ctrl-C or a cut connection here never leaves half a swap.

The job holds the swap lock for its whole life (the data lock answers BUSY meanwhile), refuses to start
while the previous data of an earlier swap is still set aside, deletes the previous data only once the
new data answers /health and the release reads every table of it, and appends its progress, one event
a line, to a root-only status file that `follow` prints. Pure builders; restore.py reads the events."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core.commands import data, dbcheck, q
from tasks.core.commands.service import service_manager, wait_for_health
from tasks.core.profile import Profile

# Events, first word of a status line (the rest is the last line a failed step printed).
BEGIN, UNFINISHED, STOPPED, STOP_FAILED = "begin", "unfinished", "stopped", "stop-failed"
SWAPPED, SWAP_FAILED, STARTED, START_FAILED = "swapped", "swap-failed", "started", "start-failed"
HEALTHY, UNHEALTHY, LOG = "healthy", "unhealthy", "log"
CHECK_FAILED = "check-failed"  # the new state answered /health but its own check (after_start) failed
ROLLED_BACK, ROLLBACK_FAILED, BACK_HEALTHY, BACK_UNHEALTHY = "rolled-back", "rollback-failed", "back-healthy", "back-unhealthy"
BACK_STOPPED = "back-stopped"  # rolled back, the service left stopped (nothing of ours served before)
DONE = "done"

GONE = 3                    # follow's exit status: the job ended without `done` (killed, reboot)
ROLLBACK_HEALTH_MIN = 300   # the previous data gets at least this long to answer /health
START_WAIT = 100            # tenths of a second for a launched job to take its lock


def status_file(profile: Profile) -> PurePosixPath:
    return data.run_dir(profile) / f"{profile.service.name}-swap.status"


def output_file(profile: Profile) -> PurePosixPath:
    """What the job's current step prints (a file, not a pipe: a daemon that keeps a copy of its
    stdout, like screen's, cannot make the job wait)."""
    return data.run_dir(profile) / f"{profile.service.name}-swap.out"


def job(profile: Profile, parts: list[str], health_timeout: int, *, before_swap: str = "",
        after_swap: str = "", undo_swap: str = "", on_success: str = "", after_start: str = "",
        restart_previous: bool = True, read_after_start: bool = True) -> str:
    """The whole swap, as root; every step inside the data dir as the service user. An upgrade or a
    rollback adds its own steps (root scripts): `before_swap` and `after_swap` run with the service
    stopped around the data swap (any failure rolls back), `undo_swap` before the data goes back,
    `after_start` once the new state answers /health (a failure rolls back), `on_success` after it,
    before the previous data is removed.
    `OLD_CURRENT` and `OLD_PREVIOUS` hold the release links as they were when the job began. Without
    `restart_previous` (adopt: no data of ours served before) a rollback leaves the service stopped.
    Without `read_after_start` the new state is healthy once it answers /health: only for a database the
    same release read whole, byte for byte what is swapped in, moments before, with no migration left
    for the start to apply (the check after the start would read the same bytes with the same code)."""
    manager = service_manager(profile)
    d = profile.remote.data_dir
    stop = manager.stop_and_wait()
    new_health = wait_for_health(profile, via_nginx=True, timeout=health_timeout, fail_on_crash=True)
    old_health = wait_for_health(profile, via_nginx=True, timeout=max(health_timeout, ROLLBACK_HEALTH_MIN))
    out = q(output_file(profile))
    previous = d / data.PREVIOUS
    return "\n".join([
        f"S={q(status_file(profile))}",
        "say() { printf '%s\\n' \"$*\" >> \"$S\"; }",
        # 8>&-: nothing a step starts (screen's session above all) may keep the swap lock held.
        f"run() {{ \"$@\" > {out} 2>&1 < /dev/null 8>&-; }}",
        f"said() {{ sed '/^[[:space:]]*$/d' {out} | tail -n 1 | tr -d '\\r'; }}",
        f"stop_service() (\n{stop}\n)",
        f"start_service() (\n{manager.start()}\n)",
        # Stopped, the database is one file again: a -wal a worker kept (killed mid-write) is folded in.
        f"settle_database() (\n{data.settle_database(profile)}\n)",
        f"swap_data() (\nset -e\n{before_swap or ':'}\n{data.swap(profile, parts)}\n{after_swap or ':'}\n)",
        f"undo_steps() (\nset -e\n{undo_swap or ':'}\n)",
        f"rollback_data() (\nset -e\n{data.rollback(profile, parts)}\n)",
        f"on_success() (\n{on_success or ':'}\n)",
        f"after_start() (\n{after_start or ':'}\n)",
        f"remove_incoming() (\n{data.remove_incoming(profile)}\n)",
        f"cleanup() (\n{data.remove_swap_leftovers(profile)}\n)",
        # /health never reads the database: the release must also read every table it knows.
        f"new_healthy() (\n( {new_health} )"
        + (f" && {dbcheck.read_every_table(profile)}" if read_after_start else "") + "\n)",
        f"old_healthy() (\n{old_health}\n)",
        f"recent_log() (\n{manager.recent_log()}\n)",
        f"say_recent_log() {{ recent_log 2>/dev/null | sed 's/^/{LOG} /' >> \"$S\"; }}",
        f"OLD_CURRENT=$(readlink {q(profile.remote.current)} || true)",
        f"OLD_PREVIOUS=$(readlink {q(profile.remote.previous)} || true)",
        f"exec 8>>{q(data.swap_lock_file(profile))}",
        "flock -n 8 || exit 1",
        f"say {BEGIN}",
        f"if [ -e {q(previous)} ] || [ -L {q(previous)} ]; then say {UNFINISHED}; say {DONE}; exit 1; fi",
        f"if ! run stop_service || ! run settle_database; then say {STOP_FAILED} \"$(said)\"; run remove_incoming; "
        f"say {DONE}; exit 1; fi",
        f"say {STOPPED}",
        # Called as a plain command, not as an `if` condition: there the shell ignores `set -e` inside
        # swap_data, and a failed before_swap step would not stop the swap.
        "run swap_data; swapped=$?",
        "if [ \"$swapped\" -eq 0 ]; then",
        f"  say {SWAPPED}",
        "  if run start_service; then",
        f"    say {STARTED}",
        "    if run new_healthy; then h=$(said)",
        f"      if run after_start; then run on_success; run cleanup; say {HEALTHY} \"$h\"; say {DONE}; exit 0; fi",
        f"      say {CHECK_FAILED} \"$(said)\"",
        "    else h=$(said)",
        "      say_recent_log",
        f"      say {UNHEALTHY} \"$h\"",
        "    fi",
        # The start itself failed (the database step, or gunicorn before it listened): its log says why.
        f"  else h=$(said); say_recent_log; say {START_FAILED} \"$h\"; fi",
        f"else say {SWAP_FAILED} \"$(said)\"; fi",
        "run stop_service",
        # Plain commands again (set -e inside holds): a failed undo step (an upgrade's release links) stops
        # the job with the service stopped, so the new release never starts on the original data.
        "run undo_steps; undone=$?",
        f"if [ \"$undone\" -ne 0 ]; then say {ROLLBACK_FAILED} \"undoing the steps around the swap failed: $(said)\"; "
        f"say {DONE}; exit 1; fi",
        "run rollback_data; rolled=$?",
        f"if [ \"$rolled\" -ne 0 ]; then say {ROLLBACK_FAILED} \"$(said)\"; say {DONE}; exit 1; fi",
        "run cleanup",
        f"say {ROLLED_BACK}",
        (f"if run start_service && run old_healthy; then say {BACK_HEALTHY}; else say {BACK_UNHEALTHY} \"$(said)\"; fi"
         if restart_previous else f"say {BACK_STOPPED}"),
        f"say {DONE}",
    ])


def launch(profile: Profile, parts: list[str], health_timeout: int, **steps) -> str:
    """Starts the job detached from this SSH session and returns once it holds its lock."""
    script = job(profile, parts, health_timeout, **steps)
    status = q(status_file(profile))
    start = service_manager(profile).run_detached(
        script, unit=f"lsvm-swap-{profile.service.name}",
        description=f"labelstudio-vm data swap of {profile.remote.data_dir}")
    return "\n".join([
        "umask 077",
        f"install -d -m 0700 -o root -g root {q(data.run_dir(profile))} || exit 1",
        f"flock -n -s {q(data.swap_lock_file(profile))} true || {{ echo 'another swap job is running' >&2; exit 1; }}",
        f": > {status} || exit 1",
        start,
        f"i=0; until [ -s {status} ]; do i=$((i + 1)); "
        f"[ $i -le {START_WAIT} ] || {{ echo 'the swap job did not start' >&2; exit 1; }}; sleep 0.1; done",
    ])


def follow(profile: Profile) -> str:
    """Prints the job's status lines as they come; exits 0 after `done`, GONE when the job ended
    without it."""
    status, lock = q(status_file(profile)), q(data.swap_lock_file(profile))
    return (
        "n=0; while :; do "
        f"if flock -n -s {lock} true; then gone=1; else gone=0; fi; "
        f"t=$(wc -l < {status}) || exit {GONE}; "
        f"if [ \"$t\" -gt \"$n\" ]; then sed -n \"$((n + 1)),${{t}}p\" {status}; n=$t; fi; "
        f"[ \"$n\" = 0 ] || [ \"$(sed -n \"${{n}}p\" {status})\" != {DONE} ] || exit 0; "
        f"[ $gone = 0 ] || exit {GONE}; "
        "sleep 0.5; done"
    )

