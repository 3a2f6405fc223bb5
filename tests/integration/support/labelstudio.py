"""Label Studio on a test VM read and written through its API: as the admin, and through the official SDK
(a client nobody on this team wrote)."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

from dev.lsclient import LabelStudio
from tests.integration.support.fab import PROJECT_ROOT
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, ProvisionedVM

LABEL_CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
                '<Choice value="pos"/><Choice value="neg"/></Choices></View>')


def project_titles(machine: ProvisionedVM) -> list[str]:
    """The titles of the projects Label Studio serves, read through its API as the admin."""
    ls = LabelStudio(machine.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    resp = ls.get("/api/projects?page_size=100")
    assert resp.status == 200, resp.text[:200]
    return sorted(p["title"] for p in resp.json()["results"])


def sdk_view(url: str, token: str) -> dict:
    """Users, projects with their task counts, annotations: as Label Studio's official SDK reads them
    with an API token (a client nobody on this team wrote)."""
    from label_studio_sdk import LabelStudio as SDK
    client = SDK(base_url=url, api_key=token)
    users = sorted(u.email for u in client.users.list())
    projects = {}
    annotations = 0
    for project in client.projects.list():
        tasks = list(client.tasks.list(project=project.id))
        projects[project.title] = len(tasks)
        annotations += sum(t.total_annotations or 0 for t in tasks)
    return {"users": users, "projects": projects, "annotations": annotations}


def sdk_tasks(sdk, project: int) -> dict[int, dict]:
    """Every task of the project as the official SDK reads it from the API: its data and its annotations'
    results (what an export must hold, task by task)."""
    found = {}
    for task in sdk.tasks.list(project=project, fields="all"):
        results = [a["result"] if isinstance(a, dict) else a.result for a in (task.annotations or [])]
        found[task.id] = {"data": task.data, "results": sorted(json.dumps(r, sort_keys=True) for r in results)}
    return found


def exported_view(tasks: list[dict]) -> dict[int, dict]:
    """A JSON export's tasks in sdk_tasks' shape."""
    return {t["id"]: {"data": t["data"], "results": sorted(json.dumps(a["result"], sort_keys=True)
                                                         for a in t["annotations"])} for t in tasks}


ARTIFACTS = Path(os.environ.get("LSVM_ARTIFACTS_DIR", PROJECT_ROOT / "artifacts"))
# Long enough for 16 writers to contend for the database many times over; the figures to report come from
# bench/ (bench.app_server: 60 s), not from these tests.
LOAD_CLIENTS, LOAD_SECONDS = 16, 15


def concurrent_annotators(machine: ProvisionedVM, token: str, engine: str):
    """bench.load against the VM: 16 official-SDK clients save annotations for LOAD_SECONDS (each loop bounded)
    in a project of their own, deleted afterwards. The summary line is kept in artifacts/ for the report."""
    from label_studio_sdk import LabelStudio as SDK

    from bench.load import run_load
    client = SDK(base_url=machine.url, api_key=token)
    project = client.projects.create(title=f"Load on {engine}", label_config=(
        '<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
        '<Choice value="pos"/><Choice value="neg"/></Choices></View>'))
    try:
        client.projects.import_tasks(id=project.id, request=[{"text": f"load task {i}"} for i in range(64)])
        result = run_load(machine.url, token, project.id, clients=LOAD_CLIENTS, seconds=LOAD_SECONDS,
                          max_requests=5000, timeout=120)
    finally:
        client.projects.delete(id=project.id)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    line = f"{engine} on {machine.suite}: {result.summary()}"
    (ARTIFACTS / f"load-{engine}-{machine.suite}.txt").write_text(line + "\n")
    print(line)
    return result


def api_token(machine: ProvisionedVM) -> str:
    """The admin's personal access token, made once per VM (Label Studio answers POST /api/token/ once
    per user) and kept on the machine for every module that shares it."""
    if getattr(machine, "api_token", None) is None:
        session = LabelStudio(machine.url)
        assert session.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        resp = session.post_json("/api/token/", {})
        assert resp.status in (200, 201), resp.text[:300]
        machine.api_token = resp.json()["token"]
    return machine.api_token


def png(width: int = 48, height: int = 32) -> bytes:
    """A real PNG (a colour gradient), built here so the test needs no image file."""
    rows = b"".join(b"\0" + b"".join(bytes((x * 5 % 256, y * 7 % 256, (x + y) % 256)) for x in range(width))
                    for y in range(height))
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def annotate_through_sdk(machine, title: str, n_tasks: int = 12, n_annotations: int = 5) -> None:
    """A project of `n_tasks` text tasks, `n_annotations` of them annotated, made with the official SDK."""
    from label_studio_sdk import LabelStudio as SDK
    client = SDK(base_url=machine.url, api_key=machine.token)
    project = client.projects.create(title=title, label_config=LABEL_CONFIG)
    client.projects.import_tasks(id=project.id, request=[{"text": f"{title} {i}"} for i in range(n_tasks)])
    for task in list(client.tasks.list(project=project.id))[:n_annotations]:
        client.annotations.create(id=task.id, result=[{"from_name": "label", "to_name": "text", "type": "choices",
                                                        "value": {"choices": ["pos"]}}])
