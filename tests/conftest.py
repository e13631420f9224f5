"""Fixtures shared by the test files, and the `--network` option.

The test suite needs no network: the few tests that download a real data set are marked `network` and skip
unless pytest is given `--network` (CI runs them in a step of their own). Even then they download into a
temporary directory, never into the user's cache (~/.cache/minidni or $MINIDNI_DATA).
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


def pytest_addoption(parser):
    parser.addoption("--network", action="store_true", help="also run the tests that download real data sets")


def pytest_configure(config):
    config.addinivalue_line("markers", "network: downloads a real data set (skipped unless pytest --network)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--network"):
        return
    skip = pytest.mark.skip(reason="downloads a real data set: run with pytest --network")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)
