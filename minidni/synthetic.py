"""Synthetic-gradient modules: M(h) ~ dL/dh, learned by regression.

A synthetic-gradient (SG) module sits after a block that emits h (B, D). It predicts dh_syn = M(h), or
M(h, y) with the one-hot label as context ("cDNI"), so that the block can update at once instead of waiting for
the true gradient dL/dh to come back from the layers above. The module itself learns by regressing its
prediction onto a target gradient dh_target once that exists:

    L_sg = (1/B) sum_b || dh_syn_b - dh_target_b ||^2        (squared error summed over units, batch mean)

Three kinds, all one class with different bodies:
    linear  : dh_syn = h A + c                          (Czarnecki et al.: implies a quadratic loss model)
    mlp     : (Linear -> BatchNorm -> ReLU) x n, then a linear output   (the paper's DNI model: 2 x 1024)
    cDNI    : either of the above on [h, onehot(y)]     (the paper's cDNI model is linear)

The output layer always starts with zero weights AND zero bias, so the first synthetic gradients are exactly
zero: a fresh module cannot push a block in a random direction. (Zeroing only the weights is a known bug: the
bias alone would then be fed back as a gradient.)

The input h is held fixed: the SG loss never sends a gradient into the block that produced h.

What this module deliberately is not: the bootstrapping logic. Which target an SG module regresses onto is
the trainer's business (minidni.dni); here it is just an argument.
"""

import numpy as np

from . import functional as F
from .backend import DEFAULT_DTYPE, xp
from .layers import BatchNorm1d, Linear, ReLU, Sequential


def one_hot(labels, n_classes, dtype=DEFAULT_DTYPE):
    """labels: (B,) integers -> (B, K) one-hot rows."""
    backend = xp()
    out = backend.zeros((labels.shape[0], n_classes), dtype=dtype)
    out[backend.arange(labels.shape[0]), labels] = 1
    return out


class SyntheticGradient:
    """M(h [, y]) -> dh_syn, with its own parameters and optimiser (it updates on its own)."""

    def __init__(self, d, hidden=(), n_classes=None, batchnorm=True, scale=1.0, rng=None, dtype=DEFAULT_DTYPE):
        """d: width of the h it reads and of the gradient it predicts; hidden: widths of hidden layers
        (() = linear); n_classes: if given, the module is label-conditioned (cDNI); scale: the network
        itself outputs scale * dh_syn (see `update`)."""
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        rng = np.random.default_rng(0) if rng is None else rng
        self.d, self.hidden, self.n_classes, self.scale = d, tuple(hidden), n_classes, float(scale)
        layers, width = [], d + (n_classes or 0)
        for h in self.hidden:
            layers.append(Linear(width, h, init="he", bias=not batchnorm, rng=rng, dtype=dtype))
            if batchnorm:
                layers.append(BatchNorm1d(h, dtype=dtype))
            layers.append(ReLU())
            width = h
        layers.append(Linear(width, d, init="zeros", dtype=dtype))  # zero W and zero b: dh_syn starts at 0
        self.net = Sequential(*layers)
        self.dtype = dtype

    @property
    def conditioned(self):
        return self.n_classes is not None

    @property
    def kind(self):
        return ("c" if self.conditioned else "") + ("mlp" if self.hidden else "linear")

    def module_input(self, h, labels=None):
        """What the module's network reads: h (B, D), or [h, onehot(y)] (B, D + K) for a cDNI module."""
        if not self.conditioned:
            return h
        if labels is None:
            raise ValueError("a label-conditioned (cDNI) synthetic-gradient module needs the labels")
        return xp().concatenate([h, one_hot(labels, self.n_classes, h.dtype)], axis=1)

    def predict(self, h, labels=None, train=True):
        """h: (B, D) -> dh_syn (B, D) and the cache that `update` needs."""
        out, cache = self.net.forward(self.module_input(h, labels), train)  # (B, D) = scale * dh_syn
        if self.scale != 1.0:
            out *= 1 / self.scale
        return out, cache

    def update(self, dh_syn, cache, dh_target):
        """One regression step of dh_syn towards dh_target; returns the SG loss (1/B) sum ||dh_syn - dh_target||^2.

        With scale s the network's own output is s * dh_syn and it regresses onto s * dh_target, so its
        gradient is s times that of the loss above. Gradients of a batch-mean loss are O(1/B); s = B makes the
        network's targets O(1) (per-example gradients), the scale its initialisation and optimiser expect.
        """
        loss, dpred = F.mse(dh_syn, dh_target)
        if self.scale != 1.0:
            dpred *= self.scale
        self.net.backward(dpred, cache, need_dx=False)  # h is an input, not a parameter: no dh from here
        self.net.update()
        return loss

    def set_optimizer(self, make_optimizer):
        self.net.set_optimizer(make_optimizer)

    def state_arrays(self, prefix=""):
        return self.net.state_arrays(prefix)

    def optimizers(self, prefix=""):
        return self.net.optimizers(prefix)

    def __repr__(self):
        ctx = f", n_classes={self.n_classes}" if self.conditioned else ""
        return f"SyntheticGradient(d={self.d}, hidden={self.hidden}{ctx})"


def make_synthetic_gradient(
    kind, d, n_classes=None, hidden_width=1024, hidden_layers=2, scale=1.0, rng=None, dtype=DEFAULT_DTYPE
):
    """Build an SG module by name: 'linear' or 'mlp' (the label conditioning is given by n_classes)."""
    if kind == "linear":
        hidden = ()
    elif kind == "mlp":
        if hidden_layers < 1:
            raise ValueError(f"an 'mlp' synthetic-gradient module needs at least one hidden layer, got {hidden_layers}")
        hidden = (hidden_width,) * hidden_layers
    else:
        raise ValueError(f"unknown synthetic-gradient module {kind!r}; expected 'linear' or 'mlp'")
    return SyntheticGradient(d, hidden=hidden, n_classes=n_classes, scale=scale, rng=rng, dtype=dtype)
