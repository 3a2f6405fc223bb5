"""Replacing the server's data: the order of upload, stop, swap, start and health; the rollback after
any failure once the service is stopped; nothing stopped when the upload fails. The swap and rollback
scripts are also run for real on a folder here."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pwd
import subprocess
import tarfile

import pytest

from tasks.core import restore
from tasks.core.catalog import DATABASE, MEDIA, SECRET_ENV, FileEntry
from tasks.core.commands import data
from tasks.core.commands.service import service_manager, wait_for_health
from tasks.core.errors import RemoteError, SnapshotError
from tasks.core.profile import parse_profile
from tests.unit.conftest import PROFILE
from tests.unit.fakehost import FakeHost, fail, ok

HEALTH = r"urllib\.request"
UP = ok('200 {"status": "UP"}')
DOWN = fail(stdout="502 ", stderr="")
HASH = r"^python3 -c .* sha256 "
MANAGER = service_manager(PROFILE)
FAST_HEALTH = wait_for_health(PROFILE, via_nginx=True, timeout=30, fail_on_crash=True)
ROLLBACK_HEALTH = wait_for_health(PROFILE, via_nginx=True, timeout=300)


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
    incoming = data.incoming_dir(PROFILE)
    found = {str(incoming / e.path): {"size": e.size, "sha256": "0" * 64 if e.path == damaged else e.sha256}
             for e in entries if not e.path.startswith(MEDIA + "/")}
    return ok(json.dumps(found) + "\n")


def server(entries, *, health=None, damaged: str | None = None) -> FakeHost:
    host = FakeHost(alias="vm")
    host.answer(r"^df -B1", ok("999999999999\n"))
    host.answer(r"command -v zstd", ok("gzip\n"))
    host.answer(HASH, hashes_of(entries, damaged=damaged))
    host.answer(HEALTH, health or UP)
    return host


def replace(host, source, entries):
    restore.replace_server_data(host, PROFILE, source, entries, health_timeout=30)


def test_the_happy_path_verifies_the_upload_then_stops_swaps_starts_and_checks_health(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database", SECRET_ENV: b"SECRET_KEY=x\n"})
    host = server(entries)
    replace(host, source, entries)
    parts = [DATABASE, SECRET_ENV]
    expected = [data.hash_incoming(PROFILE, parts), MANAGER.stop(), data.swap(PROFILE, parts), MANAGER.start(),
                FAST_HEALTH, data.remove_swap_leftovers(PROFILE)]
    assert host.commands[-len(expected):] == expected
    upload = host.commands.index(data.receive_upload(PROFILE, "gzip"))
    assert host.commands.index(data.make_incoming(PROFILE)) < upload < host.commands.index(MANAGER.stop())
    assert data.rollback(PROFILE, parts) not in host.commands


def test_the_upload_is_a_tar_of_exactly_the_files_and_the_channel_is_closed(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database", "media/upload/1/a b.png": b"png"})
    host = server(entries)
    replace(host, source, entries)
    [channel] = host.channels
    assert channel.write_shut and channel.closed
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bytes(channel.written)))) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar} == {
            DATABASE: b"new database", "media/upload/1/a b.png": b"png"}
        assert {(m.uid, m.uname) for m in tar} == {(0, "root")}


def test_a_failed_health_check_after_the_swap_puts_the_previous_data_back(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    answers = iter([DOWN, UP])
    host = server(entries, health=lambda command: next(answers))
    with pytest.raises(RemoteError, match="previous data is back"):
        replace(host, source, entries)
    parts = [DATABASE]
    after_stop = host.commands[host.commands.index(MANAGER.stop()):]
    assert after_stop == [
        MANAGER.stop(), data.swap(PROFILE, parts), MANAGER.start(), FAST_HEALTH, MANAGER.recent_log(),
        MANAGER.stop(), data.rollback(PROFILE, parts), MANAGER.start(), ROLLBACK_HEALTH,
        data.remove_swap_leftovers(PROFILE),
    ]


def test_a_failed_swap_also_rolls_back(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries)
    host.answers.insert(0, (r"^set -e; rm -rf .*lsvm-previous", fail("mv: cannot move")))
    with pytest.raises(RemoteError, match="previous data is back"):
        replace(host, source, entries)
    assert data.rollback(PROFILE, [DATABASE]) in host.commands
    assert host.commands[-2:] == [ROLLBACK_HEALTH, data.remove_swap_leftovers(PROFILE)]


def test_a_damaged_upload_removes_the_incoming_folder_and_never_stops_the_service(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries, damaged=DATABASE)
    with pytest.raises(SnapshotError, match="arrived damaged.*nothing was replaced"):
        replace(host, source, entries)
    assert host.commands[-1] == data.remove_incoming(PROFILE)
    assert not host.ran(r"systemctl (stop|start)")
    assert not host.ran(r"lsvm-previous")


def test_a_failed_stop_removes_the_incoming_folder_and_rolls_nothing_back(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries)
    host.answer(r"^systemctl stop", fail("Failed to stop"))
    with pytest.raises(RemoteError, match="stopping Label Studio failed"):
        replace(host, source, entries)
    assert host.commands[-2:] == [MANAGER.stop(), data.remove_incoming(PROFILE)]
    assert not host.ran(r"lsvm-previous")


def test_a_failed_upload_stream_removes_the_incoming_folder(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"new database"})
    host = server(entries)
    host.stream(r"tar -xf -", stderr=b"tar: No space left on device\n", status=2)
    with pytest.raises(RemoteError, match="receiving the upload failed on vm: tar: No space left on device"):
        replace(host, source, entries)
    assert host.commands[-1] == data.remove_incoming(PROFILE)
    assert not host.ran(r"systemctl")


def test_too_little_space_refuses_before_anything_is_sent(tmp_path):
    source, entries = source_with(tmp_path, {DATABASE: b"x" * 1000})
    host = server(entries)
    host.answers.insert(0, (r"^df -B1", ok("1000\n")))
    with pytest.raises(SnapshotError, match="not enough space on vm"):
        replace(host, source, entries)
    assert host.channels == []


@pytest.mark.parametrize("files, parts", [
    ([DATABASE], [DATABASE]),
    ([DATABASE, "media/a.png"], [DATABASE, MEDIA]),
    ([DATABASE, SECRET_ENV, "media/a.png"], [DATABASE, SECRET_ENV, MEDIA]),
])
def test_the_parts_swapped_are_those_the_files_hold(files, parts):
    assert restore._parts_present([FileEntry(f, 1, "x") for f in files]) == parts


# ------------------------------------------------------------------------------------------------
# The swap and rollback scripts, run for real on a folder here (as the owner we are).


def local_profile(data_dir):
    user = pwd.getpwuid(os.getuid()).pw_name
    return parse_profile(f"service:\n  user: {user}\npaths:\n  data_dir: {data_dir}\n", host="vm")


def tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(script: str) -> None:
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


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


def test_swap_puts_every_new_part_in_place_private_and_sets_the_old_aside(live):
    profile = local_profile(live)
    parts = [DATABASE, SECRET_ENV, MEDIA]
    run(data.swap(profile, parts))
    live_files = {k: v for k, v in tree(live).items() if not k.startswith(data.PREVIOUS)}
    assert live_files == {DATABASE: b"new db", SECRET_ENV: b"SECRET_KEY=new\n", "media/upload/new.png": b"new png"}
    assert oct((live / DATABASE).stat().st_mode & 0o777) == "0o600"
    assert oct((live / SECRET_ENV).stat().st_mode & 0o777) == "0o600"
    assert (live / data.PREVIOUS / ("absent" + SECRET_ENV)).exists()


def test_rollback_after_swap_gives_back_exactly_the_old_data(live):
    profile = local_profile(live)
    before = {k: v for k, v in tree(live).items() if not k.startswith(data.INCOMING)}
    parts = [DATABASE, SECRET_ENV, MEDIA]
    run(data.swap(profile, parts))
    run(data.rollback(profile, parts))
    run(data.remove_swap_leftovers(profile))
    assert tree(live) == before  # the .env that did not exist is gone again, the journal is back
