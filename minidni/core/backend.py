"""The array backend: NumPy on the CPU, CuPy on a GPU, chosen in exactly one place.

Every array minidni creates comes from `xp()` (the active array module), and every math function in
`minidni.core.functional` works on whatever module its inputs belong to. The backend is picked once, from the
`MINIDNI_BACKEND` environment variable ("numpy" or "cupy") or by calling `set_backend`.

What this module deliberately is not: a fallback. Asking for CuPy where CuPy is not installed, or where it has
no usable GPU, raises `BackendError` that says so. A silent fallback to NumPy would let "GPU" runs and tests pass
on the CPU without anyone noticing.
"""

import os

import numpy as np

BACKENDS = ("numpy", "cupy")
DEFAULT_DTYPE = np.float32  # training runs in float32; gradient checks build float64 models explicitly


class BackendError(RuntimeError):
    """The requested array backend cannot be used on this machine."""


_state = {"name": None, "module": None}


def _load_cupy(asked_by):
    try:
        import cupy
    except ImportError as e:  # not installed at all
        raise BackendError(f"{asked_by} asks for CuPy, but CuPy is not installed. Install the wheel matching your "
                           "CUDA (e.g. `pip install cupy-cuda13x`) or use the numpy backend.") from e  # fmt: skip
    if not cupy.is_available():  # installed, but no driver or no GPU
        raise BackendError(f"{asked_by} asks for CuPy, but CuPy finds no usable GPU (cupy.is_available() is False: "
                           "no CUDA driver or no device). Use the numpy backend on this machine.")  # fmt: skip
    return cupy


def gpu_available():
    """True when the cupy backend can be used here (CuPy installed and a GPU it can reach); never raises.
    For choosing what to run or skip - asking for the backend where this is False is still an error."""
    try:
        import cupy
    except ImportError:
        return False
    return bool(cupy.is_available())  # False, without raising, when there is no driver or no device


def set_backend(name, asked_by=None):
    """Select the array backend, "numpy" or "cupy". Raises BackendError if it cannot be used, naming `asked_by`:
    what the user wrote to ask for it (the command line passes "--backend cupy"; default "set_backend('cupy')")."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    module = np if name == "numpy" else _load_cupy(asked_by or f"set_backend({name!r})")
    _state["name"], _state["module"] = name, module
    return module


def use_array_module(name, module):
    """Make `module` the active array module under `name`, or put back what `active_module()` returned.

    For minidni.cuda.cupy_standin, which runs the GPU path's Python on NumPy arrays held to CuPy's rules in the
    tests and `python -m minidni doctor`. It is not a fallback: set_backend never picks a stand-in."""
    _state["name"], _state["module"] = name, module


def active_module():
    """(name, module) of the active backend as set now (both None before first use), for use_array_module."""
    return _state["name"], _state["module"]


def backend_name():
    """The name of the active backend, resolving MINIDNI_BACKEND on first use."""
    if _state["name"] is None:
        name = os.environ.get("MINIDNI_BACKEND", "numpy").strip().lower() or "numpy"
        set_backend(name, asked_by=f"MINIDNI_BACKEND={name}")
    return _state["name"]


def xp():
    """The active array module (numpy or cupy)."""
    backend_name()
    return _state["module"]


def array_module(a):
    """The module an existing array belongs to, so math functions follow their inputs' device."""
    return np if isinstance(a, np.ndarray) else xp()


def to_numpy(a):
    """A host (NumPy) copy of an array from either backend, for checkpoints, metrics and plots."""
    if isinstance(a, (np.ndarray, np.generic, int, float, complex)):  # (Python numbers are host values too)
        return a
    return a.get()  # cupy.ndarray -> numpy.ndarray
