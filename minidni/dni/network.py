"""A network of decoupled blocks (Network), the paper's FCN and CNN as stacks of them, and build_network.

A Network is a container: its blocks (minidni.dni.blocks.DecoupledBlock; blocks[:-1] hidden, each with an SG
module under dni/cdni; blocks[-1] the output block), its mode, and the training step it runs, looked up once in
minidni.dni.steps.STEPS by (variant, mode, SG target) - read that module first. A replacement step can be attached
instead (minidni.cuda.fused.use_kernels: the same DNI step through fused CUDA kernels). Blocks may hold
convolutions: h is then (B, C, H, W).

What this module deliberately is not: the algorithm (minidni.dni.steps) or a trainer (minidni.runs.train). The
checks of the constructor's options come last, after the concepts.
"""

import numpy as np

from minidni.core import functional as F
from minidni.core.backend import DEFAULT_DTYPE, to_numpy, xp
from minidni.core.layers import BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from minidni.core.optim import make_optimizer
from minidni.dni.blocks import DecoupledBlock, eval_logits
from minidni.dni.steps import forward_hidden, output_loss, step_for
from minidni.dni.stochastic import UpdateGate, check_p_update
from minidni.dni.synthetic import make_synthetic_gradient
from minidni.dni.unlock import make_synthetic_inputs

MODES = ("bprop", "nobprop", "dni", "cdni")
SG_TARGETS = ("bootstrap", "true")


class Network:
    """A classifier of decoupled blocks trained in one of MODES.

    blocks[:-1] are hidden blocks (each with an SG module under dni/cdni), blocks[-1] is the output block.
    """

    def __init__(
        self, stacks, mode="cdni", sgs=None, sg_target="bootstrap", max_norm=1e3, clip=None, gate=None, inputs=None
    ):
        """gate: a minidni.dni.stochastic.UpdateGate (blocks update with probability p_update, in random order);
        inputs: one minidni.dni.unlock.SyntheticInput per block after the first (complete unlock, dni/cdni only)."""
        check_options(stacks, mode, sgs, sg_target, gate, inputs)
        self.mode, self.sg_target, self.gate, self.inputs = mode, sg_target, gate, inputs
        sgs = sgs if mode in ("dni", "cdni") else [None] * (len(stacks) - 1)
        self.blocks = [
            DecoupledBlock(stack, sg, index=i, max_norm=max_norm, clip=clip)
            for i, (stack, sg) in enumerate(zip(stacks, list(sgs) + [None]))
        ]
        variant = "unlocked" if inputs is not None else "gated" if gate is not None else "plain"
        self.step = step_for(variant, mode, sg_target)  # a function (net, x, labels) -> record (minidni.dni.steps)
        self.fused_step = None  # a replacement step: the same step through CUDA kernels (minidni.cuda.fused)
        self.timeline = None  # set by record_timeline

    @property
    def hidden(self):
        return self.blocks[:-1]

    @property
    def output(self):
        return self.blocks[-1]

    @property
    def n_classes(self):
        """K: the width of the output block's last (linear) layer."""
        return self.output.layers.layers[-1].params["W"].shape[1]

    def train_step(self, x, labels, labels_checked=False):
        """One step on a batch x: (B, D_in) rows or (B, C, H, W) images, labels: (B,) in [0, K).

        Returns {"loss": float, "sg_loss": [float per block]}; under stochastic updates also "updated" (the blocks
        that updated; sg_loss None for modules that got no target), under complete unlock "input_loss".
        labels_checked=True: the caller has checked that the labels lie in [0, K) (trainers do, once per run);
        otherwise the step checks them, which on a GPU is one read back to the host."""
        check_batch(self.blocks[0].layers.layers[0].params["W"], x, labels)
        if not labels_checked:
            F.check_labels(labels, self.n_classes)
        if self.fused_step is not None:
            return self.fused_step(x, labels, labels_checked=True)
        if self.timeline is None:
            return self.step(self, x, labels)
        with self.timeline.step():
            return self.step(self, x, labels)

    def record_timeline(self, timeline):
        """Record every training step's work, block by block, on `timeline` (a minidni.runs.timeline.Timeline);
        None stops recording. The fused CUDA step runs as one piece and records nothing."""
        if timeline is not None and self.fused_step is not None:
            raise ValueError("the fused CUDA step cannot be recorded block by block; detach the kernels first")
        if timeline is not None:
            timeline.forward_locked = self.inputs is None  # complete unlock: no block waits for the one below
        self.timeline = timeline
        for block in self.blocks:
            block.timeline = timeline

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
        hs, caches = forward_hidden(self, x)  # training-mode batch norm, as in a training step
        _, dh, cache = output_loss(self, hs[-1], labels)
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

    def parts(self):
        """(name prefix, object) for every part that has state: the blocks' layer stacks and their SG modules."""
        for i, block in enumerate(self.blocks):
            yield f"block{i}.", block.layers
            if block.sg is not None:
                yield f"sg{i}.", block.sg
        for i, model in enumerate(self.inputs or []):
            yield f"input{i + 1}.", model  # I_{i+1}: the synthetic input of block i + 1

    def state_arrays(self):
        """Every array of the network's state by name (parameters, statistics, optimiser moments)."""
        return {k: v for prefix, part in self.parts() for k, v in part.state_arrays(prefix).items()}

    def optimizers(self):
        return {k: v for prefix, part in self.parts() for k, v in part.optimizers(prefix).items()}

    def set_lr_factor(self, factor):
        for opt in self.optimizers().values():
            opt.lr = opt.base_lr * factor

    def __repr__(self):
        """The model at a glance: its mode, each block's layers, the SG modules (kind, size), parameter counts."""
        rows = []  # (what, the layer stack whose trainable parameters are counted)
        for i, block in enumerate(self.blocks):
            output = " (output)" if block is self.output else ""
            rows.append((f"block {i}{output}: " + " -> ".join(map(repr, block.layers.layers)), block.layers))
            if block.sg is not None:  # SyntheticGradient.kind says "clinear" for "linear given the label"
                kind = block.sg.kind[1:] + " given the label" if block.sg.conditioned else block.sg.kind
                rows.append((f"  SG module after block {i} ({kind}): {block.sg!r}", block.sg.net))
        for i, model in enumerate(self.inputs or []):  # complete unlock
            rows.append((f"  synthetic input of block {i + 1}: {model!r}", model.net))
        counts = [sum(int(p.size) for layer in stack.layers for p in layer.params.values()) for _, stack in rows]
        gate = f", p_update={self.gate.p_update}" if self.gate is not None else ""
        head = f"Network(mode={self.mode!r}, sg_target={self.sg_target!r}{gate}), {sum(counts):,} parameters:"
        return "\n".join([head] + [f"  {n:>11,}  {what}" for (what, _), n in zip(rows, counts)])


def build_network(
    depth=3, mode="cdni", sg="auto", d_in=784, hidden=256, n_classes=10, batchnorm=True, sg_hidden=1024, sg_layers=2,
    sg_target="bootstrap", optimizer="adam", sg_optimizer=None, lr=2e-3, sg_lr=1e-5, sg_scale=1.0, momentum=0.9,
    max_norm=1e3, clip=None, seed=0, dtype=DEFAULT_DTYPE, arch="fcn", in_shape=None, channels=32, sg_channels=32,
    p_update=1.0, unlock=False, input_hidden=1024, input_lr=None, split=None
):  # fmt: skip
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
    check_p_update(p_update)
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
            width, sg_width, n_hidden = hidden, sg_hidden, sg_layers
        else:  # convolutional modules; sg="linear" is a single convolution
            kind, width, sg_width, n_hidden = "conv", channels, sg_channels, 0 if sg == "linear" else sg_layers
        sgs = [make_synthetic_gradient(kind, width, ctx, sg_width, n_hidden, sg_scale, rng, dtype) for _ in stacks[:-1]]
        for m in sgs:
            m.set_optimizer(lambda p: make_optimizer(sg_optimizer or optimizer, p, sg_lr, momentum))
    for stack in stacks:
        stack.set_optimizer(lambda p: make_optimizer(optimizer, p, lr, momentum))
    inputs = None
    if unlock:
        if arch != "fcn" or split is not None:
            raise ValueError("complete unlock (synthetic inputs) is implemented for FCNs of one layer per block only")
        inputs = make_synthetic_inputs(d_in, [hidden] * (depth - 1), (input_hidden,), rng, dtype)
        for m in inputs:
            m.set_optimizer(lambda p: make_optimizer(optimizer, p, input_lr or lr, momentum))
    gate = UpdateGate(p_update, seed) if p_update < 1 else None
    return Network(stacks, mode, sgs, sg_target, max_norm=max_norm, clip=clip, gate=gate, inputs=inputs)


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


def cnn_blocks(
    depth, in_shape=(1, 28, 28), channels=32, n_classes=10, kernel=5,
    pool=(3, 2, 1), batchnorm=True, rng=None, dtype=DEFAULT_DTYPE
):  # fmt: skip
    """The paper's CNN as layer stacks: depth-1 hidden blocks Conv -> BN -> MaxPool -> ReLU, and a Linear output.

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
        # pool, then ReLU: a maximum commutes with the monotone ReLU, so this is Conv -> BN -> ReLU -> MaxPool, with
        # the same gradient, and the ReLU touches a quarter of the numbers (test_conv.py checks both, bit for bit)
        layers += [MaxPool2d(pool_kernel, pool_stride, pool_padding), ReLU()]
        stacks.append(Sequential(*layers))
        c = channels
        h = F.output_size(h, pool_kernel, pool_stride, pool_padding)  # the maps' size after the pooling
        w = F.output_size(w, pool_kernel, pool_stride, pool_padding)
        if h < 1 or w < 1:
            raise ValueError(f"an input of shape {tuple(in_shape)} is pooled away by block {i}; use a smaller depth")
    stacks.append(Sequential(Flatten(), Linear(c * h * w, n_classes, init="xavier", rng=rng, dtype=dtype)))
    return stacks


# ---------------------------------------------------------------------------------------------------------------
# the checks, after the concepts


def check_options(stacks, mode, sgs, sg_target, gate, inputs):
    """Network's options, with errors that say what was expected."""
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
            raise ValueError(f"complete unlock needs synthetic gradients too: mode must be dni or cdni, got {mode!r}")
        if len(inputs) != len(stacks) - 1:
            raise ValueError(f"complete unlock needs one synthetic-input model per block after the first "
                             f"({len(stacks) - 1}), got {len(inputs)}")  # fmt: skip
        if gate is not None:
            raise ValueError("stochastic updates and complete unlock are separate experiments; pass one of them")
    if (gate is not None or inputs is not None) and sg_target != "bootstrap":
        raise ValueError("stochastic updates and complete unlock bootstrap the SG targets: sg_target='bootstrap'")


def check_batch(W, x, labels):
    """A batch for a network whose first layer has weights W: clear errors for the mistakes numpy would report
    obscurely (or not at all)."""
    if W.ndim == 2 and (x.ndim != 2 or x.shape[1] != W.shape[0]):  # a Linear: W (D_in, D_out)
        raise ValueError(f"x must be (B, {W.shape[0]}), got shape {tuple(x.shape)}")
    if W.ndim == 4 and (x.ndim != 4 or x.shape[1] != W.shape[1]):  # a Conv2d: W (C_out, C_in, KH, KW)
        raise ValueError(f"x must be images (B, {W.shape[1]}, H, W), got shape {tuple(x.shape)}")
    if x.dtype != W.dtype:
        raise TypeError(f"x must be {W.dtype} like the network's parameters, got {x.dtype}")
    if labels.shape != (x.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be ({x.shape[0]},) integers, got shape {tuple(labels.shape)} {labels.dtype}")


def check_split(split, depth):
    """split: None (one layer per block) or layers per block, each >= 1, summing to depth, at least 2 blocks."""
    if split is None:
        return
    ok = isinstance(split, (tuple, list)) and all(isinstance(n, int) and not isinstance(n, bool) for n in split)
    if not ok or len(split) < 2 or min(split) < 1 or sum(split) != depth:
        got = ",".join(map(str, split)) if ok else repr(split)  # written as the command line's --split takes it
        raise ValueError(f"split must give the layers of each block (>= 2 blocks of >= 1 layer) summing to the depth "
                         f"{depth}, e.g. --split 2,{depth - 2} (split=(2, {depth - 2}) in Python); got {got}")
