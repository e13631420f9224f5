"""The same training step in PyTorch: the yardstick that `python -m minidni bench` holds minidni's step against.

torch_step(arch, mode) builds minidni's own network (minidni.dni.network.build_network, the seed's weights) and a
PyTorch copy of it, layer for layer and weight for weight, and returns a function that runs one PyTorch CPU eager
training step per call - bprop, or the DNI step in minidni.dni.steps.dni_step's order - on the random batches the
minidni side of the benchmark draws. Same architecture, same parameters, same data, same optimiser settings, same
thread count: the two timings compare like with like.

    arch "fcn": FCN 3 on MNIST shapes, 784 -> 256 -> 256 -> 10 (Linear -> BatchNorm1d -> ReLU per hidden block),
                x (B, 784); dni and cdni with linear SG modules, the benchmark's choice
    arch "cnn": CNN 3, (1, 28, 28) -> (32, 14, 14) -> (32, 7, 7) -> 10 (5x5 Conv -> BatchNorm2d -> ReLU ->
                MaxPool 3/2/1 per hidden block), x (B, 1, 28, 28); dni and cdni with minidni's sg="auto" module
                for CNNs, (5x5 Conv(32) -> BatchNorm2d -> ReLU) x 2 -> 5x5 Conv back to 32 channels

PyTorch is an optional dependency, for this comparison only: `pip install -e '.[bench]'` (or `pip install torch`;
the CPU build is enough). Nothing in the library or its tests imports this module except the benchmark, and that
inside a function, and this module imports torch only inside its functions (tests/test_no_torch_import.py checks
both), so minidni installs and runs without torch.

What this module deliberately is not: a timer (the benchmark times the step function) or a second implementation
to learn from: it restates minidni's step in PyTorch's terms, nothing more.
"""

import itertools

import numpy as np

from minidni.core.layers import BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from minidni.dni.network import build_network

# arch -> build_network's arguments for it, and the shape of one of its input examples (MNIST's)
ARCHS = {"fcn": {"arch": "fcn", "d_in": 784}, "cnn": {"arch": "cnn", "in_shape": (1, 28, 28)}}
EXAMPLE_SHAPE = {"fcn": (784,), "cnn": (1, 28, 28)}
MODES = ("bprop", "dni", "cdni")
# the SG module each arch's dni and cdni use unless told otherwise: the benchmark's linear modules for the FCN
# (minidni.experiments.bench.BENCH_MODES), the paper's convolutional module for the CNN
SG_KIND = {"fcn": "linear", "cnn": "auto"}
N_BATCHES = 4  # the step cycles through this many pre-drawn batches, as the minidni side does
INSTALL_HINT = "pip install -e '.[bench]' (or pip install torch; the CPU build is enough)"


def require_torch():
    """`import torch`, or an ImportError that says how to install it. Every function here that needs torch
    calls this, so that importing the module never needs torch."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"comparing with PyTorch needs torch, an optional dependency: {INSTALL_HINT}") from e
    return torch


# ---------------------------------------------------------------------------------------------------------------
# the network: minidni's, copied layer by layer into torch.nn


def minidni_network(arch, mode, seed=0, sg=None):
    """The minidni network that torch_step copies: FCN 3 or CNN 3 in `mode`, its SG modules of kind `sg`
    (None: SG_KIND[arch]), minidni's default optimisers and learning rates, weights drawn from `seed`."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {tuple(ARCHS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    return build_network(depth=3, mode=mode, sg=sg or SG_KIND[arch], seed=seed, **ARCHS[arch])


def random_batches(arch, batch=256, seed=0, n=N_BATCHES):
    """n random batches as the benchmark draws them: xs (n, B, *example shape) float32 standard normal,
    labels (n, B) integers in [0, 10)."""
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((n, batch, *EXAMPLE_SHAPE[arch])).astype(np.float32)
    labels = rng.integers(0, 10, size=(n, batch))
    return xs, labels


def torch_layer(layer):
    """One minidni layer as the torch.nn layer that computes the same function, holding a copy of its parameters."""
    torch = require_torch()
    nn = torch.nn
    if isinstance(layer, Linear):
        out = nn.Linear(layer.d_in, layer.d_out, bias="b" in layer.params)
        copy_params(out, weight=layer.params["W"].T, bias=layer.params.get("b"))  # minidni's W is (D_in, D_out)
    elif isinstance(layer, Conv2d):  # both frameworks keep W as (C_out, C_in, KH, KW)
        out = nn.Conv2d(layer.c_in, layer.c_out, layer.kernel, layer.stride, layer.padding, bias="b" in layer.params)
        copy_params(out, weight=layer.params["W"], bias=layer.params.get("b"))
    elif isinstance(layer, BatchNorm1d):  # BatchNorm2d is a subclass: the same parameters, per channel
        norm = nn.BatchNorm2d if isinstance(layer, BatchNorm2d) else nn.BatchNorm1d
        out = norm(layer.d, eps=layer.eps, momentum=layer.momentum)  # both update running stats as minidni does
        copy_params(out, weight=layer.params["gamma"], bias=layer.params["beta"])
    elif isinstance(layer, ReLU):
        out = nn.ReLU()
    elif isinstance(layer, MaxPool2d):  # both pad with -inf
        out = nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
    elif isinstance(layer, Flatten):  # (B, C, H, W) -> (B, C*H*W) in C order in both
        out = nn.Flatten()
    else:
        raise TypeError(f"no PyTorch counterpart for {layer!r}")
    return out


def copy_params(module, **arrays):
    """Copy numpy arrays into the module's parameters of those names (None: the module has no such parameter)."""
    torch = require_torch()
    with torch.no_grad():
        for name, a in arrays.items():
            if a is not None:
                getattr(module, name).copy_(torch.from_numpy(np.ascontiguousarray(a)))


def torch_stack(stack):
    """A minidni Sequential (a block's layers, or an SG module's) -> torch.nn.Sequential, and its Adam with the
    settings of the stack's own minidni optimiser (its learning rate, betas and eps)."""
    torch = require_torch()
    module = torch.nn.Sequential(*[torch_layer(layer) for layer in stack.layers])
    opt = stack.optimizer  # minidni.core.optim.Adam over the stack's flat parameter buffer
    adam = torch.optim.Adam(module.parameters(), lr=opt.base_lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
    return module.train(), adam  # training mode: batch norm with batch statistics


# ---------------------------------------------------------------------------------------------------------------
# the steps: minidni.dni.steps.bprop_step and dni_step in PyTorch


def sg_input(h, labels, n_classes):
    """What an SG module reads (minidni.dni.synthetic.SyntheticGradient.module_input): h itself, or for a cDNI
    module (n_classes given) h with the one-hot label appended along axis 1 - as K features for h (B, D), as K
    constant channel maps for h (B, C, H, W), channel k all ones for the examples of class k."""
    if n_classes is None:
        return h
    torch = require_torch()
    context = torch.nn.functional.one_hot(labels, n_classes).to(h.dtype)  # (B, K)
    if h.ndim == 4:
        context = context[:, :, None, None].expand(-1, -1, *h.shape[2:])  # (B, K, H, W), a broadcast view
    return torch.cat([h, context], dim=1)  # (B, D + K) or (B, C + K, H, W)


def sg_update(adam, dh_syn, dh_target):
    """One regression step of an SG module: loss = (1/B) sum_b ||dh_syn_b - dh_target_b||^2 (minidni's mse)."""
    loss = (dh_syn - dh_target).square().sum() / dh_syn.shape[0]
    adam.zero_grad()
    loss.backward()  # reaches the module's parameters only: its input was detached
    adam.step()
    return loss.item()


def bprop_step(blocks, x, labels):
    """Locked backprop through blocks = [(module, adam)] (the last the output block): one forward, one backward,
    every block's Adam step."""
    torch = require_torch()
    h = x
    for module, _ in blocks:
        h = module(h)  # (B, D_i) or (B, C, H_i, W_i); finally the logits (B, K)
    loss = torch.nn.functional.cross_entropy(h, labels)  # the batch mean, as minidni's softmax_cross_entropy
    for _, adam in blocks:
        adam.zero_grad()
    loss.backward()
    for _, adam in blocks:
        adam.step()
    return {"loss": loss.item(), "sg_loss": []}


def dni_step(blocks, sgs, x, labels, n_classes=None):
    """The DNI step of minidni.dni.steps.dni_step: blocks = [(module, adam)] (the last the output block),
    sgs = [(module, adam)], one per hidden block; n_classes for cDNI modules, None for DNI ones.

    Each hidden block i runs forward, asks its module for dh_syn = M_{i+1}(h_i [, y]), runs its backward with it
    and steps its Adam at once; the gradient that reaches block i's input is the bootstrapped target of the module
    below, which then regresses. The output block's backward gives the true dL/dh, the top module's target."""
    torch = require_torch()
    n = len(sgs)
    sg_loss, pending = [0.0] * n, [None] * n  # pending[i]: M_{i+1}'s prediction, waiting for its target
    h = x
    for i, ((block, adam), (sg, _)) in enumerate(zip(blocks, sgs)):
        h_in = h.detach().requires_grad_(i > 0)  # a leaf: its .grad is the target of the module below
        h = block(h_in)  # (B, D_i) or (B, C, H_i, W_i)
        dh_syn = sg(sg_input(h.detach(), labels, n_classes))  # h is held fixed: no SG loss reaches block i
        adam.zero_grad()
        h.backward(dh_syn.detach())  # block i's parameter gradients from the synthetic gradient
        adam.step()
        if i > 0:  # h_in.grad = delta_hat_i pulled back through block i
            sg_loss[i - 1] = sg_update(sgs[i - 1][1], pending[i - 1], h_in.grad)
        pending[i] = dh_syn
    output, adam = blocks[-1]
    h_in = h.detach().requires_grad_()
    loss = torch.nn.functional.cross_entropy(output(h_in), labels)
    adam.zero_grad()
    loss.backward()  # h_in.grad: the true dL/dh of the last hidden block
    adam.step()
    sg_loss[n - 1] = sg_update(sgs[n - 1][1], pending[n - 1], h_in.grad)
    return {"loss": loss.item(), "sg_loss": sg_loss}


# ---------------------------------------------------------------------------------------------------------------
# the benchmark's entry point


def torch_step(arch, mode, batch=256, seed=0, threads=1, sg=None):
    """PyTorch's CPU eager training step for minidni_network(arch, mode, seed, sg) on torch's `threads` threads.

    Returns (step, setup): step() runs one training step on the next of N_BATCHES random batches
    (random_batches(arch, batch, seed), the same ones the minidni side uses) and returns the step's record,
    {"loss": float, "sg_loss": [float per hidden block]}, as Network.train_step does; setup describes what runs.
    torch.set_num_threads is process-wide: the setting stays after this returns.
    """
    torch = require_torch()
    net = minidni_network(arch, mode, seed, sg)  # checks arch and mode first
    torch.set_num_threads(threads)
    torch.manual_seed(seed)  # nothing here draws from it, but a fixed seed keeps any future draw repeatable
    blocks = [torch_stack(block.layers) for block in net.blocks]
    sgs = [torch_stack(block.sg.net) for block in net.hidden] if mode != "bprop" else []
    n_classes = net.n_classes if mode == "cdni" else None
    xs, labels = random_batches(arch, batch, seed)
    data = itertools.cycle([(torch.from_numpy(x), torch.from_numpy(y)) for x, y in zip(xs, labels)])

    def step():
        x, y = next(data)  # x (B, 784) or (B, 1, 28, 28) float32, y (B,) int64
        if mode == "bprop":
            return bprop_step(blocks, x, y)
        return dni_step(blocks, sgs, x, y, n_classes)

    modules = [m for m, _ in blocks + sgs]
    setup = {
        "framework": "torch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "arch": arch,
        "mode": mode,
        "sg": None if mode == "bprop" else (sg or SG_KIND[arch]),
        "batch": batch,
        "dtype": "float32",
        "parameters": sum(p.numel() for m in modules for p in m.parameters()),
        "optimizer": "torch.optim.Adam, PyTorch's default implementation, one per block and per SG module",
        "mkldnn": torch.backends.mkldnn.is_available(),  # oneDNN: PyTorch's CPU convolutions
    }
    return step, setup
