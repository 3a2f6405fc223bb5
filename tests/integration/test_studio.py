"""`fab studio.bootstrap` for real, in a temporary HOME without conda, and the launcher behind an nginx
that strips the Jupyter server proxy's prefix, as SageMaker Studio does."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from dev.lsclient import LabelStudio, wait_for_health
from dev.testvm.machine import free_port
from tests.integration.support.fab import PROJECT_ROOT
from tests.integration.support.machines import PIP_CACHE

STUDIO_URL = "https://AbCd1234.studio.eu-west-2.sagemaker.aws/jupyterlab/default/lab?reset"
ORIGIN = "https://abcd1234.studio.eu-west-2.sagemaker.aws"
EMAIL, PASSWORD = "studio@example.com", "studio-pass-123"


def fab_local(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "LSVM_", "CONDA"))}
    # No conda on PATH: bootstrap must fall back to a venv.
    clean["PATH"] = os.pathsep.join(p for p in clean.get("PATH", "").split(os.pathsep) if "conda" not in p)
    # pip's cache outlives the temporary HOME (CI time: Label Studio's wheels downloaded once per machine).
    clean.update(HOME=str(home), PIP_CACHE_DIR=str(PIP_CACHE), **(env or {}))
    return subprocess.run([sys.executable, "-m", "fabric", *args], cwd=PROJECT_ROOT, env=clean,
                          capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def studio_home(tmp_path_factory):
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx is not installed (bash .ci/run installs it)")
    home = tmp_path_factory.mktemp("studio-home")
    port = free_port()
    first = fab_local(home, "studio.bootstrap", "--studio-url", STUDIO_URL, "--username", EMAIL,
                      "--home", str(home), "--port", str(port), env={"LABEL_STUDIO_PASSWORD": PASSWORD})
    return home, port, first


def test_bootstrap_creates_venv_files_and_launcher(studio_home):
    home, port, first = studio_home
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created venv" in first.stdout and "no conda here" in first.stdout
    assert "installed label-studio 1.23.2, label-studio-sdk 2.1.2" in first.stdout
    venv = home / "conda-envs" / "labelstudio"
    assert (venv / "bin" / "label-studio").exists()
    for name, mode in ((".labelstudio/static.env", 0o600), (".labelstudio/session.env", 0o600),
                       ("start_labelstudio.sh", 0o755)):
        path = home / name
        assert oct(path.stat().st_mode & 0o777) == oct(mode), name
        assert b"\r" not in path.read_bytes(), name
    assert oct((home / ".labelstudio").stat().st_mode & 0o777) == "0o700"
    session = (home / ".labelstudio/session.env").read_text()
    assert f"LABEL_STUDIO_HOST={ORIGIN}/jupyterlab/default/proxy/{port}/" in session
    assert "DJANGO_ALLOWED_HOSTS" not in session + (home / ".labelstudio/static.env").read_text()
    assert PASSWORD not in first.stdout + first.stderr


def test_second_bootstrap_changes_nothing(studio_home):
    home, port, _ = studio_home
    before = {p: p.read_bytes() for p in (home / ".labelstudio").iterdir()}
    again = fab_local(home, "studio.bootstrap", "--studio-url", STUDIO_URL, "--home", str(home), "--port", str(port))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "~ changed" not in again.stdout
    assert "label-studio 1.23.2 and label-studio-sdk 2.1.2 are installed" in again.stdout
    assert {p: p.read_bytes() for p in (home / ".labelstudio").iterdir()} == before


def test_launcher_behind_a_prefix_stripping_proxy(studio_home, tmp_path):
    home, port, _ = studio_home
    prefix = f"/jupyterlab/default/proxy/{port}/"
    nginx_port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    server {{
        listen 127.0.0.1:{nginx_port};
        location {prefix} {{
            proxy_pass http://127.0.0.1:{port}/;
            proxy_set_header Host $http_host;
        }}
    }}
}}
""")
    nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(tmp_path)],
                             stderr=subprocess.PIPE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "CSRF_"))}
    env["HOME"] = str(home)
    launcher = subprocess.Popen([str(home / "start_labelstudio.sh")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", timeout=300)
        # The launcher wrote the SECRET_KEY before the first start and Label Studio read it back (it
        # appends one of its own when it finds none).
        env_file = home / "labelstudio-data" / ".env"
        assert re.fullmatch(r"SECRET_KEY=[A-Za-z0-9_-]{64}\n", env_file.read_text())
        assert env_file.stat().st_mode & 0o777 == 0o600
        studio_host = urllib.parse.urlparse(ORIGIN).netloc
        proxied = LabelStudio(f"http://127.0.0.1:{nginx_port}{prefix.rstrip('/')}")
        page = proxied.request("GET", "/user/login/", headers={"Host": studio_host})
        assert page.status == 200, page.text[:300]
        assets = re.findall(r'(?:href|src)="([^"]+\.(?:css|js))"', page.text)
        assert assets and all(a.startswith(ORIGIN + prefix) for a in assets), assets[:5]
        css = proxied.request("GET", "/" + assets[0][len(ORIGIN + prefix):], headers={"Host": studio_host})
        assert css.status == 200 and len(css.body) > 1000

        def login(origin: str) -> "object":
            client = LabelStudio(f"http://127.0.0.1:{nginx_port}{prefix.rstrip('/')}")
            client.request("GET", "/user/login/", headers={"Host": studio_host})
            form = urllib.parse.urlencode({"email": EMAIL, "password": PASSWORD,
                                           "csrfmiddlewaretoken": client.cookie("csrftoken")}).encode()
            return client.request("POST", "/user/login/", form, {
                "Host": studio_host, "Origin": origin, "Referer": ORIGIN + prefix + "user/login/",
                "Content-Type": "application/x-www-form-urlencoded"}), client

        forged, _ = login("https://evil.example.org")
        assert forged.status == 403  # CSRF really is checked...
        resp, client = login(ORIGIN)
        assert resp.status != 403, resp.text[:300]  # ...and the Studio origin passes it
        assert client.cookie("sessionid")
        launcher.terminate()
        banner = launcher.communicate(timeout=30)[0]
        assert f"Label Studio: {ORIGIN}{prefix}" in banner
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGTERM)
            launcher.wait(timeout=30)
        nginx.terminate()
        nginx.wait(timeout=30)


def test_session_rewrites_the_proxy_url(studio_home):
    home, port, _ = studio_home
    session_env = home / ".labelstudio/session.env"
    as_bootstrapped = session_env.read_bytes()
    try:
        result = fab_local(home, "studio.session", "--studio-url", "newtoken9", "--region", "eu-west-2",
                           "--home", str(home), "--port", str(port))
        assert result.returncode == 0, result.stderr
        assert f"https://newtoken9.studio.eu-west-2.sagemaker.aws/jupyterlab/default/proxy/{port}/" in \
            session_env.read_text()
        bad = fab_local(home, "studio.session", "--studio-url", "https://example.com/x", "--home", str(home))
        assert bad.returncode == 2 and "not a Studio URL" in bad.stderr
    finally:
        # The shared home goes back to what bootstrap wrote: the other tests (in any order) expect it.
        session_env.write_bytes(as_bootstrapped)


def test_iam_policy_and_presigned_url_commands(studio_home, tmp_path):
    home, _, _ = studio_home
    out = tmp_path / "policy.json"
    result = fab_local(home, "studio.iam-policy", "--region", "eu-west-2", "--account-id", "123456789012",
                       "--domain-id", "d-abc123", "--user-profile", "alice", "--out", str(out))
    assert result.returncode == 0, result.stderr
    import json

    policy = json.loads(out.read_text())
    assert policy["Statement"][0]["Resource"] == \
        "arn:aws:sagemaker:eu-west-2:123456789012:app/d-abc123/user-profile/alice/*/*"
    bad = fab_local(home, "studio.iam-policy", "--region", "eu-west-2", "--account-id", "1234",
                    "--domain-id", "d-abc123", "--user-profile", "alice")
    assert bad.returncode == 2 and "12 digits" in bad.stderr

    # No boto3 (hidden by a module that fails to import, in case this Python has one), no aws CLI.
    no_boto = tmp_path / "no-boto3" / "boto3"
    no_boto.mkdir(parents=True)
    (no_boto / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    hide = {"PYTHONPATH": str(no_boto.parent)}
    bare = fab_local(home, "studio.presigned-url", "--domain-id", "d-abc123", "--user-profile", "alice",
                     env={"PATH": "/usr/bin:/bin", **hide})
    assert bare.returncode == 2 and "pip install boto3" in bare.stderr
    # With an aws CLI on PATH (a stand-in that echoes its arguments): its URL is printed.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "aws").write_text("#!/bin/sh\necho \"https://signed.example/?args=$*\"\n")
    (fake / "aws").chmod(0o755)
    signed = fab_local(home, "studio.presigned-url", "--domain-id", "d-abc123", "--user-profile", "alice",
                       "--region", "eu-west-2", env={"PATH": f"{fake}:/usr/bin:/bin", **hide})
    assert signed.returncode == 0, signed.stderr
    assert "create-presigned-domain-url" in signed.stdout and "--domain-id d-abc123" in signed.stdout
