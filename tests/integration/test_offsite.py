"""Offsite replication on the VM (the profile's `offsite:` section): Litestream streams the database to a
path target (a directory standing in for a second disk), as a user of its own; a project made through
Label Studio's API reaches the target and comes back out of it with Litestream's own restore; status and
`fab offsite` say when the copies are not being kept; provision turns it on, keeps it, and turns it off
without touching the copies.

One VM (a clone of the freshly provisioned one), on one Debian release: Litestream is one static binary
and systemd's part is the same on both (CI time). The tests run in file order."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

import pytest

from dev.lsclient import LabelStudio, wait_for_health
from tests.integration.support.labelstudio import api_token, png, sdk_view
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_WORKERS, provisioned_clone

pytestmark = pytest.mark.one_release("trixie")

TARGET = "/mnt/offsite/label-studio"
OFFSITE = f"offsite:\n  target: {TARGET}\n"
DB = "/var/lib/label-studio/label_studio.sqlite3"
UNIT = "label-studio-offsite"
USER = "labelstudio-offsite"
CONFIG = "/opt/label-studio/label-studio-litestream.yml"
LITESTREAM = "/opt/label-studio/offsite/bin/litestream"
RESTIC_ENV = "/opt/label-studio/label-studio-offsite-restic.env"


@pytest.fixture(scope="module")
def site(provisioned, tmp_path_factory):
    machine = provisioned_clone(provisioned, tmp_path_factory.mktemp(f"home-offsite-{provisioned.suite}"), "offsite",
                                edits=((TEST_WORKERS, TEST_WORKERS + OFFSITE),))
    yield machine
    machine.vm.stop()


def sh(site, command: str, **kwargs) -> str:
    return site.vm.exec(command, **kwargs).stdout.decode()


def as_replication_user(command: str) -> str:
    return f"systemd-run --quiet --pipe --wait --collect --uid={USER} --gid={USER} -p SupplementaryGroups=labelstudio {command}"


def caught_up(site, timeout: float = 60) -> str:
    """Poll `fab offsite` (a real signal: Litestream's position against the target's newest file) until the
    target holds every transaction; its output."""
    deadline, out = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        result = site.fab("offsite")
        out = result.stdout + result.stderr
        if result.returncode == 0 and "the target holds every transaction" in out:
            return out
        time.sleep(0.5)  # poll interval between real checks
    raise AssertionError(f"the target never caught up within {timeout}s:\n{out}")


def test_provision_streams_the_database_as_a_user_of_its_own(site):
    out = site.first_run.stdout + site.first_run.stderr
    assert site.first_run.returncode == 0, out
    assert f"started {UNIT}.service: the database streams to {TARGET}" in out
    assert sh(site, f"systemctl is-active {UNIT}").strip() == "active"
    pid = sh(site, f"systemctl show -p MainPID --value {UNIT}").strip()
    assert sh(site, f"ps -o user= -p {pid}").strip() == USER
    assert "labelstudio" in sh(site, f"id -nG {USER}").split()
    # Group-writable for the replication user, setgid so a -wal it makes stays in the service user's group.
    assert sh(site, f"stat -c '%U:%G:%a' /var/lib/label-studio {DB}").split() == [
        "labelstudio:labelstudio:2770", "labelstudio:labelstudio:660"]
    assert sh(site, f"stat -c '%U:%G:%a' {TARGET} /var/lib/label-studio-offsite").split() == [f"{USER}:{USER}:700"] * 2
    # The service user (what a Label Studio exploit runs) can neither read nor change the copies.
    denied = site.vm.exec(f"runuser -u labelstudio -- ls {TARGET}", check=False)
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    assert site.vm.exec(f"runuser -u labelstudio -- touch {TARGET}/x", check=False).returncode != 0
    assert wait_for_health(site.url, timeout=60) == {"status": "UP"}


def restored_titles(site, source: str = f"-config {CONFIG} {DB}") -> list[str]:
    """Litestream's own restore from the target alone, into a scratch file of the replication user: the
    project titles it holds (after an integrity check)."""
    restored = "/var/lib/label-studio-offsite/restored.sqlite3"
    sh(site, f"rm -f {restored}; " + as_replication_user(f"{LITESTREAM} restore -o {restored} {source}"))
    assert sh(site, f"sqlite3 {restored} 'pragma integrity_check'").strip() == "ok"
    titles = sh(site, f"sqlite3 {restored} 'select title from project order by id'").splitlines()
    sh(site, f"rm -f {restored}")
    return titles


def on_target(site, condition, timeout: float = 60) -> list[str]:
    """Poll restores from the target until their project titles meet `condition`."""
    deadline, titles = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        titles = restored_titles(site)
        if condition(titles):
            return titles
    raise AssertionError(f"the target never held what was wanted within {timeout}s: {titles}")


def test_a_project_reaches_the_target_and_comes_back_out_of_it(site):
    client = LabelStudio(site.url)
    assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    title = f"kept offsite ({site.suite})"
    client.create_project(title)
    # Poll the real signal: a restore from the target holds the project (Litestream reads the database
    # about once a second, then ships what it read).
    assert on_target(site, lambda titles: title in titles) == [title]
    out = caught_up(site)
    assert TARGET in out and "restore points" in out and "UTC to" in out, out


def test_status_shows_the_offsite_row(site):
    caught_up(site)
    result = site.fab("status")
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("offsite"))
    assert f"{TARGET}: the target holds every transaction Litestream has read (it reads about once a second); newest point" in row


def test_a_stopped_replication_fails_status_and_offsite_until_provision_starts_it(site):
    sh(site, f"systemctl stop {UNIT}")
    for task in ("status", "offsite"):
        result = site.fab(task)
        assert result.returncode != 0, result.stdout
        assert "offsite copies are not being kept: the replication service is inactive" in result.stderr
    again = site.fab("provision")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"started {UNIT}.service" in again.stdout
    caught_up(site)


def restic(site, *args: str) -> subprocess.CompletedProcess:
    """restic on the target as the replication user, its password read by systemd from the root-only file."""
    return site.vm.exec(as_replication_user(f"-p EnvironmentFile={RESTIC_ENV} restic --repo {TARGET}/restic "
                                            f"--cache-dir /var/lib/label-studio-offsite/restic-cache {' '.join(args)}"),
                        check=False)


def test_env_and_media_go_to_restic_encrypted_with_a_password_kept_on_both_sides(site):
    """An upload made through Label Studio's API, then `fab offsite --files`: restic's newest snapshot on
    the target holds .env (the SECRET_KEY) and the upload, byte for byte; the password is root-only on the
    VM and 0600 here, and the service user can neither read it nor the repository."""
    client = LabelStudio(site.url)
    assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    project = client.create_project(f"with an upload ({site.suite})")
    image = png(40, 24)
    assert client.import_file(project, "kept.png", image).status == 201
    result = site.fab("offsite", "--files")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = result.stdout.splitlines()
    assert any(line.startswith(".env and media") and "snapshot(s) of .env and media" in line for line in rows), rows
    assert any(line.startswith("files timer") and " active " in line and "hourly" in line for line in rows), rows
    # The first snapshot was taken by provision; this one has the upload.
    listed = json.loads(restic(site, "snapshots", "--json", "--tag", "files").stdout)
    assert len(listed) >= 2, listed
    names = sh(site, as_replication_user(f"-p EnvironmentFile={RESTIC_ENV} restic --repo {TARGET}/restic "
                                         "--cache-dir /var/lib/label-studio-offsite/restic-cache dump latest "
                                         "/files.tar") + " | tar -tvf -")
    assert " .env" in names and "media/upload/" in names, names
    upload = next(line.split()[-1] for line in names.splitlines() if "kept.png" in line)
    restored = site.vm.exec(as_replication_user(f"-p EnvironmentFile={RESTIC_ENV} restic --repo {TARGET}/restic "
                                                "--cache-dir /var/lib/label-studio-offsite/restic-cache dump latest "
                                                f"/files.tar") + f" | tar -xOf - {upload}").stdout
    assert restored == image
    # The password: root-only there, 0600 here, the same.
    assert sh(site, f"stat -c '%U:%G:%a' {RESTIC_ENV}").strip() == "root:root:600"
    kept = site.fab.home / "backups" / "vm" / "offsite-password"
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
    assert sh(site, f"cat {RESTIC_ENV}") == f"RESTIC_PASSWORD={kept.read_text().strip()}\n"
    for path in (RESTIC_ENV, f"{TARGET}/restic/config"):
        assert site.vm.exec(f"runuser -u labelstudio -- cat {path}", check=False).returncode != 0, path


def test_backup_from_offsite_brings_the_targets_point_here_as_an_ordinary_snapshot(site):
    """The database (Litestream), .env and media (restic) restored on the server from the target alone,
    then downloaded and verified like any backup: the project with the upload, the upload byte for byte,
    the server's SECRET_KEY."""
    caught_up(site)
    result = site.fab("backup", "--from-offsite", "--label", "offsite")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert f"backup of {TARGET} (its newest point), .env and media from restic snapshot" in out, out
    folder = max((site.fab.home / "backups" / "vm").glob("*-offsite"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"]["offsite"]["target"] == TARGET and manifest["source"]["marker"] is None
    titles = [row[0] for row in sqlite3.connect(folder / "label_studio.sqlite3").execute("select title from project")]
    assert f"with an upload ({site.suite})" in titles
    assert (folder / ".env").read_bytes() == site.vm.exec("cat /var/lib/label-studio/.env").stdout
    [upload] = list((folder / "media" / "upload").rglob("*kept.png"))
    assert upload.read_bytes() == png(40, 24)
    listed = site.fab("backups")
    assert listed.returncode == 0 and folder.name in listed.stdout and "verified" in listed.stdout, listed.stdout


def test_a_restart_of_label_studio_restarts_the_replication(site):
    before = sh(site, f"systemctl show -p MainPID --value {UNIT}").strip()
    sh(site, "systemctl restart label-studio")
    assert sh(site, f"systemctl is-active {UNIT}").strip() == "active"
    assert sh(site, f"systemctl show -p MainPID --value {UNIT}").strip() != before
    caught_up(site)


def test_a_second_provision_changes_nothing(site):
    result = site.fab("provision")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\n0 changed" in result.stdout, result.stdout


def test_a_point_in_time_restore_brings_a_deleted_project_back(site):
    """Through Label Studio's official SDK, with an API token made before: the project deleted after the
    chosen time is back, the token still works, and the replication goes on from the restored database."""
    token = api_token(site)
    client = LabelStudio(site.url)
    assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    title = f"deleted, then restored ({site.suite})"
    project = client.create_project(title)
    on_target(site, lambda titles: title in titles)
    # A point after the project reached the target and before the deletion: the first whole second that
    # begins after it was seen there (a restore takes what was written before the point, to the millisecond).
    seen = sh(site, "date -u +%Y-%m-%dT%H:%M:%SZ").strip()
    moment = seen
    while moment == seen:
        time.sleep(0.1)  # poll interval: the VM's clock moves to the next second (a real signal)
        moment = sh(site, "date -u +%Y-%m-%dT%H:%M:%SZ").strip()
    assert client.request("DELETE", f"/api/projects/{project}/").status == 204
    on_target(site, lambda titles: title not in titles)
    assert title not in sdk_view(site.url, token)["projects"]

    dry = site.fab("restore-server", "--offsite", "--at", moment, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"restore {TARGET} (as it was at {moment}) -> vm" in dry.stdout and "nothing was changed" in dry.stdout
    result = site.fab("restore-server", "--offsite", "--at", moment, "--yes")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "server backed up as" in out and "integrity_check passed" in out, out
    assert title in sdk_view(site.url, token)["projects"]
    # Replication goes on from the restored database: a project made now reaches the target too.
    after = f"made after the restore ({site.suite})"
    client = LabelStudio(site.url)
    assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    client.create_project(after)
    on_target(site, lambda titles: title in titles and after in titles)


def test_a_point_before_the_oldest_is_refused_before_anything_changes(site):
    before = sh(site, f"sha256sum {DB}")
    result = site.fab("restore-server", "--offsite", "--at", "2020-01-01 00:00", "--yes")
    assert result.returncode == 2
    assert "is before the oldest restore point on the target" in result.stderr, result.stderr
    assert sh(site, f"sha256sum {DB}") == before


def test_the_restore_drill_passes_and_status_shows_it(site):
    result = site.fab("offsite", "--drill")
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("restore drill"))
    assert " passed " in row and "integrity_check ok" in row and "restic check read back 5%" in row, row
    assert any(line.startswith("drill timer") and " active " in line for line in result.stdout.splitlines())
    assert sh(site, "systemctl is-enabled label-studio-offsite-drill.timer").strip() == "enabled"
    status = site.fab("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert any(line.startswith("restore drill") and " passed " in line for line in status.stdout.splitlines())


def test_a_damaged_target_fails_the_drill_and_status_says_so(site):
    """Every file on the target damaged in its middle (a copy kept aside): the drill's restore fails,
    `fab offsite --drill` and `status` exit non-zero and say why; with the files back it passes again."""
    aside = "/var/lib/label-studio-offsite-test-aside"
    # Nothing is written to the target meanwhile (what it wrote would be lost when the copy comes back).
    sh(site, f"systemctl stop {UNIT} && rm -rf {aside} && cp -a {TARGET} {aside} && "
             f"find {TARGET} -name '*.ltx' -size +1k | while read -r f; do "
             "dd if=/dev/zero of=\"$f\" bs=1 seek=$(( $(stat -c %s \"$f\") / 2 )) count=64 conv=notrunc 2>/dev/null; done")
    try:
        result = site.fab("offsite", "--drill")
        assert result.returncode != 0, result.stdout
        assert "offsite copies are not proven: the last drill failed: litestream restore failed" in result.stderr, \
            result.stderr
        status = site.fab("status")
        assert status.returncode != 0
        assert any(line.startswith("restore drill") and "FAILED" in line for line in status.stdout.splitlines()), \
            status.stdout
    finally:
        sh(site, f"rm -rf {TARGET} && mv {aside} {TARGET} && systemctl start {UNIT}")
    again = site.fab("offsite", "--drill")
    assert again.returncode == 0, again.stdout + again.stderr


HOOK = """
import http.server, json
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open("/root/hook.jsonl", "ab") as f:
            f.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200); self.end_headers()
http.server.HTTPServer(("127.0.0.1", 8765), Hook).serve_forever()
"""


def notifications(site, count: int, timeout: float = 60) -> list[dict]:
    """Poll the receiver's file until it holds `count` notifications."""
    deadline, found = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        found = [json.loads(line) for line in sh(site, "cat /root/hook.jsonl 2>/dev/null || true").splitlines()]
        if len(found) >= count:
            return found
        time.sleep(0.3)  # poll interval between real checks
    raise AssertionError(f"{len(found)} notification(s) arrived, {count} wanted: {found}")


def test_the_watch_notifies_without_the_laptop_when_replication_stops_and_when_it_is_back(site):
    """offsite.notify with an apprise json:// URL (a receiver on the VM): the URL is stored root-only; the
    watch run by its timer's service finds the stopped replication and sends one notification, then one
    when it runs again; `fab offsite` shows what the watch saw and sent."""
    site.vm.exec(f"systemd-run --unit=hook python3 -c '{HOOK}'")
    site.profile.write_text(site.profile.read_text().replace(OFFSITE, OFFSITE + "  notify: true\n"))
    result = site.fab("provision", env={"LSVM_NOTIFY_URL": "json://127.0.0.1:8765/hook"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stored the notification URL in /opt/label-studio/label-studio-offsite-notify.env (root, 0600)" in result.stdout
    assert "json://" not in result.stdout + result.stderr
    assert sh(site, "stat -c '%U:%G:%a' /opt/label-studio/label-studio-offsite-notify.env").strip() == "root:root:600"
    assert "label-studio-offsite-watch.service" in sh(site, "systemctl show -p OnFailure label-studio-offsite-files.service")
    sh(site, "systemctl start label-studio-offsite-watch.service")     # all well: nothing is sent
    sh(site, f"systemctl stop {UNIT} && systemctl start label-studio-offsite-watch.service")
    [alert] = notifications(site, 1)
    assert "need attention" in alert["title"] and f"{UNIT}.service is inactive" in alert["message"], alert
    sh(site, f"systemctl start {UNIT} && systemctl start label-studio-offsite-watch.service")
    alert, back = notifications(site, 2)
    assert "kept again" in back["title"] and "Resolved" in back["message"], back
    shown = site.fab("offsite")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("watch"))
    assert "no problem" in row and "last sent" in row, row
    site.profile.write_text(site.profile.read_text().replace(OFFSITE + "  notify: true\n", OFFSITE))


def test_turning_offsite_off_stops_it_and_keeps_the_copies(site):
    site.profile.write_text(site.profile.read_text().replace(OFFSITE, ""))
    result = site.fab("provision")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"stopped the offsite replication ({UNIT}.service); the copies on its target stay" in result.stdout
    assert sh(site, f"systemctl is-active {UNIT} || true").strip() in ("inactive", "unknown")
    assert sh(site, f"test -e /etc/systemd/system/{UNIT}.service || test -e {CONFIG} || echo gone").strip() == "gone"
    assert sh(site, "stat -c '%a' /var/lib/label-studio").strip() == "750"
    assert "labelstudio" not in sh(site, f"id -nG {USER}").split()
    assert wait_for_health(site.url, timeout=60) == {"status": "UP"}
    # The copies stay, and still restore: from the target's own address, no settings needed.
    assert f"kept offsite ({site.suite})" in restored_titles(site, f"file://{TARGET}/litestream")
