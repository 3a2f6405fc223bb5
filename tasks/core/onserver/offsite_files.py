"""The offsite snapshot of .env and media, run ON the server by root (systemd timer): tar reads them as
the service user and streams them into `restic backup --stdin` run as the replication user, with the
password and keys systemd read for this unit; then `restic forget --prune` keeps what the profile says.
Root only starts the two and joins them with a pipe: it opens no path in the data dir (only tar's
working directory, whose parent is root's) and gives the service user's process no secret. Standard
library only; installed by `fab provision` as <app_dir>/offsite-files.py.

With PostgreSQL (a fourth part: the root-only file with its password, Label Studio's python, the
toolkit's postgres-tool.py, libpq's variables), the service user first dumps the database (pg_dump -Fc
and the row counts of the same transaction, postgres_tool.py) into a private temp folder of its own, and
its tar takes label_studio.pgdump and label_studio.pgdump.json beside .env and media: one snapshot is one point in time.
A snapshot whose maker failed is forgotten at once (never the newest one a restore would take).

    offsite-files.py SERVICE_USER REPLICATION_USER DATA_DIR STATE_DIR -- RESTIC... -- FORGET...
                     [-- PASSWORD_FILE PYTHON PGTOOL PGVAR=VALUE...]
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

FILES_NAME = "files.tar"
FILES_TAG = "files"
PARTS = (".env", "media")
DUMP_PARTS = ("label_studio.pgdump", "label_studio.pgdump.json")    # a snapshot's names (tasks.core.database.DUMP)
# The service user's side with PostgreSQL: the dump into a private temp folder, then one tar of both places.
DUMP_AND_TAR = ('set -e; w=$(mktemp -d /var/tmp/lsvm-dump.XXXXXX); trap \'rm -rf "$w"\' EXIT; '
                f'"$1" -I "$2" dump "$w/{DUMP_PARTS[0]}" > "$w/{DUMP_PARTS[1]}"; '
                'tar --ignore-failed-read --warning=no-file-changed -cf - -C "$3" .env media '
                f'-C "$w" {DUMP_PARTS[0]} {DUMP_PARTS[1]}')
PASSWORD_KEY = "POSTGRE_PASSWORD"
LOCKED = "repository is already locked"
LOCK_WAIT = 3600                      # a drill's check or a prune holds restic's exclusive lock meanwhile
LOCK_POLL = 15
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def as_user(name: str, home: str) -> dict:
    """subprocess arguments that run a child as `name` with its own group only."""
    entry = pwd.getpwnam(name)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "env_home": home}


def _popen(words: list[str], who: dict, env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(words, user=who["user"], group=who["group"], extra_groups=who["extra_groups"],
                            env={**env, "HOME": who["env_home"]}, **kwargs)


def dump_env(dump: list[str]) -> dict:
    """libpq's variables for the service user's pg_dump, the password read from root's own file."""
    password = None
    with open(dump[0]) as handle:
        for line in handle:
            key, _, value = line.rstrip("\n").partition("=")
            if key == PASSWORD_KEY:
                password = value
    if password is None:
        raise KeyError(f"{PASSWORD_KEY} in {dump[0]}")
    return {**dict(word.split("=", 1) for word in dump[3:]), "PGPASSWORD": password}


def restic_env(replication_user: str) -> tuple[dict, str | None]:
    """restic's environment: this unit's (its password and keys), and with an SFTP target the key and host
    key systemd gave this unit (root's $CREDENTIALS_DIRECTORY) copied into a new 0700 folder of the
    replication user's, in this unit's private /tmp, which the service user's tar never enters; and that folder (None without one)."""
    env = {**os.environ, "PATH": SAFE_PATH}
    source = os.environ.get("CREDENTIALS_DIRECTORY")
    if not source:
        return env, None
    entry = pwd.getpwnam(replication_user)
    private = tempfile.mkdtemp(prefix="lsvm-credentials.")
    for name in sorted(os.listdir(source)):
        with open(os.path.join(source, name), "rb") as handle:
            content = handle.read()
        fd = os.open(os.path.join(private, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, content)
            os.fchown(fd, entry.pw_uid, entry.pw_gid)
        finally:
            os.close(fd)
    os.chown(private, entry.pw_uid, entry.pw_gid)
    return {**env, "CREDENTIALS_DIRECTORY": private}, private


def backup_once(service: dict, replication: dict, data_dir: str, restic: list[str], dump: list[str],
                env: dict) -> tuple[int, int, str, str]:
    """tar (after pg_dump, with PostgreSQL) | restic backup: (the maker's exit, restic's exit, restic's
    stdout, restic's stderr)."""
    clean = {"PATH": SAFE_PATH, "LC_ALL": "C"}
    if dump:
        maker = ["sh", "-c", DUMP_AND_TAR, "sh", dump[1], dump[2], data_dir]
        clean.update(dump_env(dump))
    else:
        maker = ["tar", "--ignore-failed-read", "--warning=no-file-changed", "-cf", "-", "--", *PARTS]
    tar = _popen(maker, service, clean, cwd=data_dir, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        backup = _popen([*restic, "backup", "--stdin", "--stdin-filename", FILES_NAME, "--tag", FILES_TAG, "--json"],
                        replication, env, stdin=tar.stdout,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        tar.stdout.close()
    out, err = backup.communicate()
    return tar.wait(), backup.returncode, out, err


def summary_of(out: str) -> dict:
    """restic backup --json's closing message (snapshot id, bytes added)."""
    for line in reversed(out.splitlines()):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("message_type") == "summary":
            return {key: message.get(key) for key in ("snapshot_id", "data_added", "total_bytes_processed")}
    return {}


# What ssh says when it will not or cannot log in to an SFTP target (restic's own last line only says the
# session did not start).
SSH_REASONS = ("Host key verification failed", "Permission denied", "Could not resolve hostname",
               "Connection refused", "Connection timed out", "No route to host")


def last_line(text: str) -> str:
    """The last line, after ssh's reason when ssh gave one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    why = [line for line in lines if any(reason in line for reason in SSH_REASONS)]
    last = lines[-1] if lines else ""
    return f"{why[-1]} ({last})" if why and why[-1] != last else last


def run(service_user: str, replication_user: str, data_dir: str, state_dir: str, restic: list[str],
        forget: list[str], dump: list[str] | None = None) -> dict:
    env, private = restic_env(replication_user)
    try:
        return _run(service_user, replication_user, data_dir, state_dir, restic, forget, dump, env)
    finally:
        if private:
            shutil.rmtree(private, ignore_errors=True)


def _run(service_user: str, replication_user: str, data_dir: str, state_dir: str, restic: list[str],
         forget: list[str], dump: list[str] | None, env: dict) -> dict:
    service, replication = as_user(service_user, data_dir), as_user(replication_user, state_dir)
    started = time.monotonic()
    deadline = started + LOCK_WAIT
    while True:
        tar_exit, restic_exit, out, err = backup_once(service, replication, data_dir, restic, dump or [], env)
        if restic_exit != 0 and LOCKED in err and time.monotonic() < deadline:
            time.sleep(LOCK_POLL)   # another restic (the drill's check) holds the lock: wait for it
            continue
        break
    result: dict = {"seconds": round(time.monotonic() - started, 1)}
    made = summary_of(out) if restic_exit == 0 else {}
    if tar_exit not in (0, 1):      # 1: a file changed while read (its next snapshot has it whole)
        what = "pg_dump or tar of the database, .env and media" if dump else "tar of .env and media"
        result["problem"] = f"{what} failed (exit {tar_exit})"
        if made.get("snapshot_id"):
            _popen([*restic, "forget", made["snapshot_id"]], replication, env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL).wait()
        return result
    if restic_exit != 0:
        result["problem"] = "restic backup failed: " + (last_line(err) or f"exit {restic_exit}")
        return result
    result.update(made)
    while True:
        pruned = _popen([*restic, *forget], replication, env,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        _, prune_err = pruned.communicate()
        if pruned.returncode != 0 and LOCKED in prune_err and time.monotonic() < deadline:
            time.sleep(LOCK_POLL)
            continue
        break
    if pruned.returncode != 0:
        result["problem"] = "restic forget --prune failed: " + (last_line(prune_err) or f"exit {pruned.returncode}")
    return result


def main(argv: list[str]) -> int:
    if argv.count("--") not in (2, 3):
        print("usage: offsite-files.py SERVICE_USER REPLICATION_USER DATA_DIR STATE_DIR -- RESTIC... -- FORGET... "
              "[-- PASSWORD_FILE PYTHON PGTOOL PGVAR=VALUE...]", file=sys.stderr)
        return 2
    first = argv.index("--")
    second = argv.index("--", first + 1)
    third = argv.index("--", second + 1) if argv.count("--") == 3 else len(argv)
    service_user, replication_user, data_dir, state_dir = argv[:first]
    try:
        result = run(service_user, replication_user, data_dir, state_dir, argv[first + 1:second],
                     argv[second + 1:third], argv[third + 1:])
    except (OSError, KeyError, subprocess.SubprocessError) as exc:
        result = {"problem": f"the snapshot could not run: {exc}"}
    result["ok"] = "problem" not in result
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
