"""Decoupled blocks and the four ways to train a stack of them: bprop, nobprop, dni, cdni.

Notation (Jaderberg et al. 2016), for a network of hidden blocks f_1 .. f_{N-1} and an output block f_N:

    h_i = f_i(h_{i-1}),  h_0 = x                     block i's output           code: h
    delta_i = dL/dh_i                                 the true gradient          code: dh_true
    delta_hat_i = M_{i+1}(h_i [, y])                 its synthetic estimate     code: dh_syn
    target for M_{i+1}: delta_hat_{i+1} d h_{i+1}/d h_i (bootstrapped), or delta_N-1 for the top module

One DNI training step on a batch, in the order a decoupled system could run it (here sequentially):

    for block i = 1 .. N-1:
        h_i, cache_i  = f_i.forward(h_{i-1})
        dh_syn_i      = M_{i+1}(h_i)                   # no waiting for the layers above
        dx            = f_i.backward(dh_syn_i, cache_i) # also fills f_i's parameter gradients
        f_i.update()                                    # block i is done with this batch
        M_i.update(target = dx)                         # dx is delta_hat_i pulled back through f_i:
                                                        # the bootstrapped target of the module below
    logits = f_N.forward(h_{N-1});  dlogits = dL/dlogits
    dx = f_N.backward(dlogits);  f_N.update();  M_N.update(target = dx)   # the only true gradient

The paper counts blocks from 1; the code (lists, metrics, error messages) counts them from 0, so "block 0" is
f_1 and its module "sg0" is M_2.

Two variants of this step, from the paper's later experiments, live in their own modules and are chosen by the
Network: minidni.dni.stochastic (each block updates only with probability p_update) and minidni.dni.unlock (synthetic
inputs as well, so that no block waits for any other). Blocks may hold convolutions: h is then (B, C, H, W).

What this module deliberately is not: parallel. The order above is the logical order of the work; the
point of DNI is that block i's update depends only on M_{i+1} and not on the blocks above, and that is what the
tests check. Running blocks in separate workers is a later layer built on these same steps. To see the order,
attach a minidni.runs.timeline.Timeline (`record_timeline`): every block's forward, synthetic gradient, backward,
update and module regression is recorded with its time and the other blocks' work it waited for.
"""

import functools
import math

import numpy as np

from minidni.core import functional as F
from minidni.dni import stochastic
from minidni.dni import unlock as unlock_module
from minidni.core.backend import DEFAULT_DTYPE, to_numpy, xp
from minidni.core.layers import BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from minidni.core.optim import make_optimizer
from minidni.dni.synthetic import make_synthetic_gradient

MODES = ("bprop", "nobprop", "dni", "cdni")
SG_TARGETS = ("bootstrap", "true")


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

    # -- the block's explicit steps -------------------------------------------------------------------------

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


def fcn_blocks(depth, d_in=784, hidden=256, n_classes=10, batchnorm=True, rng=None, dtype=DEFAULT_DTYPE, split=None):
    """The paper's FCN as layer stacks: depth-1 hidden blocks Linear -> BN -> ReLU, and a Linear output.

    "FCN 3" (depth=3) is 784 -> 256 -> 256 -> 10. split (layers per block, summing to depth) groups consecutive
    layers into fewer, bigger blocks: split=(3, 5) makes an FCN 8 of two blocks, the first of 3 hidden layers,
    the second of 4 hidden layers and the output layer. One SG module then sits between the two, and each block
    is one worker's share of the work (minidni.parallel.workers). The weights are the same as without the split.
    """
    if depth < 2:
        raise ValueError(f"an FCN needs depth >= 2 (one hidden block and the output layer), got {depth}")
    check_split(split, depth)
    rng = np.random.default_rng(0) if rng is None else rng
    stacks, width = [], d_in
    for _ in range(depth - 1):
        layers = [Linear(width, hidden, bias=not batchnorm, rng=rng, dtype=dtype)]  # BN's beta is the bias
        if batchnorm:
            layers.append(BatchNorm1d(hidden, dtype=dtype))
        layers.append(ReLU())
        stacks.append(Sequential(*layers))
        width = hidden
    stacks.append(Sequential(Linear(width, n_classes, init="xavier", rng=rng, dtype=dtype)))
    if split is None:
        return stacks
    grouped, first = [], 0
    for n in split:  # consecutive layers, block by block
        grouped.append(Sequential(*[layer for stack in stacks[first : first + n] for layer in stack.layers]))
        first += n
    return grouped


def one_linear_per_block(net):
    """True if every block of net holds exactly one linear layer: no split (the form the fused kernels implement)."""
    return all(sum(isinstance(layer, Linear) for layer in b.layers.layers) == 1 for b in net.blocks)


def check_split(split, depth):
    """split: None (one layer per block) or layers per block, each >= 1, summing to depth, at least 2 blocks."""
    if split is None:
        return
    ok = isinstance(split, (tuple, list)) and all(isinstance(n, int) and not isinstance(n, bool) for n in split)
    if not ok or len(split) < 2 or min(split) < 1 or sum(split) != depth:
        raise ValueError(
            f"split must give the layers of each block (>= 2 blocks of >= 1 layer) summing to the depth {depth}, "
            f"e.g. (2, {depth - 2}); got {split!r}"
        )


def cnn_blocks(
    depth,
    in_shape=(1, 28, 28),
    channels=32,
    n_classes=10,
    kernel=5,
    pool=(3, 2, 1),
    batchnorm=True,
    rng=None,
    dtype=DEFAULT_DTYPE,
):
    """The paper's CNN as layer stacks: depth-1 hidden blocks Conv -> BN -> ReLU -> MaxPool, and a Linear output.

    Each hidden block is a kernel x kernel convolution (5x5 in the paper) with "same" padding and `channels` output
    channels (no bias with batch norm: BN's beta is the bias), batch norm over channels, ReLU, and max pooling
    with pool = (kernel, stride, padding); the output block flattens the last maps into a Linear layer.
    "CNN 3" (depth=3) on MNIST is 2 conv blocks and the linear layer: (1, 28, 28) -> (32, 14, 14) -> (32, 7, 7)
    -> 10. Inputs are NCHW batches (B, *in_shape).
    """
    if depth < 2:
        raise ValueError(f"a CNN needs depth >= 2 (one conv block and the output layer), got {depth}")
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W), got {in_shape!r}")
    if len(pool) != 3:
        raise ValueError(f"pool must be (kernel, stride, padding), got {pool!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    pool_kernel, pool_stride, pool_padding = pool
    (c, h, w), stacks = in_shape, []
    for i in range(depth - 1):
        layers = [Conv2d(c, channels, kernel, padding="same", bias=not batchnorm, rng=rng, dtype=dtype)]
        if batchnorm:
            layers.append(BatchNorm2d(channels, dtype=dtype))
        layers += [ReLU(), MaxPool2d(pool_kernel, pool_stride, pool_padding)]
        stacks.append(Sequential(*layers))
        c = channels
        h = F.output_size(h, pool_kernel, pool_stride, pool_padding)  # the maps' size after the pooling
        w = F.output_size(w, pool_kernel, pool_stride, pool_padding)
        if h < 1 or w < 1:
            raise ValueError(f"an input of shape {tuple(in_shape)} is pooled away by block {i}; use a smaller depth")
    stacks.append(Sequential(Flatten(), Linear(c * h * w, n_classes, init="xavier", rng=rng, dtype=dtype)))
    return stacks


class Network:
    """A classifier of decoupled blocks trained in one of MODES.

    blocks[:-1] are hidden blocks (each with an SG module under dni/cdni), blocks[-1] is the output block.
    """

    def __init__(
        self, stacks, mode="cdni", sgs=None, sg_target="bootstrap", max_norm=1e3, clip=None, gate=None, inputs=None
    ):
        """gate: a minidni.dni.stochastic.UpdateGate (blocks update with probability p_update, in random order);
        inputs: one minidni.dni.unlock.SyntheticInput per block after the first (complete unlock, dni/cdni only)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if sg_target not in SG_TARGETS:
            raise ValueError(f"unknown sg_target {sg_target!r}; expected one of {SG_TARGETS}")
        decoupled = mode in ("dni", "cdni")
        if decoupled and (sgs is None or len(sgs) != len(stacks) - 1):
            raise ValueError(f"mode {mode!r} needs one synthetic-gradient module per hidden block ({len(stacks) - 1})")
        if not decoupled and sgs:
            raise ValueError(f"mode {mode!r} trains no synthetic-gradient modules; pass sgs=None")
        if inputs is not None:
            if not decoupled:
                raise ValueError(
                    f"complete unlock needs synthetic gradients too: mode must be dni or cdni, got {mode!r}"
                )
            if len(inputs) != len(stacks) - 1:
                raise ValueError(f"complete unlock needs one synthetic-input model per block after the first "
                                 f"({len(stacks) - 1}), got {len(inputs)}")  # fmt: skip
            if gate is not None:
                raise ValueError("stochastic updates and complete unlock are separate experiments; pass one of them")
        if (gate is not None or inputs is not None) and sg_target != "bootstrap":
            raise ValueError("stochastic updates and complete unlock bootstrap the SG targets: sg_target='bootstrap'")
        self.mode, self.sg_target = mode, sg_target
        self.gate, self.inputs = gate, inputs
        sgs = sgs if decoupled else [None] * (len(stacks) - 1)
        self.blocks = [
            DecoupledBlock(stack, sg, index=i, max_norm=max_norm, clip=clip)
            for i, (stack, sg) in enumerate(zip(stacks, list(sgs) + [None]))
        ]
        self.fused_step = None  # set by use_kernels: the same step through the CUDA kernels (minidni.cuda)
        self.timeline = None  # set by record_timeline

    def record_timeline(self, timeline):
        """Record every training step's work, block by block, on `timeline` (a minidni.runs.timeline.Timeline); None
        stops recording. The fused CUDA step runs as one piece and records nothing."""
        if timeline is not None and self.fused_step is not None:
            raise ValueError("the fused CUDA step cannot be recorded block by block; call use_kernels(None) first")
        if timeline is not None:
            timeline.forward_locked = self.inputs is None  # complete unlock: no block waits for the one below
        self.timeline = timeline
        for block in self.blocks:
            block.timeline = timeline

    def use_kernels(self, kernels, versions=None, plan=None):
        """Run train_step through the fused CUDA kernels of minidni.cuda: `kernels` is a
        minidni.cuda.loader.Kernels (CuPy on a GPU, or the CPU emulator); None goes back to the engine's own
        (unfused) step. Only DNI/cDNI steps with bootstrapped targets have a fused form. versions and plan choose
        kernel versions, per operation or per operation and shape (minidni.cuda.fused.FusedDNIStep)."""
        if kernels is None:
            self.fused_step = None
            return
        if self.timeline is not None:
            raise ValueError(
                "a recording timeline is attached; the fused step cannot be recorded (record_timeline(None))"
            )
        if self.gate is not None or self.inputs is not None:
            raise ValueError("stochastic updates and complete unlock have no fused form; use the engine's own step")
        from minidni.cuda.fused import FusedDNIStep

        self.fused_step = FusedDNIStep(self, kernels, versions, plan)

    @property
    def hidden(self):
        return self.blocks[:-1]

    @property
    def output(self):
        return self.blocks[-1]

    # -- training steps ---------------------------------------------------------------------------------------

    def train_step(self, x, labels, labels_checked=False):
        """One step on a batch x: (B, D_in) rows or (B, C, H, W) images, labels: (B,).

        Returns {"loss": float, "sg_loss": [float per block]}; under stochastic updates also "updated" (the blocks
        that updated; sg_loss None for modules that got no target), under complete unlock "input_loss".
        labels_checked=True: the caller has checked that the labels lie in [0, K) (the fused CUDA step then reads
        nothing back for them; the engine's own step does not read them either way)."""
        self._check_batch(x, labels)
        if self.timeline is not None:
            with self.timeline.step():
                return self._step(x, labels, labels_checked)
        return self._step(x, labels, labels_checked)

    def _step(self, x, labels, labels_checked=False):
        if self.fused_step is not None:
            return self.fused_step(x, labels, labels_checked)
        if self.inputs is not None:
            return unlock_module.unlocked_step(self, x, labels)
        if self.gate is not None:
            return stochastic.gated_step(self, x, labels)
        if self.mode == "bprop":
            return self._bprop_step(x, labels, train_hidden=True)
        if self.mode == "nobprop":
            return self._bprop_step(x, labels, train_hidden=False)
        if self.sg_target == "true":
            return self._dni_step_true_targets(x, labels)
        return self._dni_step(x, labels)

    def _check_batch(self, x, labels):
        """Clear errors for the mistakes numpy would report obscurely (or not at all)."""
        first = self.blocks[0].layers.layers[0]
        W = first.params["W"]
        if W.ndim == 2 and (x.ndim != 2 or x.shape[1] != W.shape[0]):  # a Linear: W (D_in, D_out)
            raise ValueError(f"x must be (B, {W.shape[0]}), got shape {tuple(x.shape)}")
        if W.ndim == 4 and (x.ndim != 4 or x.shape[1] != W.shape[1]):  # a Conv2d: W (C_out, C_in, KH, KW)
            raise ValueError(f"x must be images (B, {W.shape[1]}, H, W), got shape {tuple(x.shape)}")
        if x.dtype != W.dtype:
            raise TypeError(f"x must be {W.dtype} like the network's parameters, got {x.dtype}")
        if labels.shape != (x.shape[0],) or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be ({x.shape[0]},) integers, got shape {tuple(labels.shape)} {labels.dtype}")

    def _loss(self, h, labels):
        """Forward the output block and the loss: returns (loss, dlogits, output cache)."""
        logits, cache = self.output.forward(h)
        loss, dlogits = F.softmax_cross_entropy(logits, labels)
        loss = float(loss)
        if not math.isfinite(loss):
            raise DivergenceError(f"the training loss is {loss}; the network diverged (lower the learning rate)")
        return loss, dlogits, cache

    def forward_hidden(self, x):
        """The real forward pass through the hidden blocks (training mode), every cache kept for a backward later:
        returns (hs, caches) with hs[i] = h_i, hidden block i's output; hs[-1] is what the output block reads."""
        hs, caches, h = [], [], x
        for block in self.hidden:
            h, cache = block.forward(h)  # (B, D_i), or (B, C, H_i, W_i) for a conv block
            hs.append(h)
            caches.append(cache)
        return hs, caches

    def _bprop_step(self, x, labels, train_hidden):
        """Locked backprop: every block waits for the whole forward pass and for the gradient from above."""
        hs, caches = self.forward_hidden(x)
        loss, dh, cache = self._loss(hs[-1], labels)
        dh = self.output.backward(dh, cache, need_dx=train_hidden)
        self.output.update()
        if train_hidden:
            for i in range(len(self.hidden) - 1, -1, -1):
                dh = self.hidden[i].backward(dh, caches[i], need_dx=i > 0)
                self.hidden[i].update()
        return {"loss": loss, "sg_loss": []}

    def _dni_step(self, x, labels):
        """Every hidden block updates from its synthetic gradient as soon as it has produced h_i."""
        n = len(self.hidden)
        sg_loss = [0.0] * n
        pending = [None] * n  # (dh_syn, sg_cache) of M_{i+1}, waiting for its target
        h = x
        for i, block in enumerate(self.hidden):
            h_in = h
            h, cache = block.forward(h_in)  # (B, D_i)
            dx, dh_syn, sg_cache = block.synthetic_step(h, cache, labels, need_dx=i > 0)
            if i > 0:  # dx = delta_hat_i pulled back through block i: the target of the module below
                sg_loss[i - 1] = self.hidden[i - 1].sg_update(*pending[i - 1], dh_target=dx)
            pending[i] = (dh_syn, sg_cache)
        loss, dlogits, cache = self._loss(h, labels)
        dh_true = self.output.backward(dlogits, cache)  # the true dL/dh_{N-1}: only the top module sees it
        self.output.update()
        sg_loss[n - 1] = self.hidden[n - 1].sg_update(*pending[n - 1], dh_target=dh_true)
        return {"loss": loss, "sg_loss": sg_loss}

    def _dni_step_true_targets(self, x, labels):
        """For comparison: blocks still update from synthetic gradients, but each SG module regresses onto the
        true gradient dL/dh_i of this batch (full backprop at the forward pass's parameters, so this is locked)."""
        hs, caches = self.forward_hidden(x)
        loss, dh, out_cache = self._loss(hs[-1], labels)
        dh_true = [None] * len(self.hidden)
        dh = self.output.backward(dh, out_cache)
        self.output.update()
        for i in range(len(self.hidden) - 1, -1, -1):  # true gradients, before any hidden block changes
            dh_true[i] = dh
            if i > 0:
                dh = self.hidden[i].backward(dh, caches[i])
        sg_loss = []
        for i, block in enumerate(self.hidden):
            _, dh_syn, sg_cache = block.synthetic_step(hs[i], caches[i], labels, need_dx=False)
            sg_loss.append(block.sg_update(dh_syn, sg_cache, dh_true[i]))
        return {"loss": loss, "sg_loss": sg_loss}

    # -- evaluation and diagnostics --------------------------------------------------------------------------

    def logits(self, x, batch=1000):
        """Evaluation-mode forward (batch norm with running statistics): x (N, D_in) -> (N, K)."""
        return eval_logits(self.blocks, x, batch)

    def error_pct(self, x, labels, batch=1000):
        pred = self.logits(x, batch).argmax(axis=1)
        return 100.0 * float((pred != labels).mean())

    def mean_loss(self, x, labels, batch=1000):
        loss, _ = F.softmax_cross_entropy(self.logits(x, batch), labels)
        return float(loss)

    def gradient_alignment(self, x, labels):
        """On a held-out batch: per hidden block, cosine similarity and relative error ||dh_syn - dh|| / ||dh||
        between the synthetic gradient and the true backprop gradient. Changes no parameter or statistic."""
        if self.mode not in ("dni", "cdni"):
            raise ValueError(f"gradient alignment needs synthetic-gradient modules; mode {self.mode!r} has none")
        saved = {k: v.copy() for k, v in self.state_arrays().items() if "running_" in k}
        hs, caches = self.forward_hidden(x)  # training-mode batch norm, as in a training step
        _, dh, cache = self._loss(hs[-1], labels)
        dh = self.output.backward(dh, cache)  # fills grads, which the next step overwrites; no update
        cosine, rel_error = [], []
        for i in range(len(self.hidden) - 1, -1, -1):
            dh_syn, _ = self.hidden[i].sg.predict(hs[i], labels)
            num = float(xp().vdot(dh_syn.ravel(), dh.ravel()))
            n_syn, n_true = float(np.linalg.norm(to_numpy(dh_syn))), float(np.linalg.norm(to_numpy(dh)))
            cosine.append(num / (n_syn * n_true) if n_syn > 0 and n_true > 0 else 0.0)
            rel_error.append(float(np.linalg.norm(to_numpy(dh_syn - dh))) / n_true if n_true > 0 else float("nan"))
            if i > 0:
                dh = self.hidden[i].backward(dh, caches[i])
        arrays = self.state_arrays()
        for k, v in saved.items():  # the diagnostic forward must not move batch-norm running statistics
            arrays[k][...] = v
        return {"cosine": cosine[::-1], "rel_error": rel_error[::-1]}

    # -- state ------------------------------------------------------------------------------------------------

    def _parts(self):
        """(name prefix, object) for every part that has state: the blocks' layer stacks and their SG modules."""
        for i, block in enumerate(self.blocks):
            yield f"block{i}.", block.layers
            if block.sg is not None:
                yield f"sg{i}.", block.sg
        for i, model in enumerate(self.inputs or []):
            yield f"input{i + 1}.", model  # I_{i+1}: the synthetic input of block i + 1

    def state_arrays(self):
        """Every array of the network's state by name (parameters, statistics, optimiser moments)."""
        return {k: v for prefix, part in self._parts() for k, v in part.state_arrays(prefix).items()}

    def optimizers(self):
        return {k: v for prefix, part in self._parts() for k, v in part.optimizers(prefix).items()}

    def set_lr_factor(self, factor):
        for opt in self.optimizers().values():
            opt.lr = opt.base_lr * factor


def build_network(
    depth=3,
    mode="cdni",
    sg="auto",
    d_in=784,
    hidden=256,
    n_classes=10,
    batchnorm=True,
    sg_hidden=1024,
    sg_layers=2,
    sg_target="bootstrap",
    optimizer="adam",
    sg_optimizer=None,
    lr=2e-3,
    sg_lr=1e-5,
    sg_scale=1.0,
    momentum=0.9,
    max_norm=1e3,
    clip=None,
    seed=0,
    dtype=DEFAULT_DTYPE,
    arch="fcn",
    in_shape=None,
    channels=32,
    sg_channels=32,
    p_update=1.0,
    unlock=False,
    input_hidden=1024,
    input_lr=None,
    split=None,
):
    """A classifier of `depth` layers trained in `mode`, with optimisers attached.

    arch="fcn": the paper's FCN on flat inputs of d_in features (fcn_blocks). sg="auto" picks the paper's
    modules: an MLP (2 x sg_hidden) for dni, a linear map for cdni.
    arch="cnn": the paper's CNN on images of in_shape = (C, H, W) (cnn_blocks, `channels` per conv). Its SG
    modules are convolutional: sg="auto" or "mlp" gives sg_layers hidden 5x5 convs of sg_channels (the paper's:
    2), "linear" a single zero-initialised conv; cdni adds the label as one-hot channel maps.
    p_update < 1: stochastic updates (minidni.dni.stochastic): each block updates after a forward pass with
    probability p_update. unlock=True: complete unlock (minidni.dni.unlock): a synthetic-input MLP (one hidden layer
    of input_hidden units, learning rate input_lr, default lr) for every block after the first.
    split (fcn only): layers per block, e.g. (3, 5) for two blocks of an FCN 8 (fcn_blocks).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if arch not in ("fcn", "cnn"):
        raise ValueError(f"unknown arch {arch!r}; expected 'fcn' or 'cnn'")
    if sg not in ("auto", "linear", "mlp"):
        raise ValueError(f"unknown sg {sg!r}; expected 'auto', 'linear' or 'mlp'")
    stochastic.check_p_update(p_update)
    rng = np.random.default_rng(seed)
    if split is not None and arch != "fcn":
        raise ValueError("split (layers per block) is implemented for FCNs only (arch='fcn')")
    if arch == "fcn":
        stacks = fcn_blocks(depth, d_in, hidden, n_classes, batchnorm, rng, dtype, split)
    else:
        if in_shape is None or len(in_shape) != 3:
            raise ValueError(f"a CNN needs in_shape = (channels, height, width), got {in_shape!r}")
        stacks = cnn_blocks(depth, tuple(in_shape), channels, n_classes, batchnorm=batchnorm, rng=rng, dtype=dtype)
    sgs = None
    if mode in ("dni", "cdni"):
        ctx = n_classes if mode == "cdni" else None
        if arch == "fcn":
            kind = ("mlp" if mode == "dni" else "linear") if sg == "auto" else sg
            sgs = [
                make_synthetic_gradient(kind, hidden, ctx, sg_hidden, sg_layers, sg_scale, rng, dtype)
                for _ in stacks[:-1]
            ]
        else:
            n_hidden = 0 if sg == "linear" else sg_layers
            sgs = [
                make_synthetic_gradient("conv", channels, ctx, sg_channels, n_hidden, sg_scale, rng, dtype)
                for _ in stacks[:-1]
            ]
        for m in sgs:
            m.set_optimizer(lambda p: make_optimizer(sg_optimizer or optimizer, p, sg_lr, momentum))
    for stack in stacks:
        stack.set_optimizer(lambda p: make_optimizer(optimizer, p, lr, momentum))
    inputs = None
    if unlock:
        if arch != "fcn" or split is not None:
            raise ValueError("complete unlock (synthetic inputs) is implemented for FCNs of one layer per block only")
        inputs = unlock_module.make_synthetic_inputs(d_in, [hidden] * (depth - 1), (input_hidden,), rng, dtype)
        for m in inputs:
            m.set_optimizer(lambda p: make_optimizer(optimizer, p, input_lr or lr, momentum))
    gate = stochastic.UpdateGate(p_update, seed) if p_update < 1 else None
    return Network(stacks, mode, sgs, sg_target, max_norm=max_norm, clip=clip, gate=gate, inputs=inputs)
