"""A decoupled block: a stack of layers f_i with the synthetic-gradient module M_{i+1} on its output, and the
block's explicit steps (forward, synthetic gradient, backward, update, the module's regression).

The training steps that compose these (minidni.dni.steps) are where the algorithm is; a block knows only its own
part. Each piece of work a decoupled system would schedule is recorded on the block's timeline when one is
attached (minidni.runs.timeline, via Network.record_timeline): how the tutorials draw who waits for whom.

What this module deliberately is not: a container of the whole network (minidni.dni.network) or a trainer.
"""

import functools
import math

from minidni.core.backend import xp

class DivergenceError(RuntimeError):
    """Training produced a non-finite or exploding value; the message names where."""


def _recorded(kind):
    """Record the decorated block method's work as an event of `kind` on the block's timeline, if one is attached
    (minidni.runs.timeline; a timeline records only inside a training step). Without one it is a plain call."""

    def decorate(method):
        @functools.wraps(method)
        def recorded(self, *args, **kwargs):
            if self.timeline is None:
                return method(self, *args, **kwargs)
            with self.timeline.event(self.index, kind):
                return method(self, *args, **kwargs)

        return recorded

    return decorate


class DecoupledBlock:
    """A stack of layers f_i plus the synthetic-gradient module M_{i+1} that predicts dL/dh_i for its output."""

    def __init__(self, layers, sg=None, index=0, max_norm=1e3, clip=None):
        self.layers = layers  # Sequential
        self.sg = sg  # SyntheticGradient or None (the output block, or a locked network)
        self.index = index  # position in the network, for error messages
        self.max_norm = max_norm  # a synthetic gradient whose norm exceeds this stops the run
        self.clip = clip  # optional: rescale synthetic gradients whose norm exceeds this
        self.timeline = None  # a minidni.runs.timeline.Timeline recording this block's work, or None

    @_recorded("forward")
    def forward(self, x, train=True):
        """x: (B, D_in) -> h: (B, D_out) and the block's cache; for a conv block (B, C_in, H, W) -> (B, C, H', W')."""
        return self.layers.forward(x, train)

    @_recorded("synthetic")
    def synthetic_gradient(self, h, labels=None):
        """dh_syn = M_{i+1}(h [, y]): (B, D_out), checked for divergence. Returns (dh_syn, sg_cache, ||dh_syn||)."""
        dh_syn, sg_cache = self.sg.predict(h, labels)
        norm = math.sqrt(float(xp().vdot(dh_syn.ravel(), dh_syn.ravel())))  # one BLAS pass; NaN/inf propagate
        if not math.isfinite(norm) or norm > self.max_norm:
            raise DivergenceError(
                f"synthetic gradient of block {self.index} diverged: ||dh_syn|| = {norm:.3g} "
                f"(limit {self.max_norm:g}). Lower the synthetic-gradient learning rate or set a clip; "
                f"a NaN can also come from the input batch."
            )
        return dh_syn, sg_cache, norm

    @_recorded("backward")
    def backward(self, dh, cache, need_dx=True):
        """Pass a gradient dh (h's shape) down through the block: returns dx (x's shape), fills the block's grads."""
        return self.layers.backward(dh, cache, need_dx=need_dx)

    @_recorded("update")
    def update(self):
        self.layers.update()

    def synthetic_step(self, h, cache, labels=None, need_dx=True):
        """Update the block now from its synthetic gradient. Returns (dx, dh_syn, sg_cache): dx is delta_hat
        pulled back through this block, which is the bootstrapped target of the SG module below."""
        dh_syn, sg_cache, norm = self.synthetic_gradient(h, labels)
        dx = self.backward(self.clipped(dh_syn, norm), cache, need_dx=need_dx)  # the forward pass's parameters
        self.update()
        return dx, dh_syn, sg_cache

    def clipped(self, dh_syn, norm):
        """The synthetic gradient the block uses: dh_syn, or a copy rescaled to norm `clip` if it is longer. The
        SG module still regresses its own, unclipped prediction."""
        return dh_syn * (self.clip / norm) if self.clip is not None and norm > self.clip else dh_syn

    @_recorded("sg_update")
    def sg_update(self, dh_syn, sg_cache, dh_target):
        """M_{i+1}'s own regression step towards dh_target; returns its loss."""
        return self.sg.update(dh_syn, sg_cache, dh_target)


def eval_logits(blocks, x, batch=1000):
    """The real forward pass through `blocks` in evaluation mode (batch norm with running statistics), `batch`
    rows at a time: x (N, D_in) or (N, C, H, W) -> logits (N, K)."""
    out = []
    for s in range(0, x.shape[0], batch):
        h = x[s : s + batch]
        for block in blocks:
            h, _ = block.forward(h, train=False)
        out.append(h)
    return xp().concatenate(out, axis=0)
