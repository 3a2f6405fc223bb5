"""Releases side by side: the plan for the pinned release, the refusal of an older one, and the link
scripts of upgrade/rollback run for real in a temp folder (the same shell the server runs)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from tasks.core.commands import provision as provision_commands
from tasks.core.commands import upgrade
from tasks.core.profile import parse_profile
from tasks.core.provision import steps
from tasks.core.provision.plan import Run
from tasks.core.releases import release_label
from tests.unit.samples import PROFILE, profile_on_this_machine


def links(app: Path) -> tuple[str, str]:
    read = lambda name: os.readlink(app / name) if (app / name).is_symlink() else ""
    return read("current"), read("previous")


def run(script: str, **env: str) -> None:
    subprocess.run(["sh", "-c", script], check=True, env={**os.environ, **env})


@pytest.fixture
def app(tmp_path):
    app = tmp_path / "app"
    for version in ("1.0", "2.0", "3.0"):
        (app / "releases" / version).mkdir(parents=True)
    os.symlink("releases/1.0", app / "current")
    return app


def profile_at(app: Path):
    return profile_on_this_machine(app_dir=app, data_dir=app.parent / "data", host="")


def test_upgrade_switches_both_links_and_undo_puts_them_back(app):
    profile = profile_at(app)
    old = {"OLD_CURRENT": "releases/1.0", "OLD_PREVIOUS": ""}
    steps_ = upgrade.upgrade_steps(profile, "1.0", "2.0")
    run(steps_["after_swap"], **old)
    assert links(app) == ("releases/2.0", "releases/1.0")
    run(steps_["undo_swap"], **old)
    assert links(app)[0] == "releases/1.0"


def test_rollback_swaps_current_and_previous(app):
    profile = profile_at(app)
    run(provision_commands.switch_release(profile, "releases/2.0"))
    assert links(app) == ("releases/2.0", "releases/1.0")
    run(upgrade.rollback_steps(profile, "ab" * 32)["after_swap"], OLD_CURRENT="releases/2.0", OLD_PREVIOUS="releases/1.0")
    assert links(app) == ("releases/1.0", "releases/2.0")


def test_prune_keeps_only_the_current_and_the_previous_release(app):
    profile = profile_at(app)
    run(provision_commands.switch_release(profile, "releases/3.0"))
    out = subprocess.run(["sh", "-c", upgrade.prune_releases(profile)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2.0"]
    assert sorted(p.name for p in (app / "releases").iterdir()) == ["1.0", "3.0"]


def test_a_provisioned_host_plans_nothing_for_its_release(provisioned):
    [release, app_server] = steps.label_studio(provisioned, PROFILE)
    assert not release.changed and not app_server.changed and "gunicorn 23.0.0" in app_server.what


def test_a_release_built_before_gunicorn_gets_it_and_a_restart(provisioned):
    older = dataclasses.replace(provisioned, app_server_version=None)
    [release, app_server] = steps.label_studio(older, PROFILE)
    assert not release.changed and app_server.changed and app_server.notifies == {"restart"}
    assert "pip install" in app_server.action.script and "gunicorn==23.0.0" in app_server.action.script
    assert str(PROFILE.remote.venv_python) in app_server.action.script


def test_the_previous_release_gets_gunicorn_too_so_that_rollback_can_start_it(provisioned):
    upgraded = dataclasses.replace(provisioned, previous_release="1.22.0", previous_app_server_version=None)
    [release, current, previous] = steps.label_studio(upgraded, PROFILE)
    assert not current.changed and previous.changed and not previous.notifies
    assert f"{PROFILE.remote.previous}/bin/python -m pip install" in previous.action.script


def test_the_single_venv_of_earlier_versions_is_taken_over_without_a_reinstall(provisioned):
    legacy = dataclasses.replace(provisioned, current_release=None, releases=(), venv_exists=False,
                                 label_studio_version=None, legacy_version=PROFILE.label_studio.version)
    [change, app_server] = steps.label_studio(legacy, PROFILE)
    assert change.changed and "without a reinstall" in change.plan
    assert isinstance(change.action, Run) and "pip" not in change.action.script and "venv" in change.action.script
    assert app_server.changed and "gunicorn" in app_server.action.script  # a hand-made venv has none


def test_a_new_pin_builds_beside_the_running_release_then_switches(provisioned):
    bumped = dataclasses.replace(PROFILE, label_studio=dataclasses.replace(PROFILE.label_studio, version="9.0.0"))
    build, switch = steps.label_studio(provisioned, bumped)
    assert "releases/9.0.0" in build.action.script and "pre-upgrade" in build.action.script
    assert "releases/9.0.0" in switch.action.script and steps.RESTART in switch.notifies


def test_an_older_pin_is_refused(provisioned):
    older = dataclasses.replace(PROFILE, label_studio=dataclasses.replace(PROFILE.label_studio, version="1.0.0"))
    assert "older than the installed" in steps.version_problem(provisioned, older)
    assert steps.version_problem(provisioned, PROFILE) is None


def test_release_labels_fit_snapshot_names():
    assert release_label("1.22.0") == "1-22-0"
    assert release_label("1!2.0.0rc1+local") == "1-2-0-0rc1-local"


def test_the_release_list_comes_from_the_profiles_index_newest_first(tmp_path):
    """A package index on loopback answering the PEP 691 JSON API (as pypi.org and devpi do)."""
    import http.server
    import json
    import threading

    from tasks.core.releases import pypi_versions

    body = json.dumps({"meta": {"api-version": "1.1"}, "name": "label-studio",
                       "versions": ["1.22.0", "1.23.2", "1.24.0rc1", "1.9.0"],
                       "files": [{"filename": "label_studio-1.23.1-py3-none-any.whl"}]}).encode()

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            assert self.path == "/simple/label-studio/"
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        profile = parse_profile(f"pip:\n  index_url: http://127.0.0.1:{server.server_port}/simple/\n")
        assert pypi_versions(profile) == ["1.23.2", "1.23.1", "1.22.0", "1.9.0"]  # no pre-releases
    finally:
        server.shutdown()
