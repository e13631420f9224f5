"""The one place kernels/*.cu files are read and built, for either place they can run.

    kernels = Kernels("cupy")        # compiled by CuPy (NVRTC) for the GPU; arrays are cupy arrays
    kernels = Kernels("emulator")    # compiled by the C++ compiler for the CPU emulator; arrays are numpy arrays
    f = kernels.function("sg_predict", "sg_predict_v3")
    f(grid, block, args, shared_mem=0)        # the same call shape on both

Both targets compile the same file, unchanged on disk, with the kernels directory as the include path (so a
kernel file can `#include "common.cuh"`). Modules are built once per (target, file) and cached.

What this module deliberately is not: a kernel selector. Which version of a kernel to launch, with which grid,
is the business of the code that launches it (minidni.cuda.ops).
"""

from importlib import resources
from pathlib import Path

import numpy as np

TARGETS = ("cupy", "emulator")

# CuPy's own defaults for RawModule are --std=c++17 and -ftz=true plus the arch; we only add the include path.
# minidni.cuda.nvrtc compiles with the same options in the tests, so what passes there is what CuPy builds.


def kernel_dir():
    """The directory that holds the shipped .cu and .cuh files.

    Installed, that is the package data `minidni.kernels`. Run from a source checkout after a non-editable
    install (`python -m minidni` in the repository imports ./minidni, where no kernels subpackage exists), it is
    the checkout's own kernels/ folder, next to minidni/.
    """
    try:
        return Path(str(resources.files("minidni.kernels")))
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2] / "kernels"
        if (checkout / "tiles.cuh").is_file():
            return checkout
        raise FileNotFoundError(
            "cannot find minidni's CUDA kernels: the package data minidni.kernels is not installed and there is no "
            f"kernels/ folder at {checkout}. Reinstall minidni (pip install .)."
        ) from None


def kernel_files():
    """Every kernel file (.cu) that ships with minidni, sorted by name; headers (.cuh) are included by them."""
    return sorted(kernel_dir().glob("*.cu"))


def kernel_source(stem):
    """The text of kernels/<stem>.cu, exactly as on disk."""
    path = kernel_dir() / f"{stem}.cu"
    if not path.is_file():
        available = [p.stem for p in kernel_files()]
        raise FileNotFoundError(f"no kernel file {stem}.cu in {kernel_dir()}; available: {available}")
    return path.read_text(encoding="utf-8")


def include_options():
    """The compile options both targets need: the kernels folder on the include path (for #include "tiles.cuh")."""
    return (f"-I{kernel_dir()}",)


class Kernels:
    """Built kernel modules for one target, and the array module their arguments come from."""

    def __init__(self, target):
        if target not in TARGETS:
            raise ValueError(f"unknown kernel target {target!r}; expected one of {TARGETS}")
        self.target = target
        if target == "cupy":
            import cupy

            self.xp = cupy
            self._build = lambda stem: cupy.RawModule(code=kernel_source(stem), options=include_options())
        else:
            from .emulator import EmulatedModule

            self.xp = np
            self._build = lambda stem: EmulatedModule(code=kernel_source(stem), options=include_options(), name=stem)
        self._modules, self._functions = {}, {}

    def module(self, stem):
        if stem not in self._modules:
            self._modules[stem] = self._build(stem)
        return self._modules[stem]

    def function(self, stem, name):
        """The kernel `name` from kernels/<stem>.cu, callable as f(grid, block, args, shared_mem=0)."""
        key = (stem, name)
        if key not in self._functions:
            self._functions[key] = self.module(stem).get_function(name)
        return self._functions[key]

    def __deepcopy__(self, memo):
        return self  # compiled modules are immutable and tied to a device: copies of a network share them

    def __repr__(self):
        return f"Kernels({self.target!r})"


_shared = {}


def get_kernels(target):
    """A process-wide Kernels for `target`, so each file is compiled once per process."""
    if target not in _shared:
        _shared[target] = Kernels(target)
    return _shared[target]
