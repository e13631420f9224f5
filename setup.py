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
        "test": ["pytest>=7", "nvidia-cuda-nvrtc>=13,<14"],  # NVRTC: the kernels compile in the tests as on a GPU
        "gpu": ["cupy-cuda13x"],
    },
    entry_points={"console_scripts": ["minidni=minidni.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
