"""The math: every forward and backward of minidni as a plain function with an explicit cache.

    out, cache = op_forward(inputs...)
    dinputs... = op_backward(dout, cache)

Nothing here owns state. Layer objects (`minidni.core.layers`) keep parameters and gradient buffers and call these
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
    C_in, C_out, C      channels of a feature map (images are NCHW: (B, C, H, W))
    H, W    height and width of a feature map (in shape comments; a layer's weight array is also called W)
    KH, KW  kernel height and width
    H_out, W_out        height and width after a convolution or a pooling

Conventions: losses are means over the batch (so gradients carry a 1/B factor); `out=` buffers, where a
function accepts them, are written in place so that training loops can reuse memory.
"""

import numbers

from minidni.core.backend import array_module, to_numpy


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
    sum_dy_xhat = xp.einsum("bd,bd->d", dy, xhat)  # (D,); no out=: CuPy's einsum takes only dtype and optimize
    if dgamma is None:
        dgamma = sum_dy_xhat
    else:
        dgamma[...] = sum_dy_xhat  # a view into the layer's flat gradient buffer: written in place
    dx = xhat * (dgamma * (1 / B))  # (B, D)
    dx += dbeta * (1 / B)
    xp.subtract(dy, dx, out=dx)
    dx *= gamma * inv_std
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------------------------------------
# sliding-window geometry, shared by convolution and pooling: a KH x KW kernel moves in steps of the stride over
# the input with `padding` extra rows and columns on each side


def as_pair(value, name):
    """An int or a pair of ints -> (height, width): one setting for both axes, or one each."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def output_size(size, kernel, stride, padding):
    """How many positions a kernel takes along one axis: floor((size + 2 padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def _check_window(op, x, kernel, stride, padding):
    """Clear errors for an input that is not NCHW, or a kernel that cannot slide over it."""
    if x.ndim != 4:
        raise ValueError(f"{op}: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    if KH < 1 or KW < 1:
        raise ValueError(f"{op}: kernel must be positive, got {kernel}")
    if sh < 1 or sw < 1:
        raise ValueError(f"{op}: stride must be positive, got {stride}")
    if ph < 0 or pw < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {padding}")
    H_pad, W_pad = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
    if KH > H_pad or KW > W_pad:
        raise ValueError(
            f"{op}: kernel {KH}x{KW} is larger than the padded input {H_pad}x{W_pad} "
            f"(input {x.shape[2]}x{x.shape[3]}, padding {padding})"
        )


def _offset_view(a, u, v, stride, out_size):
    """a[:, :, u + i*sh, v + j*sw] for every output position (i, j): element (u, v) of every window at once.
    a: (B, C, H_pad, W_pad) -> (B, C, H_out, W_out) view."""
    (sh, sw), (H_out, W_out) = stride, out_size
    return a[:, :, u : u + sh * (H_out - 1) + 1 : sh, v : v + sw * (W_out - 1) + 1 : sw]


# ----------------------------------------------------------------------------------------------------------
# convolution (NCHW): out[b, o, i, j] = sum_{c,u,v} x_pad[b, c, i*sh + u, j*sw + v] W[o, c, u, v] + b[o]
#
# im2col: copy each output pixel's receptive field into one row of a patch matrix cols: (B*H_out*W_out, KH*KW*C_in).
# The convolution is then ONE matrix product with the weights as a (KH*KW*C_in, C_out) matrix: a Linear layer
# applied at every output position, with every weight shared across positions. The patches are copied
# channels-last, in (u, v, c) order, so that each row is built from runs of C_in contiguous numbers instead of
# runs of KW: about 2x faster than the (c, u, v) order for 5x5 kernels.


def im2col(x, kernel, stride, padding, workspace=None):
    """x: (B, C, H, W) -> cols: (B*H_out*W_out, KH*KW*C), row (b, i, j) the receptive field of output (i, j) of
    image b in (u, v, c) order. kernel, stride and padding are (height, width) pairs; padding is zeros.
    workspace(shape, dtype), if given, supplies the array to write cols into: a layer's reused buffer, as writing
    into memory already in use is ~1.5x faster than faulting in a fresh 100+ MB."""
    xp = array_module(x)
    B, C, H_in, W_in = x.shape
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    H_out, W_out = output_size(H_in, KH, sh, ph), output_size(W_in, KW, sw, pw)
    x_pad = xp.zeros((B, H_in + 2 * ph, W_in + 2 * pw, C), dtype=x.dtype)  # (B, H_pad, W_pad, C) channels-last
    x_pad[:, ph : ph + H_in, pw : pw + W_in, :] = x.transpose(0, 2, 3, 1)  # moved and padded in one copy
    shape, dtype = (B * H_out * W_out, KH * KW * C), x.dtype
    cols = xp.empty(shape, dtype) if workspace is None else workspace(shape, dtype)
    # every window as a view of x_pad (sliding_window_view: NumPy >= 1.20, and the CuPy 14 of the gpu extra)
    view = xp.lib.stride_tricks.sliding_window_view(x_pad, (KH, KW), axis=(1, 2))[:, ::sh, ::sw]  # (B,H_o,W_o,C,KH,KW)
    cols.reshape(B, H_out, W_out, KH, KW, C)[...] = view.transpose(0, 1, 2, 4, 5, 3)  # the one copy, (u, v, c) order
    return cols


def col2im(dcols_T, x_shape, kernel, stride, padding):
    """The adjoint of im2col, given the TRANSPOSED patch-matrix gradient dcols_T: (KH*KW*C, B*H_out*W_out) -> dx:
    (B, C, H, W). (Transposed, so that each kernel offset's numbers form one contiguous block: the adds below then
    run about 1.7x faster than on strided columns of dcols.)

    A pixel that lies in several receptive fields was copied into several rows, so it receives the sum of their
    gradients. One strided add per kernel offset (u, v) does it: within one offset no two output positions read
    the same pixel, so an add never collides with itself, and the KH*KW adds accumulate the overlaps.
    """
    xp = array_module(dcols_T)
    B, C, H_in, W_in = x_shape
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    H_out, W_out = output_size(H_in, KH, sh, ph), output_size(W_in, KW, sw, pw)
    dcols_T = dcols_T.reshape(KH, KW, C, B, H_out, W_out)
    dx_pad = xp.zeros((C, B, H_in + 2 * ph, W_in + 2 * pw), dtype=dcols_T.dtype)  # (C, B, H_pad, W_pad)
    for u in range(KH):
        for v in range(KW):
            _offset_view(dx_pad, u, v, stride, (H_out, W_out))[...] += dcols_T[u, v]  # (C, B, H_out, W_out)
    return xp.ascontiguousarray(dx_pad[:, :, ph : ph + H_in, pw : pw + W_in].transpose(1, 0, 2, 3))  # (B, C, H, W)


def conv2d_forward(x, W, b=None, stride=1, padding=0, workspace=None):
    """x: (B, C_in, H, W), W: (C_out, C_in, KH, KW), b: (C_out,) or None -> out: (B, C_out, H_out, W_out).

    stride and padding: an int, or a (height, width) pair; padding adds that many rows/columns of zeros per side.
    workspace: im2col's, for the patch matrix that the cache then holds.
    """
    stride, padding = as_pair(stride, "stride"), as_pair(padding, "padding")
    if W.ndim != 4:
        raise ValueError(f"conv2d: W must be (C_out, C_in, KH, KW), got shape {tuple(W.shape)}")
    C_out, C_in, KH, KW = W.shape
    _check_window("conv2d", x, (KH, KW), stride, padding)
    if x.shape[1] != C_in:
        raise ValueError(f"conv2d: x has {x.shape[1]} channels but W expects C_in={C_in} (W: {tuple(W.shape)})")
    if b is not None and tuple(b.shape) != (C_out,):
        raise ValueError(f"conv2d: b must be ({C_out},), got shape {tuple(b.shape)}")
    B, _, H_in, W_in = x.shape
    H_out, W_out = output_size(H_in, KH, stride[0], padding[0]), output_size(W_in, KW, stride[1], padding[1])
    cols = im2col(x, (KH, KW), stride, padding, workspace)  # (B*H_out*W_out, KH*KW*C_in)
    W_mat = W.transpose(2, 3, 1, 0).reshape(KH * KW * C_in, C_out)  # (KH*KW*C_in, C_out), rows in (u, v, c) order
    out = matmul(cols, W_mat)  # (B*H_out*W_out, C_out)
    if b is not None:
        out += b
    out = out.reshape(B, H_out, W_out, C_out).transpose(0, 3, 1, 2)  # (B, C_out, H_out, W_out), a view
    return array_module(x).ascontiguousarray(out), (cols, W_mat, x.shape, (KH, KW), stride, padding)


def conv2d_backward(dout, cache, dW=None, db=None, need_dx=True, need_db=True, workspace=None):
    """dout: (B, C_out, H_out, W_out) -> (dx (B, C_in, H, W) or None, dW (C_out, C_in, KH, KW), db (C_out,) or None).

    The forward was out_mat = cols W_mat, so dW_mat = cols^T dout_mat and dcols = dout_mat W_mat^T, which col2im
    sums back onto the pixels the patches were copied from (for stride 1 the same dx comes faster as a convolution
    of dout, below). dW and db, if given, are written in place (a layer's gradients are views into one flat
    buffer); need_dx and need_db as in linear_backward; workspace: im2col's, for that convolution of dout.
    """
    cols, W_mat, x_shape, (KH, KW), stride, padding = cache
    xp = array_module(dout)
    B, C_out, H_out, W_out = dout.shape
    C_in = x_shape[1]
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(B * H_out * W_out, C_out)  # (B*H_out*W_out, C_out), like cols
    dW_mat = matmul(cols.T, dout_mat)  # (KH*KW*C_in, C_out); cols^T as a transposed view: no copy
    if dW is None:
        dW = xp.empty((C_out, C_in, KH, KW), dtype=dW_mat.dtype)
    dW[...] = dW_mat.reshape(KH, KW, C_in, C_out).transpose(3, 2, 0, 1)  # back to (C_out, C_in, KH, KW)
    # db: sum over positions first (a contiguous, pairwise sum), then over the batch
    db = xp.sum(dout.reshape(B, C_out, H_out * W_out).sum(axis=2), axis=0, out=db) if need_db else None  # (C_out,)
    dx = None
    if need_dx and stride == (1, 1) and padding[0] < KH and padding[1] < KW:
        # with stride 1, dx is itself a convolution of dout, padded by K-1-p, with the kernel flipped in both axes
        # and its channel axes swapped: dx[c, i, j] = sum_{o,u,v} dout_pad[o, i+u, j+v] W[o, c, KH-1-u, KW-1-v].
        # As a forward pass that is one im2col copy and a product with a small output: ~1.5x faster than col2im.
        W_flip = W_mat.reshape(KH, KW, C_in, C_out)[::-1, ::-1].transpose(2, 3, 0, 1)  # (C_in, C_out, KH, KW)
        dx, _ = conv2d_forward(dout, W_flip, None, 1, (KH - 1 - padding[0], KW - 1 - padding[1]), workspace)
    elif need_dx:
        dcols_T = matmul(W_mat, dout_mat.T)  # (KH*KW*C_in, B*H_out*W_out): dcols = dout_mat W_mat^T, transposed
        dx = col2im(dcols_T, x_shape, (KH, KW), stride, padding)  # (B, C_in, H, W)
    return dx, dW, db


# ----------------------------------------------------------------------------------------------------------
# max pooling (NCHW): out[b, c, i, j] = max_{u,v} x_pad[b, c, i*sh + u, j*sw + v], the padding -inf
#
# The windows are swept one kernel offset (u, v) at a time: the strided view x_pad[:, :, u::sh, v::sw] holds
# element (u, v) of every window, so KH*KW vectorised passes cover any kernel, stride and overlap.


def maxpool2d_forward(x, kernel, stride=None, padding=0):
    """x: (B, C, H, W) -> out: (B, C, H_out, W_out); stride defaults to the kernel (windows that do not overlap).

    The cache holds which offset k = u*KW + v won each window (not x). On a tie the first offset in row-major order
    wins, so exactly one input receives each output's gradient.
    """
    kernel = as_pair(kernel, "kernel")
    stride = kernel if stride is None else as_pair(stride, "stride")
    padding = as_pair(padding, "padding")
    _check_window("maxpool2d", x, kernel, stride, padding)
    (KH, KW), (ph, pw) = kernel, padding
    if ph >= KH or pw >= KW:  # then a corner window would hold padding only: no input to take the maximum of
        raise ValueError(f"maxpool2d: padding {padding} must be smaller than the kernel {kernel}")
    xp = array_module(x)
    B, C, H_in, W_in = x.shape
    size = (output_size(H_in, KH, stride[0], ph), output_size(W_in, KW, stride[1], pw))  # (H_out, W_out)
    x_pad = x
    if ph or pw:
        x_pad = xp.full((B, C, H_in + 2 * ph, W_in + 2 * pw), -xp.inf, dtype=x.dtype)  # (B, C, H_pad, W_pad)
        x_pad[:, :, ph : ph + H_in, pw : pw + W_in] = x
    out = _offset_view(x_pad, 0, 0, stride, size).copy()  # (B, C, H_out, W_out), the running maximum
    argmax = xp.zeros(out.shape, dtype=xp.uint8 if KH * KW <= 256 else xp.int32)  # (B, C, H_out, W_out)
    for k in range(1, KH * KW):
        u, v = divmod(k, KW)
        window = xp.ascontiguousarray(_offset_view(x_pad, u, v, stride, size))  # one copy: the 3 passes run faster
        better = window > out  # strict: a tie keeps the earlier offset
        xp.maximum(out, window, out=out)
        # argmax = where(better, k, argmax) - as a maximum, since k exceeds every earlier offset (10x faster)
        xp.maximum(argmax, better * argmax.dtype.type(k), out=argmax)
    return out, (argmax, x.shape, kernel, stride, padding)


def maxpool2d_backward(dout, cache):
    """dout: (B, C, H_out, W_out) -> dx: (B, C, H, W). Each output's gradient goes to the input that won its window,
    one that won several overlapping windows gets the sum: a scatter-add, one bincount over the winners' flat indices
    in x (summed in float64; alone ~3x faster than a masked strided add per kernel offset, 2% of a CNN 3 step)."""
    argmax, (B, C, H_in, W_in), (KH, KW), (sh, sw), (ph, pw) = cache
    xp = array_module(dout)
    H_out, W_out = dout.shape[2:]
    k = argmax.astype(xp.int64)  # (B, C, H_out, W_out): the winner's offset k = u*KW + v in its window
    corner = (xp.arange(H_out) * sh - ph)[:, None] * W_in + (xp.arange(W_out) * sw - pw)  # (H_out, W_out) in x
    index = (xp.arange(B * C) * (H_in * W_in)).reshape(B, C, 1, 1) + corner + k // KW * W_in + k % KW  # flat in x
    dx = xp.bincount(index.ravel(), weights=dout.ravel(), minlength=B * C * H_in * W_in)
    return dx.astype(dout.dtype).reshape(B, C, H_in, W_in)


# ----------------------------------------------------------------------------------------------------------
# batch normalisation over channels: (B, C, H, W) maps, one mean and variance per channel over its B*H*W values
#
# The same maths as batchnorm_* above with N = B*H*W values per channel in place of B rows. The maps are viewed
# as (B, C, S) with S = H*W positions, so nothing is transposed: sums run over axes 0 and 2.


def batchnorm2d_forward_train(x, gamma, beta, eps=1e-5):
    """x: (B, C, H, W) -> y (B, C, H, W) and a cache (xhat, inv_std, gamma, mean, var), as batchnorm_forward_train."""
    xp = array_module(x)
    B, C = x.shape[:2]
    x3 = x.reshape(B, C, -1)  # (B, C, S)
    N = x3.shape[0] * x3.shape[2]
    mean = x3.sum(axis=2).sum(axis=0) * (1 / N)  # (C,); over positions first: a contiguous, pairwise sum
    xhat = x3 - mean[:, None]  # (B, C, S), centred for now
    var = xp.einsum("bcs,bcs->bc", xhat, xhat).sum(axis=0) * (1 / N)  # (C,) biased variance
    inv_std = 1 / xp.sqrt(var + eps)  # (C,)
    xhat *= inv_std[:, None]  # (B, C, S) normalised
    y = xhat * gamma[:, None]
    y += beta[:, None]
    return y.reshape(x.shape), (xhat, inv_std, gamma, mean, var)


def batchnorm2d_forward_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """x: (B, C, H, W) normalised with fixed running statistics: a per-channel affine map."""
    xp = array_module(x)
    scale = (gamma / xp.sqrt(running_var + eps))[:, None, None]  # (C, 1, 1)
    y = x - running_mean[:, None, None]
    y *= scale
    y += beta[:, None, None]
    return y


def batchnorm2d_backward(dy, cache, dgamma=None, dbeta=None):
    """dy: (B, C, H, W) -> (dx (B, C, H, W), dgamma (C,), dbeta (C,)); batchnorm_backward's formula with N = B*H*W."""
    xhat, inv_std, gamma, _, _ = cache  # xhat: (B, C, S)
    xp = array_module(dy)
    dy3 = dy.reshape(xhat.shape)  # (B, C, S)
    N = xhat.shape[0] * xhat.shape[2]
    dbeta = xp.sum(dy3.sum(axis=2), axis=0, out=dbeta)  # (C,)
    dgamma = xp.sum(xp.einsum("bcs,bcs->bc", dy3, xhat), axis=0, out=dgamma)  # (C,)
    dx = xhat * (dgamma * (1 / N))[:, None]  # (B, C, S)
    dx += (dbeta * (1 / N))[:, None]
    xp.subtract(dy3, dx, out=dx)
    dx *= (gamma * inv_std)[:, None]
    return dx.reshape(dy.shape), dgamma, dbeta


# ----------------------------------------------------------------------------------------------------------
# losses: batch means, each returning the loss value and the gradient with respect to its input


def check_labels(labels, n_classes):
    """labels in [0, n_classes), or ValueError: the losses below index with them, where a label of -1 would pick
    class K-1 silently. For device labels this is one read back to the host: check host labels before upload."""
    if labels.size == 0:
        return
    lo, hi = (int(v) for v in to_numpy(array_module(labels).stack((labels.min(), labels.max()))))
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"labels must be in [0, {n_classes}), got values in [{lo}, {hi}]")


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
    p[rows, labels] -= 1  # cupy: rows = arange(B) names every (row, label) pair once: no repeated positions
    p /= B
    return loss, p


def softmax_xent_sum(logits, targets):
    """A sequence loss: logits (T, B, K), targets (T, B) -> (loss, dlogits (T, B, K)), where
    loss = sum over the T steps of the batch-mean negative log-likelihood (nats), so that a step's gradient does
    not shrink with the length of the window it sits in: dlogits = (softmax - onehot) / B."""
    Tn, B, K = logits.shape
    loss, dlogits = softmax_cross_entropy(logits.reshape(Tn * B, K), targets.reshape(Tn * B))
    return float(loss) * Tn, dlogits.reshape(Tn, B, K) * Tn  # the mean over T*B rows, times T


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
