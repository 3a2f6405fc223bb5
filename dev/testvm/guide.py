"""A VM set up by hand, exactly as the seed guide (shared/seeds/002_*.txt) says, for the adopt tests:
a venv in the user's home, `pip install label-studio`, the guide's nginx site, ufw with 'Nginx Full',
and `label-studio start` typed into a `screen` session (so it listens on 0.0.0.0:8080 and keeps its data
in ~/.local/share/label-studio). Then real data through Label Studio's own API."""

from __future__ import annotations

import inspect
import json
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from dev.lsclient import LabelStudio
from dev.testvm.image import image_exists, recipe_digest
from dev.testvm.machine import NOPASSWD_USER, TestVM, make_key, start_vm
from tasks.core.commands import secret_key

GUIDE_USER = NOPASSWD_USER
GUIDE_DIR = "annotation"           # the guide's <your_directory>
GUIDE_VENV = "label-studio"        # the guide's venv name
GUIDE_SESSION = "ls"               # the guide's <session-name>
GUIDE_PORT = 8080
GUIDE_DATA = f"/home/{GUIDE_USER}/.local/share/label-studio"

# The guide's site, with server_name set to the name users open (the test reaches nginx as 127.0.0.1).
GUIDE_SITE = """server {
    listen 80;
    server_name 127.0.0.1;

    location / {
        proxy_pass http://127.0.0.1:8080;
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }

    location ~ /api/projects/.*/export {
        deny all;
    }
}
"""

LABEL_CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
                '<Choice value="pos"/><Choice value="neg"/></Choices></View>')


def as_user(vm: TestVM, command: str, *, timeout: float = 900, check: bool = True):
    return vm.exec(f"runuser -u {GUIDE_USER} -- bash -lc {shlex.quote(f'cd ~ && {command}')}",
                   timeout=timeout, check=check)


def set_up_by_the_guide(vm: TestVM, version: str) -> None:
    """Sections 1-4 of the guide, literally (apt, venv, pip, nginx site, ufw, screen)."""
    install_by_the_guide(vm, version)
    start_by_the_guide(vm)


def install_by_the_guide(vm: TestVM, version: str) -> None:
    """Sections 1-3: apt, the venv and pip, the nginx site, ufw."""
    vm.exec("DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
            "apt-get install -y -qq python3 python3-pip python3-venv nginx screen ufw >/dev/null", timeout=900)
    as_user(vm, f"mkdir -p {GUIDE_DIR} && cd {GUIDE_DIR} && python3 -m venv {GUIDE_VENV} && "
                f". {GUIDE_VENV}/bin/activate && pip install -q label-studio=={version}")
    vm.exec("cat > /etc/nginx/sites-available/label-studio", input=GUIDE_SITE.encode())
    vm.exec("ln -s /etc/nginx/sites-available/label-studio /etc/nginx/sites-enabled/ && nginx -t 2>/dev/null "
            "&& systemctl reload nginx")
    vm.exec("ufw allow OpenSSH >/dev/null && ufw allow 'Nginx Full' >/dev/null && ufw --force enable >/dev/null")


def start_by_the_guide(vm: TestVM) -> None:
    """Section 4: `label-studio start` in screen (its first start makes the data dir and the database)."""
    start_in_screen(vm)
    settle_the_secret_key(vm)


def guide_image(base: str, version: str, home: Path) -> str:
    """`base` with sections 1-3 of the guide done for `version` (nothing started, no data), cached by a hash
    of the base image, the recipe and the version (CI time: apt and pip are most of a guide VM's setup).
    Every guide VM starts from it, the first one too, so a cached image and a fresh one are the same."""
    recipe = inspect.getsource(install_by_the_guide) + inspect.getsource(as_user) + GUIDE_SITE
    tag = f"{base.split(':')[0]}-guide:{recipe_digest(base, recipe, version)}"
    if image_exists(tag):
        return tag
    vm = start_vm(base, make_key(home / "guide-image-key"))
    try:
        install_by_the_guide(vm, version)
        subprocess.run(["docker", "commit", vm.id, tag], check=True, capture_output=True)
    finally:
        vm.stop()
    return tag


def settle_the_secret_key(vm: TestVM) -> None:
    """One first start in 50 makes a SECRET_KEY Label Studio cannot read back (tasks/core/commands/
    secret_key.py): the tokens of that first run die at its next start, whoever starts it. Then the
    guide's user restarts it once (Label Studio appends a key it reads) before the tests make their
    tokens, so they prove what adopt keeps rather than that lottery."""
    state = as_user(vm, secret_key.state(f"{GUIDE_DATA}/.env")).stdout.decode().strip()
    if state == secret_key.UNREADABLE:
        restart_in_screen(vm)


def start_in_screen(vm: TestVM, *, exports: str = "") -> None:
    """`screen -S ls`, then `label-studio start` typed in it (Ctrl-A D: it stays detached); `exports`
    (`export K=V && `) typed first."""
    as_user(vm, f"screen -s /bin/bash -dmS {GUIDE_SESSION}")  # the login shell an SSH session gives
    as_user(vm, f"screen -S {GUIDE_SESSION} -X stuff "
                + shlex.quote(f"{exports}cd ~/{GUIDE_DIR} && source {GUIDE_VENV}/bin/activate && label-studio start\n"))
    wait_until_listening(vm)


def restart_in_screen(vm: TestVM, *, exports: str = "") -> None:
    """The guide's user quits the session and starts Label Studio in a new one."""
    as_user(vm, f"screen -S {GUIDE_SESSION} -X quit")
    deadline = time.monotonic() + 120
    while listens_on_all_interfaces(vm, GUIDE_PORT):
        if time.monotonic() > deadline:
            raise TimeoutError("the hand-made Label Studio did not stop")
        time.sleep(0.5)  # poll interval between real checks
    start_in_screen(vm, exports=exports)


def listens_on_all_interfaces(vm: TestVM, port: int) -> bool:
    """A LISTEN (0A) socket on 0.0.0.0 or :: for `port`, read from /proc/net."""
    hex_port = f"{port:04X}"
    listening = vm.exec("cat /proc/net/tcp /proc/net/tcp6").stdout.decode()
    return any(re.match(rf"\s*\d+: (00000000|0{{32}}):{hex_port} \S+ 0A ", line) for line in listening.splitlines())


def wait_until_listening(vm: TestVM, timeout: float = 600) -> None:
    """Poll the hand-made instance's /health inside the VM until it answers UP (first start migrates)."""
    probe = ("python3 -c \"import urllib.request as u;"
             f"print(u.urlopen('http://127.0.0.1:{GUIDE_PORT}/health',timeout=5).read().decode())\"")
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        result = vm.exec(probe, check=False)
        last = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode == 0 and "UP" in last:
            return
        time.sleep(1)  # poll interval between real checks
    raise TimeoutError(f"the hand-made Label Studio did not answer /health: {last[-300:]}")


@dataclass
class GuideData:
    """What the test made through the API, to compare after the adopt."""

    owner: tuple[str, str]
    annotator: tuple[str, str]
    token: str
    session_cookie: str
    projects: dict = field(default_factory=dict)   # title -> task count
    annotations: int = 0
    upload_path: str = ""                          # /data/upload/... of the uploaded image
    upload_bytes: bytes = b""


def make_data(base_url: str, image: bytes) -> GuideData:
    """Two users (signup is open on a hand-made install), projects, 40 tasks, annotations and an
    uploaded image, all through Label Studio's API as a user of the guide's VM would."""
    owner, annotator = ("owner@example.com", "owner-pw-12345"), ("annotator@example.com", "annotator-pw-12345")
    for account in (owner, annotator):
        signed_up = LabelStudio(base_url).signup(*account)
        assert signed_up.status in (200, 302), ("signup failed", signed_up.status, signed_up.text[:500])
    ls = LabelStudio(base_url)
    assert ls.login(*owner)
    # A personal access token (a JWT signed with the instance's SECRET_KEY; legacy tokens are off by default).
    created = ls.post_json("/api/token/", {})
    assert created.status == 201, created.text[:300]
    token = created.json()["token"]
    data = GuideData(owner, annotator, token, ls.cookie("sessionid") or "")
    for title, count in (("Reviews", 40), ("Second project", 5)):
        project = ls.post_json("/api/projects", {"title": title, "label_config": LABEL_CONFIG}).json()["id"]
        tasks = [{"text": f"{title} task {i}: the quick brown fox {i * 7}"} for i in range(count)]
        assert ls.import_file(project, "tasks.json", json.dumps(tasks).encode()).status == 201
        data.projects[title] = count
        if title == "Reviews":
            ids = [t["id"] for t in ls.get(f"/api/tasks?project={project}&page_size=100").json()["tasks"]]
            for task_id in ids[:12]:
                resp = ls.post_json(f"/api/tasks/{task_id}/annotations", {"result": [{
                    "from_name": "label", "to_name": "text", "type": "choices",
                    "value": {"choices": ["pos" if task_id % 2 else "neg"]}}]})
                assert resp.status == 201, resp.text[:300]
                data.annotations += 1
            upload = ls.import_file(project, "photo.png", image)
            assert upload.status == 201, upload.text[:300]
            newest = ls.get(f"/api/tasks?project={project}&page_size=100").json()["tasks"]
            data.upload_path = next(v for t in newest for v in t["data"].values()
                                    if isinstance(v, str) and "/data/upload/" in v)
            data.projects[title] += 1
    data.upload_bytes = image
    return data
