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

With uploads in a bucket (a part that starts with `bucket`: the root-only file with the bucket's keys,
Label Studio's python, the toolkit's media-copy.py and the copier's `list` words), the service user also
lists the bucket, every object with its sha256 (the keys on its stdin from root's file, as Label Studio
itself gets them from systemd), into media-bucket.json beside them: what a restore checks the bucket
still holds. The bytes stay in the bucket.

A snapshot whose maker failed is forgotten at once (never the newest one a restore would take).

    offsite-files.py SERVICE_USER REPLICATION_USER DATA_DIR STATE_DIR -- RESTIC... -- FORGET...
                     [-- PASSWORD_FILE PYTHON PGTOOL PGVAR=VALUE...]
                     [-- bucket KEYS_FILE PYTHON COPIER list MEDIA_DIR STATE BUCKET PREFIX ENDPOINT REGION]
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
LISTING = "media-bucket.json"         # the bucket's objects; a snapshot here keeps it by this name too (bucket_media)
BUCKET_PART = "bucket"
# The service user's side: PostgreSQL's dump (`dump PYTHON PGTOOL`) and the bucket's listing (`list PYTHON
# COPIER WORDS...`, the keys on stdin) into a private temp folder, then one tar of both places. Either
# one failing is exit 3 (tar's 1 only says a file changed while read).
MAKER = ('set -e; d=$1; shift; w=$(mktemp -d /var/tmp/lsvm-dump.XXXXXX); trap \'rm -rf "$w"\' EXIT; names=; '
         'if [ "${1-}" = dump ]; then '
         f'"$2" -I "$3" dump "$w/{DUMP_PARTS[0]}" > "$w/{DUMP_PARTS[1]}" || exit 3; '
         f'names="{DUMP_PARTS[0]} {DUMP_PARTS[1]}"; shift 3; fi; '
         'if [ "${1-}" = list ]; then shift; p=$1; shift; '
         f'"$p" -I "$@" > "$w/{LISTING}" || exit 3; names="$names {LISTING}"; fi; '
         'tar --ignore-failed-read --warning=no-file-changed -cf - -C "$d" .env media ${names:+-C "$w"} $names')
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


def maker_words(data_dir: str, dump: list[str], bucket: list[str]) -> list[str]:
    """The service user's shell (MAKER) with its words: the data dir, then `dump` and `list` parts."""
    words = ["sh", "-c", MAKER, "sh", data_dir]
    if dump:
        words += ["dump", dump[1], dump[2]]
    if bucket:
        words += ["list", *bucket[1:]]
    return words


def backup_once(service: dict, replication: dict, data_dir: str, restic: list[str], dump: list[str],
                bucket: list[str], env: dict) -> tuple[int, int, str, str]:
    """tar (after pg_dump with PostgreSQL, and the bucket's listing) | restic backup: (the maker's exit,
    restic's exit, restic's stdout, restic's stderr)."""
    clean = {"PATH": SAFE_PATH, "LC_ALL": "C"}
    if dump:
        clean.update(dump_env(dump))
    keys = open(bucket[0], "rb") if bucket else subprocess.DEVNULL   # root's file: its keys, on the copier's stdin
    try:
        tar = _popen(maker_words(data_dir, dump, bucket), service, clean, cwd=data_dir, stdout=subprocess.PIPE,
                     stdin=keys)
    finally:
        if bucket:
            keys.close()
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
        forget: list[str], dump: list[str] | None = None, bucket: list[str] | None = None) -> dict:
    env, private = restic_env(replication_user)
    try:
        return _run(service_user, replication_user, data_dir, state_dir, restic, forget, dump, bucket, env)
    finally:
        if private:
            shutil.rmtree(private, ignore_errors=True)


def _run(service_user: str, replication_user: str, data_dir: str, state_dir: str, restic: list[str],
         forget: list[str], dump: list[str] | None, bucket: list[str] | None, env: dict) -> dict:
    service, replication = as_user(service_user, data_dir), as_user(replication_user, state_dir)
    started = time.monotonic()
    deadline = started + LOCK_WAIT
    while True:
        tar_exit, restic_exit, out, err = backup_once(service, replication, data_dir, restic, dump or [], bucket or [], env)
        if restic_exit != 0 and LOCKED in err and time.monotonic() < deadline:
            time.sleep(LOCK_POLL)   # another restic (the drill's check) holds the lock: wait for it
            continue
        break
    result: dict = {"seconds": round(time.monotonic() - started, 1)}
    made = summary_of(out) if restic_exit == 0 else {}
    if tar_exit not in (0, 1):      # 1: a file changed while read (its next snapshot has it whole)
        what = " or ".join([*(["pg_dump of the database"] if dump else []),
                            *(["the listing of the bucket"] if bucket else []), "tar of .env and media"])
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


def split_parts(argv: list[str]) -> tuple[list[str], list[str], list[str], list[str], list[str]] | None:
    """(the four users and folders, restic's words, forget's, the PostgreSQL part, the bucket part);
    None when argv has no such shape."""
    marks = [i for i, word in enumerate(argv) if word == "--"]
    if not 2 <= len(marks) <= 4 or marks[0] != 4:
        return None
    parts = [argv[a + 1:b] for a, b in zip(marks, marks[1:] + [len(argv)])]
    dump = bucket = []
    for part in parts[2:]:
        if part[:1] == [BUCKET_PART] and not bucket and len(part) == 11 and part[4] == "list":
            bucket = part[1:]
        elif part and part[0] != BUCKET_PART and not dump:
            dump = part
        else:
            return None
    return argv[:4], parts[0], parts[1], dump, bucket


def main(argv: list[str]) -> int:
    split = split_parts(argv)
    if split is None:
        print("usage: offsite-files.py SERVICE_USER REPLICATION_USER DATA_DIR STATE_DIR -- RESTIC... -- FORGET... "
              "[-- PASSWORD_FILE PYTHON PGTOOL PGVAR=VALUE...] "
              "[-- bucket KEYS_FILE PYTHON COPIER list MEDIA_DIR STATE BUCKET PREFIX ENDPOINT REGION]", file=sys.stderr)
        return 2
    (service_user, replication_user, data_dir, state_dir), restic, forget, dump, bucket = split
    try:
        result = run(service_user, replication_user, data_dir, state_dir, restic, forget, dump, bucket)
    except (OSError, KeyError, subprocess.SubprocessError) as exc:
        result = {"problem": f"the snapshot could not run: {exc}"}
    result["ok"] = "problem" not in result
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
