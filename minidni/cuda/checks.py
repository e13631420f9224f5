"""Checking what a kernel is about to read, before it reads it.

A kernel cannot report the caller's mistakes: it reads a float64 array as float32, a transposed view as
row-major, or a NumPy array's address on the GPU, and returns garbage without complaint. Every launcher
(minidni.cuda.ops, minidni.cuda.norm_ops) runs these checks first and raises a TypeError or ValueError that names
the argument and says what was expected.

What this module deliberately is not: a check of values. NaNs and out-of-range labels are the launchers' and the
trainer's business (a range check of labels on a GPU waits for the labels, so it is done once per batch).
"""

import numpy as np

INT32_MAX = 2**31 - 1  # the kernels index with int


def check_type(kernels, name, a):
    """`a` is an array of the kernels' array module (NumPy for the emulator, CuPy for a GPU)."""
    xp = kernels.xp
    if not isinstance(a, xp.ndarray):
        got = f"{type(a).__module__}.{type(a).__name__}"
        raise TypeError(f"{name} must be a {xp.__name__}.ndarray for {kernels!r}, got {got}")


def check_array(kernels, name, a, shape, dtype=np.float32):
    """Raise a TypeError/ValueError naming `name` unless `a` is a C-contiguous `dtype` array of `shape` that
    lives where the kernels run (a NumPy array for the emulator, a CuPy array for the GPU)."""
    check_type(kernels, name, a)
    if a.dtype != dtype:
        want = np.dtype(dtype).name
        raise TypeError(f"{name} must be {want}, got {a.dtype} (convert with {name}.astype(np.{want}))")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (row-major, no strides); pass xp.ascontiguousarray({name})")


def check_matrix(kernels, name, a, min_rows=1):
    """A 2-D float32 input whose shape sets (B, D): returns (B, D)."""
    check_type(kernels, name, a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    B, D = a.shape
    if B < min_rows or D < 1:
        raise ValueError(f"{name} must have at least {min_rows} rows and 1 column, got shape {a.shape}")
    if B * D > INT32_MAX:
        raise ValueError(f"{name} has {B * D} elements; the kernels index with int32 (at most {INT32_MAX})")
    check_array(kernels, name, a, (B, D))
    return B, D


UNFUSED = "unfused"  # every launcher's alternative to its kernel: the array library's own ops (cuda/unfused.py)


def check_version(versions, op, version):
    """`version` is one of `versions[op]` (a launcher's VERSIONS table) or UNFUSED."""
    if version != UNFUSED and (isinstance(version, bool) or version not in versions[op]):
        raise ValueError(f"{op} has versions {versions[op]} and {UNFUSED!r}, got version={version!r}")


def ceil_div(a, b):
    return (a + b - 1) // b
