"""migrate-media's copier, run ON the server as the service user with the release's python (its boto3,
Label Studio's own dependency): the uploads copied between the data dir's media/ and a bucket, every
object checked by sha256 before the switch.

    to-bucket MEDIA_DIR STATE BUCKET PREFIX ENDPOINT REGION
    to-local  MEDIA_DIR STATE BUCKET PREFIX ENDPOINT REGION
    list      MEDIA_DIR STATE BUCKET PREFIX ENDPOINT REGION
    prune     MEDIA_DIR STATE BUCKET PREFIX ENDPOINT REGION

The bucket's keys come on stdin (the root-only file's two lines), never in argv. Each file under
MEDIA_DIR is the object PREFIX/<its path there>: where django-storages looks for it (AWS_LOCATION).

- to-bucket: every regular file (links are not followed, and files are opened with O_NOFOLLOW) is put
  with its sha256 as the payload's hash the signature covers (S3 checks the body against it), its
  Content-MD5 (checked by every S3-compatible service) and its sha256 in the object's metadata; then
  proven: the ETag the bucket answers, its own MD5 of what it stored, equals the copier's MD5 of
  the bytes sent; else (a multipart upload, KMS encryption) the object is read back and hashed. Two
  processes of 8 threads send. A file that STATE records as sent, unchanged here (size, mtime) and
  still that object there (ETag), is not sent again: the final pass, with Label Studio stopped,
  sends only what came since the first.
- to-local: every object under PREFIX is written beside its place as a new file, hashed as it comes,
  read back from the disk and hashed again, compared with the sha256 its metadata or STATE records (one
  Label Studio wrote itself has none: the two reads must agree), and renamed into place. A local file
  with the same bytes stays; one with other bytes is kept beside it (`.before-migrate-media`).
- list: every object under PREFIX with its size, ETag and sha256 (what backup records): the sha256 the
  STATE file holds for that ETag, else the one in its metadata, else the object read and hashed (once:
  recorded in STATE by its ETag).
- prune: the local files the bucket holds removed: only a file this copier sent (STATE: its size, mtime
  and sha256) that is unchanged here, whose object is still the one it sent (its ETag). Any other file
  stays, and is counted.

stdout: one JSON object: files, bytes, sent, kept (already there), how they were checked, seconds;
`list`: files, bytes, hashed (read now), objects ({path: [size, etag, sha256]}), where (the bucket, prefix
and endpoint in words).
Progress on stderr. Exit 1 with the reason on stderr when any object fails its check.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import mimetypes
import multiprocessing
import os
import stat
import sys
import threading
import time

WORKERS = 16
SHARE = 100                       # files a sending process takes at a time
IN_MEMORY = 64 * 1024 * 1024      # larger files stream (multipart), never whole in memory
CHUNK = 1024 * 1024
SAVE_EVERY = 500                  # files between two writes of the state file
KEPT_ASIDE = ".before-migrate-media"


def _keys(stream) -> dict[str, str]:
    found = {}
    for line in stream.read(4096).splitlines():
        name, _, value = line.partition("=")
        found[name.strip()] = value.strip()
    return found


def _client(endpoint: str, region: str, keys: dict[str, str]):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint, region_name=region,
                        aws_access_key_id=keys.get("STORAGE_AWS_ACCESS_KEY_ID"),
                        aws_secret_access_key=keys.get("STORAGE_AWS_SECRET_ACCESS_KEY"),
                        config=Config(signature_version="s3v4", max_pool_connections=WORKERS,
                                      retries={"max_attempts": 5, "mode": "standard"},
                                      # The copier proves each object itself (sha256, Content-MD5, ETag):
                                      # no CRC32 of boto3's on every request beside.
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


class Putter:
    """PUT of one object on a pooled connection, signed with botocore's own SigV4 signer, with the
    payload's sha256 this copier already took (S3 checks the body against it, x-amz-content-sha256)
    and its Content-MD5: a third of boto3's CPU per object, which on thousands of small uploads is
    what bounds the copy."""

    ATTEMPTS = 4

    def __init__(self, endpoint: str, region: str, keys: dict[str, str]):
        import urllib3
        from botocore.auth import S3SigV4Auth
        from botocore.credentials import Credentials

        class Signer(S3SigV4Auth):
            def payload(self, request):
                return request.context["sha256"]

        self.endpoint = endpoint.rstrip("/")
        self.signer = Signer(Credentials(keys.get("STORAGE_AWS_ACCESS_KEY_ID"),
                                         keys.get("STORAGE_AWS_SECRET_ACCESS_KEY")), "s3", region)
        self.pool = urllib3.PoolManager(maxsize=WORKERS, retries=False, timeout=urllib3.Timeout(connect=10, read=300))
        self.errors = (urllib3.exceptions.HTTPError, OSError)

    def put(self, bucket: str, key: str, data: bytes, sha256: str, md5: bytes, content_type: str) -> str:
        """The object's ETag; ValueError when the bucket refuses it (after retries for what may pass)."""
        from urllib.parse import quote

        from botocore.awsrequest import AWSRequest
        url = f"{self.endpoint}/{bucket}/{quote(key, safe='/~')}"
        for attempt in range(1, self.ATTEMPTS + 1):
            request = AWSRequest(method="PUT", url=url, data=data, headers={
                "Content-Type": content_type, "Content-MD5": base64.b64encode(md5).decode(),
                "x-amz-meta-sha256": sha256})
            request.context["sha256"] = sha256
            self.signer.add_auth(request)
            try:
                answer = self.pool.request("PUT", url, body=data, headers=dict(request.headers.items()))
            except self.errors as exc:
                if attempt == self.ATTEMPTS:
                    raise ValueError(f"{key}: {type(exc).__name__}: {exc}") from None
            else:
                if answer.status == 200:
                    return (answer.headers.get("ETag") or "").strip('"')
                if answer.status < 500 and answer.status != 429 or attempt == self.ATTEMPTS:
                    raise ValueError(f"{key}: the bucket answered {answer.status}: {answer.data[:300]!r}")
            time.sleep(0.2 * 2 ** attempt)    # back off before the next attempt (S3's SlowDown, a reset)
        raise AssertionError("unreachable")


def _object_key(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)


class State:
    """What was sent or fetched, by path: {rel: {size, mtime_ns, sha256}} for one bucket location; kept
    in STATE (written whole, by a rename) so the next pass skips what is already there."""

    def __init__(self, path: str, location: str):
        self.path, self.location, self.lock = path, location, threading.Lock()
        self.files: dict[str, dict] = {}
        self.changes = 0
        try:
            with open(path) as handle:
                found = json.load(handle)
            if found.get("location") == location and isinstance(found.get("files"), dict):
                self.files = found["files"]
        except (OSError, ValueError):
            pass

    def record(self, rel: str, entry: dict) -> None:
        with self.lock:
            self.files[rel] = entry
            self.changes += 1
            if self.changes % SAVE_EVERY == 0:
                self._save()

    def save(self) -> None:
        with self.lock:
            self._save()

    def _save(self) -> None:
        partial = self.path + ".partial"
        with open(partial, "w") as handle:
            json.dump({"location": self.location, "files": self.files}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self.path)


def _local_files(media_dir: str) -> tuple[list, list[str]]:
    """([(rel, lstat) of every regular file under media_dir], [what else is there: links, devices]);
    links are never followed; none at all when there is no media_dir."""
    files, other = [], []
    if not os.path.isdir(media_dir):
        return files, other
    for folder, dirs, names in os.walk(media_dir, followlinks=False):
        dirs.sort()
        for name in sorted(names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]):
            path = os.path.join(folder, name)
            info = os.lstat(path)
            rel = os.path.relpath(path, media_dir).replace(os.sep, "/")
            (files.append((rel, info)) if stat.S_ISREG(info.st_mode) else other.append(rel))
    return files, other


def _as_recorded(known: dict | None, info: os.stat_result, etag: str | None) -> bool:
    """The local file is still what STATE records (size, mtime) and the bucket's object is still the
    one recorded with it (its ETag): the two are known to hold the same bytes."""
    return bool(known and etag and known.get("etag") == etag
                and (known["size"], known["mtime_ns"]) == (info.st_size, info.st_mtime_ns))


def _hash_file(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    for block in iter(lambda: os.read(fd, CHUNK), b""):
        digest.update(block)
    return digest.hexdigest()


def _read_back(s3, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for block in iter(lambda: body.read(CHUNK), b""):
        digest.update(block)
    return digest.hexdigest()


def _proven_in_bucket(s3, bucket: str, key: str, sha256: str, md5: str | None, etag: str) -> str:
    """How the object was proven to hold the bytes whose sha256 is given: its ETag, which the bucket
    works out itself as the MD5 of the bytes it stored (a single PUT without KMS encryption) and which
    equals the MD5 taken here of the very bytes sent; else the object read back and hashed."""
    if md5 is not None and etag == md5:
        return "the bucket's MD5 of what it stored"
    if _read_back(s3, bucket, key) != sha256:
        raise ValueError(f"{key}: read back, its sha256 differs from the file's")
    return "read back"


def _send(s3, putter: Putter, media_dir: str, bucket: str, prefix: str, rel: str) -> tuple[dict, str]:
    key = _object_key(prefix, rel)
    fd = os.open(os.path.join(media_dir, rel), os.O_RDONLY | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        content_type = mimetypes.guess_type(rel)[0] or "application/octet-stream"
        if info.st_size <= IN_MEMORY:
            data = b"".join(iter(lambda: os.read(fd, CHUNK), b""))
            sha256, digest = hashlib.sha256(data).hexdigest(), hashlib.md5(data)
            etag = putter.put(bucket, key, data, sha256, digest.digest(), content_type)
            md5 = digest.hexdigest()
        else:
            sha256, md5 = _hash_file(fd), None
            os.lseek(fd, 0, os.SEEK_SET)
            with os.fdopen(os.dup(fd), "rb") as handle:
                s3.upload_fileobj(handle, bucket, key, ExtraArgs={"ContentType": content_type,
                                                                  "Metadata": {"sha256": sha256}})
            etag = s3.head_object(Bucket=bucket, Key=key).get("ETag", "").strip('"')
        after = os.fstat(fd)
        if (after.st_mtime_ns, after.st_size) != (info.st_mtime_ns, info.st_size):
            raise ValueError(f"{rel} changed while it was sent")
    finally:
        os.close(fd)
    how = _proven_in_bucket(s3, bucket, key, sha256, md5, etag)
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha256, "etag": etag}, how


def _each_done(futures: dict):
    """(done count, rel, result) as the work ends; on the first failure the rest is cancelled."""
    try:
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            yield done, futures[future], future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        raise


_SENDER: dict = {}     # in each process that sends: its S3 client, Putter and thread count


def _start_sender(endpoint: str, region: str, keys: dict[str, str], threads: int) -> None:
    _SENDER.update(s3=_client(endpoint, region, keys), putter=Putter(endpoint, region, keys), threads=threads)


def _send_share(media_dir: str, bucket: str, prefix: str, rels: list[str]) -> list[tuple[str, dict, str]]:
    """One share of the files, sent by this process's threads: [(rel, entry, how)]."""
    with concurrent.futures.ThreadPoolExecutor(_SENDER["threads"]) as pool:
        futures = {pool.submit(_send, _SENDER["s3"], _SENDER["putter"], media_dir, bucket, prefix, rel): rel
                   for rel in rels}
        return [(rel, *result) for _, rel, result in _each_done(futures)]


def to_bucket(s3, media_dir: str, state: State, bucket: str, prefix: str, sender: tuple) -> dict:
    started = time.monotonic()
    files, other = _local_files(media_dir)
    in_bucket = {rel: etag for _, rel, _, etag in _listing(s3, bucket, prefix)}
    todo, kept = [], 0
    for rel, info in files:
        # Sent before, unchanged here, and still that object there (nobody removed or replaced it since).
        if _as_recorded(state.files.get(rel), info, in_bucket.get(rel)):
            kept += 1
        else:
            todo.append(rel)
    checked: dict[str, int] = {}
    sent_bytes = done = 0
    # Thousands of small uploads are bound by this end's CPU (Python, signing, hashing): one process per
    # core (two at most, beside Label Studio), each with its threads, sends a share at a time.
    processes = max(1, min(2, os.cpu_count() or 1)) if len(todo) >= SHARE * 2 else 1
    endpoint, region, keys = sender
    context = multiprocessing.get_context("fork")    # the keys stay in memory, never in argv
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context, initializer=_start_sender,
                                                initargs=(endpoint, region, keys, max(1, WORKERS // processes))) as pool:
        shares = {pool.submit(_send_share, media_dir, bucket, prefix, todo[i:i + SHARE]): i
                  for i in range(0, len(todo), SHARE)}
        for _, _, results in _each_done(shares):
            for rel, entry, how in results:
                state.record(rel, entry)
                checked[how] = checked.get(how, 0) + 1
                sent_bytes += entry["size"]
            done += len(results)
            print(f"sent {done} of {len(todo)}", file=sys.stderr, flush=True)
    state.save()
    return {"files": len(files), "bytes": sum(info.st_size for _, info in files), "sent": len(todo),
            "sent_bytes": sent_bytes, "kept": kept, "checked": checked, "not_files": other[:20],
            "seconds": round(time.monotonic() - started, 2)}


def _fetch(s3, media_dir: str, bucket: str, key: str, rel: str, expected: str | None, etag: str) -> tuple[dict, str]:
    target = os.path.join(media_dir, rel)
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    partial = f"{target}.lsvm-partial"
    digest = hashlib.sha256()
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        answer = s3.get_object(Bucket=bucket, Key=key)
        recorded = (answer.get("Metadata") or {}).get("sha256") or expected
        body = answer["Body"]
        for block in iter(lambda: body.read(CHUNK), b""):
            digest.update(block)
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        sha256 = digest.hexdigest()
        if _hash_file(fd) != sha256:
            raise ValueError(f"{rel}: read back from the disk, its sha256 differs from what came")
        if recorded and recorded != sha256:
            raise ValueError(f"{rel}: its sha256 differs from the one recorded when it was sent")
    except BaseException:
        os.close(fd)
        os.unlink(partial)
        raise
    os.close(fd)
    how = "recorded sha256" if recorded else "read back from the disk"
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        same = stat.S_ISREG(existing.st_mode) and existing.st_size == os.path.getsize(partial)
        if same:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                same = _hash_file(fd) == sha256
            finally:
                os.close(fd)
        if same:
            os.unlink(partial)
            info = os.lstat(target)
            return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha256, "etag": etag}, "already here"
        os.replace(target, target + KEPT_ASIDE)
    os.replace(partial, target)
    info = os.lstat(target)
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha256, "etag": etag}, how


def _fetched_before(media_dir: str, state: State, rel: str, etag: str) -> bool:
    """The object is the one an earlier pass fetched (its ETag) and the file here is still what it wrote."""
    try:
        info = os.lstat(os.path.join(media_dir, rel))
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and _as_recorded(state.files.get(rel), info, etag)


def to_local(s3, media_dir: str, state: State, bucket: str, prefix: str) -> dict:
    started = time.monotonic()
    objects = []
    for key, rel, size, etag in _listing(s3, bucket, prefix):
        known = state.files.get(rel) or {}
        # The sha256 recorded when the copier sent or listed it, while the object is still that one.
        expected = known.get("sha256") if etag and known.get("etag") == etag else None
        objects.append((key, rel, size, expected, etag))
    checked: dict[str, int] = {}
    todo = [o for o in objects if not _fetched_before(media_dir, state, o[1], o[4])]
    fetched = 0
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        futures = {pool.submit(_fetch, s3, media_dir, bucket, key, rel, expected, etag): rel
                   for key, rel, _, expected, etag in todo}
        for done, rel, (entry, how) in _each_done(futures):
            state.record(rel, entry)
            checked[how] = checked.get(how, 0) + 1
            fetched += how != "already here"
            if done % 200 == 0 or done == len(futures):
                print(f"fetched {done} of {len(futures)}", file=sys.stderr, flush=True)
    state.save()
    return {"files": len(objects), "bytes": sum(size for _, _, size, _, _ in objects), "sent": fetched,
            "kept": len(objects) - fetched, "checked": checked, "seconds": round(time.monotonic() - started, 2)}


def _listing(s3, bucket: str, prefix: str) -> list[tuple[str, str, int, str]]:
    """(key, path under media/, size, ETag) of every object under PREFIX; a key that is no such path is refused."""
    base = f"{prefix}/" if prefix else ""
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        for item in page.get("Contents", []):
            rel = item["Key"][len(base):]
            if not _safe_rel(rel):
                raise ValueError(f"refusing an object whose name is not a path under media/: {item['Key']!r}")
            found.append((item["Key"], rel, item["Size"], item.get("ETag", "").strip('"')))
    return found


def _sha256_of(s3, bucket: str, key: str, size: int, etag: str, known: dict | None) -> tuple[str, bool]:
    """(the object's sha256, whether it was read now)."""
    if known and etag and known.get("etag") == etag and known.get("size") == size:
        return known["sha256"], False
    recorded = (s3.head_object(Bucket=bucket, Key=key).get("Metadata") or {}).get("sha256")
    if recorded:
        return recorded, False
    return _read_back(s3, bucket, key), True


def list_bucket(s3, media_dir: str, state: State, bucket: str, prefix: str) -> dict:
    started = time.monotonic()
    listed = _listing(s3, bucket, prefix)
    objects: dict[str, list] = {}
    hashed = 0
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        futures = {pool.submit(_sha256_of, s3, bucket, key, size, etag, state.files.get(rel)): (rel, size, etag)
                   for key, rel, size, etag in listed}
        for done, (rel, size, etag), (sha256, read) in _each_done(futures):
            objects[rel] = [size, etag, sha256]
            known = state.files.get(rel) or {}
            state.record(rel, {**known, "size": size, "etag": etag, "sha256": sha256,
                               "mtime_ns": known.get("mtime_ns", 0) if known.get("sha256") == sha256 else 0})
            hashed += read
    state.save()
    return {"files": len(listed), "bytes": sum(size for _, _, size, _ in listed), "hashed": hashed,
            "objects": dict(sorted(objects.items())), "seconds": round(time.monotonic() - started, 2)}


def prune_local(s3, media_dir: str, state: State, bucket: str, prefix: str) -> dict:
    started = time.monotonic()
    files, other = _local_files(media_dir)
    in_bucket = {rel: etag for _, rel, _, etag in _listing(s3, bucket, prefix)}
    removed, freed, kept = 0, 0, []
    for rel, info in files:
        if _as_recorded(state.files.get(rel), info, in_bucket.get(rel)):
            os.unlink(os.path.join(media_dir, rel))
            removed, freed = removed + 1, freed + info.st_size
        else:
            kept.append(rel)
    return {"files": len(files), "removed": removed, "bytes": freed, "kept": len(kept), "kept_files": kept[:20],
            "not_files": other[:20], "seconds": round(time.monotonic() - started, 2)}


def where(bucket: str, prefix: str, endpoint: str) -> str:
    """The bucket in the words of MediaSettings.describe() (this program imports only the standard library):
    a listing names the bucket it was taken from, and a restore compares the two."""
    return f"{f's3://{bucket}/{prefix}'.rstrip('/')} at {endpoint}"


def main(argv: list[str]) -> int:
    if len(argv) != 7 or argv[0] not in ("to-bucket", "to-local", "list", "prune"):
        print(__doc__.strip().splitlines()[3], file=sys.stderr)
        return 2
    direction, media_dir, state_path, bucket, prefix, endpoint, region = argv
    os.umask(0o077)
    keys = _keys(sys.stdin)
    s3 = _client(endpoint, region, keys)
    state = State(state_path, f"s3://{bucket}/{prefix} at {endpoint}")
    try:
        if direction == "to-bucket":
            report = to_bucket(s3, media_dir, state, bucket, prefix, (endpoint, region, keys))
        else:
            run = {"to-local": to_local, "list": list_bucket, "prune": prune_local}[direction]
            report = run(s3, media_dir, state, bucket, prefix)
            if direction == "list":
                report["where"] = where(bucket, prefix, endpoint)
    except Exception as exc:      # one line for the task; the state keeps what was done
        state.save()
        print(f"{type(exc).__name__}: {exc}"[:2000], file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
