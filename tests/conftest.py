"""Shared pytest set-up. Under CI=true a skipped test is a failure: CI must prove everything on the VM."""

from __future__ import annotations

import os
import re

import pytest

from dev.testvm.image import SUITES


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _ci() and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"


def pytest_xdist_make_scheduler(config, log):
    """Under `pytest -n 2` (make test) every test of one Debian release goes to the same worker, in
    file order, so each release's VMs are made once and the two releases run side by side; any other
    test goes wherever there is room."""
    from xdist.scheduler import LoadScopeScheduling

    suite = re.compile(r"\[(" + "|".join(map(re.escape, SUITES)) + r")\b")

    class BySuite(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            match = suite.search(nodeid)
            return match.group(1) if match else nodeid

    return BySuite(config, log)
