"""The data tasks against a service user that turned hostile, on a provisioned VM with the real Label
Studio. `labelstudio` owns the data dir and everything in it (anyone with code execution in Label Studio
is that user); the toolkit runs root scripts there. Files and links are planted as that user:

- media names with a newline and the old heredoc marker, quotes, `$(...)`, non-UTF-8 bytes: nothing runs,
  the backup keeps them byte-identical and a restore brings them back;
- the media folder swapped for a link to /etc: nothing from /etc lands in a snapshot;
- the laptop killed (`kill -9`) right after the stop of a push: the server ends serving old or new data,
  never neither, and the next push works; an unfinished swap's set-aside data is never deleted;
- another local user holding the old lock file in world-writable /run/lock blocks nothing.

Each test leaves the server serving; none relies on another.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shlex
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dev.lsclient import LabelStudio, wait_for_health
from tests.integration.support.databases import leftovers_in_data_dir, server_database_digest
from tests.integration.support.labelstudio import project_titles
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD

DATA = "/var/lib/label-studio"
DB = f"{DATA}/label_studio.sqlite3"
TRUST = "media/upload/lsvm-trust"
# Relative to TRUST, as the file system spells them. The first is folders too: "x\nLSVM_EOF\ntouch " /
# "tmp" / "pwned": pasted into the old heredoc, its last line ran as root.
HOSTILE = [b"x\nLSVM_EOF\ntouch /tmp/pwned", b"q'\"$(touch /tmp/pwned2)`id`;.png", b"two\nlines.png", b"LSVM_EOF",
           b"-n"]
NOT_UTF8 = [b"caf\xe9-latin1.png", b"\xff\xfe\n.png"]
PLANT = """
import json, os, sys
for name, content in json.load(sys.stdin):
    path = os.path.join(sys.argv[1].encode(), bytes.fromhex(name))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(bytes.fromhex(content))
"""
LISTING = """
import hashlib, json, os, sys
root = sys.argv[1].encode()
found = {}
for folder, _, names in os.walk(root):
    for name in names:
        path = os.path.join(folder, name)
        found[os.path.relpath(path, root).hex()] = hashlib.sha256(open(path, "rb").read()).hexdigest()
print(json.dumps(found))
"""


def as_labelstudio(vm, command: str, **kwargs) -> subprocess.CompletedProcess:
    return vm.exec(f"runuser -u labelstudio -- sh -c {shlex.quote(command)}", **kwargs)


def snapshots_of(machine) -> list[Path]:
    root = machine.fab.home / "backups" / "vm"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def manifest_paths(snap: Path) -> list[bytes]:
    """The manifest's file names as bytes (json keeps non-UTF-8 bytes as surrogates)."""
    files = json.loads((snap / "manifest.json").read_text())["files"]
    return [f["path"].encode("utf-8", "surrogateescape") for f in files]


def server_media(vm) -> dict[bytes, str]:
    out = vm.exec(f"python3 -c {shlex.quote(LISTING)} {DATA}/{TRUST}").stdout.decode()
    return {bytes.fromhex(k): v for k, v in json.loads(out).items()}


def pwned(vm) -> bool:
    return vm.exec("test -e /tmp/pwned || test -e /tmp/pwned2", check=False).returncode == 0


def fab_process(machine, *args) -> subprocess.Popen:
    """`fab -H vm ARGS` running in the background, its output unbuffered (read as it comes)."""
    return machine.fab.popen(*args, env={"PYTHONUNBUFFERED": "1"}, merge_stderr=True)


def no_leftovers(vm) -> None:
    assert leftovers_in_data_dir(vm, DATA) == []
    assert vm.exec(f"find {DATA} ! -user labelstudio").stdout.decode() == ""  # nothing root's in there


@pytest.fixture(scope="module")
def local_copy(data_vm, tmp_path_factory) -> Path:
    """The server's data pulled here (with at least project `trust-old`)."""
    ls = LabelStudio(data_vm.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    if "trust-old" not in project_titles(data_vm):
        ls.create_project("trust-old")
    local = tmp_path_factory.mktemp("trust") / "local"
    pulled = data_vm.fab("pull-server-db", "--yes", "--local-data-dir", str(local))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    return local


def renamed_copy(local_copy: Path, folder: Path, title: str) -> tuple[Path, list[str]]:
    """A copy of the pulled data whose first project is called `title` (a push of it is told apart from
    the server's data by the titles): the folder and its titles."""
    shutil.copytree(local_copy, folder)
    con = sqlite3.connect(folder / "label_studio.sqlite3")
    con.execute("update project set title = ? where id = (select min(id) from project)", (title,))
    con.commit()
    found = sorted(t for (t,) in con.execute("select title from project"))
    con.close()
    return folder, found


def round_trip(machine, names: list[bytes], label: str) -> None:
    """Media files with these names (planted by the service user) run nothing as root, land in a backup
    byte-identical, and come back from it by restore-server, byte-identical and the service user's."""
    vm = machine.vm
    vm.exec("rm -f /tmp/pwned /tmp/pwned2")
    planted = {name: os.urandom(2000) for name in names}
    as_labelstudio(vm, f"python3 -c {shlex.quote(PLANT)} {DATA}/{TRUST}",
                   input=json.dumps([[n.hex(), c.hex()] for n, c in planted.items()]).encode())
    try:
        result = machine.fab("backup", "--label", label)
        assert not pwned(vm), "a media name ran a command as root"
        assert result.returncode == 0, result.stdout + result.stderr
        snap = snapshots_of(machine)[-1]
        assert snap.name.endswith(f"-{label}")
        in_manifest = manifest_paths(snap)
        for name, content in planted.items():
            assert f"{TRUST}/".encode() + name in in_manifest
            assert Path(os.fsdecode(os.fsencode(snap) + f"/{TRUST}/".encode() + name)).read_bytes() == content

        as_labelstudio(vm, f"rm -rf {DATA}/{TRUST}")
        restored = machine.fab("restore-server", "--snapshot", snap.name, "--yes")
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert server_media(vm) == {n: hashlib.sha256(c).hexdigest() for n, c in planted.items()}
        assert not pwned(vm)
        no_leftovers(vm)
        assert wait_for_health(machine.url, timeout=60) == {"status": "UP"}
    finally:
        as_labelstudio(vm, f"rm -rf {DATA}/{TRUST}")
        vm.exec("rm -f /tmp/pwned /tmp/pwned2")


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_media_names_full_of_shell_syntax_run_nothing_and_back_up_and_restore_byte_identical(data_vm):
    round_trip(data_vm, HOSTILE, "shell-names")


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_media_names_that_are_not_utf8_back_up_and_restore_byte_identical(data_vm):
    round_trip(data_vm, NOT_UTF8, "not-utf8-names")


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_media_swapped_for_a_link_to_etc_brings_nothing_from_etc(data_vm):
    vm = data_vm.vm
    shadow = vm.exec("cat /etc/shadow").stdout
    as_labelstudio(vm, f"mkdir -p {DATA}/media/upload && mv {DATA}/media {DATA}/media.lsvm-real && ln -s /etc {DATA}/media")
    try:
        whole = data_vm.fab("backup", "--label", "etc-link")
    finally:
        as_labelstudio(vm, f"rm {DATA}/media && mv {DATA}/media.lsvm-real {DATA}/media")
    as_labelstudio(vm, f"ln -s /etc {DATA}/media/upload/lsvm-etc")
    try:
        below = data_vm.fab("backup", "--label", "etc-link-below")
    finally:
        as_labelstudio(vm, f"rm {DATA}/media/upload/lsvm-etc")
    for result, label, outside in ((whole, "etc-link", b"media/"), (below, "etc-link-below", b"media/upload/lsvm-etc")):
        assert result.returncode == 0, result.stdout + result.stderr
        snap = [s for s in snapshots_of(data_vm) if s.name.endswith(f"-{label}")][-1]
        assert not [p for p in manifest_paths(snap) if p.startswith(outside)]
        for path in snap.rglob("*"):
            assert not path.is_file() or path.read_bytes() != shadow, path
        if label == "etc-link":
            assert not (snap / "media").exists()


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_a_forged_page_index_and_a_linked_index_folder_never_give_a_wrong_snapshot(data_vm):
    """The page indexes the server keeps are the service user's: forged ones only change which pages
    travel (the sha256 of the copy decides), and the folder swapped for a link writes nothing there."""
    vm = data_vm.vm
    assert data_vm.fab("backup").returncode == 0
    # The kept index rewritten to say that no page changed since: the server sends no page at all.
    forge = ("import glob, sqlite3, xxhash\n"
             f"src = sqlite3.connect('{DB}')\n"
             "src.execute('update htx_user set last_name = hex(randomblob(8)) where id = (select min(id) from htx_user)')\n"
             "src.commit()\n"
             "dst = sqlite3.connect('/tmp/now.db'); src.backup(dst); dst.close()\n"
             "data = open('/tmp/now.db', 'rb').read()\n"
             f"for path in glob.glob('{DATA}/.lsvm-pages/*.pages'):\n"
             "    head = open(path, 'rb').read()[:22]\n"
             "    size = int.from_bytes(head[18:22], 'big')\n"
             "    open(path, 'wb').write(head + b''.join(xxhash.xxh3_64_digest(data[i:i + size])\n"
             "                                           for i in range(0, len(data), size)))\n")
    as_labelstudio(vm, "cd /tmp && python3 - && rm -f /tmp/now.db", input=forge.encode())
    forged = data_vm.fab("backup", "--label", "forged-index")
    assert forged.returncode == 0, forged.stdout + forged.stderr
    assert "fetching the whole database instead" in forged.stderr, forged.stdout + forged.stderr
    snap = snapshots_of(data_vm)[-1]
    manifest = json.loads((snap / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "label_studio.sqlite3")
    assert hashlib.sha256((snap / "label_studio.sqlite3").read_bytes()).hexdigest() == entry["sha256"]
    assert manifest["integrity_check"] == "ok"
    as_labelstudio(vm, f"rm -rf {DATA}/.lsvm-pages && ln -s /etc {DATA}/.lsvm-pages")
    as_labelstudio(vm, f"sqlite3 {DB} 'update htx_user set last_name = hex(randomblob(8)) where id = (select min(id) from htx_user)'")
    try:
        before = vm.exec("ls -A /etc").stdout
        linked = data_vm.fab("backup", "--label", "linked-index")
        assert linked.returncode == 0, linked.stdout + linked.stderr
        assert vm.exec("ls -A /etc").stdout == before        # nothing written there
    finally:
        as_labelstudio(vm, f"rm -f {DATA}/.lsvm-pages")
    assert json.loads((snapshots_of(data_vm)[-1] / "manifest.json").read_text())["integrity_check"] == "ok"


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_the_old_lock_file_held_by_another_local_user_blocks_nothing(data_vm):
    vm = data_vm.vm
    vm.exec("id mallory >/dev/null 2>&1 || useradd --create-home mallory")
    old = "/run/lock/label-studio-data.lock"
    pid = vm.exec(f"setsid runuser -u mallory -- sh -c 'printf \"prune by nobody\\n\" > {old}.owner; "
                  f"exec flock {old} sleep 600' </dev/null >/dev/null 2>&1 & echo $!").stdout.decode().strip()
    try:
        deadline = time.monotonic() + 30
        while vm.exec(f"flock -n {old} true", check=False).returncode == 0:
            assert time.monotonic() < deadline, "mallory never took the old lock"
            time.sleep(0.1)
        result = data_vm.fab("backup", "--label", "old-lock-held")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "busy" not in result.stderr
        # The lock lives where only root goes.
        assert vm.exec("stat -c '%a %U' /run/lsvm").stdout.decode().split() == ["700", "root"]
        assert vm.exec("runuser -u mallory -- ls /run/lsvm", check=False).returncode != 0
        assert vm.exec("runuser -u labelstudio -- ls /run/lsvm", check=False).returncode != 0
    finally:
        vm.exec(f"kill -- -{int(pid)}", check=False)


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_a_push_never_deletes_the_previous_data_of_a_swap_that_did_not_finish(data_vm, local_copy):
    vm = data_vm.vm
    before = server_database_digest(vm, DB)
    as_labelstudio(vm, f"mkdir {DATA}/.lsvm-previous && echo 'the only copy' > {DATA}/.lsvm-previous/label_studio.sqlite3")
    try:
        result = data_vm.fab("push-local-db", "--yes", "--local-data-dir", str(local_copy))
        assert result.returncode == 5, result.stdout + result.stderr
        assert "did not finish" in result.stderr and ".lsvm-previous" in result.stderr
        assert vm.exec(f"cat {DATA}/.lsvm-previous/label_studio.sqlite3").stdout == b"the only copy\n"
        assert server_database_digest(vm, DB) == before
    finally:
        as_labelstudio(vm, f"rm -rf {DATA}/.lsvm-previous")
    assert wait_for_health(data_vm.url, timeout=60) == {"status": "UP"}


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_killing_the_laptop_right_after_the_stop_leaves_the_server_serving(data_vm, local_copy, tmp_path):
    vm = data_vm.vm
    before = project_titles(data_vm)
    local, after = renamed_copy(local_copy, tmp_path / "local", "trust-after-kill")
    push = fab_process(data_vm, "push-local-db", "--yes", "--local-data-dir", str(local))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in push.stdout], daemon=True).start()
    seen = []
    deadline = time.monotonic() + 600
    while not any("stopped Label Studio" in line for line in seen):
        assert time.monotonic() < deadline and push.poll() is None, "".join(seen)
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            pass
    push.kill()  # the laptop dies right after the stop: its SSH connection drops mid-swap
    push.wait()
    swap_lock = "/run/lsvm/label-studio-swap.lock"
    mid_swap = vm.exec(f"[ -e {swap_lock} ] && ! flock -n -s {swap_lock} true", check=False).returncode == 0

    # The server comes back on its own, with the old data or the new, never neither.
    assert wait_for_health(data_vm.url, timeout=300) == {"status": "UP"}
    assert project_titles(data_vm) in (before, after)

    # The next push works (busy, and says why, while the server's swap job is still finishing).
    deadline = time.monotonic() + 300
    while True:
        again = data_vm.fab("push-local-db", "--yes", "--local-data-dir", str(local))
        if again.returncode != 7 or time.monotonic() > deadline:
            break
        assert "a data swap is still finishing" in again.stderr, again.stderr
    assert again.returncode == 0, again.stdout + again.stderr
    assert project_titles(data_vm) == after
    no_leftovers(vm)
    assert mid_swap, "the kill came after the swap job had ended: nothing was proven"


def test_screen_mode_with_a_sudo_password_swaps_on_the_server_and_leaves_no_lock_held(screen_provisioned, tmp_path):
    machine, vm = screen_provisioned, screen_provisioned.vm

    def fab(*args):
        return machine.fab(*args, host="vm-student")

    ls = LabelStudio(machine.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    if "screen-old" not in project_titles(machine):
        ls.create_project("screen-old")
    pulled = fab("pull-server-db", "--yes", "--local-data-dir", str(tmp_path / "pulled"))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    local, after = renamed_copy(tmp_path / "pulled", tmp_path / "local", "screen-new")
    old_pid = vm.exec("ps -o pid= -C gunicorn").stdout.decode().split()
    assert old_pid  # the master and its workers

    result = fab("push-local-db", "--yes", "--local-data-dir", str(local))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stopped Label Studio" in result.stdout and "Label Studio is up with the new data" in result.stdout
    assert project_titles(machine) == after
    assert not set(old_pid) & set(vm.exec("ps -o pid= -C gunicorn").stdout.decode().split())
    # The screen session the swap job started holds nothing of the job's: the next data task runs.
    again = fab("backup", "--label", "after-screen-push")
    assert again.returncode == 0, again.stdout + again.stderr
    no_leftovers(vm)
