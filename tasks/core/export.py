"""`fab export`: Label Studio's own exporter run on the server (commands/export.py), its file streamed
here compressed and written atomically. The pure part (the format word, the plan of which project goes
as which format into which file, the stream's header) is unit-tested; `run_export` does the work."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rich.markup import escape

from tasks.core import ui
from tasks.core.commands import export as export_commands
from tasks.core.connect import CHUNK, Host
from tasks.core.errors import RemoteError, SnapshotError, UsageError
from tasks.core.files import space_needed, write_private
from tasks.core.profile import Profile
from tasks.core.transfer import Codec

FORMAT_WORD = re.compile(r"[A-Z][A-Z0-9_]{0,39}")
WITH_IMAGES = "_WITH_IMAGES"
EXTENSIONS = ("json", "csv", "tsv", "zip", "xml", "txt", "conll", "npy", "png")
HEADER = re.compile(r"file (\d+) ([0-9a-f]{64}) ([a-z0-9]{1,8}) (zstd|gzip)")


def format_word(value: str) -> str:
    """--format as Label Studio names formats (JSON, JSON_MIN, CSV, COCO, YOLO...), case-insensitive;
    whether a project can be exported as it is the server's to say."""
    word = (value or "").strip().upper()
    if not FORMAT_WORD.fullmatch(word):
        raise UsageError(f"--format {value!r}: a format is a word such as JSON, JSON_MIN, CSV, COCO or YOLO")
    return word


@dataclass(frozen=True)
class ProjectFacts:
    """What the server said a project can be exported as (templates/scripts/export_project.py formats)."""

    id: int
    title: str
    tasks: int
    formats: tuple[str, ...]
    media: tuple[str, ...]


def parse_formats(answer: dict | None, alias: str) -> tuple[list[ProjectFacts], list[int]]:
    if not isinstance(answer, dict) or "projects" not in answer:
        why = answer.get("error") if isinstance(answer, dict) else None
        raise RemoteError(f"reading the projects on {alias} failed: {why or 'no answer'}")
    projects = [ProjectFacts(int(p["id"]), str(p["title"]), int(p["tasks"]), tuple(map(str, p["formats"])),
                             tuple(map(str, p["media"]))) for p in answer["projects"]]
    return projects, [int(i) for i in answer.get("missing", [])]


@dataclass(frozen=True)
class Export:
    """One project's export as it will run: Label Studio's format name, whether the converter copies
    images into it, and where the file goes (its extension comes from the converter)."""

    project: ProjectFacts
    format: str
    media: bool
    stem: Path       # the file's path without its extension, or the user's own file name (`named`)
    named: bool = False

    def path(self, extension: str) -> Path:
        return self.stem if self.named else self.stem.with_name(f"{self.stem.name}.{extension}")

    def describe(self) -> str:
        media = " with its images" if self.media else ""
        return f"project {self.project.id} ({self.project.title!r}, {self.project.tasks} tasks) as {self.format}{media}"


def converter_format(project: ProjectFacts, wanted: str, with_media: bool) -> tuple[str, bool]:
    """(the format Label Studio's converter is asked for, download_resources), or a UsageError listing
    what the project can be exported as."""
    if wanted not in project.formats:
        raise UsageError(f"project {project.id} cannot be exported as {wanted}; it can as: "
                         f"{', '.join(project.formats) or 'nothing'}; nothing was run")
    if not with_media:
        return wanted, wanted.endswith(WITH_IMAGES)
    if wanted.endswith(WITH_IMAGES):
        return wanted, True
    if wanted + WITH_IMAGES in project.formats:
        return wanted + WITH_IMAGES, True
    if wanted in project.media:
        return wanted, True
    carrying = [f for f in project.media if not f.endswith(WITH_IMAGES)]
    raise UsageError(f"--with-media goes with formats that reference image files; project {project.id}'s are: "
                     f"{', '.join(carrying) or 'none'} ({wanted} carries no files); nothing was run")


@dataclass(frozen=True)
class Destination:
    """Where --out puts the files: a folder (default names) or one file the user named."""

    path: Path
    folder: bool


def destination(out: str | None, every: bool) -> Destination:
    """--out checked before connecting: a folder (existing, ending in '/', or --all's) or a new file in
    an existing folder; an existing file is never replaced."""
    if not out:
        return Destination(Path.cwd(), True)
    target = Path(out).expanduser()
    if target.is_dir() or out.endswith("/") or every:
        if target.exists() and not target.is_dir():
            raise UsageError(f"--out {out}: is a file; --all writes one file per project into a folder")
        return Destination(target, True)
    if target.exists():
        raise UsageError(f"--out {out}: exists; nothing was written (name a new file, or a folder)")
    if not target.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {target.parent} does not exist")
    return Destination(target, False)


def plan_exports(projects: list[ProjectFacts], missing: list[int], wanted: str, with_media: bool,
                 where: Destination, alias: str, now: datetime) -> list[Export]:
    """Every export checked before any runs: the projects exist and each can be exported as asked."""
    if missing:
        raise UsageError(f"{alias} has no project {', '.join(map(str, missing))}; nothing was run",
                         hint=f"`fab -H {alias} export --all --format {wanted}` exports every project")
    if not projects:
        raise UsageError(f"{alias} has no projects to export")
    chosen = [(p, *converter_format(p, wanted, with_media)) for p in projects]
    if not where.folder:
        return [Export(project, name, media, where.path, named=True) for project, name, media in chosen]
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return [Export(project, name, media, where.path / f"{alias}-project-{project.id}-{name.lower()}-{stamp}")
            for project, name, media in chosen]


def parse_header(line: str) -> tuple[int, str, str, str] | None:
    """(size, sha256, extension, codec) from the exporter's `file` line, None for another line."""
    match = HEADER.fullmatch(line.strip())
    if not match or match.group(3) not in EXTENSIONS:
        return None
    return int(match.group(1)), match.group(2), match.group(3), match.group(4)


def parse_tasks_line(line: str) -> tuple[int, int] | None:
    parts = line.split()
    if len(parts) == 3 and parts[0] == "tasks" and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    return None


# ------------------------------------------------------------------------------------------------


def read_projects(host: Host, profile: Profile, project_ids: list[int] | None) -> tuple[list[ProjectFacts], list[int]]:
    with ui.err.status(f"reading the projects on {host.alias} (Label Studio's converter)"):
        out = host.run(export_commands.project_formats(profile, project_ids), sudo=True, check=False,
                       what="reading the projects")
    return parse_formats(out.answer() or {"error": out.last_line()}, host.alias)


def run_export(host: Host, profile: Profile, export: Export) -> tuple[Path, int, str, float]:
    """Run one export on the server and write its file here: (path, size, sha256, seconds)."""
    started = time.monotonic()
    channel = host.root_channel(export_commands.export_project(profile, export.project.id, export.format,
                                                               export.media))
    try:
        with ui.count_progress() as progress:
            size, sha, extension, codec = _follow_until_header(channel, progress, export)
        target = export.path(extension)
        with ui.transfer_progress() as progress:
            bar = progress.add_task(f"receiving {escape(target.name)}", total=size or None)
            _write_atomically(target, Codec(codec).reader(channel), lambda n: progress.update(bar, advance=n),
                              expected=(size, sha))
        channel.finish(f"the export of project {export.project.id}")
    except BaseException:
        channel.close()
        raise
    return target, size, sha, time.monotonic() - started


def _follow_until_header(channel, progress, export: Export) -> tuple[int, str, str, str]:
    """The exporter's progress lines until its `file` header; its error when it ends without one."""
    tasks = progress.add_task(f"serializing {export.project.tasks} tasks of project {export.project.id}",
                              total=export.project.tasks or None)
    while True:
        line = channel.read_line()
        if not line:
            status = channel.exit_status()
            channel.finish(f"the export of project {export.project.id}")   # raises with the exporter's words
            raise RemoteError(f"the export of project {export.project.id} ended without a file (exit {status})")
        counted = parse_tasks_line(line)
        if counted:
            progress.update(tasks, completed=counted[0], total=counted[1] or None)
            continue
        if line.strip() == "converting":
            progress.update(tasks, description=f"converting project {export.project.id} to {export.format}")
            continue
        if line.startswith("file "):
            header = parse_header(line)
            if header is None:
                raise RemoteError(f"the export of project {export.project.id} came with a header fab does not "
                                  f"accept: {line.strip()[:120]!r}")
            return header


class _Announced:
    """A stream that may not run past the size the server announced (what lands here is bounded by it,
    whatever the server sends), moving the progress bar as it is read."""

    def __init__(self, inner, size: int, advance, name: str):
        self.inner, self.size, self.advance, self.name, self.seen = inner, size, advance, name, 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.seen += len(data)
        if self.seen > self.size:
            raise SnapshotError(f"{self.name}: more bytes came than the server announced ({self.size}); "
                                "nothing was kept", hint="run it again")
        self.advance(len(data))
        return data


def _write_atomically(target: Path, source, advance, *, expected: tuple[int, str]) -> None:
    """The stream into a 0600 file beside `target` (files.write_private: hashed, fsynced), given its name
    only when its size and sha256 are `expected`: nothing half-written or damaged ever carries the name,
    and a file that appeared there meanwhile is never replaced."""
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        with space_needed(target.parent):
            size, sha = write_private(partial, _Announced(source, expected[0], advance, target.name), chunk=CHUNK,
                                      fsync=True)
        if (size, sha) != expected:
            raise SnapshotError(f"{target.name} arrived damaged ({size} bytes, sha256 {sha[:12]}; "
                                f"the server sent {expected[0]} bytes, {expected[1][:12]}); nothing was kept",
                                hint="run it again")
        _give_name(partial, target)
    except FileExistsError:
        raise       # the random partial name was taken: that file is someone else's
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _give_name(partial: Path, target: Path) -> None:
    try:
        os.link(partial, target)
    except FileExistsError:
        raise UsageError(f"{target} appeared while the export ran; it was left as it is and the export not kept") \
            from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if target.exists():
            raise UsageError(f"{target} appeared while the export ran; the export was not kept") from None
        os.replace(partial, target)
        return
    os.unlink(partial)
