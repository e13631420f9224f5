"""CUDA kernel sources (.cu), installed as package data `minidni.kernels`. The kernels themselves arrive with the
GPU path; this package exists so that `pip install .` and `pip install -e .` ship the folder the same way."""
