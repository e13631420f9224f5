"""Packaging for minidni: `pip install .` (or `pip install -e .[test]` for development)."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).resolve().parent
# one version, written once: minidni/version.py (the package reads it from there too)
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "minidni" / "version.py").read_text(encoding="utf-8"))[1]

# Where PyPI has cupy-cuda13x wheels (14.2: manylinux x86_64 and aarch64, Windows x86-64). Elsewhere the test extra
# leaves CuPy out and the tests that need it skip, saying so; the gpu extra has no marker, so that asking for a GPU
# install where no wheel exists fails at install time instead of later.
CUPY_WHEELS = (
    '(sys_platform == "linux" and (platform_machine == "x86_64" or platform_machine == "aarch64"))'
    ' or (sys_platform == "win32" and platform_machine == "AMD64")'
)

setup(
    name="minidni",
    version=VERSION,
    description="Synthetic gradients and Decoupled Neural Interfaces (DNI) from scratch, written to be read",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    # every package under minidni/, found (a new subpackage cannot be left out), and the kernels folder installed
    # as minidni.kernels; CI builds the wheel and imports every subpackage from a fresh venv to prove it
    packages=find_packages(include=["minidni", "minidni.*"]) + ["minidni.kernels"],
    package_dir={"minidni": "minidni", "minidni.kernels": "kernels"},
    package_data={"minidni.kernels": ["*.cu", "*.cuh"], "minidni.cuda": ["emu/*.h", "emu/*.cpp"]},
    python_requires=">=3.10",  # CuPy 14 (the gpu and test extras) needs 3.10
    install_requires=[
        "numpy>=1.24",
        "matplotlib>=3.6",  # learning-curve plots
        "tqdm>=4.60",  # the training progress bar
        "threadpoolctl>=3.1",  # reports BLAS library and thread count in run configs and benchmarks
    ],
    extras_require={
        # NVRTC: the kernels compile in the tests as on a GPU; CuPy: the tests check that minidni's copy of CuPy's
        # compile options is CuPy's own, and compile through CuPy's NVRTC binding (no GPU needed; CuPy 14 requires
        # numpy < 2.6), with the CUDA headers CuPy insists on finding (2.5 MB, the same wheel the gpu extra brings);
        # jupytext: the tests open every tutorial as a notebook; mpi4py + mpich: the tests run the distributed
        # trainer on localhost MPI ranks; import-linter: the package's layers
        "test": [
            "pytest>=7",
            "nvidia-cuda-nvrtc>=13,<14",
            f"cupy-cuda13x>=14.2,<15; {CUPY_WHEELS}",
            f"nvidia-cuda-runtime>=13,<14; {CUPY_WHEELS}",
            "jupytext>=1.16",
            "mpi4py>=4",
            "mpich>=4",
            "import-linter>=2.1",  # the layers of the package, checked (.importlinter, tests/test_architecture.py)
            "pytest-xdist>=3",  # CI runs the tutorials at their default size two at a time (pytest -n 2)
        ],
        # blocks on MPI ranks (minidni.parallel.workers): mpi4py, the maintained Python binding, and MPICH from PyPI,
        # whose wheel brings the MPI library and mpiexec, so no system MPI is needed
        "mpi": ["mpi4py>=4", "mpich>=4"],
        # CuPy for CUDA 13 with its [ctk] extra: the CUDA runtime, NVRTC, cuBLAS and the other libraries and headers
        # CuPy loads come as wheels, so a machine needs only the NVIDIA driver (R580 or newer for CUDA 13)
        "gpu": ["cupy-cuda13x[ctk]>=14.2,<15"],
        # the PyTorch yardstick of `python -m minidni bench --vs torch` (minidni.experiments.torch_reference), for the
        # benchmark only: nothing else imports torch. PyPI's default Linux wheel is the large CUDA build, which also
        # pins its own NVRTC: the CPU build is enough, from whichever index the user points pip at (PyTorch's
        # CPU-only index, for one), and a CUDA build belongs in a venv other than the one the tests run in
        "bench": ["torch>=2.1"],
        "docs": [  # the documentation site: pip install -e '.[docs]', then see docs/README.md
            "sphinx>=7.4",  # builds the site; autodoc renders the API reference from the docstrings
            "myst-parser>=3.0",  # the pages are Markdown (MyST): links, heading anchors, $math$, directives
            "furo>=2024.8.6",  # a maintained, readable theme with a sidebar of every page
        ],
    },
    entry_points={"console_scripts": ["minidni=minidni.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
