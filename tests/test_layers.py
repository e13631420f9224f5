"""Every backward against float64 central differences, plus the layers' bookkeeping (batch-norm statistics)."""

import numpy as np
import pytest

from minidni.core import functional as F
from minidni.core.gradcheck import assert_close, check_function, check_layer
from minidni.core.layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear, ReLU, Sequential, Sigmoid, Tanh
from minidni.core.optim import Adam

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


@pytest.mark.parametrize("Norm, shape", [(BatchNorm1d, (5, 4)), (BatchNorm2d, (3, 4, 2, 3))])
def test_batchnorm_eval_applies_gamma_and_beta_to_the_running_statistics(Norm, shape):
    """Evaluation mode is y = gamma (x - running_mean) / sqrt(running_var + eps) + beta, per unit (or channel),
    with gamma and beta away from 1 and 0 so that an eval forward that dropped either one fails here."""
    rng = np.random.default_rng(10)
    bn = Norm(4, dtype=f64)
    bn.params["gamma"][:] = gamma = rng.uniform(0.5, 2.0, 4) * rng.choice([-1, 1], 4)  # a negative gain too
    bn.params["beta"][:] = beta = rng.standard_normal(4)
    bn.buffers["running_mean"][:] = mean = rng.standard_normal(4)
    bn.buffers["running_var"][:] = var = rng.uniform(0.25, 4.0, 4)
    x = rng.standard_normal(shape) * 2 + 1
    unit = (1, 4) + (1,) * (len(shape) - 2)  # broadcasts a (4,) vector over the unit (or channel) axis
    expected = gamma.reshape(unit) * (x - mean.reshape(unit)) / np.sqrt(var.reshape(unit) + bn.eps) + beta.reshape(unit)
    y, cache = bn.forward(x, train=False)
    assert_close(y, expected, rtol=1e-12, atol=1e-12, name=f"{Norm.__name__} eval output")
    assert cache is None
    assert_close(bn.buffers["running_mean"], mean, rtol=0, atol=0, name="running mean (eval must not move it)")
    assert_close(bn.buffers["running_var"], var, rtol=0, atol=0, name="running var (eval must not move it)")


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


# -- a backward uses the weights of its own forward pass -------------------------------------------------------
# Under DNI the forward of batch t+1 can run before the backward of batch t, and the layer may update in between
# (an optimiser step changes the parameters in place). Batch t's backward must still differentiate the function
# batch t's forward computed. Each case: forward, backward, a real optimiser step, the forward of the next batch,
# then batch t's backward again from its cache: the gradients must not change, to the last bit.


def _bn_with_gain(Norm, d, rng):
    bn = Norm(d, dtype=f64)
    bn.params["gamma"][:] = rng.uniform(0.5, 1.5, d)  # gamma = 1 would hide a backward that reads a moved gamma
    bn.params["beta"][:] = rng.standard_normal(d)
    return bn


WEIGHTED = {  # name -> rng -> (layer, input)
    "Linear": lambda rng: (Linear(4, 3, rng=rng, dtype=f64), rng.standard_normal((5, 4))),
    "Linear(bias=False)": lambda rng: (Linear(4, 3, bias=False, rng=rng, dtype=f64), rng.standard_normal((5, 4))),
    "BatchNorm1d": lambda rng: (_bn_with_gain(BatchNorm1d, 4, rng), rng.standard_normal((5, 4))),
    "BatchNorm2d": lambda rng: (_bn_with_gain(BatchNorm2d, 3, rng), rng.standard_normal((2, 3, 4, 4))),
    "Conv2d": lambda rng: (Conv2d(2, 3, 3, rng=rng, dtype=f64), rng.standard_normal((2, 2, 5, 5))),
    # C_in = 1: the (KH*KW*C_in, C_out) weight matrix in the cache is a reshape of W that is a view, not a copy;
    # stride 2: the backward's col2im path instead of the stride-1 convolution
    "Conv2d(C_in=1, stride=2)": lambda rng: (
        Conv2d(1, 3, 3, stride=2, padding=1, rng=rng, dtype=f64),
        rng.standard_normal((2, 1, 5, 5)),
    ),
    "Conv2d(1x1)": lambda rng: (Conv2d(3, 2, 1, rng=rng, dtype=f64), rng.standard_normal((2, 3, 4, 4))),
}


@pytest.mark.parametrize("flat", [False, True], ids=["alone", "in a Sequential"])
@pytest.mark.parametrize("name", list(WEIGHTED))
def test_backward_after_an_update_uses_the_weights_of_its_forward(name, flat):
    """flat: the layer inside a Sequential, whose optimiser updates one flat buffer that the layer's parameters
    are views into (as every DNI block does); alone: the layer's own optimiser on its own arrays."""
    rng = np.random.default_rng(11)
    layer, x = WEIGHTED[name](rng)
    net = Sequential(layer) if flat else layer
    net.set_optimizer(lambda params: Adam(params, lr=0.1))
    y, cache = net.forward(x)  # batch t
    dy = rng.standard_normal(y.shape)
    dx_before = net.backward(dy, cache)
    grads_before = {k: g.copy() for k, g in layer.grads.items()}
    params_before = {k: p.copy() for k, p in layer.params.items()}

    net.update()  # a real step, in place
    for k, p in layer.params.items():
        assert not np.array_equal(p, params_before[k]), f"the step left {k} unchanged: the test would prove nothing"
    net.forward(x + 1)  # batch t+1 goes forward with the new parameters while batch t's cache is still held

    dx_after = net.backward(dy, cache)  # batch t's backward, late
    np.testing.assert_array_equal(dx_after, dx_before, err_msg=f"{name}: dx after the update")
    for k, g in grads_before.items():
        np.testing.assert_array_equal(layer.grads[k], g, err_msg=f"{name}: d{k} after the update")
