"""Provision's plan as data: recorded facts + profile variants -> the exact changes, notifications
and handlers; then `apply` on a recording host (plan mode runs nothing)."""

from __future__ import annotations

import dataclasses

import pytest

from tasks.core import render
from tasks.core.commands.service import UnitState
from tasks.core.profile import parse_profile
from tasks.core.provision import plan, steps
from tasks.core.provision.plan import AdminRequest, EnsureAdmin, NginxSite, Run, WaitForHealth
from tests.unit.fakehost import FakeHost, ok, upload_of
from tests.unit.samples import PROFILE

EMAIL = "admin@example.com"
ADMIN = AdminRequest(EMAIL)


def changed(changes) -> list[str]:
    return [c.what for c in changes if c.changed]


def with_file(facts, key, content):
    return dataclasses.replace(facts, files={**facts.files, key: content})


def test_a_provisioned_host_plans_nothing(provisioned):
    changes = steps.plan(provisioned, PROFILE, ADMIN)
    assert changed(changes) == []
    assert [c for c in changes if c.action is not None] == []  # not even the health gate
    assert "label-studio.service is running" in [c.what for c in changes]


def test_a_bare_host_gets_every_step_then_the_handlers_in_order(bare):
    changes = steps.plan(bare, PROFILE, ADMIN)
    assert changed(changes) == [
        "installed python3-venv, nginx, sqlite3, zstd, python3-xxhash, ufw",
        "created system user labelstudio",
        "/opt/label-studio set to root:root:755 (was missing)",
        "/var/lib/label-studio set to labelstudio:labelstudio:750 (was missing)",
        "made Label Studio's SECRET_KEY (/var/lib/label-studio/.env, 0600)",
        "installed label-studio 1.23.2 (/opt/label-studio/releases/1.23.2)",
        "switched to label-studio 1.23.2",
        "created env file /opt/label-studio/label-studio.env",
        "created gunicorn settings /opt/label-studio/label-studio-gunicorn.conf.py",
        "created database step before each start /opt/label-studio/prepare-database.py",
        "created systemd unit /etc/systemd/system/label-studio.service",
        "created nginx site /etc/nginx/sites-available/label-studio (nginx -t passed)",
        "enabled the nginx site",
        "disabled the distribution's default site",
        "ufw allows 22/tcp",
        "ufw allows 80/tcp",
        "enabled ufw (SSH allowed first)",
        "reloaded systemd (the unit file changed)",
        "reloaded nginx",
        "enabled label-studio.service at boot",
        "started label-studio.service",
        f"created admin {EMAIL}",
    ]
    actions = [c.action for c in changes if c.action is not None]
    # One validated nginx action covers file, link and default site.
    assert sum(isinstance(a, NginxSite) for a in actions) == 1
    # The admin needs the migrated database: the health gate comes right before it.
    assert isinstance(actions[-2], WaitForHealth) and isinstance(actions[-1], EnsureAdmin)
    pip = next(c.action for c in changes if c.what.startswith("installed label-studio"))
    assert "pre-upgrade" not in pip.script


@pytest.mark.parametrize("key, expected, absent", [
    ("env_file", ["updated env file /opt/label-studio/label-studio.env",
                  "restarted label-studio.service (its settings changed)"], ["reloaded systemd (the unit file changed)"]),
    ("unit_file", ["updated systemd unit /etc/systemd/system/label-studio.service",
                   "reloaded systemd (the unit file changed)", "restarted label-studio.service (its settings changed)"], []),
    ("nginx_site", ["updated nginx site /etc/nginx/sites-available/label-studio (nginx -t passed)", "reloaded nginx"],
     ["restarted label-studio.service (its settings changed)"]),
])
def test_a_changed_template_notifies_exactly_its_handlers(provisioned, key, expected, absent):
    facts = with_file(provisioned, key, provisioned.files[key] + "# edited by hand\n")
    changes = steps.plan(facts, PROFILE, ADMIN)
    assert changed(changes) == expected
    for what in absent:
        assert what not in changed(changes)
    file_change = next(c for c in changes if c.changed)
    assert "-# edited by hand" in file_change.diff
    restarted = "restarted label-studio.service (its settings changed)" in expected
    assert any(isinstance(c.action, WaitForHealth) for c in changes) is restarted


def test_a_lost_env_file_mode_is_fixed_without_a_restart(provisioned):
    facts = dataclasses.replace(provisioned, env_file_meta="root:root:644")
    changes = steps.plan(facts, PROFILE, ADMIN)
    assert changed(changes) == ["env file set to root:root:600"]
    fix = next(c for c in changes if c.changed).action
    assert isinstance(fix, Run) and "chmod 0600" in fix.script


def test_a_secret_key_label_studio_reads_as_empty_is_replaced_without_a_restart(provisioned):
    facts = dataclasses.replace(provisioned, secret_key="unreadable")
    changes = steps.plan(facts, PROFILE, ADMIN)
    assert changed(changes) == ["replaced the SECRET_KEY in /var/lib/label-studio/.env: Label Studio reads it "
                                "back as empty (it starts with $), so it would make a new one at its next start"]
    fix = next(c for c in changes if c.changed).action
    assert fix.script.startswith("runuser -u labelstudio -- env -C /var/lib/label-studio")
    assert "/dev/urandom" in fix.script


def test_screen_to_systemd_stops_the_screen_session_then_starts_the_unit(provisioned):
    facts = dataclasses.replace(provisioned, screen_running=True, service=UnitState("not-found", "inactive", "dead", ""))
    assert changed(steps.plan(facts, PROFILE, ADMIN)) == [
        "stopped the screen session label-studio (systemd runs it now)",
        "enabled label-studio.service at boot",
        "started label-studio.service",
    ]


def test_systemd_to_screen_disables_the_unit_then_starts_screen(provisioned):
    profile = dataclasses.replace(PROFILE, service=parse_profile("service:\n  manager: screen\n").service)
    changes = steps.plan(provisioned, profile, ADMIN)
    assert changed(changes) == [
        "installed screen",
        "env file set to root:labelstudio:640",  # the launcher, run as the service user, reads it
        "created screen launcher /opt/label-studio/start-label-studio.sh",
        "stopped and disabled label-studio.service (screen runs it now)",
        "started screen session label-studio",
    ]
    assert "is enabled at boot" not in " ".join(c.what for c in changes)


def test_a_version_bump_copies_the_database_first_and_restarts(provisioned):
    profile = dataclasses.replace(PROFILE, label_studio=dataclasses.replace(PROFILE.label_studio, version="1.24.0"))
    changes = steps.plan(provisioned, profile, ADMIN)
    assert changed(changes) == [
        "built label-studio 1.24.0 beside 1.23.2 (/opt/label-studio/releases/1.24.0)",
        "switched from 1.23.2 to label-studio 1.24.0",
        # The unit starts current/bin/label-studio: it does not change.
        "restarted label-studio.service (its settings changed)",
    ]
    upgrade = next(c.action for c in changes if c.what.startswith("built label-studio 1.24.0"))
    # Made by the service user in its data dir, before pip touches anything.
    assert upgrade.script.startswith("stamp=$(date -u +%Y%m%dT%H%M%SZ) && runuser -u labelstudio -- env -C /var/lib/label-studio")
    assert "sh 1.23.2 \"$stamp\"" in upgrade.script
    assert upgrade.script.index(".backup pre-upgrade/") < upgrade.script.index("pip install")


def test_reset_password_waits_for_health_then_resets(provisioned):
    changes = steps.plan(provisioned, PROFILE, AdminRequest(EMAIL, "new-password-1", reset=True))
    assert changed(changes) == [f"reset the password of {EMAIL}"]
    assert isinstance(changes[-2].action, WaitForHealth) and changes[-1].action.admin.reset


def test_no_admin_email_and_existing_users_needs_no_admin(provisioned):
    last = steps.plan(provisioned, PROFILE, AdminRequest(None))[-1]
    assert not last.changed and last.what == "1 user(s); no admin_email set, no admin to add"


def test_a_stopped_nginx_is_started(provisioned):
    facts = dataclasses.replace(provisioned, nginx=UnitState("loaded", "inactive", "dead", "enabled"))
    assert changed(steps.plan(facts, PROFILE, ADMIN)) == ["started nginx"]


def test_firewall_off_plans_no_ufw(bare):
    profile = dataclasses.replace(PROFILE, firewall=parse_profile("firewall:\n  enabled: false\n").firewall)
    whats = [c.what for c in steps.plan(bare, profile, ADMIN)]
    assert "firewall is off in the profile (firewall.enabled: false)" in whats
    assert not [w for w in whats if "ufw" in w]


# ------------------------------------------------------------------------------------------------
# apply


def test_plan_mode_runs_nothing_and_shows_diffs(bare, capsys):
    host = FakeHost()
    done = plan.apply(host, steps.plan(bare, PROFILE, ADMIN), dry_run=True)
    assert host.log == []
    out = capsys.readouterr().out
    assert "would install python3-venv, nginx, sqlite3, zstd, python3-xxhash, ufw" in out
    assert "+LABEL_STUDIO_HOST=http://127.0.0.1:59503" in out  # the env file's diff
    assert "would wait for Label Studio to answer /health" in out
    assert sum(c.changed for c in done) == 22


def test_apply_runs_the_actions_in_plan_order(bare):
    host = (FakeHost()
            .answer(r"mktemp -d", ok("/tmp/lsvm.1\n"))
            .answer(r" health http://", ok('200 {"status": "UP"}\n'))
            .answer(r" read-every-table ", ok('{"tables": 71}\n'))
            .answer(r"ensure_admin.py", ok('RESULT {"outcome": "created", "users": 1}\n')))
    admin = AdminRequest(EMAIL, "first-admin-pw-1")
    done = plan.apply(host, steps.plan(bare, PROFILE, admin), dry_run=False)
    commands = host.commands
    order = [next(i for i, c in enumerate(commands) if marker in c) for marker in (
        "apt-get install", "useradd", "pip install", "ufw --force enable", "systemctl daemon-reload",
        "systemctl start label-studio.service", " health http://", " read-every-table ", "ensure_admin.py")]
    assert order == sorted(order)
    assert upload_of(host, "site").decode() == render.nginx_site(PROFILE, ipv6=False,
                                                                 site_packages=bare.site_packages).content
    assert b"first-admin-pw-1" in upload_of(host, "secret")
    assert not [c for c in commands if "first-admin-pw-1" in c]  # never in a command line
    assert done[-1].what == f"created admin {EMAIL}"


def test_an_admin_that_appeared_meanwhile_is_reported_unchanged(provisioned):
    facts = dataclasses.replace(provisioned, admin_exists=False)
    host = (FakeHost().answer(r"mktemp -d", ok("/tmp/lsvm.1\n"))
            .answer(r" health http://", ok('200 {"status": "UP"}\n'))
            .answer(r" read-every-table ", ok('{"tables": 71}\n'))
            .answer(r"ensure_admin.py", ok('RESULT {"outcome": "exists", "users": 1}\n')))
    done = plan.apply(host, steps.plan(facts, PROFILE, AdminRequest(EMAIL, "pw-123456")), dry_run=False)
    assert not done[-1].changed and done[-1].what == f"admin {EMAIL} exists"


def test_a_failing_step_stops_the_apply(bare):
    from tasks.core.errors import RemoteError
    from tests.unit.fakehost import fail

    host = FakeHost().answer(r"apt-get install", fail("E: Unable to locate package nginx", code=100))
    with pytest.raises(RemoteError, match="apt-get install failed on fake: E: Unable to locate package nginx"):
        plan.apply(host, steps.plan(bare, PROFILE, ADMIN), dry_run=False)
    assert len(host.commands) == 1


@pytest.mark.parametrize("answers, enabled, expected", [
    (False, "no", None),
    (True, "no", "queues no job there"),
    (True, "", "read from its settings once it is installed"),
    (True, "maybe", "WARNING"),
])
def test_a_redis_on_the_port_label_studio_looks_at_is_named_with_where_jobs_run(provisioned, answers, enabled, expected):
    facts = dataclasses.replace(provisioned, redis_answers=answers, redis_enabled=enabled)
    said = steps.background_jobs(facts, PROFILE)
    assert [c.changed for c in said] == ([False] if expected else [])
    assert not expected or expected in said[0].what
