"""One app VM at a time: drained at the balancer before the body, put back after it once HAProxy's checks
see it up; left drained when the body fails or when its requests do not finish; a refusal of HAProxy's
is one line."""

from __future__ import annotations

import pytest

from tasks.core.errors import RemoteError
from tasks.core.rolling import Balancer, taken_out
from tests.unit.fakehost import FakeHost, fail, ok


def balancer(host: FakeHost) -> Balancer:
    return Balancer(host)


def said(host: FakeHost) -> list[str]:
    """What went to HAProxy's runtime API, and the waits, in order."""
    found = []
    for ran in host.log:
        if "state drain" in ran.command:
            found.append("drain")
        elif "state ready" in ran.command:
            found.append("ready")
        elif "scur" in ran.command:
            found.append("wait drained")
        elif "status" in ran.command and "UP" in ran.command:
            found.append("wait up")
        else:
            found.append(ran.command)
    return found


def test_the_body_runs_drained_and_the_vm_goes_back_once_seen_up():
    host = FakeHost()
    with taken_out(balancer(host), "app1", 300):
        host.run("restart it", sudo=True)
    assert said(host) == ["drain", "wait drained", "restart it", "ready", "wait up"]
    assert all(ran.sudo for ran in host.log)


def test_a_failed_body_leaves_the_vm_drained():
    host = FakeHost()
    with pytest.raises(RemoteError):
        with taken_out(balancer(host), "app1", 300):
            raise RemoteError("the health gate failed")
    assert said(host) == ["drain", "wait drained"]


def test_requests_that_do_not_finish_stop_before_anything_changes():
    host = FakeHost().answer(r"scur", fail(stdout="3\n"))
    with pytest.raises(RemoteError, match="app1 still has 3 open request"):
        with taken_out(balancer(host), "app1", 5):
            host.run("restart it", sudo=True)
    assert "restart it" not in said(host)


def test_haproxy_refusing_a_command_is_one_line():
    host = FakeHost().answer(r"state drain", ok("No such server.\n"))
    with pytest.raises(RemoteError, match="refused `drain` for app9: No such server."):
        balancer(host).drain("app9", 5)


def test_a_vm_the_checks_do_not_see_up_is_an_error_naming_its_state():
    host = FakeHost().answer(r"UP", fail(stdout="DOWN\n"))
    with pytest.raises(RemoteError, match=r"does not see app1 up after 60s \(its state: DOWN;"):
        balancer(host).ready("app1")


def test_any_up_names_the_vm_the_checks_see_up_and_none_when_no_vm_comes_up():
    host = FakeHost().answer(r"echo app2", ok("app2\n"))
    assert balancer(host).any_up(["app2"]) == "app2"
    assert balancer(FakeHost().answer(r"UP", fail())).any_up(["app2", "app3"]) is None
    assert balancer(FakeHost()).any_up([]) is None


def test_without_a_serving_balancer_the_body_just_runs():
    host = FakeHost()
    with taken_out(None, "app1", 300):
        host.run("first provision", sudo=True)
    assert said(host) == ["first provision"]
