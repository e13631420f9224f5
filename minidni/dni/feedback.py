"""Where a block's error signal comes from: backprop, feedback alignment, direct feedback alignment or a synthetic
gradient, behind one interface and mixable per block (the unifying view of Czarnecki et al. 2017).

Hidden block i (counted from 0, as in minidni.dni.steps) updates with an error signal dh_i: an estimate of
delta_i = dL/dh_i, of h_i's shape. Czarnecki et al. point out that every known way of producing it is "a
synthetic gradient" of some form - a model of delta_i, fed some information:

    Backprop                 dh_i = J_{i+1}(dh_{i+1})          the exact model, fed the signal of block i+1
    FeedbackAlignment        dh_i = J_{i+1}[W^T -> B](dh_{i+1}) a fixed random linear model, fed dh_{i+1}
    DirectFeedbackAlignment  dh_i = e B_i                       a fixed random linear model, fed e = dL/dlogits
    Synthetic                dh_i = M(h_i [, y])                a learned model, fed h_i (and the label)

J_{i+1}(d) is block i+1's true backward: the row d times the transposed Jacobian (dh_{i+1}/dh_i)^T. The output
block always gets the true e = dL/dlogits, and every block's parameter gradients are the true ones for the signal
it got; only the signal differs.

What this module deliberately is not: decoupled in time. Its step is locked (forward through every block, then
signals from the top down) because its purpose is to compare error signals; the DNI timing, where a block updates
as soon as it has produced h_i, lives in minidni.dni.steps. Blocks are fully connected (FA needs the block above to
start with a Linear layer, DFA needs (B, D_i) features); convolutional blocks are left out on purpose.
"""

import math

import numpy as np

from minidni.core import functional as F
from minidni.core.backend import DEFAULT_DTYPE, to_numpy, xp
from minidni.dni.blocks import DivergenceError, eval_logits
from minidni.dni.network import check_batch, fcn_blocks
from minidni.core.layers import Linear
from minidni.core.optim import make_optimizer
from minidni.dni.synthetic import make_synthetic_gradient

SIGNALS = ("bp", "fa", "dfa", "sg")


def _param_dtype(stack):
    return next(p.dtype for layer in stack.layers for p in layer.params.values())


class ErrorSignal:
    """The interface: how block i+1 passes a signal down to block i, and what block i makes of it.

    pass_down(above, dh_above, caches): block i+1's backward of its own signal dh_{i+1}, at the parameters of the
        forward pass; fills block i+1's parameter gradients (the true ones for dh_{i+1}) and returns what it sends
        down to block i (None if nothing).
    signal(h, labels, e, passed, learn): -> (dh_i of h_i's shape, sg_loss or None); learn=False changes nothing.
    """

    name = "?"

    def check(self, below, above, i):
        """Clear errors at construction for a strategy that cannot work between these two blocks."""

    def pass_down(self, above, dh_above, caches):
        return above.backward(dh_above, caches, need_dx=True)  # (B, D_i): the true J_{i+1}(dh_{i+1})

    def signal(self, h, labels, e, passed, learn=True):
        return passed, None  # (Backprop, FA): block i's signal is what block i+1 passed down

    def state_arrays(self, prefix=""):
        return {}

    def optimizers(self, prefix=""):
        return {}


class Backprop(ErrorSignal):
    """dh_i = J_{i+1}(dh_{i+1}): block i+1's true backward (W^T for its Linear) of the signal it got."""

    name = "bp"


class FeedbackAlignment(ErrorSignal):
    """dh_i = dz_{i+1} B (Lillicrap et al. 2016): dh_{i+1} goes back through block i+1's later layers (BN, ReLU)
    normally, down to dz_{i+1} = dL/dz of its first layer z = h_i W_{i+1} (+ b); then the fixed random
    B (D_{i+1}, D_i) stands in for W_{i+1}^T. Block i+1 itself still learns dW_{i+1} = h_i^T dz_{i+1}."""

    name = "fa"

    def __init__(self, B):
        self.B = B  # (D_{i+1}, D_i), W_{i+1}^T's shape; never updated

    def check(self, below, above, i):
        first = above.layers[0]
        if not isinstance(first, Linear):
            raise TypeError(
                f"feedback alignment for block {i} needs the block above to start with a Linear layer, "
                f"got {type(first).__name__}"
            )
        W = first.params["W"]  # (D_i, D_{i+1})
        if self.B.shape != W.T.shape or self.B.dtype != W.dtype:
            raise ValueError(f"feedback alignment for block {i}: B must be {W.T.shape} {W.dtype} like W^T of the "
                             f"block above, got {self.B.shape} {self.B.dtype}")  # fmt: skip

    def pass_down(self, above, dh_above, caches):
        dz = dh_above
        for k in range(len(above.layers) - 1, 0, -1):  # the layers after the Linear: their true backward
            dz = above.layers[k].backward(dz, caches[k])  # (B, D_{i+1})
        above.layers[0].backward(dz, caches[0], need_dx=False)  # the Linear's true dW (and db), not its dx
        return F.matmul(dz, self.B)  # (B, D_i): B in place of W^T

    def state_arrays(self, prefix=""):
        return {f"{prefix}B": self.B}


class DirectFeedbackAlignment(ErrorSignal):
    """dh_i = e B_i (Nokland 2016): the output error e = dL/dlogits (B, K) sent straight to block i by a fixed
    random B_i (K, D_i). In Czarnecki's view an untrained linear synthetic gradient fed e instead of h_i."""

    name = "dfa"

    def __init__(self, B):
        self.B = B  # (K, D_i); never updated

    def check(self, below, above, i):
        if self.B.ndim != 2 or self.B.dtype != _param_dtype(below):
            raise ValueError(f"direct feedback alignment for block {i}: B must be a (K, D_{i}) matrix of "
                             f"{_param_dtype(below)}, got {self.B.shape} {self.B.dtype}")  # fmt: skip

    def pass_down(self, above, dh_above, caches):
        above.backward(dh_above, caches, need_dx=False)  # block i+1 learns; nothing comes down (None)

    def signal(self, h, labels, e, passed, learn=True):
        if h.ndim != 2 or self.B.shape != (e.shape[1], h.shape[1]):
            raise ValueError(f"direct feedback alignment: B is {self.B.shape}, but e is {tuple(e.shape)} and h is "
                             f"{tuple(h.shape)}; expected B of shape (K, D) for e (B, K) and h (B, D)")  # fmt: skip
        return F.matmul(e, self.B), None  # (B, D_i)

    def state_arrays(self, prefix=""):
        return {f"{prefix}B": self.B}


class Synthetic(ErrorSignal):
    """dh_i = M(h_i [, y]), a learned minidni.dni.synthetic.SyntheticGradient (zero-initialised: its first signals are
    exactly 0). After predicting, M regresses onto target_i = J_{i+1}(dh_{i+1}): block i+1's TRUE backward of the
    signal block i+1 itself got. That is the true delta_i when block i+1 is the output block or every block above
    is on Backprop; DNI's bootstrapped target when the block above is Synthetic; J_{i+1} of the FA/DFA signal there."""

    name = "sg"

    def __init__(self, module):
        self.module = module

    def signal(self, h, labels, e, passed, learn=True):
        dh_syn, cache = self.module.predict(h, labels)  # (B, D_i)
        sg_loss = self.module.update(dh_syn, cache, dh_target=passed) if learn else None
        return dh_syn, sg_loss

    def state_arrays(self, prefix=""):
        return self.module.state_arrays(prefix)

    def optimizers(self, prefix=""):
        return self.module.optimizers(prefix)


class FeedbackNetwork:
    """A classifier of layer stacks (blocks[:-1] hidden, blocks[-1] the output) with one ErrorSignal per hidden
    block. The step is locked: forward through all blocks, then from the top down each block's backward of its
    signal (at the forward pass's parameters), its update, and the signal of the block below."""

    gate = None  # every block updates on every step (minidni.runs.train asks, as it does of a dni.Network)

    def __init__(self, stacks, signals, max_norm=1e3):
        if len(stacks) < 2:
            raise ValueError(
                f"a network needs at least one hidden block and the output block, got {len(stacks)} stacks"
            )
        if len(signals) != len(stacks) - 1:
            raise ValueError(f"expected one error-signal strategy per hidden block ({len(stacks) - 1}), "
                             f"got {len(signals)}")  # fmt: skip
        for i, s in enumerate(signals):
            if not isinstance(s, ErrorSignal):
                raise TypeError(f"signal {i} must be an ErrorSignal (Backprop, FeedbackAlignment, ...), got {s!r}")
            s.check(stacks[i], stacks[i + 1], i)
        self.blocks, self.signals, self.max_norm = list(stacks), list(signals), max_norm

    def _forward(self, x):
        """Training-mode forward: hs[i] = h_i for the hidden blocks, hs[-1] = logits; caches[i] is block i's."""
        hs, caches, h = [], [], x
        for block in self.blocks:
            h, cache = block.forward(h)  # (B, D_i); the output block's is (B, K)
            hs.append(h)
            caches.append(cache)
        return hs, caches

    def _loss(self, logits, labels):
        loss, e = F.softmax_cross_entropy(logits, labels)  # e = dL/dlogits: (B, K)
        if not math.isfinite(float(loss)):
            raise DivergenceError(f"the training loss is {float(loss)}; the network diverged (lower the learning rate)")
        return float(loss), e

    def _signal(self, i, hs, labels, e, passed, learn):
        dh, sg_loss = self.signals[i].signal(hs[i], labels, e, passed, learn)
        norm = math.sqrt(float(xp().vdot(dh.ravel(), dh.ravel())))
        if not math.isfinite(norm) or norm > self.max_norm:
            raise DivergenceError(f"the {self.signals[i].name!r} signal of block {i} diverged: ||dh|| = {norm:.3g} "
                                  f"(limit {self.max_norm:g})")  # fmt: skip
        return dh, sg_loss

    def train_step(self, x, labels, labels_checked=False):
        """One locked step on x (B, D_in), labels (B,). Returns {"loss": float, "sg_loss": [float or None per
        hidden block]} (None for the blocks whose signal learns nothing). labels_checked: as Network.train_step's
        (this step has no fused form, so it changes nothing here)."""
        check_batch(self.blocks[0].layers[0].params["W"], x, labels)
        n = len(self.signals)
        hs, caches = self._forward(x)
        loss, e = self._loss(hs[-1], labels)
        sg_loss, dh = [None] * n, e  # the output block's signal is the true dL/dlogits
        for i in range(n, 0, -1):  # block i passes down to block i - 1 by i - 1's rule, then updates
            passed = self.signals[i - 1].pass_down(self.blocks[i], dh, caches[i])
            self.blocks[i].update()
            dh, sg_loss[i - 1] = self._signal(i - 1, hs, labels, e, passed, learn=True)
        self.blocks[0].backward(dh, caches[0], need_dx=False)
        self.blocks[0].update()
        return {"loss": loss, "sg_loss": sg_loss}

    def error_signals(self, x, labels):
        """Every hidden block's signal and the true backprop gradient for one batch, as a training step would see
        them: {"signal": [dh_i], "true": [delta_i]}. Changes no parameter, SG module or batch-norm statistic."""
        check_batch(self.blocks[0].layers[0].params["W"], x, labels)
        saved = {k: v.copy() for k, v in self.state_arrays().items() if "running_" in k}
        hs, caches = self._forward(x)
        _, e = self._loss(hs[-1], labels)
        n = len(self.signals)
        signal, true = [None] * n, [None] * n
        dh, delta = e, e
        for i in range(n, 0, -1):  # backward calls fill gradient buffers, which the next step overwrites
            passed = self.signals[i - 1].pass_down(self.blocks[i], dh, caches[i])
            dh, _ = self._signal(i - 1, hs, labels, e, passed, learn=False)
            delta = self.blocks[i].backward(delta, caches[i])  # (B, D_{i-1}): the true dL/dh_{i-1}
            signal[i - 1], true[i - 1] = dh, delta
        arrays = self.state_arrays()
        for k, v in saved.items():  # the diagnostic forward must not move batch-norm running statistics
            arrays[k][...] = v
        return {"signal": signal, "true": true}

    def alignment(self, x, labels):
        """Per hidden block: cosine(dh_i, delta_i) and ||dh_i|| / ||delta_i|| on this batch (changes nothing)."""
        out = self.error_signals(x, labels)
        cosine, norm_ratio = [], []
        for dh, delta in zip(out["signal"], out["true"]):
            dh, delta = to_numpy(dh).ravel(), to_numpy(delta).ravel()
            n_dh, n_delta = float(np.linalg.norm(dh)), float(np.linalg.norm(delta))
            cosine.append(float(dh @ delta) / (n_dh * n_delta) if n_dh > 0 and n_delta > 0 else 0.0)
            norm_ratio.append(n_dh / n_delta if n_delta > 0 else float("nan"))
        return {"cosine": cosine, "norm_ratio": norm_ratio}

    def logits(self, x, batch=1000):
        """Evaluation-mode forward (batch norm with running statistics): x (N, D_in) -> (N, K)."""
        return eval_logits(self.blocks, x, batch)

    def error_pct(self, x, labels, batch=1000):
        return 100.0 * float((self.logits(x, batch).argmax(axis=1) != labels).mean())

    def mean_loss(self, x, labels, batch=1000):
        return float(F.softmax_cross_entropy(self.logits(x, batch), labels)[0])

    def _parts(self):
        for i, block in enumerate(self.blocks):
            yield f"block{i}.", block
        for i, s in enumerate(self.signals):
            yield f"{s.name}{i}.", s  # e.g. "fa1.B", "dfa0.B", "sg2.0.W"

    def state_arrays(self):
        """Every array of the state by name: parameters, statistics, optimiser moments, the fixed B matrices."""
        return {k: v for prefix, part in self._parts() for k, v in part.state_arrays(prefix).items()}

    def optimizers(self):
        return {k: v for prefix, part in self._parts() for k, v in part.optimizers(prefix).items()}

    @property
    def hidden(self):
        return self.blocks[:-1]

    def set_lr_factor(self, factor):
        """Scale every learning rate (the step schedule of minidni.runs.train): lr = base_lr * factor."""
        for opt in self.optimizers().values():
            opt.lr = opt.base_lr * factor


def fixed_random(shape, rng, dtype=DEFAULT_DTYPE):
    """A fixed feedback matrix B of shape (D_out, D_i) ~ N(0, 1/D_i): the Xavier scale of a layer reading h_i."""
    return xp().asarray(rng.standard_normal(shape) / math.sqrt(shape[1]), dtype=dtype)


def build_feedback_network(
    signals=("bp", "bp"),
    depth=None,
    d_in=784,
    hidden=256,
    n_classes=10,
    batchnorm=True,
    sg="linear",
    sg_labels=True,
    sg_hidden=1024,
    sg_layers=2,
    optimizer="adam",
    lr=2e-3,
    sg_lr=1e-5,
    momentum=0.9,
    max_norm=1e3,
    seed=0,
    dtype=DEFAULT_DTYPE,
):
    """The paper's FCN (dni.fcn_blocks) with one strategy name from SIGNALS per hidden block.

    signals: a sequence of names (depth = len(signals) + 1), or one name for every hidden block of `depth`
    (default 3). sg, sg_labels, sg_hidden, sg_layers: the SG modules ("linear" or "mlp"; sg_labels=True feeds them
    the label too, cDNI). Fixed B matrices, SG modules and weights all come from one rng seeded with `seed`.
    """
    if isinstance(signals, str):
        signals = (signals,) * ((3 if depth is None else depth) - 1)
    elif depth is not None and depth != len(signals) + 1:
        raise ValueError(f"depth {depth} needs {depth - 1} signals, got {len(signals)}: {tuple(signals)}")
    unknown = [s for s in signals if s not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown error-signal strategy {unknown[0]!r}; expected one of {SIGNALS}")
    rng = np.random.default_rng(seed)
    stacks = fcn_blocks(len(signals) + 1, d_in, hidden, n_classes, batchnorm, rng, dtype)
    strategies = []
    for i, name in enumerate(signals):
        if name == "bp":
            strategies.append(Backprop())
        elif name == "fa":
            d_above = stacks[i + 1].layers[0].d_out  # D_{i+1}: hidden, or K for the output block
            strategies.append(FeedbackAlignment(fixed_random((d_above, hidden), rng, dtype)))
        elif name == "dfa":
            strategies.append(DirectFeedbackAlignment(fixed_random((n_classes, hidden), rng, dtype)))
        else:
            ctx = n_classes if sg_labels else None
            module = make_synthetic_gradient(sg, hidden, ctx, sg_hidden, sg_layers, 1.0, rng, dtype)
            module.set_optimizer(lambda p: make_optimizer(optimizer, p, sg_lr, momentum))
            strategies.append(Synthetic(module))
    for stack in stacks:
        stack.set_optimizer(lambda p: make_optimizer(optimizer, p, lr, momentum))
    return FeedbackNetwork(stacks, strategies, max_norm=max_norm)
