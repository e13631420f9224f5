"""The DNI / cDNI training step of minidni.dni.Network, run through the fused kernels.

It is the same step, in the same order, as Network._dni_step - read that first. What changes is how each
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

What this module deliberately is not: general. It runs networks made by minidni.dni.fcn_blocks (hidden
blocks Linear [-> BatchNorm1d] -> ReLU|Tanh|Sigmoid, a Linear output block) with linear or MLP SG modules and
bootstrapped targets; anything else is refused at construction with the reason.
"""

import math

import numpy as np

from .. import functional as F
from ..dni import DivergenceError
from ..layers import BatchNorm1d, Linear, ReLU, Sigmoid, Tanh
from . import norm_ops, ops
from .reference import ACTS

_ACT_OF = {ReLU: ACTS["relu"], Tanh: ACTS["tanh"], Sigmoid: ACTS["sigmoid"]}


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


class FusedDNIStep:
    """net.train_step for a DNI/cDNI Network, through `kernels` (a minidni.cuda.loader.Kernels)."""

    def __init__(self, net, kernels, versions=None):
        if net.mode not in ("dni", "cdni"):
            raise ValueError(f"the fused kernels implement the DNI/cDNI step; mode {net.mode!r} runs unfused")
        if net.sg_target != "bootstrap":
            raise ValueError("the fused kernels implement bootstrapped targets; sg_target='true' runs unfused")
        if any(sum(isinstance(layer, Linear) for layer in b.layers.layers) > 1 for b in net.blocks):
            raise ValueError("the fused kernels implement blocks of one linear layer each; a split network runs unfused")
        self.net, self.kernels = net, kernels
        fastest = {op: available[-1] for op, available in {**ops.VERSIONS, **norm_ops.VERSIONS}.items()}
        unknown = set(versions or {}) - set(fastest)
        if unknown:
            raise ValueError(f"unknown kernels {sorted(unknown)}; expected some of {sorted(fastest)}")
        self.v = {**fastest, **(versions or {})}
        self.blocks = [_Block(b, is_output=False) for b in net.hidden] + [_Block(net.output, is_output=True)]
        self.modules = [_Module(b.sg, b.index) for b in net.hidden]

    # -- one training step ------------------------------------------------------------------------------------

    def __call__(self, x, labels):
        xp = self.kernels.xp
        labels = xp.ascontiguousarray(labels, dtype=np.int32)
        ops.check_labels(labels, self.blocks[-1].lin.d_out)  # once: the launchers below skip their own check
        hidden = self.net.hidden
        n = len(hidden)
        sg_loss = [None] * n
        pending = [None] * n  # (u, dh_syn, hidden cache) of module i, waiting for its target
        h = x
        for i, block in enumerate(hidden):
            x_in = h
            h, bn_cache = self._forward(self.blocks[i], x_in)
            u, hidden_cache = self._sg_input(self.modules[i], h, labels)
            dh_syn, delta = self._predict(i, u, h, labels)
            dx = self._backward_and_update(self.blocks[i], x_in, delta, bn_cache, need_dx=i > 0)
            if i > 0:  # dx = delta_hat_i pulled back through block i: the target of the module below
                sg_loss[i - 1] = self._sg_update(i - 1, *pending[i - 1], labels, dh_target=dx)
            pending[i] = (u, dh_syn, hidden_cache)

        out = self.blocks[-1]
        logits = ops.linear_forward(self.kernels, h, out.P, out.act, True, version=self.v["linear_forward"])
        loss_rows, dlogits = norm_ops.softmax_xent(
            self.kernels, logits, labels, version=self.v["softmax_xent"], labels_checked=True
        )
        dh_true = F.matmul(dlogits, out.lin.params["W"].T)  # the true dL/dh_{N-1}, before W changes
        out.opt.begin_step()
        step = ops.optimizer_step_of(out.opt, 0, out.n_lin, out.P.shape)
        ops.layer_update(self.kernels, h, dlogits, out.P, True, step, version=self.v["layer_update"])
        sg_loss[n - 1] = self._sg_update(n - 1, *pending[n - 1], labels, dh_target=dh_true)

        # read back at the end, so that the GPU is not stalled mid-step (the engine checks before the output
        # block's update; a non-finite loss stops the run either way)
        loss = float(loss_rows.mean())
        if not math.isfinite(loss):
            raise DivergenceError(f"the training loss is {loss}; the network diverged (lower the learning rate)")
        return {"loss": loss, "sg_loss": [float(s[0]) for s in sg_loss]}

    # -- the pieces ---------------------------------------------------------------------------------------------

    def _forward(self, blk, x_in):
        """h = f(BN(x W)) (or f(x W + b)): returns h and batch norm's cache (xhat, inv_std) or None."""
        if blk.bn is None:
            h = ops.linear_forward(self.kernels, x_in, blk.P, blk.act, blk.has_bias, version=self.v["linear_forward"])
            return h, None
        z = ops.linear_forward(
            self.kernels, x_in, blk.P, ACTS["identity"], blk.has_bias, version=self.v["linear_forward"]
        )
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
            version=self.v["bn_forward_train"],
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

    def _predict(self, i, u, h, labels):
        """dh_syn and delta = dh_used * f'(z), with the engine's divergence check and optional clipping."""
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
            version=self.v["sg_predict"],
            labels_checked=True,
        )
        norm = math.sqrt(float(self.kernels.xp.vdot(dh_syn.ravel(), dh_syn.ravel())))
        if not math.isfinite(norm) or norm > block.max_norm:
            raise DivergenceError(
                f"synthetic gradient of block {i} diverged: ||dh_syn|| = {norm:.3g} (limit {block.max_norm:g}). "
                f"Lower the synthetic-gradient learning rate or set a clip; a NaN can also come from the input batch."
            )
        if block.clip is not None and norm > block.clip:
            delta *= np.float32(block.clip / norm)  # f' is linear in dh: clipping dh_used scales delta alike
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
                version=self.v["bn_backward"],
            )
        dx = F.matmul(dz, blk.lin.params["W"].T) if need_dx else None  # uses the forward pass's W
        blk.opt.begin_step()
        step = ops.optimizer_step_of(blk.opt, 0, blk.n_lin, blk.P.shape)
        ops.layer_update(self.kernels, x_in, dz, blk.P, blk.has_bias, step, version=self.v["layer_update"])
        if blk.rest.size:
            step = ops.optimizer_step_of(blk.opt, blk.n_lin, blk.n_lin + blk.rest.size, (blk.rest.size,))
            ops.optimizer_step(self.kernels, blk.rest, blk.rest_grads, step)
        return dx

    def _sg_update(self, i, u, dh_syn, hidden_cache, labels, dh_target):
        """Module i's regression step: the MLP's hidden layers through the engine (their gradients need the
        output layer's weights before it changes), then the fused update of the output layer with the loss."""
        mod = self.modules[i]
        mod.opt.begin_step()
        if mod.hidden_layers:
            B = dh_syn.shape[0]
            dpred = (dh_syn - dh_target) * np.float32(2.0 * mod.sg.scale / B)  # F.mse's gradient, scaled
            du = F.matmul(dpred, mod.out_layer.params["W"].T)
            for j in range(len(mod.hidden_layers) - 1, -1, -1):
                du = mod.hidden_layers[j].backward(du, hidden_cache[j], need_dx=j > 0)
            step = ops.optimizer_step_of(mod.opt, 0, mod.off, (mod.off,))
            ops.optimizer_step(self.kernels, mod.hidden_flat, mod.hidden_grads, step)
        step = ops.optimizer_step_of(mod.opt, mod.off, mod.off + mod.P.size, mod.P.shape)
        return ops.sg_update(
            self.kernels,
            u,
            labels,
            mod.K,
            dh_syn,
            dh_target,
            mod.sg.scale,
            mod.P,
            step,
            version=self.v["sg_update"],
            labels_checked=True,
        )
