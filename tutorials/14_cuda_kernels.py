# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 14: the CUDA kernels, from the NumPy reference to v1 to the fastest version
#
# This script is also a notebook (see `tutorials/README.md`). Every section follows the same pattern: the math
# in prose, then the code that computes it, then an `assert` that fails if the code and the math disagree,
# then a picture.
#
# On a GPU, minidni runs the DNI / cDNI training step through hand-written CUDA kernels (`kernels/*.cu`, see
# `docs/kernels.md`). This tutorial follows one of them, `sg_predict`, the synthetic-gradient module's prediction
# fused with the block's activation derivative, from the math to the fastest version, and runs all of it **with
# no GPU**: the kernels are compiled by NVRTC (the compiler CuPy uses) to read what the GPU would allocate, and
# executed, unchanged, by minidni's CPU emulator of the CUDA execution model.
#
# What you will see:
#
# 1. what the fused DNI step computes for one hidden block, written in NumPy and checked against minidni's
#    kernel references (`minidni.cuda.reference`) and against the engine's own layers;
# 2. the CUDA source of `sg_predict_v1` (the naive port: one thread per output element) and how one thread
#    computes one element, replayed in Python over the whole launch grid;
# 3. the faster versions: shared-memory tiles (v2) and register blocks (v3), with the tiled loop written in
#    NumPy with counters, and a picture of the tiles;
# 4. what NVRTC allocates for each version (registers, shared memory, spills), and every version of
#    `sg_predict` and of `layer_update` (the weight update fused into its gradient product) run on the emulator
#    and compared with the NumPy reference;
# 5. the memory traffic, counted on paper: per version of `sg_predict`, and for a whole training step, fused
#    against unfused. **No speed is measured here**: without a GPU there is none to measure;
# 6. the whole fused DNI step on the emulator (`minidni.cuda.fused.use_kernels`): one step equals the engine's
#    step, and a small FCN3 trains through the kernels;
# 7. the same checks on a real GPU, when CuPy and a GPU are present (otherwise they are skipped, never faked).
#
# Sizes: `MINIDNI_TINY=1` shrinks everything so that the script runs in a few seconds (the test suite does
# this); figures go to `tutorials/out/`, or to `$MINIDNI_TUTORIAL_OUT`.

# %%
import copy
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

import minidni.core.backend
from minidni.core.backend import gpu_available
from minidni.cuda import nvrtc, ops, reference, report, traffic
from minidni.cuda.emulator import LaunchError, unavailable_reason
from minidni.cuda.loader import Kernels, get_kernels, kernel_dir
from minidni.data.datasets import DataError, iterate_minibatches, load_dataset
from minidni.dni.network import build_network
from minidni.core.gradcheck import assert_close
from minidni.core.optim import Adam
from minidni.runs.plots import save_figure
from minidni.runs.threads import use_blas_threads
from minidni.cuda.fused import use_kernels

minidni.core.backend.set_backend("numpy")  # the hand computations and the emulator work on NumPy arrays
use_blas_threads(1)  # one BLAS thread: a busy machine cannot slow the run down several times (minidni.runs.threads)

TINY = os.environ.get("MINIDNI_TINY", "0") == "1"
STANDIN = TINY or os.environ.get("MINIDNI_STANDIN", "0") == "1"  # generated rows instead of MNIST, only if asked
try:
    HERE = Path(__file__).resolve().parent
except NameError:  # in a notebook: its own folder (tutorials/)
    HERE = Path.cwd()
OUT = Path(os.environ.get("MINIDNI_TUTORIAL_OUT") or HERE / "out")
OUT.mkdir(parents=True, exist_ok=True)
T_START = time.perf_counter()

FIGURES = ["14_tiles.png", "14_traffic.png", "14_fused_training{stand_in}.png"]  # "_stand-in" if STANDIN

# the shapes (B, D_u, D) on which every kernel version is compared with its reference: not multiples of the 16-
# or 64-wide tiles, so the edges are exercised; the default size adds the FCN3 benchmark's 256 x 256 x 256
SHAPES = [(19, 70, 33)] if TINY else [(19, 70, 33), (67, 17, 66), (256, 256, 256)]
K = 10  # classes: the cDNI context, and the output layer
# section 6: an FCN3 784 -> HIDDEN -> HIDDEN -> 10 trained through the emulated kernels
HIDDEN = 32 if TINY else 256  # 256: the paper's FCN3
BATCH = 32 if TINY else 64
N_TRAIN = 256 if TINY else 10000
N_TEST = 256 if TINY else 2000
EPOCHS = 3 if TINY else 2
print(f"{'tiny' if TINY else 'default'} size; figures go to {OUT}")

# %% [markdown]
# ### What this machine can do
#
# Three independent things are needed for the three kinds of check, and each may be missing on your machine:
#
# * the **CPU emulator** needs a POSIX system and a C++ compiler (g++ or clang++); it runs the kernels;
# * **NVRTC** needs the `nvidia-cuda-nvrtc` wheel (`pip install "nvidia-cuda-nvrtc>=13,<14"`); it compiles the
#   kernels exactly as CuPy would, and reports registers, shared memory and spills. No GPU is needed for either;
# * a **GPU** needs CuPy (`pip install -e '.[gpu]'`) and a CUDA device.
#
# A missing piece skips the cells that need it, with the reason printed; the NumPy parts always run.

# %%
EMULATOR_REASON = unavailable_reason()  # None when the emulator works here
EMULATOR = EMULATOR_REASON is None
try:
    NVRTC_VERSION = nvrtc.version()
    NVRTC_REASON = None
except nvrtc.NvrtcNotFound as e:
    NVRTC_VERSION, NVRTC_REASON = None, " ".join(str(e).split())[:300]  # the message, on one line
GPU = gpu_available()
print(f"CPU emulator: {'available' if EMULATOR else 'NOT available: ' + EMULATOR_REASON}")
print(
    f"NVRTC:        {f'{NVRTC_VERSION[0]}.{NVRTC_VERSION[1]}' if NVRTC_VERSION else 'NOT available: ' + NVRTC_REASON}"
)
print(f"GPU (CuPy):   {'available' if GPU else 'not available (the GPU cells will be skipped)'}")
kernels = get_kernels("emulator") if EMULATOR else None  # the .cu files, built for the CPU on first use


def skipped(what, reason):
    print(f"SKIPPED {what}: {reason}")


# %% [markdown]
# ## 1. What the fused step computes for one hidden block
#
# A hidden block of FCN3 is $z = x W$ (no bias: batch norm has one), $a = \mathrm{BN}(z)$, $h = \mathrm{ReLU}(a)$.
# In cDNI mode the block owns a *linear, label-conditioned* synthetic-gradient module, whose output layer
# holds one flat matrix $P = [A;\, C;\, c]$ of shape $(D + K + 1) \times D$. For a batch of $B$ rows:
#
# $$\hat\delta = [h,\ \mathrm{onehot}(y),\ 1]\, P = h A + C[y] + c \qquad (B \times D),$$
#
# where $C[y]$ is row $y_b$ of $C$ for row $b$: multiplying a one-hot row by $C$ only *selects* a row, so the
# kernel gathers it instead of multiplying $K$ zeros. The block then backpropagates $\hat\delta$ as if it were
# the true gradient. Through the ReLU, with $\mathrm{ReLU}'(a) = [h > 0]$ read off the output,
#
# $$\delta = \hat\delta \odot [h > 0] \qquad (B \times D),$$
#
# then through batch norm to $\partial z$, and the weight gradient and its Adam step (minidni's sum form,
# `minidni/core/optim.py`):
#
# $$g = x^\top \partial z, \quad M \leftarrow \beta_1 M + g, \quad V \leftarrow \beta_2 V + g^2, \quad
#   W \leftarrow W - a_t\, \frac{M}{\sqrt V + \epsilon_t}.$$
#
# The fused step computes $\hat\delta$ and $\delta$ in one kernel, `sg_predict` (the mask is applied in
# registers), and $g$ and the Adam step in another, `layer_update_adam`: every element of $g$ is finished in a
# register and consumed there, so **the gradient $g$ never exists in memory**. Unfused, the same work is a
# one-hot build, a concatenation, a matrix product, a bias add and a mask (in the engine's array ops), then a
# product that writes $g$ and ten elementwise passes of Adam over it.
#
# First, this block in plain NumPy, on a small cDNI network that has taken a few steps (so that its modules no
# longer predict zero; a fresh one predicts exactly zero, see tutorial 04).

# %%
D_IN, D_H, B1 = 29, 24, 16  # a small FCN3 for the checks: 29 -> 24 -> 24 -> 10, batches of 16


def small_fcn3(seed=0):
    return build_network(depth=3, mode="cdni", d_in=D_IN, hidden=D_H, n_classes=K, lr=2e-3, sg_lr=1e-3, seed=seed)


def random_batches(n, B, d_in, seed):
    r = np.random.default_rng(seed)
    return [(r.standard_normal((B, d_in)).astype(np.float32), r.integers(0, K, B)) for _ in range(n)]


net = small_fcn3()
for xb_, yb_ in random_batches(5, B1, D_IN, seed=1):  # five ordinary steps: the modules leave zero
    net.train_step(xb_, yb_)
(xb, yb) = random_batches(1, B1, D_IN, seed=2)[0]  # (B, 29), (B,)

block = net.hidden[0]
lin, bn = block.layers.layers[0], block.layers.layers[1]
sg_out = block.sg.net.layers[-1]  # the module's only layer: W = [A; C] (D + K, D), b = c (D,)
A, C, c = sg_out.params["W"][:D_H], sg_out.params["W"][D_H:], sg_out.params["b"]
print(f"block 0: {block.layers};  module: {block.sg};  A {A.shape}, C {C.shape}, c {c.shape}")

# by hand: the forward of block 0, then the prediction and the masked gradient
z = xb @ lin.params["W"]  # (B, D)
mu, var = z.mean(axis=0), z.var(axis=0)  # batch statistics, as batch norm uses in training
zhat = (z - mu) / np.sqrt(var + bn.eps)  # (B, D)
a = bn.params["gamma"] * zhat + bn.params["beta"]
h = np.maximum(a, 0)  # (B, D)
onehot = np.eye(K, dtype=np.float32)[yb]  # (B, K)
dh_syn_onehot = np.concatenate([h, onehot, np.ones((B1, 1), np.float32)], axis=1) @ np.vstack([A, C, c])  # (B, D)
dh_syn = h @ A + C[yb] + c  # (B, D): the same, with the label row gathered
delta = dh_syn * (h > 0)  # (B, D)
print(f"h {h.shape}, dh_syn {dh_syn.shape} (max |entry| {np.abs(dh_syn).max():.2e}), delta {delta.shape}")

# %% [markdown]
# **Check: gathering the label row is the one-hot product; the hand computation is `reference.sg_predict`
# and the engine's module.** `reference.sg_predict(u, P, labels, K, h, act)` is the contract of the kernel:
# it is written with the engine's own functions, so "kernel = reference" means "kernel = engine".

# %%
P_sg = np.ascontiguousarray(np.vstack([sg_out.params["W"], sg_out.params["b"][None, :]]))  # (D + K + 1, D)
labels = yb.astype(np.int32)  # the kernels read int32 labels
ref_dh_syn, ref_delta = reference.sg_predict(h, P_sg, labels, K, h, reference.ACTS["relu"])
h_engine, cache0 = block.forward(xb)  # the engine's block 0 (its running statistics move: a copy is used later)
engine_dh_syn, _ = block.sg.predict(h_engine, yb)

scale = float(np.abs(dh_syn).max())
assert scale > 0, "the module should no longer predict zero after five steps"
assert_close(dh_syn, dh_syn_onehot, rtol=1e-5, atol=1e-6 * scale, name="gathered C[y] vs one-hot product")
assert_close(h, h_engine, rtol=1e-5, atol=1e-6, name="h by hand vs the engine's block")
assert_close(dh_syn, ref_dh_syn, rtol=1e-5, atol=1e-6 * scale, name="dh_syn vs reference.sg_predict")
assert_close(delta, ref_delta, rtol=1e-5, atol=1e-6 * scale, name="delta vs reference.sg_predict")
assert_close(dh_syn, engine_dh_syn, rtol=1e-5, atol=1e-6 * scale, name="dh_syn vs the engine's SG module")
print("dh_syn and delta by hand = reference.sg_predict = the engine's SG module (float32 tolerance)")

# %% [markdown]
# **Check: the weight update.** Batch norm's backward (as in tutorial 04), $g = x^\top \partial z$, and one Adam
# step by hand, against `reference.layer_update` (the contract of `layer_update_adam`) and against the engine's
# block taking its synthetic step (`backward` then `update`) on a copy. The block's optimiser owns one flat buffer
# $[W, \gamma, \beta]$; Adam is elementwise, so $W$'s part of it is a step of its own.

# %%
gamma = bn.params["gamma"]
dz = gamma / np.sqrt(var + bn.eps) * (delta - delta.mean(axis=0) - zhat * (delta * zhat).mean(axis=0))  # (B, D)
g = xb.T @ dz  # (D_in, D): the weight gradient, which the fused kernel never writes to memory

opt = block.layers.optimizer  # Adam over the flat [W, gamma, beta]
n_w = lin.params["W"].size
W_hand = lin.params["W"].copy()
M_hand = opt.M["params"][:n_w].reshape(W_hand.shape).copy()
V_hand = opt.V["params"][:n_w].reshape(W_hand.shape).copy()
t = opt.t + 1  # the step this update will be
c_t = math.sqrt((1 - opt.beta2) / (1 - opt.beta2**t))
a_t = opt.lr * (1 - opt.beta1) / ((1 - opt.beta1**t) * c_t)
eps_t = opt.eps / c_t
M_hand = opt.beta1 * M_hand + g
V_hand = opt.beta2 * V_hand + g * g
W_hand = W_hand - a_t * M_hand / (np.sqrt(V_hand) + eps_t)

W_ref = lin.params["W"].copy()  # reference.layer_update: the same step through the engine's Adam class
state = {"M": opt.M["params"][:n_w].reshape(W_ref.shape).copy(), "V": opt.V["params"][:n_w].reshape(W_ref.shape).copy()}
g_ref = reference.layer_update(xb, dz.astype(np.float32), W_ref, False, "adam", state, opt.lr, t=t)

twin = copy.deepcopy(block)  # the engine's own synthetic step on a copy of block 0
twin.backward(engine_dh_syn, cache0, need_dx=False)
twin.update()
W_engine = twin.layers.layers[0].params["W"]

step_size = float(np.abs(W_hand - lin.params["W"]).max())
print(f"one Adam step moves W by up to {step_size:.2e} (lr {opt.lr:g})")
assert step_size > 0, "the block should move: its synthetic gradient is not zero"
assert_close(g, g_ref, rtol=1e-4, atol=1e-6 * float(np.abs(g).max()), name="x^T dz vs reference.layer_update")
assert_close(W_hand, W_ref, rtol=1e-5, atol=1e-3 * step_size, name="W after Adam vs reference.layer_update")
assert_close(W_hand, W_engine, rtol=1e-5, atol=1e-3 * step_size, name="W after Adam vs the engine's block")
print("the fused update by hand = reference.layer_update = the engine's block.update()")

# %% [markdown]
# ## 2. `sg_predict_v1`: the naive port, one thread per output element
#
# The kernel file opens with the math and the contract; here are the two functions that make up v1, printed
# from `kernels/sg_predict.cu` as it is on disk (the line numbers are the file's).

# %%
SG_PREDICT_CU = kernel_dir() / "sg_predict.cu"


def function_lines(path, name):
    """(first line number, lines) of the definition of `name` in a .cu file, found by brace matching: it starts
    at the line naming `name(` (and the line above when the declaration is split after the attributes)."""
    lines = path.read_text().splitlines()
    start = next(i for i, s in enumerate(lines) if re.search(rf"\b{name}\s*\(", s) and not s.lstrip().startswith("//"))
    if start > 0 and ("__global__" in lines[start - 1] or lines[start - 1].startswith("template")):
        start -= 1
    depth, end = 0, start
    for end in range(start, len(lines)):
        depth += lines[end].count("{") - lines[end].count("}")
        if depth == 0 and "{" in "".join(lines[start : end + 1]):
            break
    return start + 1, lines[start : end + 1]


def show(path, name):
    first, lines = function_lines(path, name)
    for number, line in enumerate(lines, first):
        print(f"{path.name}:{number:<3d}| {line}")
    print()


show(SG_PREDICT_CU, "sg_predict_epilogue")
show(SG_PREDICT_CU, "sg_predict_v1")

# %% [markdown]
# A launch runs the kernel once per **thread**. Threads come in **blocks** of `blockDim` threads, and blocks in
# a **grid**; each thread knows its `threadIdx` (within the block) and `blockIdx` (within the grid). The launcher
# (`minidni/cuda/ops.py`) starts v1 with 16 x 16 threads per block and a grid of
# $\lceil D/16 \rceil \times \lceil B/16 \rceil$ blocks, so thread $(x, y)$ of block $(b_x, b_y)$ owns the one
# output element
#
# $$n = 16\,b_x + x, \qquad m = 16\,b_y + y, \qquad
#   \hat\delta_{mn} = \Big(\sum_{k<D_u} u_{mk} A_{kn}\Big) + C_{y_m n} + c_n .$$
#
# Threads past the edge ($m \ge B$ or $n \ge D$) return at once. Each thread reads a whole row of $u$ and a
# whole column of $A$ from global (GPU main) memory: $2 D_u$ loads for $D_u$ multiply-adds. That is the
# reference, ported, and it is slow for that reason alone.
#
# Here is exactly that, in Python: the kernel body run for every thread of the launch grid, in float32.


# %%
def sg_predict_v1_in_python(u, P, labels, h, B, Du, D, K, grid, block):
    """What the launch computes: the kernel body once per (blockIdx, threadIdx), same index arithmetic."""
    dh_syn, delta = np.full((B, D), np.nan, np.float32), np.full((B, D), np.nan, np.float32)  # NaN: never written
    for bx in range(grid[0]):
        for by in range(grid[1]):
            for tx in range(block[0]):
                for ty in range(block[1]):
                    n, m = bx * block[0] + tx, by * block[1] + ty
                    if m >= B or n >= D:
                        continue  # `return` in the kernel: this thread has no element
                    acc = np.float32(0)
                    for k in range(Du):
                        acc += u[m, k] * P[k, n]  # u[m * Du + k] * P[k * D + n]
                    s = acc + P[Du + K, n]  # + c, the last row of P
                    s += P[Du + labels[m], n]  # + C[y_m], gathered
                    dh_syn[m, n] = s
                    delta[m, n] = s * (1.0 if h[m, n] > 0 else 0.0)  # act_grad(h, ACT_RELU)
    return dh_syn, delta


grid_v1 = (math.ceil(D_H / 16), math.ceil(B1 / 16), 1)
py_dh_syn, py_delta = sg_predict_v1_in_python(h, P_sg, labels, h, B1, D_H, D_H, K, grid_v1, (16, 16, 1))
print(f"grid {grid_v1} x block (16, 16, 1) = {math.prod(grid_v1) * 256} threads for {B1 * D_H} outputs")
assert not np.isnan(py_dh_syn).any(), "some output element was owned by no thread"
assert_close(py_dh_syn, ref_dh_syn, rtol=1e-5, atol=1e-6 * scale, name="v1 in Python: dh_syn")
assert_close(py_delta, ref_delta, rtol=1e-5, atol=1e-6 * scale, name="v1 in Python: delta")
print("every output has exactly one thread, and the thread-by-thread computation equals the reference")

# %% [markdown]
# **The real kernel, on the CPU emulator.** `get_kernels("emulator")` compiles the unchanged `.cu` file with the
# C++ compiler and a header that maps the CUDA vocabulary (`blockIdx`, `__syncthreads`, ...) to C++; each CUDA
# thread runs as a fiber, blocks one after another. The call has CuPy's shape, `f(grid, block, args)`, and
# every scalar must be an explicit `np.int32` / `np.float32`: CuPy would pass a Python int as 64 bits, which an
# `int` parameter misreads, so the emulator rejects it. This is the raw launch that `ops.sg_predict` makes.

# %%
if EMULATOR:
    f_v1 = kernels.function("sg_predict", "sg_predict_v1")
    emu_dh_syn, emu_delta = np.empty((B1, D_H), np.float32), np.empty((B1, D_H), np.float32)
    f_v1(
        grid_v1,
        (16, 16, 1),
        (h, P_sg, labels, h, emu_dh_syn, emu_delta, *map(np.int32, (B1, D_H, D_H, K, 1)), np.float32(1.0)),
    )  # the ints: B, D_u, D, K, act (1 = ReLU); the float: inv_scale
    assert_close(emu_dh_syn, ref_dh_syn, rtol=1e-5, atol=1e-6 * scale, name="sg_predict_v1 (emulator): dh_syn")
    assert_close(emu_delta, ref_delta, rtol=1e-5, atol=1e-6 * scale, name="sg_predict_v1 (emulator): delta")
    print(f"{f_v1!r}: the emulated launch equals the reference")
    try:
        f_v1(grid_v1, (16, 16, 1), (h, P_sg, labels, h, emu_dh_syn, emu_delta, B1, D_H, D_H, K, 1, np.float32(1)))
        raise AssertionError("the emulator accepted Python ints for int parameters")
    except LaunchError as e:  # names the parameter and says what to pass
        print(f"Python ints are refused: LaunchError: {str(e).splitlines()[0]}")
else:
    skipped("the emulated launch of sg_predict_v1", EMULATOR_REASON)

# %% [markdown]
# ## 3. Faster: tiles in shared memory (v2), register blocks (v3)
#
# Each `.cu` file's header says what every version changes and why; `kernels/tiles.cuh` holds the tiled product
# they all share. The headers:

# %%
for path, marker in ((SG_PREDICT_CU, "// Versions"), (kernel_dir() / "tiles.cuh", "// Why tiles")):
    lines = path.read_text().splitlines()
    first = next(i for i, s in enumerate(lines) if s.startswith(marker))
    last = next(i for i in range(first, len(lines)) if not lines[i].startswith("//") or lines[i] == "//")
    print("\n".join(f"{path.name}:{i + 1:<3d}| {lines[i]}" for i in range(first, last)) + "\n")

# %% [markdown]
# The idea, for an output $C = U P_A$ of $M \times N$ with reduction length $K_r$ (here $M = B$, $N = D$,
# $K_r = D_u$): a thread block owns a $B_M \times B_N$ **tile** of the output. It walks the reduction in slices of
# $B_K$: all its threads together copy a $B_M \times B_K$ slice of $U$ and a $B_K \times B_N$ slice of $P_A$ into
# **shared memory** (fast, on-chip, shared by the block), wait at a barrier (`__syncthreads`), and every thread
# reads the slices from there. Each element of $U$ is then loaded from global memory once per *tile column*
# instead of once per *output*:
#
# $$\text{global loads} = \underbrace{M K_r \lceil N/B_N \rceil}_{U} + \underbrace{K_r N \lceil M/B_M \rceil}_{P_A}
#   \quad\text{instead of}\quad 2 M N K_r \quad\text{(v1)},$$
#
# $B_N$ (or $B_M$) times fewer: 16x for v2's 16 x 16 tiles, 64x for v3's 64 x 64. v3 also gives each thread a
# $T_M \times T_N = 4 \times 4$ block of outputs: per step of $k$ it reads $T_M + T_N = 8$ values from shared
# memory and does $T_M T_N = 16$ multiply-adds from registers, 0.5 shared reads per multiply-add instead of v2's
# 2. Both versions use 256 threads per block: $(B_M/T_M)(B_N/T_N) = 256$.
#
# The tiled functions, from the file:

# %%
show(SG_PREDICT_CU, "sg_predict_tiled")
show(SG_PREDICT_CU, "sg_predict_v3")
show(kernel_dir() / "tiles.cuh", "tile_product")

# %% [markdown]
# The same loop in NumPy, one thread block at a time, with counters: how many elements each block stages from
# global memory, and how many shared-memory reads and multiply-adds its threads make (including the zero padding
# at the edges, which the kernel also multiplies). The check: the product is right, and the counters equal the
# closed forms above.

# %%
# version -> (BM, BN, BK, TM, TN), as in kernels/sg_predict.cu
TILES = {2: (16, 16, 16, 1, 1), 3: (64, 64, 8, 4, 4)}


def tiled_product_counted(U, PA, BM, BN, BK, TM, TN):
    """U (M, Kr) @ PA (Kr, N) as tile_product computes it, block by block; returns (product, counters)."""
    M, Kr = U.shape
    N = PA.shape[1]
    threads = (BM // TM) * (BN // TN)
    out = np.zeros((M, N), np.float64)
    count = {"global": 0, "shared": 0, "fma": 0}
    for by in range(math.ceil(M / BM)):
        for bx in range(math.ceil(N / BN)):
            m0, n0 = by * BM, bx * BN
            acc = np.zeros((BM, BN))  # all threads' accumulators together
            for k0 in range(0, Kr, BK):
                As = np.zeros((BM, BK))  # shared memory; out-of-range elements are staged as 0
                Bs = np.zeros((BK, BN))
                a_part, b_part = U[m0 : m0 + BM, k0 : k0 + BK], PA[k0 : k0 + BK, n0 : n0 + BN]
                As[: a_part.shape[0], : a_part.shape[1]] = a_part
                Bs[: b_part.shape[0], : b_part.shape[1]] = b_part
                count["global"] += a_part.size + b_part.size  # only in-range elements are loaded
                # __syncthreads(); then each thread, for each k of the slice: TM + TN shared reads, TM*TN FMAs
                count["shared"] += threads * BK * (TM + TN)
                count["fma"] += threads * BK * TM * TN
                acc += As @ Bs
                # __syncthreads() before the next slice overwrites As, Bs
            rows, cols = min(BM, M - m0), min(BN, N - n0)
            out[m0 : m0 + rows, n0 : n0 + cols] = acc[:rows, :cols]
    return out, count


def global_loads(version, M, N, Kr):
    """Elements of the two operands read from global memory, the closed forms of the text."""
    if version == 1:
        return 2 * M * N * Kr
    BM, BN = TILES[version][:2]
    return M * Kr * math.ceil(N / BN) + Kr * N * math.ceil(M / BM)


rng = np.random.default_rng(0)
for M_, Kr_, N_ in [(19, 70, 33), (256, 256, 256)]:
    U_, PA_ = rng.standard_normal((M_, Kr_)), rng.standard_normal((Kr_, N_))
    for v, (BM, BN, BK, TM, TN) in TILES.items():
        prod, count = tiled_product_counted(U_, PA_, BM, BN, BK, TM, TN)
        assert_close(prod, U_ @ PA_, rtol=1e-10, atol=1e-10, name=f"tiled product v{v}")
        assert count["global"] == global_loads(v, M_, N_, Kr_), (count, global_loads(v, M_, N_, Kr_))
        assert (BM // TM) * (BN // TN) == 256, "both tiled versions run 256 threads per block"
        n_blocks = math.ceil(M_ / BM) * math.ceil(N_ / BN)
        assert count["fma"] == n_blocks * BM * BN * math.ceil(Kr_ / BK) * BK  # every tile element, padded k
        print(
            f"M x Kr x N = {M_} x {Kr_} x {N_}, v{v}: global loads {count['global']:>9,d} "
            f"(v1: {global_loads(1, M_, N_, Kr_):>10,d}, {global_loads(1, M_, N_, Kr_) / count['global']:4.1f}x "
            f"fewer); shared reads per FMA {count['shared'] / count['fma']:.2f}"
        )

        if (M_, Kr_, N_) == (256, 256, 256):  # the shape the text quotes
            assert global_loads(1, M_, N_, Kr_) == {2: 16, 3: 64}[v] * count["global"], "16x / 64x fewer loads"
            assert count["shared"] / count["fma"] == {2: 2.0, 3: 0.5}[v], "shared reads per multiply-add"

# %% [markdown]
# At $256 \times 256 \times 256$ the ratios are exactly 16 and 64 (checked); at the odd shape less, because the
# partial tiles at the edges load their in-range elements but own fewer outputs.
#
# ### The picture: who loads what
#
# Output $\hat\delta$ ($B \times D$, here $128 \times 128$) in the middle, $u$ ($B \times D_u$) on the left, $A$
# ($D_u \times D$) on top. v1: one thread (red) reads a full row and column. v2 and v3: one thread block owns a
# tile (blue) and stages the slices of $u$ and $A$ it needs, $B_K$ columns / rows at a time (dark: the slice
# in shared memory now); in v3 one thread owns a $4 \times 4$ register block (red) of its 64 x 64 tile.

# %%
import matplotlib  # noqa: E402

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # a script writes files; a notebook also shows the figure inline
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


def draw_tiles(ax, version, M=128, N=128, Kr=64, gap=8):
    """Matrix coordinates: x = column, y = row (downwards). u at the left, A on top, the output in the middle."""
    box = {"fill": False, "lw": 1.2, "ec": "k"}
    ax.add_patch(Rectangle((-Kr - gap, 0), Kr, M, **box))  # u (M, Kr)
    ax.add_patch(Rectangle((0, -Kr - gap), N, Kr, **box))  # A (Kr, N)
    ax.add_patch(Rectangle((0, 0), N, M, **box))  # output (M, N)
    step = 16 if version in (1, 2) else 64  # block grid lines: v1's 16 x 16 thread blocks, tiles otherwise
    for s in range(step, N, step):
        ax.plot([s, s], [0, M], c="0.8", lw=0.6)
    for s in range(step, M, step):
        ax.plot([0, N], [s, s], c="0.8", lw=0.6)
    if version == 1:
        m, n = 40, 72  # one thread's element
        ax.add_patch(Rectangle((-Kr - gap, m), Kr, 1, color="C3"))  # its row of u
        ax.add_patch(Rectangle((n, -Kr - gap), 1, Kr, color="C3"))  # its column of A
        ax.add_patch(Rectangle((n - 1, m - 1), 3, 3, color="C3"))
        title = "v1: one thread per output\nreads 2 D_u floats from global memory"
        caption = "red: one thread's output element,\nand the row of u and column of A it reads"
    else:
        BM, BN, BK, TM, TN = TILES[version]
        m0, n0 = (32, 64) if version == 2 else (64, 64)
        k0 = BK * 2  # the slice being staged
        ax.add_patch(Rectangle((n0, m0), BN, BM, color="C0", alpha=0.35))  # the block's tile
        ax.add_patch(Rectangle((-Kr - gap, m0), Kr, BM, color="C0", alpha=0.2))  # its strip of u
        ax.add_patch(Rectangle((n0, -Kr - gap), BN, Kr, color="C0", alpha=0.2))  # its strip of A
        ax.add_patch(Rectangle((-Kr - gap + k0, m0), BK, BM, color="C0", alpha=0.8))  # slice in shared memory
        ax.add_patch(Rectangle((n0, -Kr - gap + k0), BN, BK, color="C0", alpha=0.8))
        if version == 3:
            ax.add_patch(Rectangle((n0 + 5 * TN, m0 + 6 * TM), TN, TM, color="C3"))  # one thread's 4 x 4 outputs
        title = (
            f"v{version}: {BM} x {BN} tiles, slices of {BK}" + (f", {TM} x {TN} per thread" if TM > 1 else "")
        ) + f"\neach global element loaded once per block ({BN}x fewer)"
        caption = "light: one block's tile and the strips it reads;\ndark: the slices in shared memory now"
        if version == 3:
            caption += "; red: one thread's 4 x 4 outputs"
    ax.text(-Kr / 2 - gap, M + 6, "u (B x D_u)", ha="center", va="top", fontsize=8)
    ax.text(N + 3, -Kr / 2 - gap, "A (D_u x D)", ha="left", va="center", fontsize=8)
    ax.text(N / 2, M + 6, "dh_syn (B x D)", ha="center", va="top", fontsize=8)
    ax.text((N - Kr - gap) / 2, M + 16, caption, ha="center", va="top", fontsize=9)
    ax.set(xlim=(-Kr - gap - 2, N + 40), ylim=(M + 34, -Kr - gap - 2), aspect="equal", title=title)
    ax.axis("off")


fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
for ax, v in zip(axes, (1, 2, 3)):
    draw_tiles(ax, v)
if "ipykernel" in sys.modules:
    plt.show()
save_figure(fig, OUT / FIGURES[0])
print(f"wrote {OUT / FIGURES[0]}")

# %% [markdown]
# ## 4. Compiled by NVRTC, run on the emulator
#
# **NVRTC** compiles each file exactly as CuPy will on a GPU (`--std=c++17 -ftz=true`, for sm_80 and sm_90)
# and, with `--ptxas-options=-v`, reports what each kernel uses per thread and per block. Registers are the
# scarce resource: a kernel that needs more than it gets **spills** them to (slow) local memory. The static
# shared memory of a tiled version is its two slices, $4 (B_K B_M + B_K B_N)$ bytes.
# (NVRTC, not nvcc, is the compile gate: nvcc sees host headers and accepts e.g. `INFINITY`, which NVRTC and so
# CuPy reject.)

# %%
if NVRTC_VERSION:
    files = [SG_PREDICT_CU, kernel_dir() / "layer_update.cu"]
    rows = report.resource_table(archs=("sm_80", "sm_90"), files=files)
    print(f"NVRTC {NVRTC_VERSION[0]}.{NVRTC_VERSION[1]}, CuPy's options:\n")
    print(f"{'kernel':24s} {'arch':6s} {'registers':>9s} {'shared B':>9s} {'spills B':>9s}")
    for r in rows:
        spills = r["spill_stores"] + r["spill_loads"]
        print(f"{r['kernel']:24s} {r['arch']:6s} {r['registers']:9d} {r['shared_bytes']:9d} {spills:9d}")
    for r in rows:
        v = int(r["kernel"][-1])
        want_shared = 0 if v == 1 else 4 * (TILES[v][2] * TILES[v][0] + TILES[v][2] * TILES[v][1])
        assert r["shared_bytes"] == want_shared, f"{r['kernel']} [{r['arch']}]: shared {r['shared_bytes']} B"
        assert r["spill_stores"] == r["spill_loads"] == 0, f"{r['kernel']} [{r['arch']}] spills registers"
    assert {r["kernel"] for r in rows} >= {f"sg_predict_v{v}" for v in (1, 2, 3)}
    print("\nno kernel spills; each tiled version's shared memory is exactly its two slices")
else:
    skipped("the NVRTC resource report", NVRTC_REASON)

# %% [markdown]
# **Every version equals the reference, on the emulator.** `ops.sg_predict(..., version=v)` validates the
# arrays, picks the launch geometry of version v and launches it; we compare with `reference.sg_predict` on
# shapes that are not multiples of the tiles. Floats differ in the last bits (another summation order; a GPU
# would also contract multiply-adds), so the tolerance grows with the reduction length. The same for
# `layer_update_adam` (section 1's $g = x^\top\partial z$ and Adam step in one kernel), compared with
# `reference.layer_update`: here the *batch* is the reduction.


# %%
def tol(reduction):
    return 2e-6 * math.sqrt(max(1, reduction)) * 8  # float32, error growing with the reduction length


def adam_state(P, seed):
    """An Adam optimiser over a flat copy of P with nonzero moments, begun: (its P view, its OptimizerStep, opt)."""
    r = np.random.default_rng(seed)
    opt_ = Adam({"params": P.ravel().copy()}, lr=1e-3)
    opt_.M["params"][...] = r.standard_normal(P.size).astype(np.float32) * 1e-2
    opt_.V["params"][...] = np.abs(r.standard_normal(P.size)).astype(np.float32) * 1e-4 + 1e-6
    opt_.begin_step()
    return opt_.params["params"].reshape(P.shape), ops.optimizer_step_of(opt_, 0, P.size, P.shape), opt_


version_errors = {}  # (kernel, shape) -> [max relative error of v1, v2, v3]
if EMULATOR:
    for shape in SHAPES:
        B_, Du_, D_ = shape
        r = np.random.default_rng(1)
        u_ = r.standard_normal((B_, Du_)).astype(np.float32)
        h_ = np.maximum(r.standard_normal((B_, D_)), 0).astype(np.float32)
        P_ = (r.standard_normal((Du_ + K + 1, D_)) * 0.1).astype(np.float32)
        y_ = r.integers(0, K, B_).astype(np.int32)
        want_syn, want_delta = reference.sg_predict(u_, P_, y_, K, h_, reference.ACTS["relu"])
        errs = []
        for v in ops.VERSIONS["sg_predict"]:
            got_syn, got_delta = ops.sg_predict(kernels, u_, P_, y_, K, h_, reference.ACTS["relu"], version=v)
            assert_close(got_syn, want_syn, rtol=tol(Du_), atol=tol(Du_), name=f"sg_predict_v{v} {shape} dh_syn")
            assert_close(got_delta, want_delta, rtol=tol(Du_), atol=tol(Du_), name=f"sg_predict_v{v} {shape} delta")
            errs.append(float(np.abs(got_syn - want_syn).max() / np.abs(want_syn).max()))
        version_errors["sg_predict", shape] = errs

        # layer_update_adam: x (B, D_u) is the layer input, delta (B, D) its output gradient, P = [W; b]
        x_, d_ = u_, (r.standard_normal((B_, D_)) * 0.1).astype(np.float32)
        P0 = (r.standard_normal((Du_ + 1, D_)) * 0.1).astype(np.float32)
        _, _, opt_start = adam_state(P0, seed=2)  # the moments every version starts from
        st = {k: getattr(opt_start, k)["params"].reshape(P0.shape).copy() for k in ("M", "V")}
        P_want = P0.copy()
        reference.layer_update(x_, d_, P_want, True, "adam", st, 1e-3, t=1)  # updates P_want and st in place
        errs = []
        for v in ops.VERSIONS["layer_update"]:
            P_got, step_, opt_ = adam_state(P0, seed=2)  # a fresh copy of the same state for each version
            ops.layer_update(kernels, x_, d_, P_got, True, step_, version=v)
            assert_close(P_got, P_want, rtol=tol(B_), atol=tol(B_), name=f"layer_update_adam_v{v} {shape} P")
            assert_close(step_.state[0], st["M"], rtol=tol(B_), atol=tol(B_), name=f"layer_update_adam_v{v} M")
            assert_close(step_.state[1], st["V"], rtol=tol(B_), atol=tol(B_), name=f"layer_update_adam_v{v} V")
            errs.append(float(np.abs(P_got - P_want).max() / np.abs(P_want - P0).max()))
        version_errors["layer_update_adam", shape] = errs
    print("max |kernel - reference| (relative to the reference's largest entry; layer_update: to the step):")
    for (name, shape), errs in version_errors.items():
        print(f"  {name:18s} B, D_u, D = {shape!s:16s} " + "  ".join(f"v{v} {e:.1e}" for v, e in enumerate(errs, 1)))
    print("every version of sg_predict and layer_update_adam equals its NumPy reference within float32 tolerance")
else:
    skipped("running the kernel versions on the emulator", EMULATOR_REASON)

# %% [markdown]
# ## 5. Memory traffic, on paper
#
# **How fast each version runs is not measured here: there is no GPU.** The emulator's wall time says nothing
# about a GPU: it runs one CUDA thread at a time and every barrier costs a context switch, so its timings rank
# the versions by the emulator's costs, not a GPU's. On a machine with a GPU, `python -m minidni bench --backend
# cupy` times every version against the unfused CuPy path, and the whole step. What can be counted without a GPU
# is what each version must move.
#
# **One kernel.** `sg_predict` at the FCN3 benchmark's shape ($B = D_u = D = 256$, $K = 10$). Global bytes are
# the operand loads of the product (the closed forms of section 3; caches ignored, so v1's count is what it would
# cost if no cache absorbed its repeated reads), plus the epilogue, the same for every version: per output it
# reads $c$, $C[y]$, $h$ and the label and writes $\hat\delta$ and $\delta$. The floor is every operand read once
# and every result written once: the line `traffic.py` counts for `sg_predict` in a fused step.

# %%
FP32 = 4
B_f, D_f = 256, 256
epilogue_bytes = B_f * D_f * (3 * FP32 + 4 + 2 * FP32)  # reads c, C[y], h, label (int32); writes dh_syn, delta
kernel_bytes = {v: FP32 * global_loads(v, B_f, D_f, D_f) + epilogue_bytes for v in (1, 2, 3)}
fused_ops = traffic.fused_step(B=B_f, d_in=784, D=D_f, K=K)
sg_line = next(o for o in fused_ops if o["op"] == "block 1: sg_predict (+ReLU')")
floor_bytes = sg_line["read"] + sg_line["write"]
# the floor by hand: u, P = [A; C; c], h, labels read once; dh_syn and delta written once
assert floor_bytes == FP32 * (B_f * D_f + (D_f + K + 1) * D_f + B_f * D_f) + 4 * B_f + 2 * FP32 * B_f * D_f
for v, nbytes in kernel_bytes.items():
    print(f"sg_predict v{v}: {nbytes / 1e6:8.2f} MB through global memory ({nbytes / floor_bytes:5.1f}x the floor)")
print(f"floor (each operand once):  {floor_bytes / 1e6:6.2f} MB")
reads_per_fma = {1: (2.0, 0.0), 2: (2 / 16, 2.0), 3: (2 / 64, 0.5)}  # (global, shared) reads per multiply-add
assert kernel_bytes[1] > kernel_bytes[2] > kernel_bytes[3] > floor_bytes
assert [round(b / 1e6, 1) for b in (*kernel_bytes.values(), floor_bytes)] == [135.8, 10.0, 3.7, 1.3], kernel_bytes

# %% [markdown]
# **One training step.** `minidni/cuda/traffic.py` lists every launch of one cDNI step of FCN3 (784 -> 256 ->
# 256 -> 10, batch 256, Adam), unfused as the engine's array ops run on CuPy (one launch per array operation)
# and fused as `minidni/cuda/fused.py` runs it, with the bytes each reads and writes (the roofline count: every
# operand once per launch, caches ignored). Grouped by what the bytes are for:

# %%
CATEGORY_WORDS = {  # category -> words in an op's name (traffic.py's names), checked in this order
    "weight gradients + optimiser steps": ("Adam", "adam", "dW", "dP", "e = dh_syn", "update"),
    "batch norm + ReLU": ("batch norm", "bn_", "running", "ReLU"),
    "SG prediction + mask": ("sg_predict", "dh_syn", "one-hot", "concatenate", "+ c", "ReLU backward"),
}
OTHER = "forward products, dx, softmax, other"


def category(op):
    """Which part of the step an op of traffic.py belongs to; ReLU backward (the mask) counts with the SG."""
    name = op["op"].split(": ", 1)[-1]
    if "ReLU backward" in name:
        return "SG prediction + mask"
    return next((cat for cat, words in CATEGORY_WORDS.items() if any(w in name for w in words)), OTHER)


CATEGORIES = [*CATEGORY_WORDS, OTHER]
step_mb = {}
for path_name, op_list in (("unfused", traffic.unfused_step(256, 784, 256, K)), ("fused", fused_ops)):
    per = {cat: 0.0 for cat in CATEGORIES}
    for o in op_list:
        per[category(o)] += (o["read"] + o["write"]) / 1e6
    step_mb[path_name] = per
    tot = traffic.totals(op_list)
    assert abs(sum(per.values()) - tot["MB"]) < 0.01, "the categories must add up to the total"
    print(
        f"{path_name:8s} {tot['MB']:6.1f} MB, {tot['launches']:3d} launches ({tot['kernel_launches']} of them "
        f"minidni kernels):  " + ", ".join(f"{cat} {mb:.1f}" for cat, mb in per.items())
    )
cmp = traffic.compare(B=256, d_in=784, D=256, K=K)
print(f"fused moves {cmp['bytes_ratio']}x fewer bytes and makes {cmp['launch_ratio']}x fewer launches (on paper)")
assert cmp["fused"]["MB"] < cmp["unfused"]["MB"] and cmp["fused"]["launches"] < cmp["unfused"]["launches"]
assert (cmp["unfused"]["MB"], cmp["unfused"]["launches"], cmp["fused"]["MB"], cmp["fused"]["launches"]) == (
    73.42, 155, 26.19, 25), cmp  # fmt: skip
assert (cmp["bytes_ratio"], round(cmp["launch_ratio"])) == (2.8, 6), "about 2.8x fewer bytes, 6x fewer launches"

# %% [markdown]
# The picture: bytes per version of `sg_predict` (log scale) with the floor; operand reads per multiply-add, by
# memory; and one training step, unfused against fused.

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
ax = axes[0]
ax.bar([f"v{v}" for v in kernel_bytes], [b / 1e6 for b in kernel_bytes.values()], color=["C3", "C1", "C0"])
ax.axhline(floor_bytes / 1e6, ls="--", c="k", lw=1)
ax.annotate("floor: each operand once", (-0.4, floor_bytes / 1e6), ha="left", va="bottom", fontsize=8)
for i, b in enumerate(kernel_bytes.values()):
    ax.annotate(f"{b / 1e6:.1f} MB", (i, b / 1e6), ha="center", va="bottom", fontsize=8)
ax.set(yscale="log", ylabel="MB through global memory (caches ignored)", title="sg_predict, B = D_u = D = 256")

ax = axes[1]
xs = np.arange(3)
glob = [reads_per_fma[v][0] for v in (1, 2, 3)]
shar = [reads_per_fma[v][1] for v in (1, 2, 3)]
ax.bar(xs - 0.2, glob, 0.4, label="global memory", color="C3")
ax.bar(xs + 0.2, shar, 0.4, label="shared memory", color="C0")
for x_, gv, sv in zip(xs, glob, shar):
    ax.annotate(f"{gv:.3g}", (x_ - 0.2, gv), ha="center", va="bottom", fontsize=8)
    ax.annotate(f"{sv:.3g}", (x_ + 0.2, sv), ha="center", va="bottom", fontsize=8)
ax.set(
    xticks=xs, xticklabels=["v1", "v2", "v3"], ylabel="operand reads per multiply-add", title="where reads come from"
)
ax.legend(fontsize=8)

ax = axes[2]
bottom = np.zeros(2)
for i, cat in enumerate(CATEGORIES):
    vals = np.array([step_mb["unfused"][cat], step_mb["fused"][cat]])
    ax.bar(["unfused\n(engine ops on CuPy)", "fused\n(minidni kernels)"], vals, bottom=bottom, label=cat, color=f"C{i}")
    bottom += vals
for i, p in enumerate(("unfused", "fused")):
    ax.annotate(f"{cmp[p]['MB']:.1f} MB, {cmp[p]['launches']} launches", (i, bottom[i]), ha="center", va="bottom")
ax.set(ylabel="MB per training step (on paper)", title="one cDNI step, FCN3 784-256-256-10, batch 256")
ax.set_ylim(0, bottom.max() * 1.15)
ax.legend(fontsize=8)
fig.suptitle("Counted on paper, not measured: no GPU timings exist for these (python -m minidni bench --backend cupy)")
if "ipykernel" in sys.modules:
    plt.show()
save_figure(fig, OUT / FIGURES[1])
print(f"wrote {OUT / FIGURES[1]}")

# %% [markdown]
# ## 6. The whole fused DNI step, on the emulator
#
# `use_kernels(net, kernels)` makes `net.train_step` run `minidni.cuda.fused.FusedDNIStep`: the same step as the
# engine's `minidni.dni.steps.dni_step`, in the same order, with each piece computed by a kernel (`linear_forward`,
# batch norm, `sg_predict`, `layer_update_adam`, `sg_update_adam`, `softmax_xent`, `adam_step`); the few products
# that stay library calls (the $\partial x = \partial z W^\top$ that becomes the lower module's target) run on NumPy
# here and on cuBLAS on a GPU. With the emulator, that is the real kernels training a real network, on any machine.
#
# **Check: one fused step = one engine step.** From the same state (section 1's network, after its warm-up), the
# engine and a deep copy running the kernels take the same batch; then every parameter, Adam moment and
# batch-norm statistic must agree to float32 tolerance, for the fastest kernels and for all-v1 and all-v2.

# %%
if EMULATOR:
    base = small_fcn3()
    for xb_, yb_ in random_batches(5, B1, D_IN, seed=1):
        base.train_step(xb_, yb_)
    for v in (3, 2, 1):
        engine, fused = copy.deepcopy(base), copy.deepcopy(base)
        use_kernels(fused, kernels, {op: v for op in ("linear_forward", "sg_predict", "layer_update", "sg_update")})
        want, got = engine.train_step(xb, yb), fused.train_step(xb, yb)
        assert_close(got["loss"], want["loss"], rtol=1e-5, name="loss")
        assert_close(np.array(got["sg_loss"]), np.array(want["sg_loss"]), rtol=1e-4, name="SG losses")
        mine, theirs = fused.state_arrays(), engine.state_arrays()
        worst = 0.0
        for k in theirs:
            assert_close(mine[k], theirs[k], rtol=2e-5, atol=2e-5, name=f"kernels v{v}: {k}")
            worst = max(worst, float(np.abs(mine[k] - theirs[k]).max()))
        print(
            f"kernels v{v}: loss {got['loss']:.6f} (engine {want['loss']:.6f}); {len(theirs)} state arrays, "
            f"max |fused - engine| = {worst:.1e}"
        )
        assert len(theirs) == 26, "FCN3 cDNI: every parameter, Adam moment and batch-norm statistic"
else:
    skipped("the fused step on the emulator", EMULATOR_REASON)

# %% [markdown]
# **Training through the kernels.** An FCN3 (784 -> `HIDDEN` -> `HIDDEN` -> 10, cDNI, Adam) trained twice from
# the same initialisation on the same batches: once by the engine, once through the emulated kernels. The data:
# MNIST rows (from the local cache, or fetched into it as `python -m minidni data mnist` does); only when asked for
# - in tiny mode (the test suite has no network) or with `MINIDNI_STANDIN=1` - a generated stand-in (ten noisy
# class prototypes), and then the titles say so. The two runs are the same computation with different float32
# rounding, so their losses should stay together; they need not be bit for bit equal.


# %%
def stand_in(n, seed):
    """n rows (n, 784) float32 and labels (n,): ten fixed random 20 x 20 prototypes plus Gaussian noise, in the
    middle of a 28 x 28 frame whose border is constant, like MNIST's blank border."""
    inner = np.zeros((28, 28), bool)
    inner[4:24, 4:24] = True
    inner = inner.ravel()  # (784,)
    prototypes = np.random.default_rng(1234).standard_normal((K, int(inner.sum()))).astype(np.float32)
    r = np.random.default_rng(seed)
    y = r.integers(0, K, n)
    x = np.full((n, 784), -0.42, np.float32)  # MNIST's standardised blank pixel
    x[:, inner] = prototypes[y] + 2.0 * r.standard_normal((n, int(inner.sum())))
    return x, y


if STANDIN:
    source = "stand-in"
    why = "MINIDNI_TINY=1: the test suite has no network" if TINY else "MINIDNI_STANDIN=1"
    print(f"STAND-IN DATA, not MNIST ({why}): generated class prototypes; no number below is an MNIST result")
    x_tr, y_tr = stand_in(N_TRAIN, seed=0)
    x_te, y_te = stand_in(N_TEST, seed=10_000)
else:
    source = "MNIST"
    try:
        ds = load_dataset("mnist")  # the cache, or fetched into it (the library's sources)
    except DataError as e:
        raise SystemExit(
            f"MNIST could not be loaded:\n{e}\nFetch it with `python -m minidni data mnist`, or run this tutorial "
            "on a generated stand-in with MINIDNI_STANDIN=1."
        ) from e
    pick = np.random.default_rng(0).permutation(len(ds.x_train))[:N_TRAIN]
    x_tr, y_tr = ds.x_train[pick], ds.y_train[pick]  # (N_TRAIN, 784), (N_TRAIN,)
    x_te, y_te = ds.x_test[:N_TEST], ds.y_test[:N_TEST]
print(f"{source}: train {x_tr.shape} {x_tr.dtype}, test {x_te.shape}")


def fcn3(seed=0):
    return build_network(depth=3, mode="cdni", d_in=784, hidden=HIDDEN, n_classes=K, seed=seed, lr=2e-3, sg_lr=1e-4)


RUNS = ("engine", "kernels (emulator)", "engine, rows permuted")
curves, test_error, seconds = {}, {}, {}  # run -> (losses (steps,), SG losses (steps, 2)); test error %; seconds
if EMULATOR:
    for name in RUNS:
        run = fcn3()
        if name == "kernels (emulator)":
            use_kernels(run, kernels)
        shuffle = np.random.default_rng([0, 1])  # the same batches for every run
        permute = np.random.default_rng(7)  # the control: the same rows in another order
        losses, sg_losses = [], []
        t0 = time.perf_counter()
        for epoch in range(EPOCHS):
            for xb_, yb_ in iterate_minibatches(x_tr, y_tr, BATCH, rng=shuffle, drop_last=True):
                if name == "engine, rows permuted":
                    order = permute.permutation(len(yb_))
                    xb_, yb_ = xb_[order], yb_[order]
                out = run.train_step(xb_, yb_)
                losses.append(out["loss"])
                sg_losses.append(out["sg_loss"])
        seconds[name] = time.perf_counter() - t0
        curves[name] = (np.array(losses), np.array(sg_losses))
        test_error[name] = run.error_pct(x_te, y_te)
    n_steps = len(curves["engine"][0])
    assert n_steps == EPOCHS * (N_TRAIN // BATCH), "every epoch: the full batches of N_TRAIN rows"
    window = max(1, n_steps // 5)  # first and last fifth of the steps
    for name in RUNS:
        losses = curves[name][0]
        print(
            f"{name:22s} {n_steps} steps: training loss {losses[:window].mean():.3f} (first {window}) -> "
            f"{losses[-window:].mean():.3f} (last {window}), test error {test_error[name]:.1f}% "
            f"({seconds[name]:.1f}s on the CPU)"
        )
    eng_loss = curves["engine"][0]
    gap = np.abs(curves["kernels (emulator)"][0] - eng_loss)  # (steps,)
    gap_control = np.abs(curves["engine, rows permuted"][0] - eng_loss)
    for what, d in (("kernels", gap), ("rows permuted", gap_control)):
        parted = int(np.argmax(d > 1e-5)) + 1 if (d > 1e-5).any() else None
        print(
            f"|loss({what}) - loss(engine)|: step 1 {d[0]:.1e}, median {np.median(d):.1e}, max {d.max():.1e}; "
            f"first above 1e-5 at step {parted}"
        )
    assert gap[0] < 1e-5, "the first step starts from the same state: the losses must agree to float32 rounding"
    emu_loss = curves["kernels (emulator)"][0]
    assert emu_loss[-window:].mean() < emu_loss[:window].mean(), "training through the kernels should lower the loss"
    # the kernels part from the engine no more than the engine parts from itself when only the rounding changes
    assert np.median(gap) < 10 * np.median(gap_control) + 1e-6, (np.median(gap), np.median(gap_control))
    assert abs(test_error["engine"] - test_error["kernels (emulator)"]) < 5.0, test_error
else:
    skipped("training through the emulated kernels", EMULATOR_REASON)

# %% [markdown]
# **Why the runs part after a few steps, and why that is not a kernel bug.** For the first steps the kernels'
# loss agrees with the engine's to float32 rounding; then the gap jumps by orders of magnitude and stays there
# (printed above). The
# control run, the *engine itself* with the rows of every batch in another order (the same math, summed in
# another order), parts from the engine at the same time and by as much. The cause is Adam. Its first step is
# $a_t\, g / (|g| + \epsilon_t) pprox \mathrm{lr} \cdot \mathrm{sign}(g)$ whatever the size of $g$, and some
# gradients are zero in exact arithmetic: a weight whose input pixel has the same value in every row of the batch
# (MNIST's blank border) has $g_{jk} = x_j \sum_b \partial z_{bk}$, and batch norm's backward makes every column
# of $\partial z$ sum to exactly zero. In float32 that $g$ is rounding noise, and Adam turns it into a step of up
# to lr whose sign the rounding picks; so does any other gradient that is tiny next to its rounding error. Block 0
# takes its first step at step 3 (its module predicts zero until it has had a target), so replay three steps and
# look at where block 0's weights parted: how many differ by more than lr/20, what share of them read a pixel
# constant across the batch, and their median $|g|$ against that of all weights (printed below). At the default
# size on MNIST the check asserts that the weights that part have a $|g|$ more than ten times below the median
# and that nearly all of them (over 90%) read a constant pixel.

# %%
if EMULATOR:
    nets3 = {"engine": fcn3(), "kernels": fcn3()}
    use_kernels(nets3["kernels"], kernels)
    first3 = []
    for xb_, yb_ in iterate_minibatches(x_tr, y_tr, BATCH, rng=np.random.default_rng([0, 1]), drop_last=True):
        first3.append((xb_, yb_))  # the training runs' first three batches
        if len(first3) == 3:
            break
    W_start = nets3["engine"].hidden[0].layers.layers[0].params["W"].copy()  # (784, H)
    for step, (xb_, yb_) in enumerate(first3, 1):
        for run in nets3.values():
            run.train_step(xb_, yb_)
        W_now = nets3["engine"].hidden[0].layers.layers[0].params["W"]
        assert np.array_equal(W_now, W_start) == (step < 3), "block 0 takes its first step at step 3"
    W_e, W_k = (nets3[n].hidden[0].layers.layers[0].params["W"] for n in ("engine", "kernels"))  # (784, H)
    opt0 = nets3["engine"].hidden[0].layers.optimizer
    g_abs = np.sqrt(opt0.V["params"][: W_e.size].reshape(W_e.shape))  # V = g^2 after block 0's only nonzero step
    parted = np.abs(W_e - W_k) > opt0.lr / 20  # (784, H)
    constant_pixel = np.ptp(first3[2][0], axis=0) == 0  # (784,): the same value in every row of step 3's batch
    print(
        f"block 0's W after 3 steps: {int(parted.sum())} of {parted.size} weights differ by more than lr/20 "
        f"(max {np.abs(W_e - W_k).max():.1e}, lr {opt0.lr:g})"
    )
    if parted.any():
        print(
            f"  their |g| at step 3: median {np.median(g_abs[parted]):.1e}, against {np.median(g_abs):.1e} for all "
            f"weights; {constant_pixel[np.nonzero(parted)[0]].mean():.0%} of them read a pixel that is constant "
            f"across the batch ({int(constant_pixel.sum())} of 784 pixels are)"
        )
        assert np.median(g_abs[parted]) < 0.1 * np.median(g_abs), "the weights that part should be those with tiny g"
        if not STANDIN:  # MNIST's blank border
            share = constant_pixel[np.nonzero(parted)[0]].mean()
            assert share > 0.9, f"on MNIST nearly every weight that parts should read a constant pixel: {share:.0%}"
else:
    skipped("replaying the first steps", EMULATOR_REASON)

# %% [markdown]
# A one-step comparison from the same state (above) is therefore the test of the kernels; a comparison of whole
# trajectories can only be statistical: the same loss curve and test error, within the noise that the
# row-permuted control shows.
#
# The picture: training loss per step of the runs, how far each moves from the engine's, and the SG modules'
# losses.

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
if curves:
    steps = np.arange(1, n_steps + 1)
    styles = {"engine": ("-", "C0"), "kernels (emulator)": ("--", "C1"), "engine, rows permuted": (":", "C7")}
    for name, (style, color) in styles.items():
        axes[0].plot(steps, curves[name][0], style, color=color, label=f"{name}: test error {test_error[name]:.1f}%")
    for j in range(2):
        for name in ("engine", "kernels (emulator)"):
            style = styles[name][0]
            axes[2].plot(steps, curves[name][1][:, j], style, color=f"C{2 + j}", label=f"{name}, module {j}")
    axes[0].set(xlabel="step", ylabel="training loss (batch mean CE)", title=f"FCN3 cDNI on {source}, {HIDDEN} units")
    axes[0].legend(fontsize=8)
    axes[1].semilogy(steps, np.maximum(gap, 1e-9), color="C1", lw=0.8, label="kernels (emulator)")
    axes[1].semilogy(steps, np.maximum(gap_control, 1e-9), color="C7", lw=0.8, label="engine, rows permuted")
    axes[1].set(xlabel="step", ylabel="|loss - loss(engine)| (0 drawn at 1e-9)", title="the same steps, other rounding")
    axes[1].legend(fontsize=8)
    axes[2].set(xlabel="step", ylabel="SG loss", yscale="log", title="synthetic-gradient modules (after block j)")
    axes[2].legend(fontsize=7)
else:
    for ax in axes:
        ax.text(0.5, 0.5, f"skipped: {EMULATOR_REASON}", ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.axis("off")
if "ipykernel" in sys.modules:
    plt.show()
save_figure(fig, OUT / FIGURES[2].format(stand_in="_stand-in" if STANDIN else ""))
print(f"wrote {OUT / FIGURES[2].format(stand_in='_stand-in' if STANDIN else '')}")

# %% [markdown]
# ## 7. On a real GPU
#
# With CuPy and a GPU, the same checks run on the device: every `sg_predict` version through
# `Kernels("cupy")` (CuPy compiles the same file with NVRTC) against the NumPy reference, and the fused step
# against the engine's unfused step, both on CuPy arrays. Without a GPU these cells are skipped, never imitated
# on the CPU. Timings are the job of `python -m minidni bench --backend cupy`.

# %%
if GPU:
    import cupy

    gpu_kernels = Kernels("cupy")
    B_, Du_, D_ = SHAPES[-1]
    r = np.random.default_rng(1)
    u_ = r.standard_normal((B_, Du_)).astype(np.float32)
    h_ = np.maximum(r.standard_normal((B_, D_)), 0).astype(np.float32)
    P_ = (r.standard_normal((Du_ + K + 1, D_)) * 0.1).astype(np.float32)
    y_ = r.integers(0, K, B_).astype(np.int32)
    want_syn, want_delta = reference.sg_predict(u_, P_, y_, K, h_, reference.ACTS["relu"])
    dev = [cupy.asarray(a) for a in (u_, P_, y_, h_)]
    for v in ops.VERSIONS["sg_predict"]:
        got_syn, got_delta = ops.sg_predict(gpu_kernels, dev[0], dev[1], dev[2], K, dev[3], 1, version=v)
        assert_close(got_syn.get(), want_syn, rtol=tol(Du_), atol=tol(Du_), name=f"GPU sg_predict_v{v} dh_syn")
        assert_close(got_delta.get(), want_delta, rtol=tol(Du_), atol=tol(Du_), name=f"GPU sg_predict_v{v} delta")
    print(f"GPU: every sg_predict version equals the reference at B, D_u, D = {SHAPES[-1]}")

    minidni.core.backend.set_backend("cupy")
    try:
        engine, fused = small_fcn3(), small_fcn3()
        use_kernels(fused, gpu_kernels)
        for xb_, yb_ in random_batches(4, B1, D_IN, seed=1):
            engine.train_step(cupy.asarray(xb_), cupy.asarray(yb_))
            fused.train_step(cupy.asarray(xb_), cupy.asarray(yb_))
        mine, theirs = fused.state_arrays(), engine.state_arrays()
        for k in theirs:
            assert_close(mine[k].get(), theirs[k].get(), rtol=1e-4, atol=1e-4, name=f"GPU fused step: {k}")
        print("GPU: four fused steps = four engine steps on CuPy arrays")
    finally:
        minidni.core.backend.set_backend("numpy")
else:
    skipped("the GPU cells (section 7)", "no GPU here (minidni.core.backend.gpu_available() is False)")

# %% [markdown]
# ### What it shows, honestly
#
# * **The kernels compute the engine's math.** `sg_predict` and `layer_update_adam` are, element by element,
#   $\hat\delta = hA + C[y] + c$, $\delta = \hat\delta \odot [h > 0]$ and an Adam step on $x^\top \partial z$;
#   every version of each equals the NumPy reference within float32 tolerance, and one fused step equals one
#   engine step in every state array. The paper's FCN3 (784-256-256-10, cDNI) trains through them on 10,000
#   MNIST images (at the default size): its training loss falls, and after 312 steps its test error is within 5
#   points of the engine's (both printed above, with the engine on row-permuted batches beside them). Its
#   trajectory parts from the engine's no more than the engine's own does when only the summation order changes
#   (median loss gap within 10x of the control's): Adam turns the rounding noise of gradients that are zero in
#   exact arithmetic into steps.
# * **What each version buys is counted, not timed.** At $256^3$, v2 loads 16x and v3 64x fewer operand elements
#   from global memory than v1 (caches ignored), and v3 makes 4x fewer shared-memory reads per multiply-add than
#   v2. On paper a fused step moves about 2.8x fewer bytes than the unfused one and makes about 6x fewer
#   launches. None of this is a speed: real caches absorb part of v1's redundant loads, and at these sizes launch
#   overhead and host synchronisation may dominate (`docs/kernels.md`). **No GPU timing exists for these
#   kernels yet**; `python -m minidni bench --backend cupy` is how to get one.
# * **The emulator is a correctness tool.** It runs the unchanged `.cu` files with the CUDA thread model (and
#   reports deadlocks, wrong argument types, shared-memory overruns), but it says nothing about speed, true
#   concurrency or a GPU's last-bit numerics.

# %%
for name in (f.format(stand_in="_stand-in" if STANDIN else "") for f in FIGURES):
    assert (OUT / name).exists() and (OUT / name).stat().st_size > 0, f"figure {name} was not written"
print(f"tutorial 14 finished in {time.perf_counter() - T_START:.1f}s")
