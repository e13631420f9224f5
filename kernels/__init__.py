"""The CUDA kernel sources (.cu, .cuh), installed as package data `minidni.kernels` so that `pip install .` and
`pip install -e .` ship the folder the same way. minidni.cuda.loader reads them; docs/kernels.md explains them."""
