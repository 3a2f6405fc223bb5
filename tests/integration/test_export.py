"""`fab export` against a real Label Studio: projects made with the official SDK, exported by Label Studio's
own exporter on the server and brought here; each file is compared task by task with what the SDK reads from
the API (JSON, and CSV as a converted format), COCO --with-media carries the uploaded image byte for byte, a
format the project cannot take is refused with the list before anything runs, `--all` writes one file per
project, and an export whose `fab` is killed leaves nothing on the server (no exporter, no temp folder) and
no partial file here."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import signal
import time
import zipfile

import pytest

from tests.integration.support.labelstudio import LABEL_CONFIG, api_token, exported_view, png, sdk_tasks

# CI time: the exporter is Label Studio's on every release; proven on Debian 13's worker (Python 3.13).
pytestmark = pytest.mark.one_release("trixie")

TASKS, ANNOTATED = 1500, 40          # more tasks than one batch of the exporter (1000)
TITLE = "export: [/] [bold]te\nxt"   # anyone's text: never markup on our terminal (rich would raise at "[/]")
IMAGE_CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
                '<Label value="figure"/></RectangleLabels></View>')
LEFTOVERS = "ls -d /var/tmp/lsvm-export.* 2>/dev/null; pgrep -f 'export /var/tmp/lsvm-expor[t]' || true"


@pytest.fixture(scope="module")
def site(data_vm):
    """The data tasks' VM (CI time: no VM of its own); its projects are as this module found them afterwards."""
    return data_vm


@pytest.fixture(scope="module")
def sdk(site):
    from label_studio_sdk import LabelStudio as SDK
    client = SDK(base_url=site.url, api_key=api_token(site), timeout=120)
    before = {p.id for p in client.projects.list()}
    yield client
    for project in client.projects.list():
        if project.id not in before:
            client.projects.delete(id=project.id)


@pytest.fixture(scope="module")
def text_project(sdk):
    project = sdk.projects.create(title=TITLE, label_config=LABEL_CONFIG)
    sdk.projects.import_tasks(id=project.id, request=[{"text": f"sentence {i} — ünïcode"} for i in range(TASKS)])
    tasks = list(sdk.tasks.list(project=project.id))
    for n, task in enumerate(tasks[:ANNOTATED]):
        sdk.annotations.create(id=task.id, result=[{"from_name": "label", "to_name": "text", "type": "choices",
                                                    "value": {"choices": ["pos" if n % 3 else "neg"]}}])
    return project.id


def exported(site, tmp_path, *args: str):
    done = site.fab("export", *args, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    files = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(files) == 1 and not list(tmp_path.glob(".*partial")), files
    sha = re.search(r"sha256 ([0-9a-f]{64})", done.stdout).group(1)
    assert hashlib.sha256(files[0].read_bytes()).hexdigest() == sha
    assert files[0].stat().st_mode & 0o777 == 0o600
    return files[0], done


def test_json_export_holds_every_task_and_annotation_the_api_serves(site, sdk, text_project, tmp_path):
    path, done = exported(site, tmp_path, "--project", str(text_project), "--out", f"{tmp_path}/")
    assert path.name.startswith(f"vm-project-{text_project}-json-") and path.suffix == ".json"
    assert f"export of project {text_project} ({TITLE!r}, {TASKS} tasks) as JSON" in done.stdout, done.stdout
    tasks = json.loads(path.read_text(encoding="utf-8"))
    expected = sdk_tasks(sdk, text_project)
    assert len(tasks) == TASKS == len(expected)
    assert exported_view(tasks) == expected
    assert sum(1 for t in tasks if t["annotations"]) == ANNOTATED
    assert site.vm.exec(LEFTOVERS).stdout.decode().strip() == ""


def test_csv_export_is_label_studios_conversion_of_the_same_tasks(site, sdk, text_project, tmp_path):
    path, _ = exported(site, tmp_path, "--project", str(text_project), "--format", "csv",
                       "--out", str(tmp_path / "mine.csv"))
    assert path.name == "mine.csv"
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    expected = sdk_tasks(sdk, text_project)
    assert sorted(int(r["id"]) for r in rows) == sorted(expected)
    for row in rows:
        task = expected[int(row["id"])]
        assert row["text"] == task["data"]["text"]
        choices = [json.loads(r)[0]["value"]["choices"][0] for r in task["results"]]
        assert row.get("label", "") == (choices[0] if choices else "")


def test_through_a_login_whose_sudo_asks_a_password(site, text_project, sudo_password, tmp_path):
    """sudo reads the password from the channel first; the exporter watches what is left of it."""
    done = site.fab("export", "--project", str(text_project), "--format", "json_min", "--out", str(tmp_path),
                    host="vm-student", env={"FABRIC_SUDO_PASSWORD": sudo_password}, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = tmp_path.iterdir()
    assert path.name.startswith(f"vm-student-project-{text_project}-json_min-")
    assert len(json.loads(path.read_text(encoding="utf-8"))) == TASKS and sudo_password not in done.stdout + done.stderr


def test_a_format_the_project_cannot_take_is_refused_with_the_list_before_anything_runs(site, text_project,
                                                                                         tmp_path):
    done = site.fab("export", "--project", str(text_project), "--format", "COCO", "--out", str(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(r"cannot be exported as COCO; it can as: .*JSON.*CSV", done.stderr), done.stderr
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []
    missing = site.fab("export", "--project", "999999", "--out", str(tmp_path))
    assert missing.returncode == 2 and "has no project 999999" in missing.stderr, missing.stderr


def test_coco_with_media_carries_the_uploaded_image(site, sdk, tmp_path):
    from dev.lsclient import LabelStudio
    from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD

    picture = png(64, 40)
    project = sdk.projects.create(title="export: images", label_config=IMAGE_CONFIG)
    ls = LabelStudio(site.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert ls.import_file(project.id, "figure.png", picture).status == 201
    task = next(iter(sdk.tasks.list(project=project.id)))
    sdk.annotations.create(id=task.id, result=[{
        "from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 64,
        "original_height": 40, "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0,
                                          "rectanglelabels": ["figure"]}}])
    refused = site.fab("export", "--project", str(project.id), "--with-media", "--out", str(tmp_path))
    assert refused.returncode == 2 and "--with-media goes with formats" in refused.stderr, refused.stderr
    path, _ = exported(site, tmp_path, "--project", str(project.id), "--format", "COCO", "--with-media",
                       "--out", str(tmp_path))
    with zipfile.ZipFile(path) as archive:
        images = [n for n in archive.namelist() if n.startswith("images/") and not n.endswith("/")]
        assert len(images) == 1 and archive.read(images[0]) == picture
        coco = json.loads(archive.read("result.json"))
    assert [c["name"] for c in coco["categories"]] == ["figure"] and len(coco["annotations"]) == 1


def test_all_writes_one_file_per_project_into_a_folder(site, sdk, text_project, tmp_path):
    out = tmp_path / "every" / "project"
    done = site.fab("export", "--all", "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = {p.id: p.task_number for p in sdk.projects.list()}
    files = sorted(out.iterdir())
    assert len(files) == len(expected) >= 2 and not list(out.glob(".*")), files
    for path in files:
        project = int(re.fullmatch(r"vm-project-(\d+)-json-\d{8}T\d{6}Z\.json", path.name).group(1))
        assert len(json.loads(path.read_text(encoding="utf-8"))) == expected[project], path.name
    assert done.stdout.count("sha256 ") == len(expected)


def test_a_killed_export_leaves_nothing_on_the_server_and_no_partial_file_here(site, text_project, tmp_path):
    running = site.fab.popen("export", "--project", str(text_project), "--out", str(tmp_path))
    deadline = time.monotonic() + 300
    while "lsvm-export" not in site.vm.exec(LEFTOVERS).stdout.decode():
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.1)
    running.send_signal(signal.SIGKILL)
    running.wait()
    deadline = time.monotonic() + 120
    while (left := site.vm.exec(LEFTOVERS).stdout.decode().strip()):
        assert time.monotonic() < deadline, f"still on the server: {left}"
        time.sleep(0.2)
    assert list(tmp_path.iterdir()) == []
    # The data lock went with the killed fab: the next export runs.
    exported(site, tmp_path, "--project", str(text_project), "--out", str(tmp_path))
