"""The NumPy reference of every CUDA kernel, written with minidni's own math (minidni.core.functional,
minidni.core.optim).

A kernel is correct when it returns what its reference returns, to float32 tolerance, on shapes that are not
multiples of its tile or block sizes. Each reference states the kernel's contract: inputs, outputs, and which
arrays it updates in place. They are deliberately the engine's own functions, composed - not a second
implementation of the math - so "the kernel equals the reference" means "the kernel equals the engine".

Conventions shared with the kernels:
    act codes        0 identity, 1 relu, 2 tanh, 3 sigmoid; f'(z) is written in terms of the output h = f(z)
    label rows       a label-conditioned (cDNI) linear map reads [h, onehot(y)]; its weight is [A; C] with C (K, D)
                     and the kernels gather row C[y_b] instead of multiplying by a one-hot
    flat parameters  a layer's weight and bias are one contiguous (D_in [+ K] + 1, D_out) matrix, weight rows
                     first and the bias as the last row, exactly as minidni.core.layers.flatten_parameters lays them out
    optimisers       SGD with momentum and Adam in minidni.core.optim's sum form (M, V), one step per call
"""

import numpy as np

from minidni.core import functional as F

ACTS = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3}


# How close a kernel must come to its reference: float32 with another summation order (and FMA on a GPU), so the
# error grows with the length of the reduction behind each result. The tests and `python -m minidni doctor` use
# these same two rules.
def product_tolerance(reduction):
    """rtol = atol for a float32 result of a product (or an update) that sums `reduction` terms."""
    return 2e-6 * max(1, reduction) ** 0.5 * 8


def reduction_tolerance(n):
    """rtol = atol for a float32 result behind a batch-norm or softmax reduction over n terms."""
    return 1e-5 + 2e-6 * n


def act_forward(z, act):
    """h = f(z) for an act code."""
    if act == 0:
        return z.copy()
    return {1: F.relu_forward, 2: F.tanh_forward, 3: F.sigmoid_forward}[act](z)[0]


def act_backward(dh, h, act):
    """dz = dh * f'(z), with f' written in terms of h = f(z)."""
    if act == 0:
        return dh.copy()
    return {1: F.relu_backward, 2: F.tanh_backward, 3: F.sigmoid_backward}[act](dh, h)


def one_hot_input(u, labels, n_classes):
    """[u, onehot(y)] (B, D + K): what a label-conditioned linear map reads (K = 0: just u)."""
    if not n_classes:
        return u
    onehot = np.zeros((u.shape[0], n_classes), dtype=u.dtype)
    onehot[np.arange(u.shape[0]), labels] = 1
    return np.concatenate([u, onehot], axis=1)


def with_ones(x):
    """[x, 1] (B, D + 1): a bias is the weight of a constant input."""
    return np.concatenate([x, np.ones((x.shape[0], 1), dtype=x.dtype)], axis=1)


# ----------------------------------------------------------------------------------------------------------
# linear forward with bias and activation


def linear_forward(x, P, act, has_bias=True):
    """x (B, D_in), P (D_in [+1], D_out) -> h = f(x W + b) (B, D_out)."""
    z = (with_ones(x) if has_bias else x) @ P
    return act_forward(z, act)


# ----------------------------------------------------------------------------------------------------------
# the synthetic-gradient prediction fused with the block's activation derivative


def sg_predict(u, P, labels, n_classes, h, act, inv_scale=1.0):
    """The SG module's linear map and what the block does with it.

    u (B, Du): the map's input (h itself for a linear module, the last hidden layer for an MLP);
    P (Du + K + 1, D): [A; C; c]; labels (B,) int32; h (B, D): the block's output, for f'.
    Returns dh_syn = (u A + C[y] + c) * inv_scale (B, D) and delta = dh_syn * f'(z) (B, D).
    """
    dh_syn = with_ones(one_hot_input(u, labels, n_classes)) @ P
    dh_syn *= np.float32(inv_scale)
    return dh_syn, act_backward(dh_syn, h, act)


# ----------------------------------------------------------------------------------------------------------
# optimiser steps, as minidni.core.optim takes them (one step on the whole array)


def optimizer_step(kind, P, grad, state, lr, t=1, momentum=0.9, betas=(0.9, 0.999), eps=1e-8):
    """Apply one step of minidni's SGD ('sgd', state = {"velocity": V}) or Adam ('adam', state = {"M", "V"}) to
    P in place, through the engine's optimiser classes. `t` is the step number this step will have (Adam's bias
    correction)."""
    from minidni.core.optim import SGD, Adam

    if kind == "sgd":
        opt = SGD({"p": P}, lr, momentum=momentum)
        opt.velocity["p"] = state["velocity"]
    elif kind == "adam":
        opt = Adam({"p": P}, lr, betas=betas, eps=eps)
        opt.M["p"], opt.V["p"] = state["M"], state["V"]
        opt.t = t - 1
    else:
        raise ValueError(f"unknown optimizer {kind!r}")
    opt.step({"p": grad})


# ----------------------------------------------------------------------------------------------------------
# the layer update fused into the gradient product


def layer_update(x, delta, P, has_bias, kind, state, lr, **opt_args):
    """W <- W - lr * opt(x^T delta) (and b with sum_b delta when has_bias): P (D_in [+1], D_out) in place.
    Returns the gradient the optimiser saw, for inspection."""
    grad = (with_ones(x) if has_bias else x).T @ delta
    optimizer_step(kind, P, grad, state, lr, **opt_args)
    return grad


# ----------------------------------------------------------------------------------------------------------
# the SG module's regression update


def sg_update(u, labels, n_classes, dh_syn, dh_target, scale, P, kind, state, lr, **opt_args):
    """One regression step of the SG map P (Du + K + 1, D) towards dh_target, in place.

    The loss is minidni's SG loss (1/B) sum_b ||dh_syn_b - dh_target_b||^2 and the map's gradient is
    [u, onehot(y), 1]^T dpred with dpred = scale * 2 (dh_syn - dh_target) / B (see SyntheticGradient.update).
    Returns the loss.
    """
    loss, dpred = F.mse(dh_syn, dh_target)
    dpred *= np.float32(scale)
    grad = with_ones(one_hot_input(u, labels, n_classes)).T @ dpred
    optimizer_step(kind, P, grad, state, lr, **opt_args)
    return loss


# ----------------------------------------------------------------------------------------------------------
# batch norm (training mode) with the activation that follows it, and its backward


def bn_forward_train(z, gamma, beta, running_mean, running_var, act, momentum=0.1, eps=1e-5):
    """z (B, D) -> h = f(BN(z)) (B, D), and the cache (xhat (B, D), inv_std (D,)); mean and variance are the
    batch's, and the running statistics are updated in place exactly as minidni.core.layers.BatchNorm1d does."""
    y, (xhat, inv_std, _, mean, var) = F.batchnorm_forward_train(z, gamma, beta, eps)
    B = z.shape[0]
    running_mean *= 1 - momentum
    running_mean += momentum * mean
    running_var *= 1 - momentum
    running_var += (momentum * B / (B - 1)) * var
    return act_forward(y, act), xhat, inv_std


def bn_backward(dy, xhat, inv_std, gamma):
    """dy (B, D): the gradient at BN's output (f' already applied) -> dx (B, D), dgamma (D,), dbeta (D,)."""
    return F.batchnorm_backward(dy, (xhat, inv_std, gamma, None, None))


# ----------------------------------------------------------------------------------------------------------
# softmax cross-entropy, forward and backward in one pass


def softmax_xent(logits, labels):
    """logits (B, K), labels (B,) -> per-row losses -log softmax(logits_b)[y_b] (B,) and
    dlogits = (softmax - onehot) / B (B, K); the batch loss is the mean of the rows."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    rows = -(shifted[np.arange(logits.shape[0]), labels] - log_z)
    _, dlogits = F.softmax_cross_entropy(logits, labels)
    return rows.astype(logits.dtype), dlogits
