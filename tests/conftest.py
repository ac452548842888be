"""A skipped parity test proves nothing: report it as a failure. Platform-only tests are selected
by platform (``linux``, ``x86_64`` markers), never skipped."""

import platform
import sys

import pytest

_PLATFORM_MARKERS = {
    "linux": sys.platform.startswith("linux"),
    "x86_64": platform.machine() in ("x86_64", "AMD64"),
}


def pytest_collection_modifyitems(config, items):
    selected, deselected = [], []
    for item in items:
        wrong = [m for m, here in _PLATFORM_MARKERS.items() if not here and item.get_closest_marker(m)]
        (deselected if wrong else selected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # An expected failure (xfail) is reported as skipped too; it is not a skip.
    if report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("parity") is not None:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"parity test was skipped ({reason}); parity tests must run"
