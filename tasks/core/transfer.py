"""Moving bytes to the server: upload to a private temp dir, then install atomically (rename in place)."""

from __future__ import annotations

import contextlib
import io
from pathlib import PurePosixPath
from typing import Iterator

from .commands import q
from .connect import Host
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
    with host._errors():
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
