"""Synthetic-gradient modules: M(h) ~ dL/dh, learned by regression.

A synthetic-gradient (SG) module sits after a block that emits h: (B, D) features, or (B, C, H, W) feature maps.
It predicts dh_syn = M(h), or M(h, y) with the label as context ("cDNI"), so that the block can update at once
instead of waiting for the true gradient dL/dh to come back from the layers above. dh_syn has h's shape. The
module itself learns by regressing its prediction onto a target gradient dh_target once that exists:

    L_sg = (1/B) sum_b || dh_syn_b - dh_target_b ||^2        (squared error summed over units, batch mean)

The kinds, all one class with different bodies (make_synthetic_gradient builds them by name):
    linear  : dh_syn = h A + c                          (Czarnecki et al.: implies a quadratic loss model)
    mlp     : (Linear -> BatchNorm -> ReLU) x n, then a linear output   (the paper's DNI model: 2 x 1024)
    conv    : for feature maps, (5x5 Conv -> BatchNorm -> ReLU) x n, then a 5x5 conv back to C channels, all with
              "same" padding so dh_syn keeps h's height and width     (the paper's CNN model: n = 2;
              n = 0 is one convolution, the convolutional 'linear')
    cDNI    : any of the above given the label too: [h, onehot(y)] for features; for maps, K extra input
              channels, channel k all ones for the examples of class k and zeros otherwise (the paper's cDNI
              model is linear)

The output layer always starts with zero weights AND zero bias, so the first synthetic gradients are exactly
zero: a fresh module cannot push a block in a random direction. (Zeroing only the weights is a known bug: the
bias alone would then be fed back as a gradient.)

The input h is held fixed: the SG loss never sends a gradient into the block that produced h.

What this module deliberately is not: the bootstrapping logic. Which target an SG module regresses onto is
the trainer's business (minidni.dni.steps); here it is just an argument.
"""

import numpy as np

from minidni.core import functional as F
from minidni.core.backend import DEFAULT_DTYPE, array_module
from minidni.core.layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear, ReLU, Sequential


def one_hot(labels, n_classes, dtype=DEFAULT_DTYPE):
    """labels: (B,) integers -> (B, K) one-hot rows, on the labels' device."""
    backend = array_module(labels)
    out = backend.zeros((labels.shape[0], n_classes), dtype=dtype)
    out[backend.arange(labels.shape[0]), labels] = 1  # one scalar per (row, label) position: repeats are harmless
    return out


BODIES = ("dense", "conv")


class SyntheticGradient:
    """M(h [, y]) -> dh_syn, with its own parameters and optimiser (it updates on its own)."""

    def __init__(
        self,
        d,
        hidden=(),
        n_classes=None,
        batchnorm=True,
        scale=1.0,
        rng=None,
        dtype=DEFAULT_DTYPE,
        body="dense",
        kernel=5,
        d_out=None,
    ):
        """d: width of the h it reads and of the gradient it predicts (for body="conv": h's channels C);
        hidden: widths of hidden layers (channels for "conv"; () = a single output layer); n_classes: if given,
        the module is label-conditioned (cDNI); scale: the network itself outputs scale * dh_syn (see `update`);
        body: "dense" reads (B, D) features with Linear layers, "conv" reads (B, C, H, W) maps with
        kernel x kernel convolutions and "same" padding; d_out: width of the predicted gradient when it is not
        that of the module's input (dense only: e.g. M(state of a sender) -> dL/d(its message))."""
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if body not in BODIES:
            raise ValueError(f"unknown synthetic-gradient body {body!r}; expected one of {BODIES}")
        rng = np.random.default_rng(0) if rng is None else rng
        self.d, self.hidden, self.n_classes, self.scale = d, tuple(hidden), n_classes, float(scale)
        self.body = body
        if d_out is not None and body != "dense":
            raise ValueError("d_out (a prediction narrower or wider than the input) needs body='dense'")
        self.d_out = d if d_out is None else d_out

        def layer(n_in, n_out, **kw):  # the body's one kind of weight layer: a Linear or a "same" convolution
            if body == "dense":
                return Linear(n_in, n_out, dtype=dtype, **kw)
            return Conv2d(n_in, n_out, kernel, padding="same", dtype=dtype, **kw)

        norm = BatchNorm1d if body == "dense" else BatchNorm2d
        layers, width = [], d + (n_classes or 0)  # the label enters as K extra features (or channels)
        for h in self.hidden:
            layers.append(layer(width, h, init="he", bias=not batchnorm, rng=rng))
            if batchnorm:
                layers.append(norm(h, dtype=dtype))
            layers.append(ReLU())
            width = h
        layers.append(layer(width, self.d_out, init="zeros"))  # zero W and zero b: dh_syn starts at 0
        self.net = Sequential(*layers)
        self.dtype = dtype

    @property
    def conditioned(self):
        return self.n_classes is not None

    @property
    def kind(self):
        name = "conv" if self.body == "conv" else ("mlp" if self.hidden else "linear")
        return ("c" if self.conditioned else "") + name

    def module_input(self, h, labels=None):
        """What the module's network reads: h itself, or for a cDNI module h with the label appended along axis 1:
        h (B, D) -> [h, onehot(y)] (B, D + K); h (B, C, H, W) -> (B, C + K, H, W), where extra channel k is all
        ones for the examples of class k and all zeros for the others."""
        if not self.conditioned:
            return h
        if labels is None:
            raise ValueError("a label-conditioned (cDNI) synthetic-gradient module needs the labels")
        backend = array_module(h)
        context = one_hot(backend.asarray(labels), self.n_classes, h.dtype)  # (B, K), on h's device
        if h.ndim == 4:  # one constant map per class: (B, K) -> (B, K, H, W), a broadcast view until concatenated
            context = backend.broadcast_to(context[:, :, None, None], context.shape + h.shape[2:])
        return backend.concatenate([h, context], axis=1)

    def predict(self, h, labels=None, train=True):
        """h: (B, D) or (B, C, H, W) -> dh_syn of h's shape, and the cache that `update` needs."""
        out, cache = self.net.forward(self.module_input(h, labels), train)  # h's shape: scale * dh_syn
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
        body = f", body='conv', kernel={self.net.layers[-1].kernel}" if self.body == "conv" else ""
        out = f", d_out={self.d_out}" if self.d_out != self.d else ""
        return f"SyntheticGradient(d={self.d}{out}, hidden={self.hidden}{ctx}{body})"


KINDS = ("linear", "mlp", "conv")


def make_synthetic_gradient(
    kind, d, n_classes=None, hidden_width=1024, hidden_layers=2, scale=1.0, rng=None, dtype=DEFAULT_DTYPE, kernel=5
):
    """Build an SG module by name: 'linear', 'mlp' or 'conv' (the label conditioning is given by n_classes).

    For 'conv', d is the channel count C of the (B, C, H, W) maps it reads, hidden_width the channels of each of
    its hidden_layers convolutions (0 allowed: one zero-initialised convolution) and kernel their size.
    """
    if kind == "linear":
        return SyntheticGradient(d, n_classes=n_classes, scale=scale, rng=rng, dtype=dtype)
    if kind == "mlp":
        if hidden_layers < 1:
            raise ValueError(f"an 'mlp' synthetic-gradient module needs at least one hidden layer, got {hidden_layers}")
        hidden = (hidden_width,) * hidden_layers
        return SyntheticGradient(d, hidden=hidden, n_classes=n_classes, scale=scale, rng=rng, dtype=dtype)
    if kind == "conv":
        if hidden_layers < 0:
            raise ValueError(f"a 'conv' synthetic-gradient module needs hidden_layers >= 0, got {hidden_layers}")
        hidden = (hidden_width,) * hidden_layers
        return SyntheticGradient(
            d, hidden=hidden, n_classes=n_classes, scale=scale, rng=rng, dtype=dtype, body="conv", kernel=kernel
        )
    raise ValueError(f"unknown synthetic-gradient module {kind!r}; expected one of {KINDS}")
