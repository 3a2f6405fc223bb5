"""Label Studio's SECRET_KEY, which signs sessions and API tokens, lives in `<data dir>/.env`.

Label Studio reads that file with django-environ, which takes a value starting with `$` for a
reference to another variable. When the key Label Studio generates at its first start begins with `$`
(one in 50: its alphabet has `$`), it reads back empty at the next start, so Label Studio makes and
appends another: every session and API token made during the first run dies at the first restart
(the flaky test that found this made its token right after provision). So provision (and the Studio
launcher) write the key before Label Studio first starts, from an alphabet without `$`, and replace
a key Label Studio cannot read back (it would make a new one at its next start anyway).

The scripts run as the service user (or the Studio user); the key only travels through a pipe and a
shell builtin, never argv."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from tasks.core.commands import as_service_user, q
from tasks.core.profile import Profile

# How django-environ reads a line (`read_env`: optional `export `, one pair of quotes stripped; the
# last line of a key wins) and what it makes of the value (`$...` is a proxy, empty when unset).
_KEY_LINE = "/^(export )?SECRET_KEY=/"
_READABLE = ('v = $0; sub(/^(export )?SECRET_KEY=/, "", v); '
             "if (v ~ /^'.*'$/ || v ~ /^\".*\"$/) v = substr(v, 2, length(v) - 2); "
             'last = (v != "" && substr(v, 1, 1) != "$") ? "ok" : "unreadable"')
_STATE = f"{_KEY_LINE} {{ {_READABLE} }} END {{ print (last == \"\" ? \"absent\" : last) }}"
_WITHOUT_KEY = f"{_KEY_LINE} {{ next }} {{ print }}"
# 48 random bytes as 64 URL-safe base64 characters: no `$`, no quote, no `#`.
NEW_KEY = "head -c 48 /dev/urandom | base64 -w0 | tr '+/' '-_'"

OK, UNREADABLE, ABSENT = "ok", "unreadable", "absent"


def state(env_file: PurePosixPath) -> str:
    """Prints `ok`, `unreadable` (Label Studio reads the key as empty) or `absent` (no file or no key)."""
    return f"if [ -f {q(env_file)} ]; then awk {q(_STATE)} {q(env_file)}; else echo {ABSENT}; fi"


def state_of_text(text: str) -> str:
    """What `state` prints, for a file read here (a snapshot's .env)."""
    last = ABSENT
    for line in text.splitlines():
        match = re.match(r"(?:export )?SECRET_KEY=(.*)\Z", line)
        if match:
            value = match.group(1)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            last = OK if value and not value.startswith("$") else UNREADABLE
    return last


def ensure(env_file: PurePosixPath) -> str:
    """A key Label Studio reads back, in a 0600 file: nothing done when there is one; otherwise the
    file rewritten beside (other lines kept, a new key) and renamed in."""
    staged = q(str(env_file) + ".lsvm-new")
    return (f"if [ \"$({state(env_file)})\" != {OK} ]; then "
            f"(umask 077; if [ -f {q(env_file)} ]; then awk {q(_WITHOUT_KEY)} {q(env_file)}; fi > {staged}) && "
            f"printf 'SECRET_KEY=%s\\n' \"$({NEW_KEY})\" >> {staged} && "
            f"chmod 0600 {staged} && mv -f {staged} {q(env_file)}; fi")


def on_server(profile: Profile, script) -> str:
    """`script` (state, ensure, value, value_digest, install_from_stdin) run on the server's .env as the
    service user (the file is its own)."""
    return as_service_user(profile, "sh", "-c", script(profile.remote.secret_env))


# A site's app VMs share one key (sessions and API tokens are signed with it): the first VM's is read
# once and given to the others, on the SSH channel both ways.
_VALUE = (f"{_KEY_LINE} {{ v = $0; sub(/^(export )?SECRET_KEY=/, \"\", v); "
          "if (v ~ /^'.*'$/ || v ~ /^\".*\"$/) v = substr(v, 2, length(v) - 2); last = v } "
          "END { printf \"%s\", last }")


def value(env_file: PurePosixPath) -> str:
    """Prints the key as Label Studio reads it (nothing when there is none), without a newline."""
    return f"if [ -f {q(env_file)} ]; then awk {q(_VALUE)} {q(env_file)}; fi"


def value_digest(env_file: PurePosixPath) -> str:
    """Prints the sha256 of the key as Label Studio reads it: what provision compares, never the key."""
    return f"{value(env_file)} | sha256sum | cut -d' ' -f1"


def install_from_stdin(env_file: PurePosixPath) -> str:
    """The key on stdin (one line) replaces the file's: other lines kept, written beside and renamed in."""
    staged = q(str(env_file) + ".lsvm-new")
    return (f"(umask 077; if [ -f {q(env_file)} ]; then awk {q(_WITHOUT_KEY)} {q(env_file)}; fi > {staged}) && "
            f"IFS= read -r key && printf 'SECRET_KEY=%s\\n' \"$key\" >> {staged} && "
            f"chmod 0600 {staged} && mv -f {staged} {q(env_file)}")


def key_problem(key: str) -> str | None:
    """A key Label Studio reads back as it is (no `$` start, no quote, no newline, long enough)."""
    if len(key) < 32:
        return "is shorter than 32 characters"
    if key.startswith("$") or any(c in key for c in "'\"\n\r\\") or key != key.strip():
        return "holds characters Label Studio's .env reader changes ($ first, quotes, backslash, spaces at an end)"
    return None
