"""Fixtures shared by the test files that run the command line."""

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
