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
    result = fab("backup", "--label", "incr")
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
