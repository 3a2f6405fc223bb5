"""Upgrades side by side, on a VM provisioned with an older release: a release that cannot migrate this
database is stopped before the stop; one that fails to start is switched back with the database
byte-identical; a good one keeps every byte and token; an older pin is refused; rollback brings the
previous release and the database as it was, after saying what would be lost. Data through the SDK."""

from __future__ import annotations

import json
import re

import pytest

from dev.lsclient import LabelStudio
from tasks.core.commands.provision import APP_SERVER
from tests.integration.support.databases import server_database_digest
from tests.integration.support.labelstudio import LABEL_CONFIG, png, sdk_view
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, provision_fresh

OLD, NEW = "1.22.0", "1.23.2"
DB = "/var/lib/label-studio/label_studio.sqlite3"
NEW_SITE = f"/opt/label-studio/releases/{NEW}"

# On Debian 12 (CI time): on Debian 13 test_site.py upgrades every app VM of a site through the same
# build beside the old release, from 1.22.0 with migrations and on without.
pytestmark = pytest.mark.one_release("bookworm")


@pytest.fixture(scope="module")
def old(vm_image, suite, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"home-upgrade-{suite}")
    machine = provision_fresh(vm_image, suite, home, "upgrade", "vm", f'  version: "{OLD}"\n')
    assert machine.first_run.returncode == 0, machine.first_run.stdout + machine.first_run.stderr
    ls = LabelStudio(machine.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    project = ls.post_json("/api/projects", {"title": "Before the upgrade", "label_config": LABEL_CONFIG}).json()["id"]
    tasks = [{"text": f"review {i}: {'good' if i % 3 else 'bad'} service"} for i in range(30)]
    assert ls.import_file(project, "tasks.json", json.dumps(tasks).encode()).status == 201
    for task in ls.get(f"/api/tasks?project={project}&page_size=100").json()["tasks"][:8]:
        assert ls.post_json(f"/api/tasks/{task['id']}/annotations", {"result": [{
            "from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["pos"]}}]}).status == 201
    assert ls.import_file(project, "photo.png", png()).status == 201
    machine.token = ls.post_json("/api/token/", {}).json()["token"]
    machine.project = project
    machine.before = sdk_view(machine.url, machine.token)
    yield machine
    machine.vm.stop()


def db_sha(machine) -> str:
    """What the server's SQLite database holds (WAL mode: its file's bytes change at checkpoints)."""
    return server_database_digest(machine.vm, DB)


def current(machine) -> str:
    return machine.vm.exec("readlink /opt/label-studio/current").stdout.decode().strip()


def break_release(machine, when: str) -> None:
    """A .pth file in the new release's venv that exits Python at start-up when `when` holds (a
    sitecustomize.py would not do: Debian's own, in the standard library, shadows it)."""
    line = f'import sys; sys.exit("broken on purpose by the test") if {when} else None\n'
    machine.vm.exec(f"for d in {NEW_SITE}/lib/python3*/site-packages; do cat > \"$d/zz_lsvm_test_break.pth\"; done",
                    input=line.encode())


def test_dry_run_shows_the_plan_and_changes_nothing(old):
    before = (db_sha(old), current(old))
    result = old.fab("upgrade", "--version", NEW, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"label-studio {OLD} -> {NEW}" in result.stdout and "Nothing was changed" in result.stdout
    assert (db_sha(old), current(old)) == before == (before[0], f"releases/{OLD}")


def test_a_release_that_cannot_migrate_this_database_stops_before_the_stop(old):
    # Build the new release the way upgrade does, then break it: upgrade reuses it.
    old.vm.exec(f"python3 -m venv {NEW_SITE} && {NEW_SITE}/bin/python -m pip install -q label-studio=={NEW} "
                f"{APP_SERVER} && "
                f": > {NEW_SITE}/.lsvm-complete", timeout=900)
    break_release(old, "True")
    sha, pid = db_sha(old), old.vm.exec("systemctl show -p MainPID --value label-studio").stdout
    result = old.fab("upgrade", "--version", NEW, "--yes")
    assert result.returncode != 0
    assert "could not migrate a copy of this database" in result.stderr and "nothing was changed" in result.stderr
    assert old.vm.exec("systemctl show -p MainPID --value label-studio").stdout == pid  # never stopped
    assert (db_sha(old), current(old)) == (sha, f"releases/{OLD}")
    assert sorted((old.fab.home / "backups" / "vm").glob("*-pre-upgrade-1-22-0"))  # the snapshot came first


def test_a_release_that_fails_to_start_is_switched_back_with_the_database_byte_identical(old):
    break_release(old, "sys.argv[0].endswith('gunicorn')")  # the app server, not the migration check
    sha = db_sha(old)
    result = old.fab("upgrade", "--version", NEW, "--yes", "--health-timeout", "60")
    assert result.returncode != 0, result.stdout
    assert "previous data is back in place" in result.stderr, result.stderr
    assert "broken on purpose" in result.stderr  # the service log's last lines
    assert (db_sha(old), current(old)) == (sha, f"releases/{OLD}")
    assert sdk_view(old.url, old.token) == old.before


def test_the_upgrade_keeps_every_byte_and_the_token(old):
    old.vm.exec(f"rm -f {NEW_SITE}/lib/python3*/site-packages/zz_lsvm_test_break.pth")
    result = old.fab("upgrade", "--version", NEW, "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"upgraded {OLD} -> {NEW}.*stopped for about \d+s", " ".join(result.stdout.split()))
    assert sdk_view(old.url, old.token) == old.before
    assert current(old) == f"releases/{NEW}"
    assert old.vm.exec(f"test -x /opt/label-studio/releases/{OLD}/bin/label-studio", check=False).returncode == 0
    status = old.fab("status")
    assert re.search(rf"releases\s+{NEW} \(current\), {OLD} \(previous\)", status.stdout), status.stdout
    assert re.search(r"health \(via nginx\)\s+UP", status.stdout)


def test_an_older_pin_is_refused_and_changes_nothing(old):
    sha = db_sha(old)
    old.profile.write_text(old.profile.read_text().replace(f'version: "{OLD}"', 'version: "1.21.0"'))
    provision = old.fab("provision")
    assert provision.returncode == 2 and "older than the installed" in provision.stderr, provision.stderr
    upgrade = old.fab("upgrade")
    assert upgrade.returncode == 2 and "older than the installed" in upgrade.stderr, upgrade.stderr
    assert (db_sha(old), current(old)) == (sha, f"releases/{NEW}")
    old.profile.write_text(old.profile.read_text().replace('version: "1.21.0"', f'version: "{NEW}"'))
    again = old.fab("provision")
    assert again.returncode == 0 and re.search(r"\b0 changed\b", again.stdout), again.stdout + again.stderr


def test_rollback_says_what_would_be_lost_then_brings_the_old_release_and_data_back(old):
    ls = LabelStudio(old.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    task = ls.get(f"/api/tasks?project={old.project}&page_size=100").json()["tasks"][-2]
    assert ls.post_json(f"/api/tasks/{task['id']}/annotations", {"result": [{
        "from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["neg"]}}]}).status == 201
    before = len(list((old.fab.home / "backups" / "vm").iterdir()))
    dry = old.fab("rollback", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"label-studio {NEW} -> {OLD}" in dry.stdout and "dry run: nothing was changed" in dry.stdout
    assert current(old) == f"releases/{NEW}" and len(list((old.fab.home / "backups" / "vm").iterdir())) == before
    asked = old.fab("rollback")  # no terminal: it must ask, so it refuses and says what it would have asked
    assert asked.returncode == 2 and "1 annotation(s)" in asked.stderr, asked.stderr
    assert current(old) == f"releases/{NEW}"
    result = old.fab("rollback", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert current(old) == f"releases/{OLD}"
    assert sdk_view(old.url, old.token) == old.before
    assert sorted((old.fab.home / "backups" / "vm").glob("*-pre-rollback-1-23-2"))
