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
    file order, so each release's VMs are made once and the two releases run side by side; the other
    tests go wherever there is room, a module at a time (its module fixtures, such as the SageMaker
    tests' venv, are made once)."""
    from xdist.scheduler import LoadScopeScheduling

    suite = re.compile(r"\[(" + "|".join(map(re.escape, SUITES)) + r")\b")

    class BySuite(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            match = suite.search(nodeid)
            return match.group(1) if match else nodeid.split("::", 1)[0]

    return BySuite(config, log)


def pytest_configure(config):
    config.addinivalue_line("markers", "one_release(suite): prove this on one Debian release only (CI time; "
                                       "the README says which and why)")


def pytest_collection_modifyitems(config, items):
    """Tests marked one_release(suite) run in that suite's parametrization only: the others are
    deselected (not skipped), so each Debian release's worker carries a share of the slowest tests.
    When a run does not include that suite (LSVM_TEST_SUITES narrowed it), they run on what it has."""

    def suite_of(item):
        callspec = getattr(item, "callspec", None)
        return callspec.params.get("suite") if callspec else None

    present = {suite_of(item) for item in items}
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("one_release")
        suite = suite_of(item)
        if marker and suite is not None and marker.args[0] in present and suite != marker.args[0]:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# ------------------------------------------------------------------------------------------------
# Where CI's time goes: each xdist worker carries one Debian release, so the run lasts as long as its
# busiest worker. The summary adds every phase's duration per worker and per module, so the figure to cut
# shows in the tail of every CI log.

_SPENT: dict[tuple[str, str], float] = {}


def pytest_runtest_logreport(report):
    worker = getattr(getattr(report, "node", None), "gateway", None)
    worker_id = getattr(worker, "id", None) or "main"
    module = report.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    _SPENT[(worker_id, module)] = _SPENT.get((worker_id, module), 0.0) + (report.duration or 0.0)


def pytest_terminal_summary(terminalreporter):
    if not _SPENT:
        return
    workers: dict[str, list[tuple[float, str]]] = {}
    for (worker, module), seconds in _SPENT.items():
        workers.setdefault(worker, []).append((seconds, module))
    terminalreporter.section("time per worker and module")
    for worker, modules in sorted(workers.items()):
        modules.sort(reverse=True)
        top = ", ".join(f"{module.removesuffix('.py')} {seconds:.0f}" for seconds, module in modules if seconds >= 30)
        terminalreporter.write_line(f"{worker}: {sum(s for s, _ in modules):.0f} s ({top or 'no module over 30 s'})")
