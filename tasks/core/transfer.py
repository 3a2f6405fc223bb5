"""Moving bytes to the server: upload to a private temp dir, then install atomically (rename in place)."""

from __future__ import annotations

import contextlib
import io
from pathlib import PurePosixPath
from typing import Iterator

from .commands import q
from .connect import Host
from .errors import RemoteError
from .render import RenderedFile


@contextlib.contextmanager
def remote_tempdir(host: Host) -> Iterator[PurePosixPath]:
    """A 0700 directory of the login user's, removed afterwards whatever happens."""
    path = PurePosixPath(host.run("umask 077 && mktemp -d", what="mktemp").stdout.strip())
    try:
        yield path
    finally:
        host.run(f"rm -rf {q(path)}", check=False)


def upload_bytes(host: Host, data: bytes, remote: PurePosixPath) -> None:
    with host.errors():
        host.connection.put(io.BytesIO(data), str(remote))


def install_file(host: Host, file: RenderedFile) -> None:
    """Put `file` in place: never a half-written file where a reader looks (temp + rename)."""
    with remote_tempdir(host) as tmp:
        staged = tmp / "upload"
        upload_bytes(host, file.content.encode(), staged)
        partial = PurePosixPath(f"{file.path}.lsvm-new")
        host.run(
            f"install -D -m {q(file.mode)} -o {q(file.owner)} -g {q(file.group)} {q(staged)} {q(partial)}"
            f" && mv -f {q(partial)} {q(file.path)}",
            sudo=True, what=f"installing {file.path}",
        )


@contextlib.contextmanager
def secret_file(host: Host, data: bytes) -> Iterator[PurePosixPath]:
    """A secret on the server for the length of the block: 0600 in a 0700 dir, never in argv or logs."""
    with remote_tempdir(host) as tmp:
        path = tmp / "secret"
        host.run(f"umask 077 && : > {q(path)}", what="creating a private file")
        upload_bytes(host, data, path)
        yield path


# ------------------------------------------------------------------------------------------------
# Streams: one exec channel, a compressed tar on the wire, hashing as bytes land. Nothing is staged
# in memory beyond a chunk, so a 1 GiB database costs the same RSS as a 1 MiB one.

CHUNK = 1024 * 1024
WINDOW = 32 * 1024 * 1024


class Codec:
    """Compression on the wire: zstd when the server has it (fast, multi-threaded), else gzip."""

    def __init__(self, name: str):
        self.name = name

    @property
    def remote_compress(self) -> str:
        return "zstd -q -1 -T0 -c" if self.name == "zstd" else "gzip -1 -c"

    @property
    def remote_decompress(self) -> str:
        return "zstd -q -d -c" if self.name == "zstd" else "gzip -d -c"

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
    found = host.run("command -v zstd >/dev/null && echo zstd || echo gzip", what="codec probe").stdout
    return Codec("zstd" if found.strip() == "zstd" else "gzip")


class RootChannel:
    """A root command on an exec channel whose stdin/stdout carry data (sudo -S reads its password
    line first, byte by byte, so the rest of stdin is the command's)."""

    def __init__(self, host: Host, command: str):
        from .commands import sh

        self.host = host
        host.connect()
        transport = host.connection.client.get_transport()
        with host.errors():
            self.channel = transport.open_session(window_size=WINDOW)
            if host.sudo_mode == "password":
                # -k: never a cached credential, so the password line is always consumed by sudo.
                self.channel.exec_command(f"sudo -k -S -p '' {sh(command)}")
                self.channel.sendall((host.connection.config.sudo.password + "\n").encode())
            else:
                self.channel.exec_command(f"sudo -n {sh(command)}")
        self.received = 0
        self.sent = 0

    # file-like for readers
    def read(self, size: int = CHUNK) -> bytes:
        data = self.channel.recv(size)
        self.received += len(data)
        return data

    def readable(self) -> bool:
        return True

    # file-like for writers
    def write(self, data: bytes) -> int:
        self.channel.sendall(data)
        self.sent += len(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def finish(self, what: str) -> str:
        """Close our side, wait for the command, raise on failure; returns its stdout tail."""
        if not self.channel.closed:
            self.channel.shutdown_write()
        rest = b""
        while True:
            data = self.channel.recv(CHUNK)
            if not data:
                break
            rest += data[-4096:]
        status = self.channel.recv_exit_status()
        err = b""
        while self.channel.recv_stderr_ready():
            err += self.channel.recv_stderr(CHUNK)
        self.channel.close()
        if status != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise RemoteError(f"{what} failed on {self.host.alias}: {lines[-1] if lines else f'exit {status}'}")
        return rest.decode(errors="replace")

    def close(self) -> None:
        self.channel.close()


class _Counting:
    """Counts bytes read through it and moves a progress bar."""

    def __init__(self, inner, progress, task_id):
        self.inner, self.progress, self.task_id, self.count = inner, progress, task_id, 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.count += len(data)
        self.progress.update(self.task_id, advance=len(data))
        return data


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise RemoteError(f"refusing an unsafe path in the stream: {name!r}")
    return path


def receive_tar(channel: RootChannel, codec: Codec, dest, *, total: int, description: str) -> dict:
    """Unpack a compressed tar stream into `dest` (dirs 0700, files 0600), hashing every file as it
    is written. Returns {relative path: (size, sha256)}."""
    import os
    import tarfile
    from pathlib import Path

    from . import ui
    from .catalog import private_dir, write_private

    dest = Path(dest)
    received: dict[str, tuple[int, str]] = {}
    with ui.transfer_progress() as progress:
        task_id = progress.add_task(description, total=total or None)
        reader = _Counting(codec.reader(channel), progress, task_id)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                rel = _safe_member_path(member.name)
                target = dest.joinpath(*rel.parts)
                if member.isdir():
                    private_dir(target)
                    continue
                if not member.isfile():
                    continue
                size, sha = write_private(target, tar.extractfile(member), chunk=CHUNK, fsync=True)
                os.utime(target, (member.mtime, member.mtime))
                received[str(rel)] = (size, sha)
    return received


def send_tar(channel: RootChannel, codec: Codec, files: list, *, total: int, description: str) -> None:
    """Stream local files as a compressed tar: `files` is [(local Path, name in the archive)]."""
    import tarfile

    from . import ui

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
        with tarfile.open(fileobj=_Advancing(compressed), mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for local, name in files:
                info = tar.gettarinfo(str(local), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                with open(local, "rb") as handle:
                    tar.addfile(info, handle)
        compressed.close()
