"""The task edge: expected failures end as one line on stderr and an exit code; no -H, no terminal and
bad passwords are said in words."""

from __future__ import annotations

import io

import pytest
from invoke import Context, Exit

from tasks.core import edge, ui
from tasks.core.defaults import MIN_PASSWORD_LENGTH
from tasks.core.errors import LockedError, SnapshotError, ToolkitError, UsageError
from tests.unit.samples import PROFILE


def body_raising(failure):
    @edge.task_edge
    def body(c, *args, **kwargs):
        """A task body."""
        raise failure

    return body


@pytest.mark.parametrize("failure, code", [(SnapshotError("snapshot x is damaged"), 6),
                                           (LockedError("vm is busy: backup by bob"), 7),
                                           (ToolkitError("something expected"), 1)])
def test_an_expected_failure_is_one_line_on_stderr_and_its_exit_code(capsys, failure, code):
    with pytest.raises(Exit) as caught:
        body_raising(failure)(Context())
    assert caught.value.code == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"error: {failure.message}\n")


def test_the_hint_follows_the_message(capsys):
    with pytest.raises(Exit) as caught:
        body_raising(UsageError("no -H", hint="name a host"))(Context())
    assert caught.value.code == 2
    assert capsys.readouterr().err == "error: no -H (name a host)\n"


def test_ctrl_c_exits_130_without_a_traceback(capsys):
    with pytest.raises(Exit) as caught:
        body_raising(KeyboardInterrupt())(Context())
    assert caught.value.code == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_a_bug_is_not_hidden():
    with pytest.raises(ZeroDivisionError):
        body_raising(ZeroDivisionError())(Context())


def test_the_wrapper_keeps_the_body_and_its_result():
    @edge.task_edge
    def body(c, value, *, twice=False):
        """Doubles."""
        return value * (2 if twice else 1)

    assert body(Context(), 21, twice=True) == 42
    assert body.__doc__ == "Doubles." and body.__name__ == "body"


def test_a_server_task_without_h_is_a_usage_error():
    with pytest.raises(UsageError, match="-H"):
        edge.open_host(Context())
    assert edge.host_alias(Context()) is None
    edge.local_only(Context(), "studio tasks")  # nothing to refuse without -H


# ------------------------------------------------------------------------------------------------
# Asking


@pytest.fixture
def no_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO())
    monkeypatch.delenv("LABEL_STUDIO_PASSWORD", raising=False)


@pytest.fixture
def terminal(monkeypatch):
    """A terminal whose user types the given answers, in order."""
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.delenv("LABEL_STUDIO_PASSWORD", raising=False)

    def typing(*answers):
        replies = iter(answers)
        monkeypatch.setattr(ui.err, "input", lambda prompt, password=False: next(replies))

    return typing


def test_confirm_with_yes_asks_nothing(no_terminal):
    edge.confirm("replace the data?", yes=True)


def test_confirm_without_a_terminal_says_to_add_yes(no_terminal):
    with pytest.raises(UsageError, match="no terminal to ask: replace the data\\? — add --yes"):
        edge.confirm("replace the data?", yes=False)


@pytest.mark.parametrize("answer, goes_on", [("y", True), ("Yes", True), ("n", False), ("", False)])
def test_confirm_on_a_terminal_goes_on_only_after_a_yes(terminal, answer, goes_on):
    terminal(answer)
    if goes_on:
        edge.confirm("replace?", yes=False)
    else:
        with pytest.raises(UsageError, match="cancelled; nothing was changed"):
            edge.confirm("replace?", yes=False)


def test_the_password_comes_from_the_environment(no_terminal, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_PASSWORD", "x" * MIN_PASSWORD_LENGTH)
    assert edge.ask_new_password("a@b.org") == "x" * MIN_PASSWORD_LENGTH


def test_a_short_password_is_refused(no_terminal, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_PASSWORD", "x" * (MIN_PASSWORD_LENGTH - 1))
    with pytest.raises(UsageError, match=f"at least {MIN_PASSWORD_LENGTH} characters"):
        edge.ask_new_password("a@b.org")


def test_no_password_and_no_terminal_names_the_variable(no_terminal):
    with pytest.raises(UsageError, match="LABEL_STUDIO_PASSWORD"):
        edge.ask_new_password("a@b.org")


def test_a_typed_password_must_be_typed_twice_the_same(terminal):
    terminal("long-password-1", "long-password-2")
    with pytest.raises(UsageError, match="the two passwords differ"):
        edge.ask_new_password("a@b.org")
    terminal("long-password-1", "long-password-1")
    assert edge.ask_new_password("a@b.org") == "long-password-1"


def test_the_admin_email_comes_from_the_profile_else_the_environment(monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_USERNAME", "env@example.org")
    assert edge.admin_email(PROFILE) == "env@example.org"
    monkeypatch.setenv("LABEL_STUDIO_USERNAME", "not an email")
    with pytest.raises(UsageError, match="not an email address"):
        edge.admin_email(PROFILE)
    monkeypatch.delenv("LABEL_STUDIO_USERNAME")
    assert edge.admin_email(PROFILE) is None
