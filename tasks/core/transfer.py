"""Moving bytes between here and the server: small uploads into a private temp dir, free-space checks,
and compressed tar streams over a root channel, hashed as they land."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from tasks.core import commands, ui
from tasks.core.commands import data as data_commands
from tasks.core.connect import CHUNK, Host, RootChannel, removed_afterwards
from tasks.core.errors import RemoteError, SnapshotError
from tasks.core.files import private_dir, space_needed, write_private


@contextlib.contextmanager
def remote_tempdir(host: Host) -> Iterator[PurePosixPath]:
    """A 0700 directory of the login user's, removed afterwards whatever happens."""
    path = PurePosixPath(host.run(commands.MAKE_TEMPDIR, what="mktemp").stdout.strip())
    try:
        yield path
    finally:
        host.run(commands.remove(path), check=False)


def upload_bytes(host: Host, data: bytes, remote: PurePosixPath) -> None:
    with host.errors():
        host.connection.put(io.BytesIO(data), str(remote))


def stage(host: Host, uploads: dict[str, str], install, what: str) -> None:
    """Texts uploaded into a temp dir of the login user, then `install(temp dir, names)` (a root command
    that puts them in a root-only folder)."""
    with remote_tempdir(host) as tmp:
        for name, content in uploads.items():
            upload_bytes(host, content.encode(), tmp / name)
        host.run(install(tmp, list(uploads)), sudo=True, what=what)


@contextlib.contextmanager
def staged_for_swap(host: Host, folder: PurePosixPath, uploads: dict[str, str], files: dict[str, list],
                    what: str) -> Iterator[None]:
    """`uploads` ({name: text}: a program) and each side's rendered `files` (commands.staged_name) in
    the root-only stage `folder` for the time of the block; left there while the swap job (which reads
    them) still runs after a Ctrl-C."""
    uploads = dict(uploads)
    for side, rendered in files.items():
        uploads.update({commands.staged_name(file, side): file.content for file in rendered})
    stage(host, uploads, lambda tmp, names: commands.install_into_private_dir(folder, tmp, names), what)
    with removed_afterwards(host, commands.remove(folder)):
        yield


@contextlib.contextmanager
def secret_file(host: Host, data: bytes) -> Iterator[PurePosixPath]:
    """A secret on the server for the length of the block: 0600 in a 0700 dir, never in argv or logs."""
    with remote_tempdir(host) as tmp:
        path = tmp / "secret"
        host.run(commands.empty_private_file(path), what="creating a private file")
        upload_bytes(host, data, path)
        yield path


def check_free_space(host: Host, where: PurePosixPath, needed: int, purpose: str) -> None:
    """SnapshotError, in words, when the filesystem holding `where` has less than `needed` bytes free."""
    out = host.run(data_commands.free_space(where), sudo=True, what="df").stdout.strip()
    free = int(out) if out.isdigit() else None
    if free is not None and free < needed:
        raise SnapshotError(
            f"not enough space on {host.alias} in {where} for {purpose}: needs {ui.human_bytes(needed)}, "
            f"{ui.human_bytes(free)} free", hint="free some space, or set backup.server_tmp_dir in the profile")


# ------------------------------------------------------------------------------------------------
# Streams: one exec channel, a compressed tar on the wire, hashing as bytes land. Nothing is staged
# in memory beyond a chunk, so a 1 GiB database costs the same RSS as a 1 MiB one.

class Codec:
    """Compression on the wire: zstd when the server has it (fast, multi-threaded), else gzip. The
    server's side of it is in commands.data (COMPRESS, DECOMPRESS); this is ours."""

    def __init__(self, name: str):
        self.name = name

    def reader(self, raw):
        if self.name == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK)
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")

    def writer(self, raw):
        if self.name == "zstd":
            import zstandard

            return zstandard.ZstdCompressor(level=1, threads=-1).stream_writer(raw, closefd=False)
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1)


def server_codec(host: Host) -> Codec:
    found = host.run(data_commands.CODEC_PROBE, what="codec probe").stdout
    return Codec("zstd" if found.strip() == "zstd" else "gzip")


class _ProgressReader:
    """Moves a progress bar by the bytes read through it."""

    def __init__(self, inner, progress, task_id):
        self.inner, self.progress, self.task_id = inner, progress, task_id

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.progress.update(self.task_id, advance=len(data))
        return data


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise RemoteError(f"refusing an unsafe path in the stream: {name!r}")
    return path


def _check_asked_for(member: tarfile.TarInfo, rel: PurePosixPath, expected: dict[str, int],
                     received: dict) -> None:
    """Refuse what was not asked for, a file twice, or a file larger than announced: what lands here
    is bounded by the announced sizes, whatever the server sends."""
    name = str(rel)
    if member.isdir():
        if not any(PurePosixPath(wanted).is_relative_to(rel) for wanted in expected):
            raise RemoteError(f"refusing a folder the stream was not asked for: {member.name!r}")
        return
    if name not in expected:
        raise RemoteError(f"refusing a file the stream was not asked for: {member.name!r}")
    if name in received:
        raise RemoteError(f"refusing {member.name!r}: it came twice in the stream")
    if member.isfile() and member.size > expected[name]:
        raise SnapshotError(f"{name} is larger than announced ({member.size} bytes, {expected[name]} expected)",
                            hint="did it change on the server during the transfer? try again")


def receive_tar(channel: RootChannel, codec: Codec, dest, *, total: int, description: str,
                expected: dict[str, int], unsynced: frozenset[str] = frozenset()) -> dict:
    """Unpack a compressed tar stream into `dest` (dirs 0700, files 0600), hashing every file as it
    is written and fsyncing it, except the names in `unsynced` (the caller fsyncs those before it
    trusts them). `expected` is {relative path: announced size}: only those names, at most that size.
    Returns {relative path: (size, sha256)}."""
    dest = Path(dest)
    received: dict[str, tuple[int, str]] = {}
    with ui.transfer_progress() as progress, space_needed(dest):
        task_id = progress.add_task(description, total=total or None)
        reader = _ProgressReader(codec.reader(channel), progress, task_id)
        with tarfile.open(fileobj=reader, mode="r|", bufsize=CHUNK, encoding="utf-8",
                          errors="surrogateescape") as tar:
            for member in tar:
                rel = _safe_member_path(member.name)
                _check_asked_for(member, rel, expected, received)
                target = dest.joinpath(*rel.parts)
                if member.isdir():
                    private_dir(target)
                    continue
                if not member.isfile():
                    continue
                size, sha = write_private(target, tar.extractfile(member), chunk=CHUNK,
                                          fsync=str(rel) not in unsynced)
                os.utime(target, (member.mtime, member.mtime))
                received[str(rel)] = (size, sha)
    return received


def send_tar(channel: RootChannel, codec: Codec, files: list, *, total: int, description: str) -> None:
    """Stream local files as a compressed tar: `files` is [(local Path, name in the archive)]."""
    with ui.transfer_progress() as progress:
        task_id = progress.add_task(description, total=total or None)

        class _Advancing:
            def __init__(self, inner):
                self.inner = inner

            def write(self, data):
                progress.update(task_id, advance=len(data))
                return self.inner.write(data)

            def flush(self):
                self.inner.flush()

        compressed = codec.writer(channel)
        with tarfile.open(fileobj=_Advancing(compressed), mode="w|", bufsize=CHUNK, format=tarfile.PAX_FORMAT,
                          encoding="utf-8", errors="surrogateescape") as tar:
            for local, name in files:
                info = tar.gettarinfo(str(local), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                with open(local, "rb") as handle:
                    tar.addfile(info, handle)
        compressed.close()
