"""Everything the toolkit runs on a server is built in this package, by pure functions: quoting
primitives here, probes, service control, provision and data scripts in the modules beside it. Every
value that reaches a script is quoted by `q`/`join` in this package and nowhere else; every script
builder is checked with `sh -n` against a hostile-but-valid profile (tests/unit/programs/test_scripts.py)."""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

from tasks.core.profile import Profile

Arg = str | int | PurePosixPath


def q(value: Arg) -> str:
    """One shell word, whatever the value holds (spaces, quotes, ';', '$')."""
    return shlex.quote(str(value))


def join(*words: Arg) -> str:
    """A command line from words, each quoted."""
    return " ".join(q(w) for w in words)


def sh(script: str) -> str:
    """A script run by a POSIX shell as one argument (so sudo covers all of it)."""
    return f"sh -c {q(script)}"


def sudo_noninteractive(script: str) -> str:
    """Root without a prompt: fails at once (instead of hanging) when sudo wants a password."""
    return f"sudo -n {sh(script)}"


def sudo_with_password_on_stdin(script: str) -> str:
    """Root through `sudo -S`: the first line of stdin is the password; -k so that line is always
    consumed by sudo (never a cached credential), the rest of stdin is the script's."""
    return f"sudo -k -S -p '' {sh(script)}"


def sudo_with_password_first(script: str) -> str:
    """sudo_with_password_on_stdin for a script that reads no input: whatever sudo left of stdin never
    reaches the script."""
    return sudo_with_password_on_stdin(f"exec < /dev/null\n{script}")


def lines(*commands: str) -> str:
    return "\n".join(commands)


SUDO_CHECK = "sudo -n true"


def as_service_user(profile: Profile, *words: Arg, cwd: Arg | None = None) -> str:
    """A command run by root as the service user, in the data dir (or `cwd`) with HOME there: never in
    the SSH user's working directory, which Debian 13 (0700) and Ubuntu (0750) homes close to other users
    and which Label Studio probes at import."""
    data_dir = profile.remote.data_dir
    return join("runuser", "-u", profile.service.user, "--", "env", "-C", cwd or data_dir, f"HOME={data_dir}", *words)


def read_as_service_user(profile: Profile, path: Arg, limit: int) -> str:
    """A file the service user wrote, read as that user: at most `limit` + 1 bytes, so a file that user made
    huge cannot fill this machine's memory (Output.within refuses the longer answer)."""
    return as_service_user(profile, "head", "-c", str(limit + 1), "--", path)


def service_python(profile: Profile, *assignments: str, timeout: int | None = None,
                   python: PurePosixPath | None = None) -> str:
    """The release's python (the current one's, or `python`), as the service user, for `-c SOURCE` (the
    caller appends it): isolated (-I: no script dir or cwd on the import path, no user site under HOME) and
    started in the app dir, which that user cannot write, so nothing it planted in the data dir is imported
    with a secret on stdin. `timeout`: killed after that many seconds (what it reads is the service user's)."""
    command = as_service_user(profile, *assignments, python or profile.remote.venv_python, "-I", "-c",
                              cwd=profile.remote.app_dir)
    return f"timeout -k 10 {int(timeout)} {command}" if timeout else command


def remove(*paths: Arg) -> str:
    return "rm -rf " + join(*paths)


MAKE_TEMPDIR = "umask 077 && mktemp -d"


def install_file(staged: Arg, target: PurePosixPath, *, mode: str, owner: str, group: str) -> str:
    """Put an uploaded file in place: never a half-written file where a reader looks (temp + rename)."""
    partial = PurePosixPath(f"{target}.lsvm-new")
    return (f"install -D -m {q(mode)} -o {q(owner)} -g {q(group)} {q(staged)} {q(partial)}"
            f" && mv -f {q(partial)} {q(target)}")


def install_into_private_dir(folder: PurePosixPath, staged: PurePosixPath, names: list[str]) -> str:
    """Uploads from the login user's temp dir `staged` into a fresh root-only `folder` (what a swap job
    reads long after the upload)."""
    return (f"rm -rf {q(folder)} && install -d -m 0700 -o root -g root {q(folder)} && "
            + " && ".join(f"install -m 0600 -o root -g root {q(staged / name)} {q(folder / name)}" for name in names))


def staged_name(file, side: str) -> str:
    """A rendered file's name in a stage folder that holds it for two sides (engines, places of uploads)."""
    return f"{side}-{file.path.name}"


def install_staged_files(folder: PurePosixPath, files: list, side: str) -> list[str]:
    """Each rendered file of `side` from the stage folder to its place (written aside, renamed over)."""
    return [install_file(folder / staged_name(file, side), file.path, mode=file.mode, owner=file.owner,
                         group=file.group) for file in files]


def empty_private_file(path: Arg) -> str:
    return f"umask 077 && : > {q(path)}"


def private_file_from_stdin(path: Arg) -> str:
    """stdin into a new root-only file (0600 before a byte is written): a secret's first step, before
    it is checked and renamed over the one in use."""
    return f"umask 077 && rm -f {q(path)} && cat > {q(path)} && chown root:root {q(path)} && chmod 0600 {q(path)}"


def read_file(path: Arg) -> str:
    """A file's text, or nothing when it does not exist."""
    return f"cat {q(path)} 2>/dev/null || true"
