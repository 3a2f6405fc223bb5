"""The `offsite:` profile section and the pure replication parts: the target and its checks, the
combinations the rest of the profile forbids, Litestream's configuration, the credentials' lines, and
Litestream's listings read back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from datetime import datetime, timezone
from pathlib import PurePosixPath

import pytest
import yaml

from tasks.core import offsite, render
from tasks.core.commands import offsite as commands
from tasks.core.commands.service import UnitState
from tasks.core.errors import ProfileError, UsageError
from tasks.core.offsite import OffsiteSettings
from tasks.core.profile import parse_profile
from tasks.core.provision import steps
from tasks.core.provision.facts import OffsiteFacts
from tasks.core.provision.offsite_steps import OFFSITE_RESTART, OffsiteSecrets
from tasks.core.provision.plan import AdminRequest, StoreOffsiteSecret
from tests.unit.samples import PROFILE

S3_TEXT = "offsite:\n  target: s3://lsvm-backups/team-a/vm1\n  s3_endpoint: http://127.0.0.1:9000\n"
S3 = parse_profile(S3_TEXT, host="vm")
PATH = parse_profile("offsite:\n  target: /mnt/backup/label-studio/\n  retention_hours: 72\n", host="vm")


def test_off_by_default_and_nothing_is_derived():
    profile = parse_profile("", host="vm")
    assert not profile.offsite.enabled and profile.offsite.parsed is None
    assert not profile.offsite.needs_credentials


@pytest.mark.parametrize("value, kind, where", [
    ("/mnt/backup/label-studio/", "path", "/mnt/backup/label-studio"),
    ("/srv/offsite", "path", "/srv/offsite"),
    ("s3://bucket-1", "s3", "s3://bucket-1"),
    ("s3://lsvm.backups/a/b/", "s3", "s3://lsvm.backups/a/b"),
])
def test_targets_parse(value, kind, where):
    assert offsite.target_problem(value) is None
    target = offsite.parse_target(value)
    assert target.kind == kind and target.describe() == where


@pytest.mark.parametrize("value, words", [
    ("relative/dir", "absolute path"),
    ("/mnt/with space", "absolute path"),
    ("/mnt/../etc", "absolute path"),
    ("/", "absolute path"),
    ("s3://UPPER", "bucket name"),
    ("s3://ab", "bucket name"),
    ("s3://bucket/a b", "key prefix"),
    ("s3://bucket/$(id)", "key prefix"),
    ("sftp://user@host", "sftp://user@host[:port]/absolute/path"),
    ("sftp://host/srv/x", "sftp://user@host[:port]/absolute/path"),
    ("sftp://u@host/srv/a b", "sftp://user@host[:port]/absolute/path"),
    ("sftp://u@host:99999/srv", "port outside"),
    ("sftp://u@host/srv/../etc", "without '.' or '..'"),
    ("ftp://user@host/path", "not supported"),
    ("gs://bucket", "not supported"),
])
def test_bad_targets_are_refused_in_words(value, words):
    assert words in offsite.target_problem(value)
    with pytest.raises(ProfileError, match=r"vm\.yaml:2: 'offsite\.target' "):
        parse_profile(f"offsite:\n  target: '{value}'\n", source="vm.yaml")


def test_each_kind_of_copy_gets_a_place_of_its_own_on_the_target():
    assert PATH.offsite.parsed.under("litestream") == "/mnt/backup/label-studio/litestream"
    assert S3.offsite.parsed.under("litestream") == "team-a/vm1/litestream"
    assert offsite.parse_target("s3://bucket").under("litestream") == "litestream"


@pytest.mark.parametrize("text, key, words", [
    ("offsite:\n  s3_endpoint: http://127.0.0.1:9000\n", "s3_endpoint", "offsite.target is not"),
    ("service:\n  manager: screen\noffsite:\n  target: /mnt/b\n", "target", "needs service.manager systemd"),
    ("offsite:\n  target: /var/lib/label-studio/copies\n", "target", "apart from paths.data_dir"),
    ("offsite:\n  target: /var/lib\n", "target", "apart from paths.data_dir"),
    ("offsite:\n  target: /opt/label-studio\n", "target", "apart from paths.app_dir"),
    # Root makes the target and chowns it: never where another user could have planted a link first.
    ("offsite:\n  target: /tmp/offsite\n", "target", "'offsite.target' must not be /tmp or inside it"),
    ("offsite:\n  target: /home/alice/copies\n", "target", "'offsite.target' must not be /home or inside it"),
    ("offsite:\n  target: /etc/copies\n", "target", "'offsite.target' must not be /etc or inside it"),
    ("offsite:\n  target: /mnt\n", "target", "a directory of its own, such as /mnt/label-studio"),
    ("service:\n  user: a-very-long-service-user-name-x\noffsite:\n  target: /mnt/b\n", "target", "longer than 32"),
    ("offsite:\n  target: /mnt/b\n  retention_hours: 0\n", "retention_hours", "1 to 8784 hours"),
    ("offsite:\n  target: s3://bucket\n  s3_endpoint: ftp://x\n", "s3_endpoint", "base URL"),
    ("offsite:\n  target: s3://bucket\n  s3_region: 'US East'\n", "s3_region", "region name"),
])
def test_combinations_the_rest_of_the_profile_forbids(text, key, words):
    with pytest.raises(ProfileError) as caught:
        parse_profile(text, source="vm.yaml")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.strip().startswith(f"{key}:"))
    assert caught.value.message.startswith(f"vm.yaml:{line}: ")
    assert words in caught.value.message


def test_the_replication_user_is_the_service_users_own_and_never_the_service_user():
    profile = parse_profile("service:\n  user: ls\noffsite:\n  target: /mnt/b\n")
    assert profile.offsite_user == "ls-offsite" != profile.service.user
    paths = profile.remote
    # Root's: the venv, the config and the credentials; the replication user's: its state, outside the data dir.
    for path in (paths.offsite_venv, paths.litestream_config, paths.offsite_env):
        assert paths.app_dir in path.parents
    assert paths.data_dir not in paths.litestream_meta.parents
    assert paths.offsite_state in paths.litestream_meta.parents


def test_litestream_config_for_a_path_target():
    paths = PATH.remote
    config = yaml.safe_load(offsite.litestream_config(PATH.offsite, paths.database, paths.litestream_meta))
    assert config == {
        "snapshot": {"interval": "24h", "retention": "72h"},
        "dbs": [{"path": "/var/lib/label-studio/label_studio.sqlite3",
                 "meta-path": "/var/lib/label-studio-offsite/litestream",
                 "replica": {"sync-interval": "1s", "type": "file", "path": "/mnt/backup/label-studio/litestream"}}],
    }


def test_litestream_config_for_an_s3_compatible_target_holds_no_secret():
    paths = S3.remote
    text = offsite.litestream_config(S3.offsite, paths.database, paths.litestream_meta)
    replica = yaml.safe_load(text)["dbs"][0]["replica"]
    assert replica == {"sync-interval": "1s", "type": "s3", "bucket": "lsvm-backups", "path": "team-a/vm1/litestream",
                       "region": "us-east-1", "endpoint": "http://127.0.0.1:9000", "force-path-style": True}
    assert "key" not in text.lower().replace("# managed", "")
    aws = parse_profile("offsite:\n  target: s3://bucket/p\n  s3_region: eu-west-1\n")
    replica = yaml.safe_load(offsite.litestream_config(aws.offsite, paths.database, paths.litestream_meta))["dbs"][0]["replica"]
    assert "endpoint" not in replica and replica["region"] == "eu-west-1"


@pytest.mark.parametrize("values, words", [
    ({}, "$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY must be set"),
    ({"AWS_ACCESS_KEY_ID": "AKIA123"}, "$AWS_SECRET_ACCESS_KEY must be set"),
    ({"AWS_ACCESS_KEY_ID": "AKIA 123", "AWS_SECRET_ACCESS_KEY": "s"}, "$AWS_ACCESS_KEY_ID has characters"),
    ({"AWS_ACCESS_KEY_ID": "AKIA123", "AWS_SECRET_ACCESS_KEY": "a$b`c"}, "$AWS_SECRET_ACCESS_KEY has characters"),
])
def test_credentials_are_checked_before_they_leave(values, words):
    assert words in offsite.credentials_problem(values)


def test_credentials_file_is_two_env_lines():
    values = {"AWS_ACCESS_KEY_ID": "AKIA123", "AWS_SECRET_ACCESS_KEY": "abc/DEF+ghi="}
    assert offsite.credentials_problem(values) is None
    assert offsite.credentials_file(values) == b"AWS_ACCESS_KEY_ID=AKIA123\nAWS_SECRET_ACCESS_KEY=abc/DEF+ghi=\n"


def test_restore_points_from_litestreams_listing():
    listing = json.dumps([
        {"level": 0, "min_txid": "0000000000000005", "max_txid": "0000000000000005", "size": 4096,
         "timestamp": "2026-12-03T07:00:05Z"},
        {"level": 1, "min_txid": "0000000000000001", "max_txid": "0000000000000004", "size": 10000,
         "timestamp": "2026-12-03T06:59:00Z"},
        {"level": 9, "min_txid": "0000000000000001", "max_txid": "000000000000001a", "size": 90000,
         "timestamp": "2026-12-02T07:00:00Z"},
    ])
    points = offsite.parse_ltx_listing(listing)
    assert (points.files, points.size, points.max_txid) == (3, 104096, 26)
    assert points.describe() == ("2026-12-02 07:00:00 UTC to 2026-12-03 07:00:05 UTC, 3 files, 101.7 KiB "
                                 "on the target")
    assert offsite.parse_ltx_listing("[]").describe() == "no restore point yet"
    with pytest.raises(ValueError):
        offsite.parse_ltx_listing("")


def test_local_position_from_litestreams_status():
    status = json.dumps([{"database": "/var/lib/label-studio/label_studio.sqlite3", "status": "ok",
                          "local_txid": "00000000000000ff", "wal_size": "4.1 MB"}])
    assert offsite.parse_local_txid(status, "/var/lib/label-studio/label_studio.sqlite3") == 255
    assert offsite.parse_local_txid(status, "/other.sqlite3") is None
    not_yet = json.dumps([{"database": "/d", "status": "not initialized", "local_txid": "-", "wal_size": "0 B"}])
    assert offsite.parse_local_txid(not_yet, "/d") is None


def test_remote_paths_are_derived_from_the_service_name():
    profile = parse_profile("service:\n  name: ls2\noffsite:\n  target: /mnt/b\n")
    assert profile.remote.offsite_unit == PurePosixPath("/etc/systemd/system/ls2-offsite.service")
    assert profile.remote.litestream_config == PurePosixPath("/opt/label-studio/ls2-litestream.yml")


# ------------------------------------------------------------------------------------------------
# Provision's offsite steps, as data


EMAIL = "admin@example.com"
LIVE = dataclasses.replace(PROFILE, offsite=OffsiteSettings(target="/mnt/backup/ls"))
LIVE_S3 = dataclasses.replace(PROFILE, offsite=OffsiteSettings(target="s3://bucket/p", s3_endpoint="http://10.0.0.5:9000"))
KEYS = {"AWS_ACCESS_KEY_ID": "AKIA123", "AWS_SECRET_ACCESS_KEY": "abc/DEF+ghi="}
PASSWORD = "restic-password-0123456789abcdef"


def changed(changes) -> list[str]:
    return [c.what for c in changes if c.changed]


def replicating(facts, profile):
    """`facts` as a provision with `profile` leaves the server."""
    user, group = profile.offsite_user, profile.service.user
    content = offsite.credentials_file(KEYS)
    return dataclasses.replace(
        facts, data_dir_meta=f"{group}:{group}:2770", installed_packages=facts.installed_packages | {"restic"},
        files={**facts.files, "unit_file": render.unit_file(profile).content,
               "litestream_config": render.litestream_config(profile).content,
               "offsite_unit": render.offsite_unit(profile).content,
               **{key: file.content for key, file in render.offsite_drill_files(profile).items()}},
        offsite=OffsiteFacts(user=True, groups=(user, group), state_meta=f"{user}:{user}:700",
                             database_meta=f"{group}:{group}:660",
                             credentials_meta="root:root:600" if profile.offsite.needs_credentials else "",
                             credentials_sha256=hashlib.sha256(content).hexdigest(), target_meta=f"{user}:{user}:700",
                             litestream=offsite.LITESTREAM_VERSION, restic_password_meta="root:root:600",
                             restic_password_sha256=hashlib.sha256(offsite.password_file(PASSWORD)).hexdigest(),
                             restic_repository=True, apprise="Apprise v2.2.0", boto3="1.44.5",
                             unit=UnitState("loaded", "active", "running", "enabled"),
                             drill_timer=UnitState("loaded", "active", "waiting", "enabled"),
                             files_timer=UnitState("loaded", "active", "waiting", "enabled"),
                             watch_timer=UnitState("loaded", "active", "waiting", "enabled")))


def test_turning_offsite_on_plans_every_step_then_starts_it_after_label_studio(provisioned):
    changes = steps.plan(provisioned, LIVE, AdminRequest(EMAIL), offsite_secrets=OffsiteSecrets(password=PASSWORD))
    assert changed(changes) == [
        "installed restic",
        "/var/lib/label-studio set to labelstudio:labelstudio:2770 (was labelstudio:labelstudio:750)",
        "updated systemd unit /etc/systemd/system/label-studio.service",
        "replication user labelstudio-offsite ready, in group labelstudio",
        "/var/lib/label-studio-offsite (its state) set to labelstudio-offsite:labelstudio-offsite:700 (was missing)",
        "/mnt/backup/ls (the target) set to labelstudio-offsite:labelstudio-offsite:700 (was missing)",
        f"made the database group-writable for labelstudio-offsite (was {provisioned.offsite.database_meta})",
        f"installed Litestream {offsite.LITESTREAM_VERSION}, apprise 2.2.0 and boto3 1.44.5",
        "stored restic's password in /opt/label-studio/label-studio-offsite-restic.env (root, 0600)",
        "restic's repository for .env and media is ready on /mnt/backup/ls",
        "created Litestream settings /opt/label-studio/label-studio-litestream.yml",
        "created replication unit /etc/systemd/system/label-studio-offsite.service",
        "created restore drill /opt/label-studio/offsite-drill.py",
        "created restore drill unit /etc/systemd/system/label-studio-offsite-drill.service",
        "created restore drill timer /etc/systemd/system/label-studio-offsite-drill.timer",
        "created files snapshot (.env and media) /opt/label-studio/offsite-files.py",
        "created files snapshot unit /etc/systemd/system/label-studio-offsite-files.service",
        "created files snapshot timer /etc/systemd/system/label-studio-offsite-files.timer",
        "created offsite watch /opt/label-studio/offsite-watch.py",
        "created offsite watch unit /etc/systemd/system/label-studio-offsite-watch.service",
        "created offsite watch timer /etc/systemd/system/label-studio-offsite-watch.timer",
        "created history check /opt/label-studio/offsite-history.py",
        "reloaded systemd (the unit file changed)",
        "restarted label-studio.service (its settings changed)",
        "enabled label-studio-offsite.service (it starts with Label Studio)",
        "started label-studio-offsite.service: the database streams to /mnt/backup/ls",
        "started label-studio-offsite-drill.timer (the nightly restore drill)",
        "started label-studio-offsite-files.timer (.env and media, hourly); the first snapshot runs now "
        "(`fab offsite` shows it)",
        "started label-studio-offsite-watch.timer (the offsite watch, every 10 minutes)",
    ]
    store = next(c.action for c in changes if isinstance(c.action, StoreOffsiteSecret))
    assert store.content == f"RESTIC_PASSWORD={PASSWORD}\n".encode() and PASSWORD not in repr(store)
    # The prepare step makes the database group-writable at each start; the unit says so.
    assert "--share-with-group" in render.unit_file(LIVE).content
    assert "--share-with-group" not in render.unit_file(PROFILE).content


def test_a_replicating_host_plans_nothing(provisioned):
    for profile in (LIVE, LIVE_S3):
        assert changed(steps.plan(replicating(provisioned, profile), profile, AdminRequest(EMAIL))) == []
        # The same credentials given again change nothing either (compared by hash, never read back).
        assert changed(steps.plan(replicating(provisioned, profile), profile, AdminRequest(EMAIL),
                                  offsite_secrets=OffsiteSecrets(KEYS, PASSWORD))) == []


def test_new_credentials_replace_the_stored_ones_and_restart_the_replication(provisioned):
    facts = replicating(provisioned, LIVE_S3)
    other = {**KEYS, "AWS_SECRET_ACCESS_KEY": "rotated"}
    changes = steps.plan(facts, LIVE_S3, AdminRequest(EMAIL), offsite_secrets=OffsiteSecrets(other, PASSWORD))
    assert changed(changes) == [
        "replaced the target's credentials in /opt/label-studio/label-studio-offsite.env (root, 0600)",
        "restarted label-studio-offsite.service: the database streams to s3://bucket/p",
    ]
    store = next(c.action for c in changes if isinstance(c.action, StoreOffsiteSecret))
    assert store.content == b"AWS_ACCESS_KEY_ID=AKIA123\nAWS_SECRET_ACCESS_KEY=rotated\n"
    assert "rotated" not in repr(store)   # never in a log line or a traceback


def test_a_changed_target_restarts_only_the_replication(provisioned):
    facts = replicating(provisioned, LIVE)
    facts = dataclasses.replace(facts, offsite=dataclasses.replace(facts.offsite, target_meta=""))  # the probe reads the new one
    moved = dataclasses.replace(PROFILE, offsite=OffsiteSettings(target="/mnt/other"))
    assert changed(steps.plan(facts, moved, AdminRequest(EMAIL))) == [
        "/mnt/other (the target) set to labelstudio-offsite:labelstudio-offsite:700 (was missing)",
        "updated Litestream settings /opt/label-studio/label-studio-litestream.yml",
        "updated replication unit /etc/systemd/system/label-studio-offsite.service",
        "updated restore drill unit /etc/systemd/system/label-studio-offsite-drill.service",
        "updated files snapshot unit /etc/systemd/system/label-studio-offsite-files.service",
        "updated offsite watch unit /etc/systemd/system/label-studio-offsite-watch.service",
        "reloaded systemd (the unit file changed)",
        "restarted label-studio-offsite.service: the database streams to /mnt/other",
    ]


def test_turning_offsite_off_stops_it_and_keeps_the_copies(provisioned):
    facts = replicating(provisioned, LIVE)
    changes = steps.plan(facts, PROFILE, AdminRequest(EMAIL))
    assert changed(changes) == [
        "/var/lib/label-studio set to labelstudio:labelstudio:750 (was labelstudio:labelstudio:2770)",
        "updated systemd unit /etc/systemd/system/label-studio.service",
        "stopped the offsite replication (label-studio-offsite.service); the copies on its target stay",
        "labelstudio-offsite left group labelstudio",
        "reloaded systemd (the unit file changed)",
        "restarted label-studio.service (its settings changed)",
    ]
    stop = next(c.action.script for c in changes if c.what.startswith("stopped the offsite"))
    assert "/mnt/backup" not in stop and "rm -rf" not in stop


def test_the_plan_of_a_provisioned_host_never_mentions_offsite_when_it_is_off(provisioned):
    assert not [c.what for c in steps.plan(provisioned, PROFILE, AdminRequest(EMAIL)) if "offsite" in c.what
                or "replication" in c.what or "Litestream" in c.what]


def test_s3_without_credentials_anywhere_is_a_warning_in_the_plan_of_adopt(provisioned):
    changes = steps.plan(provisioned, LIVE_S3, AdminRequest(None), start=False)
    assert any(c.what.startswith("WARNING no credentials for s3://bucket/p") for c in changes)


def test_provision_takes_s3_keys_from_the_environment_or_keeps_the_stored_ones(provisioned, monkeypatch):
    from tasks.core.errors import UsageError
    from tasks.core.provision.run import offsite_credentials_for

    for key in offsite.CREDENTIAL_KEYS:
        monkeypatch.delenv(key, raising=False)
    assert offsite_credentials_for(LIVE, provisioned) is None           # a path target needs none
    with pytest.raises(UsageError, match=r"offsite.target s3://bucket/p: \$AWS_ACCESS_KEY_ID and "
                                         r"\$AWS_SECRET_ACCESS_KEY must be set.*nothing was changed"):
        offsite_credentials_for(LIVE_S3, provisioned)                   # none here, none on the server
    stored = replicating(provisioned, LIVE_S3)
    assert offsite_credentials_for(LIVE_S3, stored) is None             # the stored ones stay
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA123")
    with pytest.raises(UsageError, match=r"\$AWS_SECRET_ACCESS_KEY must be set"):
        offsite_credentials_for(LIVE_S3, stored)                        # half a pair is a mistake, never kept
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abc/DEF+ghi=")
    assert offsite_credentials_for(LIVE_S3, stored) == KEYS


# ------------------------------------------------------------------------------------------------
# restore-server --offsite --at


NOW = datetime(2026, 12, 3, 8, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, wanted", [
    ("2026-12-03 07:30", "2026-12-03T07:30:00Z"),
    ("2026-12-03 07:30:15", "2026-12-03T07:30:15Z"),
    ("2026-12-03T07:30:00Z", "2026-12-03T07:30:00Z"),
    ("2026-12-03T08:30:00+01:00", "2026-12-03T07:30:00Z"),
    (" 2026-12-02T23:59 ", "2026-12-02T23:59:00Z"),
])
def test_points_in_time_are_read_as_utc_unless_they_say_otherwise(text, wanted):
    assert offsite.rfc3339(offsite.parse_point(text, NOW)) == wanted


@pytest.mark.parametrize("text, words", [
    ("yesterday", "is not a date and time"),
    ("2026-12-03", "is not a date and time"),
    ("07:30", "is not a date and time"),
    ("2026-12-03 08:00:01", "is in the future"),
])
def test_bad_points_in_time_are_refused_in_words(text, words):
    with pytest.raises(ValueError, match=words):
        offsite.parse_point(text, NOW)


def test_a_point_before_the_oldest_restore_point_is_refused():
    points = offsite.RestorePoints(3, 100, datetime(2026, 12, 2, 7, 0, tzinfo=timezone.utc), NOW, 9)
    assert offsite.point_problem(datetime(2026, 12, 2, 7, 0, tzinfo=timezone.utc), points) is None
    assert "is before the oldest restore point on the target (2026-12-02 07:00:00 UTC" in offsite.point_problem(
        datetime(2026, 12, 1, tzinfo=timezone.utc), points)
    assert offsite.point_problem(NOW, offsite.RestorePoints(0, 0, None, None, 0)) == "the target holds no restore point yet"


def test_restore_into_incoming_runs_litestream_as_its_user_and_hands_the_file_over_through_a_pipe():
    p = LIVE.remote
    script = commands.restore_into_incoming(LIVE, p.data_dir / ".lsvm-incoming", "2026-12-03T07:30:00Z")
    assert "--uid=labelstudio-offsite" in script and " restore -config " in script
    assert "-timestamp 2026-12-03T07:30:00Z -o /var/lib/label-studio-offsite/restore.sqlite3" in script
    # the check runs in sqlite.send beside the hand-over, not in Litestream before it
    assert "-integrity-check" not in script and " send /var/lib/label-studio-offsite/restore.sqlite3 " in script
    assert "| runuser -u labelstudio -- " in script and " receive /var/lib/label-studio/.lsvm-incoming/" in script
    assert "/var/lib/label-studio/.lsvm-incoming/label_studio.sqlite3" in script
    newest = commands.restore_into_incoming(LIVE, p.data_dir / ".lsvm-incoming", None)
    assert "-timestamp" not in newest


# ------------------------------------------------------------------------------------------------
# restic: .env and media


def test_restic_repository_sits_beside_litestreams_copies_on_every_kind_of_target():
    assert offsite.restic_repository(PATH.offsite) == "/mnt/backup/label-studio/restic"
    assert offsite.restic_repository(S3.offsite) == "s3:http://127.0.0.1:9000/lsvm-backups/team-a/vm1/restic"
    aws = parse_profile("offsite:\n  target: s3://bucket\n  s3_region: eu-west-1\n").offsite
    assert offsite.restic_repository(aws) == "s3:https://s3.eu-west-1.amazonaws.com/bucket/restic"


def test_restic_words_carry_no_secret_and_path_style_only_for_an_endpoint():
    cache = PATH.remote.restic_cache
    assert offsite.restic_words(PATH.offsite, cache) == [
        "/usr/bin/restic", "--repo", "/mnt/backup/label-studio/restic", "--cache-dir", str(cache)]
    words = offsite.restic_words(S3.offsite, cache)
    assert words[-4:] == ["-o", "s3.region=us-east-1", "-o", "s3.bucket-lookup=path"]
    aws = parse_profile("offsite:\n  target: s3://bucket/p\n").offsite
    assert "s3.bucket-lookup=path" not in offsite.restic_words(aws, cache)


def test_forget_keeps_what_the_profile_says_and_skips_zeros():
    settings = parse_profile("offsite:\n  target: /mnt/b\n  keep_hourly: 0\n  keep_monthly: 3\n").offsite
    assert offsite.forget_words(settings) == ["forget", "--tag", "files", "--group-by", "tags", "--keep-daily", "7",
                                              "--keep-weekly", "4", "--keep-monthly", "3", "--prune"]


@pytest.mark.parametrize("text, key, words", [
    ("offsite:\n  target: /mnt/b\n  keep_hourly: 0\n  keep_daily: 0\n  keep_weekly: 0\n  keep_monthly: 0\n",
     "keep_", "restic would forget every snapshot"),
    ("offsite:\n  target: /mnt/b\n  files_schedule: 'every hour; rm -rf /'\n", "files_schedule", "OnCalendar"),
    ("offsite:\n  target: /mnt/b\n  keep_daily: -1\n", "keep_daily", "0 to 10000"),
])
def test_bad_files_settings_are_refused_in_words(text, key, words):
    with pytest.raises(ProfileError) as caught:
        parse_profile(text)
    assert key in str(caught.value) and words in str(caught.value)


@pytest.mark.parametrize("schedule", ["hourly", "daily", "*-*-* 00/6:00", "Mon..Fri 22:00", "*:0/30"])
def test_systemd_calendar_schedules_are_accepted(schedule):
    assert parse_profile(f"offsite:\n  target: /mnt/b\n  files_schedule: '{schedule}'\n").offsite.files_schedule == schedule


def test_restic_password_made_here_checked_and_read_back():
    made = offsite.new_password()
    assert offsite.password_problem(made) is None and len(made) >= 32 and made != offsite.new_password()
    assert offsite.password_file(made) == f"RESTIC_PASSWORD={made}\n".encode()
    assert offsite.password_from_file(offsite.password_file(made).decode()) == made
    assert offsite.password_from_file("OTHER=1\n") is None
    for bad in ("short", "has a blank in it and more", "quote'dquote'dquote'd"):
        assert offsite.password_problem(bad)


SNAPSHOTS = json.dumps([
    {"time": "2026-12-03T09:00:02.123456789Z", "id": "bbb", "paths": ["/files.tar"], "tags": ["files"]},
    {"time": "2026-12-03T08:00:01.5+01:00", "id": "aaa", "paths": ["/files.tar"], "tags": ["files"]},
    {"time": "2026-12-03T10:00:00Z", "id": "ccc", "paths": ["/files.tar"], "tags": ["files"]},
])


def test_restic_snapshots_are_read_oldest_first_in_utc():
    found = offsite.parse_files_snapshots(SNAPSHOTS)
    assert [s.id for s in found] == ["aaa", "bbb", "ccc"]
    assert found[0].time == datetime(2026, 12, 3, 7, 0, 1, 500000, tzinfo=timezone.utc)
    assert offsite.parse_files_snapshots("[]") == []
    with pytest.raises(ValueError):
        offsite.parse_files_snapshots("{}")
    assert offsite.describe_files(found, datetime(2026, 12, 3, 10, 45, 30, tzinfo=timezone.utc)) == \
        "3 snapshot(s) of .env and media, 2026-12-03 07:00:01 UTC to 2026-12-03 10:00:00 UTC (45 min ago)"
    assert offsite.describe_files([]) == "no snapshot of .env and media yet"


def test_the_files_snapshot_for_a_point_is_the_first_after_it_else_the_newest():
    found = offsite.parse_files_snapshots(SNAPSHOTS)
    at = lambda h, m: datetime(2026, 12, 3, h, m, tzinfo=timezone.utc)
    assert offsite.files_snapshot_for(found, None).id == "ccc"
    assert offsite.files_snapshot_for(found, at(8, 30)).id == "bbb"     # holds every upload the database names
    assert offsite.files_snapshot_for(found, at(6, 0)).id == "aaa"
    assert offsite.files_snapshot_for(found, at(11, 0)).id == "ccc"     # none after: the newest
    assert offsite.files_snapshot_for([], at(8, 0)) is None


def test_the_report_reads_restics_snapshots_and_says_when_restic_failed():
    values = {"files": SNAPSHOTS}
    assert [s.id for s in offsite.replication_from(values, "/db").files] == ["aaa", "bbb", "ccc"]
    failed = offsite.replication_from({"files_error": "Fatal: wrong password or no key found"}, "/db")
    assert failed.problem == "restic snapshots: Fatal: wrong password or no key found"


def test_a_failed_files_snapshot_or_a_stopped_timer_is_a_problem():
    assert offsite.files_job_problems(True, "active", False) == []
    problems = offsite.files_job_problems(False, "inactive (dead)", True)
    assert problems == [".env and media are not being copied offsite: their timer is inactive (dead)",
                        ".env and media were not copied offsite: the last run failed"]
    joined = offsite.replication_problem(True, "active", offsite.Replication(), more=problems)
    assert joined == "; ".join(problems)


def test_units_quote_restics_words_for_systemd():
    assert render.exec_line("check", "--read-data-subset=5%") == "check --read-data-subset=5%%"
    assert render.exec_line("a b", "c") == '"a b" c'
    files = render.offsite_drill_files(S3)
    assert "--read-data-subset=5%%" in files["drill_unit"].content
    unit = files["files_unit"].content
    assert "EnvironmentFile=/opt/label-studio/label-studio-offsite-restic.env" in unit
    assert "User=" not in unit   # root starts tar and restic as their users (offsite_files.py)
    assert "OnCalendar=hourly" in files["files_timer"].content


# ------------------------------------------------------------------------------------------------
# restore-server --offsite --from OLDHOST: refused before anything reaches a server


def other_profile(tmp_path, text: str, alias: str = "old"):
    path = tmp_path / f"{alias}.yaml"
    path.write_text(text)
    return str(path)


def test_from_another_vm_needs_its_target_and_a_target_of_our_own(tmp_path, monkeypatch):
    from tasks.data import _other_offsite
    here = parse_profile("offsite:\n  target: s3://bucket/new\n", host="new")
    with pytest.raises(UsageError, match="names the server being restored"):
        _other_offsite("new", None, "new", here)
    with pytest.raises(UsageError, match="names no offsite target for old"):
        _other_offsite("old", other_profile(tmp_path, "server_name: x.example.org\n"), "new", here)
    with pytest.raises(UsageError, match="streams to the same target as old"):
        _other_offsite("old", other_profile(tmp_path, "offsite:\n  target: s3://bucket/new/\n"), "new", here)
    other = _other_offsite("old", other_profile(tmp_path, "offsite:\n  target: s3://bucket/old\n"), "new", here)
    assert other.host == "old" and other.offsite.target == "s3://bucket/old"


def test_from_another_vm_needs_the_password_kept_here_and_its_keys(tmp_path, monkeypatch):
    from tasks.data import _other_secrets
    monkeypatch.setenv("LSVM_BACKUPS_DIR", str(tmp_path / "backups"))
    for key in offsite.CREDENTIAL_KEYS:
        monkeypatch.delenv(key, raising=False)
    other = parse_profile("offsite:\n  target: s3://bucket/old\n", host="old")
    with pytest.raises(UsageError, match="no copy of old's restic password here"):
        _other_secrets(other)
    kept = tmp_path / "backups" / "old" / offsite.PASSWORD_FILE
    kept.parent.mkdir(parents=True)
    kept.write_text("short\n")
    with pytest.raises(UsageError, match="is not a password this toolkit made"):
        _other_secrets(other)
    kept.write_text(PASSWORD + "\n")
    with pytest.raises(UsageError, match="AWS_ACCESS_KEY_ID and \\$AWS_SECRET_ACCESS_KEY must be set"):
        _other_secrets(other)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEYS["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEYS["AWS_SECRET_ACCESS_KEY"])
    assert _other_secrets(other) == (PASSWORD, KEYS, None)
    path_target = parse_profile("offsite:\n  target: /mnt/old\n", host="old")
    assert _other_secrets(path_target) == (PASSWORD, None, None)
    sftp = parse_profile(f"offsite:\n  target: sftp://keeper@10.0.0.9/srv/old\n  sftp_host_keys: {HOST_KEY}\n", host="old")
    monkeypatch.delenv(offsite.SFTP_KEY_ENV, raising=False)
    with pytest.raises(UsageError, match=r"\$LSVM_OFFSITE_SFTP_KEY must name the private key file"):
        _other_secrets(sftp)
    key = tmp_path / "id_old"
    key.write_text(PRIVATE_KEY)
    monkeypatch.setenv(offsite.SFTP_KEY_ENV, str(key))
    assert _other_secrets(sftp) == (PASSWORD, None, PRIVATE_KEY)


def test_restics_password_is_kept_here_first_taken_from_the_server_or_made(provisioned, tmp_path, monkeypatch):
    """This machine's copy wins; without one, the server's is copied here; without either, a new one is
    kept here before it is sent; a dry run writes nothing here."""
    from tasks.core.provision.run import offsite_password_for
    from tests.unit.fakehost import FakeHost, ok
    monkeypatch.setenv("LSVM_BACKUPS_DIR", str(tmp_path / "backups"))
    profile = dataclasses.replace(LIVE, host="vm")
    kept = tmp_path / "backups" / "vm" / offsite.PASSWORD_FILE
    assert offsite_password_for(FakeHost(), PROFILE, provisioned, dry_run=False) is None     # offsite off

    made = offsite_password_for(FakeHost(), profile, provisioned, dry_run=True)
    assert offsite.password_problem(made) is None and not kept.exists()
    made = offsite_password_for(FakeHost(), profile, provisioned, dry_run=False)
    assert kept.read_text() == made + "\n" and oct(kept.stat().st_mode & 0o777) == "0o600"
    assert offsite_password_for(FakeHost(), profile, provisioned, dry_run=False) == made    # kept: used again

    kept.unlink()
    stored = replicating(provisioned, profile)
    host = FakeHost().answer("label-studio-offsite-restic.env", ok(f"RESTIC_PASSWORD={PASSWORD}\n"))
    assert offsite_password_for(host, profile, stored, dry_run=False) == PASSWORD
    assert kept.read_text() == PASSWORD + "\n"
    assert [ran.sudo for ran in host.log] == [True]


# ------------------------------------------------------------------------------------------------
# PostgreSQL: no stream; a dump in each files snapshot

ON_POSTGRES = parse_profile("database:\n  engine: postgresql\noffsite:\n  target: /mnt/backup/ls\n", host="vm")


def test_on_postgresql_the_files_job_dumps_the_database_and_nothing_streams():
    assert ON_POSTGRES.offsite.enabled and not ON_POSTGRES.offsite_streams_database and LIVE.offsite_streams_database
    files = render.offsite_drill_files(ON_POSTGRES)
    assert files["offsite_pgtool"].path == PurePosixPath("/opt/label-studio/offsite-postgres-tool.py")
    assert "offsite_pgtool" not in render.offsite_drill_files(LIVE)
    exec_files = next(line for line in files["files_unit"].content.splitlines() if line.startswith("ExecStart="))
    # The password's root-only file, Label Studio's python, the tool, libpq's variables (never the password).
    assert exec_files.endswith("--prune -- /opt/label-studio/label-studio-database.env /opt/label-studio/current/bin/python "
                               "/opt/label-studio/offsite-postgres-tool.py PGHOST=127.0.0.1 PGPORT=5432 "
                               "PGUSER=labelstudio PGDATABASE=labelstudio PGSSLMODE=disable")
    exec_drill = next(line for line in files["drill_unit"].content.splitlines() if line.startswith("ExecStart="))
    assert exec_drill.startswith("ExecStart=/usr/bin/python3 -I /opt/label-studio/offsite-drill.py - ")
    exec_watch = next(line for line in files["watch_unit"].content.splitlines() if line.startswith("ExecStart="))
    assert " -- -- label-studio-offsite-files.timer " in exec_watch     # no replication unit to watch


def test_a_database_moved_to_postgresql_stops_litestream(provisioned):
    facts = replicating(provisioned, LIVE)
    plan = steps.plan(facts, dataclasses.replace(LIVE, database=ON_POSTGRES.database), AdminRequest(EMAIL))
    stop = next(c for c in plan if c.what.startswith("stopped streaming SQLite"))
    assert "systemctl disable --now label-studio-offsite.service" in stop.action.script
    assert "/opt/label-studio/label-studio-litestream.yml" in stop.action.script
    assert not any("label-studio-offsite.service" in c.what and "start" in c.what for c in plan)


def test_the_dump_in_a_files_snapshot_has_the_names_a_snapshot_uses():
    from tasks.core.database import DUMP, DUMP_COUNTS
    from tasks.core.onserver import offsite_drill, offsite_files
    assert offsite_files.DUMP_PARTS == (DUMP, DUMP_COUNTS) == (offsite_drill.DUMP, offsite_drill.DUMP_COUNTS)


def test_a_point_in_time_on_postgresql_is_the_last_dump_taken_before_it():
    taken = [offsite.FilesSnapshot(f"id{h}", datetime(2026, 12, 3, h, tzinfo=timezone.utc)) for h in (1, 2, 3)]
    assert offsite.dump_snapshot_for(taken, None).id == "id3"
    assert offsite.dump_snapshot_for(taken, datetime(2026, 12, 3, 2, 30, tzinfo=timezone.utc)).id == "id2"
    assert offsite.dump_snapshot_for(taken, datetime(2026, 12, 3, 2, tzinfo=timezone.utc)).id == "id2"
    assert offsite.dump_snapshot_for(taken, datetime(2026, 12, 3, 0, 59, tzinfo=timezone.utc)) is None
    assert offsite.dump_snapshot_for([], None) is None


def _made(tmp_path, dump: bool, bucket: bool, copier_body: str = ""):
    """offsite_files.MAKER run here as offsite_files.backup_once starts it, with stand-ins for
    postgres_tool.py dump and media_copy.py list: (its exit, the tar's members, the archive's bytes)."""
    import io
    import subprocess
    import sys
    import tarfile
    from tasks.core.onserver import offsite_files
    data = tmp_path / "data"
    (data / "media" / "upload").mkdir(parents=True)
    (data / ".env").write_text("SECRET_KEY=x\n")
    (data / "media" / "upload" / "a.png").write_bytes(b"png")
    tool = tmp_path / "tool.py"
    tool.write_text("import sys, json\nopen(sys.argv[2], 'wb').write(b'PGDMP')\nprint(json.dumps({'tables': {}}))\n")
    copier = tmp_path / "copier.py"
    copier.write_text(copier_body or "import sys, json\nkeys = sys.stdin.read()\n"
                      "print(json.dumps({'argv': sys.argv[1:], 'keys': keys}))\n")
    keys = tmp_path / "keys.env"
    keys.write_text("STORAGE_AWS_ACCESS_KEY_ID=k\nSTORAGE_AWS_SECRET_ACCESS_KEY=s\n")
    words = offsite_files.maker_words(
        str(data), ["/root/password", sys.executable, str(tool)] if dump else [],
        [str(keys), sys.executable, str(copier), "list", "/media", "/state", "b", "p", "http://s3", "r"] if bucket else [])
    with open(keys, "rb") as stdin:
        made = subprocess.run(words, capture_output=True, stdin=stdin)
    if made.returncode not in (0, 1):
        return made.returncode, [], made.stdout
    with tarfile.open(fileobj=io.BytesIO(made.stdout)) as archive:
        members = {name: archive.extractfile(name).read() for name in archive.getnames()
                   if archive.getmember(name).isfile()}
    return made.returncode, members, made.stdout


def test_the_service_users_tar_holds_the_dump_and_the_buckets_listing_beside_env_and_media(tmp_path):
    code, members, _ = _made(tmp_path / "pg", dump=True, bucket=False)
    assert code == 0 and members["label_studio.pgdump"] == b"PGDMP"
    assert set(members) == {".env", "media/upload/a.png", "label_studio.pgdump", "label_studio.pgdump.json"}
    code, members, _ = _made(tmp_path / "both", dump=True, bucket=True)
    assert code == 0 and set(members) == {".env", "media/upload/a.png", "label_studio.pgdump",
                                          "label_studio.pgdump.json", "media-bucket.json"}
    listed = json.loads(members["media-bucket.json"])
    # The copier's words from argv, the keys from root's file on its stdin (never in argv).
    assert listed == {"argv": ["list", "/media", "/state", "b", "p", "http://s3", "r"],
                      "keys": "STORAGE_AWS_ACCESS_KEY_ID=k\nSTORAGE_AWS_SECRET_ACCESS_KEY=s\n"}
    code, members, _ = _made(tmp_path / "sqlite", dump=False, bucket=False)
    assert code == 0 and set(members) == {".env", "media/upload/a.png"}


def test_a_listing_that_fails_fails_the_snapshot_not_just_a_changed_file(tmp_path):
    code, _, out = _made(tmp_path, dump=False, bucket=True, copier_body="import sys\nsys.exit(1)\n")
    assert code == 3 and out == b""    # tar's 1 (a file changed while read) would pass; 3 does not


def test_the_files_programs_parts_are_told_apart():
    from tasks.core.onserver.offsite_files import split_parts
    head = ["svc", "rep", "/data", "/state"]
    bucket = ["bucket", "/keys", "/py", "/copier", "list", "/media", "/st", "b", "", "http://s3", "r"]
    pg = ["/pw", "/py", "/tool", "PGHOST=db"]
    assert split_parts([*head, "--", "restic", "--", "forget"]) == (head, ["restic"], ["forget"], [], [])
    assert split_parts([*head, "--", "r", "--", "f", "--", *pg]) == (head, ["r"], ["f"], pg, [])
    assert split_parts([*head, "--", "r", "--", "f", "--", *bucket]) == (head, ["r"], ["f"], [], bucket[1:])
    assert split_parts([*head, "--", "r", "--", "f", "--", *pg, "--", *bucket]) == (head, ["r"], ["f"], pg, bucket[1:])
    for wrong in ([*head, "--", "r"], [*head[:3], "--", "r", "--", "f"], [*head, "--", "r", "--", "f", "--", *bucket[:5]],
                  [*head, "--", "r", "--", "f", "--", *pg, "--", *pg]):
        assert split_parts(wrong) is None, wrong


def test_the_files_unit_lists_the_bucket_when_uploads_are_in_one():
    profile = parse_profile(S3_TEXT + "media:\n  storage: s3://uploads/team\n  s3_endpoint: http://10.0.0.9:9000\n",
                            host="vm")
    files = render.offsite_drill_files(profile)
    unit = files["files_unit"].content
    assert ("-- bucket /opt/label-studio/label-studio-media.env /opt/label-studio/current/bin/python "
            "/opt/label-studio/offsite-media-copy.py list /var/lib/label-studio/media "
            "/var/lib/label-studio/.lsvm-media-copy.json uploads team http://10.0.0.9:9000 us-east-1") in unit, unit
    assert "ReadWritePaths=/var/lib/label-studio-offsite /var/lib/label-studio\n" in unit    # the copier's record
    assert files["offsite_copier"].content.endswith(render.MEDIA_COPY_SOURCE)
    assert "offsite_copier" not in render.offsite_drill_files(S3) and "-- bucket" not in \
        render.offsite_drill_files(S3)["files_unit"].content


# ------------------------------------------------------------------------------------------------
# An SFTP target: an account on an SSH server, its host key from the profile, its key from this machine

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqSx0V0fYkCkR4Ch3ZMGsOwYvD6ZxX8RkB6iV1Yb5Zs"
ECDSA_KEY = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBHx="
RSA_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC7="
PRIVATE_KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
               "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
               "-----END OPENSSH PRIVATE KEY-----\n")
SFTP = parse_profile(f"offsite:\n  target: sftp://keeper@backup.example.org:2222/srv/offsite/vm1\n"
                     f"  sftp_host_keys: {HOST_KEY}\n", host="vm")


def test_an_sftp_target_parses_into_its_account_host_port_and_folder():
    target = SFTP.offsite.parsed
    assert (target.kind, target.user, target.host, target.port, str(target.path)) == \
           ("sftp", "keeper", "backup.example.org", 2222, "/srv/offsite/vm1")
    assert target.describe() == "sftp://keeper@backup.example.org:2222/srv/offsite/vm1"
    assert target.under("restic") == "/srv/offsite/vm1/restic"
    assert target.known_hosts([HOST_KEY]) == [f"[backup.example.org]:2222 {HOST_KEY}"]
    plain = offsite.parse_target("sftp://keeper@10.0.0.9/srv/x/")
    assert plain.port == 22 and plain.describe() == "sftp://keeper@10.0.0.9/srv/x"
    assert plain.known_hosts([HOST_KEY, ECDSA_KEY]) == [f"10.0.0.9 {HOST_KEY}", f"10.0.0.9 {ECDSA_KEY}"]
    assert SFTP.offsite.needs_key and not SFTP.offsite.needs_credentials and not SFTP.offsite.checks_history


@pytest.mark.parametrize("text, key, words", [
    ("offsite:\n  target: sftp://keeper@h/srv/x\n", "sftp_host_keys", "a key learnt on first use is not verified"),
    (f"offsite:\n  target: /srv/x\n  sftp_host_keys: {HOST_KEY}\n", "sftp_host_keys", "is not sftp://"),
    ("offsite:\n  target: sftp://keeper@h/srv/x\n  sftp_host_keys: AAAAC3Nza\n", "sftp_host_keys", "TYPE BASE64"),
    ("offsite:\n  target: sftp://keeper@h/srv/x\n  sftp_host_keys: 'ssh-ed25519 AAAA; rm -rf /'\n", "sftp_host_keys",
     "TYPE BASE64"),
])
def test_an_sftp_target_needs_a_well_formed_host_key_and_nothing_else_takes_one(text, key, words):
    with pytest.raises(ProfileError, match=rf"'offsite\.{key}'.*" if "TYPE" in words else rf"offsite\.{key}") as caught:
        parse_profile(text, source="vm.yaml")
    assert words in str(caught.value)


def test_litestream_and_restic_verify_the_host_key_and_read_the_key_systemd_hands_them():
    paths = SFTP.remote
    replica = yaml.safe_load(offsite.litestream_config(SFTP.offsite, paths.database, paths.litestream_meta))["dbs"][0]["replica"]
    assert replica == {"sync-interval": "1s", "type": "sftp", "host": "backup.example.org:2222", "user": "keeper",
                       "path": "/srv/offsite/vm1/litestream", "key-path": "${CREDENTIALS_DIRECTORY}/offsite-sftp-key",
                       "host-key": HOST_KEY}
    words = offsite.restic_words(SFTP.offsite, paths.restic_cache)
    assert words[:3] == [offsite.RESTIC, "--repo", "sftp:keeper@backup.example.org:/srv/offsite/vm1/restic"]
    command = words[words.index("-o") + 1]
    for option in ("-F none", "StrictHostKeyChecking=yes", "UserKnownHostsFile=${CREDENTIALS_DIRECTORY}/offsite-sftp-known-hosts",
                   "GlobalKnownHostsFile=none", "IdentityFile=${CREDENTIALS_DIRECTORY}/offsite-sftp-key",
                   "IdentitiesOnly=yes", "BatchMode=yes", "-p 2222 keeper@backup.example.org -s sftp"):
        assert option in command, option
    assert offsite.credential_properties(SFTP.offsite, paths.offsite_key) == [
        f"LoadCredential=offsite-sftp-key:{paths.offsite_key}",
        f"SetCredential=offsite-sftp-known-hosts:[backup.example.org]:2222 {HOST_KEY}"]
    assert offsite.credential_properties(S3.offsite, paths.offsite_key) == []


def test_every_unit_and_every_run_as_the_replication_user_gets_the_key_and_no_unit_expands_it_early():
    paths = SFTP.remote
    units = [render.offsite_unit(SFTP).content] + [f.content for key, f in render.offsite_drill_files(SFTP).items()
                                                    if key.endswith("_unit")]
    for unit in units:
        assert f"LoadCredential=offsite-sftp-key:{paths.offsite_key}\n" in unit
        assert "SetCredential=offsite-sftp-known-hosts:[backup.example.org]:2222 ssh-ed25519 " in unit
        assert "EnvironmentFile=/opt/label-studio/label-studio-offsite.env" not in unit
    # The files unit runs as root: systemd must not expand the variable to root's folder; restic's ssh does.
    files = render.offsite_drill_files(SFTP)["files_unit"].content
    assert "IdentityFile=$${CREDENTIALS_DIRECTORY}/offsite-sftp-key" in files
    listing = commands.list_files(SFTP)
    assert f"-p LoadCredential=offsite-sftp-key:{paths.offsite_key}" in listing
    assert "'SetCredential=offsite-sftp-known-hosts:[backup.example.org]:2222 ssh-ed25519 " in listing
    assert "LoadCredential" not in commands.as_replication_user(SFTP, "rm", "-f", "x", secrets=())
    assert "LoadCredential" not in commands.list_files(S3)


@pytest.mark.parametrize("text, words", [
    ("not a key", "is not an SSH private key"),
    ("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nabc\n-----END RSA PRIVATE KEY-----\n", "passphrase"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABA=\n"
     "-----END OPENSSH PRIVATE KEY-----\n", "passphrase"),
])
def test_a_key_that_cannot_run_unattended_is_refused_before_it_leaves(text, words):
    assert words in offsite.sftp_key_problem(text)


def test_provision_takes_the_key_from_the_file_the_environment_names_or_keeps_the_stored_one(provisioned, monkeypatch,
                                                                                             tmp_path):
    from tasks.core.provision.run import offsite_sftp_key_for
    live = dataclasses.replace(SFTP, host="vm")
    monkeypatch.delenv(offsite.SFTP_KEY_ENV, raising=False)
    assert offsite_sftp_key_for(LIVE, provisioned) is None               # a path target needs none
    with pytest.raises(UsageError, match=r"\$LSVM_OFFSITE_SFTP_KEY must name the private key file"):
        offsite_sftp_key_for(live, provisioned)
    stored = dataclasses.replace(provisioned, offsite=dataclasses.replace(provisioned.offsite,
                                                                          sftp_key_meta="root:root:600"))
    assert offsite_sftp_key_for(live, stored) is None                    # the stored one stays
    monkeypatch.setenv(offsite.SFTP_KEY_ENV, str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="which cannot be read"):
        offsite_sftp_key_for(live, stored)
    (tmp_path / "id").write_text(PRIVATE_KEY)
    monkeypatch.setenv(offsite.SFTP_KEY_ENV, str(tmp_path / "id"))
    assert offsite_sftp_key_for(live, stored) == PRIVATE_KEY


def test_the_plan_stores_the_key_root_only_and_restarts_the_replication(provisioned):
    live = dataclasses.replace(PROFILE, offsite=SFTP.offsite)
    changes = steps.plan(provisioned, live, AdminRequest(None), start=False,
                         offsite_secrets=OffsiteSecrets(password=PASSWORD, sftp_key=PRIVATE_KEY))
    stored = [c for c in changes if "the SFTP target's key" in c.what]
    assert len(stored) == 1 and stored[0].changed
    assert isinstance(stored[0].action, StoreOffsiteSecret)
    assert stored[0].action.path == live.remote.offsite_key and stored[0].action.content == PRIVATE_KEY.encode()
    assert stored[0].notifies == frozenset({OFFSITE_RESTART})
    assert PRIVATE_KEY.splitlines()[1] not in "\n".join(c.what + (c.plan or "") for c in changes)
    assert "an SFTP account the VM's key writes" in offsite.history_text(SFTP.offsite, None)


def test_every_host_key_goes_to_ssh_and_litestream_gets_the_one_its_client_will_be_shown():
    """Go's SSH client (Litestream's) asks for ECDSA, then RSA, then Ed25519, and checks one fixed key."""
    listed = parse_profile("offsite:\n  target: sftp://keeper@10.0.0.9/srv/x\n  sftp_host_keys:\n"
                           f"    - {HOST_KEY}\n    - {RSA_KEY}\n    - {ECDSA_KEY} root@backup\n", host="vm")
    assert offsite.host_key_lines(listed.offsite.sftp_host_keys) == [HOST_KEY, RSA_KEY, ECDSA_KEY]
    paths = listed.remote
    replica = yaml.safe_load(offsite.litestream_config(listed.offsite, paths.database, paths.litestream_meta))["dbs"][0]["replica"]
    assert replica["host-key"] == ECDSA_KEY
    assert offsite.litestream_host_key(f"{HOST_KEY}\n{RSA_KEY}") == RSA_KEY
    assert offsite.litestream_host_key(HOST_KEY) == HOST_KEY
    known = offsite.credential_properties(listed.offsite, paths.offsite_key)[1]
    assert known == (f"SetCredential=offsite-sftp-known-hosts:10.0.0.9 {HOST_KEY}\\n10.0.0.9 {RSA_KEY}"
                     f"\\n10.0.0.9 {ECDSA_KEY}")


@pytest.mark.parametrize("restic_says, ssh_says, last", [
    # restic exited before its thread relayed ssh's words: the same ssh is asked and says it.
    ("Fatal: unable to start the sftp session, error: read |0: file already closed",
     "Host key verification failed.", "Host key verification failed."),
    # restic relayed them: ssh is not asked again (it would say "never asked").
    ("subprocess ssh: Permission denied (publickey).\nFatal: unable to start the sftp session",
     "never asked", "subprocess ssh: Permission denied (publickey)."),
])
def test_restic_init_over_sftp_ends_with_the_reason_ssh_gives(tmp_path, restic_says, ssh_says, last):
    restic = tmp_path / "restic"
    restic.write_text(f'#!/bin/sh\n[ "$1" = cat ] && exit 1\nprintf "%s\\n" "{restic_says}" >&2\nexit 1\n')
    ssh = tmp_path / "ssh"
    ssh.write_text(f'#!/bin/sh\n[ "$1 $4 $5" = "-p -s sftp" ] || exit 9\nprintf "%s\\n" "{ssh_says}" >&2\nexit 255\n')
    restic.chmod(0o755)
    ssh.chmod(0o755)
    run = subprocess.run(["sh", "-c", commands.INIT_UNLESS_THERE, "sh", f"{ssh} -p 22 keeper@host -s sftp", str(restic)],
                         capture_output=True, text=True)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert lines[-1] == last and "never asked" not in run.stderr, run.stderr
    assert restic_says.splitlines()[-1] in lines


def test_restic_init_of_a_target_that_is_not_sftp_asks_no_ssh():
    s3 = commands.init_repository(S3)
    assert f" sh '' {offsite.RESTIC} " in s3, s3
    assert "sftp.command" in commands.init_repository(SFTP)
