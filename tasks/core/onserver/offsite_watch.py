"""The offsite watch, run ON the server by the replication user (a systemd timer every 10 minutes, and at
once when the snapshot of .env and media or the restore drill fails): what `fab status` would call a
problem with the offsite copies, found without the laptop, and sent with apprise (PyPI `apprise`, in
the replication's venv, run by its python, its URLs from a root-only file read by systemd) when the
problems change: once
when one appears, once when all are gone. Its state is written whole (by a rename) as JSON for
`fab offsite`. Standard library only; installed by `fab provision` as <app_dir>/offsite-watch.py.

    offsite-watch.py STATE_FILE DRILL_RESULT VENV_PYTHON LITESTREAM CONFIG DATABASE -- UNIT... -- TIMER... -- JOB...
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

TIMEOUT = 300
APPRISE_CLI = "from apprise.cli import main; main()"


def last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def systemctl(verb: str, unit: str) -> str:
    run = subprocess.run(["systemctl", verb, unit], capture_output=True, text=True, timeout=60)
    return run.stdout.strip() or last_line(run.stderr) or "unknown"


def problems(drill_result: str, litestream: str, config: str, database: str, units: list[str], timers: list[str],
             jobs: list[str]) -> list[str]:
    found = []
    for unit in units:
        state = systemctl("is-active", unit)
        if state != "active":
            found.append(f"{unit} is {state}: offsite copies are not being kept")
    for timer in timers:
        state = systemctl("is-active", timer)
        if state != "active":
            found.append(f"{timer} is {state}")
    for job in jobs:
        if systemctl("is-failed", job) == "failed":
            found.append(f"the last run of {job} failed (journalctl -u {job})")
    if litestream != "-":           # "-": PostgreSQL, whose dumps the files job takes (its failure is above)
        listed = subprocess.run([litestream, "ltx", "-json", "-level", "all", "-config", config, database],
                                capture_output=True, text=True, timeout=TIMEOUT)
        if listed.returncode != 0:
            found.append(f"the offsite target cannot be read: {last_line(listed.stderr) or 'litestream ltx failed'}")
    if os.path.exists(drill_result):
        with open(drill_result) as handle:
            drill = json.load(handle)
        if not drill.get("ok"):
            found.append(f"the last restore drill failed: {drill.get('problem', 'no reason given')}")
    return found


def message(now: list[str], before: list[str]) -> tuple[str, str] | None:
    """(title, body) to send when the problems changed, else None."""
    if now == before:
        return None
    host = socket.gethostname()
    if now:
        return (f"Label Studio on {host}: offsite copies need attention",
                "\n".join(f"- {problem}" for problem in now))
    return (f"Label Studio on {host}: offsite copies are kept again",
            "Resolved:\n" + "\n".join(f"- {problem}" for problem in before))


def write_whole(path: str, data: dict) -> None:
    partial = path + ".partial"
    with open(partial, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    groups, current = [[]], 0
    for word in argv:
        if word == "--":
            groups.append([])
            current += 1
        else:
            groups[current].append(word)
    if len(groups) != 4 or len(groups[0]) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    (state_path, drill_result, python, litestream, config, database), units, timers, jobs = groups
    os.umask(0o077)
    try:
        with open(state_path) as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        state = {}
    before = state.get("notified", [])      # what the last notification that went out said
    try:
        now = problems(drill_result, litestream, config, database, units, timers, jobs)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        now = [f"the offsite watch could not look: {exc}"]
    state.update(problems=now, checked=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    send = message(now, before) if os.environ.get("APPRISE_URLS") else None
    status = 0
    if send is not None:
        title, body = send
        run = subprocess.run([python, "-I", "-c", APPRISE_CLI, "-t", title, "-b", body], capture_output=True,
                             text=True, timeout=TIMEOUT)
        state["sent"] = {"ok": run.returncode == 0, "at": state["checked"], "title": title,
                         **({} if run.returncode == 0 else {"problem": last_line(run.stderr) or "apprise failed"})}
        if run.returncode == 0:
            state["notified"] = now     # a failed send is tried again at the next look
        else:
            status = 1
    write_whole(state_path, state)
    print(json.dumps(state), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
