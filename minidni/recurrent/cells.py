"""Recurrent cells and the unrolled recurrent network, with explicit forward and backward through time.

A recurrent cell maps (x_t, s_{t-1}) -> s_t. Everything the cell carries from one step to the next is ONE array,
the recurrent state s (B, S), because that is the quantity a synthetic gradient is predicted for:

    RNNCell  : s = h,        h_t = tanh([x_t, h_{t-1}] W + b)                                   S = H
    LSTMCell : s = [h, c],   [i, f, o, g] = [x_t, h_{t-1}] W + b   (sigmoid, sigmoid, sigmoid, tanh)
                             c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)                       S = 2H

The cell's output (what the readout and the next network read) is h = s[:, :H] in both cases.

    s_T, caches = unroll_forward(cell, xs, s_0)         # xs: (T, B, D); one cache per step
    ds_0 = unroll_backward(cell, dhs, ds_T, caches)     # dhs: (T, B, H) gradients on each h_t; ds_T: from the future

`unroll_backward` walks the caches from the last step to the first. The gradient on the state at step t is the
sum of what the step-t readout sends back (dhs[t]) and what step t+1 sends back through s_t; ds_T is whatever
is known about the gradient from beyond the unrolled window: zero for truncated BPTT, a synthetic gradient for
DNI (minidni.recurrent.truncated). The parameter gradients ACCUMULATE over the steps (`cell.zero_grads()` first): W is
shared by every step. Each step's cache holds the W it stepped with, a snapshot (see minidni.core.layers.Linear.forward)
taken once per window by `unroll_forward` and shared by its steps, so a backward after an update still uses the
weights of the forward pass.

`RecurrentNet` is a cell plus a linear readout applied at every step, logits_t = h_t V + c; it is what the
copy tasks and the language model train.

What this module deliberately is not: a trainer. Where the unrolled window ends, what flows in at ds_T and when
the parameters move is minidni.recurrent.truncated's business.
"""

import numpy as np

from minidni.core import functional as F
from minidni.core.backend import DEFAULT_DTYPE, xp
from minidni.core.layers import Layer, Linear


def _sigmoid(z):
    backend = xp()
    return 0.5 * (backend.tanh(0.5 * z) + 1)  # = 1 / (1 + e^-z), without overflow for large |z|


class RNNCell(Layer):
    """h_t = tanh([x_t, h_{t-1}] W + b); the state is h itself. W: (D + H, H)."""

    def __init__(self, d_in, hidden, rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        if d_in <= 0 or hidden <= 0:
            raise ValueError(f"RNNCell needs positive sizes, got d_in={d_in}, hidden={hidden}")
        rng = np.random.default_rng(0) if rng is None else rng
        self.d_in, self.hidden, self.state_size = d_in, hidden, hidden
        W = rng.standard_normal((d_in + hidden, hidden)) / np.sqrt(d_in + hidden)
        backend = xp()
        self.params = {"W": backend.asarray(W, dtype=dtype), "b": backend.zeros(hidden, dtype=dtype)}
        self.grads = {k: backend.zeros_like(v) for k, v in self.params.items()}

    def output(self, s):
        return s  # (B, H)

    def features(self, s):
        """What a module reading the state sees: h itself, already bounded by tanh."""
        return s

    def step(self, x, s_prev, W=None):
        """x: (B, D), s_prev: (B, H) -> s: (B, H), cache. W: a snapshot of params["W"] to step with and cache
        (shared by the steps of a window, see unroll_forward); None takes one for this step."""
        backend = xp()
        W = self.snapshot("W") if W is None else W  # (D + H, H)
        xh = backend.concatenate([x, s_prev], axis=1)  # (B, D + H)
        h = backend.tanh(F.matmul(xh, W) + self.params["b"])  # (B, H)
        return h, (xh, h, W)

    def step_backward(self, ds, cache, param_grads=True):
        """ds: (B, H) total gradient on s_t -> (dx (B, D), ds_prev (B, H)); adds this step's dW, db unless
        param_grads is False."""
        xh, h, W = cache
        dz = ds * (1 - h * h)  # tanh' = 1 - tanh^2
        if param_grads:
            self.grads["W"] += F.matmul(xh.T, dz)
            self.grads["b"] += dz.sum(axis=0)
        dxh = F.matmul(dz, W.T)  # (B, D + H)
        return dxh[:, : self.d_in], dxh[:, self.d_in :]

    def __repr__(self):
        return f"RNNCell({self.d_in}, {self.hidden})"


class LSTMCell(Layer):
    """The LSTM (with forget gate); state s = [h, c] (B, 2H). W: (D + H, 4H), gate blocks in order i, f, o, g.

    The forget gate's bias starts at 1 (`forget_bias`): an untrained cell then keeps most of c from step to step,
    so gradients reach back further from the start of training."""

    def __init__(self, d_in, hidden, forget_bias=1.0, rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        if d_in <= 0 or hidden <= 0:
            raise ValueError(f"LSTMCell needs positive sizes, got d_in={d_in}, hidden={hidden}")
        rng = np.random.default_rng(0) if rng is None else rng
        self.d_in, self.hidden, self.state_size = d_in, hidden, 2 * hidden
        W = rng.standard_normal((d_in + hidden, 4 * hidden)) / np.sqrt(d_in + hidden)
        b = np.zeros(4 * hidden)
        b[hidden : 2 * hidden] = forget_bias
        backend = xp()
        self.params = {"W": backend.asarray(W, dtype=dtype), "b": backend.asarray(b, dtype=dtype)}
        self.grads = {k: backend.zeros_like(v) for k, v in self.params.items()}

    def output(self, s):
        return s[:, : self.hidden]  # h: (B, H)

    def features(self, s):
        """What a module reading the state sees: [h, tanh(c)] (B, 2H). The cell c is unbounded - in a stream that
        is never reset some units integrate (f ~ 1, i g ~ 1) and we measured |c| reaching 2,000 after 2,000 steps
        of the language model - and a linear synthetic-gradient module fed raw c then predicts without bound.
        The squashed copy carries the same information wherever c is in tanh's working range."""
        backend = xp()
        return backend.concatenate([s[:, : self.hidden], backend.tanh(s[:, self.hidden :])], axis=1)

    def step(self, x, s_prev, W=None):
        """x: (B, D), s_prev = [h, c]: (B, 2H) -> s = [h, c]: (B, 2H), cache. W: as in RNNCell.step."""
        backend, H = xp(), self.hidden
        W = self.snapshot("W") if W is None else W  # (D + H, 4H)
        h_prev, c_prev = s_prev[:, :H], s_prev[:, H:]
        xh = backend.concatenate([x, h_prev], axis=1)  # (B, D + H)
        z = F.matmul(xh, W) + self.params["b"]  # (B, 4H)
        ifo = _sigmoid(z[:, : 3 * H])  # (B, 3H): input, forget and output gates
        i, f, o = ifo[:, :H], ifo[:, H : 2 * H], ifo[:, 2 * H :]
        g = backend.tanh(z[:, 3 * H :])  # (B, H): the candidate cell
        c = f * c_prev + i * g
        tc = backend.tanh(c)
        h = o * tc
        return backend.concatenate([h, c], axis=1), (xh, c_prev, ifo, g, tc, W)

    def step_backward(self, ds, cache, param_grads=True):
        """ds = [dh, dc]: (B, 2H) total gradient on s_t -> (dx (B, D), ds_prev (B, 2H)); adds dW, db unless
        param_grads is False."""
        backend, H = xp(), self.hidden
        xh, c_prev, ifo, g, tc, W = cache
        i, f, o = ifo[:, :H], ifo[:, H : 2 * H], ifo[:, 2 * H :]
        dh, dc = ds[:, :H], ds[:, H:]
        dc = dc + dh * o * (1 - tc * tc)  # c reaches the loss directly (next step) and through h = o tanh(c)
        d_ifo = backend.concatenate([dc * g, dc * c_prev, dh * tc], axis=1) * ifo * (1 - ifo)  # sigmoid'
        dg = dc * i * (1 - g * g)  # tanh'
        dz = backend.concatenate([d_ifo, dg], axis=1)  # (B, 4H)
        if param_grads:
            self.grads["W"] += F.matmul(xh.T, dz)
            self.grads["b"] += dz.sum(axis=0)
        dxh = F.matmul(dz, W.T)  # (B, D + H)
        ds_prev = backend.concatenate([dxh[:, self.d_in :], dc * f], axis=1)
        return dxh[:, : self.d_in], ds_prev

    def __repr__(self):
        return f"LSTMCell({self.d_in}, {self.hidden})"


CELLS = {"rnn": RNNCell, "lstm": LSTMCell}


def make_cell(kind, d_in, hidden, rng=None, dtype=DEFAULT_DTYPE):
    if kind not in CELLS:
        raise ValueError(f"unknown recurrent cell {kind!r}; expected one of {tuple(CELLS)}")
    return CELLS[kind](d_in, hidden, rng=rng, dtype=dtype)


def zero_grads(layer):
    for g in layer.grads.values():
        g[...] = 0


def unroll_forward(cell, xs, s0):
    """xs: (T, B, D), s0: (B, S) -> (ss (T, B, S) the states s_1..s_T, caches: one per step)."""
    if xs.ndim != 3 or xs.shape[2] != cell.d_in:
        raise ValueError(f"expected inputs of shape (T, B, {cell.d_in}), got {xs.shape}")
    if s0.shape != (xs.shape[1], cell.state_size):
        raise ValueError(f"expected a state of shape ({xs.shape[1]}, {cell.state_size}), got {s0.shape}")
    ss, caches, s = [], [], s0
    W = cell.snapshot("W")  # one snapshot for the window, shared by every step's cache
    for t in range(xs.shape[0]):
        s, cache = cell.step(xs[t], s, W)
        ss.append(s)
        caches.append(cache)
    return xp().stack(ss), caches


def unroll_backward(cell, dhs, ds_T, caches, param_grads=True):
    """Backpropagation through time over one unrolled window.

    dhs: (T, B, H) gradient on each output h_t from the loss at that step (None: no loss in the window);
    ds_T: (B, S) gradient arriving at the last state from beyond the window.
    Returns (dxs (T, B, D), ds_0 (B, S)); the cell's grads accumulate (call zero_grads first) unless
    param_grads is False."""
    H, ds, dxs = cell.hidden, ds_T, [None] * len(caches)
    for t in range(len(caches) - 1, -1, -1):
        if dhs is not None:
            ds = ds.copy()
            ds[:, :H] += dhs[t]  # the step's own loss adds to h_t's gradient (for the RNN, h is all of s)
        dxs[t], ds = cell.step_backward(ds, caches[t], param_grads)
    return xp().stack(dxs), ds


class RecurrentNet:
    """A recurrent cell and a linear readout at every step: logits_t = h_t V + c.

    Inputs are float vectors (T, B, D) or integer tokens (T, B), which are one-hot encoded over D = `d_in`
    symbols (the language model's characters)."""

    def __init__(self, cell, d_out, rng=None, dtype=DEFAULT_DTYPE):
        rng = np.random.default_rng(0) if rng is None else rng
        self.cell = cell
        self.readout = Linear(cell.hidden, d_out, init="xavier", rng=rng, dtype=dtype)
        self.dtype = dtype

    @property
    def state_size(self):
        return self.cell.state_size

    def initial_state(self, batch):
        return xp().zeros((batch, self.cell.state_size), dtype=self.dtype)

    def encode(self, xs):
        """Integer tokens (T, B) -> one-hot (T, B, D); float inputs pass through unchanged."""
        backend = xp()
        if xs.dtype.kind in "iu":
            if xs.ndim != 2:
                raise ValueError(f"token inputs must be (T, B) integers, got shape {xs.shape}")
            if xs.size and (int(xs.min()) < 0 or int(xs.max()) >= self.cell.d_in):
                raise ValueError(f"token ids must lie in 0..{self.cell.d_in - 1}, got {int(xs.min())}..{int(xs.max())}")
            return backend.eye(self.cell.d_in, dtype=self.dtype)[xs]
        return xs

    def forward(self, xs, s0):
        """xs: (T, B, D) or tokens (T, B); s0: (B, S) -> logits (T, B, O), ss (T, B, S), cache."""
        xs = self.encode(xs)
        ss, cell_caches = unroll_forward(self.cell, xs, s0)
        T, B, _ = ss.shape
        hs = self.cell.output(ss.reshape(T * B, -1))  # (T*B, H): the readout runs on all steps in one matmul
        logits, readout_cache = self.readout.forward(hs)
        return logits.reshape(T, B, -1), ss, (cell_caches, readout_cache, (T, B))

    def backward(self, dlogits, ds_T, cache, dhs_extra=None, need_dxs=False):
        """dlogits: (T, B, O) (None: no loss in the window); ds_T: (B, S) from beyond the window;
        dhs_extra: optional (T, B, H) further gradients on the h_t (an auxiliary loss, or a message sent on).
        Zeroes, then fills, the grads of cell and readout; returns ds_0 (B, S), and with need_dxs also the
        gradients on the inputs, dxs (T, B, D)."""
        cell_caches, readout_cache, (T, B) = cache
        zero_grads(self.cell)
        dhs = None
        if dlogits is not None:
            dhs = self.readout.backward(dlogits.reshape(T * B, -1), readout_cache).reshape(T, B, -1)
        else:
            zero_grads(self.readout)
        if dhs_extra is not None:
            dhs = dhs_extra if dhs is None else dhs + dhs_extra
        dxs, ds0 = unroll_backward(self.cell, dhs, ds_T, cell_caches)
        return (ds0, dxs) if need_dxs else ds0

    def state_backward(self, dlogits, ds_T, cache):
        """Like `backward` but only ds_0, leaving every parameter gradient as it was: what a gradient arriving at
        the window's end (plus the losses inside it) is worth at its start. Used for synthetic-gradient targets."""
        cell_caches, readout_cache, (T, B) = cache
        dhs = None
        if dlogits is not None:  # dh = dlogits V^T, the readout's input gradient alone, with the forward pass's V
            _, V = readout_cache  # (H, O)
            dhs = F.matmul(dlogits.reshape(T * B, -1), V.T).reshape(T, B, -1)
        _, ds0 = unroll_backward(self.cell, dhs, ds_T, cell_caches, param_grads=False)
        return ds0

    def set_optimizer(self, make_optimizer):
        self.cell.set_optimizer(make_optimizer)
        self.readout.set_optimizer(make_optimizer)

    def update(self):
        self.cell.update()
        self.readout.update()

    def layers(self):
        return {"cell": self.cell, "readout": self.readout}

    def state_arrays(self, prefix=""):
        out = {}
        for name, layer in self.layers().items():
            out.update(layer.state_arrays(f"{prefix}{name}."))
        return out

    def __repr__(self):
        return f"RecurrentNet({self.cell!r}, readout={self.readout!r})"
