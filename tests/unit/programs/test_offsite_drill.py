"""The restore drill program (tasks/core/onserver/offsite_drill.py) run here for real, with a stand-in for
`litestream restore` that writes a given database where it is told to (or fails as Litestream does)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from tasks.core import offsite
from tasks.core.onserver import offsite_drill


def label_studio_database(path, projects: int = 2, tables=offsite_drill.TABLES) -> None:
    connection = sqlite3.connect(path)
    for table in tables:
        connection.execute(f'create table "{table}" (id integer primary key)')
    for _ in range(projects):
        connection.execute('insert into project default values')
    connection.commit()
    connection.close()


def fake_litestream(tmp_path, source=None, fail: str | None = None):
    """A `litestream` that copies `source` to the path after -o, or says `fail` on stderr and exits 1."""
    script = tmp_path / "litestream"
    body = ("import sys, shutil\nargs = sys.argv[1:]\n"
            + (f"sys.stderr.write({fail!r} + '\\n'); sys.exit(1)\n" if fail else
               f"shutil.copy({str(source)!r}, args[args.index('-o') + 1])\n"))
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    return script


def run(tmp_path, litestream, live):
    result = tmp_path / "drill.json"
    status = offsite_drill.main([str(litestream), "/etc/none.yml", str(live), str(tmp_path), str(result)])
    return status, json.loads(result.read_text())


def test_a_good_restore_passes_and_names_what_was_written_since(tmp_path):
    restored, live = tmp_path / "restored-source.sqlite3", tmp_path / "live.sqlite3"
    label_studio_database(restored, projects=2)
    label_studio_database(live, projects=3)
    status, result = run(tmp_path, fake_litestream(tmp_path, restored), live)
    assert status == 0 and result["ok"] is True
    assert result["counts"]["project"] == 2 and result["live_counts"]["project"] == 3
    assert not (tmp_path / "drill.sqlite3").exists()          # the scratch copy is gone
    text = offsite.drill_text(result)
    assert text.startswith("passed ") and "integrity_check ok" in text and "project 2 vs 3 live" in text


def test_a_failed_restore_is_a_failed_drill_in_litestreams_words(tmp_path):
    live = tmp_path / "live.sqlite3"
    label_studio_database(live)
    status, result = run(tmp_path, fake_litestream(tmp_path, fail="error: decode ltx: checksum mismatch"), live)
    assert status == 1 and result["ok"] is False
    assert result["problem"] == "litestream restore failed: error: decode ltx: checksum mismatch"
    assert offsite.drill_text(result).startswith("FAILED ")
    problem = offsite.replication_problem(True, "active", offsite.Replication(drill=result))
    assert problem == "offsite copies are not proven: the last drill failed: litestream restore failed: error: " \
                      "decode ltx: checksum mismatch"


def test_a_restore_without_label_studios_tables_fails(tmp_path):
    restored, live = tmp_path / "other.sqlite3", tmp_path / "live.sqlite3"
    label_studio_database(restored, projects=0, tables=("django_migrations", "project"))
    label_studio_database(live)
    status, result = run(tmp_path, fake_litestream(tmp_path, restored), live)
    assert status == 1
    assert result["problem"] == "the restored database lacks Label Studio's tables: htx_user, task, task_completion"


def test_a_damaged_restore_fails_integrity_check(tmp_path):
    restored, live = tmp_path / "damaged.sqlite3", tmp_path / "live.sqlite3"
    label_studio_database(restored, projects=500)
    label_studio_database(live)
    data = bytearray(restored.read_bytes())
    for page in range(1, len(data) // 4096):                    # every b-tree page's header but the first's
        data[page * 4096: page * 4096 + 12] = b"\x0d" + b"\xff" * 11
    restored.write_bytes(bytes(data))
    status, result = run(tmp_path, fake_litestream(tmp_path, restored), live)
    assert status == 1 and ("integrity_check" in result["problem"] or "could not run" in result["problem"]), result


def test_no_drill_yet_is_said_and_is_no_problem():
    assert offsite.drill_text(None).startswith("no drill yet")
    assert offsite.replication_problem(True, "active", offsite.Replication()) is None


# ------------------------------------------------------------------------------------------------
# restic's part, with the real restic (Debian's package; .ci/run installs it)

needs_restic = pytest.mark.skipif(not shutil.which("restic") and not os.environ.get("CI"),
                                  reason="restic is not installed here (apt-get install restic)")


def restic_repository(tmp_path, monkeypatch, snapshots: int = 1) -> list[str]:
    """A restic repository in tmp_path holding `snapshots` snapshots of a tar (tag files); restic's words."""
    monkeypatch.setenv("RESTIC_PASSWORD", "unit-test-password-0123")
    words = ["restic", "--repo", str(tmp_path / "repo"), "--cache-dir", str(tmp_path / "cache")]
    subprocess.run([*words, "init"], check=True, capture_output=True)
    for n in range(snapshots):
        subprocess.run([*words, "backup", "--stdin", "--stdin-filename", "files.tar", "--tag", "files"],
                       input=os.urandom(200_000) + bytes([n]), check=True, capture_output=True)
    return words


def drill_with_restic(tmp_path, words, check=offsite.check_words()):
    restored, live = tmp_path / "restored-source.sqlite3", tmp_path / "live.sqlite3"
    label_studio_database(restored)
    label_studio_database(live)
    result = tmp_path / "drill.json"
    status = offsite_drill.main([str(fake_litestream(tmp_path, restored)), "/etc/none.yml", str(live), str(tmp_path),
                                 str(result), "--", *words, "--", *check])
    return status, json.loads(result.read_text())


@needs_restic
def test_the_drill_lists_restics_snapshots_and_reads_back_a_share_of_their_data(tmp_path, monkeypatch):
    status, result = drill_with_restic(tmp_path, restic_repository(tmp_path, monkeypatch, snapshots=2))
    assert status == 0 and result["ok"] is True, result
    assert result["files_snapshots"] == 2 and result["files_newest"]
    assert "2 snapshot(s) of .env and media, restic check read back 5%" in offsite.drill_text(result)


@needs_restic
def test_no_snapshot_of_env_and_media_fails_the_drill(tmp_path, monkeypatch):
    status, result = drill_with_restic(tmp_path, restic_repository(tmp_path, monkeypatch, snapshots=0))
    assert status == 1 and result["problem"] == "the target holds no snapshot of .env and media"


@needs_restic
def test_damaged_restic_data_fails_the_drill_in_restics_words(tmp_path, monkeypatch):
    words = restic_repository(tmp_path, monkeypatch)
    for pack in (tmp_path / "repo" / "data").rglob("*"):
        if pack.is_file():
            data = bytearray(pack.read_bytes())
            data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
            pack.chmod(0o600)
            pack.write_bytes(bytes(data))
    # Every pack read (the nightly drill reads a random 5%: one pack may not be among them).
    status, result = drill_with_restic(tmp_path, words, check=["check", "--read-data"])
    assert status == 1 and result["problem"].startswith("restic check failed"), result


def postgres_snapshot(tmp_path, monkeypatch, tables=offsite_drill.TABLES, with_dump: bool = True) -> list[str]:
    """A restic repository whose snapshot holds what the files job takes on PostgreSQL; `pg_restore` on
    PATH a stand-in that lists a table of contents with `tables`' data (the drill's parsing is the point)."""
    import io
    import tarfile
    monkeypatch.setenv("RESTIC_PASSWORD", "unit-test-password-0123")
    words = ["restic", "--repo", str(tmp_path / "repo"), "--cache-dir", str(tmp_path / "cache")]
    subprocess.run([*words, "init"], check=True, capture_output=True)
    parts = {offsite_drill.DUMP_COUNTS: json.dumps({"counts": {"tasks": 3, "annotations": 2}}).encode(),
             ".env": b"SECRET_KEY=x\n"}
    if with_dump:
        parts[offsite_drill.DUMP] = b"PGDMP" + os.urandom(1000)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in parts.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    subprocess.run([*words, "backup", "--stdin", "--stdin-filename", "files.tar", "--tag", "files"],
                   input=buffer.getvalue(), check=True, capture_output=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    toc = "\n".join([";", "; Archive created at 2026-12-03 07:30:00 UTC", ";"]
                    + [f"{3000 + i}; 0 {16000 + i} TABLE DATA public {t} labelstudio" for i, t in enumerate(tables)])
    fake = bin_dir / "pg_restore"
    fake.write_text(f"#!{sys.executable}\nimport sys\nassert sys.argv[1] == '--list' and "
                    f"open(sys.argv[2], 'rb').read(5) == b'PGDMP'\nprint({toc!r})\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return words


def postgres_drill(tmp_path, words):
    result = tmp_path / "drill.json"
    status = offsite_drill.main(["-", "/etc/none.yml", "/nonexistent", str(tmp_path), str(result), "--", *words,
                                 "--", "check"])
    return status, json.loads(result.read_text())


@needs_restic
def test_on_postgresql_the_drill_reads_the_newest_dump_back(tmp_path, monkeypatch):
    status, result = postgres_drill(tmp_path, postgres_snapshot(tmp_path, monkeypatch))
    assert status == 0 and result["ok"], result
    assert result["engine"] == "postgresql" and result["toc_entries"] == len(offsite_drill.TABLES)
    assert result["dump_counts"] == {"tasks": 3, "annotations": 2} and result["files_snapshots"] == 1
    assert not (tmp_path / "drill.pgdump").exists()                # the scratch copy is gone
    assert offsite.drill_text(result).startswith("passed ") and "pg_restore lists its 5 entries" in \
        offsite.drill_text(result)


@needs_restic
def test_on_postgresql_a_dump_without_label_studios_tables_or_no_dump_fails_the_drill(tmp_path, monkeypatch):
    status, result = postgres_drill(tmp_path, postgres_snapshot(tmp_path, monkeypatch, tables=("project", "task")))
    assert status == 1 and result["problem"] == ("the dump lacks Label Studio's tables: django_migrations, "
                                                 "htx_user, task_completion")
    other = tmp_path / "other"
    other.mkdir()
    status, result = postgres_drill(other, postgres_snapshot(other, monkeypatch, with_dump=False))
    assert status == 1 and result["problem"].endswith("holds no database dump")
