"""Convolution, max pooling, channel batch norm and Flatten: forwards against naive loops, backwards against float64
central differences, the layers inside Sequential, the paper's CNN stacks, and the errors for bad inputs."""

import copy

import numpy as np
import pytest

from minidni.core import functional as F
from minidni.core.backend import gpu_available
from minidni.dni.network import cnn_blocks
from minidni.core.gradcheck import assert_close, check_function, check_layer
from minidni.core.layers import BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from minidni.core.optim import SGD

f64 = np.float64


def naive_conv2d(x, W, b, stride, padding):
    """The definition, one number at a time: out[b, o, i, j] = sum_{c,u,v} x_pad[b, c, i*sh+u, j*sw+v] W[o, c, u, v]
    + b[o]."""
    (sh, sw), (ph, pw) = stride, padding
    B, C, H, Wd = x.shape
    C_out, _, KH, KW = W.shape
    x_pad = np.zeros((B, C, H + 2 * ph, Wd + 2 * pw))
    x_pad[:, :, ph : ph + H, pw : pw + Wd] = x
    H_out, W_out = (H + 2 * ph - KH) // sh + 1, (Wd + 2 * pw - KW) // sw + 1
    out = np.zeros((B, C_out, H_out, W_out))
    for n in range(B):
        for o in range(C_out):
            for i in range(H_out):
                for j in range(W_out):
                    patch = x_pad[n, :, i * sh : i * sh + KH, j * sw : j * sw + KW]
                    out[n, o, i, j] = np.sum(patch * W[o]) + (b[o] if b is not None else 0.0)
    return out


def naive_maxpool2d(x, kernel, stride, padding, dout=None):
    """Max of each window (padding -inf) and, given dout, the gradient routed to the first maximum of each window."""
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    B, C, H, W = x.shape
    x_pad = np.full((B, C, H + 2 * ph, W + 2 * pw), -np.inf)
    x_pad[:, :, ph : ph + H, pw : pw + W] = x
    H_out, W_out = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    out, dx_pad = np.zeros((B, C, H_out, W_out)), np.zeros_like(x_pad)
    for n in range(B):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    window = x_pad[n, c, i * sh : i * sh + KH, j * sw : j * sw + KW]
                    out[n, c, i, j] = window.max()
                    if dout is not None:
                        u, v = np.unravel_index(np.argmax(window), window.shape)  # argmax: the first maximum
                        dx_pad[n, c, i * sh + u, j * sw + v] += dout[n, c, i, j]
    return out, dx_pad[:, :, ph : ph + H, pw : pw + W]


# (kernel, stride, padding): square and non-square kernels, strides 1 to 3, some inputs left uncovered by the last
# window (stride 2 over an even width), padding wider than half the kernel. conv2d_backward computes dx two ways:
# as a convolution of dout for stride 1 with padding < kernel, by col2im otherwise; both are covered here.
CONV_CASES = [
    ((3, 3), (1, 1), (1, 1)),
    ((3, 3), (2, 2), (1, 1)),
    ((2, 3), (2, 1), (0, 2)),
    ((5, 5), (1, 1), (2, 2)),
    ((1, 1), (1, 1), (0, 0)),
    ((3, 2), (3, 2), (2, 1)),
    ((3, 2), (1, 1), (0, 1)),
    ((2, 2), (1, 1), (2, 3)),
]


@pytest.mark.parametrize("kernel,stride,padding", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_forward_matches_the_definition(kernel, stride, padding, bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    W = rng.standard_normal((4, 3) + kernel)
    b = rng.standard_normal(4) if bias else None
    out, _ = F.conv2d_forward(x, W, b, stride, padding)
    assert_close(out, naive_conv2d(x, W, b, stride, padding), rtol=1e-12, atol=1e-12)
    assert out.flags.c_contiguous


def test_conv2d_int_and_pair_settings_agree():
    rng = np.random.default_rng(1)
    x, W = rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    assert np.array_equal(F.conv2d_forward(x, W, None, 2, 1)[0], F.conv2d_forward(x, W, None, (2, 2), (1, 1))[0])


@pytest.mark.parametrize("kernel,stride,padding", CONV_CASES)
def test_conv2d_backward(kernel, stride, padding):
    """dx (col2im summing overlapping patches), dW and db against central differences."""
    rng = np.random.default_rng(3)
    layer = Conv2d(2, 3, kernel, stride=stride, padding=padding, rng=rng, dtype=f64)
    layer.params["b"][...] = rng.standard_normal(3)
    errors = check_layer(layer, rng.standard_normal((2, 2, 5, 6)))
    assert set(errors) == {"x", "W", "b"}


def test_conv2d_backward_without_bias_and_without_dx():
    rng = np.random.default_rng(4)
    layer = Conv2d(2, 3, 3, bias=False, rng=rng, dtype=f64)
    check_layer(layer, rng.standard_normal((2, 2, 4, 5)))
    x = rng.standard_normal((2, 2, 4, 5))
    y, cache = layer.forward(x)
    assert layer.backward(np.ones_like(y), cache, need_dx=False) is None
    assert layer.grads["W"].any()


# maxpool (kernel, stride, padding): non-overlapping, overlapping (the paper's 3/2/1), non-square, stride 1
POOL_CASES = [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 2), (1, 0)), ((2, 2), (1, 1), (1, 1))]


@pytest.mark.parametrize("kernel,stride,padding", POOL_CASES)
def test_maxpool2d_forward_and_routing_match_the_definition(kernel, stride, padding):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 6))
    out, cache = F.maxpool2d_forward(x, kernel, stride, padding)
    dout = rng.standard_normal(out.shape)
    expected_out, expected_dx = naive_maxpool2d(x, kernel, stride, padding, dout)
    assert_close(out, expected_out, rtol=0, atol=0)
    assert_close(F.maxpool2d_backward(dout, cache), expected_dx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding", POOL_CASES)
def test_maxpool2d_backward(kernel, stride, padding):
    """Against central differences: random inputs have no ties closer than eps, so max is differentiable there."""
    check_layer(MaxPool2d(kernel, stride, padding), np.random.default_rng(6).standard_normal((2, 2, 6, 5)))


def test_maxpool2d_ties_give_the_gradient_to_exactly_one_input():
    """A constant input ties every window: each output's gradient must go to one input (the first), not be copied
    to all of them, so the gradient's total is preserved."""
    x = np.zeros((1, 2, 5, 5))
    out, cache = F.maxpool2d_forward(x, 3, 2, 1)
    dout = np.random.default_rng(7).standard_normal(out.shape)
    dx = F.maxpool2d_backward(dout, cache)
    assert dx.sum() == pytest.approx(dout.sum(), rel=1e-12)
    assert_close(dx, naive_maxpool2d(x, (3, 3), (2, 2), (1, 1), dout)[1], rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(dx) == out[0].size  # here every window's first real input is a different one


def test_maxpool2d_defaults_stride_to_kernel():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    out, _ = F.maxpool2d_forward(x, 2)
    assert np.array_equal(out[0, 0], [[5.0, 7.0], [13.0, 15.0]])


def test_batchnorm2d_train_backward():
    rng = np.random.default_rng(8)
    bn = BatchNorm2d(3, dtype=f64)
    bn.params["gamma"][:] = rng.uniform(0.5, 1.5, 3)
    bn.params["beta"][:] = rng.standard_normal(3)
    check_layer(bn, rng.standard_normal((2, 3, 3, 4)) * 2 + 1)


def test_batchnorm2d_is_batchnorm1d_over_the_pixels_of_each_channel():
    """Moving channels last and treating every pixel as a row must give exactly BatchNorm1d: outputs, gradients,
    running statistics (unbiased over B*H*W values) and the eval-mode map."""
    rng = np.random.default_rng(9)
    x, dy = rng.standard_normal((3, 4, 5, 2)) * 3 + 1, rng.standard_normal((3, 4, 5, 2))
    gamma, beta = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    bn2, bn1 = BatchNorm2d(4, dtype=f64), BatchNorm1d(4, dtype=f64)
    for bn in (bn2, bn1):
        bn.params["gamma"][:], bn.params["beta"][:] = gamma, beta

    def rows(a):  # (B, C, H, W) -> (B*H*W, C)
        return a.transpose(0, 2, 3, 1).reshape(-1, 4)

    y2, cache2 = bn2.forward(x)
    y1, cache1 = bn1.forward(rows(x))
    assert_close(rows(y2), y1, rtol=1e-12, atol=1e-12, name="y")
    assert_close(rows(bn2.backward(dy, cache2)), bn1.backward(rows(dy), cache1), rtol=1e-10, atol=1e-12, name="dx")
    for k in ("gamma", "beta"):
        assert_close(bn2.grads[k], bn1.grads[k], rtol=1e-10, name=f"d{k}")
    for k in ("running_mean", "running_var"):
        assert_close(bn2.buffers[k], bn1.buffers[k], rtol=1e-12, name=k)
    assert_close(rows(bn2.forward(x, train=False)[0]), bn1.forward(rows(x), train=False)[0], rtol=1e-12, atol=1e-12)


def test_flatten():
    x = np.random.default_rng(10).standard_normal((2, 3, 2, 4))
    y, cache = Flatten().forward(x)
    assert y.shape == (2, 24) and np.array_equal(y[1], x[1].ravel())
    check_layer(Flatten(), x)


def test_conv_block_backward():
    """One hidden block of the paper's CNN and the output block, as one Sequential: every gradient at once."""
    rng = np.random.default_rng(11)
    block = Sequential(
        Conv2d(2, 3, 3, bias=False, rng=rng, dtype=f64),
        BatchNorm2d(3, dtype=f64),
        ReLU(),
        MaxPool2d(3, 2, 1),
        Flatten(),
        Linear(3 * 3 * 3, 2, rng=rng, dtype=f64),
    )
    errors = check_layer(block, rng.standard_normal((3, 2, 5, 5)))
    assert {"x", "0.W", "1.gamma", "1.beta", "5.W", "5.b"} <= set(errors)


def test_conv_layers_inside_sequential_with_flat_buffers():
    """set_optimizer moves the conv parameters into one flat buffer: backward must write the gradients into it
    (in place), update must move the weights, deepcopy must give an independent copy."""
    rng = np.random.default_rng(12)
    block = Sequential(Conv2d(1, 2, 3, rng=rng), BatchNorm2d(2), ReLU(), MaxPool2d(2), Flatten(), Linear(8, 2, rng=rng))
    block.set_optimizer(lambda p: SGD(p, lr=0.1, momentum=0.0))
    x = rng.standard_normal((4, 1, 4, 4)).astype(np.float32)
    y, cache = block.forward(x)
    block.backward(np.ones_like(y), cache)
    conv = block.layers[0]
    assert np.shares_memory(conv.grads["W"], block.flat_grads) and conv.grads["W"].any() and conv.grads["b"].any()
    clone = copy.deepcopy(block)
    W_before = conv.params["W"].copy()
    block.update()
    assert not np.array_equal(conv.params["W"], W_before)
    assert np.array_equal(clone.layers[0].params["W"], W_before)  # the copy did not move with the original
    assert np.shares_memory(clone.layers[0].params["W"], clone.optimizer.params["params"])
    names = set(block.state_arrays())
    assert {"0.W", "0.b", "1.gamma", "1.running_mean", "1.running_var", "5.W"} <= names
    assert (
        "BatchNorm2d(2)" in repr(block) and "Conv2d(1, 2, kernel=(3, 3)" in repr(block) and "MaxPool2d" in repr(block)
    )


def test_float32_stays_float32():
    rng = np.random.default_rng(13)
    block = Sequential(Conv2d(1, 4, 5, bias=False, rng=rng), BatchNorm2d(4), ReLU(), MaxPool2d(3, 2, 1))
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    y, cache = block.forward(x)
    dx = block.backward(np.ones_like(y), cache)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    assert all(g.dtype == np.float32 for layer in block.layers for g in layer.grads.values())


def test_conv2d_same_padding_and_he_init():
    conv = Conv2d(8, 16, 5, rng=np.random.default_rng(14), dtype=f64)
    assert conv.padding == (2, 2)
    assert F.conv2d_forward(np.zeros((1, 8, 7, 9)), conv.params["W"], None, 1, conv.padding)[0].shape == (1, 16, 7, 9)
    assert conv.params["W"].std() == pytest.approx(np.sqrt(2 / (8 * 25)), rel=0.05)  # fan_in = c_in * KH * KW
    assert Conv2d(2, 3, (3, 5)).padding == (1, 2)
    assert not Conv2d(2, 3, 3, init="zeros").params["W"].any()


@pytest.mark.parametrize("depth", [3, 4])
@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)])
def test_cnn_blocks_shapes(depth, in_shape):
    """Each hidden block halves the maps (3x3 pooling, stride 2, padding 1): 28 -> 14 -> 7 -> 4, 32 -> 16 -> 8 -> 4."""
    stacks = cnn_blocks(depth, in_shape=in_shape, channels=4, rng=np.random.default_rng(15))
    assert len(stacks) == depth
    h = np.random.default_rng(16).standard_normal((2,) + in_shape).astype(np.float32)
    size = in_shape[1]
    for stack in stacks[:-1]:
        h, _ = stack.forward(h)
        size = (size + 1) // 2
        assert h.shape == (2, 4, size, size)
    logits, _ = stacks[-1].forward(h)
    assert logits.shape == (2, 10)
    assert stacks[-1].layers[-1].d_in == 4 * size * size


def test_cnn_blocks_layers_and_errors():
    stacks = cnn_blocks(3)
    assert [type(layer).__name__ for layer in stacks[0].layers] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"]
    assert "b" not in stacks[0].layers[0].params and stacks[0].layers[0].params["W"].shape == (32, 1, 5, 5)
    assert "b" in cnn_blocks(2, batchnorm=False)[0].layers[0].params
    assert stacks[-1].layers[-1].d_in == 32 * 7 * 7
    with pytest.raises(ValueError, match="depth >= 2"):
        cnn_blocks(1)
    with pytest.raises(ValueError, match="pooled away by block 4"):  # 28 -> 14 -> 7 -> 3 -> 1 -> 0
        cnn_blocks(6, in_shape=(1, 28, 28), pool=(2, 2, 0))


def test_conv_reuses_its_patch_buffers_only_when_no_cache_holds_them():
    """Conv2d writes im2col's patch matrix into a buffer it keeps for the next step (no 100+ MB faulted in afresh),
    but only once no cache holds it: with two batches in flight (as under DNI) the first one's cache stays intact
    and its backward still gives its own gradient."""
    rng = np.random.default_rng(0)
    conv, fresh = Conv2d(2, 3, 3, rng=np.random.default_rng(1)), Conv2d(2, 3, 3, rng=np.random.default_rng(1))
    x1, x2 = rng.standard_normal((2, 4, 2, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    _, cache1 = conv.forward(x1)
    patches1 = cache1[0].copy()
    _, cache2 = conv.forward(x2)  # batch 1 still in flight
    assert not np.shares_memory(cache2[0], cache1[0])
    np.testing.assert_array_equal(cache1[0], patches1)
    np.testing.assert_array_equal(conv.backward(dy, cache1), fresh.backward(dy, fresh.forward(x1)[1]))
    address = cache2[0].ctypes.data
    del cache2  # nothing holds batch 2's patches any more: the next forward writes into them
    _, cache3 = conv.forward(x1)
    assert cache3[0].ctypes.data == address
    np.testing.assert_array_equal(cache3[0], patches1)
    del cache3
    _, evaluated = conv.forward(rng.standard_normal((9, 2, 6, 6)).astype(np.float32), train=False)
    assert evaluated[0].ctypes.data != address  # evaluation's batches get patches of their own, freed after
    assert conv.forward(x2)[1][0].ctypes.data == address  # and training keeps its buffer


def test_pooling_before_the_relu_is_the_same_function_and_gradient():
    """cnn_blocks pools before the ReLU (a quarter of the ReLU's work): a maximum commutes with the monotone ReLU, so
    the outputs and the input gradients are those of ReLU -> pool, bit for bit - with ties, windows whose maximum is
    zero or negative, and overlapping windows (3x3, stride 2) among them."""
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, size=(4, 3, 12, 12)).astype(np.float32)  # small integers: many ties and zeros
    x[0, 0] = -1.0  # a whole map with no positive number
    dy = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    pool, relu = MaxPool2d(3, 2, 1), ReLU()
    r, relu_cache = relu.forward(x)
    y_relu_first, pool_cache = pool.forward(r)
    dx_relu_first = relu.backward(pool.backward(dy, pool_cache), relu_cache)
    p, pool_cache = pool.forward(x)
    y_pool_first, relu_cache = relu.forward(p)
    dx_pool_first = pool.backward(relu.backward(dy, relu_cache), pool_cache)
    np.testing.assert_array_equal(y_pool_first, y_relu_first)
    np.testing.assert_array_equal(dx_pool_first, dx_relu_first)
    assert (dx_pool_first != 0).sum() > 10  # the gradient reached the inputs: the comparison is not of zeros


def test_bad_inputs_raise_clear_errors():
    x, W = np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"x must be \(B, C, H, W\), got shape \(2, 75\)"):
        F.conv2d_forward(x.reshape(2, 75), W)
    with pytest.raises(ValueError, match=r"W must be \(C_out, C_in, KH, KW\)"):
        F.conv2d_forward(x, W[0])
    with pytest.raises(ValueError, match="x has 2 channels but W expects C_in=3"):
        F.conv2d_forward(x[:, :2], W)
    with pytest.raises(ValueError, match=r"kernel 7x3 is larger than the padded input 5x5"):
        F.conv2d_forward(x, np.zeros((4, 3, 7, 3)))
    F.conv2d_forward(x, np.zeros((4, 3, 7, 3)), padding=1)  # fits once padded
    with pytest.raises(ValueError, match="stride must be positive"):
        F.conv2d_forward(x, W, stride=0)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        F.conv2d_forward(x, W, padding=-1)
    with pytest.raises(ValueError, match=r"b must be \(4,\)"):
        F.conv2d_forward(x, W, np.zeros(3))
    with pytest.raises(ValueError, match="an int or a pair of ints"):
        F.conv2d_forward(x, W, stride=(1, 1, 1))
    with pytest.raises(ValueError, match="stride must be positive"):
        F.maxpool2d_forward(x, 2, stride=(1, 0))
    with pytest.raises(ValueError, match="larger than the padded input"):
        F.maxpool2d_forward(x, 6)
    with pytest.raises(ValueError, match="must be smaller than the kernel"):
        F.maxpool2d_forward(x, 2, padding=2)
    with pytest.raises(ValueError, match=r"x must be \(B, C, H, W\)"):
        F.maxpool2d_forward(x[0], 2)
    with pytest.raises(ValueError, match="odd kernel and stride 1"):
        Conv2d(3, 4, 4)
    with pytest.raises(ValueError, match="odd kernel and stride 1"):
        Conv2d(3, 4, 3, stride=2)
    with pytest.raises(ValueError, match="positive channel counts"):
        Conv2d(0, 4, 3)
    with pytest.raises(ValueError, match="unknown init"):
        Conv2d(3, 4, 3, init="orthogonal")
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 3, H, W\)"):
        BatchNorm2d(3).forward(np.zeros((2, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        BatchNorm2d(3).forward(np.zeros((1, 3, 1, 1), np.float32))


@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a GPU")
def test_conv_maxpool_batchnorm2d_on_cupy_match_numpy():
    """The same functions on CuPy arrays give NumPy's numbers (float64, so only the summation order differs)."""
    import cupy

    rng = np.random.default_rng(17)
    x, W, b = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    g = cupy.asarray
    out, cache = F.conv2d_forward(x, W, b, (2, 1), (1, 1))
    out_gpu, cache_gpu = F.conv2d_forward(g(x), g(W), g(b), (2, 1), (1, 1))
    assert_close(out_gpu, out, rtol=1e-12, atol=1e-12, name="conv out")
    dout = rng.standard_normal(out.shape)
    for got, want in zip(F.conv2d_backward(g(dout), cache_gpu), F.conv2d_backward(dout, cache)):
        assert_close(got, want, rtol=1e-10, atol=1e-12, name="conv grads")
    out, cache = F.maxpool2d_forward(x, 3, 2, 1)
    out_gpu, cache_gpu = F.maxpool2d_forward(g(x), 3, 2, 1)
    assert_close(out_gpu, out, rtol=0, atol=0, name="pool out")
    dout = rng.standard_normal(out.shape)
    assert_close(F.maxpool2d_backward(g(dout), cache_gpu), F.maxpool2d_backward(dout, cache), rtol=1e-12, name="dx")
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    y, cache = F.batchnorm2d_forward_train(x, gamma, beta)
    y_gpu, cache_gpu = F.batchnorm2d_forward_train(g(x), g(gamma), g(beta))
    assert_close(y_gpu, y, rtol=1e-10, atol=1e-12, name="bn out")
    dy = rng.standard_normal(y.shape)
    for got, want in zip(F.batchnorm2d_backward(g(dy), cache_gpu), F.batchnorm2d_backward(dy, cache)):
        assert_close(got, want, rtol=1e-10, atol=1e-12, name="bn grads")


def test_conv2d_functional_gradients_with_preallocated_buffers():
    """conv2d_backward writes dW and db into the buffers it is given (a layer's gradients are views: never rebind)."""
    rng = np.random.default_rng(18)
    x, W, b = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((3, 2, 2, 3)), rng.standard_normal(3)
    R = rng.standard_normal(F.conv2d_forward(x, W, b, (2, 1), (1, 0))[0].shape)
    _, cache = F.conv2d_forward(x, W, b, (2, 1), (1, 0))
    dW, db = np.empty_like(W), np.empty_like(b)
    dx, dW_out, db_out = F.conv2d_backward(R, cache, dW=dW, db=db)
    assert dW_out is dW and db_out is db

    def loss():
        return float(np.sum(F.conv2d_forward(x, W, b, (2, 1), (1, 0))[0] * R))

    check_function(loss, {"x": x, "W": W, "b": b}, {"x": dx, "W": dW, "b": db})
