"""Replacing the server's data: upload and its checks here, then one swap job on the server that stops,
swaps, starts, checks health and rolls back by itself, followed from here. Through a recording host
(the order, the outcomes in words, nothing run from here once the job runs), and for real on folders
here: the swap and rollback scripts, the job itself with stub service commands, its follower, and the
screen-mode wait for Label Studio to exit."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pwd
import subprocess
import sys
import tarfile
import threading
from pathlib import PurePosixPath

import pytest

from tasks.core import parse
from tasks.core.commands import data, dbcheck, swap
from tasks.core.commands.service import Screen
from tasks.core.data import replace as data_replace
from tasks.core.data import swap as data_swap
from tasks.core.data.catalog import FileEntry
from tasks.core.defaults import DATABASE, MEDIA, SECRET_ENV
from tasks.core.errors import RemoteError, SnapshotError, SwapFailed
from tasks.core.onserver import sqlite
from tests.unit.fakehost import FakeHost, Stream, fail, ok
from tests.unit.samples import PROFILE, profile_on_this_machine

HASH = r"python3 -I -c .* tree-sha256 "
FOLLOW = r"wc -l <"


def source_with(tmp_path, files: dict[str, bytes]) -> tuple:
    """A folder holding `files` and their FileEntry list, as a snapshot would."""
    entries = []
    for name, content in files.items():
        path = tmp_path / "source" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        entries.append(FileEntry(name, len(content), hashlib.sha256(content).hexdigest()))
    return tmp_path / "source", entries


def hashes_of(entries, *, damaged: str | None = None):
    """The sha256 command's answer for `entries` as the server would print it (one damaged, maybe)."""
    found = {e.path: {"size": e.size, "sha256": "0" * 64 if e.path == damaged else e.sha256} for e in entries}
    return ok(json.dumps(found) + "\n")


def events(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


HAPPY = events("begin", "stopped", "swapped", "started", 'healthy 200 {"status": "UP"}', "done")


def server(entries, *, job: bytes = HAPPY, job_status: int = 0, damaged: str | None = None) -> FakeHost:
    host = FakeHost(alias="vm")
    host.answer(r"^df -B1", ok("999999999999\n"))
    host.answer(r"command -v zstd", ok("gzip\n"))
    host.answer(HASH, hashes_of(entries, damaged=damaged))
    host.answer(ORM_CHECK, ok('{"tables": 71}\n'))
    host.stream(FOLLOW, job, status=job_status)
    return host


ORM_CHECK = r" orm-incoming$"


def replace(host, source, entries):
    data_replace.replace_server_data(host, PROFILE, source, entries, health_timeout=30)


def test_the_happy_path_verifies_the_upload_then_hands_stop_swap_start_and_health_to_one_server_job(tmp_path, capsys):
    source, entries = source_with(tmp_path, {DATABASE: b"new database", SECRET_ENV: b"SECRET_KEY=x\n"})
    host = server(entries)
    replace(host, source, entries)
    parts = [DATABASE, SECRET_ENV]
    assert host.commands[0] == data.unfinished_swap(PROFILE)
    upload = host.commands.index(data.receive_upload(PROFILE, "gzip"))
    assert host.commands.index(data.make_incoming(PROFILE)) < upload
    incoming = data.incoming_dir(PROFILE) / DATABASE
    # The release read every table of these bytes with nothing left to migrate: the job checks /health.
    assert host.commands[-4:] == [data.hash_incoming(PROFILE), dbcheck.read_every_table(PROFILE, incoming),
                                  swap.launch(PROFILE, parts, 30, read_after_start=False), swap.follow(PROFILE)]
    assert not host.ran(r"^systemctl")  # this side never stops, swaps or starts anything itself
    out = capsys.readouterr().out
    for line in ("stopped Label Studio", "swapped in the new label_studio.sqlite3, .env (atomic renames)",
                 f"Label Studio is up with the new data at {PROFILE.url}"):
        assert line in out
    assert host.channels[-1].write_shut and host.channels[-1].closed


def test_the_upload_is_a_tar_of_exactly_the_files_and_the_channel_is_closed(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database", "media/upload/1/a b.png": b"png"})
    host = server(entries)
    replace(host, source, entries)
    channel = host.channels[0]
    assert channel.write_shut and channel.closed
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bytes(channel.written)))) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar} == {
            DATABASE: b"new database", "media/upload/1/a b.png": b"png"}
        assert {(m.uid, m.uname) for m in tar} == {(0, "root")}


def test_a_failed_health_check_is_rolled_back_by_the_job_and_said_in_words(tmp_path, capsys):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    job = events("begin", "stopped", "swapped", "started", "log Traceback (most recent call last):",
                 "log django.db.utils.OperationalError: no such table", "unhealthy 502 ", "rolled-back",
                 "back-healthy", "done")
    host = server(entries, job=job)
    with pytest.raises(RemoteError, match="the new data did not come up; the previous data is back in place "
                                          "and Label Studio is serving it"):
        replace(host, source, entries)
    err = capsys.readouterr().err
    assert "last lines of the service log:\nTraceback (most recent call last):\ndjango.db.utils" in err
    assert ("Label Studio did not answer /health through nginx within 30s (last answer: 502); putting the "
            "previous data back") in err.replace("\n", " ").replace("  ", " ")


@pytest.mark.parametrize("failed, said", [
    ("swap-failed mv: cannot move", "swapping the data in failed on vm: mv: cannot move"),
    ("start-failed Job failed", "starting Label Studio failed on vm: Job failed"),
    ("unhealthy crashed (systemd restarted it)", "Label Studio crashed on start"),
])
def test_every_failure_after_the_stop_is_rolled_back(tmp_path, capsys, failed, said):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries, job=events("begin", "stopped", failed, "rolled-back", "back-healthy", "done"))
    with pytest.raises(SwapFailed, match="previous data is back") as caught:
        replace(host, source, entries)
    assert said in capsys.readouterr().err.replace("\n", " ")
    assert caught.value.previous_serving and said in caught.value.why


def test_a_rollback_that_does_not_come_up_either_is_said(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries, job=events("begin", "stopped", "swapped", "started", "unhealthy 502 ", "rolled-back",
                                      "back-unhealthy 0 URLError", "done"))
    with pytest.raises(RemoteError, match=r"previous data is back in place, but Label Studio did not answer "
                                          r"/health through nginx \(last answer: 0 URLError\)"):
        replace(host, source, entries)


def test_a_failed_rollback_names_where_the_previous_data_is(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries, job=events("begin", "stopped", "swap-failed x", "rollback-failed mv: denied", "done"))
    with pytest.raises(SwapFailed, match=r"rolling back failed on vm: mv: denied; .* /var/lib/label-studio/\.lsvm-previous") as caught:
        replace(host, source, entries)
    assert not caught.value.previous_serving and caught.value.why == "swapping the data in failed on vm: x"


def test_a_failed_stop_is_said_and_nothing_is_swapped(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries, job=events("begin", "stop-failed Failed to stop label-studio.service", "done"))
    with pytest.raises(SwapFailed, match="stopping Label Studio failed on vm: Failed to stop") as caught:
        replace(host, source, entries)
    assert caught.value.why is None and not caught.value.previous_serving


def test_a_damaged_upload_removes_the_incoming_folder_and_never_starts_the_job(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries, damaged=DATABASE)
    with pytest.raises(SnapshotError, match="arrived damaged.*nothing was replaced"):
        replace(host, source, entries)
    assert host.commands[-1] == data.remove_incoming(PROFILE)
    assert not host.ran(r"systemd-run --|setsid nohup")


def test_a_damaged_media_file_is_caught_by_its_sha256_on_the_server(tmp_path):
    upload = "media/upload/1/cat.png"
    source, entries = source_with(tmp_path, {DATABASE: b"new database", upload: b"png bytes"})
    host = server(entries, damaged=upload)
    with pytest.raises(SnapshotError, match="media/upload/1/cat.png arrived damaged on vm"):
        replace(host, source, entries)
    assert host.commands[-1] == data.remove_incoming(PROFILE)


def test_the_server_hashes_every_file_of_the_incoming_tree_and_never_follows_a_link(tmp_path):
    tree = tmp_path / "incoming"
    (tree / "media" / "upload").mkdir(parents=True)
    (tree / DATABASE).write_bytes(b"db")
    odd = os.fsdecode(b"media/upload/a\nb\xff.png")
    (tree / odd).write_bytes(b"png")   # a newline and a byte that is not UTF-8
    (tmp_path / "secret").write_bytes(b"not mine")
    os.symlink(tmp_path / "secret", tree / "media" / "upload" / "link.png")
    found = sqlite.tree_sha256(str(tree))
    assert sorted(found) == sorted([DATABASE, odd])
    assert found[DATABASE] == {"size": 2, "sha256": hashlib.sha256(b"db").hexdigest()}
    # A database rebuilt from pages was hashed as it was built: not read a second time.
    assert sorted(sqlite.tree_sha256(str(tree), (DATABASE,))) == [odd]


def test_a_failed_upload_stream_removes_the_incoming_folder(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries)
    host.streams.insert(0, (r"tar -xf -", Stream(b"", b"tar: No space left on device\n", 2)))
    with pytest.raises(RemoteError, match="receiving the upload failed on vm: tar: No space left on device"):
        replace(host, source, entries)
    assert host.commands[-1] == data.remove_incoming(PROFILE)
    assert not host.ran(r"systemd-run --|setsid nohup")


def test_too_little_space_refuses_before_anything_is_sent(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"x" * 1000})
    host = server(entries)
    host.answers.insert(0, (r"^df -B1", ok("1000\n")))
    with pytest.raises(SnapshotError, match="not enough space on vm"):
        replace(host, source, entries)
    assert host.channels == []


def test_an_unfinished_earlier_swap_is_refused_before_anything_is_sent(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries)
    host.answer(r"lsvm-previous.*echo unfinished", ok("unfinished\n"))
    with pytest.raises(RemoteError, match=r"an earlier data swap on vm did not finish: .*\.lsvm-previous; "
                                          r"nothing was changed"):
        replace(host, source, entries)
    assert host.commands == [data.unfinished_swap(PROFILE)] and host.channels == []


def test_a_job_that_ended_without_finishing_is_said(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries, job=events("begin", "stopped"), job_status=swap.GONE)
    with pytest.raises(RemoteError, match="the swap job on vm ended before it finished"):
        replace(host, source, entries)


def test_ctrl_c_while_following_leaves_the_job_to_finish_on_the_server(tmp_path, monkeypatch, capsys):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries, job=events("begin", "stopped"))
    seen = []

    def interrupted(self, line):
        seen.append(line)
        if line.startswith("stopped"):
            raise KeyboardInterrupt

    monkeypatch.setattr(data_swap._SwapReport, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        replace(host, source, entries)
    assert host.commands[-1] == swap.follow(PROFILE)  # nothing after: no stop, no rollback from here
    assert host.channels[-1].closed
    assert "the swap goes on by itself on vm" in capsys.readouterr().err


@pytest.mark.parametrize("files, parts", [
    ([DATABASE], [DATABASE]),
    ([DATABASE, "media/a.png"], [DATABASE, MEDIA]),
    ([DATABASE, SECRET_ENV, "media/a.png"], [DATABASE, SECRET_ENV, MEDIA]),
])
def test_the_parts_swapped_are_those_the_files_hold(files, parts):
    assert data_replace._parts_present([FileEntry(f, 1, "x") for f in files]) == parts


# ------------------------------------------------------------------------------------------------
# The swap and rollback scripts, run for real on a folder here (as the owner we are).


def local_profile(data_dir, manager: str = "systemd"):
    user = pwd.getpwuid(os.getuid()).pw_name
    return profile_on_this_machine(f"service:\n  manager: {manager}\n", user=user, data_dir=data_dir)


def tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(script: str, **env) -> subprocess.CompletedProcess:
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={**os.environ, **env},
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def live(tmp_path):
    """A data dir with a database, a stale journal and media, and new parts waiting in incoming."""
    folder = tmp_path / "-d.ata"
    (folder / "media" / "upload").mkdir(parents=True)
    (folder / DATABASE).write_bytes(b"old db")
    (folder / (DATABASE + "-journal")).write_bytes(b"old journal")
    (folder / "media" / "upload" / "old.png").write_bytes(b"old png")
    incoming = folder / data.INCOMING
    (incoming / "media" / "upload").mkdir(parents=True)
    (incoming / DATABASE).write_bytes(b"new db")
    (incoming / SECRET_ENV).write_bytes(b"SECRET_KEY=new\n")
    (incoming / "media" / "upload" / "new.png").write_bytes(b"new png")
    return folder


ALL = [DATABASE, SECRET_ENV, MEDIA]


def test_swap_puts_every_new_part_in_place_private_and_sets_the_old_aside(live):
    run(data.swap_script(PurePosixPath(live), ALL))
    live_files = {k: v for k, v in tree(live).items() if not k.startswith(data.PREVIOUS)}
    assert live_files == {DATABASE: b"new db", SECRET_ENV: b"SECRET_KEY=new\n", "media/upload/new.png": b"new png"}
    assert oct((live / DATABASE).stat().st_mode & 0o777) == "0o600"
    assert oct((live / SECRET_ENV).stat().st_mode & 0o777) == "0o600"
    assert (live / data.PREVIOUS / ("absent" + SECRET_ENV)).exists()


def test_rollback_after_swap_gives_back_exactly_the_old_data(live):
    before = {k: v for k, v in tree(live).items() if not k.startswith(data.INCOMING)}
    run(data.swap_script(PurePosixPath(live), ALL))
    run(data.rollback_script(PurePosixPath(live), ALL))
    run(data.remove_leftovers_script(PurePosixPath(live)))
    assert tree(live) == before  # the .env that did not exist is gone again, the journal is back


def test_swap_never_replaces_the_previous_data_of_an_earlier_swap(live):
    (live / data.PREVIOUS).mkdir()
    (live / data.PREVIOUS / DATABASE).write_bytes(b"the only copy of older data")
    before = tree(live)
    result = subprocess.run(["sh", "-c", data.swap_script(PurePosixPath(live), ALL)], capture_output=True)
    assert result.returncode != 0
    assert tree(live) == before


def test_a_half_done_swap_rolls_back_too(live):
    (live / data.INCOMING / SECRET_ENV).unlink()  # the swap stops at the .env: database done, media not
    assert subprocess.run(["sh", "-c", data.swap_script(PurePosixPath(live), ALL)]).returncode != 0
    run(data.rollback_script(PurePosixPath(live), ALL))
    assert (live / DATABASE).read_bytes() == b"old db" and not (live / SECRET_ENV).exists()
    assert (live / "media/upload/old.png").read_bytes() == b"old png"


# ------------------------------------------------------------------------------------------------
# The job itself, run here with stub service commands: systemctl and journalctl record, runuser drops
# the user switch, python3 answers the health probe from the database in place ("new db" is unhealthy
# when told so), timeout stands for the release's read of every table ("new db" unreadable when told so).

STUBS = {
    "runuser": '#!/bin/sh\nshift 3\nexec "$@"\n',
    "systemctl": ('#!/bin/sh\necho "systemctl $*" >> "$STUB_LOG"\n'
                  '[ ! -e /proc/$$/fd/8 ] || echo "inherited the swap lock" >> "$STUB_LOG"\n'
                  'case "$1" in show) echo 0;; stop) [ -z "$STUB_STOP_FAILS" ] || { echo "Failed to stop"; exit 1; };; esac\n'),
    "journalctl": '#!/bin/sh\necho "Traceback: no such table"\n',
    # The workers' own read of every table is not there (exit 3): the release's process (`timeout`) reads.
    "python3": ('#!/bin/sh\ncase "$*" in *read-every-table*) exit 3;; esac\nif [ "$(cat "$STUB_DATA/label_studio.sqlite3")" = "new db" ] && [ -n "$STUB_NEW_FAILS" ]; '
                'then echo "502 "; else echo \'200 {"status": "UP"}\'; fi\n'),
    "timeout": ('#!/bin/sh\nif [ "$(cat "$STUB_DATA/label_studio.sqlite3")" = "new db" ] && [ -n "$STUB_NEW_UNREADABLE" ]; '
                'then echo \'{"error": "task_completion: no such column: task_completion.draft_id"}\'; exit 1; '
                'else echo \'{"tables": 71}\'; fi\n'),
}


@pytest.fixture
def job_here(tmp_path, monkeypatch, live):
    """Runs swap.job for `live` here; returns (events, stub log) of a run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setattr(data, "run_dir", lambda profile: PurePosixPath(run_dir))
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    profile = local_profile(live)

    def go(parts=ALL, **env):
        log = tmp_path / "stub.log"
        log.write_text("")
        result = subprocess.run(["sh", "-c", swap.job(profile, parts, health_timeout=1)], capture_output=True,
                                text=True, timeout=120,
                                env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_LOG": str(log),
                                     "STUB_DATA": str(live), **env})
        status = (run_dir / f"{profile.service.name}-swap.status").read_text().splitlines()
        return result.returncode, status, log.read_text().splitlines()

    return go


def test_the_job_stops_swaps_starts_checks_health_and_only_then_removes_the_previous_data(job_here, live):
    code, status, calls = job_here()
    assert code == 0
    assert status == ["begin", "stopped", "swapped", "started", 'healthy {"tables": 71}', "done"]
    assert calls[0] == "systemctl stop label-studio.service" and "systemctl start label-studio.service" in calls
    assert "inherited the swap lock" not in calls  # a service started by the job never holds it
    assert tree(live) == {DATABASE: b"new db", SECRET_ENV: b"SECRET_KEY=new\n", "media/upload/new.png": b"new png"}


def test_the_job_rolls_back_by_itself_when_the_new_data_is_unhealthy(job_here, live):
    before = {k: v for k, v in tree(live).items() if not k.startswith(data.INCOMING)}
    code, status, calls = job_here(STUB_NEW_FAILS="1")
    assert code == 0
    assert status == ["begin", "stopped", "swapped", "started", "log Traceback: no such table", "unhealthy 502 ",
                      "rolled-back", "back-healthy", "done"]
    assert calls.count("systemctl stop label-studio.service") == 2
    assert tree(live) == before and not (live / data.PREVIOUS).exists()


def test_the_job_rolls_back_when_health_is_up_but_the_release_cannot_read_the_new_database(job_here, live):
    before = {k: v for k, v in tree(live).items() if not k.startswith(data.INCOMING)}
    code, status, calls = job_here(STUB_NEW_UNREADABLE="1")
    assert code == 0
    assert status[:4] == ["begin", "stopped", "swapped", "started"]
    assert status[-4:] == ['unhealthy {"error": "task_completion: no such column: task_completion.draft_id"}',
                           "rolled-back", "back-healthy", "done"]
    assert tree(live) == before and not (live / data.PREVIOUS).exists()


def test_the_job_refuses_to_start_over_an_unfinished_swap_and_stops_nothing(job_here, live):
    (live / data.PREVIOUS).mkdir()
    (live / data.PREVIOUS / DATABASE).write_bytes(b"older data")
    code, status, calls = job_here()
    assert code == 1 and status == ["begin", "unfinished", "done"] and calls == []
    assert (live / data.PREVIOUS / DATABASE).read_bytes() == b"older data"


def test_a_failed_stop_leaves_the_data_as_it_was_and_removes_the_upload(job_here, live):
    before = {k: v for k, v in tree(live).items() if not k.startswith(data.INCOMING)}
    code, status, _ = job_here(STUB_STOP_FAILS="1")
    assert code == 1 and status == ["begin", "stop-failed Failed to stop", "done"]
    assert tree(live) == before


# ------------------------------------------------------------------------------------------------
# The follower and the screen-mode exit wait, run here.


def test_follow_prints_every_event_as_it_comes_and_ends_with_the_job(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "run_dir", lambda profile: PurePosixPath(tmp_path))
    status, lock = swap.status_file(PROFILE), data.swap_lock_file(PROFILE)
    open(status, "w").write("begin\n")
    job = subprocess.Popen(["flock", str(lock), "cat"], stdin=subprocess.PIPE)
    while subprocess.run(["flock", "-n", "-s", str(lock), "true"]).returncode == 0:
        pass  # until the stand-in job holds its lock
    follower = subprocess.Popen(["sh", "-c", swap.follow(PROFILE)], stdout=subprocess.PIPE, text=True)
    assert follower.stdout.readline() == "begin\n"
    with open(status, "a") as handle:
        handle.write("stopped\nswapped\n")
    assert follower.stdout.readline() == "stopped\n"
    with open(status, "a") as handle:
        handle.write("done\n")
    assert follower.stdout.read() == "swapped\ndone\n" and follower.wait(timeout=10) == 0
    job.communicate(timeout=10)


def test_follow_says_gone_when_the_job_ended_without_done(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "run_dir", lambda profile: PurePosixPath(tmp_path))
    open(swap.status_file(PROFILE), "w").write("begin\nstopped\n")
    result = subprocess.run(["sh", "-c", swap.follow(PROFILE)], capture_output=True, text=True, timeout=10)
    assert result.stdout == "begin\nstopped\n" and result.returncode == swap.GONE


def test_screen_mode_waits_until_label_studio_has_exited(tmp_path):
    profile = local_profile(tmp_path / "-data", manager="screen")
    p = profile.remote
    # A stand-in for `python3 .../bin/label-studio start --data-dir DATA` that ignores the SIGHUP of a screen quit.
    stand_in = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGHUP, "
                                 "signal.SIG_IGN); time.sleep(120)", str(p.label_studio_bin), "start",
                                 "--data-dir", str(p.data_dir)])
    ended = threading.Event()
    threading.Thread(target=lambda: (stand_in.wait(), ended.set()), daemon=True).start()
    screen = Screen(profile)
    run(screen.wait_until_exited(timeout=1))
    assert ended.wait(5) and stand_in.returncode == -9  # still there after the timeout: killed, then gone
    run(screen.wait_until_exited(timeout=1))      # nothing running: returns at once
    systemd = local_profile(tmp_path / "-data")
    assert screen.wait_until_exited() not in swap.job(systemd, [DATABASE], 30)  # systemctl stop waits itself
    assert screen.wait_until_exited() in swap.job(profile, [DATABASE], 30)


# ------------------------------------------------------------------------------------------------
# Before anything stops: the server's release reads every table of the uploaded database.


def test_a_database_the_release_cannot_read_is_refused_before_anything_stops(tmp_path, capsys):
    source, entries = source_with(tmp_path, {DATABASE: b"a database without task_completion.lead_time"})
    host = server(entries)
    host.answers.insert(0, (ORM_CHECK, fail("", stdout='{"error": "task_completion: OperationalError: no such '
                                                         'column: task_completion.lead_time"}\n')))
    with pytest.raises(SnapshotError, match="cannot use this database: task_completion: OperationalError: no such "
                                            "column: task_completion.lead_time; nothing was stopped or replaced"):
        replace(host, source, entries)
    assert not host.ran(r"lsvm-swap|systemctl|wc -l <")          # no job, no stop, no follow
    assert host.commands[-1] == data.remove_incoming(PROFILE)     # the upload is gone again


def test_an_older_database_goes_on_to_be_migrated_at_start_and_checked_then(tmp_path, capsys):
    source, entries = source_with(tmp_path, {DATABASE: b"an older database"})
    host = server(entries)
    host.answers.insert(0, (ORM_CHECK, ok('{"pending": 3}\n')))
    replace(host, source, entries)
    assert "lacks 3 of the release's migrations" in capsys.readouterr().out
    # Migrated at the start: the job reads every table again after it.
    assert host.commands[-2:] == [swap.launch(PROFILE, [DATABASE], 30), swap.follow(PROFILE)]
    assert host.commands[-2] != swap.launch(PROFILE, [DATABASE], 30, read_after_start=False)


@pytest.mark.parametrize("stdout, stderr, answer", [
    ('{"tables": 75}\n', "", {"tables": 75}),
    ('noise\n{"pending": 2}\n', "", {"pending": 2}),
    ('{"error": "x: no such table: \\u001b[2Jproject"}\n', "", {"error": "x: no such table: \\x1b[2Jproject"}),
    ('{"tables": 0}\n', "", {"error": '{"tables": 0}'}),
    ('{"tables": true}\n', "Traceback\nImportError: no module\n", {"error": "ImportError: no module"}),
    ("", "", {"error": "no answer from the check"}),
])
def test_the_check_answer_is_read_from_its_last_json_line(stdout, stderr, answer):
    assert parse.check_answer(stdout, stderr) == answer
