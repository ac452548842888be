"""A skipped parity test proves nothing: report it as a failure. Platform-only tests are selected
by platform (``linux``, ``x86_64`` markers), never skipped."""

import platform
import signal
import sys
from pathlib import Path

import pytest

# The benchmarks (benchmarks/, beside the package) are importable by the tests of their parts; the
# source tree goes after the installed packages, so dpt_mlx stays the installed one.
sys.path.append(str(Path(__file__).resolve().parents[1]))

_PLATFORM_MARKERS = {
    "linux": sys.platform.startswith("linux"),
    "x86_64": platform.machine() in ("x86_64", "AMD64"),
}


def pytest_configure(config):
    # A suite started in the background by a shell without job control inherits SIGINT ignored, and
    # so would every command a test starts. The interruption tests send SIGINT: give this process its
    # usual Ctrl-C back (a Python handler becomes the default disposition in the children it execs).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


# ----------------------------------------------------------------------------------------------
# Shared tiny models and checkpoints (the builders are in helpers.py and model_configs.py)


@pytest.fixture(scope="session")
def make_tiny_dpt():
    """``make_tiny_dpt(seed=1, **config_overrides)``: a perturbed tiny transformers DPT depth model."""
    from helpers import tiny_dpt

    return tiny_dpt


@pytest.fixture(scope="session")
def tiny_dpt_dir(tmp_path_factory, make_tiny_dpt) -> Path:
    """A saved tiny DPT depth checkpoint (seed 1) with a fixed 32x32 processor, for tests that only read it."""
    import transformers

    path = tmp_path_factory.mktemp("tiny_dpt") / "depth"
    make_tiny_dpt(seed=1).save_pretrained(str(path))
    transformers.DPTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def depth_pro_reference():
    """transformers' DepthProImageProcessor class (torchvision stood in where absent: depth_pro_reference.py)."""
    from depth_pro_reference import install

    patch = pytest.MonkeyPatch()
    try:
        yield install(patch)
    finally:
        patch.undo()
