"""Snapshots on this machine: naming, manifests, listing, retention. Pure except for reading folders.

A snapshot is `backups/<host>/<UTC YYYYmmddTHHMMSSZ>[-<label>]/` holding `label_studio.sqlite3`, `.env`,
`media/...` and `manifest.json`. It is written in a hidden `.<id>-*.partial` folder beside the others and
renamed to its ID once the manifest, written last, is there (`new_snapshot`). A folder without a manifest
(an earlier version's, or a copy made by hand) is incomplete: never offered for a restore, removed by
prune, as are partial folders a killed run left more than a day ago.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from tasks.core import ui
from tasks.core.defaults import MEDIA
from tasks.core.errors import SnapshotError, UsageError
from tasks.core.files import link_or_copy, private_dir, space_needed, write_atomic

MANIFEST = "manifest.json"
FORMAT = 1
LOCAL_HOST = "local"
# A SQLite snapshot stored and proven byte-identical to the server's copy, whose integrity_check on this
# machine has not run yet (checking.py): its manifest's integrity_check says this until the check rewrites it.
PENDING = "pending"

_ID = re.compile(r"^(\d{8}T\d{6}Z)(?:-([a-z0-9][a-z0-9-]{0,39}))?$")
_LABEL = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def check_label(label: str | None) -> str | None:
    if label is None or label == "":
        return None
    if not _LABEL.match(label):
        raise UsageError(f"label '{label}' must be lower-case letters, digits and '-' (at most 40)")
    return label


def snapshot_id(when: dt.datetime, label: str | None = None) -> str:
    stamp = when.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{label}" if label else stamp


def parse_id(name: str) -> tuple[dt.datetime, str | None] | None:
    match = _ID.match(name)
    if not match:
        return None
    when = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    return when, match.group(2)


@dataclass(frozen=True)
class FileEntry:
    path: str      # relative to the snapshot folder, POSIX separators
    size: int
    sha256: str
    mtime: int | None = None  # media only: lets the next backup skip unchanged files


# The JSON type of each manifest key (a tuple with None: null allowed). A key may be absent only when
# its field has a default; anything else makes the manifest unreadable, so the snapshot incomplete.
_FILE_SHAPE = {"path": str, "size": int, "sha256": str, "mtime": (int, None)}
_MANIFEST_SHAPE = {"host": str, "created": str, "label": (str, None), "label_studio_version": (str, None),
                   "source": dict, "files": list, "integrity_check": str, "counts": dict, "media_included": bool,
                   "format": int, "extra": dict}


def _checked(data, shape: dict, what: str) -> dict:
    """`data` itself when it is a JSON object whose keys in `shape` have those types, else ValueError."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} is not a JSON object")
    for key, types in shape.items():
        types = types if isinstance(types, tuple) else (types,)
        value = data.get(key)
        if key not in data or (value is None and None in types):
            continue
        wanted = tuple(t for t in types if t is not None)
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            raise ValueError(f"{what}: {key} is not a {wanted[0].__name__}")
    return data


@dataclass
class Manifest:
    host: str
    created: str                      # ISO 8601 UTC
    label: str | None
    label_studio_version: str | None
    source: dict                      # host, data_dir, database ... where it came from
    files: list[FileEntry]
    integrity_check: str
    counts: dict                      # projects, tasks, annotations
    media_included: bool
    format: int = FORMAT
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        """ValueError unless `text` is a manifest of the shape `to_json` writes."""
        data = _checked(json.loads(text), _MANIFEST_SHAPE, "manifest")
        try:
            data["files"] = [FileEntry(**_checked(f, _FILE_SHAPE, "a file entry")) for f in data.get("files", [])]
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except TypeError as exc:  # a key missing or unknown
            raise ValueError(f"manifest: {exc}") from None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    @property
    def media_files(self) -> list[FileEntry]:
        return [f for f in self.files if f.path.startswith(MEDIA + "/")]


@dataclass(frozen=True)
class Snapshot:
    id: str
    path: Path
    host: str
    created: dt.datetime
    label: str | None
    manifest: Manifest | None

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    @property
    def verified(self) -> bool:
        return self.complete and self.manifest.integrity_check == "ok"

    @property
    def pending(self) -> bool:
        return self.complete and self.manifest.integrity_check == PENDING

    @property
    def state(self) -> str:
        """incomplete (no manifest), pending (its check has not run), verified, or failed (its check did not pass)."""
        if not self.complete:
            return "incomplete"
        return "verified" if self.verified else PENDING if self.pending else "failed"


# `fab backups --json`: one object per snapshot with these keys, always (documented in the README).
LISTING_KEYS = ("host", "id", "path", "time", "label", "label_studio_version", "size_bytes", "disk_bytes",
                "projects", "tasks", "annotations", "state", "problem")


def listing_record(snapshot: Snapshot, problem: str | None = None, *, checked_now: bool = False,
                   disk_bytes: int | None = None) -> dict:
    """A snapshot as `backups --json` prints it. state: "incomplete" (no manifest: unfinished or damaged),
    "pending" (stored, its check on this machine not run yet), "verified" (its check passed; "verified now"
    with --verify), "failed" (its check did not pass), "damaged" (--verify found `problem`). disk_bytes:
    what this snapshot alone adds on disk (hard links and reflinks shared with older snapshots not
    counted), when measured."""
    m = snapshot.manifest
    if m is not None and problem:
        state = "damaged"
    elif checked_now:
        state = "verified now"
    else:
        state = snapshot.state
    counts = m.counts if m else {}
    return {
        "host": snapshot.host, "id": snapshot.id, "path": str(snapshot.path),
        "time": snapshot.created.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "label": snapshot.label, "label_studio_version": m.label_studio_version if m else None,
        "size_bytes": m.total_size if m else None, "disk_bytes": disk_bytes,
        **{key: counts.get(key) for key in ("projects", "tasks", "annotations")},
        "state": state,
        "problem": problem or ("no manifest: unfinished, or damaged" if m is None else
                               f"integrity {m.integrity_check}" if state == "failed" else None),
    }


def list_snapshots(host_dir: Path) -> list[Snapshot]:
    """Every snapshot folder of one host, oldest first; an unreadable or malformed manifest counts as
    incomplete."""
    if not host_dir.is_dir():
        return []
    found = []
    for entry in host_dir.iterdir():
        parsed = parse_id(entry.name)
        if not parsed or not entry.is_dir():
            continue
        manifest = None
        manifest_file = entry / MANIFEST
        if manifest_file.is_file():
            try:
                manifest = Manifest.from_json(manifest_file.read_text())
            except (OSError, ValueError, RecursionError):  # unreadable, not JSON, or not a manifest's shape
                manifest = None
        found.append(Snapshot(entry.name, entry, host_dir.name, parsed[0], parsed[1], manifest))
    return sorted(found, key=lambda s: (s.created, s.id))


def all_snapshots(root: Path, first: str) -> list[Snapshot]:
    """Every host's snapshots under `root`, the `first` host's before the others'."""
    hosts = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: (d.name != first, d.name)) \
        if root.is_dir() else []
    return [s for d in hosts for s in list_snapshots(d)]


def newest_complete(host_dir: Path) -> Snapshot | None:
    done = [s for s in list_snapshots(host_dir) if s.complete]
    return done[-1] if done else None


def find_snapshot(snapshots: list[Snapshot], wanted: str) -> Snapshot:
    """By full id, or by a unique prefix of it. Only complete snapshots can be chosen."""
    matches = [s for s in snapshots if s.id == wanted] or [s for s in snapshots if s.id.startswith(wanted)]
    if not matches:
        raise SnapshotError(f"no snapshot '{wanted}'", hint="`fab backups` lists them")
    if len(matches) > 1:
        raise SnapshotError(f"'{wanted}' matches {len(matches)} snapshots: "
                            + ", ".join(s.id for s in matches[:5]))
    snapshot = matches[0]
    if not snapshot.complete:
        raise SnapshotError(f"snapshot {snapshot.id} is incomplete (no manifest): it cannot be restored")
    return snapshot


def snapshot_host(ref: str, this_host: str) -> str:
    """Whose snapshot `ref` names: OTHERHOST/ID is another server's (a move), a bare ID this host's."""
    if "/" not in ref:
        return this_host
    host = ref.split("/", 1)[0]
    if host in ("", ".", "..") or "\\" in host or host.startswith("."):
        raise UsageError(f"--snapshot {ref}: '{host}' is not a host's folder under backups/")
    return host


def snapshot_name(ref: str) -> str:
    """The ID part of ID or OTHERHOST/ID."""
    name = ref.split("/", 1)[1] if "/" in ref else ref
    if not name or "/" in name:
        raise UsageError(f"--snapshot {ref}: give ID or OTHERHOST/ID")
    return name


PARTIAL = ".partial"  # a snapshot being written: `.<id><PARTIAL>` beside the finished ones, never listed


class PendingSnapshot:
    """A snapshot being written by `new_snapshot`: files go into `path`; `manifest` is set when they are all
    there. `snapshot` is the finished one, once the block has ended."""

    def __init__(self, path: Path, when: dt.datetime, label: str | None):
        self.path = path
        self.label = label
        self.created = when.isoformat(timespec="seconds")   # for the manifest
        self.manifest: Manifest | None = None
        self.snapshot: Snapshot | None = None


@contextlib.contextmanager
def new_snapshot(host_dir: Path, label: str | None, now: dt.datetime | None = None) -> Iterator[PendingSnapshot]:
    """The one way a snapshot is made here (server SQLite, PostgreSQL, local data): a private temp folder
    in the host's folder -> the caller's files -> `pending.manifest` written last (atomically) -> the
    folder renamed to its ID (the next free second if that one is taken). Any failure, or a block that
    sets no manifest, removes the temp folder: a listing never shows a half-made snapshot."""
    when = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).replace(microsecond=0)
    with space_needed(host_dir):
        private_dir(host_dir)
        os.chmod(host_dir, 0o700)
        path = Path(tempfile.mkdtemp(prefix=f".{snapshot_id(when, label)}-", suffix=PARTIAL, dir=host_dir))
    pending = PendingSnapshot(path, when, label)
    try:
        yield pending
        if pending.manifest is None:
            raise SnapshotError(f"the snapshot in {path} was not finished (no manifest); it was removed")
        write_manifest(path, pending.manifest)
        final = _rename_free(path, host_dir, when, label)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    pending.snapshot = next(s for s in list_snapshots(host_dir) if s.path == final)


def leftover_partials(host_dir: Path, older_than: float = 86400) -> list[Path]:
    """Partial folders a killed run left (older than a day: a backup running now has a fresh one)."""
    if not host_dir.is_dir():
        return []
    cutoff = time.time() - older_than
    return sorted(p for p in host_dir.iterdir() if p.name.startswith(".") and p.name.endswith(PARTIAL)
                  and p.is_dir() and p.stat().st_mtime < cutoff)


def _rename_free(path: Path, host_dir: Path, when: dt.datetime, label: str | None) -> Path:
    for _ in range(60):
        final = host_dir / snapshot_id(when, label)
        if not final.exists():
            os.rename(path, final)   # same folder: atomic; a concurrent maker of this ID holds the host's lock
            return final
        when += dt.timedelta(seconds=1)
    raise SnapshotError(f"could not name a new snapshot in {host_dir} (60 seconds of IDs taken)")


Wanted = tuple[str, int, "str | None", "int | None"]  # path, size, sha256 if known, mtime if media


def link_unchanged(wanted: list[Wanted], previous: Snapshot | None, dest: Path, *,
                   always_fetch: frozenset[str] = frozenset()) -> tuple[list[FileEntry], list[Wanted]]:
    """Hard-link into `dest` each wanted file that `previous` holds unchanged (same size and sha256,
    or same size and mtime for media); (those entries, the rest to fetch)."""
    reuse = {f.path: f for f in previous.manifest.files} if previous is not None and previous.manifest else {}
    linked, fetch = [], []
    for path, size, sha, mtime in wanted:
        old = reuse.get(path)
        same = path not in always_fetch and old is not None and old.size == size and (
            (sha is not None and old.sha256 == sha) or (sha is None and mtime is not None and old.mtime == mtime))
        if same:
            link_or_copy(previous.path / path, dest / path)
            linked.append(old)
        else:
            fetch.append((path, size, sha, mtime))
    return linked, fetch


def received_entries(fetch: list[Wanted], received: dict[str, tuple[int, str]], alias: str,
                     expected: dict[str, str] | None = None) -> list[FileEntry]:
    """The manifest entries of what a stream brought (path -> (size, sha256)), each checked against the
    sha256 the server gave (`expected` overrides per path); a media file deleted on the server between
    listing and streaming is left out, anything else missing or different is a SnapshotError."""
    entries = []
    for path, _size, sha, mtime in fetch:
        got = received.get(path)
        if got is None:
            if path.startswith(MEDIA + "/"):
                continue
            raise SnapshotError(f"{path} did not arrive from {alias}")
        want = (expected or {}).get(path, sha)
        if want is not None and got[1] != want:
            raise SnapshotError(f"{path}: sha256 differs between {alias} and this machine (transfer corrupted)")
        entries.append(FileEntry(path, got[0], got[1], mtime))
    return entries


@dataclass(frozen=True)
class PrunePlan:
    keep: list[Snapshot]
    delete: list[Snapshot]
    reasons: dict  # id -> why kept


def retention_plan(snapshots: list[Snapshot], keep_last: int, keep_daily: int, keep_weekly: int) -> PrunePlan:
    """keep-last N, plus the newest of each of the last D days and W ISO weeks that have snapshots.
    Whatever the counts, what a restore would pick stays: the newest verified snapshot, the local work a
    pull saved (restore-local's default), the newest verified of each release's pre-upgrade snapshots
    (rollback's), and the newest folder even when incomplete (one an earlier version left, or kept for a
    look; a backup under way is a hidden partial folder, not listed here). Other incomplete folders go."""
    complete = sorted((s for s in snapshots if s.complete), key=lambda s: s.created, reverse=True)
    reasons: dict[str, str] = {}
    newest = max(snapshots, key=lambda s: (s.created, s.id), default=None)
    if newest is not None and not newest.complete:
        reasons[newest.id] = "newest folder (incomplete: never removed while it is the newest)"
    own_work = next((s for s in complete if s.label == "pre-pull" and not s.manifest.extra.get("pulled_copy")), None)
    if own_work is not None:
        reasons[own_work.id] = "your own local work a pull saved (what restore-local restores)"
    upgrades: set = set()
    for s in complete:
        if s.verified and (s.label or "").startswith("pre-upgrade-") and s.label not in upgrades:
            upgrades.add(s.label)
            reasons.setdefault(s.id, f"newest {s.label} (what rollback returns to)")
    for s in complete[:keep_last]:
        reasons.setdefault(s.id, "last")
    for key_of, count, why in ((lambda s: s.created.date(), keep_daily, "daily"),
                               (lambda s: tuple(s.created.isocalendar())[:2], keep_weekly, "weekly")):
        seen = []
        for s in complete:
            key = key_of(s)
            if key in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(key)
            reasons.setdefault(s.id, why)
    newest_verified = next((s for s in complete if s.verified), None)
    if newest_verified:
        reasons.setdefault(newest_verified.id, "newest verified")
    for s in complete:
        if s.pending:   # it may become the newest verified: never removed before its check says
            reasons.setdefault(s.id, "its check has not run yet")
    keep = [s for s in snapshots if s.id in reasons]
    delete = [s for s in snapshots if s.id not in reasons]
    return PrunePlan(keep, delete, reasons)


def write_manifest(dest: Path, manifest: Manifest) -> None:
    """Last, atomically: a snapshot without it is incomplete by definition."""
    with space_needed(dest):
        write_atomic(dest / MANIFEST, manifest.to_json().encode())


def delete_snapshots(snapshots: list[Snapshot]) -> None:
    delete_folders([snapshot.path for snapshot in snapshots])


def delete_folders(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder)


def counts_text(counts: dict | None) -> str:
    if not counts:
        return "no database"
    if "error" in counts:
        return f"unreadable ({counts['error']})"
    return ", ".join(f"{counts.get(k, '?')} {k}" for k in ("projects", "tasks", "annotations"))


def report_snapshot(snapshot: Snapshot, what: str = "snapshot") -> None:
    m = snapshot.manifest
    counts = "counted by its check" if snapshot.pending else counts_text(m.counts)
    ui.step(True, f"{what} {snapshot.id}: {ui.human_bytes(m.total_size)}, {len(m.files)} files, "
                  f"{counts}, integrity {m.integrity_check}")
    ui.out.print(f"  in {snapshot.path}")
