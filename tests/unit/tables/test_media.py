"""Uploads in an S3-compatible bucket (the profile's `media:` section): its checks, Label Studio's settings
in the env file, the keys root-only for systemd, nginx's internal location for the signed URLs, and
provision refusing to move uploads it would strand."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from tasks.core import media, render
from tasks.core.commands.service import service_manager
from tasks.core.data import media_move
from tasks.core.errors import ProfileError, RemoteError, UsageError
from tasks.core.profile import parse_profile
from tasks.core.provision import steps
from tasks.core.provision.facts import MediaFacts
from tasks.core.provision.plan import AdminRequest, StoreOffsiteSecret
from tasks.core.provision.refusals import refuse_media_switch

BUCKET = "media:\n  storage: s3://team-uploads/label-studio\n  s3_endpoint: http://10.1.2.3:9000\n"
KEYS = {"LSVM_MEDIA_ACCESS_KEY_ID": "AKIAMEDIA", "LSVM_MEDIA_SECRET_ACCESS_KEY": "s3cret/key+="}
EMAIL = "admin@example.com"


def changed(changes) -> list[str]:
    return [c.what for c in changes if c.changed]


def test_local_files_by_default_add_nothing():
    profile = parse_profile("")
    assert not profile.media.in_bucket and media.label_studio_env(profile.media) == []
    assert "STORAGE_" not in service_manager(profile).env_file().content
    assert "media.env" not in render.unit_file(profile).content
    assert "file_download" not in render.nginx_site(profile, ipv6=False).content


def test_a_bucket_gives_label_studio_its_settings_and_nginx_one_host_to_fetch_from():
    profile = parse_profile(BUCKET)
    env = service_manager(profile).env_file().content
    assert ("STORAGE_TYPE=s3\nSTORAGE_AWS_BUCKET_NAME=team-uploads\nSTORAGE_AWS_REGION_NAME=us-east-1\n"
            "STORAGE_AWS_ENDPOINT_URL=http://10.1.2.3:9000\nSTORAGE_AWS_S3_USE_SSL=false\n"
            "STORAGE_AWS_S3_SIGNATURE_VERSION=s3v4\n"
            "STORAGE_AWS_FOLDER=label-studio\n") in env
    assert "SECRET" not in env.replace("SECRET_KEY", "")
    assert "EnvironmentFile=/opt/label-studio/label-studio-media.env" in render.unit_file(profile).content
    site = render.nginx_site(profile, ipv6=False).content
    assert "upstream label-studio_media {\n    server 10.1.2.3:9000;\n}" in site
    assert 'location ~ "^/file_download/http/10\\.1\\.2\\.3:9000/(.*)$" {\n        internal;' in site
    assert "proxy_pass http://label-studio_media/$1$is_args$args;" in site
    assert "proxy_set_header Host 10.1.2.3:9000;" in site and 'proxy_set_header Cookie "";' in site
    assert "proxy_ssl_verify" not in site and site.count("{") == site.count("}")


def test_an_https_endpoint_is_verified_and_aws_is_the_default_endpoint():
    profile = parse_profile("media:\n  storage: s3://bucket-a\n  s3_region: eu-west-1\n")
    assert media.label_studio_env(profile.media)[3:5] == [
        ("STORAGE_AWS_ENDPOINT_URL", "https://s3.eu-west-1.amazonaws.com"), ("STORAGE_AWS_S3_USE_SSL", "true")]
    site = render.nginx_site(profile, ipv6=False).content
    assert "server s3.eu-west-1.amazonaws.com:443;" in site
    assert "proxy_ssl_verify on;" in site and "proxy_ssl_name s3.eu-west-1.amazonaws.com;" in site


@pytest.mark.parametrize("text, words", [
    ("media:\n  storage: ftp://x\n", "must be local or s3://bucket/prefix"),
    ("media:\n  storage: s3://No_Such\n", "not a valid bucket name"),
    ("media:\n  storage: s3://bucket-a/a b\n", "key prefix"),
    ("media:\n  storage: s3://bucket-a\n  s3_endpoint: minio:9000\n", "base URL"),
    ("service:\n  manager: screen\nmedia:\n  storage: s3://bucket-a\n", "needs service.manager: systemd"),
])
def test_bad_media_settings_are_refused_before_any_connection(text, words):
    with pytest.raises(ProfileError, match=words):
        parse_profile(text)


def test_the_keys_come_checked_from_this_machine_and_go_to_a_root_only_file():
    assert media.credentials_from_env({}) is None
    assert "LSVM_MEDIA_SECRET_ACCESS_KEY must be set" in media.credentials_problem(
        media.credentials_from_env({"LSVM_MEDIA_ACCESS_KEY_ID": "AKIAMEDIA"}))
    assert "characters an access key does not" in media.credentials_problem({**KEYS, "LSVM_MEDIA_ACCESS_KEY_ID": "a b"})
    assert media.credentials_problem(KEYS) is None
    assert media.credentials_file(KEYS) == (b"STORAGE_AWS_ACCESS_KEY_ID=AKIAMEDIA\n"
                                            b"STORAGE_AWS_SECRET_ACCESS_KEY=s3cret/key+=\n")


def test_provision_stores_the_keys_once_and_restarts_label_studio(provisioned):
    profile = parse_profile(BUCKET)
    changes = steps.plan(provisioned, profile, AdminRequest(EMAIL), media_keys_given=KEYS)
    stored = "stored the media bucket's keys in /opt/label-studio/label-studio-media.env (root, 0600)"
    assert stored in changed(changes)
    assert any("restarted" in line for line in changed(changes))
    store = next(c.action for c in changes if isinstance(c.action, StoreOffsiteSecret))
    assert store.content == media.credentials_file(KEYS) and "s3cret" not in repr(store)
    held = dataclasses.replace(provisioned, media=MediaFacts(
        "root:root:600", hashlib.sha256(media.credentials_file(KEYS)).hexdigest()))
    again = steps.plan(held, profile, AdminRequest(EMAIL), media_keys_given=KEYS)
    assert stored not in changed(again)
    assert any(c.what.startswith("the media bucket's keys are stored") for c in
               steps.plan(held, profile, AdminRequest(EMAIL)))
    none = steps.plan(provisioned, profile, AdminRequest(EMAIL))
    assert any(c.what.startswith("WARNING no keys for s3://team-uploads/label-studio") for c in none)


def test_uploads_are_never_stranded_by_a_profile_edit(provisioned):
    bucket = parse_profile(BUCKET)
    local = parse_profile("")
    with_files = dataclasses.replace(provisioned, media=MediaFacts(local_files=True))
    with pytest.raises(UsageError, match="keeps its uploads as files in /var/lib/label-studio/media"):
        refuse_media_switch("vm", bucket, with_files)
    refuse_media_switch("vm", bucket, dataclasses.replace(provisioned, media=MediaFacts()))   # none yet: fine
    refuse_media_switch("vm", local, with_files)                                             # as it is: fine
    on_bucket = dataclasses.replace(provisioned, db_exists=True, files={
        **provisioned.files, "env_file": service_manager(bucket).env_file().content})
    refuse_media_switch("vm", bucket, on_bucket)
    with pytest.raises(UsageError, match="keeps its uploads in s3://team-uploads/label-studio at http://10.1.2.3:9000"):
        refuse_media_switch("vm", local, on_bucket)
    other = parse_profile(BUCKET.replace("team-uploads", "other-bucket"))
    with pytest.raises(UsageError, match="the profile says media.storage: s3://other-bucket"):
        refuse_media_switch("vm", other, on_bucket)


def on_the_server(facts, profile):
    """The facts of a server provision left as `profile` renders it."""
    manager = service_manager(profile)
    return dataclasses.replace(facts, files={**facts.files, "env_file": manager.env_file().content,
                                             manager.definition_key: manager.definition().content,
                                             "nginx_site": steps.site_file(facts, profile).content})


def test_migrate_media_moves_to_where_the_profile_says_and_nowhere_else(provisioned):
    bucket, local = parse_profile(BUCKET), parse_profile("")
    facts = on_the_server(provisioned, local)
    move, words = media_move.plan(facts, "s3", bucket, "vm")
    assert move.bucket == bucket.media and not move.source.media.in_bucket
    assert words.lines()[0] == "the bucket's keys in /opt/label-studio/label-studio-media.env (root, 0600)"
    assert "sha256" in words.copy and words.switch[-1].startswith("on any failure: back as it was")
    with pytest.raises(UsageError, match="already keeps its uploads as files"):
        media_move.plan(facts, "local", local, "vm")
    with pytest.raises(UsageError, match="the profile says media.storage: local"):
        media_move.plan(facts, "s3", local, "vm")
    with pytest.raises(UsageError, match="--to must be one of: s3, local"):
        media_move.plan(facts, "gcs", bucket, "vm")
    edited = dataclasses.replace(facts, files={**facts.files, "nginx_site": "# edited by hand\n"})
    with pytest.raises(UsageError, match="is not what the profile makes"):
        media_move.plan(edited, "s3", bucket, "vm")
    # Back: the bucket is the server's, read from its env file, whatever the profile says now.
    there = on_the_server(provisioned, bucket)
    move, words = media_move.plan(there, "local", local, "vm")
    assert move.bucket.storage == "s3://team-uploads/label-studio" and move.bucket.endpoint == "http://10.1.2.3:9000"
    assert words.keys is None
    files = move.files(there)
    assert [f.content for f in files["bucket"]] == [there.files["env_file"], there.files["unit_file"],
                                                     there.files["nginx_site"]]
    assert "USE_NGINX_FOR_UPLOADS=false" in files["local"][0].content


def test_the_copiers_report_is_read_and_said_in_one_line():
    report = media.copier_report('sent 1 of 1\n{"files": 3, "bytes": 2048, "sent": 1, "kept": 2, '
                                    '"checked": {"read back": 1}, "seconds": 0.4}\n')
    assert media_move.summary(report) == "3 files (2.0 KiB): 1 copied and checked (1 by read back), 2 already there, in 0.4s"
    with pytest.raises(RemoteError, match="the copier gave no report"):
        media.copier_report("Traceback ...\n")


def test_prune_takes_the_servers_bucket_and_never_the_only_copy(provisioned):
    bucket, local = parse_profile(BUCKET), parse_profile("")
    assert media_move.prune_plan(on_the_server(provisioned, bucket), bucket, "vm").storage == bucket.media.storage
    with pytest.raises(UsageError, match="they are the only copy"):
        media_move.prune_plan(on_the_server(provisioned, local), local, "vm")
    with pytest.raises(UsageError, match="the server keeps its uploads in s3://team-uploads"):
        media_move.prune_plan(on_the_server(provisioned, bucket), local, "vm")


def test_a_server_that_reads_a_bucket_gets_no_local_copy_of_a_snapshot_that_records_the_bucket():
    from pathlib import Path

    from tasks.core.data import bucket_media
    from tasks.core.data.catalog import FileEntry, Manifest, Snapshot
    files = [FileEntry("label_studio.sqlite3", 10, "a"), FileEntry(".env", 1, "b"),
             FileEntry("media/upload/1/x.png", 5, "c")]

    def snapshot(extra: dict) -> Snapshot:
        manifest = Manifest(host="vm", created="2026-12-04T00:00:00Z", label=None, label_studio_version="1.23.2",
                            source={}, files=files, integrity_check="ok", counts={}, media_included=True, extra=extra)
        return Snapshot("20261204T000000Z", Path("/nowhere"), "vm", None, None, manifest)

    recorded = snapshot({"media_bucket": {"where": "s3://team-uploads/label-studio", "listing": "media-bucket.json"}})
    kept = bucket_media.without_local_copies(parse_profile(BUCKET), recorded, files)
    assert [f.path for f in kept] == ["label_studio.sqlite3", ".env"]
    # Files for a server that keeps files; all of them while the snapshot records no bucket (the restore's
    # check refuses that pairing before anything is put anywhere).
    assert bucket_media.without_local_copies(parse_profile(""), recorded, files) == files
    assert bucket_media.without_local_copies(parse_profile(BUCKET), snapshot({}), files) == files


@pytest.mark.parametrize("storage", ["s3://team-uploads/label-studio", "s3://team-uploads"])
def test_the_copiers_listing_names_its_bucket_in_the_words_a_restore_compares(storage):
    import shlex

    from tasks.core.commands import media as commands
    from tasks.core.onserver import media_copy
    profile = parse_profile(BUCKET.replace("s3://team-uploads/label-studio", storage))
    words = shlex.split(commands.copier_once(profile, profile.media, "list").rsplit(" < ", 1)[0])
    bucket, prefix, endpoint = words[words.index("list") + 3:words.index("list") + 6]
    assert media_copy.where(bucket, prefix, endpoint) == profile.media.describe()


def test_a_listing_the_service_user_made_too_large_is_refused_unread(monkeypatch):
    import json
    from pathlib import PurePosixPath

    from tasks.core.data import bucket_media
    from tests.unit.fakehost import FakeHost, ok
    listing = json.dumps({"files": 1, "bytes": 5, "where": "s3://team-uploads/label-studio at http://10.1.2.3:9000",
                          "objects": {"upload/1/x.png": [5, "etag", "ab" * 32]}})
    host = FakeHost().answer(r"runuser .* head -c \d+ -- /incoming/media-bucket.json", ok(listing + "\n"))
    found = bucket_media.read_listing(host, parse_profile(BUCKET), PurePosixPath("/incoming"))
    assert found["objects"] == {"upload/1/x.png": [5, "etag", "ab" * 32]}
    assert host.ran(f"head -c {bucket_media.LISTING_LIMIT + 1} --")
    monkeypatch.setattr(bucket_media, "LISTING_LIMIT", len(listing))
    with pytest.raises(RemoteError, match="the bucket's listing on fake is larger than"):
        bucket_media.read_listing(host, parse_profile(BUCKET), PurePosixPath("/incoming"))
