"""tasks/core/onserver/instances.py against a fake /proc tree: who listens where, which process is a Label
Studio, where its data is (decided as Label Studio decides it), and whose the port is."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tasks.core.errors import RemoteError, UsageError
from tasks.core.onserver import instances
from tasks.core.provision import adopt
from tasks.core.provision.facts import Neighbours, Unmanaged

ME = pwd.getpwuid(os.getuid())

# /proc/net/tcp: 0.0.0.0:8080 and 127.0.0.1:80 listening, one established connection.
TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0
   1: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000    33        0 222 1 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 444 1 0
"""


def make_process(proc: Path, pid: int, argv: list[str], *, ppid: int = 1, comm: str = "python3",
                 environ: dict | None = None, cwd: str = "/", sockets: tuple[int, ...] = (),
                 cgroup: str = "0::/user.slice/user-1000.slice/session-1.scope", uid: int | None = None) -> None:
    d = proc / str(pid)
    (d / "fd").mkdir(parents=True)
    uid = ME.pw_uid if uid is None else uid
    (d / "status").write_text(f"Name:\t{comm}\nPPid:\t{ppid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in (environ or {}).items()) + b"\0")
    (d / "comm").write_text(comm + "\n")
    (d / "cgroup").write_text(cgroup + "\n")
    os.symlink(cwd, d / "cwd")
    for n, inode in enumerate(sockets, start=3):
        os.symlink(f"socket:[{inode}]", d / "fd" / str(n))


@pytest.fixture
def proc(tmp_path) -> Path:
    root = tmp_path / "proc"
    (root / "net").mkdir(parents=True)
    (root / "net" / "tcp").write_text(TCP)
    (root / "net" / "tcp6").write_text(TCP6)
    return root


GUIDE_ARGV = [f"{ME.pw_dir}/annotation/label-studio/bin/python3", f"{ME.pw_dir}/annotation/label-studio/bin/label-studio", "start"]


def test_listening_sockets_are_read_from_proc_net(proc):
    assert instances.listening_sockets(str(proc)) == {111: ("0.0.0.0", 8080), 222: ("127.0.0.1", 80), 444: ("::", 8081)}


@pytest.mark.parametrize("argv, expected", [
    (GUIDE_ARGV, True),
    (["/usr/local/bin/label-studio", "start"], True),
    (["python3", "-m", "label_studio.server", "start"], True),
    (["bash", "-c", "label-studio start"], False),
    (["SCREEN", "-S", "label-studio"], False),
    (["/usr/bin/python3", "/srv/other-app.py", "--label-studio"], False),
    ([], False),
])
def test_which_processes_are_label_studio(argv, expected):
    assert instances.is_label_studio(argv) is expected


@pytest.mark.parametrize("environ, argv_extra, cwd, expected", [
    ({"HOME": "/home/ops"}, [], "/", ("/home/ops/.local/share/label-studio", "default")),
    ({"HOME": "/home/ops", "XDG_DATA_HOME": "/data/xdg"}, [], "/", ("/data/xdg/label-studio", "default")),
    ({"HOME": "/home/ops"}, ["--data-dir", "mydata"], "/home/ops/annotation", ("/home/ops/annotation/mydata", "--data-dir")),
    # Label Studio only setdefault()s the variable from --data-dir: the environment wins.
    ({"LABEL_STUDIO_BASE_DATA_DIR": "/srv/ls"}, ["--data-dir", "/elsewhere"], "/", ("/srv/ls", "LABEL_STUDIO_BASE_DATA_DIR")),
    ({"BASE_DATA_DIR": "/srv/bare/"}, [], "/", ("/srv/bare", "BASE_DATA_DIR")),
])
def test_the_data_dir_is_decided_as_label_studio_decides_it(environ, argv_extra, cwd, expected):
    p = {"argv": GUIDE_ARGV + argv_extra, "environ": environ, "cwd": cwd, "uid": ME.pw_uid}
    assert instances.data_dir_of(p) == expected


def test_the_database_follows_the_data_dir_unless_named():
    p = {"argv": GUIDE_ARGV, "environ": {}, "cwd": "/w"}
    assert instances.database_of(p, "/d") == "/d/label_studio.sqlite3"
    assert instances.database_of({**p, "argv": GUIDE_ARGV + ["-db", "x.sqlite3"]}, "/d") == "/w/x.sqlite3"
    assert instances.engine_of({**p, "environ": {"DJANGO_DB": "default"}}) == "postgresql"


def test_a_hand_made_instance_is_found_with_its_screen_session_and_listener(proc, tmp_path, monkeypatch):
    data = tmp_path / "home" / ".local" / "share" / "label-studio"
    (data / "media" / "upload").mkdir(parents=True)
    (data / "label_studio.sqlite3").write_bytes(b"x" * 100)
    (data / ".env").write_text("SECRET_KEY=abc\n")
    (data / "media" / "upload" / "a.png").write_bytes(b"12345")
    screens = tmp_path / "screens"
    (screens / f"S-{ME.pw_name}").mkdir(parents=True)
    (screens / f"S-{ME.pw_name}" / "50.ls").write_text("")
    monkeypatch.setattr(instances, "SCREEN_DIRS", (str(screens),))
    monkeypatch.setattr(instances, "NGINX_SITE_DIRS", ())
    make_process(proc, 50, ["SCREEN", "-S", "ls"], comm="screen")
    make_process(proc, 51, ["-bash"], ppid=50, comm="bash")
    make_process(proc, 60, GUIDE_ARGV, ppid=51, environ={"HOME": str(tmp_path / "home")},
                 cwd=str(tmp_path / "home"), sockets=(111,))
    found = instances.detect(8080, "label-studio.service", "labelstudio", "/var/lib/label-studio", str(proc))
    [item] = [i for i in found["instances"] if i["running"]]
    assert item["pid"] == 60 and item["screen"] == {"pid": 50, "name": "ls"}
    assert item["listen"] == ["0.0.0.0:8080"] and item["data_dir"] == str(data)
    assert (item["database_size"], item["env_file"], item["media_files"], item["media_bytes"]) == (100, True, 1, 5)
    assert found["port"]["state"] == "other" and found["port"]["pid"] == 60

    seen = Neighbours.from_probe([json.dumps(found)])
    u = seen.unmanaged[0]
    assert u.describe().startswith(f"unmanaged Label Studio in screen `ls` as {ME.pw_name}, data ")
    assert "listening on 0.0.0.0:8080 (reachable from outside)" in u.describe()
    assert not seen.port_taken_by_stranger()  # the port is the hand-made instance's: adopt stops it


def test_a_probe_that_gave_no_answer_is_an_error_never_nobody_else_here():
    assert Neighbours.from_probe([]) == Neighbours()
    with pytest.raises(RemoteError, match="gave no answer: Traceback"):
        Neighbours.from_probe(["Traceback (most recent call last):"])


def test_our_own_instance_holds_the_port_only_from_our_unit(proc):
    env = {"LABEL_STUDIO_BASE_DATA_DIR": "/var/lib/label-studio"}
    make_process(proc, 70, ["/opt/label-studio/venv/bin/python3", "/opt/label-studio/venv/bin/label-studio", "start"],
                 environ=env, sockets=(111,), cgroup="0::/system.slice/label-studio.service")
    ours = (8080, "label-studio.service", ME.pw_name, "/var/lib/label-studio", str(proc))
    assert instances.holder(*ours)[0] == "ours"
    # The same process outside the unit (e.g. the screen copy after a switch to systemd) is not ours yet.
    (proc / "70" / "cgroup").write_text("0::/user.slice/session-3.scope\n")
    assert instances.holder(*ours)[0] == "ours-elsewhere"
    # Screen mode names no unit: the service user and data dir make it ours.
    assert instances.holder(8080, "", ME.pw_name, "/var/lib/label-studio", str(proc))[0] == "ours"
    # Another data dir, or another user, is someone else's.
    assert instances.holder(8080, "label-studio.service", "nobody-else", "/var/lib/label-studio", str(proc))[0] == "other"
    assert instances.detect(8080, "label-studio.service", ME.pw_name, "/var/lib/label-studio", str(proc))["instances"] == []


def test_a_port_nobody_holds_is_free_and_a_stranger_is_named(proc):
    assert instances.holder(9999, "u.service", "labelstudio", "/d", str(proc))[0] == "free"
    make_process(proc, 80, ["/usr/bin/python3", "-m", "http.server", "8080"], sockets=(111,))
    state, said, pid = instances.holder(8080, "u.service", "labelstudio", "/d", str(proc))
    assert (state, pid) == ("other", 80) and "http.server" in said and "pid 80" in said


def unmanaged(**overrides) -> Unmanaged:
    values = dict(running=True, pid=60, user="ops", uid=1000, home="/home/ops", command=("label-studio", "start"),
                  venv="/home/ops/annotation/label-studio", version="1.22.0",
                  data_dir="/home/ops/.local/share/label-studio", data_dir_from="default",
                  database="/home/ops/.local/share/label-studio/label_studio.sqlite3", engine="sqlite",
                  listen=("0.0.0.0:8080",), screen_name="ls", database_size=4096, env_file=True,
                  media_files=2, media_bytes=10)
    values.update(overrides)
    return Unmanaged(**values)


def test_adopt_takes_one_plain_sqlite_instance():
    assert adopt.choose("vm", Neighbours(unmanaged=(unmanaged(),))).pid == 60


@pytest.mark.parametrize("overrides, words", [
    ({"engine": "postgresql"}, "PostgreSQL"),
    ({"user": "Bad User"}, "user name"),
    ({"data_dir": "/home/ops/my data", "database": "/home/ops/my data/label_studio.sqlite3"}, "data dir"),
    ({"database": "/srv/elsewhere.sqlite3"}, "outside its data dir"),
    ({"database_size": None}, "no database"),
])
def test_adopt_refuses_what_it_cannot_take_over_safely(overrides, words):
    with pytest.raises(UsageError, match=words):
        adopt.choose("vm", Neighbours(unmanaged=(unmanaged(**overrides),)))


def test_adopt_refuses_an_instance_newer_than_the_pin():
    with pytest.raises(UsageError, match="newer than the pinned 1.23.2"):
        adopt.choose("vm", Neighbours(unmanaged=(unmanaged(version="1.24.0"),)), "1.23.2")
    assert adopt.choose("vm", Neighbours(unmanaged=(unmanaged(version="1.22.0"),)), "1.23.2").version == "1.22.0"


def test_adopt_refuses_to_choose_between_two():
    with pytest.raises(UsageError, match="found 2 unmanaged"):
        adopt.choose("vm", Neighbours(unmanaged=(unmanaged(), unmanaged(pid=61, user="bob", home="/home/bob")))) 


def test_the_managed_data_may_be_replaced_only_when_it_holds_nothing():
    assert adopt.managed_data_problem({"users": 1, "projects": 0, "tasks": 0, "annotations": 0}) is None
    assert "2 project" in adopt.managed_data_problem({"users": 1, "projects": 2, "tasks": 0})


def test_counts_after_the_take_over_are_compared_with_the_snapshot():
    expected = {"users": 2, "projects": 2, "tasks": 46, "annotations": 12}
    assert adopt.count_mismatches(expected, dict(expected)) == []
    assert adopt.count_mismatches(expected, {**expected, "tasks": 45}) == ["tasks: 45 now, 46 in the snapshot"]


def test_the_plan_says_what_happens_to_an_older_release():
    from tasks.core.profile import Profile
    lines = adopt.plan_words(unmanaged(), Profile()).lines()
    text = "\n".join(lines)
    assert "Label Studio 1.22.0 -> " in text and "screen session `ls`" in text
    assert "leave the old files where they are (~ops/.local/share/label-studio" in text


def test_provision_refuses_beside_an_unmanaged_instance_or_on_a_strangers_port(bare):
    import dataclasses

    from tasks.core.provision.refusals import refuse_neighbours
    with pytest.raises(UsageError, match="fab -H vm adopt"):
        refuse_neighbours("vm", dataclasses.replace(bare, neighbours=Neighbours(unmanaged=(unmanaged(),))))
    stranger = Neighbours(port_state="other", port_said="port 8080 is held on 127.0.0.1 by pid 9, user www: nc -l",
                          port_pid=9)
    with pytest.raises(UsageError, match="nc -l"):
        refuse_neighbours("vm", dataclasses.replace(bare, neighbours=stranger))
    refuse_neighbours("vm", bare)  # nothing else there: no refusal


def test_without_access_to_fds_the_sockets_uid_names_the_only_label_studio_of_that_user(proc, monkeypatch):
    make_process(proc, 60, GUIDE_ARGV, uid=1000, environ={"HOME": "/home/ops"})
    # Readable fds that hold no such socket: its owner stays unknown (it is not guessed from the uid).
    assert instances.holder(8080, "u.service", "labelstudio", "/d", str(proc))[1].endswith("cannot see")
    # Unreadable fds (root without CAP_SYS_PTRACE): the kernel's socket table still says uid 1000.
    monkeypatch.setattr(instances, "fd_sockets", lambda pid, proc=instances.PROC: (set(), False))
    make_process(proc, 61, ["/usr/bin/python3", "-m", "http.server"], uid=1000)
    state, said, pid = instances.holder(8080, "u.service", "labelstudio", "/d", str(proc))
    assert (state, pid) == ("other", 60) and "label-studio start" in said
    make_process(proc, 62, GUIDE_ARGV + ["--port", "9000"], uid=1000)  # two of them: cannot tell which
    assert instances.holder(8080, "u.service", "labelstudio", "/d", str(proc))[1].endswith("cannot see")


HOSTILE_ENVIRON = {"PATH": "/home/u/venv/bin:/usr/bin:/bin", "VIRTUAL_ENV": "/home/u/venv", "HOME": "/home/u",
                   "LD_PRELOAD": "/home/u/evil.so", "LD_LIBRARY_PATH": "/home/u/lib", "GCONV_PATH": "/home/u/g",
                   "PYTHONPATH": "/home/u/py", "PYTHONSTARTUP": "/home/u/s.py", "-i": "x", "A B": "y"}


def test_the_record_keeps_no_variable_that_loads_code():
    kept = instances.revivable_environment(HOSTILE_ENVIRON)
    assert kept == {"PATH": HOSTILE_ENVIRON["PATH"], "VIRTUAL_ENV": "/home/u/venv", "HOME": "/home/u"}


def test_revive_starts_root_with_a_clean_environment_and_hands_variables_only_to_the_dropped_process(
        tmp_path, monkeypatch):
    record = {"user": ME.pw_name, "argv": ["/home/u/venv/bin/label-studio", "start"], "cwd": "/home/u",
              "environ": HOSTILE_ENVIRON, "screen": None}   # an old record, written before the filter
    record_path = tmp_path / "record.json"
    record_path.write_text(json.dumps(record))
    started = []
    monkeypatch.setattr(instances.subprocess, "run", lambda *a, **k: type("R", (), {"returncode": 1})())
    monkeypatch.setattr(instances.subprocess, "Popen", lambda command, **kw: started.append((command, kw)))
    instances.revive(str(record_path), str(tmp_path / "site"))
    (command, options), = started
    assert options["env"] == {"PATH": instances.ROOT_PATH}
    assert os.path.basename(command[0]) == "runuser" and command[1:4] == ["-u", ME.pw_name, "--"]
    after_drop = command[4:]
    assert os.path.basename(after_drop[0]) == "env" and after_drop[1:4] == ["-i", "-C", "/home/u"]
    assert not any(word.startswith(("LD_", "GCONV_", "PYTHON", "-i=")) for word in after_drop)
    assert command[-2:] == record["argv"]


def test_the_words_after_the_drop_give_the_process_only_the_kept_variables(tmp_path):
    """The part after runuser, run for real (GNU env), with `env` as the command: what the old process sees."""
    record = {"user": ME.pw_name, "argv": ["env"], "cwd": str(tmp_path), "environ": HOSTILE_ENVIRON, "screen": None}
    command = instances.revive_command(record)
    after_drop = command[command.index("--") + 1:]
    seen = subprocess.run(after_drop, capture_output=True, text=True, check=True,
                                        env={**os.environ, "LD_PRELOAD": "", "MARK": "root's"}).stdout
    assert sorted(seen.splitlines()) == sorted(f"{k}={v}" for k, v in instances.revivable_environment(HOSTILE_ENVIRON).items())


def test_roots_health_probe_never_follows_a_redirect():
    """A redirect is the answer: the probe (run as root) never goes where a listener points it."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                self.send_response(302)
                self.send_header("Location", "/elsewhere")
                self.end_headers()
            else:
                body = b'{"status": "UP"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert instances.http_get(f"{base}/elsewhere") == '200 {"status": "UP"}'
        assert instances.http_get(f"{base}/health", "labels.example.org") == "302 "
    finally:
        server.shutdown()
