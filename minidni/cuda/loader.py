"""The one place kernels/*.cu files are read and built, for either place they can run.

    kernels = Kernels("cupy")        # compiled by CuPy (NVRTC) for the GPU; arrays are cupy arrays
    kernels = Kernels("emulator")    # compiled by the C++ compiler for the CPU emulator; arrays are numpy arrays
    f = kernels.function("sg_predict", "sg_predict_v3")
    f(grid, block, args, shared_mem=0)        # the same call shape on both

Both targets compile the same text, module_source(stem): the file exactly as on disk, after a first line that
names every header it includes with a hash of that header's content, and the kernels directory as the include path
(so a kernel file can `#include "common.cuh"`). That first line is what keeps compiled kernels from going stale:
CuPy caches a compiled module under its source text and options (in ~/.cupy/kernel_cache, across processes), and
an `#include` is not part of the text, so without the hashes an edited tiles.cuh would go on loading kernels
compiled from the old one. source_fingerprint(stem) is the same idea as one hash, for other caches keyed on a
kernel (an autotuner's, say). Within one process, modules are built once per (target, file) and kept.

What this module deliberately is not: a kernel selector. Which version of a kernel to launch, with which grid,
is the business of the code that launches it (minidni.cuda.ops).
"""

import hashlib
from importlib import resources
from pathlib import Path

import numpy as np

from minidni.cuda.includes import included_headers

TARGETS = ("cupy", "emulator")

# The options CuPy hands NVRTC are its own (minidni.cuda.nvrtc.cupy_options lists them); we add only the include
# path. minidni.cuda.nvrtc compiles with that same list in the tests, so what passes there is what CuPy builds.


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


# --- what a kernel file includes, and hashes of all of it --------------------------------------------------------

def _short_hash(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_fingerprint(stem):
    """A hash (hex sha256) of kernels/<stem>.cu and of every header it includes, directly or not.

    Equal fingerprints mean the compiler sees the same source, so anything derived from compiling or timing the
    kernel (a cached module, an autotuned launch configuration) can be reused; any edit to the file or to one of
    its headers changes it.
    """
    digest = hashlib.sha256()
    files = [kernel_dir() / f"{stem}.cu", *included_headers(kernel_source(stem), [kernel_dir()])]
    for path in files:
        digest.update(f"{path.name}\0{path.read_text(encoding='utf-8')}\0".encode())
    return digest.hexdigest()


def module_source(stem):
    """The text that both targets compile for kernels/<stem>.cu:

        // minidni kernel linear_forward.cu; headers: tiles.cuh@3f0c..., common.cuh@91be...
        #line 1 "linear_forward.cu"
        <the file exactly as on disk>

    The first line makes every header part of the text that CuPy keys its cache on (see the module docstring);
    the #line directive makes compiler messages and __LINE__ count lines of the file itself, and name it.
    """
    source = kernel_source(stem)
    headers = ", ".join(
        f"{path.name}@{_short_hash(path.read_text(encoding='utf-8'))}"
        for path in included_headers(source, [kernel_dir()])
    )
    return f'// minidni kernel {stem}.cu; headers: {headers or "none"}\n#line 1 "{stem}.cu"\n{source}'


class Kernels:
    """Built kernel modules for one target, and the array module their arguments come from."""

    def __init__(self, target):
        if target not in TARGETS:
            raise ValueError(f"unknown kernel target {target!r}; expected one of {TARGETS}")
        self.target = target
        if target == "cupy":
            import cupy

            self.xp = cupy
            self._build = lambda stem: cupy.RawModule(code=module_source(stem), options=include_options())
        else:
            from minidni.cuda.emulator import EmulatedModule

            self.xp = np
            self._build = lambda stem: EmulatedModule(code=module_source(stem), options=include_options(), name=stem)
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
