"""Packaging for minidni: `pip install .` (or `pip install -e .[test]` for development)."""

from setuptools import setup

setup(
    name="minidni",
    version="0.1.0",
    description="Synthetic gradients and Decoupled Neural Interfaces (DNI) from scratch, written to be read",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=["minidni", "minidni.cuda", "minidni.kernels"],
    package_dir={"minidni": "minidni", "minidni.kernels": "kernels"},
    package_data={"minidni.kernels": ["*.cu", "*.cuh"], "minidni.cuda": ["emu/*.h", "emu/*.cpp"]},
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.24",
        "matplotlib>=3.6",  # learning-curve plots
        "tqdm>=4.60",  # the training progress bar
        "threadpoolctl>=3.1",  # reports BLAS library and thread count in run configs and benchmarks
    ],
    extras_require={
        # NVRTC: the kernels compile in the tests as on a GPU; jupytext: the tests open every tutorial as a notebook;
        # mpi4py + mpich: the tests run the distributed trainer on localhost MPI ranks
        "test": ["pytest>=7", "nvidia-cuda-nvrtc>=13,<14", "jupytext>=1.16", "mpi4py>=4", "mpich>=4"],
        # blocks on MPI ranks (minidni.workers): mpi4py, the maintained Python binding, and MPICH from PyPI, whose
        # wheel brings the MPI library and mpiexec, so no system MPI is needed
        "mpi": ["mpi4py>=4", "mpich>=4"],
        "gpu": ["cupy-cuda13x"],
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
