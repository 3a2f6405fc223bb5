"""Command builders quote every value; recorded probe output parses into the right facts."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest

from tasks.core import commands, parse
from tasks.core.commands import probes
from tasks.core.profile import Profile
from tasks.core.provision.facts import status_from_probe

NASTY = [
    "plain",
    "with space",
    "it's quoted",
    'double "quotes"',
    "semi;colon; rm -rf /",
    "$(touch /tmp/pwned) `id` $HOME",
    "new\nline",
    "",
]


@pytest.mark.parametrize("value", NASTY)
def test_quoted_value_reaches_the_program_unchanged(value):
    # printf through a real shell: what the program receives is exactly the value.
    line = "printf %s " + commands.q(value)
    assert subprocess.run(["sh", "-c", line], capture_output=True, text=True).stdout == value


@pytest.mark.parametrize("value", NASTY)
def test_sh_wraps_a_whole_script_as_one_argument(value):
    script = "printf %s " + commands.q(value) + "; printf %s END"
    line = commands.sh(script)
    assert subprocess.run(["sh", "-c", line], capture_output=True, text=True).stdout == value + "END"


def test_join_quotes_each_word():
    assert commands.join("ls", "-l", "my dir; rm x") == "ls -l 'my dir; rm x'"


def test_sudo_noninteractive_never_prompts():
    assert commands.sudo_noninteractive("a && b").startswith("sudo -n sh -c ")


RECORDED_BARE = """\
[host]
os=Debian GNU/Linux 12 (bookworm)
kernel=6.1.0-18-amd64
python3=3.11.2
systemd=yes
disk=85149323264 /
[install]
installed=no
dist=
db_size=
unit_file=no
nginx_site=no
screen=no
[service]
LoadState=not-found
ActiveState=inactive
SubState=dead
UnitFileState=
MainPID=0
[nginx]
LoadState=not-found
ActiveState=inactive
SubState=dead
UnitFileState=
MainPID=0
[health]
direct=0 URLError
"""

RECORDED_PROVISIONED = """\
[host]
os=Debian GNU/Linux 12 (bookworm)
kernel=6.1.0-18-amd64
python3=3.11.2
systemd=yes
disk=85149323264 /var
[install]
installed=yes
dist=/opt/label-studio/venv/lib/python3.11/site-packages/label_studio-1.23.2.dist-info
db_size=1581056
unit_file=yes
nginx_site=yes
screen=no
[service]
LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
MainPID=812
[nginx]
LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
MainPID=402
[health]
via_nginx=200 {"status": "UP"}
direct=200 {"status": "UP"}
[database]
check={"tables": 75}
"""


def test_bare_host_is_not_provisioned():
    st = status_from_probe(RECORDED_BARE.replace("os=Debian GNU/Linux 12 (bookworm)\n",
                                                 "os=Debian GNU/Linux 12 (bookworm)\nos_id=debian\nos_version=12\n"))
    assert st.os == "Debian GNU/Linux 12 (bookworm)"
    assert (st.os_id, st.os_version) == ("debian", "12")
    assert st.python3 == "3.11.2"
    assert st.systemd is True
    assert st.disk_free == 85149323264 and st.disk_mount == "/"
    assert not st.provisioned
    assert not st.service.exists and st.service.describe() == "not installed"
    assert not st.healthy


def test_provisioned_host_facts():
    st = status_from_probe(RECORDED_PROVISIONED)
    assert st.provisioned
    assert st.label_studio_version == "1.23.2"
    assert st.db_size == 1581056
    assert st.service.running and st.service.describe() == "active (running), enabled at boot"
    assert st.healthy and st.database_check is None


@pytest.mark.parametrize("check, why", [
    ('{"error": "task_completion: OperationalError: no such column: task_completion.lead_time"}',
     "task_completion: OperationalError: no such column: task_completion.lead_time"),
    ("", "no answer from the check"),
])
def test_up_means_our_instance_answers_and_its_release_reads_its_database(check, why):
    """/health never touches the database: UP only when the release also reads every table."""
    st = status_from_probe(RECORDED_PROVISIONED.replace('check={"tables": 75}', f"check={check}"))
    assert parse.health_is_up(st.health_via_nginx) and not st.healthy and st.database_check == why


@pytest.mark.parametrize(
    "value, up",
    [('200 {"status": "UP"}', True), ('200 {"status":"UP"}', True), ("502 ", False),
     ('200 {"status": "DOWN"}', False), ("0 URLError", False), ("", False), (None, False)],
)
def test_health_parser(value, up):
    assert parse.health_is_up(value) is up


def test_sections_ignore_noise_and_keep_equals_in_values():
    s = parse.sections("noise\n[a]\nk=v=w\n\n[b]\nx = 1\r\n")
    assert s == {"a": {"k": "v=w"}, "b": {"x": "1"}}


@pytest.mark.parametrize("os_id, version, words", [
    ("debian", "12", None),
    ("debian", "13", None),
    ("ubuntu", "24.04", "Ubuntu 24.04 is expected to work but is not tested"),
    ("ubuntu", "22.04", "Ubuntu 22.04 is expected to work but is not tested"),
    ("debian", "11", "debian 11 is not a system this toolkit is tested on"),
    ("fedora", "41", "fedora 41 is not a system this toolkit is tested on"),
    ("", "", "this system is not a system this toolkit is tested on"),
])
def test_untested_systems_get_a_warning(os_id, version, words):
    from tasks.core.provision import systems

    warning = systems.support_warning(os_id, version)
    if words is None:
        assert warning is None
    else:
        assert warning.startswith(words) and "Debian 12 (bookworm) and Debian 13 (trixie)" in warning


def test_provisions_look_at_the_database_runs_as_its_owner_with_a_deadline():
    """The file is the service user's: root never opens it, and an endless view cannot hang provision."""
    probe = probes.provision_probe(Profile(), "a@b.org")
    line = probe[probe.index("echo '[db]'\n") + len("echo '[db]'\n"):probe.index("echo '[service]'")]
    assert line.startswith("if [ -e /var/lib/label-studio/label_studio.sqlite3 ]; then timeout -k 5 ")
    assert "runuser -u labelstudio -- env -C /var/lib/label-studio " in line and " python3 -I -c " in line


def test_an_endless_view_is_interrupted_by_the_probes_deadline(tmp_path):
    database = tmp_path / "label_studio.sqlite3"
    con = sqlite3.connect(database)
    con.execute("create view htx_user as with recursive n(i) as (select 1 union all select i + 1 from n) "
                "select i as email from n")
    con.commit()
    con.close()
    program = probes._DB_FACTS.replace(f"+{probes.DB_PROBE_SECONDS}\n", "+1\n")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-I", "-c", program, str(database), "a@b.org"], capture_output=True,
                         text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert out.stdout.startswith("error=OperationalError: interrupted"), out.stdout + out.stderr


def test_status_json_has_every_key_and_says_serving_only_when_up():
    from tasks.core.commands.service import service_manager
    from tasks.core.errors import NotServing
    from tasks.service import STATUS_KEYS, status_record, status_rows
    from tests.unit.samples import PROFILE

    up = status_from_probe(RECORDED_PROVISIONED)
    rows = status_rows("vm", "passwordless", up, service_manager(PROFILE), "20261203T080105Z (1.5 MiB)")
    record = status_record("vm", "passwordless", up, rows, "off", "20261203T080105Z", None)
    assert tuple(record) == STATUS_KEYS
    assert (record["provisioned"], record["serving"], record["health"]) == (True, True, "UP")
    assert record["label_studio_version"] == "1.23.2" and record["db_size_bytes"] == 1581056
    assert record["service"] == "active (running), enabled at boot"
    assert (record["exit_code"], record["problem"], record["offsite"]) == (0, None, None)
    down = status_from_probe(RECORDED_PROVISIONED.replace('check={"tables": 75}', "check="))
    failure = NotServing("Label Studio on vm is not serving")
    record = status_record("vm", "passwordless", down, status_rows("vm", "passwordless", down, service_manager(PROFILE)),
                           "off", None, failure)
    assert record["serving"] is False and record["exit_code"] == 8 and record["problem"].startswith("Label Studio on vm")
    assert record["health"].startswith("answers /health, but cannot read its database")
    bare = status_from_probe(RECORDED_BARE)
    record = status_record("vm", "passwordless", bare, status_rows("vm", "passwordless", bare, service_manager(PROFILE)),
                           "off", None, None)
    assert (record["provisioned"], record["serving"], record["health"], record["releases"]) == (False, False, None, [])
