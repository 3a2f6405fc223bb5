"""The SECRET_KEY scripts, run by the real `sh` and `awk` on real files, judged by django-environ (the
reader Label Studio 1.23 uses): a key starting with `$` reads back empty there, so Label Studio makes a
new one at its next start and every session and API token of the first run dies."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePosixPath

import environ
import pytest

from tasks.core.commands import secret_key


def read_like_label_studio(env_file: Path) -> str:
    """What Label Studio's generate_secret_key_if_missing finds (before it would make a new one)."""
    saved = os.environ.pop("SECRET_KEY", None)
    try:
        environ.Env.read_env(str(env_file))
        return environ.Env().str("SECRET_KEY", "")
    finally:
        os.environ.pop("SECRET_KEY", None)
        if saved is not None:
            os.environ["SECRET_KEY"] = saved


def sh(script: str) -> str:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.strip()


def state_of(env_file: Path) -> str:
    return sh(secret_key.state(PurePosixPath(env_file)))


def ensure(env_file: Path) -> None:
    sh(secret_key.ensure(PurePosixPath(env_file)))


BROKEN = "$x9l(2=)^k+w#n0c3p!r7s_v-e@z1m8&q5a6t*u4o%b)y(fgh"
GOOD = "k2w9)x#n@0c3p!r7s_v-e$z1m8&q5a6t*u4o%b)y(fghjl(2="


@pytest.mark.parametrize("text,expected", [
    (f"\nSECRET_KEY={GOOD}\n", "ok"),
    (f"OTHER=1\nexport SECRET_KEY='{GOOD}'\n", "ok"),
    (f"\nSECRET_KEY={BROKEN}\n", "unreadable"),
    (f"SECRET_KEY='{BROKEN}'\n", "unreadable"),
    ("SECRET_KEY=\n", "unreadable"),
    (f"\nSECRET_KEY={BROKEN}\n\nSECRET_KEY={GOOD}\n", "ok"),  # the last line wins
    (f"\nSECRET_KEY={GOOD}\n\nSECRET_KEY={BROKEN}\n", "unreadable"),
    ("OTHER=1\n", "absent"),
    ("", "absent"),
])
def test_the_state_agrees_with_django_environ(tmp_path, text, expected):
    env_file = tmp_path / ".env"
    env_file.write_text(text)
    assert state_of(env_file) == expected
    assert secret_key.state_of_text(text) == expected
    assert (read_like_label_studio(env_file) != "") == (expected == "ok")


def test_a_missing_file_is_absent_and_gets_a_new_readable_key_in_a_0600_file(tmp_path):
    env_file = tmp_path / ".env"
    assert state_of(env_file) == "absent"
    ensure(env_file)
    key = read_like_label_studio(env_file)
    assert len(key) == 64 and "$" not in key
    assert env_file.read_text() == f"SECRET_KEY={key}\n"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.lsvm-new"))
    ensure(env_file)  # a readable key is never replaced
    assert read_like_label_studio(env_file) == key
    second = tmp_path / "other.env"
    ensure(second)
    assert read_like_label_studio(second) != key


def test_an_unreadable_key_is_replaced_by_a_new_one_and_other_lines_stay(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(f"DEBUG=0\n\nSECRET_KEY={GOOD}\n\nSECRET_KEY={BROKEN}\nTAIL=1")
    env_file.chmod(0o644)
    ensure(env_file)
    key = read_like_label_studio(env_file)
    assert key not in ("", GOOD, BROKEN)
    assert env_file.read_text() == f"DEBUG=0\n\n\nTAIL=1\nSECRET_KEY={key}\n"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert state_of(env_file) == "ok"


def test_a_file_label_studio_already_repaired_itself_is_left_alone(tmp_path):
    env_file = tmp_path / ".env"
    text = f"\nSECRET_KEY={BROKEN}\n\nSECRET_KEY={GOOD}\n"
    env_file.write_text(text)
    ensure(env_file)
    assert env_file.read_text() == text


def test_a_broken_key_alone_gets_a_new_one(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(f"\nSECRET_KEY={BROKEN}\n")
    ensure(env_file)
    key = read_like_label_studio(env_file)
    assert key and BROKEN not in env_file.read_text()


def test_the_scripts_are_posix_and_keep_the_key_out_of_argv():
    script = secret_key.ensure(PurePosixPath("/srv/.-data/y z/.env"))
    subprocess.run(["sh", "-n", "-c", script], check=True)
    # The new key only passes through a pipe and printf, a builtin of sh and bash.
    assert 'printf \'SECRET_KEY=%s\\n\' "$(head -c 48 /dev/urandom' in script


def test_a_site_key_is_read_as_label_studio_reads_it_and_given_to_another_vm(tmp_path):
    first, second = tmp_path / "first.env", tmp_path / "second.env"
    first.write_text("OTHER=1\nSECRET_KEY='an-old-key-that-is-replaced-later-xxxxxxxx'\nSECRET_KEY=\"the-key-0123456789-abcdefghijklmnop\"\n")
    second.write_text("KEEP=yes\nSECRET_KEY=its-own-key-0123456789-abcdefghijklmn\n")
    key = sh(secret_key.value(PurePosixPath(first)))
    assert key == read_like_label_studio(first) == "the-key-0123456789-abcdefghijklmnop"
    digest = sh(secret_key.value_digest(PurePosixPath(first)))
    assert digest == __import__("hashlib").sha256(key.encode()).hexdigest()
    subprocess.run(["sh", "-c", secret_key.install_from_stdin(PurePosixPath(second))], input=key + "\n", text=True,
                   check=True)
    assert read_like_label_studio(second) == key
    assert second.read_text() == f"KEEP=yes\nSECRET_KEY={key}\n"
    assert oct(second.stat().st_mode & 0o777) == "0o600"
    assert sh(secret_key.value(PurePosixPath(tmp_path / "missing.env"))) == ""


@pytest.mark.parametrize("key, problem", [
    ("a" * 64, None),
    ("short", "shorter"),
    ("$" + "a" * 40, "changes"),
    ("a" * 40 + "'", "changes"),
    (" " + "a" * 40, "changes"),
])
def test_a_site_key_label_studio_would_change_is_refused(key, problem):
    found = secret_key.key_problem(key)
    assert (found is None) if problem is None else (problem in found)
