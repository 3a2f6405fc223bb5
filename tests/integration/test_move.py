"""Moving to a new VM: a snapshot of one server restored onto another (`restore-server --snapshot
OLD/ID`), or taken from it there and then (`--from OLD`). The new VM keeps its own URL and settings;
users, passwords, API tokens, SECRET_KEY, data and media come along; onto a fresh VM with PostgreSQL the
SQLite data is converted on the way (and a laptop's push too). Read back with Label Studio's official SDK
and a plain login, through the new VM's nginx."""

from __future__ import annotations

import json
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

pytestmark = pytest.mark.one_release("trixie")

from dev.lsclient import LabelStudio
from dev.testvm.image import NOPASSWD_USER
from tests.integration.support.fab import Fab
from tests.integration.support.labelstudio import LABEL_CONFIG, png, sdk_view
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, provisioned_clone


@dataclass
class TwoServers(Fab):
    """`fab` with an ssh_config naming both servers: `new` (-H) and `old` (the one moved away from)."""

    old_vm: object = None  # the old server's TestVM (a TestVM name here would be collected by pytest)

    def ssh_config(self):
        path = self.home / "ssh_config"
        path.write_text(self.vm.ssh_config("new", NOPASSWD_USER) + self.old_vm.ssh_config("old", NOPASSWD_USER))
        return path


def annotate(ls: LabelStudio, project: int, tasks: list[dict], choice: str) -> None:
    for task in tasks:
        assert ls.post_json(f"/api/tasks/{task['id']}/annotations", {"result": [{
            "from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}]}).status == 201


def both_clones(provisioned, home):
    """The old and the new VM, provisioned side by side (CI time), each from a fab home of its own."""
    with ThreadPoolExecutor(2) as pool:
        made = [pool.submit(provisioned_clone, provisioned, home / name, name) for name in ("old", "new")]
    machines = [future.result() for future in made if future.exception() is None]
    if len(machines) < 2:
        for machine in machines:
            machine.vm.stop()
        raise next(future.exception() for future in made if future.exception() is not None)
    return machines


@pytest.fixture(scope="module")
def servers(provisioned, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"home-move-{provisioned.suite}")
    old, new = both_clones(provisioned, home)
    try:
        ls = LabelStudio(old.url)
        assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        project = ls.post_json("/api/projects", {"title": "Made on the old VM", "label_config": LABEL_CONFIG}).json()["id"]
        tasks = [{"text": f"review {i}: {'good' if i % 3 else 'bad'} service"} for i in range(25)]
        assert ls.import_file(project, "tasks.json", json.dumps(tasks).encode()).status == 201
        old.tasks = ls.get(f"/api/tasks?project={project}&page_size=100").json()["tasks"]
        annotate(ls, project, old.tasks[:6], "pos")
        assert ls.import_file(project, "photo.png", png()).status == 201
        old.token = ls.post_json("/api/token/", {}).json()["token"]
        old.project = project
        old.image = next(v for t in ls.get(f"/api/tasks?project={project}&page_size=100").json()["tasks"]
                         for v in t["data"].values() if isinstance(v, str) and "/data/upload/" in v)
        # The new VM already serves a project of its own: the move replaces it (after a backup).
        mine = LabelStudio(new.url)
        assert mine.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        mine.post_json("/api/projects", {"title": "Only on the new VM", "label_config": LABEL_CONFIG})
        fab = TwoServers(new.vm, home, old_vm=old.vm)
        yield old, new, fab
    finally:
        old.vm.stop()
        new.vm.stop()


def move(fab: TwoServers, new, *args: str):
    return fab("restore-server", "--config", str(new.profile), *args, host="new")


def snapshot_ids(fab: TwoServers, host: str) -> list[str]:
    folder = fab.home / "backups" / host
    return sorted(p.name for p in folder.iterdir() if (p / "manifest.json").is_file()) if folder.is_dir() else []


def test_refusals_change_nothing(servers):
    old, new, fab = servers
    itself = move(fab, new, "--from", "new", "--yes")
    assert itself.returncode == 2 and "names the server being restored" in itself.stderr, itself.stderr
    missing = move(fab, new, "--snapshot", "old/20990101T000000Z", "--yes")
    assert missing.returncode != 0 and "no snapshot '20990101T000000Z'" in missing.stderr, missing.stderr
    neither = move(fab, new, "--yes")
    assert neither.returncode == 2 and "--from OTHERHOST" in neither.stderr
    ls = LabelStudio(new.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert [p["title"] for p in ls.get("/api/projects").json()["results"]] == ["Only on the new VM"]


def test_a_stored_snapshot_of_the_old_vm_moves_onto_the_new_one(servers):
    old, new, fab = servers
    backup = fab("backup", "--config", str(old.profile), host="old")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    [taken] = snapshot_ids(fab, "old")
    before = sdk_view(old.url, old.token)

    dry = move(fab, new, "--snapshot", f"old/{taken[:12]}", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"move old/{taken} -> new" in dry.stdout and "SECRET_KEY come from old" in dry.stdout
    assert "nothing was changed" in dry.stdout

    result = move(fab, new, "--snapshot", f"old/{taken}", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    # The old VM's token and password work on the new VM (SECRET_KEY and users came along) ...
    assert sdk_view(new.url, old.token) == before
    ls = LabelStudio(new.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    # ... the uploaded image is served by the new VM's nginx, byte for byte ...
    image = ls.get(old.image)
    assert image.status == 200 and image.body == png()
    # ... the new VM's own settings stayed: its env file still names its own URL.
    env = new.vm.exec("cat /opt/label-studio/label-studio.env").stdout.decode()
    assert f"LABEL_STUDIO_HOST={new.url}" in env
    # What the new VM held before is kept as a snapshot of its own.
    assert any(i.endswith("-pre-restore") for i in snapshot_ids(fab, "new"))
    assert "Only on the new VM" not in before["projects"]


def test_from_takes_the_old_vms_latest_state_there_and_then(servers):
    old, new, fab = servers
    ls = LabelStudio(old.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    annotate(ls, old.project, old.tasks[6:9], "neg")  # work done on the old VM after the first move
    before = sdk_view(old.url, old.token)
    result = move(fab, new, "--from", "old", "--from-config", str(old.profile), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "old backed up as" in result.stdout
    assert any(i.endswith("-move") for i in snapshot_ids(fab, "old"))
    after = sdk_view(new.url, old.token)
    assert after == before and after["annotations"] == 9


def annotation_results(url: str, token: str) -> list:
    """Every task's data and its annotations' results, in task order, as the official SDK reads them."""
    from label_studio_sdk import LabelStudio as SDK
    client = SDK(base_url=url, api_key=token)
    found = []
    for project in sorted(client.projects.list(), key=lambda p: p.title):
        for task in sorted(client.tasks.list(project=project.id), key=lambda t: t.id):
            found.append((project.title, task.data, sorted(json.dumps(a.result, sort_keys=True)
                                                           for a in client.annotations.list(id=task.id))))
    return found


@pytest.fixture(scope="module")
def postgresql_vm(servers, postgres_provisioned, tmp_path_factory):
    """A third VM as a fresh provision with `database: {engine: postgresql}` leaves it."""
    old, _, _ = servers
    home = tmp_path_factory.mktemp(f"home-move-pg-{postgres_provisioned.suite}")
    machine = provisioned_clone(postgres_provisioned, home, "pgvm")
    try:
        yield machine, TwoServers(machine.vm, home, old_vm=old.vm)
    finally:
        machine.vm.stop()


def test_a_sqlite_vm_moves_onto_a_fresh_postgresql_vm_converted_and_verified(servers, postgresql_vm, tmp_path):
    old, _, _ = servers
    machine, fab = postgresql_vm
    before, results = sdk_view(old.url, old.token), annotation_results(old.url, old.token)

    result = move(fab, machine, "--from", "old", "--from-config", str(old.profile), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SQLite -> PostgreSQL" in result.stdout and "verified" in result.stdout
    # Identical data, read through the new VM's nginx with the old VM's token (users and SECRET_KEY came along).
    assert sdk_view(machine.url, old.token) == before
    assert annotation_results(machine.url, old.token) == results
    ls = LabelStudio(machine.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    image = ls.get(old.image)
    assert image.status == 200 and image.body == png()
    # ... and it lives in PostgreSQL: the rows are there, and the service's env file points at it.
    tasks = machine.vm.exec("runuser -u postgres -- psql -X -t -A -d labelstudio -c 'select count(*) from task'")
    assert int(tasks.stdout.decode()) == sum(before["projects"].values())
    assert "DJANGO_DB=default" in machine.vm.exec("cat /opt/label-studio/label-studio.env").stdout.decode()

    # push-local-db from a laptop's SQLite onto the PostgreSQL server converts the same way.
    [moved] = snapshot_ids(fab, "old")
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    shutil.copy(fab.home / "backups" / "old" / moved / "label_studio.sqlite3", laptop / "label_studio.sqlite3")
    with sqlite3.connect(laptop / "label_studio.sqlite3") as con:
        con.execute("update project set title = 'Renamed on a laptop' where title = 'Made on the old VM'")
    con.close()
    pushed = fab("push-local-db", "--config", str(machine.profile), "--local-data-dir", str(laptop), "--yes",
                 host="new")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "server backed up as" in pushed.stdout and "SQLite -> PostgreSQL" in pushed.stdout
    after = sdk_view(machine.url, old.token)
    assert after["projects"] == {"Renamed on a laptop": before["projects"]["Made on the old VM"]}
    assert after["annotations"] == before["annotations"]
