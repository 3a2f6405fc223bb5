"""`fab provision` on a bare Debian 12 / 13 VM, proven through nginx with the real label-studio from PyPI.

The tests share one provisioned VM (provisioning takes minutes) and run in file order; the reboot test
comes last. None relies on an earlier test: each runs alone (`pytest -k NAME`) on the freshly provisioned
VM, and a test that changes the server (a password, a profile, a stopped service) puts it back.
"""

from __future__ import annotations

import json
import re

import pytest

from dev.lsclient import LabelStudio, wait_for_health
from tasks.core.errors import NotServing
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, DEFAULT_HOME_MODE

MANAGED = [
    "/opt/label-studio/label-studio.env",
    "/etc/systemd/system/label-studio.service",
    "/etc/nginx/sites-available/label-studio",
]


def changed_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("~ changed")]


def vm_fingerprint(vm) -> str:
    """Everything provision manages, as one string: equal before and after means nothing changed."""
    return vm.exec(
        f"sha256sum {' '.join(MANAGED)}; stat -c '%n %U:%G %a' {' '.join(MANAGED)} "
        "/opt/label-studio /var/lib/label-studio; readlink /etc/nginx/sites-enabled/label-studio; "
        "ls /etc/nginx/sites-enabled; ufw status verbose; "
        "systemctl show -p ActiveState,UnitFileState,MainPID label-studio.service nginx.service; "
        "ls /opt/label-studio/current/lib/python3*/site-packages | grep -i '^label_studio-'; readlink /opt/label-studio/current"
    ).stdout.decode()


def test_fresh_provision_serves_label_studio_through_nginx(provisioned):
    # The SSH user's home is as the system makes it (0700 on Debian 13: Label Studio cannot read it).
    assert provisioned.login_home_mode == DEFAULT_HOME_MODE[provisioned.suite]
    result = provisioned.first_run
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for words in ("installed python3-venv, nginx, sqlite3, zstd, python3-xxhash, ufw", "installed label-studio 1.23.2",
                  "created admin admin@example.com", "enabled ufw", "started label-studio.service"):
        assert words in out
    assert re.search(r"\d+ changed, \d+ unchanged", out)
    assert provisioned.url in out
    assert wait_for_health(provisioned.url, timeout=10) == {"status": "UP"}
    login_page = LabelStudio(provisioned.url).get("/user/login/")
    assert login_page.status == 200
    assert 'name="password"' in login_page.text
    # uv installed it (the faster path; pip only when uv fails), with its bytecode compiled.
    site = "/opt/label-studio/current/lib/python3*/site-packages"
    assert provisioned.vm.exec(f"cat {site}/label_studio-*.dist-info/INSTALLER").stdout.decode().strip() == "uv"
    assert provisioned.vm.exec(f"ls {site}/label_studio/__pycache__ | grep -c pyc").stdout.decode().strip() != "0"


def test_login_create_project_and_import_a_20mb_file_through_nginx(provisioned):
    ls = LabelStudio(provisioned.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert not LabelStudio(provisioned.url).login(ADMIN_EMAIL, "not-the-password")
    project = ls.create_project("upload through nginx")
    tasks = [{"text": f"task {i} " + "lorem ipsum " * 90} for i in range(20_000)]
    payload = json.dumps(tasks).encode()
    assert len(payload) > 20 * 1024 * 1024
    resp = ls.import_file(project, "tasks.json", payload)
    assert resp.status == 201, resp.text[:300]
    assert resp.json()["task_count"] == 20_000
    assert ls.task_count(project) == 20_000


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_deny_export_is_a_403_from_nginx(provisioned):
    ls = LabelStudio(provisioned.url)
    assert ls.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    project = ls.create_project("export is denied")
    resp = ls.get(f"/api/projects/{project}/export?exportType=JSON")
    assert resp.status == 403
    assert "nginx" in resp.text  # nginx answered, Label Studio never saw the request
    assert ls.get(f"/api/projects/{project}/").status == 200


def test_label_studio_listens_on_loopback_only(provisioned):
    listening = provisioned.vm.exec("ss -ltnH").stdout.decode()
    sockets = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(":8080")]
    assert sockets == ["127.0.0.1:8080"], listening
    ufw = provisioned.vm.exec("ufw status").stdout.decode()
    assert "Status: active" in ufw
    assert "22/tcp" in ufw and "80/tcp" in ufw
    assert "8080" not in ufw


def test_signup_without_an_invite_link_is_refused(provisioned):
    resp = LabelStudio(provisioned.url).signup("intruder@example.com", "intruder-pw-123")
    assert resp.status == 403
    users = provisioned.vm.exec(
        "sqlite3 /var/lib/label-studio/label_studio.sqlite3 'select email from htx_user'"
    ).stdout.decode().split()
    assert users == [ADMIN_EMAIL]


def test_env_file_is_0600_and_the_password_is_nowhere(provisioned):
    vm = provisioned.vm
    assert vm.exec("stat -c '%U:%G %a' /opt/label-studio/label-studio.env").stdout.decode().strip() == "root:root 600"
    env_file = vm.exec("cat /opt/label-studio/label-studio.env").stdout.decode()
    assert "LABEL_STUDIO_HOST=" + provisioned.url in env_file
    assert "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true" in env_file
    assert "SENTRY_DSN=\n" in env_file
    for where in ("ps auxww", "cat /etc/systemd/system/label-studio.service /opt/label-studio/label-studio.env",
                  "journalctl --no-pager", "cat /proc/$(systemctl show -p MainPID --value label-studio)/environ",
                  "cat /home/ops/.bash_history 2>/dev/null; ls -la /tmp /var/tmp"):
        text = vm.exec(where, check=False).stdout.decode(errors="replace")
        assert ADMIN_PASSWORD not in text, where
    assert ADMIN_PASSWORD not in provisioned.first_run.stdout + provisioned.first_run.stderr


def test_second_provision_changes_nothing(provisioned):
    before = vm_fingerprint(provisioned.vm)
    result = provisioned.fab("provision")  # no password needed: the admin exists
    assert result.returncode == 0, result.stderr
    assert changed_lines(result.stdout) == []
    assert "0 changed" in result.stdout
    assert vm_fingerprint(provisioned.vm) == before


def test_dry_run_after_a_profile_change_shows_the_diff_and_changes_nothing(provisioned):
    changed = provisioned.profile.parent / "changed.yaml"
    changed.write_text(provisioned.profile.read_text() + "nginx:\n  client_max_body_size: 300m\n  deny_export: false\n")
    before = vm_fingerprint(provisioned.vm)
    result = provisioned.fab("provision", "--dry-run", env={"LSVM_CONFIG": str(changed)})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "would update nginx site /etc/nginx/sites-available/label-studio" in out
    assert "-    client_max_body_size 200m;" in out
    assert "+    client_max_body_size 300m;" in out
    assert "-        return 403;" in out
    assert "Nothing was changed" in out
    assert vm_fingerprint(provisioned.vm) == before


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_a_site_that_fails_nginx_t_leaves_the_old_site_serving(provisioned):
    broken = provisioned.profile.parent / "broken-nginx.yaml"
    # Passes our own check (digits + unit) but overflows nginx's size parser: `nginx -t` fails.
    broken.write_text(provisioned.profile.read_text() + "nginx:\n  client_max_body_size: 99999999999999999999m\n")
    before = vm_fingerprint(provisioned.vm)
    result = provisioned.fab("provision", env={"LSVM_CONFIG": str(broken)})
    assert result.returncode == 5
    assert "nginx rejected the new site" in result.stderr
    assert "previous site is back" in result.stderr
    assert "Traceback" not in result.stderr
    assert vm_fingerprint(provisioned.vm) == before
    assert provisioned.vm.exec("ls /etc/nginx/sites-available").stdout.decode().split() == ["default", "label-studio"]
    assert wait_for_health(provisioned.url, timeout=10) == {"status": "UP"}


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_reset_password(provisioned):
    new = "second-admin-pw-2"
    result = provisioned.fab("provision", "--reset-password", env={"LABEL_STUDIO_PASSWORD": new})
    assert result.returncode == 0, result.stderr
    assert f"reset the password of {ADMIN_EMAIL}" in result.stdout
    assert LabelStudio(provisioned.url).login(ADMIN_EMAIL, new)
    assert not LabelStudio(provisioned.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)
    back = provisioned.fab("provision", "--reset-password", env={"LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD})
    assert back.returncode == 0, back.stderr
    assert LabelStudio(provisioned.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_provision_without_a_password_source_is_refused_before_any_change(provisioned):
    other = provisioned.profile.parent / "new-admin.yaml"
    other.write_text(provisioned.profile.read_text().replace(ADMIN_EMAIL, "second@example.com"))
    before = vm_fingerprint(provisioned.vm)
    result = provisioned.fab("provision", env={"LSVM_CONFIG": str(other)})
    assert result.returncode == 2
    assert "set LABEL_STUDIO_PASSWORD" in result.stderr
    assert vm_fingerprint(provisioned.vm) == before


def test_status_logs_stop_start_restart(provisioned):
    fab = provisioned.fab
    status = fab("status")
    assert status.returncode == 0, status.stderr
    assert re.search(r"service\s+active \(running\), enabled at boot", status.stdout)
    assert re.search(r"health \(via nginx\)\s+UP", status.stdout)
    assert re.search(r"label studio\s+1\.23\.2", status.stdout)
    assert re.search(r"database\s+SQLite, [\d.]+ (KiB|MiB)", status.stdout)
    machine = fab("status", "--json")
    assert machine.returncode == 0, machine.stderr
    record = json.loads(machine.stdout)
    assert (record["serving"], record["health"], record["label_studio_version"]) == (True, "UP", "1.23.2")
    assert record["exit_code"] == 0 and record["problem"] is None and record["db_size_bytes"] > 0

    logs = fab("logs", "--lines", "30")
    assert logs.returncode == 0, logs.stderr
    assert "label-studio" in logs.stdout

    stopped = fab("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped label-studio" in stopped.stdout
    assert LabelStudio(provisioned.url, timeout=10).get("/health").status == 502
    down = fab("status")
    assert re.search(r"service\s+inactive", down.stdout)
    assert down.returncode == NotServing.exit_code, down.stderr   # cron and monitoring see it
    assert re.match(r"error: Label Studio on \S+ is not serving: nothing listens on port 8080", down.stderr), down.stderr
    machine = fab("status", "--json")
    assert machine.returncode == NotServing.exit_code
    record = json.loads(machine.stdout)      # the JSON is whole on stdout; the error line on stderr
    assert record["serving"] is False and record["exit_code"] == NotServing.exit_code
    assert record["health"] == "nothing listens on port 8080" and record["service"].startswith("inactive")
    assert "already stopped" in fab("stop").stdout

    started = fab("start")
    assert started.returncode == 0, started.stderr
    assert "answers /health" in started.stdout
    assert "already running" in fab("start").stdout

    pid_before = provisioned.vm.exec("systemctl show -p MainPID --value label-studio").stdout.strip()
    restarted = fab("restart")
    assert restarted.returncode == 0, restarted.stderr
    pid_after = provisioned.vm.exec("systemctl show -p MainPID --value label-studio").stdout.strip()
    assert pid_after != pid_before
    assert wait_for_health(provisioned.url, timeout=10) == {"status": "UP"}


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_provision_writes_the_secret_key_first_and_replaces_one_label_studio_cannot_read(provisioned):
    vm, env_file = provisioned.vm, "/var/lib/label-studio/.env"
    assert "made Label Studio's SECRET_KEY (/var/lib/label-studio/.env, 0600)" in provisioned.first_run.stdout
    original = vm.exec(f"cat {env_file}").stdout.decode()
    # One line: Label Studio read our key at its first start (it appends its own when it reads none).
    assert re.fullmatch(r"SECRET_KEY=[A-Za-z0-9_-]{64}\n", original)
    assert vm.exec(f"stat -c '%U:%G %a' {env_file}").stdout.decode().strip() == "labelstudio:labelstudio 600"
    # As Label Studio's first start leaves one in 50 data dirs: a key starting with $, which django-environ
    # reads back as empty (Label Studio would make a new one at its next start, ending every session).
    vm.exec(f"printf '\\nSECRET_KEY=%s\\n' '$x9l(2=)^k+w#n0c3p!r7s_v-e@z1m8&q5a6t*u4o%b)y(fgh' > {env_file}")
    try:
        result = provisioned.fab("provision")
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.findall(r"~ changed\s+(.*)", result.stdout) == [
            "replaced the SECRET_KEY in /var/lib/label-studio/.env: Label Studio reads it back as empty (it starts "
            "with $), so it would make a new one at its next start"]
        repaired = vm.exec(f"cat {env_file}").stdout.decode()
        assert re.fullmatch(r"\nSECRET_KEY=[A-Za-z0-9_-]{64}\n", repaired) and repaired.strip() != original.strip()
        vm.exec("systemctl restart label-studio")
        assert wait_for_health(provisioned.url, timeout=120) == {"status": "UP"}
        session = LabelStudio(provisioned.url)
        assert session.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        vm.exec("systemctl restart label-studio")
        assert wait_for_health(provisioned.url, timeout=120) == {"status": "UP"}
        # Read back at both starts: nothing appended, and a session from before the restart still works.
        assert vm.exec(f"cat {env_file}").stdout.decode() == repaired
        assert session.get("/api/current-user/whoami").status == 200
    finally:
        # The VM's first key back: sessions and tokens other tests hold stay valid.
        vm.exec(f"cat > {env_file}", input=original.encode())
        vm.exec("systemctl restart label-studio")
        wait_for_health(provisioned.url, timeout=120)


def test_label_studio_comes_back_after_a_reboot(provisioned):
    provisioned.vm.restart()
    # No fab command: systemd alone must bring nginx and Label Studio back.
    assert wait_for_health(provisioned.url, timeout=300) == {"status": "UP"}
    assert LabelStudio(provisioned.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_the_single_venv_of_an_earlier_toolkit_version_is_taken_over_without_a_reinstall(provisioned):
    """Installs made before releases/ existed have one /opt/label-studio/venv and a unit that starts it."""
    vm, release = provisioned.vm, "/opt/label-studio/releases/1.23.2"
    # That layout, made from the release venv as `python3 -m venv` + pip would have made it there.
    vm.exec(f"systemctl stop label-studio && cp -a {release} /opt/label-studio/venv && "
            f"grep -rlI {release} /opt/label-studio/venv/bin | xargs sed -i 's|{release}|/opt/label-studio/venv|g' && "
            "rm -f /opt/label-studio/venv/.lsvm-complete /opt/label-studio/current && rm -rf /opt/label-studio/releases && "
            "sed -i 's|/opt/label-studio/current/|/opt/label-studio/venv/|' /etc/systemd/system/label-studio.service && "
            "systemctl daemon-reload && systemctl start label-studio")
    result = provisioned.fab("provision")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "took over /opt/label-studio/venv (label-studio 1.23.2) as the current release" in result.stdout
    assert "pip install" not in result.stdout and "installed label-studio" not in result.stdout
    assert vm.exec("readlink /opt/label-studio/current").stdout.decode().strip() == "venv"
    assert wait_for_health(provisioned.url, timeout=120) == {"status": "UP"}
    again = provisioned.fab("provision")
    assert re.search(r"\b0 changed\b", again.stdout), again.stdout
