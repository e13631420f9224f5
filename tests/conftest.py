"""Fixtures shared by the test files, and the `--network` and `--tutorials-full` options.

The test suite needs no network: the few tests that download a real data set are marked `network` and skip
unless pytest is given `--network` (CI runs them in a step of their own). Even then they download into a
temporary directory, never into the user's cache (~/.cache/minidni or $MINIDNI_DATA).

The tutorials run at a tiny size in every test run. At their default size - the size their text states, where
their headline claims are asserted - they take about twelve minutes on 2 cores, so those runs are marked
`tutorial_full` and skip unless pytest is given `--tutorials-full` (CI runs them in a step of their own, two at a
time with pytest-xdist: `pytest --tutorials-full -m tutorial_full -n 2 tests/test_tutorials.py`).
"""

import pytest

from minidni.core import backend


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No test reads or writes a real data cache, and every test runs on the numpy backend (restored after)."""
    monkeypatch.setenv("MINIDNI_DATA", str(tmp_path / "data-cache"))
    monkeypatch.delenv("MINIDNI_BACKEND", raising=False)
    saved = dict(backend._state)
    backend.set_backend("numpy")
    yield
    backend._state.clear()
    backend._state.update(saved)


OPTIONS = {  # option: (marker, why it skips without the option)
    "--network": ("network", "downloads a real data set: run with pytest --network"),
    "--tutorials-full": ("tutorial_full", "a tutorial at its default size (minutes): run with pytest --tutorials-full"),
}


def pytest_addoption(parser):
    parser.addoption("--network", action="store_true", help="also run the tests that download real data sets")
    parser.addoption("--tutorials-full", action="store_true", help="also run every tutorial at its default size")


def pytest_configure(config):
    config.addinivalue_line("markers", "network: downloads a real data set (skipped unless pytest --network)")
    config.addinivalue_line(
        "markers", "tutorial_full: a tutorial at its default size (skipped unless pytest --tutorials-full)"
    )


def pytest_collection_modifyitems(config, items):
    for option, (marker, reason) in OPTIONS.items():
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
