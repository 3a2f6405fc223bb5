"""Moving bytes: temp dirs and secrets on the server, the free-space check, the codec, and tar streams
both ways, through a recording channel and through the real server-side commands run here."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import PurePosixPath

import pytest

from tasks.core import commands, transfer
from tasks.core.commands import data
from tasks.core.connect import RootChannel
from tasks.core.defaults import DATABASE, MEDIA, SECRET_ENV
from tasks.core.errors import RemoteError, SnapshotError
from tasks.core.onserver import sqlite
from tasks.core.profile import parse_profile
from tests.unit.fakehost import FakeChannel, FakeHost, Stream, ok

TMP = "/tmp/tmp.Xy12"
FILES = {DATABASE: b"database bytes" * 1000, SECRET_ENV: b"SECRET_KEY=s3cret\n",
         "media/upload/1/a b.png": b"\x89PNG" + bytes(range(256))}


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_remote_tempdir_is_removed_even_when_the_block_fails():
    host = FakeHost().answer(r"mktemp", ok(TMP + "\n"))
    with pytest.raises(ValueError):
        with transfer.remote_tempdir(host) as path:
            assert path == PurePosixPath(TMP)
            raise ValueError("boom")
    assert host.commands == [commands.MAKE_TEMPDIR, commands.remove(TMP)]


def test_a_secret_file_is_made_private_before_its_bytes_arrive():
    host = FakeHost().answer(r"mktemp", ok(TMP + "\n"))
    with transfer.secret_file(host, b"password") as path:
        assert path == PurePosixPath(TMP) / "secret"
    assert [r.command for r in host.log] == [commands.MAKE_TEMPDIR, commands.empty_private_file(path),
                                             f"<upload {path}>", commands.remove(TMP)]
    assert host.uploads == {str(path): b"password"}


@pytest.mark.parametrize("free, needed, refused", [
    ("1000\n", 999, False), ("1000\n", 1000, False), ("1000\n", 1001, True), ("df: no such file\n", 10**15, False),
])
def test_free_space(free, needed, refused):
    host = FakeHost(alias="vm").answer(r"^df -B1", ok(free))
    where = PurePosixPath("/var/-tmp")
    if refused:
        with pytest.raises(SnapshotError, match=r"not enough space on vm in /var/-tmp for a copy: needs 1001 B, 1000 B free"):
            transfer.check_free_space(host, where, needed, "a copy")
    else:
        transfer.check_free_space(host, where, needed, "a copy")
    assert host.log[0].command == data.free_space(where) and host.log[0].sudo


@pytest.mark.parametrize("answer, codec", [("zstd\n", "zstd"), ("gzip\n", "gzip"), ("", "gzip")])
def test_the_codec_is_zstd_only_when_the_server_has_it(answer, codec):
    host = FakeHost().answer(r"command -v zstd", ok(answer))
    assert transfer.server_codec(host).name == codec
    assert host.commands == [data.CODEC_PROBE]


# ------------------------------------------------------------------------------------------------
# Streams through a recording channel


def write_files(folder, files: dict[str, bytes]):
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
        os.utime(folder / name, (1700000000, 1700000000))


def sent_bytes(tmp_path, codec: transfer.Codec) -> bytes:
    source = tmp_path / "source"
    write_files(source, FILES)
    channel = FakeChannel("upload", Stream())
    transfer.send_tar(RootChannel("vm", channel), codec, [(source / n, n) for n in FILES], total=1, description="up")
    return bytes(channel.written)


@pytest.mark.parametrize("name", ["zstd", "gzip"])
def test_what_send_tar_sends_receive_tar_unpacks_private_and_hashed(tmp_path, name):
    codec = transfer.Codec(name)
    wire = sent_bytes(tmp_path, codec)
    channel = RootChannel("vm", FakeChannel("download", Stream(wire)))
    dest = tmp_path / "dest"
    received = transfer.receive_tar(channel, codec, dest, total=len(wire), description="down",
                                    expected={n: len(c) for n, c in FILES.items()})
    assert received == {n: (len(c), sha(c)) for n, c in FILES.items()}
    assert channel.received == len(wire)
    for n, content in FILES.items():
        assert (dest / n).read_bytes() == content
        assert (dest / n).stat().st_mode & 0o777 == 0o600
        assert (dest / n).stat().st_mtime == 1700000000
    assert (dest / "media").stat().st_mode & 0o777 == 0o700


def test_receive_tar_fsyncs_every_file_but_those_the_caller_writes_back_itself(tmp_path, monkeypatch):
    codec = transfer.Codec("zstd")
    wire = sent_bytes(tmp_path, codec)
    left = sorted(FILES)[0]
    synced: list = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_ino))
    dest = tmp_path / "dest"
    transfer.receive_tar(RootChannel("vm", FakeChannel("download", Stream(wire))), codec, dest, total=len(wire),
                         description="down", expected={n: len(c) for n, c in FILES.items()},
                         unsynced=frozenset({left}))
    assert sorted(synced) == sorted(os.stat(dest / n).st_ino for n in FILES if n != left)


@pytest.mark.parametrize("member", ["../escape", "/etc/passwd", "media/../../escape"])
def test_receive_tar_refuses_paths_outside_the_snapshot(tmp_path, member):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w|") as tar:
        info = tarfile.TarInfo(member)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    channel = RootChannel("vm", FakeChannel("download", Stream(gzip.compress(raw.getvalue()))))
    with pytest.raises(RemoteError, match="refusing an unsafe path"):
        transfer.receive_tar(channel, transfer.Codec("gzip"), tmp_path / "dest", total=1, description="down",
                             expected={member: 1})
    assert not (tmp_path / "escape").exists()


# ------------------------------------------------------------------------------------------------
# The server-side commands, run here


def run_here(command: str, stdin: bytes = b"") -> bytes:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    result = subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


# Media names as hostile as a file system allows: a newline and the old heredoc marker with a command
# after it, quotes, `$(...)`, a leading dash, bytes that are not UTF-8 (kept as surrogates).
HOSTILE_MEDIA = {
    "media/upload/1/x\nLSVM_EOF\ntouch /tmp/pwned\n": b"heredoc",
    "media/upload/1/q'\"$(id)`;.png": b"quotes",
    "media/upload/1/-n": b"dash",
    "media/upload/1/latin1-\udce9t\udce9.png": b"not utf-8",
}


def serve_backup_here(data_dir, work, index_dir, said: list[dict]) -> tuple[dict, bytes]:
    """The real serve-backup program run here, this machine's lines given in advance: (its findings,
    the compressed tar after them)."""
    stdin = b"".join(json.dumps(line).encode() + b"\n" for line in said)
    out = run_here(commands.join(*data.sqlite_words("serve-backup", data_dir, "/nonexistent-venv", index_dir, work)),
                   stdin=stdin)
    head, rest = out.split(b"\n", 1)
    return json.loads(rest[:int(head)]), rest[int(head):]


def received_from(wire: bytes, codec: str, dest, expected: dict) -> dict:
    channel = RootChannel("vm", FakeChannel("download", Stream(wire)))
    return transfer.receive_tar(channel, transfer.Codec(codec), dest, total=1, description="d", expected=expected)


def edit_rows(path, rows: range) -> None:
    con = sqlite3.connect(path)
    con.executemany("update note set text = 'edited' where id = ?", [(i,) for i in rows])
    con.commit()
    con.close()


def test_serve_backup_streams_the_copy_and_hostile_names_and_next_time_only_the_changed_pages(tmp_path):
    data_dir, work, index_dir = tmp_path / "-data dir", tmp_path / "lsvm-backup.-x", tmp_path / "-data dir" / ".pages"
    media = {"media/upload/1/a b.png": FILES["media/upload/1/a b.png"], **HOSTILE_MEDIA}
    write_files(data_dir, {SECRET_ENV: FILES[SECRET_ENV], **media})
    con = sqlite3.connect(data_dir / DATABASE)
    con.execute("create table note (id integer primary key, text text)")
    con.executemany("insert into note (text) values (?)", [("x" * 300,)] * 3000)
    con.commit()
    con.close()
    work.mkdir()
    listed = [SECRET_ENV, *media]
    found, wire = serve_backup_here(data_dir, work, index_dir, [{"marker": None, "base": None},
                                                                {"database": "whole", "files": listed}])
    assert {m["path"] for m in found["media"]} == set(media) and found["delta"] is None
    dest = tmp_path / "first"
    received = received_from(wire, found["codec"], dest, {DATABASE: found["database"]["size"], SECRET_ENV: len(FILES[SECRET_ENV]),
                                          **{n: len(c) for n, c in media.items()}})
    assert received[DATABASE][1] == found["database"]["sha256"]       # the sha256 of the copy is the server's
    for name, content in media.items():
        assert (dest / name).read_bytes() == content
    assert not os.path.exists("/tmp/pwned")
    assert sorted(os.listdir(index_dir)) == [found["database"]["sha256"] + ".pages"]   # kept for next time

    # Next time: the server compares its new copy with the index it kept (none sent) and streams only the
    # changed pages, which rebuild the copy here on the first one.
    edit_rows(data_dir / DATABASE, range(1, 30))
    (work / DATABASE).unlink()
    again, wire = serve_backup_here(data_dir, work, index_dir,
                                    [{"marker": None, "base": found["database"]["sha256"]},
                                     {"database": "delta", "files": []}])
    assert again["index_kept"] and 0 < again["delta"]["changed"] < again["delta"]["pages"] / 10
    received = received_from(wire, again["codec"], tmp_path / "second", {data.DELTA: again["delta"]["size"]})
    built = sqlite.apply_delta(str(dest / DATABASE), str(tmp_path / "second" / data.DELTA), str(tmp_path / "built"))
    assert built["sha256"] == again["database"]["sha256"] == sha((work / DATABASE).read_bytes())

    # A data dir that is not ours yet (adopt): nothing is kept in it.
    (work / DATABASE).unlink()
    (work / data.DELTA).unlink()
    foreign = tmp_path / "foreign-pages"
    serve_backup_here(data_dir, work, foreign, [{"marker": None, "base": None, "keep": False},
                                                {"database": None, "files": []}])
    assert not foreign.exists()


def test_serve_backup_streams_nothing_it_did_not_list_and_never_through_a_link(tmp_path):
    data_dir, work = tmp_path / "data", tmp_path / "work"
    write_files(data_dir, {"media/upload/1/a.png": b"a"})
    work.mkdir()
    stdin = b"".join(json.dumps(line).encode() + b"\n" for line in [{"marker": None, "base": None},
                                                                      {"database": None, "files": ["../../etc/passwd"]}])
    run = subprocess.run(data.sqlite_words("serve-backup", str(data_dir), "/nonexistent", str(tmp_path / "i"),
                                           str(work)), input=stdin, capture_output=True)
    assert run.returncode != 0 and b"was not in the listing" in run.stderr and b"root:" not in run.stdout
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "a.png").write_bytes(b"root only")
    os.rename(data_dir / "media" / "upload" / "1", tmp_path / "moved")
    os.symlink(secret, data_dir / "media" / "upload" / "1")       # swapped for a link after the listing
    with pytest.raises(OSError):
        sqlite._open_beneath(str(data_dir), "media/upload/1/a.png")


def test_the_service_user_does_every_read_and_write_in_the_data_dir_and_the_temp_folder():
    profile = parse_profile("service:\n  user: _svc-1\npaths:\n  data_dir: /srv/-d\n", host="vm")
    work = PurePosixPath("/var/tmp/lsvm-backup.x")
    as_owner = "runuser -u _svc-1 -- env -C /srv/-d HOME=/srv/-d "
    for command in (data.write_file_list(profile, work),
                    data.make_incoming(profile), data.receive_upload(profile, "zstd"),
                    data.hash_incoming(profile), data.remove_incoming(profile),
                    data.remove_swap_leftovers(profile), data.swap(profile, [DATABASE, MEDIA]),
                    data.rollback(profile, [DATABASE, MEDIA]),
                    data.stream_snapshot(profile, work, "zstd", listed_files=True, work_file="dump"),
                    data.apply_delta_incoming(profile)):
        assert command.startswith(as_owner), command
    assert as_owner + "python3 -I -c" in data.serve_backup(profile)
    for command in (data.prepare_copy(profile, work, "null"), data.server_counts(profile),
                    data.file_size(profile, profile.remote.database), data.remove_work_dir(profile, work)):
        assert as_owner + "python3 -I -c" in command or as_owner + "stat" in command or as_owner + "rm" in command
    made = data.make_work_dir(profile, "backup")
    assert "chown -h _svc-1: \"$d\"" in made and "chown -R" not in made
    for command in (data.swap(profile, [DATABASE, SECRET_ENV, MEDIA]), data.receive_upload(profile, "zstd")):
        assert "chown" not in command


def test_the_upload_commands_unpack_into_incoming_and_hash_what_arrived(tmp_path):
    data_dir = tmp_path / "-data"
    data_dir.mkdir()
    run_here(data.make_incoming_script(PurePosixPath(data_dir)))
    incoming = data_dir / data.INCOMING
    assert incoming.stat().st_mode & 0o777 == 0o700
    files = {**FILES, **HOSTILE_MEDIA}
    source = tmp_path / "source"
    write_files(source, files)
    channel = FakeChannel("upload", Stream())
    transfer.send_tar(RootChannel("vm", channel), transfer.Codec("gzip"), [(source / n, n) for n in files],
                      total=1, description="up")
    run_here(data.receive_script(PurePosixPath(data_dir), "gzip"), stdin=bytes(channel.written))
    for name, content in files.items():
        assert (incoming / name).read_bytes() == content
        assert (incoming / name).stat().st_mode & 0o777 == 0o600
    found = json.loads(run_here(data.sqlite_tool("sha256", *(incoming / n for n in (DATABASE, SECRET_ENV)))))
    assert found == {str(incoming / n): {"size": len(FILES[n]), "sha256": sha(FILES[n])} for n in (DATABASE, SECRET_ENV)}
    run_here(data.remove_leftovers_script(PurePosixPath(data_dir)))
    assert not incoming.exists()
