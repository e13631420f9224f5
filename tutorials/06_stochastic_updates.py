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
# # Tutorial 06: stochastic updates - blocks that update when they like
#
# Backprop runs as one synchronised sweep: forward through every block, then backward through every block, in
# that order. Jaderberg et al. (ICML 2017, Fig. 7) asked what happens when that order breaks down. In **the
# paper's experiment** a 4-layer FCN on MNIST is trained so that after each forward pass every layer does its
# backward pass and update only with probability $p_{update}$, in a random order. The paper reports that
# backprop fails, that DNI still trains to 2% test error at $p_{update} = 0.2$, and that cDNI "trains
# perfectly" at $p_{update} = 0.05$, only more slowly (the paper's results; see `docs/stochastic.md`).
#
# This tutorial builds the same experiment in `minidni.dni.stochastic` and checks every claim it rests on:
#
# 1. **the gate**: one coin per block per forward pass, and a random order (`UpdateGate`);
# 2. **why backprop breaks**: a gradient has to cross every coin between the loss and the block, so block $j$
#    updates in a fraction $p^{N-j}$ of the passes;
# 3. **gated DNI**: a block moves if and only if its own coin came up, whatever the others did, and the
#    synthetic-gradient module below a block learns only on the passes where that block ran;
# 4. **training** bprop and cDNI at several $p_{update}$ on a small problem whose hidden blocks must learn:
#    test error against $p_{update}$.
#
# Read tutorial 04 first (the DNI step itself). Sizes: `MINIDNI_TINY=1` shrinks everything so that the script
# runs in a few seconds (the test suite does this); figures go to `tutorials/out/`, or to
# `$MINIDNI_TUTORIAL_OUT`.

# %%
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np

import minidni.core.backend
from minidni.dni import stochastic
from minidni.data.datasets import iterate_minibatches, make_spirals
from minidni.dni.network import build_network
from minidni.dni import steps
from minidni.dni.stochastic import UpdateGate
from minidni.runs.threads import use_blas_threads

minidni.core.backend.set_backend("numpy")
use_blas_threads(1)  # one BLAS thread: a busy machine cannot slow the run down several times (minidni.runs.threads)

TINY = os.environ.get("MINIDNI_TINY", "0") == "1"
try:
    HERE = Path(__file__).resolve().parent
except NameError:  # in a notebook: its own folder (tutorials/)
    HERE = Path.cwd()
OUT = Path(os.environ.get("MINIDNI_TUTORIAL_OUT") or HERE / "out")
OUT.mkdir(parents=True, exist_ok=True)
T_START = time.perf_counter()
FIGURES = ["06_stochastic_updates.png"]  # what it writes into OUT (tests check)

GATE_DRAWS = 2_000 if TINY else 20_000  # forward passes simulated in section 1 (coins only: cheap)
PASSES = 500 if TINY else 2_000  # forward passes of the gated steps counted in sections 2 and 3
N_PER_CLASS = 100 if TINY else 1000  # training points per spiral arm (3 arms)
N_TEST_PER_CLASS = 50 if TINY else 300
UPDATES = 40 if TINY else 500  # section 4: the number of updates each cDNI block gets, on average
P_UPDATES = (1.0, 0.5, 0.2) if TINY else (1.0, 0.5, 0.2, 0.1, 0.05)
SEEDS = (0,) if TINY else (0, 1)  # section 4: one run per (mode, p, seed)
BATCH = 64
print(f"{'tiny' if TINY else 'default'} size; figures go to {OUT}")

# %% [markdown]
# ## The problem: spirals hidden in noise
#
# Tutorial 04 found that on plain 2-d spirals even `nobprop` (only the output layer learns) reaches about 1.4%
# error: random hidden features are good enough, so that problem cannot show a failure to train the hidden
# blocks. Here the three spiral arms sit in the first 2 of $D_x = 16$ coordinates and the other 14 are Gaussian
# noise of standard deviation 0.5. A random first block mixes the two useful coordinates with the noise; only a
# *trained* first block can pick them out. So a network whose lower blocks do not learn stays near chance (2/3
# error), and the test error measures whether the lower blocks learnt.
#
# The network is FCN4, $16 \to 32 \to 32 \to 32 \to 3$: three hidden blocks Linear → BatchNorm → ReLU and a
# linear output block, with the linear label-conditioned (cDNI) module after each hidden block.
#
# **Numbering.** We count blocks as the code does, from 0: blocks $0, 1, 2$ are hidden, block $N-1 = 3$ is the
# output block ($N = 4$ blocks). $h_j$ is block $j$'s output and $x$ is block 0's input. The module reading $h_j$
# is $M_{j+1}$ = `net.hidden[j].sg`, whose arrays are named `sg{j}.*`; so $M_j$, the module *below* block $j$,
# is `sg{j-1}`. (The paper counts from 1, so its indices are one more than ours.)

# %%
D_X, NOISE = 16, 0.5


def noisy_spirals(n_per_class, seed):
    """3 spiral arms in the first 2 of D_X coordinates, Gaussian noise (std NOISE) in the other D_X - 2."""
    return make_spirals(n_per_class, n_classes=3, seed=seed, noise_dims=D_X - 2, noise_dims_std=NOISE)  # (3n, 16)


x_tr, y_tr = noisy_spirals(N_PER_CLASS, seed=0)
x_te, y_te = noisy_spirals(N_TEST_PER_CLASS, seed=10_000)  # an independent test set, fresh noise
print(f"train {x_tr.shape} {x_tr.dtype}, test {x_te.shape}; labels {np.bincount(y_tr)}")


def fcn4(mode, p_update=1.0, seed=0):
    """The tutorial's network: FCN4 on D_X inputs, 32 units per hidden block, 3 classes; cDNI: linear modules."""
    return build_network(
        depth=4, mode=mode, d_in=D_X, hidden=32, n_classes=3, lr=1e-2, sg_lr=1e-3, seed=seed, p_update=p_update
    )


def snapshot(net):
    """Copies of every state array except batch-norm running statistics (every forward pass moves those)."""
    return {k: v.copy() for k, v in net.state_arrays().items() if "running_" not in k}


def moved_parts(net, before):
    """The parts ('block0', 'sg1', ...) with at least one array that changed since `before`."""
    now = net.state_arrays()
    return {k.split(".")[0] for k in before if not np.array_equal(now[k], before[k])}


N = 4  # blocks: 0, 1, 2 hidden, 3 = output
rng = np.random.default_rng(0)
idx = rng.choice(len(x_tr), size=BATCH, replace=False)
xb, yb = x_tr[idx], y_tr[idx]  # (64, 16), (64,): one fixed batch for sections 2 and 3

# %% [markdown]
# ## 1. The gate
#
# After every forward pass, block $j$ flips its own coin, $c_j \sim \mathrm{Bernoulli}(p)$, independently of
# every other block and every other pass; the blocks whose coins came up run their backward pass and update, in
# a uniformly random order. `UpdateGate(p, seed).draw(N)` returns exactly that: the chosen blocks, in the order
# they run.
#
# Over $T$ passes the number of times block $j$ is chosen is $\mathrm{Binomial}(T, p)$, so its fraction of the
# passes has mean $p$ and standard deviation $\sigma = \sqrt{p(1-p)/T}$. We check each block's fraction against
# $p$ to within $5\sigma$ (a false alarm about once in two million), that at $p = 1$ every one of the $4! = 24$
# orders turns up, and that a gate replays the same schedule from the same seed (that is what lets a stopped run
# resume with the same coins: the gate's state is in the checkpoint).

# %%
gate = UpdateGate(0.5, seed=1)
print("p = 0.5, the first passes:", [gate.draw(N) for _ in range(6)])

gate_frac = {}  # p -> (N,) fraction of the passes in which each block was chosen
for p in (0.05, 0.2, 0.5):
    gate = UpdateGate(p, seed=1)
    counts = np.zeros(N)
    for _ in range(GATE_DRAWS):
        counts[gate.draw(N)] += 1
    gate_frac[p] = counts / GATE_DRAWS
    sigma = np.sqrt(p * (1 - p) / GATE_DRAWS)
    print(f"p = {p:4}: chosen in {np.round(gate_frac[p], 4)} of {GATE_DRAWS} passes (5 sigma = {5 * sigma:.4f})")
    assert np.all(np.abs(gate_frac[p] - p) < 5 * sigma), f"a block is not chosen in ~p = {p} of the passes"

gate = UpdateGate(1.0, seed=2)
orders = {tuple(gate.draw(N)) for _ in range(GATE_DRAWS // 10)}  # the distinct orders among many passes
assert all(sorted(o) == list(range(N)) for o in orders), "at p = 1 every block must be chosen on every pass"
print(f"p = 1: {len(orders)} different orders seen (4! = 24)")
assert len(orders) == 24, "the order of the chosen blocks should be a uniformly random permutation"

a, b = UpdateGate(0.3, seed=5), UpdateGate(0.3, seed=5)
assert [a.draw(N) for _ in range(100)] == [b.draw(N) for _ in range(100)], "the same seed must replay the coins"

# %% [markdown]
# ## 2. Why backprop breaks
#
# Under backprop block $j$'s gradient $\delta_{j}$ comes from the block above, which got its own from the block
# above it, and so on up to the loss. With gated updates a block that did not get its coin does not run its
# backward pass, so **the gradient stops there**: everything below it gets nothing on this pass, whether their
# coins came up or not (`gated_bprop_step` walks from the output block down and stops at the first block not
# chosen). Block $j$ therefore updates only when the $N - j$ coins of blocks $N-1, \dots, j$ all came up:
#
# $$P(\text{block } j \text{ updates}) = p^{N-j}, \qquad \text{FCN4: } p,\ p^2,\ p^3,\ p^4
#   \text{ for blocks } 3, 2, 1, 0 .$$
#
# At $p = 0.2$ the first block updates on one pass in 625. (The paper puts it as the first layer receiving an
# update with probability $p^3$: the three coins above it. In this engine the first block's own coin must come up
# too, so it is $p^4$; either way it is effectively never.)
#
# First a single pass with a chosen list, `chosen = [0, 3, 1]`: blocks 0, 3 and 1 got their coins, block 2 did
# not. The output block updates; block 2 does not run, so blocks 1 and 0 hear nothing, although their coins came
# up.

# %%
net = fcn4("bprop", p_update=0.5)
before = snapshot(net)
result = steps.gated_bprop_step(net, xb, yb, chosen=[0, 3, 1])
print(f"chosen [0, 3, 1] -> updated {result['updated']}, parts that moved: {sorted(moved_parts(net, before))}")
assert result["updated"] == [3] and moved_parts(net, before) == {"block3"}, "the chain must break at block 2"

before = snapshot(net)
result = steps.gated_bprop_step(net, xb, yb, chosen=[1, 2, 3])
print(f"chosen [1, 2, 3] -> updated {result['updated']}, parts that moved: {sorted(moved_parts(net, before))}")
assert moved_parts(net, before) == {"block3", "block2", "block1"}, "an unbroken chain reaches down to block 1"

# %% [markdown]
# Now the gate draws the coins (`Network.train_step` calls `steps.gated_step`, which calls `net.gate.draw`)
# for many passes at $p = 0.5$, where even $p^4 = 0.0625$ is common enough to measure. Each step's record lists
# the blocks that really updated; `update_counts` turns the records into fractions. Each is checked against
# $p^{N-j}$ to within $5\sigma$ of its binomial spread.

# %%
P_CHAIN = 0.5
expected_bprop = P_CHAIN ** (N - np.arange(N))  # (N,): p^4, p^3, p^2, p for blocks 0..3
net = fcn4("bprop", p_update=P_CHAIN)
bprop_records = [net.train_step(xb, yb) for _ in range(PASSES)]
frac_bprop = stochastic.update_counts(bprop_records, N)
sigma = np.sqrt(expected_bprop * (1 - expected_bprop) / PASSES)
for j in range(N):
    print(f"bprop, block {j}: updated in {frac_bprop[j]:.4f} of {PASSES} passes; p^(N-j) = {expected_bprop[j]:.4f}")
assert np.all(np.abs(frac_bprop - expected_bprop) < 5 * sigma), f"{frac_bprop} vs p^(N-j) {expected_bprop}"

# %% [markdown]
# ## 3. Gated DNI: a block moves if and only if its coin came up
#
# Under DNI block $j$ never waits for a gradient from above: its module $M_{j+1}$ sits on its output and is
# always there. A chosen hidden block runs `synthetic_step` (predict $\hat\delta_j = M_{j+1}(h_j, c)$, backward,
# update); the chosen output block updates from the true $\partial L/\partial\,\mathrm{logits}$. Either way the
# block's backward also produces $dx_j$, the gradient of its *input*, which is exactly the bootstrapped target
# of the module below it, $M_j$. So
#
# * block $j$ updates iff its own coin came up: with probability $p$, for every block;
# * $M_j$ (`sg{j-1}`) learns iff block $j$ ran: only then does its target exist.
#
# `gated_dni_step(net, x, labels, chosen)` runs one such pass for an explicit list. First a few full passes, so
# that every module predicts something non-zero (a fresh module predicts exactly zero, tutorial 04); then the
# pass `chosen = [2, 0]`: blocks 2 and 0 must move, and so must `sg1` ($M_2$, the module below block 2, trained on
# block 2's $dx_2$). `sg0` ($M_1$) must not, because block 1 did not run; nor `sg2` ($M_3$), because the output
# block did not run; nor blocks 1 and 3.

# %%
net = fcn4("cdni", p_update=0.5)
for _ in range(5):  # full passes, in the sequential order: the true gradient seeps down one module per pass
    steps.gated_dni_step(net, xb, yb, chosen=[0, 1, 2, 3])
assert all(block.sg.net.layers[-1].params["W"].any() for block in net.hidden), "every module should speak now"

before = snapshot(net)
result = steps.gated_dni_step(net, xb, yb, chosen=[2, 0])
moved = moved_parts(net, before)
print(f"chosen [2, 0] -> parts that moved: {sorted(moved)};  SG losses: {result['sg_loss']}")
assert moved == {"block2", "block0", "sg1"}, f"expected blocks 2, 0 and the module below block 2, got {moved}"
assert result["sg_loss"][1] is not None and result["sg_loss"][0] is None and result["sg_loss"][2] is None

# %% [markdown]
# **The order matters, a little.** If block 2 runs before block 1, $M_2$ (`sg1`) has already taken its
# regression step (onto block 2's $dx_2$) by the time block 1 asks it for $\hat\delta_1$, so block 1 moves
# differently than if it had run first. Block 2's own update reads nothing that block 1 changes, so it is the
# same either way.

# %%
twins = {}
for order in ([1, 2], [2, 1]):
    twins[tuple(order)] = copy.deepcopy(net)
    steps.gated_dni_step(twins[tuple(order)], xb, yb, chosen=order)
w12, w21 = (twins[o].state_arrays() for o in ((1, 2), (2, 1)))
print(f"block 1 moves differently under [1, 2] and [2, 1]: {not np.array_equal(w12['block1.0.W'], w21['block1.0.W'])}")
assert not np.array_equal(w12["block1.0.W"], w21["block1.0.W"]), "block 1 should see a different M_2"
assert np.array_equal(w12["block2.0.W"], w21["block2.0.W"]), "block 2's update cannot depend on the order"

# %% [markdown]
# Over many gated passes at $p = 0.5$: every block updates in about $p$ of them (against the $p^{N-j}$ of
# backprop), and on every single pass the modules that got a regression step are exactly those below the blocks
# that ran.

# %%
cdni_records = [net.train_step(xb, yb) for _ in range(PASSES)]
frac_cdni = stochastic.update_counts(cdni_records, N)
sigma = np.sqrt(P_CHAIN * (1 - P_CHAIN) / PASSES)
print(f"cdni: blocks 0..3 updated in {np.round(frac_cdni, 4)} of {PASSES} passes", end=" ")
print(f"(p = {P_CHAIN}, 5 sigma = {5 * sigma:.3f})")
assert np.all(np.abs(frac_cdni - P_CHAIN) < 5 * sigma), "cdni: every block should update in ~p of the passes"
for r in cdni_records:
    learnt = {i for i, v in enumerate(r["sg_loss"]) if v is not None}  # modules sg{i} that took a step
    assert learnt == {j - 1 for j in r["updated"] if j > 0}, f"M_j must learn iff block j ran: {r}"
print(f"on all {PASSES} passes, the modules that learnt were exactly those below the blocks that ran")

# %% [markdown]
# ## 4. Training at several $p_{update}$
#
# Fewer updates cost every method something, so the comparison needs a yardstick. We measure two:
#
# * **the same number of forward passes** $S$ (the same wall clock in a system where passes arrive at a fixed
#   rate): at $p_{update} = p$ a cDNI block has then updated about $pS$ times;
# * **the same number of updates** per cDNI block: $S/p$ forward passes, so that each cDNI block has updated
#   about $S$ times whatever $p$ is. If irregular, out-of-order updates did not hurt at all, cDNI's error would
#   not depend on $p$ here. Backprop's block $j$ has then updated only about $p^{N-j-1} S$ times.
#
# One run per (mode, $p$, seed): `Network.train_step` for $S/p$ passes over shuffled minibatches of 64,
# recording the test error after $S$ passes and after $S/p$. Plus `nobprop` (only the output layer learns) at
# $p = 1$ for $S$ passes: the level a network reaches whose hidden blocks learnt nothing. ($p = 1$ is the
# ordinary, ungated step: `build_network` attaches no gate then.)
#
# The label-free `dni` mode is left out: on this problem its MLP module learns far too slowly to be worth the
# time (measured while writing this tutorial, not rerun here: on this network with a 2 x 64-unit module,
# ungated, it was hardly better than `nobprop` even after four times cDNI's passes).

# %%


def minibatches(seed):
    """Shuffled minibatches of the training set, epoch after epoch, for as long as they are asked for."""
    rng = np.random.default_rng([seed, 1])
    while True:
        yield from iterate_minibatches(x_tr, y_tr, BATCH, rng=rng, drop_last=True)


def run(mode, p, passes_at=(UPDATES,), seed=0):
    """Train fcn4(mode) gated at p for round(UPDATES / p) passes; test error after each count in passes_at and
    at the end, and the fraction of the passes in which each block updated."""
    net = fcn4(mode, p_update=p, seed=seed)
    total = round(UPDATES / p)
    errors, counts = {}, np.zeros(N)
    for step, (x, y) in zip(range(1, total + 1), minibatches(seed)):
        record = net.train_step(x, y)
        counts[record.get("updated", range(N))] += 1  # an ungated step updates every block
        if step in passes_at:
            errors[step] = net.error_pct(x_te, y_te)
    errors[total] = net.error_pct(x_te, y_te)
    return errors, counts / total


t0 = time.perf_counter()
err_nobprop = np.array([run("nobprop", 1.0, seed=seed)[0][UPDATES] for seed in SEEDS])  # (seeds,)
print(f"nobprop, p = 1, {UPDATES} passes: test error {np.round(err_nobprop, 2)}% per seed  (chance 66.7%)")
results = {}  # (mode, p) -> {"passes": (seeds,) error after UPDATES passes, "updates": (seeds,) after UPDATES / p}
fractions = {}  # (mode, p) -> (N,) fraction of the passes in which each block updated, mean over seeds
for mode in ("bprop", "cdni"):
    for p in P_UPDATES:
        runs = [run(mode, p, seed=seed) for seed in SEEDS]
        total = max(runs[0][0])
        results[mode, p] = {
            "passes": np.array([errors[UPDATES] for errors, _ in runs]),
            "updates": np.array([errors[total] for errors, _ in runs]),
        }
        frac = np.mean([f for _, f in runs], axis=0)  # (N,) mean over seeds
        fractions[mode, p] = frac
        # at every size: cdni's blocks update in ~p of the passes, bprop's block j in ~p^(N-j) (5 sigma)
        expected = np.full(N, p) if mode == "cdni" else p ** (N - np.arange(N))
        sigma = np.sqrt(expected * (1 - expected) / (total * len(SEEDS)))
        assert np.all(np.abs(frac - expected) <= 5 * sigma + 1e-12), f"{mode}, p = {p}: {frac} vs {expected}"
        print(
            f"{mode:5s} p = {p:4}: {total:5d} passes;  test error % per seed {np.round(results[mode, p]['passes'], 2)} "
            f"after {UPDATES} passes, {np.round(results[mode, p]['updates'], 2)} after {total};  update fraction "
            f"per block {np.round(frac, 3)}"
        )
t_train = time.perf_counter() - t0
print(f"section 4 trained {len(SEEDS) * (1 + 2 * len(P_UPDATES))} networks in {t_train:.1f}s")

# %% [markdown]
# ### The picture
#
# Left: which blocks updated on each of the first 60 gated passes of sections 2 and 3 ($p = 0.5$), backprop above
# and cDNI below. Middle: the fraction of passes in which each block updated, against $p^{N-j}$ and $p$. Right:
# test error against $p_{update}$ (log scale), after the same number of forward passes (dashed) and after the
# same number of updates per cDNI block (solid); markers are the mean over the seeds, bars span them.

# %%
import matplotlib  # noqa: E402

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # a script writes files; a notebook also shows the figure inline
import matplotlib.pyplot as plt  # noqa: E402

fig = plt.figure(figsize=(17, 4.6))
grid = fig.add_gridspec(2, 3, width_ratios=(1.2, 1, 1.2))
colors = {"bprop": "C0", "cdni": "C2", "nobprop": "C7"}

for row, (mode, records) in enumerate((("bprop", bprop_records), ("cdni", cdni_records))):
    ax = fig.add_subplot(grid[row, 0])
    raster = np.zeros((N, 60))  # (blocks, passes): 1 where the block updated
    for t, r in enumerate(records[:60]):
        raster[r["updated"], t] = 1
    ax.imshow(raster, aspect="auto", cmap="Greys", origin="lower", interpolation="nearest")
    ax.set(yticks=range(N), yticklabels=["block 0", "block 1", "block 2", "out (3)"], ylabel=mode)
    ax.set_title(f"{mode}: who updated, first 60 passes (p = {P_CHAIN})", fontsize=9)
    if row == 1:
        ax.set_xlabel("forward pass")
    else:
        ax.set_xticks([])

ax = fig.add_subplot(grid[:, 1])
blocks = np.arange(N)
ax.bar(blocks - 0.2, frac_bprop, width=0.4, color=colors["bprop"], label="bprop, measured")
ax.bar(blocks + 0.2, frac_cdni, width=0.4, color=colors["cdni"], label="cdni, measured")
ax.plot(blocks - 0.2, expected_bprop, "k_", ms=18, mew=2, label="$p^{N-j}$")
ax.plot(blocks + 0.2, [P_CHAIN] * N, "kx", ms=8, label="$p$")
ax.set(xticks=blocks, xticklabels=["block 0", "block 1", "block 2", "out (3)"], yscale="log", ylim=(0.02, 1))
ax.set(ylabel="fraction of passes with an update", title=f"update frequency per block, p = {P_CHAIN}")
ax.legend(fontsize=8)

ax = fig.add_subplot(grid[:, 2])
ps = np.array(P_UPDATES)
for mode in ("bprop", "cdni"):
    for key, style, label in (("updates", "-o", "same updates per block"), ("passes", "--^", "same forward passes")):
        errors = np.array([results[mode, p][key] for p in P_UPDATES])  # (len(P_UPDATES), seeds)
        mean = errors.mean(axis=1)
        spread = [mean - errors.min(axis=1), errors.max(axis=1) - mean]
        ax.errorbar(ps, mean, yerr=spread, fmt=style, color=colors[mode], capsize=3, label=f"{mode}, {label}")
ax.axhline(err_nobprop.mean(), c=colors["nobprop"], ls=":", lw=1.5, label=f"nobprop ({UPDATES} passes)")
ax.axhline(100 * 2 / 3, c="gray", ls="--", lw=1)
ax.annotate("chance", (ps.min(), 100 * 2 / 3), va="bottom", fontsize=8, color="gray")
ax.set(xscale="log", xlabel="$p_{update}$", ylabel="test error %", ylim=(0, 100))
ax.set_title(f"FCN4 on spirals in noise ({UPDATES} updates = {UPDATES} passes at p = 1)", fontsize=9)
ax.legend(fontsize=7, loc="upper right")

fig.tight_layout()
figure = OUT / FIGURES[0]
fig.savefig(figure, dpi=100)
if "ipykernel" in sys.modules:
    plt.show()
plt.close(fig)
print(f"wrote {figure}")

# %% [markdown]
# ### What it shows, honestly
#
# At the default size (2 seeds; the numbers are printed above; measured on 2 CPU cores):
#
# Each statement below is asserted by the run at the default size (the error ranges with a point or two of
# margin, stated in the last cell); the tiny run asserts the update fractions of every training run.
#
# * **Backprop breaks.** Given as many forward passes as cDNI needs for 500 updates per block, backprop's error
#   climbs from about 2% at $p = 1$ to 44-49% for $p \le 0.2$, level with `nobprop` (50-52%): its lower blocks
#   almost never update (block 0 in about 0.1% of the passes at $p = 0.2$, never at 0.05), so it is a network
#   with random lower blocks.
# * **cDNI does not care about the schedule.** With the same number of updates per block, cDNI ends between about
#   5% and 9% at every $p$ from 1 down to 0.05: what it learns depends on how many updates a block gets, not on
#   whether its neighbours updated on the same pass or in which order.
# * **But fewer updates are fewer updates.** After the same number of *forward passes* (500), cDNI is worse at
#   small $p$ too, yet degrades gradually where backprop collapses: 12-15% against 29-38% at $p = 0.5$, 32-36%
#   against 51-52% at $p = 0.2$. At $p = 0.05$ both are still above 50% after 500 passes (a cDNI block has
#   updated about 25 times): this is the paper's "trains, more slowly".
# * This is a 16-d toy problem, two seeds, 500 updates; the paper's experiment is MNIST over 500k iterations.
#   `python -m minidni train --model fcn4 --mode cdni --p-update 0.2` runs it on MNIST and logs each block's
#   `update_frac` per epoch; `python -m minidni experiment stochastic` runs the whole sweep (`docs/results.md`).

# %%
if TINY:
    assert figure.exists() and figure.stat().st_size > 0, "the figure was not written"
    assert all(np.isfinite([r["passes"], r["updates"]]).all() for r in results.values()), "a run diverged"
else:
    # the statements of "What it shows", each range with a point or two of margin over the measured one
    for p in P_UPDATES:  # cDNI about 5-9% at every p with the same updates
        assert results["cdni", p]["updates"].max() < 10.0, f"cdni should train at p = {p}: {results['cdni', p]}"
        assert results["cdni", p]["updates"].min() > 3.5, f"cdni at p = {p}: {results['cdni', p]}"
    assert results["bprop", 1.0]["updates"].max() < 3.0, f"bprop at p = 1: about 2%: {results['bprop', 1.0]}"
    assert 48.0 < err_nobprop.min() and err_nobprop.max() < 54.0, f"nobprop 50-52%: {err_nobprop}"
    for p in (0.2, 0.1, 0.05):  # backprop 44-49%, level with nobprop: its lower blocks starve
        e = results["bprop", p]["updates"]
        assert 42.0 < e.min() and e.max() < 51.0, f"bprop at p = {p}: 44-49%: {e}"
        assert abs(e.mean() - err_nobprop.mean()) < 8.0, f"bprop at p = {p} should be level with nobprop: {e}"
    assert 0 < fractions["bprop", 0.2][0] < 0.003 and fractions["bprop", 0.05][0] == 0, "block 0 starves"
    for p, cdni_range, bprop_range in ((0.5, (10, 17), (26, 41)), (0.2, (29, 39), (48, 55))):  # after 500 passes
        c, b = results["cdni", p]["passes"], results["bprop", p]["passes"]
        assert cdni_range[0] < c.min() and c.max() < cdni_range[1], f"cdni after {UPDATES} passes, p = {p}: {c}"
        assert bprop_range[0] < b.min() and b.max() < bprop_range[1], f"bprop after {UPDATES} passes, p = {p}: {b}"
    assert results["cdni", 0.05]["passes"].min() > 50 and results["bprop", 0.05]["passes"].min() > 50
print(f"tutorial 06 finished in {time.perf_counter() - T_START:.1f}s")
