"""Incremental backup and push on a provisioned VM: only changed pages travel, every snapshot is a
complete database, and anything that does not add up falls back to the whole file.

Annotations are made with Label Studio's official client (label-studio-sdk). This module keeps its
snapshots in a folder of its own (LSVM_BACKUPS_DIR), so its prune never touches another module's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dev.lsclient import LabelStudio
from tests.integration.support.databases import database_digest, server_database_digest
from tests.integration.support.labelstudio import api_token
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD

# Page deltas and the incremental logic do not depend on the Debian release: proven on Debian 13 only
# (CI time; test_data.py's backup and push run on both).
pytestmark = pytest.mark.one_release("trixie")


DB = "/var/lib/label-studio/label_studio.sqlite3"
UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def server_sha(machine) -> str:
    """What the server's database holds (WAL mode: its file's bytes change at checkpoints)."""
    return server_database_digest(machine.vm, DB)


def server_size(machine) -> int:
    return int(machine.vm.exec(f"stat -c %s {DB}").stdout.decode())


def on_the_wire(output: str, what: str) -> int:
    """Bytes on the wire from the `downloaded:`/`uploaded:` line(s) of a task's output, summed."""
    found = re.findall(rf"{what}: .*?, ([\d.]+) (B|KiB|MiB|GiB) on the wire\)", output)
    assert found, output
    return int(sum(float(n) * UNITS[unit] for n, unit in found))


def integrity(path: Path) -> str:
    """integrity_check by the sqlite3 command-line shell (not our code)."""
    return subprocess.run(["sqlite3", str(path), "PRAGMA integrity_check"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def backups_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("incremental-backups")


@pytest.fixture(scope="module")
def fab(data_vm, backups_dir):
    def run(*args, **kwargs):
        result = data_vm.fab(*args, env={"LSVM_BACKUPS_DIR": str(backups_dir)}, **kwargs)
        assert result.returncode == 0, result.stdout + result.stderr
        return result
    return run


def snapshots(backups_dir: Path) -> list[Path]:
    root = backups_dir / "vm"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@pytest.fixture(scope="module")
def sdk(data_vm):
    """Label Studio's official client, with a personal access token made for it."""
    from label_studio_sdk import LabelStudio as Official

    return Official(base_url=data_vm.url, api_key=api_token(data_vm))


@pytest.fixture(scope="module")
def corpus(data_vm, sdk):
    """A project with a few thousand tasks of varied text (about 5 MiB of database), made by the SDK;
    deleted afterwards, so the VM's other tests find the projects they made and no other."""
    project = sdk.projects.create(
        title="incremental",
        label_config='<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
                     '<Choice value="pos"/><Choice value="neg"/><Choice value="mixed"/></Choices></View>')
    words = Path("/usr/share/common-licenses/GPL-3").read_text().split()
    tasks = [{"text": " ".join(words[(i * 37) % (len(words) - 200):][:120 + i % 80]), "n": i} for i in range(3000)]
    sdk.projects.import_tasks(id=project.id, request=tasks)
    ids = [t.id for t in itertools.islice(sdk.tasks.list(project=project.id, page_size=100), 100)]
    assert len(ids) == 100
    yield {"project": project.id, "task_ids": ids}
    sdk.projects.delete(id=project.id)


def annotate(sdk, corpus: dict, count: int, choice: str) -> None:
    for task_id in corpus["task_ids"][:count]:
        sdk.annotations.create(id=task_id, result=[{"from_name": "label", "to_name": "text", "type": "choices",
                                                     "value": {"choices": [choice]}}])


def test_a_changed_database_moves_only_its_changed_pages(data_vm, fab, backups_dir, sdk, corpus):
    fab("backup", "--label", "base")
    annotate(sdk, corpus, 20, "pos")
    result = data_vm.fab("backup", "--label", "incr", env={"LSVM_BACKUPS_DIR": str(backups_dir), "LSVM_SSH_COUNT": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    # sudo's probe, the env file, the data lock, and the backup itself: one channel.
    assert "ssh commands to vm: 4" in result.stderr, result.stderr
    changed = re.search(r"database: (\d+) of (\d+) pages changed since (\S+);", result.stdout)
    assert changed, result.stdout + result.stderr
    pages, total = int(changed.group(1)), int(changed.group(2))
    assert 0 < pages <= total * 0.05
    size = server_size(data_vm)
    assert on_the_wire(result.stdout, "downloaded") <= size * 0.05

    snap = snapshots(backups_dir)[-1]
    assert snap.name.endswith("-incr")
    manifest = json.loads((snap / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "label_studio.sqlite3")
    # A complete, plain database, which the sqlite3 shell opens: the server's data, the bytes its copy had.
    assert sha256(snap / "label_studio.sqlite3") == entry["sha256"]
    assert database_digest(snap / "label_studio.sqlite3") == server_sha(data_vm)
    assert integrity(snap / "label_studio.sqlite3") == "ok" and manifest["integrity_check"] == "ok"
    con = sqlite3.connect(snap / "label_studio.sqlite3")
    assert con.execute("select count(*) from task_completion").fetchone()[0] >= 20
    con.close()


def test_a_backup_while_a_writer_writes_is_consistent(data_vm, fab, backups_dir, sdk, corpus):
    fab("backup")
    stop = threading.Event()
    written = []

    def writer():
        while not stop.is_set():
            sdk.projects.import_tasks(id=corpus["project"], request=[{"text": f"busy {len(written)} {i}"}
                                                                     for i in range(20)])
            written.append(1)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while not written:  # the writer is really writing before the backup starts
            time.sleep(0.05)
        result = fab("backup", "--label", "busy")
    finally:
        stop.set()
        thread.join()
    snap = snapshots(backups_dir)[-1]
    assert snap.name.endswith("-busy")
    assert "pages changed since" in result.stdout, result.stdout
    assert integrity(snap / "label_studio.sqlite3") == "ok"
    assert json.loads((snap / "manifest.json").read_text())["integrity_check"] == "ok"


def test_a_damaged_base_snapshot_is_detected_and_the_whole_database_comes(data_vm, fab, backups_dir, sdk,
                                                                          corpus):
    fab("backup", "--label", "clean")
    base = snapshots(backups_dir)[-1] / "label_studio.sqlite3"
    pages = base.stat().st_size // 4096
    with open(base, "r+b") as handle:  # a page of imported task text, which annotating does not touch
        handle.seek((pages // 2) * 4096 + 100)
        handle.write(b"\xde\xad\xbe\xef" * 8)
    annotate(sdk, corpus, 3, "neg")
    result = fab("backup", "--label", "after-damage")
    assert "is damaged (its sha256 differs from its manifest): fetching the whole database instead" in result.stderr
    snap = snapshots(backups_dir)[-1]
    assert database_digest(snap / "label_studio.sqlite3") == server_sha(data_vm)
    assert integrity(snap / "label_studio.sqlite3") == "ok"
    # The next backup builds on the good snapshot again.
    annotate(sdk, corpus, 2, "mixed")
    again = fab("backup")
    assert "pages changed since " + snap.name in again.stdout


def test_a_snapshot_whose_base_was_pruned_still_restores(data_vm, fab, backups_dir, sdk, corpus, tmp_path):
    annotate(sdk, corpus, 2, "pos")
    fab("backup", "--label", "last")
    newest = snapshots(backups_dir)[-1]
    fab("prune", "--keep-last", "1", "--keep-daily", "0", "--keep-weekly", "0", "--yes")
    assert snapshots(backups_dir) == [newest]
    local = tmp_path / "restored"
    fab("restore-local", "--snapshot", newest.name, "--yes", "--local-data-dir", str(local))
    manifest = json.loads((newest / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "label_studio.sqlite3")
    assert sha256(local / "label_studio.sqlite3") == entry["sha256"]
    assert integrity(local / "label_studio.sqlite3") == "ok"


def test_push_after_a_pull_sends_only_the_pages_that_differ_and_round_trips(data_vm, fab, corpus, tmp_path):
    local = tmp_path / "mine"
    fab("pull-server-db", "--yes", "--local-data-dir", str(local))
    con = sqlite3.connect(local / "label_studio.sqlite3")  # local work: a few tasks edited
    con.execute("update task set data = json_set(data, '$.text', 'edited here ' || id) where id in "
                f"({','.join(map(str, corpus['task_ids'][:10]))})")
    con.commit()
    con.close()
    pushed = database_digest(local / "label_studio.sqlite3")
    result = fab("push-local-db", "--yes", "--local-data-dir", str(local))
    differ = re.search(r"database: (\d+) of (\d+) pages differ from the server's; only those are sent", result.stdout)
    assert differ, result.stdout + result.stderr
    assert 0 < int(differ.group(1)) <= int(differ.group(2)) * 0.05
    assert on_the_wire(result.stdout, "uploaded") <= server_size(data_vm) * 0.05
    assert server_sha(data_vm) == pushed

    again = tmp_path / "again"
    fab("pull-server-db", "--yes", "--local-data-dir", str(again))
    assert database_digest(again / "label_studio.sqlite3") == pushed
    task = corpus["task_ids"][0]
    ls = LabelStudio(data_vm.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert ls.get(f"/api/tasks/{task}").json()["data"]["text"] == f"edited here {task}"


def test_a_database_of_another_history_goes_whole_and_safely(data_vm, fab, tmp_path):
    local = tmp_path / "other"
    fab("pull-server-db", "--yes", "--local-data-dir", str(local))
    con = sqlite3.connect(local / "label_studio.sqlite3")  # every page moves: another page size
    con.execute("PRAGMA page_size = 8192")
    con.execute("VACUUM")
    con.close()
    pushed = database_digest(local / "label_studio.sqlite3")
    result = fab("push-local-db", "--yes", "--local-data-dir", str(local))
    assert "whole database sent: the page size changed" in result.stdout, result.stdout
    assert server_sha(data_vm) == pushed
    assert integrity(local / "label_studio.sqlite3") == "ok"


# ------------------------------------------------------------------------------------------------
# The check runs here, never on the server; nothing uses a snapshot before it passes


def manifest_of(snap: Path) -> dict:
    return json.loads((snap / "manifest.json").read_text())


def make_pending(snap: Path, *, damage: bool) -> None:
    """The snapshot as a backup leaves it before its check (stored, proven byte-identical, unchecked);
    with `damage`, its bytes then changed on this machine's disk (a page of imported task text)."""
    manifest = manifest_of(snap)
    manifest["integrity_check"] = "pending"
    manifest["counts"] = {}
    manifest["extra"].pop("check", None)
    (snap / "manifest.json").write_text(json.dumps(manifest))
    if damage:
        database = snap / "label_studio.sqlite3"
        pages = database.stat().st_size // 4096
        with open(database, "r+b") as handle:
            handle.seek((pages // 2) * 4096 + 100)
            handle.write(b"\xde\xad\xbe\xef" * 8)


def listed_states(data_vm, backups_dir: Path) -> dict[str, str]:
    run = data_vm.fab("backups", "--json", env={"LSVM_BACKUPS_DIR": str(backups_dir)})
    assert run.returncode == 0, run.stderr
    return {r["id"]: r["state"] for r in json.loads(run.stdout)}


def test_a_backup_is_checked_on_this_machine_and_no_wait_hands_the_check_to_a_background_process(
        data_vm, fab, backups_dir, sdk, corpus, tmp_path):
    annotate(sdk, corpus, 2, "neg")
    waited = fab("backup", "--label", "waited")
    snap = snapshots(backups_dir)[-1]
    check = manifest_of(snap)["extra"]["check"]
    assert check["on"] == "this machine" and manifest_of(snap)["integrity_check"] == "ok"
    assert f"checked {snap.name} on this machine" in waited.stdout
    # The server only copied and hashed: nothing of an integrity_check ran or was left there.
    assert "check.json" not in data_vm.vm.exec("find /var/tmp /tmp -name 'check.*' -o -name 'hash.*'").stdout.decode()

    annotate(sdk, corpus, 2, "pos")
    result = fab("backup", "--label", "nowait", "--no-wait")
    assert "its check runs in the background" in result.stdout
    snap = snapshots(backups_dir)[-1]
    assert snap.name.endswith("-nowait")
    local = tmp_path / "restored"
    restored = fab("restore-local", "--snapshot", snap.name, "--yes", "--local-data-dir", str(local))
    manifest = manifest_of(snap)
    assert manifest["integrity_check"] == "ok" and manifest["counts"]["annotations"] >= 4, restored.stdout
    assert manifest["extra"]["check"]["by"] in ("backup --no-wait (in the background)", "a restore")
    assert sha256(local / "label_studio.sqlite3") == next(
        f["sha256"] for f in manifest["files"] if f["path"] == "label_studio.sqlite3")
    assert listed_states(data_vm, backups_dir)[snap.name] == "verified"


def test_a_pending_snapshot_is_checked_before_any_use_and_a_damaged_one_ends_failed_and_unused(
        data_vm, fab, backups_dir, sdk, corpus, tmp_path):
    annotate(sdk, corpus, 2, "mixed")
    fab("backup", "--label", "good")
    good = snapshots(backups_dir)[-1]
    annotate(sdk, corpus, 3, "neg")
    fab("backup", "--label", "to-damage")
    damaged = snapshots(backups_dir)[-1]

    # Pending and intact: a dry-run restore-server checks it first, and it is verified from then on.
    make_pending(good, damage=False)
    assert listed_states(data_vm, backups_dir)[good.name] == "pending"
    dry = fab("restore-server", "--snapshot", good.name, "--dry-run")
    assert f"checked {good.name} on this machine" in dry.stdout + dry.stderr
    assert manifest_of(good)["integrity_check"] == "ok"

    # Pending and damaged on this disk: every consumer refuses it, and it ends failed.
    make_pending(damaged, damage=True)
    env = {"LSVM_BACKUPS_DIR": str(backups_dir)}
    local = tmp_path / "never"
    refused = data_vm.fab("restore-local", "--snapshot", damaged.name, "--yes", "--local-data-dir", str(local),
                          env=env)
    assert refused.returncode == 6 and "failed its check" in refused.stderr, refused.stdout + refused.stderr
    assert "sha256 differs" in manifest_of(damaged)["integrity_check"] and not local.exists()
    for args in (("push-local-db", "--snapshot", damaged.name, "--yes"),
                 ("restore-server", "--snapshot", damaged.name, "--yes")):
        run = data_vm.fab(*args, env=env)
        assert run.returncode == 6 and "failed" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert listed_states(data_vm, backups_dir)[damaged.name] == "failed"

    # The next backup builds on the newest verified snapshot, not the failed one; prune keeps that one.
    annotate(sdk, corpus, 2, "pos")
    again = fab("backup", "--label", "after-failed")
    assert f"pages changed since {good.name}" in again.stdout, again.stdout
    newest = snapshots(backups_dir)[-1]
    assert database_digest(newest / "label_studio.sqlite3") == server_sha(data_vm)
    make_pending(newest, damage=False)
    plan = fab("prune", "--keep-last", "0", "--keep-daily", "0", "--keep-weekly", "0", "--dry-run")
    assert f"keep    {good.name}  (newest verified)" in plan.stdout, plan.stdout
    assert f"keep    {newest.name}  (its check has not run yet)" in plan.stdout
    assert f"delete  {damaged.name}" in plan.stdout


@pytest.fixture(scope="module")
def xfs_dir(tmp_path_factory):
    """A folder on XFS (reflinks), in a loop device on this machine, gone afterwards."""
    root = tmp_path_factory.mktemp("xfs")
    image, mount = root / "xfs.img", root / "mnt"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "1G", str(image)], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def disk_use(data_vm, backups_dir: Path) -> dict[str, tuple[int, int]]:
    run = data_vm.fab("backups", "--json", env={"LSVM_BACKUPS_DIR": str(backups_dir)})
    assert run.returncode == 0, run.stderr
    return {r["id"]: (r["size_bytes"], r["disk_bytes"]) for r in json.loads(run.stdout)}


def test_incremental_snapshots_share_unchanged_blocks_on_xfs_and_not_on_ext4(data_vm, sdk, corpus, xfs_dir,
                                                                             tmp_path):
    ext4 = tmp_path / "ext4-backups"
    assert subprocess.run(["stat", "-f", "-c", "%T", str(xfs_dir)], capture_output=True, text=True).stdout.strip() == "xfs"
    assert subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip() != "xfs"
    for folder in (xfs_dir, ext4):
        env = {"LSVM_BACKUPS_DIR": str(folder)}
        assert data_vm.fab("backup", "--no-media", env=env).returncode == 0
    annotate(sdk, corpus, 3, "pos")
    for folder in (xfs_dir, ext4):
        run = data_vm.fab("backup", "--no-media", env={"LSVM_BACKUPS_DIR": str(folder)})
        assert run.returncode == 0 and "pages changed since" in run.stdout, run.stdout + run.stderr
    on_xfs, on_ext4 = (list(disk_use(data_vm, folder).values()) for folder in (xfs_dir, ext4))
    database = server_size(data_vm)
    # First snapshots: the whole database on both. Second: on XFS only its changed pages (and the page
    # index), on ext4 a whole copy again.
    assert on_xfs[0][1] >= database * 0.9 and on_ext4[0][1] >= database * 0.9
    assert on_xfs[1][1] <= database * 0.2, on_xfs
    assert on_ext4[1][1] >= database * 0.9, on_ext4
    for folder in (xfs_dir, ext4):   # both plain, complete databases
        newest = sorted(p for p in (folder / "vm").iterdir() if p.is_dir())[-1]
        assert integrity(newest / "label_studio.sqlite3") == "ok"
        assert database_digest(newest / "label_studio.sqlite3") == server_sha(data_vm)
    shown = data_vm.fab("backups", env={"LSVM_BACKUPS_DIR": str(xfs_dir)})
    assert "on disk" in shown.stdout
