"""What the unit tests share: the recorded server's profile, profiles of hostile values, and a recording
server that answers a backup as a real one does. Plain values and functions; the fixtures are in conftest."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
from pathlib import Path

from tasks.core.defaults import DATABASE, SECRET_ENV
from tasks.core.profile import Profile, parse_profile
from tests.unit.fakehost import FakeHost, ok

DATA = Path(__file__).parent / "data"
# The profile the recorded server (data/provision_probe_provisioned.txt) was provisioned with.
PROFILE = Profile(host="vm", address="127.0.0.1", public_url="http://127.0.0.1:59503")


def profile_on_this_machine(text: str = "", *, user: str | None = None, app_dir=None, data_dir=None,
                            host: str = "vm") -> Profile:
    """A profile whose paths are a test's temporary folders (and whose service user is whoever runs the
    tests), for scripts run for real here: values the profile refuses from a user's YAML (a folder under
    /tmp, root), set after its checks."""
    profile = parse_profile(text, host=host)
    paths = dataclasses.replace(profile.paths, **{k: str(v) for k, v in (("app_dir", app_dir), ("data_dir", data_dir))
                                                  if v is not None})
    service = profile.service if user is None else dataclasses.replace(profile.service, user=user)
    return dataclasses.replace(profile, paths=paths, service=service)


# Valid by every validator, and as unfriendly to a shell as they allow: leading dashes and dots in
# paths, '-' and '_' in names, a version with an epoch and a local part, an email full of shell syntax.
HOSTILE = parse_profile("""\
server_name: x-1.example.org
http_port: 8443
public_url: https://x-1.example.org:8443/sub/-path
label_studio:
  version: "1!1.23.2.post1+local.7"
  port: 65535
  admin_email: "$(reboot)|`id`&x<y>@ex.org"
service:
  manager: systemd
  user: _svc-1
  name: ls_-1
paths:
  app_dir: /opt/-app.d/x
  data_dir: /srv/.-data/y
backup:
  server_tmp_dir: /var/-tmp
pip:
  index_url: https://pypi.example.org/-simple/
""", host="-vm")
HOSTILE_SCREEN = parse_profile("service:\n  manager: screen\n  user: _svc-1\n  name: ls_-1\n"
                               "paths:\n  data_dir: /srv/.-data/y\n", host="-vm")
PROFILES = {"hostile-systemd": HOSTILE, "hostile-screen": HOSTILE_SCREEN}
EMAIL = HOSTILE.label_studio.admin_email


# ------------------------------------------------------------------------------------------------
# A server that answers a backup: its database, .env and one media file

LOCK = r"flock -n 9"
WORK = "/var/tmp/lsvm-backup.Ab12Cd"


def label_studio_database(projects: int = 1, tasks: int = 2, annotations: int = 3) -> bytes:
    """The bytes of a small SQLite database with Label Studio's tables (it passes the local check)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "db")
        con = sqlite3.connect(path)
        for table in ("django_migrations", "htx_user", "project", "task", "task_completion"):
            con.execute(f"create table {table} (id integer primary key, note text)")
        for table, rows in (("htx_user", 1), ("project", projects), ("task", tasks), ("task_completion", annotations)):
            con.executemany(f"insert into {table} (note) values (?)", [("x",)] * rows)
        con.commit()
        con.close()
        with open(path, "rb") as handle:
            return handle.read()


DB = label_studio_database()
ENV = b"SECRET_KEY=abc\n"
PNG = b"\x89PNG pretend image"
MEDIA_FILE = "media/upload/1/cat.png"
MARKER = {"counter": 7, "size": len(DB), "mtime_ns": 1, "inode": 2}
REPORT = {"integrity_check": "ok", "label_studio": True, "missing_tables": [], "error": None,
          "counts": {"users": 1, "projects": 1, "tasks": 2, "annotations": 3}}


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def tar_stream(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A gzip tar as the server's stream command would send it: {name: (content, mtime)}."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w|") as tar:
        for name, (content, mtime) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(content), mtime
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue())


def framed(answer: dict) -> bytes:
    """One answer of the server's serve-backup program: its length on a line, then the JSON."""
    data = json.dumps(answer).encode()
    return b"%d\n" % len(data) + data


def prepared(**changes) -> dict:
    """What serve-backup finds on a server whose copy is DB (a first backup: no delta)."""
    info = {"database_exists": True, "marker": MARKER, "copy": "raw copy under a shared lock",
            "database": {"size": len(DB), "sha256": sha(DB)}, "delta": None, "delta_why": None,
            "env": {"size": len(ENV), "sha256": sha(ENV)},
            "media": [{"path": MEDIA_FILE, "size": len(PNG), "mtime": 1700000000}],
            "label_studio_version": "1.23.2", "codec": "gzip", "timeline": {"server copy": 0.1, "server digests": 0.1}}
    return {**info, **changes}


def served(info: dict, files: dict[str, tuple[bytes, int]]) -> bytes:
    """serve-backup's whole stdout: its findings, then the tar of `files`."""
    return framed(info) + tar_stream(files)


def server(info: dict, *, db: bytes = DB, files: dict | None = None) -> FakeHost:
    """A server whose serve-backup finds `info` and streams `files` (default: the copy `db`, .env and the
    media file); it also answers the commands of a migration's copy (prepare)."""
    host = FakeHost(alias="vm")
    host.answer(r"mktemp -d", ok(WORK + "\n"))
    host.answer(r"^runuser .* stat -c %s", ok(f"{len(DB)}\n"))
    host.answer(r"^df -B1", ok("999999999999\n"))
    host.answer(r"python3 -I -c .* prepare ", ok(json.dumps(info) + "\n"))
    host.answer(r"command -v zstd", ok("gzip\n"))
    if files is None:
        files = {DATABASE: (db, 1), SECRET_ENV: (ENV, 1), MEDIA_FILE: (PNG, 1700000000)}
    host.stream(r"serve-backup", served(info, files))
    return host
