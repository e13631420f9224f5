"""Launchers for minidni's GEMM-shaped kernels and optimiser steps: validate, pick the launch geometry, launch.

    h = ops.linear_forward(kernels, x, P, act)                                   kernels/linear_forward.cu
    dh_syn, delta = ops.sg_predict(kernels, u, P, labels, K, h, act)             kernels/sg_predict.cu
    ops.layer_update(kernels, x, delta, P, has_bias, step)                       kernels/layer_update.cu
    loss = ops.sg_update(kernels, u, labels, K, dh_syn, dh_target, scale, P, step)   kernels/sg_update.cu
    ops.optimizer_step(kernels, P, grad, step)                                   kernels/optim.cu

`kernels` is a minidni.cuda.loader.Kernels: the same launcher drives CuPy on a GPU or the CPU emulator, and
arrays are cupy or numpy arrays to match. Every scalar reaches a kernel as an explicit np.int32 / np.float32:
a Python int would arrive as a 64-bit value where the kernel reads 32 bits.
The contracts (shapes, what is updated in place) are those of minidni.cuda.reference; `version` picks which
implementation in the .cu file runs (see the file's header); the default is the fastest.

What this module deliberately is not: a training step. minidni.cuda.fused strings these launches together.
"""

from dataclasses import dataclass

import numpy as np

from minidni.core.functional import check_labels
from minidni.cuda import unfused
from minidni.cuda.checks import UNFUSED, ceil_div, check_array, check_matrix, check_type, check_version

VERSIONS = {
    "linear_forward": (1, 2, 3),
    "sg_predict": (1, 2, 3),
    "layer_update": (1, 2, 3),
    "sg_update": (1, 2, 3),
    "optimizer_step": (1,),
}
FASTEST = {name: versions[-1] for name, versions in VERSIONS.items()}

# tile geometry of the tiled versions (kernels/tiles.cuh): output tile BM x BN, 256 threads per block
_TILES = {2: 16, 3: 64}
_THREADS = 256


def _gemm_geometry(version, M, N):
    """(grid, block) covering an M x N output: v1 one thread per element in 16 x 16 blocks, tiled versions one
    BM x BN tile per 256-thread block."""
    if version == 1:
        return (ceil_div(N, 16), ceil_div(M, 16), 1), (16, 16, 1)
    tile = _TILES[version]
    return (ceil_div(N, tile), ceil_div(M, tile), 1), (_THREADS, 1, 1)


def _labels_arg(kernels, labels, B, n_classes, checked):
    """The int32 labels a cDNI kernel gathers with (range-checked unless the caller did: a kernel would read out of
    bounds), or a one-element dummy when the map is not label-conditioned."""
    if not n_classes:
        return kernels.xp.zeros(1, dtype=np.int32)
    check_array(kernels, "labels", labels, (B,), np.int32)
    if not checked:
        check_labels(labels, n_classes)
    return labels


# ----------------------------------------------------------------------------------------------------------
# optimiser steps as kernel arguments


@dataclass
class OptimizerStep:
    """One optimiser step, as the fused kernels take it: the state arrays shaped like the parameter they update,
    and the step's scalars. Build it with `optimizer_step_of` after the optimiser's `begin_step`."""

    kind: str  # "sgd" or "adam"
    state: tuple  # sgd: (velocity,)   adam: (M, V)
    scalars: tuple  # sgd: (lr, momentum)   adam: (a_t, eps_t, beta1, beta2), as np.float32

    def args(self):
        return (*self.state, *self.scalars)

    def flat(self):
        """The same step over the parameter viewed as 1-D (for the elementwise optimizer_step)."""
        return OptimizerStep(self.kind, tuple(a.reshape(-1) for a in self.state), self.scalars)


def optimizer_kind(opt):
    """"sgd" or "adam": which kernels run the steps of minidni.core.optim optimiser `opt` (TypeError for others)."""
    from minidni.core.optim import SGD, Adam

    if isinstance(opt, Adam):
        return "adam"
    if isinstance(opt, SGD):
        return "sgd"
    raise TypeError(f"no fused kernel for optimiser {type(opt).__name__}; expected SGD or Adam")


def optimizer_step_of(opt, lo, hi, shape, name="params"):
    """The current step of minidni.core.optim optimiser `opt` restricted to elements [lo, hi) of its flat parameter
    `name`, viewed as `shape`. Call opt.begin_step() once per step first (Adam folds its constants there)."""

    def view(a):
        return a[lo:hi].reshape(shape)

    if optimizer_kind(opt) == "adam":
        if opt.t == 0:
            raise RuntimeError("call the optimiser's begin_step() before building its kernel arguments")
        scalars = tuple(np.float32(s) for s in (opt.a_t, opt.eps_t, opt.beta1, opt.beta2))
        return OptimizerStep("adam", (view(opt.M[name]), view(opt.V[name])), scalars)
    return OptimizerStep("sgd", (view(opt.velocity[name]),), (np.float32(opt.lr), np.float32(opt.momentum)))


def _check_step(kernels, step, shape):
    if step.kind not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer kind {step.kind!r}")
    for i, a in enumerate(step.state):
        check_array(kernels, f"{step.kind} state array {i}", a, shape)


# ----------------------------------------------------------------------------------------------------------
# launchers


def linear_forward(kernels, x, P, act, has_bias=True, out=None, version=FASTEST["linear_forward"]):
    """h = f(x W + b): x (B, Din), P = [W; b] (Din [+1], Dout) -> h (B, Dout)."""
    check_version(VERSIONS, "linear_forward", version)
    B, Din = check_matrix(kernels, "x", x)
    Dout = check_matrix(kernels, "P", P)[1]
    check_array(kernels, "P", P, (Din + int(has_bias), Dout))
    h = kernels.xp.empty((B, Dout), dtype=np.float32) if out is None else out
    check_array(kernels, "out", h, (B, Dout))
    if version == UNFUSED:
        return unfused.linear_forward(kernels, x, P, act, has_bias, out=h)
    grid, block = _gemm_geometry(version, B, Dout)
    kernels.function("linear_forward", f"linear_forward_v{version}")(
        grid, block, (x, P, h, np.int32(B), np.int32(Din), np.int32(Dout), np.int32(has_bias), np.int32(act))
    )
    return h


def sg_predict(
    kernels, u, P, labels, n_classes, h, act, inv_scale=1.0, version=FASTEST["sg_predict"], labels_checked=False
):
    """dh_syn = (u A + C[y] + c) * inv_scale and delta = dh_syn * f'(z): u (B, Du), P (Du + K + 1, D),
    h (B, D) the block output -> (dh_syn, delta), both (B, D). labels_checked: see check_labels."""
    check_version(VERSIONS, "sg_predict", version)
    B, Du = check_matrix(kernels, "u", u)
    K = n_classes or 0
    D = check_matrix(kernels, "P", P)[1]
    check_array(kernels, "P", P, (Du + K + 1, D))
    check_array(kernels, "h", h, (B, D))
    labels = _labels_arg(kernels, labels, B, K, labels_checked)
    if version == UNFUSED:
        return unfused.sg_predict(kernels, u, P, labels, K, h, act, inv_scale)
    dh_syn = kernels.xp.empty((B, D), dtype=np.float32)
    delta = kernels.xp.empty((B, D), dtype=np.float32)
    grid, block = _gemm_geometry(version, B, D)
    kernels.function("sg_predict", f"sg_predict_v{version}")(
        grid,
        block,
        (
            u,
            P,
            labels,
            h,
            dh_syn,
            delta,
            np.int32(B),
            np.int32(Du),
            np.int32(D),
            np.int32(K),
            np.int32(act),
            np.float32(inv_scale),
        ),
    )
    return dh_syn, delta


def layer_update(kernels, x, delta, P, has_bias, step, version=FASTEST["layer_update"]):
    """P <- P - opt([x, 1]^T delta) in place: x (B, Din), delta (B, Dout), P (Din [+1], Dout)."""
    check_version(VERSIONS, "layer_update", version)
    B, Din = check_matrix(kernels, "x", x)
    Dout = check_matrix(kernels, "delta", delta)[1]
    check_array(kernels, "delta", delta, (B, Dout))
    check_array(kernels, "P", P, (Din + int(has_bias), Dout))
    _check_step(kernels, step, P.shape)
    if version == UNFUSED:
        return unfused.layer_update(kernels, x, delta, P, has_bias, step)
    grid, block = _gemm_geometry(version, P.shape[0], Dout)
    kernels.function("layer_update", f"layer_update_{step.kind}_v{version}")(
        grid, block, (x, delta, P, np.int32(B), np.int32(Din), np.int32(Dout), np.int32(has_bias), *step.args())
    )


def sg_update(
    kernels,
    u,
    labels,
    n_classes,
    dh_syn,
    dh_target,
    scale,
    P,
    step,
    version=FASTEST["sg_update"],
    labels_checked=False,
    loss=None,
):
    """One regression step of the SG map P (Du + K + 1, D) towards dh_target, in place. Returns the SG loss
    (1/B) sum ||dh_syn - dh_target||^2 as a one-element array (reading it is a device sync; callers batch that).
    loss: a zeroed float32 (1,) array to add the loss into (e.g. a slot of a stats array read once per step)."""
    check_version(VERSIONS, "sg_update", version)
    B, Du = check_matrix(kernels, "u", u)
    K = n_classes or 0
    D = check_matrix(kernels, "P", P)[1]
    check_array(kernels, "dh_syn", dh_syn, (B, D))
    check_array(kernels, "dh_target", dh_target, (B, D))
    check_array(kernels, "P", P, (Du + K + 1, D))
    _check_step(kernels, step, P.shape)
    labels = _labels_arg(kernels, labels, B, K, labels_checked)
    if loss is None:
        loss = kernels.xp.zeros(1, dtype=np.float32)
    check_array(kernels, "loss", loss, (1,))
    if version == UNFUSED:
        return unfused.sg_update(kernels, u, labels, K, dh_syn, dh_target, scale, P, step, loss)
    coef = 2.0 * scale / B  # the mse gradient 2 (dh_syn - dh_target) / B, times the module's output scale
    grid, block = _gemm_geometry(version, P.shape[0], D)
    kernels.function("sg_update", f"sg_update_{step.kind}_v{version}")(
        grid,
        block,
        (
            u,
            labels,
            dh_syn,
            dh_target,
            P,
            loss,
            np.int32(B),
            np.int32(Du),
            np.int32(D),
            np.int32(K),
            np.float32(coef),
            np.float32(1.0 / B),
        )
        + step.args(),
    )
    return loss


def optimizer_step(kernels, P, grad, step, version=FASTEST["optimizer_step"]):
    """P <- P - opt(grad) in place, elementwise: P, grad and the step's state are 1-D slices of equal length."""
    check_version(VERSIONS, "optimizer_step", version)
    check_type(kernels, "P", P)
    n = P.size
    check_array(kernels, "P", P, (n,))
    check_array(kernels, "grad", grad, (n,))
    _check_step(kernels, step, (n,))
    if version == UNFUSED:
        return unfused.optimizer_step(kernels, P, grad, step)
    grid, block = (ceil_div(n, _THREADS), 1, 1), (_THREADS, 1, 1)
    kernels.function("optim", f"{step.kind}_step_v{version}")(
        grid, block, (P, grad, *step.state, np.int32(n)) + step.scalars
    )
