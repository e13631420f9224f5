"""Synthetic-gradient modules: zero start, conditioning, regression step, gradients."""

import numpy as np
import pytest

from minidni.core.gradcheck import assert_close, check_function
from minidni.core.optim import SGD
from minidni.dni.synthetic import SyntheticGradient, make_synthetic_gradient, one_hot

f64 = np.float64


@pytest.mark.parametrize("kind,n_classes", [("linear", None), ("mlp", None), ("linear", 4), ("mlp", 4)])
def test_fresh_module_predicts_exactly_zero(kind, n_classes):
    """Zero weights AND zero bias in the output layer: the first synthetic gradients are exactly 0."""
    sg = make_synthetic_gradient(kind, 6, n_classes=n_classes, hidden_width=8, rng=np.random.default_rng(0))
    out = sg.net.layers[-1]
    assert not out.params["W"].any() and not out.params["b"].any()
    h = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    dh_syn, _ = sg.predict(h, np.arange(5) % 4)
    assert dh_syn.shape == (5, 6) and not dh_syn.any()


def test_conditioned_linear_module_is_one_linear_map_on_h_and_onehot():
    rng = np.random.default_rng(2)
    sg = SyntheticGradient(3, n_classes=4, dtype=f64)
    lin = sg.net.layers[0]
    lin.params["W"][...] = rng.standard_normal((7, 3))
    lin.params["b"][...] = rng.standard_normal(3)
    h, y = rng.standard_normal((5, 3)), np.array([0, 3, 1, 1, 2])
    dh_syn, _ = sg.predict(h, y)
    W = lin.params["W"]
    expected = h @ W[:3] + W[3:][y] + lin.params["b"]  # [h, onehot(y)] A + c == h A_h + A_y[y] + c
    assert_close(dh_syn, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="needs the labels"):
        sg.predict(h)


def test_one_hot():
    assert np.array_equal(one_hot(np.array([2, 0]), 3), np.array([[0, 0, 1], [1, 0, 0]], np.float32))


@pytest.mark.parametrize("hidden,n_classes", [((), None), ((5,), 3)])
def test_sg_loss_gradients_match_central_differences(hidden, n_classes):
    """The regression step's parameter gradients are those of L_sg = (1/B) sum_b ||M(h_b) - target_b||^2."""
    rng = np.random.default_rng(3)
    sg = SyntheticGradient(4, hidden=hidden, n_classes=n_classes, rng=rng, dtype=f64)
    for layer in sg.net.layers:  # move off the zero start so every gradient is non-trivial
        for p in layer.params.values():
            p[...] = rng.standard_normal(p.shape) * 0.5 + (1.0 if p.ndim == 1 and "gamma" in str(layer) else 0)
    h, target = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    y = rng.integers(0, 3, 6)

    def sg_loss():
        pred, _ = sg.predict(h, y if n_classes else None)
        return float(np.sum((pred - target) ** 2) / 6)

    pred, cache = sg.predict(h, y if n_classes else None)
    sg.net.set_optimizer(lambda p: SGD(p, lr=1e-300, momentum=0.0))  # step of ~0: we only want the grads
    sg.update(pred, cache, target)
    params, analytic = {}, {}
    for i, layer in enumerate(sg.net.layers):
        for k in layer.params:
            params[f"{i}.{k}"], analytic[f"{i}.{k}"] = layer.params[k], layer.grads[k].copy()
    check_function(sg_loss, params, analytic)


def test_update_regresses_towards_the_target_and_leaves_h_alone():
    rng = np.random.default_rng(4)
    sg = SyntheticGradient(3, dtype=f64)
    sg.set_optimizer(lambda p: SGD(p, lr=0.05, momentum=0.0))
    h = rng.standard_normal((32, 3))
    target = h @ rng.standard_normal((3, 3)) + 0.3  # a gradient field a linear module can represent
    h_before = h.copy()
    losses = []
    for _ in range(200):
        pred, cache = sg.predict(h)
        losses.append(sg.update(pred, cache, target))
    assert np.array_equal(h, h_before)
    assert losses[-1] < 0.01 * losses[0]


def test_bad_kind():
    with pytest.raises(ValueError, match="unknown synthetic-gradient module"):
        make_synthetic_gradient("rnn", 4)
    with pytest.raises(ValueError, match="at least one hidden layer"):
        make_synthetic_gradient("mlp", 4, hidden_layers=0)
    with pytest.raises(ValueError, match="hidden_layers >= 0"):
        make_synthetic_gradient("conv", 4, hidden_layers=-1)
    with pytest.raises(ValueError, match="unknown synthetic-gradient body"):
        SyntheticGradient(4, body="rnn")


def test_scale_changes_the_units_the_network_works_in_not_the_prediction():
    """scale s: the network outputs s * dh_syn and regresses onto s * target. A module with weights s * W and
    scale s predicts exactly what weights W and scale 1 predict, and its loss gradient is s times as large."""
    rng = np.random.default_rng(5)
    s = 256.0
    unit, scaled = SyntheticGradient(4, n_classes=3, dtype=f64), SyntheticGradient(4, n_classes=3, scale=s, dtype=f64)
    W, b = rng.standard_normal((7, 4)) * 1e-3, rng.standard_normal(4) * 1e-3
    unit.net.layers[0].params["W"][...], unit.net.layers[0].params["b"][...] = W, b
    scaled.net.layers[0].params["W"][...], scaled.net.layers[0].params["b"][...] = s * W, s * b
    for m in (unit, scaled):
        m.set_optimizer(lambda p: SGD(p, lr=1e-300, momentum=0.0))
    h, y, target = rng.standard_normal((6, 4)), rng.integers(0, 3, 6), rng.standard_normal((6, 4)) * 1e-3
    pred_unit, cache_unit = unit.predict(h, y)
    pred_scaled, cache_scaled = scaled.predict(h, y)
    assert_close(pred_scaled, pred_unit, rtol=1e-12)
    loss_unit = unit.update(pred_unit, cache_unit, target)
    loss_scaled = scaled.update(pred_scaled, cache_scaled, target)
    assert loss_scaled == pytest.approx(loss_unit, rel=1e-12)  # reported in the gradient's own units
    for k in ("W", "b"):
        assert_close(scaled.net.layers[0].grads[k], s * unit.net.layers[0].grads[k], rtol=1e-12, name=k)
    with pytest.raises(ValueError, match="scale must be positive"):
        SyntheticGradient(4, scale=0)


# -- convolutional modules: for blocks whose output h is a (B, C, H, W) map -----------------------------------


@pytest.mark.parametrize("hidden_layers", [0, 2])
@pytest.mark.parametrize("n_classes", [None, 4])
def test_fresh_conv_module_predicts_exactly_zero_with_h_shape(hidden_layers, n_classes):
    sg = make_synthetic_gradient(
        "conv", 3, n_classes=n_classes, hidden_width=5, hidden_layers=hidden_layers, rng=np.random.default_rng(0)
    )
    assert sg.kind == ("c" if n_classes else "") + "conv"
    convs = [layer for layer in sg.net.layers if "W" in layer.params]
    assert len(convs) == hidden_layers + 1 and all(c.kernel == (5, 5) and c.padding == (2, 2) for c in convs)
    assert convs[0].c_in == 3 + (n_classes or 0) and convs[-1].c_out == 3
    assert not convs[-1].params["W"].any() and not convs[-1].params["b"].any()
    h = np.random.default_rng(1).standard_normal((4, 3, 6, 5)).astype(np.float32)
    dh_syn, _ = sg.predict(h, np.array([0, 3, 1, 1]))
    assert dh_syn.shape == h.shape and dh_syn.dtype == np.float32 and not dh_syn.any()


def test_conv_label_maps_are_one_hot_per_class():
    """cDNI for maps: K extra channels, channel k all ones for the examples of class k and zeros otherwise."""
    sg = make_synthetic_gradient("conv", 2, n_classes=3, hidden_width=4, hidden_layers=1)
    h = np.random.default_rng(2).standard_normal((4, 2, 3, 5)).astype(np.float32)
    y = np.array([2, 0, 2, 1])
    u = sg.module_input(h, y)
    assert u.shape == (4, 5, 3, 5) and u.dtype == np.float32
    assert np.array_equal(u[:, :2], h)
    for b in range(4):
        for k in range(3):
            assert np.all(u[b, 2 + k] == (1.0 if y[b] == k else 0.0)), (b, k)
    with pytest.raises(ValueError, match="needs the labels"):
        sg.predict(h)


@pytest.mark.parametrize("hidden,n_classes", [((), 2), ((3,), None), ((3,), 2)])
def test_conv_sg_loss_gradients_match_central_differences(hidden, n_classes):
    """The conv module's regression step: its parameter gradients are those of L_sg (every conv, BatchNorm2d)."""
    rng = np.random.default_rng(3)
    sg = SyntheticGradient(2, hidden=hidden, n_classes=n_classes, rng=rng, dtype=f64, body="conv", kernel=3)
    for layer in sg.net.layers:  # off the zero start, gamma near 1
        for k, p in layer.params.items():
            p[...] = rng.standard_normal(p.shape) * 0.5 + (1.0 if k == "gamma" else 0.0)
    h, target = rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((3, 2, 4, 4))
    y = np.array([0, 1, 1])

    def sg_loss():
        pred, _ = sg.predict(h, y if n_classes else None)
        return float(np.sum((pred - target) ** 2) / 3)

    pred, cache = sg.predict(h, y if n_classes else None)
    sg.set_optimizer(lambda p: SGD(p, lr=1e-300, momentum=0.0))  # step of ~0: we only want the grads
    loss = sg.update(pred, cache, target)
    assert loss == pytest.approx(sg_loss(), rel=1e-12)
    params, analytic = {}, {}
    for i, layer in enumerate(sg.net.layers):
        for k in layer.params:
            params[f"{i}.{k}"], analytic[f"{i}.{k}"] = layer.params[k], layer.grads[k].copy()
    assert len(params) == (2 if not hidden else 5)  # conv W, b (+ hidden conv W, gamma, beta)
    check_function(sg_loss, params, analytic)
