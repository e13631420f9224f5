"""The alternative to every kernel: the same contract computed with the array library's own operations.

Each function here takes exactly what its launcher in minidni.cuda.ops / minidni.cuda.norm_ops takes, updates the
same arrays in place and returns the same results - computed with cuBLAS products and CuPy elementwise operations
on a GPU (NumPy on the CPU) instead of one hand-written kernel. A launcher runs it when asked for
`version="unfused"`. That makes the fused kernels a choice per operation and shape: `bench --backend cupy` times
each kernel against it, and `--kernels auto` (minidni.cuda.autotune) keeps a kernel only where it is not slower.

None of these reads anything back to the host (no float(), no .item()): they queue work and return, as kernels do.

What this module deliberately is not: a second reference. minidni.cuda.reference states the contracts with
the engine's own functions on NumPy arrays, and the tests hold both the kernels and these functions to it.
"""

import numpy as np

from minidni.core import functional as F
from minidni.core.backend import array_module
from minidni.core.optim import adam_update, sgd_update
from minidni.dni.synthetic import one_hot
from minidni.cuda import reference


def _act(z, act):
    """h = f(z) in place for an act code (0 identity, 1 relu, 2 tanh, 3 sigmoid)."""
    if act == 1:
        return F.relu_forward(z)[0]
    if act == 2:
        return F.tanh_forward(z)[0]
    if act == 3:
        return F.sigmoid_forward(z)[0]
    return z


def _act_backward(dh, h, act):
    """dh * f'(z), f' written in terms of h = f(z)."""
    if act == 1:
        return F.relu_backward(dh, h)
    if act == 2:
        return F.tanh_backward(dh, h)
    if act == 3:
        return F.sigmoid_backward(dh, h)
    return dh.copy()


def apply_step(P, g, step):
    """P <- P - opt(g) in place, with an ops.OptimizerStep: minidni.core.optim's own update rules, on the step's
    state."""
    tmp = array_module(P).empty_like(P)
    if step.kind == "adam":
        adam_update(P, g, *step.state, *step.scalars, tmp)  # scalars: a_t, eps_t, beta1, beta2
    else:
        sgd_update(P, g, *step.state, *step.scalars, tmp)  # scalars: lr, momentum


def linear_forward(kernels, x, P, act, has_bias=True, out=None):
    """h = f(x W + b): one product, then the bias and activation as elementwise passes."""
    d_in = x.shape[1]
    z = F.matmul(x, P[:d_in], out=out)  # (B, D_out)
    if has_bias:
        z += P[d_in]
    return _act(z, act)


def sg_predict(kernels, u, P, labels, n_classes, h, act, inv_scale=1.0):
    """dh_syn = (u A + C[y] + c) * inv_scale, delta = dh_syn * f'(z): a product, a row gather, elementwise."""
    d_u, K = u.shape[1], n_classes or 0
    dh_syn = F.matmul(u, P[:d_u])  # (B, D)
    if K:
        dh_syn += P[d_u : d_u + K][labels]  # C[y]: (B, D)
    dh_syn += P[d_u + K]
    dh_syn *= np.float32(inv_scale)
    return dh_syn, _act_backward(dh_syn, h, act)


def layer_update(kernels, x, delta, P, has_bias, step):
    """g = [x, 1]^T delta as one product (and a column sum), then the optimiser's passes over P."""
    d_in = x.shape[1]
    g = kernels.xp.empty_like(P)  # (D_in [+1], D_out)
    F.matmul(x.T, delta, out=g[:d_in])
    if has_bias:
        kernels.xp.sum(delta, axis=0, out=g[d_in])
    apply_step(P, g, step)


def sg_update(kernels, u, labels, n_classes, dh_syn, dh_target, scale, P, step, loss=None):
    """The SG map's regression step: the loss added into `loss` (1,) on the device, the gradient
    [u, onehot(y), 1]^T dpred as products, then the optimiser's passes."""
    xp, (B, d_u), K = kernels.xp, u.shape, n_classes or 0
    if loss is None:
        loss = xp.zeros(1, dtype=np.float32)
    diff = dh_syn - dh_target  # (B, D)
    flat = diff.ravel()
    loss += xp.vdot(flat, flat) * np.float32(1.0 / B)
    diff *= np.float32(2.0 * scale / B)  # dpred: mse's gradient, times the module's output scale
    g = xp.empty_like(P)  # (Du + K + 1, D)
    F.matmul(u.T, diff, out=g[:d_u])
    if K:
        F.matmul(one_hot(labels, K).T, diff, out=g[d_u : d_u + K])  # sum of dpred rows per class, deterministic
    xp.sum(diff, axis=0, out=g[d_u + K])
    apply_step(P, g, step)
    return loss


def optimizer_step(kernels, P, grad, step):
    apply_step(P, grad, step)


def bn_forward_train(kernels, z, gamma, beta, running_mean, running_var, act, momentum=0.1, eps=1e-5):
    """minidni.core.functional's batch norm with the running statistics and f: the reference itself, which is the
    engine's own functions and works on either library's arrays."""
    return reference.bn_forward_train(z, gamma, beta, running_mean, running_var, act, momentum, eps)


def bn_backward(kernels, dy, xhat, inv_std, gamma, dgamma=None, dbeta=None):
    return F.batchnorm_backward(dy, (xhat, inv_std, gamma, None, None), dgamma=dgamma, dbeta=dbeta)


def softmax_xent(kernels, logits, labels):
    """Per-row losses and dlogits = (softmax - onehot) / B, from one pass of exponentials."""
    xp, B = kernels.xp, logits.shape[0]
    rows_b = xp.arange(B)
    shifted = logits - logits.max(axis=1, keepdims=True)  # (B, K)
    p = xp.exp(shifted)
    sumexp = p.sum(axis=1)  # (B,)
    loss_rows = xp.log(sumexp) - shifted[rows_b, labels]  # (B,)
    p /= sumexp[:, None]
    p[rows_b, labels] -= 1  # cupy: rows_b = arange(B) names every (row, label) pair once
    p *= np.float32(1.0 / B)
    return loss_rows, p
