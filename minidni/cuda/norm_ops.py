"""Launchers for the batch-norm and softmax cross-entropy kernels (kernels/batchnorm.cu, kernels/softmax_xent.cu).

    kernels = get_kernels("cupy")                # or "emulator": the same calls on NumPy arrays, on the CPU
    h, xhat, inv_std = bn_forward_train(kernels, z, gamma, beta, running_mean, running_var, act="relu")
    dx, dgamma, dbeta = bn_backward(kernels, dy, xhat, inv_std, gamma)
    loss_rows, dlogits = softmax_xent(kernels, logits, labels)

Each launcher returns what its reference in minidni.cuda.reference returns, for the same inputs. Its job is the
part of a launch that the kernel cannot do for itself: check the arrays (a kernel reading a float64 array as
float32, or a transposed view as row-major, returns garbage without complaint), allocate the outputs with the
kernels' array module, pick the grid and block for the chosen version, and pass every scalar with the exact C
type the kernel declares (np.int32 for int, np.float32 for float: CuPy would pass a Python int as 64 bits).

VERSIONS lists the versions of each kernel, so that tests and benchmarks can enumerate them; `version=` defaults
to the fastest (FASTEST, the last). What each version changes is told in the header comment of its .cu file.

What this module deliberately is not: a layer. Caches and running statistics are values the caller holds.
"""

import numpy as np

from minidni.cuda import unfused
from minidni.cuda.checks import UNFUSED, ceil_div, check_array, check_matrix, check_version
from minidni.core.functional import check_labels
from minidni.cuda.reference import ACTS

VERSIONS = {
    "bn_forward_train": (1, 2),
    "bn_backward": (1, 2),
    "softmax_xent": (1, 2),
}
FASTEST = {name: versions[-1] for name, versions in VERSIONS.items()}

THREADS_PER_BLOCK = 256  # v1 kernels: one thread per column (BN) or per row (softmax), 1-D blocks
BN_COLS = 32  # v2 BN kernels: a block is 32 adjacent columns (one warp wide) ...
BN_LANES = 16  # ... by 16 row-lanes; the kernel needs a power of two <= 32
XENT_ROWS = 8  # softmax_xent_v2: 8 rows per block, one warp per row


def _act_code(act):
    """An act code (0..3) from a code or a name ('identity', 'relu', 'tanh', 'sigmoid')."""
    if isinstance(act, str):
        if act not in ACTS:
            raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTS)}")
        return ACTS[act]
    if isinstance(act, (bool, np.bool_)) or not isinstance(act, (int, np.integer)) or act not in ACTS.values():
        raise ValueError(f"act must be one of the codes {sorted(ACTS.values())} or names {sorted(ACTS)}, got {act!r}")
    return int(act)


# ------------------------------------------------------------------------------------------------------------
# batch norm (training mode) + activation, and its backward


def bn_forward_train(
    kernels, z, gamma, beta, running_mean, running_var, act, momentum=0.1, eps=1e-5, version=FASTEST["bn_forward_train"]
):
    """z (B, D) -> (h (B, D), xhat (B, D), inv_std (D,)) with h = f(gamma * xhat + beta); running_mean and
    running_var (D,) are updated in place. B >= 2 (the running variance uses the unbiased factor B / (B - 1))."""
    check_version(VERSIONS, "bn_forward_train", version)
    B, D = check_matrix(kernels, "z", z, min_rows=2)
    for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        check_array(kernels, name, a, (D,))
    act = _act_code(act)
    if version == UNFUSED:
        return unfused.bn_forward_train(kernels, z, gamma, beta, running_mean, running_var, act, momentum, eps)

    xp = kernels.xp
    h = xp.empty((B, D), dtype=np.float32)  # (B, D)
    xhat = xp.empty((B, D), dtype=np.float32)  # (B, D)
    inv_std = xp.empty(D, dtype=np.float32)  # (D,)
    if version == 1:
        grid, block = (ceil_div(D, THREADS_PER_BLOCK),), (THREADS_PER_BLOCK,)
    else:
        grid, block = (ceil_div(D, BN_COLS),), (BN_COLS, BN_LANES)
    args = (z, gamma, beta, running_mean, running_var, h, xhat, inv_std)
    args += (np.int32(B), np.int32(D), np.int32(act), np.float32(momentum), np.float32(eps))
    kernels.function("batchnorm", f"bn_forward_train_v{version}")(grid, block, args)
    return h, xhat, inv_std


def bn_backward(kernels, dy, xhat, inv_std, gamma, dgamma=None, dbeta=None, version=FASTEST["bn_backward"]):
    """dy (B, D): the gradient at BN's output, f' already applied -> (dx (B, D), dgamma (D,), dbeta (D,)).

    dgamma and dbeta, when given, are written in place: contiguous float32 (D,) arrays, for instance views into a
    layer's flat gradient buffer. When not given they are allocated."""
    check_version(VERSIONS, "bn_backward", version)
    B, D = check_matrix(kernels, "dy", dy, min_rows=1)
    check_array(kernels, "xhat", xhat, (B, D))
    check_array(kernels, "inv_std", inv_std, (D,))
    check_array(kernels, "gamma", gamma, (D,))

    xp = kernels.xp
    if dgamma is None:
        dgamma = xp.empty(D, dtype=np.float32)  # (D,)
    if dbeta is None:
        dbeta = xp.empty(D, dtype=np.float32)  # (D,)
    check_array(kernels, "dgamma", dgamma, (D,))
    check_array(kernels, "dbeta", dbeta, (D,))
    if version == UNFUSED:
        return unfused.bn_backward(kernels, dy, xhat, inv_std, gamma, dgamma, dbeta)
    dx = xp.empty((B, D), dtype=np.float32)  # (B, D)
    if version == 1:
        grid, block = (ceil_div(D, THREADS_PER_BLOCK),), (THREADS_PER_BLOCK,)
    else:
        grid, block = (ceil_div(D, BN_COLS),), (BN_COLS, BN_LANES)
    args = (dy, xhat, inv_std, gamma, dx, dgamma, dbeta, np.int32(B), np.int32(D))
    kernels.function("batchnorm", f"bn_backward_v{version}")(grid, block, args)
    return dx, dgamma, dbeta


# ------------------------------------------------------------------------------------------------------------
# softmax cross-entropy


def softmax_xent(kernels, logits, labels, version=FASTEST["softmax_xent"], labels_checked=False):
    """logits (B, K), labels (B,) int32 in [0, K) -> (loss_rows (B,), dlogits (B, K)).

    loss_rows[b] = -log softmax(logits_b)[labels_b] (the batch loss is loss_rows.mean()) and
    dlogits = (softmax(logits) - onehot(labels)) / B. labels_checked=True skips the range check, for callers
    that checked these labels already (on a GPU the check waits for the labels)."""
    check_version(VERSIONS, "softmax_xent", version)
    B, K = check_matrix(kernels, "logits", logits, min_rows=1)
    check_array(kernels, "labels", labels, (B,), dtype=np.int32)
    if not labels_checked:
        check_labels(labels, K)  # one read: on a GPU this waits for the labels
    if version == UNFUSED:
        return unfused.softmax_xent(kernels, logits, labels)

    xp = kernels.xp
    loss_rows = xp.empty(B, dtype=np.float32)  # (B,)
    dlogits = xp.empty((B, K), dtype=np.float32)  # (B, K)
    if version == 1:
        grid, block = (ceil_div(B, THREADS_PER_BLOCK),), (THREADS_PER_BLOCK,)
    else:
        grid, block = (ceil_div(B, XENT_ROWS),), (32, XENT_ROWS)
    args = (logits, labels, loss_rows, dlogits, np.int32(B), np.int32(K))
    kernels.function("softmax_xent", f"softmax_xent_v{version}")(grid, block, args)
    return loss_rows, dlogits
