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
# # Tutorial 10: recurrent cells and backpropagation through time
#
# Tutorials 01-09 decoupled the layers of a feed-forward network. The rest of the paper (Jaderberg et al. 2016,
# section 3.1 and the recurrent experiments) decouples a recurrent network **from its own future**: a network that
# reads a long sequence is trained in windows of $T$ steps, and a synthetic gradient stands in for everything the
# window cannot see. This tutorial builds what that rests on, in `minidni.recurrent.cells`, and proves with asserts:
#
# 1. **the cells and the state** $s$: `RNNCell` ($s = h$) and `LSTMCell` ($s = [h, c]$); the LSTM's equations
#    written out in NumPy equal the cell;
# 2. **backpropagation through time** (BPTT) over an unrolled sequence: every gradient (weights, readout, inputs,
#    initial state) equals float64 central differences;
# 3. **truncated BPTT**: with chunks of $T$ steps, the gradient of a loss at a step $t \ge T$ with respect to an
#    input before the boundary is exactly zero, while under full BPTT it is not; and full BPTT is truncated BPTT
#    plus one missing array per boundary, the gradient $\partial L / \partial s_T$ that would have crossed it. That
#    array is what DNI predicts (tutorial 11);
# 4. the picture: $\lVert \partial \ell_t / \partial x_0 \rVert$ against $t$, and the whole matrix
#    $\lVert \partial \ell_t / \partial x_u \rVert$, for full and truncated BPTT.
#
# Read tutorial 04 first (what a synthetic gradient is); the reference is `docs/recurrent.md`. Sizes:
# `MINIDNI_TINY=1` shrinks everything so that the script runs in a few seconds (the test suite does this); figures
# go to `tutorials/out/`, or to `$MINIDNI_TUTORIAL_OUT`.

# %%
import os
import sys
import time
from pathlib import Path

import numpy as np

import minidni.core.backend
import minidni.core.functional as F
from minidni.core.gradcheck import assert_close, check_function, numerical_gradient
from minidni.recurrent.cells import LSTMCell, RecurrentNet, RNNCell, unroll_backward, unroll_forward, zero_grads
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
FIGURES = ["10_recurrent_cells_and_bptt.png"]  # what it writes into OUT (tests check)

# the sizes of the picture (section 4); sections 1-3 are tiny at every size (central differences are slow)
SEQ = 20 if TINY else 60  # steps in the sequence
T_PIC = 5 if TINY else 10  # truncation: steps per chunk
H_PIC = 16 if TINY else 64  # hidden units
B_PIC = 4 if TINY else 16  # sequences in the batch
print(f"{'tiny' if TINY else 'default'} size; figures go to {OUT}")

# %% [markdown]
# ## 1. Two cells, one state
#
# A recurrent cell maps an input and the previous state to the next state, $s_t = f(x_t, s_{t-1})$. Everything the
# cell carries from one step to the next is **one array** $s$ of shape $(B, S)$, because that is the quantity a
# synthetic gradient will be predicted for. Both cells read $[x_t, h_{t-1}]$ (concatenated along the features)
# through one weight matrix $W$ of $D + H$ rows.
#
# **RNN** ($S = H$): $\quad h_t = \tanh([x_t, h_{t-1}]\, W + b), \qquad s_t = h_t$.
#
# **LSTM** ($S = 2H$): $W$ has $4H$ columns, the gate blocks in the order $i, f, o, g$:
#
# $$[z_i, z_f, z_o, z_g] = [x_t, h_{t-1}]\, W + b, \qquad
#   i = \sigma(z_i),\ f = \sigma(z_f),\ o = \sigma(z_o),\ g = \tanh(z_g),$$
# $$c_t = f \odot c_{t-1} + i \odot g, \qquad h_t = o \odot \tanh(c_t), \qquad s_t = [h_t, c_t].$$
#
# The cell's *output*, what a readout reads, is $h = s_{:, :H}$ in both cases (`cell.output(s)`). What a
# synthetic-gradient module will read of the state (tutorial 11) is `cell.features(s)`: $h$ for the RNN,
# $[h, \tanh c]$ for the LSTM, whose $c$ is unbounded. The forget gate's bias starts at 1, so a fresh cell keeps
# most of $c$ from step to step.

# %%
rng = np.random.default_rng(0)
D, H, B = 3, 4, 2  # tiny, float64: the central differences of section 2 need it
rnn = RNNCell(D, H, rng=rng, dtype=np.float64)
lstm = LSTMCell(D, H, rng=rng, dtype=np.float64)
for cell in (rnn, lstm):
    print(f"{cell}: W {cell.params['W'].shape}, b {cell.params['b'].shape}, state size S = {cell.state_size}")
assert rnn.state_size == H and lstm.state_size == 2 * H
assert np.array_equal(lstm.params["b"][H : 2 * H], np.ones(H)), "the forget gate's bias starts at 1"
assert not lstm.params["b"][:H].any() and not lstm.params["b"][2 * H :].any(), "the other biases start at 0"

x = rng.standard_normal((B, D))  # (B, D)
s_prev = rng.standard_normal((B, lstm.state_size))  # (B, 2H) = [h_prev, c_prev]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))  # the textbook form (the cell uses 0.5 (tanh(z/2) + 1), the same function)


# the RNN, by hand
h_rnn = np.tanh(np.concatenate([x, s_prev[:, :H]], axis=1) @ rnn.params["W"] + rnn.params["b"])
s_rnn, _ = rnn.step(x, s_prev[:, :H])
assert_close(s_rnn, h_rnn, rtol=1e-13, atol=1e-15, name="RNN step vs tanh([x, h] W + b)")

# the LSTM, by hand
h_prev, c_prev = s_prev[:, :H], s_prev[:, H:]
z = np.concatenate([x, h_prev], axis=1) @ lstm.params["W"] + lstm.params["b"]  # (B, 4H)
i, f, o, g = sigmoid(z[:, :H]), sigmoid(z[:, H : 2 * H]), sigmoid(z[:, 2 * H : 3 * H]), np.tanh(z[:, 3 * H :])
c = f * c_prev + i * g
h = o * np.tanh(c)
s_lstm, _ = lstm.step(x, s_prev)
print(f"LSTM: x {x.shape}, s_prev {s_prev.shape} -> s {s_lstm.shape} = [h {h.shape}, c {c.shape}]")
print(f"max |cell - by hand|: h {np.abs(s_lstm[:, :H] - h).max():.1e}, c {np.abs(s_lstm[:, H:] - c).max():.1e}")
assert_close(s_lstm, np.concatenate([h, c], axis=1), rtol=1e-13, atol=1e-15, name="LSTM step vs its equations")
assert np.array_equal(lstm.output(s_lstm), s_lstm[:, :H]), "the LSTM's output is h, the first H numbers of s"
assert_close(lstm.features(s_lstm), np.concatenate([h, np.tanh(c)], axis=1), rtol=1e-13, atol=1e-15, name="[h, tanh c]")
assert np.array_equal(rnn.features(s_rnn), s_rnn), "the RNN's state is read as it is"

# %% [markdown]
# ## 2. Unrolling, and backpropagation through time
#
# `RecurrentNet` is a cell plus a linear readout at every step, $\text{logits}_t = h_t V + c$. Unrolled over
# $t = 1 \dots L$ from $s_0$ with a loss $\ell_t$ at every step and $L_{tot} = \sum_t \ell_t$, the network is a deep
# feed-forward network whose layers share $W$. Backpropagation walks it from the last step to the first. The state
# gradient at step $t$ has two sources, the step's own loss and the future:
#
# $$\delta_t \equiv \frac{\partial L_{tot}}{\partial s_t}
#   = \underbrace{\Big[\frac{\partial \ell_t}{\partial h_t},\ 0\Big]}_{\text{readout: } d\text{logits}_t V^\top}
#   + \delta_{t+1} \frac{\partial s_{t+1}}{\partial s_t}, \qquad \delta_{L} \text{ given } (\text{0, or what
#   comes from beyond}),$$
#
# and, because $W$ is shared, its gradient is a **sum over steps**:
# $\partial L_{tot} / \partial W = \sum_t \delta_t\, \partial s_t / \partial W|_{\text{step } t}$. The cell's
# `step_backward` turns $\delta_t$ into $(\partial/\partial x_t, \partial/\partial s_{t-1})$ and *adds* its
# step's $dW$, $db$ (call `zero_grads` first; `RecurrentNet.backward` does). Here $\ell_t$ is the softmax
# cross-entropy against a random target class (batch mean), $L_{tot}$ their sum (`functional.softmax_xent_sum`),
# and the gradients come from one call,
#
#     logits, ss, cache = net.forward(xs, s0)          # xs: (L, B, D), ss: (L, B, S)
#     ds0, dxs = net.backward(dlogits, ds_L, cache, need_dxs=True)
#
# Each is checked against float64 central differences, $(L_{tot}(\theta + \epsilon) - L_{tot}(\theta - \epsilon))
# / 2\epsilon$, one number at a time (`minidni.core.gradcheck`): the weights $W, b$, the readout $V, c$, every input
# $x_t$, the initial state $s_0$, and a gradient $\delta_L$ injected at the last state (that is where a
# synthetic gradient will enter).

# %%
L_CHECK, O = 6, 3  # steps, output classes


def small_net(Cell, seed):
    rng = np.random.default_rng(seed)
    return RecurrentNet(Cell(D, H, rng=rng, dtype=np.float64), O, rng=rng, dtype=np.float64), rng


def check_bptt(Cell):
    """BPTT over L_CHECK steps of a small float64 net, every gradient against central differences."""
    net, rng = small_net(Cell, seed=1)
    xs = rng.standard_normal((L_CHECK, B, D))  # (L, B, D)
    s0 = 0.5 * rng.standard_normal((B, net.state_size))  # (B, S)
    targets = rng.integers(0, O, size=(L_CHECK, B))  # (L, B)
    ds_L = rng.standard_normal((B, net.state_size))  # a gradient arriving at s_L from beyond the window

    def total_loss():
        """L_tot + <ds_L, s_L>: the second term has gradient ds_L at s_L, as if it came from the future."""
        logits, ss, _ = net.forward(xs, s0)
        return F.softmax_xent_sum(logits, targets)[0] + float((ds_L * ss[-1]).sum())

    logits, _, cache = net.forward(xs, s0)
    loss, dlogits = F.softmax_xent_sum(logits, targets)  # dlogits: (L, B, O)
    ds0, dxs = net.backward(dlogits, ds_L, cache, need_dxs=True)
    analytic = {
        "W": net.cell.grads["W"].copy(),
        "b": net.cell.grads["b"].copy(),
        "V": net.readout.grads["W"].copy(),
        "c": net.readout.grads["b"].copy(),
        "xs": dxs,
        "s0": ds0,
    }
    arrays = {
        "W": net.cell.params["W"],
        "b": net.cell.params["b"],
        "V": net.readout.params["W"],
        "c": net.readout.params["b"],
        "xs": xs,
        "s0": s0,
    }
    check_function(total_loss, arrays, analytic, rtol=1e-6, atol=1e-8)  # raises at the first mismatch
    n_numbers = sum(a.size for a in arrays.values())
    print(
        f"{net.cell}: L = {L_CHECK} steps, loss {loss:.4f}; all {n_numbers} gradient entries match central differences"
    )
    return net, xs, s0, dlogits, ds_L, analytic


check_bptt(RNNCell)
net, xs, s0, dlogits, ds_L, analytic = check_bptt(LSTMCell)  # kept for the next cell

# %% [markdown]
# **W is shared: its gradient is the sum of per-step contributions.** Running `unroll_backward` twice without
# zeroing in between doubles $dW$; zeroed, then run, it gives the same $dW$ as `RecurrentNet.backward` above.

# %%
dh = (dlogits.reshape(L_CHECK * B, O) @ net.readout.params["W"].T).reshape(L_CHECK, B, H)  # readout's dh_t
_, caches = unroll_forward(net.cell, xs, s0)
zero_grads(net.cell)
unroll_backward(net.cell, dh, ds_L, caches)
once = net.cell.grads["W"].copy()
unroll_backward(net.cell, dh, ds_L, caches)
assert_close(once, analytic["W"], rtol=1e-12, atol=1e-14, name="dW from unroll_backward vs RecurrentNet.backward")
assert_close(net.cell.grads["W"], 2 * once, rtol=1e-12, atol=1e-14, name="dW accumulates")

# %% [markdown]
# ## 3. Truncated BPTT: what never crosses a boundary
#
# A network reading a long (or endless) sequence cannot keep every step's cache until the end. **Truncated BPTT**
# cuts the sequence into chunks of $T$ steps: chunk $k$ covers steps $kT \dots kT + T - 1$ and starts from the
# state the previous chunk ended in (the *value* is carried forward), but its backward pass starts with
# $\delta = 0$ at its last state: no gradient crosses a boundary. So for a loss $\ell_t$ with $t \ge T$ (in
# chunk 1 or later) and an input $x_u$ with $u < T$ (in chunk 0):
#
# $$\Big(\frac{\partial \ell_t}{\partial x_u}\Big)_{\text{truncated}} = 0 \quad\text{exactly}, \qquad\text{while}
#   \qquad \frac{\partial \ell_t}{\partial x_u} = \frac{\partial \ell_t}{\partial s_{T-1}}
#   \frac{\partial s_{T-1}}{\partial x_u} \ne 0 \quad\text{in general.}$$
#
# (Steps count from 0 in code: chunk 0 holds steps $0 \dots T-1$ and ends in the state $s_{T-1}$, which chunk 1
# starts from.) Below: a sequence of two chunks of $T = 4$, a loss at step $t = T + 1$ only, and three ways to
# get $\partial \ell_t / \partial x$:
#
# * **full BPTT**: one forward and one backward over all $2T$ steps; its $\partial \ell_t / \partial x_0$ is checked
#   against central differences (it is a real, nonzero derivative);
# * **truncated BPTT**: chunk 1 backward from $\delta = 0$, then chunk 0 backward from $\delta = 0$ (chunk 0 holds
#   no loss): every input gradient of chunk 0 is exactly zero, and so is chunk 0's contribution to $dW$;
# * **truncated plus the missing array**: chunk 0 backward from $\delta_{T-1} = \partial \ell_t / \partial
#   s_{T-1}$, the gradient chunk 1's backward computed at its start and truncation threw away. This reproduces full
#   BPTT: every input gradient and the summed $dW$.

# %%
T_CHECK = 4


def check_truncation(Cell):
    """Two chunks of T_CHECK steps, a loss at step T_CHECK + 1: full, truncated, and truncated + the boundary array."""
    net, rng = small_net(Cell, seed=2)
    S = net.state_size
    xs = rng.standard_normal((2 * T_CHECK, B, D))  # (2T, B, D)
    s0 = np.zeros((B, S))
    t_loss = T_CHECK + 1  # the one step with a loss: in chunk 1
    target = rng.integers(0, O, size=B)

    def step_loss(logits, t):
        """dlogits (steps, B, O) for the loss at step t only (t counted within these logits); the loss."""
        loss, d = F.softmax_cross_entropy(logits[t], target)
        dlogits = np.zeros_like(logits)
        dlogits[t] = d
        return float(loss), dlogits

    # full BPTT over 2T steps
    logits, _, cache = net.forward(xs, s0)
    _, dlogits = step_loss(logits, t_loss)
    _, dxs_full = net.backward(dlogits, np.zeros((B, S)), cache, need_dxs=True)
    dW_full = net.cell.grads["W"].copy()
    numeric = numerical_gradient(lambda: step_loss(net.forward(xs, s0)[0], t_loss)[0], xs)[0]  # d loss / d x_0
    assert_close(dxs_full[0], numeric, rtol=1e-6, atol=1e-9, name="full BPTT d loss / d x_0")

    # truncated BPTT: two chunks, the state's value carried, nothing crossing back
    _, ss0, cache0 = net.forward(xs[:T_CHECK], s0)
    s_boundary = ss0[-1].copy()  # s_{T-1}: the value chunk 1 starts from
    logits1, _, cache1 = net.forward(xs[T_CHECK:], s_boundary)
    _, dlogits1 = step_loss(logits1, t_loss - T_CHECK)
    ds_boundary, dxs_1 = net.backward(dlogits1, np.zeros((B, S)), cache1, need_dxs=True)  # chunk 1
    dW_1 = net.cell.grads["W"].copy()
    _, dxs_0 = net.backward(None, np.zeros((B, S)), cache0, need_dxs=True)  # chunk 0: no loss, nothing arrives
    dW_0 = net.cell.grads["W"].copy()
    print(
        f"{net.cell}, loss at step {t_loss}: |d loss/d x_0| full {np.linalg.norm(dxs_full[0]):.3e}, truncated "
        f"{np.linalg.norm(dxs_0[0]):.1e}; dropped at the boundary: |d loss/d s_(T-1)| = "
        f"{np.linalg.norm(ds_boundary):.3e}"
    )
    assert np.abs(dxs_full[0]).max() > 1e-6, "under full BPTT the loss at step T+1 depends on x_0"
    assert not dxs_0.any() and not dW_0.any(), "truncated: nothing from chunk 1's loss may reach chunk 0"
    assert_close(dxs_1, dxs_full[T_CHECK:], rtol=1e-12, atol=1e-15, name="inside its chunk truncation is exact")

    # the missing array: chunk 0 backward from the gradient chunk 1 computed at its start
    _, dxs_0_fixed = net.backward(None, ds_boundary, cache0, need_dxs=True)
    dW_0_fixed = net.cell.grads["W"].copy()
    assert_close(dxs_0_fixed, dxs_full[:T_CHECK], rtol=1e-10, atol=1e-14, name="chunk 0 with the boundary gradient")
    assert_close(dW_0_fixed + dW_1, dW_full, rtol=1e-10, atol=1e-14, name="dW: the chunks add up to full BPTT")


for Cell in (RNNCell, LSTMCell):
    check_truncation(Cell)

# %% [markdown]
# So truncation loses exactly one array per boundary, $\partial L_{future} / \partial s_{boundary}$, and with it
# every dependence longer than the window. Computing it exactly means waiting for the future to happen (the
# update lock, in time); DNI predicts it instead, $\hat\delta = M(s_{boundary})$, as soon as the boundary is
# reached. Tutorial 11 does that.
#
# ## 4. The picture: how far back a loss reaches
#
# A batch of $B$ random sequences of $L$ steps, a loss $\ell_t$ (softmax cross-entropy against a random class) at
# every step, and for every pair (loss step $t$, input step $u$) the norm of the input gradient
# $G_{tu} = \lVert \partial \ell_t / \partial x_u \rVert$ (over the batch and the input features), for an RNN and
# an LSTM with $H$ units, untrained. Full BPTT gets $G$ by one backward pass per $t$ with the loss at step $t$
# only; truncated BPTT by the same pass inside the chunk holding $t$. The asserts: both are causal ($G_{tu} = 0$
# for $u > t$); truncated is exactly zero for every $u$ before the start of $t$'s chunk, and equals full BPTT inside
# the chunk; the far corner $G_{L-1, 0}$, the smallest number in the picture, equals float64 central differences of
# $\ell_{L-1}$ with respect to $x_0$; under full BPTT $G_{t0}$ falls from $t = 0$ to $t = T$ to $t = L - 1$; and
# the LSTM's **reach**, $G_{L-1, 0} / G_{00}$, is larger than the RNN's.

# %%
D_PIC, O_PIC = 8, 8


def gradient_matrix(net, xs, targets, T=None):
    """(L, L) matrix of ||d loss_t / d x_u||: full BPTT (T None) or truncated BPTT with chunks of T steps."""
    L, Bn, _ = xs.shape
    G = np.zeros((L, L))
    zero_state = np.zeros((Bn, net.state_size))
    # the forward pass, chunk by chunk: the state's value carries over (for T = None: one chunk of L steps)
    T = T or L
    chunks, s = [], zero_state
    for a in range(0, L, T):
        logits, ss, cache = net.forward(xs[a : a + T], s)
        chunks.append((a, logits, cache))
        s = ss[-1].copy()
    for t in range(L):
        a, logits, cache = chunks[t // T]  # the chunk holding step t: the backward never leaves it
        _, d = F.softmax_cross_entropy(logits[t - a], targets[t])
        dlogits = np.zeros_like(logits)
        dlogits[t - a] = d
        _, dxs = net.backward(dlogits, zero_state, cache, need_dxs=True)  # (chunk steps, B, D)
        G[t, a : a + len(dxs)] = np.sqrt((dxs**2).sum(axis=(1, 2)))
    return G


pictures, reach = {}, {}  # reach: |d loss_(L-1) / d x_0| / |d loss_0 / d x_0| per cell
for Cell in (RNNCell, LSTMCell):
    rng = np.random.default_rng(3)
    net = RecurrentNet(Cell(D_PIC, H_PIC, rng=rng, dtype=np.float64), O_PIC, rng=rng, dtype=np.float64)
    xs = rng.standard_normal((SEQ, B_PIC, D_PIC))
    targets = rng.integers(0, O_PIC, size=(SEQ, B_PIC))
    full = gradient_matrix(net, xs, targets)
    trunc = gradient_matrix(net, xs, targets, T=T_PIC)
    pictures[Cell.__name__] = (full, trunc)

    steps = np.arange(SEQ)
    chunk_start = (steps // T_PIC) * T_PIC  # (L,) first step of each t's chunk
    before = steps[None, :] < chunk_start[:, None]  # (L, L): u before t's chunk
    same_chunk = ~before & (steps[None, :] <= steps[:, None])  # u in t's chunk, u <= t
    assert not np.triu(full, k=1).any() and not np.triu(trunc, k=1).any(), "a loss cannot depend on later inputs"
    assert not trunc[before].any(), "truncated BPTT: exactly zero across every boundary"
    assert full[before].min() > 0, "full BPTT: every earlier input matters, however little"
    assert_close(trunc[same_chunk], full[same_chunk], rtol=1e-12, atol=0, name="inside a chunk truncation is exact")

    # the picture's far corner, G[L-1, 0], by central differences: the loss at the last step against the first input
    # (eps 1e-4, not 1e-6: the entries are about 1e-6 of the loss, and rounding error grows as eps shrinks)
    def last_loss(net=net, xs=xs, targets=targets):  # this cell's net and data
        logits, _, _ = net.forward(xs, np.zeros((B_PIC, net.state_size)))
        return F.softmax_cross_entropy(logits[SEQ - 1], targets[SEQ - 1])[0]

    far = np.linalg.norm(numerical_gradient(last_loss, xs[0], eps=1e-4))  # xs[0]: a view, perturbing it perturbs xs
    assert_close(full[SEQ - 1, 0], far, rtol=1e-5, atol=0, name=f"{Cell.__name__}: G[L-1, 0] vs central differences")
    reach[Cell.__name__] = full[SEQ - 1, 0] / full[0, 0]
    print(
        f"{Cell.__name__}: |d loss_t/d x_0| full BPTT at t = 0, {T_PIC}, {SEQ - 1}: "
        f"{full[0, 0]:.2e}, {full[T_PIC, 0]:.2e}, {full[SEQ - 1, 0]:.2e} (central differences {far:.2e}); "
        f"truncated at t = {T_PIC}: {trunc[T_PIC, 0]}; reach |d loss_{SEQ - 1}/d x_0| / |d loss_0/d x_0| "
        f"= {reach[Cell.__name__]:.1e}"
    )
    assert full[SEQ - 1, 0] < full[T_PIC, 0] < full[0, 0], "full BPTT: the gradient fades as the loss moves away"

# the LSTM's cell c carries gradients back through the forget gates alone (sigma(1) = 0.73 at the start): it
# reaches further back than the RNN, whose every step multiplies by W and tanh'
assert abs(1 / (1 + np.exp(-1.0)) - 0.73) < 0.005
assert reach["LSTMCell"] > reach["RNNCell"], f"the LSTM should reach further back than the RNN: {reach}"
if not TINY:  # the prose's orders of magnitude, at the default size (60 steps, 64 units, untrained)
    assert 1e-4 < reach["RNNCell"] < 1.5e-3 and 1e-3 < reach["LSTMCell"] < 1e-2, reach

# %% [markdown]
# ### The picture
#
# Left: $\lVert \partial \ell_t / \partial x_0 \rVert$ against $t$ (log scale). Full BPTT's curves fall as the
# loss moves away from $x_0$; truncated BPTT's stop dead at the first boundary, $t = T$, where the values are
# exactly zero (drawn on the bottom edge). Middle and right: the whole matrix $G_{tu}$ for the LSTM, full and
# truncated (white: exactly zero). Truncation keeps only the triangles along the diagonal.

# %%
import matplotlib  # noqa: E402

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # a script writes files; a notebook also shows the figure inline
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
ax = axes[0]
nonzero = [m[m > 0] for pair in pictures.values() for m in pair]
floor = min(v.min() for v in nonzero) / 10  # where exact zeros are drawn
for (name, (full, trunc)), color in zip(pictures.items(), ("C0", "C1")):
    t = np.arange(SEQ)
    ax.plot(t, full[:, 0], "-", color=color, label=f"{name}, full BPTT")
    shown = np.where(trunc[:, 0] > 0, trunc[:, 0], floor)
    ax.plot(t, shown, "o", color=color, mfc="none", ms=5, label=f"{name}, truncated (T = {T_PIC})")
ax.axvline(T_PIC - 0.5, color="gray", ls="--", lw=1)
ax.annotate("first boundary", (T_PIC - 0.3, floor * 3), fontsize=8, color="gray")
ax.annotate("exactly 0", (SEQ - 1, floor * 1.8), ha="right", va="bottom", fontsize=8, color="gray")
ax.set(yscale="log", xlabel="loss step t", ylabel=r"$\|\partial \ell_t / \partial x_0\|$")
ax.set_title("how far back a loss reaches", fontsize=10)
ax.legend(fontsize=8)

full, trunc = pictures["LSTMCell"]
norm = LogNorm(vmin=max(full[full > 0].min(), full.max() * 1e-12), vmax=full.max())
for ax, G, title in ((axes[1], full, "LSTM, full BPTT"), (axes[2], trunc, f"LSTM, truncated BPTT, T = {T_PIC}")):
    image = ax.imshow(np.ma.masked_equal(G, 0), norm=norm, cmap="viridis", origin="upper", interpolation="nearest")
    ax.set(xlabel="input step u", ylabel="loss step t", title=title + r": $\|\partial \ell_t / \partial x_u\|$")
    fig.colorbar(image, ax=ax, fraction=0.046)

fig.tight_layout()
figure = OUT / FIGURES[0]
fig.savefig(figure, dpi=100)
if "ipykernel" in sys.modules:
    plt.show()
plt.close(fig)
print(f"wrote {figure}")

# %% [markdown]
# ### What it shows
#
# * The cells are their equations, and `RecurrentNet.backward` is the exact gradient of an unrolled sequence,
#   including the gradient with respect to the initial state and to a gradient injected at the last state.
# * Truncated BPTT is exact inside a chunk and blind across a boundary: a loss at step $t \ge T$ cannot teach the
#   network anything about what it should have kept from before the boundary. Under full BPTT the gradient fades
#   with distance but never reaches zero. The reach $\lVert \partial \ell_{L-1} / \partial x_0 \rVert /
#   \lVert \partial \ell_0 / \partial x_0 \rVert$ is printed above for both cells; at the default size (60 steps,
#   64 units, untrained) the run asserts that it lies between $10^{-4}$ and $1.5 \cdot 10^{-3}$ for the RNN and ten
#   times higher, between $10^{-3}$ and $10^{-2}$, for the LSTM, whose cell $c$ passes gradients back through the
#   forget gates alone (they start near $\sigma(1) \approx 0.73$). At every size the LSTM reaches further back.
# * Full BPTT = truncated BPTT + one array per boundary, $\partial L_{future} / \partial s_{boundary}$. Tutorial 11
#   predicts that array with a synthetic-gradient module and trains on the copy tasks, where what must be kept is
#   longer than a chunk.

# %%
assert figure.exists() and figure.stat().st_size > 0, "the figure was not written"
print(f"tutorial 10 finished in {time.perf_counter() - T_START:.1f}s")
