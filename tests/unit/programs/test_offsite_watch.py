"""The offsite watch program (tasks/core/onserver/offsite_watch.py) run here for real, with stand-ins for
`systemctl`, `litestream ltx` and `apprise` on PATH that answer as told and record what they were asked."""

from __future__ import annotations

import json
import sys

import pytest

from tasks.core import offsite
from tasks.core.onserver import offsite_watch


class Server:
    """The units' states, the target's answer, and what apprise was asked to send."""

    def __init__(self, tmp_path, monkeypatch):
        self.tmp = tmp_path
        self.states = tmp_path / "states.json"
        self.sent = tmp_path / "sent.jsonl"
        self.set(units={}, target_ok=True, apprise_ok=True)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        self._script(bin_dir / "systemctl", f"""
states = json.load(open({str(self.states)!r}))
verb, unit = sys.argv[1:3]
state = states["units"].get(unit, "active")
if verb == "is-failed":
    print("failed" if state == "failed" else "active")
else:
    print("inactive" if state == "failed" else state)
""")
        self.litestream = self._script(tmp_path / "litestream", f"""
if not json.load(open({str(self.states)!r}))["target_ok"]:
    sys.stderr.write("error: NoCredentialProviders: no valid providers in chain\\n"); sys.exit(1)
print("[]")
""")
        # The venv's python, as the watch runs apprise: python -I -c APPRISE_CLI ARGS...
        self.apprise = self._script(tmp_path / "python", f"""
assert sys.argv[1:3] == ["-I", "-c"] and "apprise.cli" in sys.argv[3], sys.argv
if not json.load(open({str(self.states)!r}))["apprise_ok"]:
    sys.stderr.write("ERROR: Failed to send notification\\n"); sys.exit(1)
open({str(self.sent)!r}, "a").write(json.dumps(sys.argv[4:]) + "\\n")
""")
        monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
        monkeypatch.setenv("APPRISE_URLS", "json://127.0.0.1:1/hook")
        self.state_file = tmp_path / "watch.json"
        self.drill = tmp_path / "drill.json"

    def _script(self, path, body):
        path.write_text(f"#!{sys.executable}\nimport json, sys\n{body}")
        path.chmod(0o755)
        return path

    def set(self, **values):
        current = json.loads(self.states.read_text()) if self.states.exists() else {}
        self.states.write_text(json.dumps({**current, **values}))

    def look(self) -> tuple[int, dict]:
        status = offsite_watch.main([str(self.state_file), str(self.drill), str(self.apprise), str(self.litestream),
                                     "/etc/none.yml", "/db", "--", "ls-offsite.service", "--", "ls-files.timer",
                                     "ls-drill.timer", "--", "ls-files.service", "ls-drill.service"])
        return status, json.loads(self.state_file.read_text())

    def messages(self) -> list[list[str]]:
        return [json.loads(line) for line in self.sent.read_text().splitlines()] if self.sent.exists() else []


@pytest.fixture
def server(tmp_path, monkeypatch):
    return Server(tmp_path, monkeypatch)


def test_all_well_sends_nothing(server):
    status, state = server.look()
    assert status == 0 and state["problems"] == [] and server.messages() == []
    assert offsite.watch_text(state, True).startswith(f"looked {state['checked'][:10]}")


def test_a_problem_is_sent_once_and_its_end_once(server):
    server.set(units={"ls-offsite.service": "inactive", "ls-files.service": "failed"}, target_ok=False)
    status, state = server.look()
    assert status == 0
    assert state["problems"] == [
        "ls-offsite.service is inactive: offsite copies are not being kept",
        "the last run of ls-files.service failed (journalctl -u ls-files.service)",
        "the offsite target cannot be read: error: NoCredentialProviders: no valid providers in chain",
    ]
    [sent] = server.messages()
    assert sent[0] == "-t" and sent[1].endswith("offsite copies need attention")
    assert "- ls-offsite.service is inactive" in sent[3]
    assert server.look()[1]["problems"] == state["problems"] and len(server.messages()) == 1   # not again
    server.set(units={}, target_ok=True)
    status, state = server.look()
    assert state["problems"] == [] and len(server.messages()) == 2
    assert server.messages()[1][1].endswith("offsite copies are kept again")
    assert "Resolved:\n- ls-offsite.service is inactive" in server.messages()[1][3]


def test_a_failed_drill_and_a_stopped_timer_are_problems(server):
    server.drill.write_text(json.dumps({"ok": False, "problem": "litestream restore failed: checksum mismatch"}))
    server.set(units={"ls-drill.timer": "inactive"})
    _, state = server.look()
    assert state["problems"] == ["ls-drill.timer is inactive",
                                 "the last restore drill failed: litestream restore failed: checksum mismatch"]


def test_a_notification_that_fails_is_tried_again_at_the_next_look(server):
    server.set(units={"ls-offsite.service": "failed"}, apprise_ok=False)
    status, state = server.look()
    assert status == 1 and state["sent"]["ok"] is False and "notified" not in state
    assert "the last notification FAILED: ERROR: Failed to send notification" in offsite.watch_text(state, True)
    server.set(apprise_ok=True)
    status, state = server.look()
    assert status == 0 and state["sent"]["ok"] is True and len(server.messages()) == 1


def test_without_a_url_the_watch_records_and_sends_nothing(server, monkeypatch):
    monkeypatch.delenv("APPRISE_URLS")
    server.set(units={"ls-offsite.service": "inactive"})
    status, state = server.look()
    assert status == 0 and state["problems"] and "sent" not in state and server.messages() == []
    assert "notifies nobody" in offsite.watch_text(state, False)


@pytest.mark.parametrize("url, words", [
    ("", "$LSVM_NOTIFY_URL must be set"),
    ("not a url", "must be apprise URLs"),
    ("json://host/$(reboot)", "must be apprise URLs"),
])
def test_bad_notification_urls_are_refused_in_words(url, words):
    assert words in offsite.notify_url_problem(url)


def test_good_notification_urls_pass_and_land_in_one_line():
    assert offsite.notify_url_problem("json://10.0.0.5:8080/hook ntfys://topic") is None
    assert offsite.notify_file("json://h/x") == b"APPRISE_URLS=json://h/x\n"
