"""Every backward against float64 central differences, plus the layers' bookkeeping (batch-norm statistics)."""

import numpy as np
import pytest

from minidni.core import functional as F
from minidni.core.gradcheck import assert_close, check_function, check_layer
from minidni.core.layers import BatchNorm1d, Linear, ReLU, Sequential, Sigmoid, Tanh

f64 = np.float64


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((5, 4))  # (B, D_in), float64


@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward(x, bias):
    layer = Linear(4, 3, bias=bias, rng=np.random.default_rng(1), dtype=f64)
    errors = check_layer(layer, x)
    assert set(errors) == ({"x", "W", "b"} if bias else {"x", "W"})


@pytest.mark.parametrize("layer_cls", [ReLU, Tanh, Sigmoid])
def test_pointwise_backward(x, layer_cls):
    # keep inputs away from ReLU's kink, where the derivative is undefined
    x = x + 0.2 * np.sign(x)
    check_layer(layer_cls(), x)


def test_batchnorm_train_backward(x):
    bn = BatchNorm1d(4, dtype=f64)
    rng = np.random.default_rng(2)
    bn.params["gamma"][:] = rng.uniform(0.5, 1.5, 4)
    bn.params["beta"][:] = rng.standard_normal(4)
    check_layer(bn, x * 3 + 1)


def test_batchnorm_eval_backward_is_affine(x):
    """In eval mode batch norm is a fixed per-unit affine map; its forward matches that map exactly."""
    bn = BatchNorm1d(4, dtype=f64)
    bn.buffers["running_mean"][:] = [0.1, -0.2, 0.3, 0.0]
    bn.buffers["running_var"][:] = [1.0, 4.0, 0.25, 2.0]
    y, _ = bn.forward(x, train=False)
    expected = (x - bn.buffers["running_mean"]) / np.sqrt(bn.buffers["running_var"] + bn.eps)
    assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_batchnorm_running_statistics():
    rng = np.random.default_rng(3)
    bn = BatchNorm1d(3, momentum=0.1, dtype=f64)
    x1, x2 = rng.standard_normal((8, 3)) * 2 + 5, rng.standard_normal((8, 3)) - 1
    bn.forward(x1)
    bn.forward(x2)
    mean = 0.9 * (0.9 * 0 + 0.1 * x1.mean(0)) + 0.1 * x2.mean(0)
    var = 0.9 * (0.9 * 1 + 0.1 * x1.var(0, ddof=1)) + 0.1 * x2.var(0, ddof=1)
    assert_close(bn.buffers["running_mean"], mean, rtol=1e-12)
    assert_close(bn.buffers["running_var"], var, rtol=1e-12)
    # train mode output: zero mean, unit (biased) variance per unit
    y, _ = bn.forward(x1)
    assert_close(y.mean(0), np.zeros(3), atol=1e-12)
    assert_close(y.var(0), np.ones(3), rtol=1e-4)


def test_batchnorm_rejects_single_row():
    with pytest.raises(ValueError, match="at least 2 rows"):
        BatchNorm1d(3).forward(np.zeros((1, 3), np.float32))


def test_sequential_backward_through_a_block(x):
    rng = np.random.default_rng(4)
    block = Sequential(
        Linear(4, 6, bias=False, rng=rng, dtype=f64),
        BatchNorm1d(6, dtype=f64),
        Tanh(),
        Linear(6, 2, rng=rng, dtype=f64),
    )
    errors = check_layer(block, x)
    assert {"x", "0.W", "1.gamma", "1.beta", "3.W", "3.b"} <= set(errors)


def test_sequential_need_dx_false_skips_input_gradient(x):
    block = Sequential(Linear(4, 3, rng=np.random.default_rng(5), dtype=f64), ReLU())
    y, cache = block.forward(x)
    assert block.backward(np.ones_like(y), cache, need_dx=False) is None
    assert np.any(block.layers[0].grads["W"] != 0)


def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, 6)
    _, dlogits = F.softmax_cross_entropy(logits, labels)
    check_function(lambda: float(F.softmax_cross_entropy(logits, labels)[0]), {"logits": logits}, {"logits": dlogits})


def test_softmax_cross_entropy_value_and_stability():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    loss, d = F.softmax_cross_entropy(logits, np.array([0, 2]))
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert loss == pytest.approx(np.log(3) / 2, rel=1e-6)  # first row contributes log(1) = 0
    assert d.dtype == np.float32


def test_mse_gradient_and_convention():
    rng = np.random.default_rng(7)
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss, dpred = F.mse(pred, target)
    assert loss == pytest.approx(np.sum((pred - target) ** 2) / 4)  # summed over units, mean over batch
    check_function(lambda: F.mse(pred, target)[0], {"pred": pred}, {"pred": dpred})


def test_float32_stays_float32():
    """No silent float64 promotion in the float32 training path."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    block = Sequential(Linear(3, 5, bias=False, rng=rng), BatchNorm1d(5), ReLU(), Linear(5, 2, rng=rng), Sigmoid())
    y, cache = block.forward(x)
    dx = block.backward(np.ones_like(y), cache)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    assert all(g.dtype == np.float32 for layer in block.layers for g in layer.grads.values())


def test_linear_rejects_bad_sizes_and_init():
    with pytest.raises(ValueError, match="positive sizes"):
        Linear(0, 3)
    with pytest.raises(ValueError, match="unknown init"):
        Linear(2, 3, init="orthogonal")
