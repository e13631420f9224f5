"""The math: every forward and backward of minidni as a plain function with an explicit cache.

    out, cache = op_forward(inputs...)
    dinputs... = op_backward(dout, cache)

Nothing here owns state. Layer objects (`minidni.layers`) keep parameters and gradient buffers and call these
functions; the trainer keeps the caches. That split matters for DNI: the forward of batch t+1 may run before
the gradient of batch t arrives, so "the last input a layer saw" is not a safe thing to remember - a cache is a
value held by whoever will need it.

These functions are also the reference that the CUDA kernels (kernels/*.cu) are checked against. They work on
NumPy or CuPy arrays alike (`array_module` picks the library from the input).

What this module deliberately is not: an autograd. Each backward is written by hand next to its forward.

Shape glossary
    B       batch size
    D_in    features into a layer
    D_out   features out of a layer (units)
    D       features of a layer whose input and output widths match (activations, batch norm)
    K       number of classes

Conventions: losses are means over the batch (so gradients carry a 1/B factor); `out=` buffers, where a
function accepts them, are written in place so that training loops can reuse memory.
"""

from .backend import array_module


# ----------------------------------------------------------------------------------------------------------
# matrix product: the one place every layer multiplies matrices (benchmarks hook it to time the products alone)


def matmul(a, b, out=None):
    """a @ b, optionally into a preallocated `out`. Transposed views (x.T) are passed to BLAS without copies."""
    return array_module(a).matmul(a, b, out=out)


# ----------------------------------------------------------------------------------------------------------
# linear: z = x W + b


def linear_forward(x, W, b=None):
    """x: (B, D_in), W: (D_in, D_out), b: (D_out,) or None -> z: (B, D_out)."""
    z = matmul(x, W)  # (B, D_out)
    if b is not None:
        z += b
    return z, (x, W)


def linear_backward(dz, cache, dW=None, db=None, need_dx=True, need_db=True):
    """dz: (B, D_out) -> (dx (B, D_in) or None, dW (D_in, D_out), db (D_out,) or None).

    dW and db may be preallocated buffers. need_dx=False skips the product dz W^T when nothing below needs it
    (the first layer of a network, or the input of a synthetic-gradient module whose input is held fixed);
    need_db=False skips db for a layer without bias.
    """
    x, W = cache
    xp = array_module(dz)
    dW = matmul(x.T, dz, out=dW)  # (D_in, D_out)
    db = xp.sum(dz, axis=0, out=db) if need_db else None  # (D_out,)
    dx = matmul(dz, W.T) if need_dx else None  # (B, D_in)
    return dx, dW, db


# ----------------------------------------------------------------------------------------------------------
# pointwise nonlinearities: the cache is the output, because each derivative is cheapest written in terms of it


def relu_forward(x):
    """x: (B, D) -> y = max(x, 0): (B, D)."""
    y = array_module(x).maximum(x, x.dtype.type(0))  # a typed zero keeps float32 arrays float32
    return y, y


def relu_backward(dy, y):
    """dy: (B, D) -> dx = dy * [y > 0]."""
    return dy * (y > 0)  # multiplying by the boolean mask is ~10x faster than np.where on random signs


def tanh_forward(x):
    y = array_module(x).tanh(x)
    return y, y


def tanh_backward(dy, y):
    """d tanh(x)/dx = 1 - tanh(x)^2 = 1 - y^2."""
    return dy * (1 - y * y)


def sigmoid_forward(x):
    # 1 / (1 + e^-x) written with tanh so that large |x| cannot overflow the exponential
    xp = array_module(x)
    y = xp.tanh(x * 0.5)
    y += 1
    y *= 0.5
    return y, y


def sigmoid_backward(dy, y):
    """d sigma(x)/dx = sigma(x) (1 - sigma(x)) = y (1 - y)."""
    return dy * y * (1 - y)


# ----------------------------------------------------------------------------------------------------------
# batch normalisation over the batch axis: y = gamma * (x - mean) / sqrt(var + eps) + beta


def batchnorm_forward_train(x, gamma, beta, eps=1e-5):
    """x: (B, D) normalised with the batch's own statistics.

    Returns y (B, D) and a cache; the cache also carries the batch mean and (biased) variance so that the
    layer object can update its running statistics.
    """
    xp = array_module(x)
    B = x.shape[0]
    mean = x.sum(axis=0) * (1 / B)  # (D,)
    xhat = x - mean  # (B, D), centred for now
    var = xp.einsum("bd,bd->d", xhat, xhat) * (1 / B)  # (D,) biased variance; einsum: no (B, D) temporary
    inv_std = 1 / xp.sqrt(var + eps)  # (D,)
    xhat *= inv_std  # (B, D) normalised
    y = xhat * gamma
    y += beta
    return y, (xhat, inv_std, gamma, mean, var)


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """x: (B, D) normalised with fixed running statistics: a per-unit affine map, no cache needed."""
    xp = array_module(x)
    scale = gamma / xp.sqrt(running_var + eps)  # (D,)
    y = x - running_mean
    y *= scale
    y += beta
    return y


def batchnorm_backward(dy, cache, dgamma=None, dbeta=None):
    """dy: (B, D) -> (dx (B, D), dgamma (D,), dbeta (D,)).

    With xhat = (x - mean) * inv_std and both mean and var depending on every row of x:
        dx = gamma * inv_std * (dy - (sum_b dy + xhat * sum_b(dy * xhat)) / B)
           = gamma * inv_std * (dy - (dbeta + xhat * dgamma) / B)
    """
    xhat, inv_std, gamma, _, _ = cache
    xp = array_module(dy)
    B = dy.shape[0]
    dbeta = xp.sum(dy, axis=0, out=dbeta)  # (D,)
    dgamma = xp.einsum("bd,bd->d", dy, xhat, out=dgamma)  # (D,)
    dx = xhat * (dgamma * (1 / B))  # (B, D)
    dx += dbeta * (1 / B)
    xp.subtract(dy, dx, out=dx)
    dx *= gamma * inv_std
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------------------------------------
# losses: batch means, each returning the loss value and the gradient with respect to its input


def softmax_cross_entropy(logits, labels):
    """logits: (B, K), labels: (B,) integer classes -> (loss, dlogits (B, K)).

    loss = -(1/B) sum_b log softmax(logits_b)[labels_b], computed with log-sum-exp so that no exponential
    overflows; dlogits = (softmax(logits) - onehot(labels)) / B.
    """
    xp = array_module(logits)
    B = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)  # (B, K), max 0 per row: exp cannot overflow
    p = xp.exp(shifted)
    sumexp = p.sum(axis=1, keepdims=True)  # (B, 1)
    rows = xp.arange(B)
    log_likelihood = shifted[rows, labels] - xp.log(sumexp[:, 0])  # (B,)
    loss = -log_likelihood.mean()
    p /= sumexp  # softmax
    p[rows, labels] -= 1
    p /= B
    return loss, p


def mse(pred, target):
    """Squared error summed over units, averaged over the batch: (1/B) sum_b ||pred_b - target_b||^2.

    pred, target: (B, D) -> (loss, dpred (B, D)) with dpred = 2 (pred - target) / B.
    This is the synthetic-gradient loss convention; learning rates in minidni are tuned against it.
    """
    B = pred.shape[0]
    diff = pred - target
    loss = float(array_module(diff).vdot(diff.ravel(), diff.ravel())) / B  # one pass, no temporary
    diff *= 2.0 / B
    return loss, diff
