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
# # Tutorial 01: backpropagation by hand, with gradient checks
#
# This script is also a notebook (see `tutorials/README.md`). Every section follows the same pattern: the math
# in prose, then the code that computes it, then an `assert` that fails if the code and the math disagree,
# then a picture.
#
# Synthetic gradients replace one piece of backpropagation, so this tutorial first takes backpropagation apart.
# What you will see:
#
# 1. a 2-layer MLP on three spiral arms: the forward pass in plain NumPy, equal to minidni's layers;
# 2. the chain rule, one layer at a time, with the shape of every array;
# 3. every gradient computed by hand, and by the layers' `backward`, both checked against float64 central
#    differences (`minidni.core.gradcheck`); a deliberately wrong backward fails the same check;
# 4. one SGD step by hand is the layers' update, bit for bit;
# 5. a short training run by hand: loss curve and decision regions;
# 6. where the locks are: what each layer has to wait for before it can update.
#
# Sizes: `MINIDNI_TINY=1` shrinks the training run so that the script runs in a few seconds (the test suite does
# this; every check still runs); figures go to `tutorials/out/`, or to `$MINIDNI_TUTORIAL_OUT`.

# %%
import os
import sys
import time
from pathlib import Path

import numpy as np

import minidni.core.backend
import minidni.core.functional as F
from minidni.data.datasets import make_spirals
from minidni.core.gradcheck import assert_close, numerical_gradient
from minidni.core.layers import Linear, ReLU, Sequential
from minidni.core.optim import SGD
from minidni.runs.plots import pyplot, save_figure
from minidni.runs.threads import use_blas_threads

minidni.core.backend.set_backend("numpy")  # the hand computations below are NumPy
use_blas_threads(1)  # one BLAS thread: a busy machine cannot slow the run down several times (minidni.runs.threads)

TINY = os.environ.get("MINIDNI_TINY", "0") == "1"
try:
    HERE = Path(__file__).resolve().parent
except NameError:  # in a notebook: its own folder (tutorials/)
    HERE = Path.cwd()
OUT = Path(os.environ.get("MINIDNI_TUTORIAL_OUT") or HERE / "out")
OUT.mkdir(parents=True, exist_ok=True)
T_START = time.perf_counter()

FIGURES = ["01_gradient_check.png", "01_training.png"]  # every PNG this tutorial writes into OUT

# the gradient checks always run at the same small size (central differences perturb one number at a time);
# only the training run of section 5 shrinks
B_CHECK, H_CHECK = 8, 6  # batch and hidden width of the checked network
N_PER_CLASS = 60 if TINY else 200  # training points per spiral arm (3 arms)
STEPS = 300 if TINY else 3000  # SGD steps of the training run
BATCH = 32
HIDDEN = 64
LR = 0.5
print(f"{'tiny' if TINY else 'default'} size; figures go to {OUT}")

# %% [markdown]
# ## 1. The network and its forward pass
#
# The data: points $x \in \mathbb{R}^2$ on three interleaved spiral arms, the label $y \in \{0, 1, 2\}$ the
# arm. No straight line separates them, so the network needs its hidden layer. The network, for a batch of
# $B$ rows (one example per row, as in all of minidni):
#
# $$z_1 = x W_1 + b_1, \qquad h = \max(z_1, 0), \qquad z = h W_2 + b_2, \qquad
#   L = -\frac1B \sum_{b=1}^{B} \log p_{b, y_b}, \quad p_b = \mathrm{softmax}(z_b),$$
#
# with shapes $x: (B, 2)$, $W_1: (2, H)$, $b_1: (H)$, $z_1, h: (B, H)$, $W_2: (H, 3)$, $b_2: (3)$ and the
# logits $z: (B, 3)$. In minidni the same network is `Sequential(Linear(2, H), ReLU(), Linear(H, 3))`
# followed by `functional.softmax_cross_entropy`. Every layer's `forward` returns its output *and a cache*
# (what its backward will need); the caller keeps the cache.
#
# Gradient checks need float64: in float32 the finite differences themselves are too noisy to tell a right
# gradient from a slightly wrong one. So the checked network is built with `dtype=np.float64`.

# %%
x_all, y_all = make_spirals(N_PER_CLASS, n_classes=3, seed=0)  # (3n, 2) float32, (3n,) int64, grouped by class
x_test, y_test = make_spirals(N_PER_CLASS, n_classes=3, seed=1)  # an independent test set
x_pool, y_pool = make_spirals(50, n_classes=3, seed=2)  # the checks' own points: the same at every size
rows = np.random.default_rng(0).choice(len(x_pool), size=B_CHECK, replace=False)
xb, yb = x_pool[rows].astype(np.float64), y_pool[rows]  # (B, 2), (B,)

mlp = Sequential(
    Linear(2, H_CHECK, rng=np.random.default_rng(1), dtype=np.float64),
    ReLU(),
    Linear(H_CHECK, 3, rng=np.random.default_rng(2), dtype=np.float64),
)
mlp.set_optimizer(lambda params: SGD(params, lr=LR, momentum=0.0))  # used in section 4; see there
lin1, lin2 = mlp.layers[0], mlp.layers[2]
lin2.params["b"][:] = [0.1, -0.2, 0.05]  # nonzero biases, so that a wrong db could not hide behind a zero
lin1.params["b"][:] = 0.1 * np.random.default_rng(3).standard_normal(H_CHECK)
print(mlp)

# by hand: the same parameters, as plain arrays (copies: nothing below can change the layers through them)
W1, b1 = lin1.params["W"].copy(), lin1.params["b"].copy()  # (2, H), (H,)
W2, b2 = lin2.params["W"].copy(), lin2.params["b"].copy()  # (H, 3), (3,)


def forward_by_hand(x, y, W1, b1, W2, b2):
    """The forward pass in plain NumPy. Returns the loss and everything the backward pass needs."""
    z1 = x @ W1 + b1  # (B, H)
    h = np.maximum(z1, 0.0)  # (B, H)
    z = h @ W2 + b2  # (B, 3) logits
    z_shift = z - z.max(axis=1, keepdims=True)  # (B, 3); softmax is unchanged by a shift, exp cannot overflow
    p = np.exp(z_shift) / np.exp(z_shift).sum(axis=1, keepdims=True)  # (B, 3), rows sum to 1
    loss = -np.mean(np.log(p[np.arange(len(y)), y]))
    return loss, (x, W1, z1, h, W2, p)  # the cache: what the backward pass reads


loss_hand, cache_hand = forward_by_hand(xb, yb, W1, b1, W2, b2)

# with minidni's layers: forward hands back a cache, which we keep for the backward pass
logits, cache_layers = mlp.forward(xb)  # (B, 3)
loss_layers, dlogits_layers = F.softmax_cross_entropy(logits, yb)  # the loss and dL/dz, (B, 3)
print(f"x {xb.shape} -> logits {logits.shape};  loss by hand {loss_hand:.12f}, with the layers {loss_layers:.12f}")
h_hand = cache_hand[3]  # (B, H) the hidden activations computed by hand
assert_close(logits, h_hand @ W2 + b2, rtol=1e-12, atol=1e-14, name="logits")
assert abs(loss_hand - loss_layers) < 1e-12, "the hand-written forward pass must equal the layers'"

# %% [markdown]
# ## 2. The chain rule, one layer at a time
#
# Backpropagation applies the chain rule from the loss down. Each step takes the gradient with respect to a
# layer's *output* and returns the gradients with respect to its *parameters* and its *input*; every gradient
# has the shape of the thing it differentiates.
#
# **Softmax cross-entropy.** With $p_b = \mathrm{softmax}(z_b)$ and $\ell_b = -\log p_{b, y_b}$, one row gives
# $\partial \ell_b / \partial z_{b,k} = p_{b,k} - [k = y_b]$. The loss is the batch mean, so
#
# $$\frac{\partial L}{\partial z} = \frac{1}{B}\,(p - \mathrm{onehot}(y)) \qquad (B, 3).$$
#
# **Linear**, $z = h W_2 + b_2$: each entry $z_{bk} = \sum_j h_{bj} W_{jk} + b_k$, so with $dz = \partial L /
# \partial z$,
#
# $$dW_2 = h^\top dz \;\; (H, 3), \qquad db_2 = \sum_b dz_b \;\; (3), \qquad dh = dz\, W_2^\top \;\; (B, H).$$
#
# $dW$ sums over the batch (the $1/B$ is already inside $dz$), $db$ too, and $dh$ has one row per example.
#
# **ReLU**, $h = \max(z_1, 0)$: the derivative is 1 where $z_1 > 0$ and 0 elsewhere, a mask:
#
# $$dz_1 = dh \odot [z_1 > 0] \qquad (B, H).$$
#
# **Linear again**, $z_1 = x W_1 + b_1$: $dW_1 = x^\top dz_1$ (2, H), $db_1 = \sum_b dz_{1,b}$ (H), and
# $dx = dz_1 W_1^\top$ (B, 2) if anything below needed it (nothing does: $x$ is the data).


# %%
def backward_by_hand(y, cache):
    """The chain rule from the loss down, in plain NumPy: every gradient of `forward_by_hand`."""
    x, W1, z1, h, W2, p = cache
    B = len(y)
    dz = p.copy()
    dz[np.arange(B), y] -= 1
    dz /= B  # (B, 3)  dL/dz = (p - onehot(y)) / B
    dW2 = h.T @ dz  # (H, 3)
    db2 = dz.sum(axis=0)  # (3,)
    dh = dz @ W2.T  # (B, H)
    dz1 = dh * (z1 > 0)  # (B, H)  the ReLU mask
    dW1 = x.T @ dz1  # (2, H)
    db1 = dz1.sum(axis=0)  # (H,)
    dx = dz1 @ W1.T  # (B, 2)  nothing below x needs it; computed here only to be checked
    return {"z": dz, "W2": dW2, "b2": db2, "h": dh, "W1": dW1, "b1": db1, "x": dx}


grads_hand = backward_by_hand(yb, cache_hand)
for name, g in grads_hand.items():
    print(f"d{name:3s} {g.shape!s:8s} max |entry| {np.abs(g).max():.3e}")

# the same with the layers: backward takes dL/dlogits and the cache, returns dL/dx and fills each layer's grads
dx_layers = mlp.backward(dlogits_layers, cache_layers)  # (B, 2)
grads_layers = {
    "z": dlogits_layers,
    "W2": lin2.grads["W"],
    "b2": lin2.grads["b"],
    "W1": lin1.grads["W"],
    "b1": lin1.grads["b"],
    "x": dx_layers,
}

# %% [markdown]
# ## 3. Checking the gradients against central differences
#
# For any parameter array $\theta$ and each of its entries $\theta_j$, the central difference
#
# $$\frac{\partial L}{\partial \theta_j} \approx \frac{L(\theta + \epsilon e_j) - L(\theta - \epsilon e_j)}
#   {2 \epsilon}$$
#
# has an error of order $\epsilon^2$ (the $\epsilon^1$ terms of the Taylor series cancel), plus the rounding
# error of the two losses divided by $2\epsilon$. `minidni.core.gradcheck.numerical_gradient(f, theta)` perturbs
# $\theta$ in place, one entry at a time, and calls `f()` twice per entry. We compare with the *relative error*
# of the whole array, $\lVert a - n \rVert / (\lVert a \rVert + \lVert n \rVert)$: about $10^{-9}$ or below
# means "the same gradient", a wrong formula gives $10^{-2}$ to $1$.

# %%
params_hand = {"W1": W1, "b1": b1, "W2": W2, "b2": b2, "x": xb}  # the arrays the numerical gradients perturb


def loss_now():
    return forward_by_hand(xb, yb, W1, b1, W2, b2)[0]


def relative_error(a, n):
    return float(np.linalg.norm(a - n) / (np.linalg.norm(a) + np.linalg.norm(n)))


numerical = {name: numerical_gradient(loss_now, arr, eps=1e-6) for name, arr in params_hand.items()}
errors = {"by hand": {}, "minidni layers": {}}
print(f"{'':6s} {'by hand vs numerical':>22s} {'layers vs numerical':>22s}")
for name in params_hand:
    errors["by hand"][name] = relative_error(grads_hand[name], numerical[name])
    errors["minidni layers"][name] = relative_error(grads_layers[name], numerical[name])
    print(f"d{name:5s} {errors['by hand'][name]:22.2e} {errors['minidni layers'][name]:22.2e}")
    scale = np.abs(numerical[name]).max()
    assert_close(grads_hand[name], numerical[name], rtol=1e-6, atol=1e-8 * scale, name=f"d{name} by hand")
    assert_close(grads_layers[name], numerical[name], rtol=1e-6, atol=1e-8 * scale, name=f"d{name} from layers")
assert max(errors["by hand"].values()) < 1e-7 and max(errors["minidni layers"].values()) < 1e-7
# what "What it shows" states: every relative error between about 1e-10 and 1e-9 (float64, eps = 1e-6)
all_errors = [e for who in ("by hand", "minidni layers") for e in errors[who].values()]
print(f"relative errors from {min(all_errors):.1e} to {max(all_errors):.1e}")
assert 3e-11 < min(all_errors) and max(all_errors) < 3e-9, "the checks should agree to about 1e-10 .. 1e-9"
hand_vs_layers = max(float(np.abs(grads_hand[n] - grads_layers[n]).max()) for n in grads_layers)
print(f"by hand vs layers: largest difference over all gradients {hand_vs_layers:.1e}")
assert hand_vs_layers < 1e-15, "the layers compute the same products as the hand-written backward"
assert_close(grads_hand["z"], dlogits_layers, rtol=1e-12, atol=1e-15, name="dL/dlogits")

# %% [markdown]
# **A check that cannot fail proves nothing**, so here are two classic bugs, each put through the same
# check: a backward that forgets the ReLU mask, and one that forgets the $1/B$ of the batch mean. For the
# second the relative error is exactly $(B - 1)/(B + 1)$, since every gradient comes out $B$ times too large.


# %%
def backward_without_mask(y, cache):
    x = cache[0]
    g = backward_by_hand(y, cache)
    dz1 = g["h"]  # bug: the ReLU mask is missing
    return {"W1": x.T @ dz1, "b1": dz1.sum(axis=0)}


def backward_without_mean(y, cache):
    return {k: v * len(y) for k, v in backward_by_hand(y, cache).items()}  # bug: the sum, not the mean


bugs = {
    "no ReLU mask": backward_without_mask(yb, cache_hand)["W1"],
    "no 1/B": backward_without_mean(yb, cache_hand)["W1"],
}
for bug, dW1_wrong in bugs.items():
    err = relative_error(dW1_wrong, numerical["W1"])
    errors.setdefault(f"bug: {bug}", {})["W1"] = err
    try:
        assert_close(dW1_wrong, numerical["W1"], rtol=1e-6, atol=1e-8, name=f"dW1 ({bug})")
    except AssertionError as failure:
        print(f"{bug:12s}: relative error {err:.2e}; the check fails as it should:\n    {failure}")
    else:
        raise AssertionError(f"the gradient check did not catch the bug '{bug}'")
assert abs(errors["bug: no 1/B"]["W1"] - (B_CHECK - 1) / (B_CHECK + 1)) < 1e-6  # 7/9 = 0.78
assert abs(errors["bug: no ReLU mask"]["W1"] - 0.81) < 0.005, "the missing mask should score 0.81 on these points"

# %% [markdown]
# **Choosing $\epsilon$.** Too large, and the $\epsilon^2$ truncation error dominates (and a perturbation may
# cross a ReLU's kink, where the function is not smooth); too small, and the rounding error of each loss,
# about $10^{-16}$ relative, is divided by $2\epsilon$. The sweep below computes the relative error of $dW_1$
# for $\epsilon$ from $10^{-12}$ to $10^{-1}$; the total error is smallest in between, and `minidni.core.gradcheck`
# uses $\epsilon = 10^{-6}$.

# %%
EPSILONS = np.logspace(-12, -1, 23)
eps_errors = np.array([relative_error(grads_hand["W1"], numerical_gradient(loss_now, W1, eps=e)) for e in EPSILONS])
best = EPSILONS[eps_errors.argmin()]
print(f"relative error of dW1: min {eps_errors.min():.1e} at eps = {best:.0e}; at eps = 1e-12: {eps_errors[0]:.1e}")
assert eps_errors[0] > 100 * eps_errors.min(), "rounding error should dominate at eps = 1e-12"
assert 1e-9 <= best <= 1e-3, f"the best eps should lie well inside the sweep, got {best:.0e}"
# what "What it shows" states: best between eps = 1e-5 and 1e-4, at about 1e-11; about 1e-3 at eps = 1e-12
assert 1e-5 <= best <= 1e-4 and eps_errors.min() < 1e-10, (best, eps_errors.min())
assert 3e-4 < eps_errors[0] < 3e-3, f"at eps = 1e-12 the error should be about 1e-3, got {eps_errors[0]:.1e}"

# %% [markdown]
# ## 4. One SGD step: by hand and with the layers
#
# Plain stochastic gradient descent moves every parameter against its gradient,
# $\theta \leftarrow \theta - \eta\, \partial L / \partial \theta$. In minidni each layer (here: the whole
# `Sequential`, one optimiser for the stack, given to it in section 1) owns an optimiser and applies it with
# `update()`, using the gradients its last `backward` left in `grads`. (`Sequential.set_optimizer` moves the
# parameters and gradients into two flat buffers, so that one optimiser call updates the whole stack; that is why
# it is called before the first `backward`, not after.) `SGD` with `momentum=0` computes $\eta g$ and subtracts
# it, exactly the two operations written by hand below, so the results agree bit for bit.

# %%
mlp.update()  # uses the grads filled by mlp.backward above

stepped_by_hand = {
    "W1": W1 - LR * grads_hand["W1"],
    "b1": b1 - LR * grads_hand["b1"],
    "W2": W2 - LR * grads_hand["W2"],
    "b2": b2 - LR * grads_hand["b2"],
}
stepped_layers = {"W1": lin1.params["W"], "b1": lin1.params["b"], "W2": lin2.params["W"], "b2": lin2.params["b"]}
for name, expected in stepped_by_hand.items():
    moved = np.abs(stepped_layers[name] - params_hand[name]).max()
    same = np.array_equal(stepped_layers[name], expected)
    print(f"{name}: moved by up to {moved:.3e}; layers' update == hand update bit for bit: {same}")
    assert moved > 0, f"{name} did not move"
    assert same, f"{name}: the layers' SGD step differs from theta - lr * grad"

loss_after = forward_by_hand(xb, yb, *(stepped_by_hand[k] for k in ("W1", "b1", "W2", "b2")))[0]
print(f"loss on this batch: {loss_hand:.6f} -> {loss_after:.6f} after one step")
assert loss_after < loss_hand, "a small step against the gradient should lower the loss on the same batch"

# %% [markdown]
# ## 5. Training by hand
#
# The same two functions, `forward_by_hand` and `backward_by_hand`, are all it takes to train. A wider network
# ($H = 64$), minibatches of 32 drawn at random, plain SGD with $\eta = 0.5$. We record the training loss of
# every minibatch and, every so often, the error on an independent test set (chance: 2/3).

# %%
train_rng = np.random.default_rng(4)
x_tr, x_te = x_all.astype(np.float64), x_test.astype(np.float64)
W1 = train_rng.standard_normal((2, HIDDEN)) * np.sqrt(2 / 2)  # He initialisation, as minidni's Linear
b1 = np.zeros(HIDDEN)
W2 = train_rng.standard_normal((HIDDEN, 3)) * np.sqrt(2 / HIDDEN)
b2 = np.zeros(3)


def predict(x, W1, b1, W2, b2):
    return (np.maximum(x @ W1 + b1, 0.0) @ W2 + b2).argmax(axis=1)  # (N,) class indices


losses, test_error = [], {0: 100 * np.mean(predict(x_te, W1, b1, W2, b2) != y_test)}
t0 = time.perf_counter()
for step in range(1, STEPS + 1):
    idx = train_rng.choice(len(x_tr), size=BATCH, replace=False)
    loss, cache = forward_by_hand(x_tr[idx], y_all[idx], W1, b1, W2, b2)
    g = backward_by_hand(y_all[idx], cache)
    W1 -= LR * g["W1"]
    b1 -= LR * g["b1"]
    W2 -= LR * g["W2"]
    b2 -= LR * g["b2"]
    losses.append(loss)
    if step % (STEPS // 30) == 0:
        test_error[step] = 100 * np.mean(predict(x_te, W1, b1, W2, b2) != y_test)
losses = np.array(losses)
window = max(STEPS // 20, 1)
smooth = np.convolve(losses, np.ones(window) / window, mode="valid")  # running mean over `window` minibatches
print(f"{STEPS} steps in {time.perf_counter() - t0:.1f}s")
print(f"training loss: first {window} minibatches {smooth[0]:.3f}, last {window} {smooth[-1]:.3f}")
print("test error %: " + ", ".join(f"step {s}: {e:.1f}" for s, e in list(test_error.items())[::3]))
assert smooth[-1] < 0.5 * smooth[0], "the training loss should fall by at least half"
assert 55 < test_error[0] < 75, f"the untrained network should be near chance (66.7%): {test_error[0]:.1f}%"
assert test_error[300] < 10, f"300 steps should take the error below 10%: {test_error[300]:.1f}%"
if not TINY:  # what "What it shows" states at the default size: about 6% after 300 steps, about 1% after 3000
    assert 3 < test_error[300] < 9, f"about 6% after 300 steps: {test_error[300]:.1f}%"
    assert test_error[STEPS] < 2.5, f"a trained MLP should separate the spirals: {test_error[STEPS]:.1f}% error"

# %% [markdown]
# ## The pictures
#
# Left: the relative error of every gradient against central differences, by hand and from the layers, on a
# log scale; the two bugs of section 3 for comparison. Right: the relative error of $dW_1$ against $\epsilon$.
# Then the training run: the training loss per minibatch (and its running mean), the test error, and the
# decision regions of the trained network over the test points.

# %%
plt = pyplot()
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
ax = axes[0]
names = list(params_hand)
width = 0.38
for j, (who, color) in enumerate((("by hand", "C0"), ("minidni layers", "C2"))):
    values = [errors[who][n] for n in names]
    ax.bar(np.arange(len(names)) + (j - 0.5) * width, values, width, color=color, label=f"{who} vs numerical")
for j, bug in enumerate(("bug: no ReLU mask", "bug: no 1/B")):
    ax.bar(len(names) + j, errors[bug]["W1"], 0.6, color="C3")
ax.set_xticks(
    np.arange(len(names) + 2),
    [f"d{n}" for n in names] + ["dW1\nno mask", "dW1\nno 1/B"],
)
ax.set(yscale="log", ylabel="relative error  ||a - n|| / (||a|| + ||n||)", title="gradient check (float64, eps 1e-6)")
ax.legend(fontsize=8)

ax = axes[1]
ax.loglog(EPSILONS, eps_errors, marker=".", color="C0")
ax.axvline(1e-6, ls="--", c="gray", lw=1)
ax.annotate("minidni's eps", (1e-6, eps_errors.max()), fontsize=8, color="gray", ha="left", va="top")
ax.set(xlabel="eps", ylabel="relative error of dW1", title="central differences: truncation vs rounding")
save_figure(fig, OUT / FIGURES[0])

fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
ax = axes[0]
ax.plot(np.arange(1, STEPS + 1), losses, color="C0", alpha=0.25, lw=0.7, label="minibatch loss")
ax.plot(np.arange(window, STEPS + 1), smooth, color="C0", label=f"running mean of {window}")
ax.set(xlabel="SGD step", ylabel="cross-entropy (nats)", yscale="log", title="training loss, backprop by hand")
ax.legend(fontsize=8)

ax = axes[1]
ax.plot(list(test_error), list(test_error.values()), marker="o", color="C1")
ax.axhline(100 * 2 / 3, ls="--", c="gray", lw=1)
ax.annotate("chance", (STEPS, 100 * 2 / 3), ha="right", va="bottom", fontsize=8, color="gray")
ax.set(xlabel="SGD step", ylabel="test error %", title="test error", ylim=(0, 72))

ax = axes[2]
grid_1d = np.linspace(-1.2, 1.2, 200)
gx, gy = np.meshgrid(grid_1d, grid_1d)
regions = predict(np.stack([gx.ravel(), gy.ravel()], axis=1), W1, b1, W2, b2).reshape(gx.shape)
ax.contourf(gx, gy, regions, levels=[-0.5, 0.5, 1.5, 2.5], colors=["C0", "C1", "C2"], alpha=0.25)
ax.scatter(x_te[:, 0], x_te[:, 1], c=[f"C{k}" for k in y_test], s=6)
ax.set(title="test points over the decision regions", xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
save_figure(fig, OUT / FIGURES[1])

for name in FIGURES:
    assert (OUT / name).stat().st_size > 0, f"{name} was not written"
    print(f"wrote {OUT / name}")
if "ipykernel" in sys.modules:  # in a notebook, show what was written
    from IPython.display import Image, display

    for name in FIGURES:
        display(Image(filename=str(OUT / name)))

# %% [markdown]
# ### What it shows
#
# At both sizes (the checks use the same small network; the numbers are printed above, and each statement here
# is asserted by the run): every gradient, by hand and from the layers (which agree to the last bit), matches
# central differences to a relative error between about $10^{-10}$ and $10^{-9}$, while the two bugs score 0.81
# and $7/9 = 0.78$; the central differences are most accurate between $\epsilon = 10^{-5}$ and $10^{-4}$ (about
# $10^{-11}$) and off by about $10^{-3}$ at $\epsilon = 10^{-12}$; one SGD step by hand is the layers' update bit
# for bit. At the default size the hand-written training run takes the test error from chance to about 6% after
# 300 steps (asserted: between 3% and 9%) and about 1% after 3000 (asserted: below 2.5%); the tiny run stops at
# 300 steps, asserted below 10%.
#
# ## 6. Where the locks are
#
# Look again at the order in which one training step ran, and at what each layer needed before it could
# update:
#
# | order | computation | needs |
# |---|---|---|
# | 1 | layer 1 forward, $z_1 = xW_1 + b_1$, $h = \max(z_1, 0)$ | $x$ |
# | 2 | layer 2 forward, $z = hW_2 + b_2$ | $h$ from layer 1 |
# | 3 | loss and $\partial L/\partial z$ | the logits *and the labels* |
# | 4 | layer 2 backward and update | $\partial L / \partial z$ |
# | 5 | layer 1 backward and update | $dh = dz\, W_2^\top$: layer 2's backward, with layer 2's weights |
#
# Layer 1 computed its output at step 1 and then sat idle until step 5. It waited for three things, the three
# **locks** of backpropagation (Jaderberg et al. 2016):
#
# * **forward lock**: layer 2 cannot start before layer 1 has produced $h$;
# * **update lock**: layer 1 cannot update before the forward pass has reached the loss;
# * **backward lock**: layer 1 cannot update before the gradient has come back down through every layer above.
#
# The formula says the same: $dW_1 = x^\top \big((dz\, W_2^\top) \odot [z_1 > 0]\big)$ contains the labels
# (inside $dz$) and the weights of the layer above. Change either, and layer 1's gradient changes, although
# layer 1 itself and its input did not:

# %%
W1_check, b1_check, W2_check, b2_check = (params_hand[k] for k in ("W1", "b1", "W2", "b2"))  # section 1's network
g_ref = backward_by_hand(yb, cache_hand)["W1"]

y_other = yb.copy()
y_other[0] = (y_other[0] + 1) % 3  # another label for one example
_, cache_other = forward_by_hand(xb, y_other, W1_check, b1_check, W2_check, b2_check)
g_other_label = backward_by_hand(y_other, cache_other)["W1"]

W2_other = W2_check + 0.1 * np.random.default_rng(5).standard_normal(W2_check.shape)  # the layer above changes
_, cache_w2 = forward_by_hand(xb, yb, W1_check, b1_check, W2_other, b2_check)
g_other_w2 = backward_by_hand(yb, cache_w2)["W1"]

assert np.array_equal(cache_other[2], cache_hand[2]) and np.array_equal(cache_w2[2], cache_hand[2]), (
    "layer 1's own forward pass (z1) must be the same in all three"
)
print(
    f"layer 1's z1 identical in all three; |dW1| changes by up to {np.abs(g_other_label - g_ref).max():.2e} "
    f"when one label changes, {np.abs(g_other_w2 - g_ref).max():.2e} when W2 changes"
)
assert np.abs(g_other_label - g_ref).max() > 1e-6, "layer 1's gradient must depend on the labels"
assert np.abs(g_other_w2 - g_ref).max() > 1e-6, "layer 1's gradient must depend on the layer above"

# %% [markdown]
# In a two-layer network on one CPU the waiting costs nothing much. In a deep network split over several
# devices, every device but one idles most of the time; in a network that talks to another network on a
# slower clock, the gradient may not exist for a long time yet. Tutorial 02 draws these waits on a timeline.
# Tutorial 03 then builds the piece that removes the update and backward locks: a small module that *predicts*
# $\partial L / \partial h$ from $h$ alone, as soon as $h$ exists - a synthetic gradient.

# %%
print(f"tutorial 01 finished in {time.perf_counter() - T_START:.1f}s")
