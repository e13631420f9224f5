"""Tests for minidni.core.backend: NumPy by default, CuPy only when it really works, never a silent fallback."""

import sys
import types

import numpy as np
import pytest

from minidni.core import backend
from minidni.core.backend import BackendError, backend_name, set_backend, to_numpy, xp


@pytest.fixture(autouse=True)
def restore_backend(monkeypatch):
    """Every test starts from and leaves behind the process's backend state; no MINIDNI_BACKEND leaks in."""
    saved = dict(backend._state)
    monkeypatch.delenv("MINIDNI_BACKEND", raising=False)
    yield
    backend._state.clear()
    backend._state.update(saved)


@pytest.fixture
def fresh_state():
    """As if no array had been created yet: the backend is resolved from the environment on first use."""
    backend._state.update(name=None, module=None)


def fake_cupy(available):
    mod = types.ModuleType("cupy")
    mod.is_available = lambda: available
    return mod


def test_default_backend_is_numpy(fresh_state):
    assert backend_name() == "numpy"
    assert xp() is np


def test_set_backend_numpy():
    assert set_backend("numpy") is np
    assert backend_name() == "numpy"
    assert xp() is np


def test_unknown_backend_names_the_choices():
    set_backend("numpy")
    with pytest.raises(ValueError) as e:
        set_backend("torch")
    msg = str(e.value)
    assert "torch" in msg and "numpy" in msg and "cupy" in msg
    assert backend_name() == "numpy"


def test_cupy_not_installed_raises_and_does_not_fall_back(monkeypatch):
    set_backend("numpy")
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(BackendError, match="CuPy is not installed"):
        set_backend("cupy")
    assert backend_name() == "numpy"
    assert xp() is np


def test_cupy_without_gpu_raises_and_does_not_fall_back(monkeypatch):
    set_backend("numpy")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(available=False))
    with pytest.raises(BackendError, match="no usable GPU"):
        set_backend("cupy")
    assert backend_name() == "numpy"
    assert xp() is np


def test_cupy_with_gpu_is_selected(monkeypatch):
    cupy = fake_cupy(available=True)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    assert set_backend("cupy") is cupy
    assert backend_name() == "cupy"
    assert xp() is cupy


def test_env_var_cupy_unavailable_raises_on_first_use(monkeypatch, fresh_state):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(available=False))
    monkeypatch.setenv("MINIDNI_BACKEND", "cupy")
    with pytest.raises(BackendError, match="no usable GPU"):
        xp()
    assert backend._state["name"] is None  # nothing was selected, in particular not numpy behind the user's back
    with pytest.raises(BackendError):
        backend_name()


def test_env_var_cupy_not_installed_raises_on_first_use(monkeypatch, fresh_state):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setenv("MINIDNI_BACKEND", "cupy")
    with pytest.raises(BackendError, match="CuPy is not installed"):
        backend_name()


@pytest.mark.parametrize("value", ["numpy", " NumPy ", ""])
def test_env_var_numpy(monkeypatch, fresh_state, value):
    monkeypatch.setenv("MINIDNI_BACKEND", value)
    assert backend_name() == "numpy"
    assert xp() is np


def test_env_var_unknown_name(monkeypatch, fresh_state):
    monkeypatch.setenv("MINIDNI_BACKEND", "tpu")
    with pytest.raises(ValueError, match="tpu"):
        xp()


def test_env_var_read_only_on_first_use(monkeypatch, fresh_state):
    assert backend_name() == "numpy"
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(available=False))
    monkeypatch.setenv("MINIDNI_BACKEND", "cupy")
    assert backend_name() == "numpy"  # already resolved: a later change of the environment changes nothing


def test_to_numpy_returns_numpy_arrays_unchanged():
    for a in (np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros((), np.int64), np.array([1.5])):
        assert to_numpy(a) is a


def test_to_numpy_copies_device_arrays_to_host():
    class DeviceArray:  # the part of cupy.ndarray's interface to_numpy uses
        def __init__(self, host):
            self.host = host

        def get(self):
            return self.host.copy()

    host = np.arange(4.0)
    out = to_numpy(DeviceArray(host))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, host)


def test_array_module_follows_numpy_inputs():
    set_backend("numpy")
    assert backend.array_module(np.zeros(3)) is np


@pytest.mark.parametrize("installed, available", [(False, False), (True, False), (True, True)])
def test_gpu_available_answers_without_raising(monkeypatch, installed, available):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(available) if installed else None)
    assert backend.gpu_available() is (installed and available)


# -- the error names what the user wrote to ask for CuPy ----------------------------------------------------------


@pytest.mark.parametrize("installed", [True, False])
def test_a_cupy_error_names_what_asked_for_it(monkeypatch, fresh_state, installed):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(available=False) if installed else None)
    with pytest.raises(BackendError) as e:
        set_backend("cupy", asked_by="--backend cupy")
    assert str(e.value).startswith("--backend cupy asks for CuPy") and "MINIDNI_BACKEND" not in str(e.value)
    with pytest.raises(BackendError) as e:
        set_backend("cupy")  # from Python
    assert str(e.value).startswith("set_backend('cupy') asks for CuPy")
    monkeypatch.setenv("MINIDNI_BACKEND", " CuPy ")
    with pytest.raises(BackendError) as e:
        xp()
    assert str(e.value).startswith("MINIDNI_BACKEND=cupy asks for CuPy")
