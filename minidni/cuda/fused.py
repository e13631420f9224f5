"""The DNI / cDNI training step of minidni.dni.network.Network, run through the fused kernels.

It is the same step, in the same order, as minidni.dni.steps.dni_step - read that first. What changes is how each
piece is computed (kernel names are kernels/*.cu files):

    per hidden block i, as soon as h_{i-1} exists:
        z          = x W                                       linear_forward   (no bias: batch norm follows)
        h, cache   = f(BN(z)), running statistics updated      batchnorm
        u          = SG hidden layers (MLP modules only)       engine ops (CuPy on a GPU)
        dh_syn, d  = u A + C[y] + c,  d = dh_syn * f'(z)       sg_predict       (the predictor's linear map)
        dz, dg, db = BN backward of d                          batchnorm
        dx         = dz W^T  (before W changes)                matmul (cuBLAS)  the target of the module below
        W         <- W - opt(x^T dz)                           layer_update     (dW never materialised)
        gamma,beta<- step with dg, db                          optim
        M_i       <- regression step towards dx, with loss     sg_update        (error formed while loading)
    output block: logits = h W + b (linear_forward), softmax cross-entropy (softmax_xent), dh = dlogits W^T
    (matmul), W, b update (layer_update), and the top module's step towards dh (sg_update).

Everything works on whatever arrays the `kernels` target takes: cupy arrays on a GPU, numpy arrays with the
CPU emulator - which is how the test suite checks, without a GPU, that this step equals the engine's.

What this module deliberately is not: general. It runs networks made by minidni.dni.network.fcn_blocks (hidden
blocks Linear [-> BatchNorm1d] -> ReLU|Tanh|Sigmoid, a Linear output block) with linear or MLP SG modules and
bootstrapped targets; anything else is refused at construction with the reason.
"""

import math

import numpy as np

from minidni.core import functional as F
from minidni.core.backend import to_numpy
from minidni.dni.blocks import DivergenceError
from minidni.core.layers import BatchNorm1d, Linear, ReLU, Sigmoid, Tanh
from minidni.cuda import norm_ops
from minidni.cuda import ops
from minidni.cuda.checks import check_version
from minidni.cuda.reference import ACTS

_ACT_OF = {ReLU: ACTS["relu"], Tanh: ACTS["tanh"], Sigmoid: ACTS["sigmoid"]}
OPTIMIZER_CODES = {"sgd": 0, "adam": 1}  # the optimiser in a plan's key (its kernels differ)


def _linear_slice(flat, layer, offset):
    """The (D_in [+1], D_out) view of a Linear layer's [W; b] inside a flat parameter buffer."""
    rows = layer.d_in + ("b" in layer.params)
    return flat[offset : offset + rows * layer.d_out].reshape(rows, layer.d_out), offset + rows * layer.d_out


class _Block:
    """Where a hidden or output block's pieces live in its flat buffers."""

    def __init__(self, block, is_output):
        layers = block.layers.layers
        self.lin = layers[0]
        ok = isinstance(self.lin, Linear)
        if is_output:
            ok = ok and len(layers) == 1 and "b" in self.lin.params
            self.bn, self.act = None, ACTS["identity"]
        else:
            self.bn = layers[1] if len(layers) == 3 and isinstance(layers[1], BatchNorm1d) else None
            self.act = _ACT_OF.get(type(layers[-1]))
            ok = ok and self.act is not None and len(layers) == 2 + (self.bn is not None)
        if not ok:
            raise ValueError(
                f"the fused kernels run blocks Linear [-> BatchNorm1d] -> ReLU|Tanh|Sigmoid and a Linear output "
                f"block with bias; block {block.index} is {block.layers!r}"
            )
        if block.layers.optimizer is None:
            raise ValueError(f"block {block.index} has no optimiser; call set_optimizer first")
        self.opt = block.layers.optimizer
        flat, self.grads = self.opt.params["params"], block.layers.flat_grads
        self.has_bias = "b" in self.lin.params
        self.P, self.n_lin = _linear_slice(flat, self.lin, 0)
        self.dims = (self.lin.d_in, self.lin.d_out, int(self.has_bias))  # (D_in, D_out, bias) of its product
        self.rest = flat[self.n_lin :]  # gamma, beta (empty without batch norm)
        self.rest_grads = self.grads[self.n_lin :]


class _Module:
    """Where an SG module's output layer lives in its flat buffer, and what runs before it."""

    def __init__(self, sg, index):
        layers = sg.net.layers
        self.sg, self.out_layer, self.hidden_layers = sg, layers[-1], layers[:-1]
        if sg.net.optimizer is None:
            raise ValueError(f"synthetic-gradient module {index} has no optimiser; call set_optimizer first")
        self.opt = sg.net.optimizer
        flat, self.grads = self.opt.params["params"], sg.net.flat_grads
        self.off = flat.size - (self.out_layer.d_in + 1) * self.out_layer.d_out  # the output layer comes last
        self.P, _ = _linear_slice(flat, self.out_layer, self.off)
        self.hidden_flat, self.hidden_grads = flat[: self.off], self.grads[: self.off]
        # a linear cDNI module reads the labels in its only (output) layer; an MLP one in its first layer
        self.K = (sg.n_classes or 0) if not self.hidden_layers else 0


def op_key(op, *dims):
    """The name of one operation of the step at one shape, e.g. "linear_forward(256,784,256,0)": what a plan
    (minidni.cuda.autotune) chooses a version for. dims are those listed in FusedDNIStep.operations."""
    return f"{op}({','.join(str(int(d)) for d in dims)})"


def fused_form_problem(net):
    """Why the fused step below cannot run `net`, or None if it can: it runs DNI/cDNI FCNs with bootstrapped
    targets, one linear layer per block (no split), without stochastic updates or complete unlock."""
    if net.mode not in ("dni", "cdni"):
        return f"the fused kernels implement the DNI/cDNI step; mode {net.mode!r} runs unfused"
    if net.sg_target != "bootstrap":
        return "the fused kernels implement bootstrapped targets; sg_target='true' runs unfused"
    if net.gate is not None or net.inputs is not None:
        return "stochastic updates and complete unlock have no fused form; use the engine's own step"
    if any(sum(isinstance(layer, Linear) for layer in b.layers.layers) > 1 for b in net.blocks):
        return "the fused kernels implement blocks of one linear layer each; a split network runs unfused"
    if net.blocks[0].layers.layers[0].params["W"].ndim != 2:
        return "the fused kernels implement fully connected networks; a convolutional one runs unfused"
    return None


def use_kernels(net, kernels, versions=None, plan=None):
    """Make net.train_step run through the fused CUDA kernels: `kernels` is a minidni.cuda.loader.Kernels (CuPy
    on a GPU, or the CPU emulator); None goes back to the engine's own (unfused) step. Only DNI/cDNI steps with
    bootstrapped targets have a fused form. versions and plan choose kernel versions, per operation or per
    operation and shape (FusedDNIStep)."""
    if kernels is None:
        net.fused_step = None
        return
    if net.timeline is not None:
        raise ValueError("a recording timeline is attached; the fused step cannot be recorded (record_timeline(None))")
    net.fused_step = FusedDNIStep(net, kernels, versions, plan)


class FusedDNIStep:
    """net.train_step for a DNI/cDNI Network, through `kernels` (a minidni.cuda.loader.Kernels).

    versions: {op: version} for every use of an op (ints from ops.VERSIONS / norm_ops.VERSIONS, or "unfused": the
    array library's own ops, minidni.cuda.unfused); plan: {op_key(op, *dims): version} for single shapes, which
    wins over versions (what `--kernels auto` measures, minidni.cuda.autotune)."""

    def __init__(self, net, kernels, versions=None, plan=None):
        problem = fused_form_problem(net)
        if problem is not None:
            raise ValueError(problem)
        self.net, self.kernels = net, kernels
        fastest = {op: available[-1] for op, available in {**ops.VERSIONS, **norm_ops.VERSIONS}.items()}
        unknown = set(versions or {}) - set(fastest)
        if unknown:
            raise ValueError(f"unknown kernels {sorted(unknown)}; expected some of {sorted(fastest)}")
        self.v = {**fastest, **(versions or {})}
        for op, version in self.v.items():
            check_version({**ops.VERSIONS, **norm_ops.VERSIONS}, op, version)
        self.plan = dict(plan or {})
        self.blocks = [_Block(b, is_output=False) for b in net.hidden] + [_Block(net.output, is_output=True)]
        self.modules = [_Module(b.sg, b.index) for b in net.hidden]

    def _version(self, op, *dims):
        """The version that runs `op` at these dims: the plan's choice for this shape, else versions[op]."""
        return self.plan.get(op_key(op, *dims), self.v[op])

    def operations(self, B):
        """{op_key: (op, dims)} of every kernel launch a step on a batch of B rows makes (what a plan chooses
        among; a test checks this list against the keys a real step looks up)."""
        found = {}

        def add(op, *dims):
            found[op_key(op, *dims)] = (op, dims)

        for blk in self.blocks[:-1]:
            kind = OPTIMIZER_CODES[ops.optimizer_kind(blk.opt)]
            add("linear_forward", B, *blk.dims)
            add("layer_update", B, *blk.dims, kind)
            if blk.bn is not None:
                add("bn_forward_train", B, blk.lin.d_out)
                add("bn_backward", B, blk.lin.d_out)
            if blk.rest.size:
                add("optimizer_step", blk.rest.size, kind)
        for mod, blk in zip(self.modules, self.blocks[:-1]):
            kind = OPTIMIZER_CODES[ops.optimizer_kind(mod.opt)]
            d_u = mod.out_layer.d_in - mod.K
            add("sg_predict", B, d_u, mod.K, blk.lin.d_out)
            add("sg_update", B, d_u, mod.K, mod.P.shape[1], kind)
            if mod.hidden_layers:
                add("optimizer_step", mod.off, kind)
        out = self.blocks[-1]
        kind = OPTIMIZER_CODES[ops.optimizer_kind(out.opt)]
        add("linear_forward", B, *out.dims)
        add("softmax_xent", B, out.lin.d_out)
        add("layer_update", B, *out.dims, kind)
        return found

    # -- one training step ------------------------------------------------------------------------------------

    def __call__(self, x, labels, labels_checked=False):
        """One step on x (B, D_in) and labels (B,). Labels given as a NumPy array are range-checked on the host and
        uploaded; device labels are checked on the device (one extra read) unless labels_checked says the caller
        already did (the trainer checks its whole data set once, on the host, before upload)."""
        labels = self._labels(labels, labels_checked)
        hidden = self.net.hidden
        n = len(hidden)
        # What the host must see, kept on the device and read once at the end of the step (each read is a full
        # CPU-GPU sync): [||dh_syn_0|| .. ||dh_syn_{n-1}||, loss, sg_loss_0 .. sg_loss_{n-1}]
        stats = self.kernels.xp.zeros(2 * n + 1, dtype=np.float32)
        pending = [None] * n  # (u, dh_syn, hidden cache) of module i, waiting for its target
        h = x
        for i, block in enumerate(hidden):
            x_in = h
            h, bn_cache = self._forward(self.blocks[i], x_in)
            u, hidden_cache = self._sg_input(self.modules[i], h, labels)
            dh_syn, delta = self._predict(i, u, h, labels, stats)
            dx = self._backward_and_update(self.blocks[i], x_in, delta, bn_cache, need_dx=i > 0)
            if i > 0:  # dx = delta_hat_i pulled back through block i: the target of the module below
                self._sg_update(i - 1, *pending[i - 1], labels, dh_target=dx, loss=stats[n + i : n + i + 1])
            pending[i] = (u, dh_syn, hidden_cache)

        out = self.blocks[-1]
        B, D, K = h.shape[0], h.shape[1], out.lin.d_out
        logits = ops.linear_forward(
            self.kernels, h, out.P, out.act, True, version=self._version("linear_forward", B, D, K, 1)
        )
        loss_rows, dlogits = norm_ops.softmax_xent(
            self.kernels, logits, labels, version=self._version("softmax_xent", B, K), labels_checked=True
        )
        stats[n] = loss_rows.mean()
        dh_true = F.matmul(dlogits, out.lin.params["W"].T)  # the true dL/dh_{N-1}, before W changes
        out.opt.begin_step()
        step = ops.optimizer_step_of(out.opt, 0, out.n_lin, out.P.shape)
        version = self._version("layer_update", B, D, K, 1, OPTIMIZER_CODES[step.kind])
        ops.layer_update(self.kernels, h, dlogits, out.P, True, step, version=version)
        self._sg_update(n - 1, *pending[n - 1], labels, dh_target=dh_true, loss=stats[2 * n : 2 * n + 1])

        host = to_numpy(stats)  # the step's one device-to-host read
        self._check_divergence(host[:n], float(host[n]))
        return {"loss": float(host[n]), "sg_loss": [float(v) for v in host[n + 1 :]]}

    def _labels(self, labels, checked):
        """int32 labels on the device, known to lie in [0, K): a kernel would read out of bounds otherwise."""
        xp, K = self.kernels.xp, self.blocks[-1].lin.d_out
        if isinstance(labels, np.ndarray) and xp is not np:  # on the host: check there, then upload
            F.check_labels(labels, K)
            return xp.asarray(labels, dtype=np.int32)
        labels = xp.ascontiguousarray(labels, dtype=np.int32)
        if not checked:
            F.check_labels(labels, K)  # one read, before any kernel runs
        return labels

    def _check_divergence(self, norms, loss):
        """The engine's divergence checks, made once the step's numbers reach the host. Unlike the engine, which
        stops before the block updates, the fused step has applied its updates by then: the network in memory is
        unusable, and the run must stop before anything is saved (the trainer writes checkpoints only between
        epochs, so the last one holds the state before this step)."""
        after = "; this step's updates were applied, so the network in memory is unusable (checkpoints are intact)"
        for i, (block, norm) in enumerate(zip(self.net.hidden, norms)):
            if not math.isfinite(norm) or norm > block.max_norm:
                raise DivergenceError(
                    f"synthetic gradient of block {i} diverged: ||dh_syn|| = {norm:.3g} (limit {block.max_norm:g}). "
                    f"Lower the synthetic-gradient learning rate or set a clip; a NaN can also come from the input "
                    f"batch{after}"
                )
        if not math.isfinite(loss):
            raise DivergenceError(f"the training loss is {loss}; the network diverged (lower the learning rate){after}")

    # -- the pieces ---------------------------------------------------------------------------------------------

    def _forward(self, blk, x_in):
        """h = f(BN(x W)) (or f(x W + b)): returns h and batch norm's cache (xhat, inv_std) or None."""
        B, version = x_in.shape[0], self._version("linear_forward", x_in.shape[0], *blk.dims)
        if blk.bn is None:
            h = ops.linear_forward(self.kernels, x_in, blk.P, blk.act, blk.has_bias, version=version)
            return h, None
        z = ops.linear_forward(self.kernels, x_in, blk.P, ACTS["identity"], blk.has_bias, version=version)
        bn = blk.bn
        h, xhat, inv_std = norm_ops.bn_forward_train(
            self.kernels,
            z,
            bn.params["gamma"],
            bn.params["beta"],
            bn.buffers["running_mean"],
            bn.buffers["running_var"],
            blk.act,
            momentum=bn.momentum,
            eps=bn.eps,
            version=self._version("bn_forward_train", B, blk.lin.d_out),
        )
        return h, (xhat, inv_std)

    def _sg_input(self, mod, h, labels):
        """The input u of the SG output layer: h itself, or h through the MLP's hidden layers (engine ops)."""
        if not mod.hidden_layers:
            return h, None
        u = mod.sg.module_input(h, labels)  # [h, onehot(y)] for cDNI: an MLP module reads labels in its first layer
        caches = []
        for layer in mod.hidden_layers:
            u, cache = layer.forward(u, train=True)
            caches.append(cache)
        return self.kernels.xp.ascontiguousarray(u), caches

    def _predict(self, i, u, h, labels, stats):
        """dh_syn and delta = dh_used * f'(z). ||dh_syn|| goes into stats[i] for the end-of-step divergence check;
        clipping scales delta on the device by min(1, clip / ||dh_syn||), which is the engine's rule."""
        block, mod, blk = self.net.hidden[i], self.modules[i], self.blocks[i]
        dh_syn, delta = ops.sg_predict(
            self.kernels,
            u,
            mod.P,
            labels,
            mod.K,
            h,
            blk.act,
            1.0 / mod.sg.scale,
            version=self._version("sg_predict", u.shape[0], u.shape[1], mod.K, blk.lin.d_out),
            labels_checked=True,
        )
        xp = self.kernels.xp
        d = dh_syn.ravel()
        stats[i] = xp.sqrt(xp.vdot(d, d))  # (), stays on the device
        if block.clip is not None:  # f' is linear in dh: clipping dh_used scales delta alike, by
            clip = np.float32(block.clip)  # clip / max(||dh_syn||, clip) = min(1, clip / ||dh_syn||), never 1 / 0
            delta *= clip / xp.maximum(stats[i], clip)
        return dh_syn, delta

    def _backward_and_update(self, blk, x_in, delta, bn_cache, need_dx):
        """Batch norm's backward, dx for the module below, then the fused update of [W; b] and the step of
        gamma and beta. Returns dx (or None)."""
        dz = delta
        if blk.bn is not None:
            D = blk.lin.d_out
            dz, _, _ = norm_ops.bn_backward(
                self.kernels,
                delta,
                *bn_cache,
                blk.bn.params["gamma"],
                dgamma=blk.rest_grads[:D],
                dbeta=blk.rest_grads[D:],
                version=self._version("bn_backward", delta.shape[0], D),
            )
        dx = F.matmul(dz, blk.lin.params["W"].T) if need_dx else None  # uses the forward pass's W
        blk.opt.begin_step()
        step = ops.optimizer_step_of(blk.opt, 0, blk.n_lin, blk.P.shape)
        version = self._version("layer_update", x_in.shape[0], *blk.dims, OPTIMIZER_CODES[step.kind])
        ops.layer_update(self.kernels, x_in, dz, blk.P, blk.has_bias, step, version=version)
        if blk.rest.size:
            step = ops.optimizer_step_of(blk.opt, blk.n_lin, blk.n_lin + blk.rest.size, (blk.rest.size,))
            version = self._version("optimizer_step", blk.rest.size, OPTIMIZER_CODES[step.kind])
            ops.optimizer_step(self.kernels, blk.rest, blk.rest_grads, step, version=version)
        return dx

    def _sg_update(self, i, u, dh_syn, hidden_cache, labels, dh_target, loss):
        """Module i's regression step: the MLP's hidden layers through the engine (their gradients need the
        output layer's weights before it changes), then the fused update of the output layer, which adds its
        loss into `loss` (a zeroed one-element view into the step's stats)."""
        mod = self.modules[i]
        mod.opt.begin_step()
        if mod.hidden_layers:
            B = dh_syn.shape[0]
            dpred = (dh_syn - dh_target) * np.float32(2.0 * mod.sg.scale / B)  # F.mse's gradient, scaled
            du = F.matmul(dpred, mod.out_layer.params["W"].T)
            for j in range(len(mod.hidden_layers) - 1, -1, -1):
                du = mod.hidden_layers[j].backward(du, hidden_cache[j], need_dx=j > 0)
            step = ops.optimizer_step_of(mod.opt, 0, mod.off, (mod.off,))
            version = self._version("optimizer_step", mod.off, OPTIMIZER_CODES[step.kind])
            ops.optimizer_step(self.kernels, mod.hidden_flat, mod.hidden_grads, step, version=version)
        step = ops.optimizer_step_of(mod.opt, mod.off, mod.off + mod.P.size, mod.P.shape)
        version = self._version("sg_update", *u.shape, mod.K, mod.P.shape[1], OPTIMIZER_CODES[step.kind])
        ops.sg_update(
            self.kernels,
            u,
            labels,
            mod.K,
            dh_syn,
            dh_target,
            mod.sg.scale,
            mod.P,
            step,
            version=version,
            labels_checked=True,
            loss=loss,
        )
