"""The DNI invariants, tested exactly, and short training runs with stated bounds.

The reference for "the true gradient" is written out here by hand in float64 - an FCN3 forward and backward
unrolled line by line, with batch norm's backward in its textbook form (through dvar and dmean) - so it shares no
code with the engine's backprop path.
"""

import copy

import numpy as np
import pytest

from minidni.dni.blocks import DivergenceError
from minidni.dni.network import build_network
from minidni.core.gradcheck import assert_close
from minidni.runs.train import TrainConfig, train

f64 = np.float64
EPS = 1e-5  # batch-norm epsilon, as in BatchNorm1d


# ------------------------------------------------------------------------------------------------------------
# an independent float64 reference of FCN3 = [Linear(no bias) -> BN -> ReLU] x 2 -> Linear


def fcn3_params(net):
    b0, b1, out = (blk.layers.layers for blk in net.blocks)
    return {
        "W0": b0[0].params["W"], "g0": b0[1].params["gamma"], "be0": b0[1].params["beta"],
        "W1": b1[0].params["W"], "g1": b1[1].params["gamma"], "be1": b1[1].params["beta"],
        "W2": out[0].params["W"], "b2": out[0].params["b"],
    }  # fmt: skip


def reference_fcn3(x, y, P):
    """Loss, parameter gradients and the true gradients dL/dh0, dL/dh1 of the blocks' outputs."""
    B = x.shape[0]

    def bn_relu_forward(a, g, be):
        mu = a.sum(0) / B
        var = ((a - mu) ** 2).sum(0) / B
        ahat = (a - mu) / np.sqrt(var + EPS)
        pre = g * ahat + be
        return np.maximum(pre, 0), (a, mu, var, ahat, pre)

    def bn_relu_backward(dh, g, c):
        a, mu, var, ahat, pre = c
        dpre = dh * (pre > 0)
        dg, dbe = (dpre * ahat).sum(0), dpre.sum(0)
        dahat = dpre * g
        dvar = (dahat * (a - mu) * -0.5 * (var + EPS) ** -1.5).sum(0)
        dmu = (-dahat / np.sqrt(var + EPS)).sum(0) + dvar * (-2 * (a - mu)).sum(0) / B
        da = dahat / np.sqrt(var + EPS) + dvar * 2 * (a - mu) / B + dmu / B
        return da, dg, dbe

    h0, c0 = bn_relu_forward(x @ P["W0"], P["g0"], P["be0"])
    h1, c1 = bn_relu_forward(h0 @ P["W1"], P["g1"], P["be1"])
    logits = h1 @ P["W2"] + P["b2"]
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(B), y]))
    dlogits = p.copy()
    dlogits[np.arange(B), y] -= 1
    dlogits /= B
    G = {"W2": h1.T @ dlogits, "b2": dlogits.sum(0)}
    dh1 = dlogits @ P["W2"].T
    da1, G["g1"], G["be1"] = bn_relu_backward(dh1, P["g1"], c1)
    G["W1"] = h0.T @ da1
    dh0 = da1 @ P["W1"].T
    da0, G["g0"], G["be0"] = bn_relu_backward(dh0, P["g0"], c0)
    G["W0"] = x.T @ da0
    return loss, G, [dh0, dh1]


class OracleSG:
    """A 'synthetic' gradient module that returns the true gradient it was given, and never learns."""

    def __init__(self, dh_true):
        self.dh_true = dh_true

    def predict(self, h, labels=None, train=True):
        assert h.shape == self.dh_true.shape
        return self.dh_true.copy(), None

    def update(self, dh_syn, cache, dh_target):
        return 0.0

    def state_arrays(self, prefix=""):
        return {}

    def optimizers(self, prefix=""):
        return {}


def tiny_net(mode, sg="linear", optimizer="sgd", seed=0, **kw):
    return build_network(
        depth=3, mode=mode, sg=sg, d_in=7, hidden=5, n_classes=4, sg_hidden=6, optimizer=optimizer,
        lr=0.1, sg_lr=0.01, momentum=0.0, seed=seed, dtype=f64, **kw,
    )  # fmt: skip


def batch(seed=0, B=8, d_in=7, n_classes=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, d_in)), rng.integers(0, n_classes, B)


def snapshot(net):
    return {k: v.copy() for k, v in net.state_arrays().items()}


# ------------------------------------------------------------------------------------------------------------
# invariants


def test_engine_backprop_matches_the_independent_reference():
    net = tiny_net("bprop")
    x, y = batch()
    P0 = {k: v.copy() for k, v in fcn3_params(net).items()}
    loss_ref, G, _ = reference_fcn3(x, y, P0)
    result = net.train_step(x, y)
    assert result["loss"] == pytest.approx(loss_ref, rel=1e-12)
    for k, p in fcn3_params(net).items():  # plain SGD: p1 = p0 - lr * grad
        assert_close(p, P0[k] - 0.1 * G[k], rtol=1e-10, atol=1e-13, name=k)


def test_dni_step_with_true_gradients_equals_a_backprop_step():
    """An SG module that returns dL/dh exactly turns a DNI step into a backprop step."""
    x, y = batch(1)
    dni = tiny_net("dni")
    P0 = {k: v.copy() for k, v in fcn3_params(dni).items()}
    _, G, dh_true = reference_fcn3(x, y, P0)
    for block, dh in zip(dni.hidden, dh_true):
        block.sg = OracleSG(dh)
    dni.train_step(x, y)

    bprop = tiny_net("bprop")
    bprop.train_step(x, y)
    for (k, p_dni), p_bp in zip(fcn3_params(dni).items(), fcn3_params(bprop).values()):
        assert_close(p_dni, P0[k] - 0.1 * G[k], rtol=1e-10, atol=1e-13, name=f"dni {k}")
        assert_close(p_dni, p_bp, rtol=1e-10, atol=1e-13, name=f"dni vs engine bprop {k}")


@pytest.mark.parametrize("mode,sg", [("dni", "mlp"), ("cdni", "linear"), ("dni", "linear")])
def test_zero_initialised_modules_leave_hidden_blocks_unchanged_at_step_0(mode, sg):
    net = tiny_net(mode, sg=sg, optimizer="adam")
    before = snapshot(net)
    x, y = batch(2)
    net.train_step(x, y)
    after = net.state_arrays()
    for i in range(len(net.hidden)):
        for k in before:
            if k.startswith(f"block{i}.") and "running_" not in k and ".opt." not in k:
                assert np.array_equal(after[k], before[k]), f"{k} moved although its synthetic gradient was 0"
    assert not np.array_equal(after["block2.0.W"], before["block2.0.W"])  # the output layer did learn


def test_a_blocks_synthetic_update_changes_no_other_block():
    net = tiny_net("cdni", optimizer="adam")
    for block in net.hidden:  # give the SG modules something non-zero to say
        block.sg.net.layers[-1].params["W"][...] = 0.05
    x, y = batch(3)
    before = snapshot(net)
    block = net.hidden[0]
    h, cache = block.forward(x)
    block.synthetic_step(h, cache, y)
    changed = {k for k, v in net.state_arrays().items() if not np.array_equal(v, before[k])}
    assert changed and all(k.startswith("block0.") for k in changed), changed
    assert "block0.0.W" in changed


def test_two_in_flight_batches_do_not_share_caches():
    net = tiny_net("dni")
    block = net.hidden[1]
    (xa, _), (xb, _) = batch(4, d_in=5), batch(5, d_in=5)
    rng = np.random.default_rng(6)
    dha, dhb = rng.standard_normal((8, 5)), rng.standard_normal((8, 5))

    def grads():
        return {k: v.copy() for layer in block.layers.layers for k, v in layer.grads.items()}

    # alone: forward and backward A, then the same for B
    ha, ca = block.forward(xa)
    dxa_alone = block.backward(dha, ca)
    ga_alone = grads()
    # interleaved: both forwards first (as when batch t+1 enters before batch t's gradient arrives)
    ha, ca = block.forward(xa)
    hb, cb = block.forward(xb)
    block.backward(dhb, cb)
    dxa = block.backward(dha, ca)
    assert np.array_equal(dxa, dxa_alone)
    for k, g in grads().items():
        assert np.array_equal(g, ga_alone[k]), k


def test_bootstrapped_target_is_the_next_prediction_pulled_back_through_the_next_block():
    net = tiny_net("dni", sg="mlp", optimizer="adam")
    for block in net.hidden:
        block.sg.net.layers[-1].params["W"][...] = np.random.default_rng(7).standard_normal((6, 5)) * 0.1
    x, y = batch(8)
    twin = copy.deepcopy(net)  # the same network before the step, to compute the expectation by hand
    h0, _ = twin.hidden[0].forward(x)
    h1, c1 = twin.hidden[1].forward(h0)
    dh1_syn, _ = twin.hidden[1].sg.predict(h1, y)
    expected_target0 = twin.hidden[1].backward(dh1_syn, c1)  # delta_hat_1 * d h1 / d h0

    logits, co = twin.output.forward(h1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    dlogits = e / e.sum(1, keepdims=True)
    dlogits[np.arange(8), y] -= 1
    expected_target1 = twin.output.backward(dlogits / 8, co)  # the top module sees the true gradient

    seen = {}
    for i, block in enumerate(net.hidden):
        original = block.sg_update

        def capture(dh_syn, sg_cache, dh_target, i=i, original=original):
            seen[i] = dh_target.copy()
            return original(dh_syn, sg_cache, dh_target)

        block.sg_update = capture
    net.train_step(x, y)
    assert_close(seen[0], expected_target0, rtol=1e-12, atol=1e-15, name="target of M after block 0")
    assert_close(seen[1], expected_target1, rtol=1e-12, atol=1e-15, name="target of M after block 1")


def test_true_target_switch_regresses_on_the_true_gradients():
    net = tiny_net("dni", sg_target="true")
    x, y = batch(9)
    _, _, dh_true = reference_fcn3(x, y, {k: v.copy() for k, v in fcn3_params(net).items()})
    seen = {}
    for i, block in enumerate(net.hidden):
        original = block.sg_update
        block.sg_update = lambda s, c, t, i=i, o=original: seen.setdefault(i, t.copy()) is not None and o(s, c, t)
    net.train_step(x, y)
    for i in range(2):
        assert_close(seen[i], dh_true[i], rtol=1e-10, atol=1e-14, name=f"true target {i}")


def test_nobprop_trains_only_the_output_layer():
    net = tiny_net("nobprop")
    before = snapshot(net)
    for s in range(3):
        net.train_step(*batch(s))
    after = net.state_arrays()
    for k in before:
        if k.startswith(("block0.", "block1.")) and "running_" not in k:
            assert np.array_equal(after[k], before[k]), k
    assert not np.array_equal(after["block2.0.W"], before["block2.0.W"])


def test_divergence_stops_the_run_naming_the_block():
    net = tiny_net("dni")
    net.hidden[1].sg.net.layers[-1].params["b"][0] = np.nan
    with pytest.raises(DivergenceError, match="block 1"):
        net.train_step(*batch(10))
    net = tiny_net("dni", max_norm=10.0)
    net.hidden[0].sg.net.layers[-1].params["b"][...] = 100.0
    with pytest.raises(DivergenceError, match=r"block 0 diverged.*limit 10"):
        net.train_step(*batch(10))


def test_clipping_rescales_what_the_block_uses_not_what_the_module_learns_from():
    net, ref = tiny_net("dni", clip=0.5), tiny_net("dni")
    for n in (net, ref):
        n.hidden[0].sg.net.layers[-1].params["b"][...] = 3.0
    x, _ = batch(11)
    h, cache = net.hidden[0].forward(x)
    _, dh_syn, _ = net.hidden[0].synthetic_step(h, cache)
    assert np.linalg.norm(dh_syn) == pytest.approx(3.0 * np.sqrt(h.size))  # the raw prediction, for sg_update
    # the block was updated from the clipped gradient: the same as an unclipped block given dh_syn rescaled
    h_ref, cache_ref = ref.hidden[0].forward(x)
    ref.hidden[0].backward(dh_syn * (0.5 / np.linalg.norm(dh_syn)), cache_ref, need_dx=False)
    ref.hidden[0].update()
    assert_close(net.hidden[0].layers.layers[0].params["W"], ref.hidden[0].layers.layers[0].params["W"], rtol=1e-12)


def test_a_deep_copy_trains_exactly_like_the_original():
    """Parameters live in one flat buffer per block; a copy must re-point its layers at its own buffers."""
    net = tiny_net("cdni", optimizer="adam")
    twin = copy.deepcopy(net)
    for s in range(3):
        net.train_step(*batch(s))
        twin.train_step(*batch(s))
    for k, v in net.state_arrays().items():
        assert np.array_equal(v, twin.state_arrays()[k]), k
    assert not np.shares_memory(net.blocks[0].layers.layers[0].params["W"], twin.blocks[0].layers.layers[0].params["W"])


def test_bad_configurations():
    with pytest.raises(ValueError, match="unknown mode"):
        tiny_net("dfa")
    with pytest.raises(ValueError, match="depth >= 2"):
        build_network(depth=1)
    with pytest.raises(ValueError, match="sg_target"):
        tiny_net("dni", sg_target="oracle")
    with pytest.raises(ValueError, match="needs synthetic-gradient modules"):
        tiny_net("bprop").gradient_alignment(*batch(0))


def test_gradient_alignment_is_perfect_for_an_oracle_and_changes_nothing():
    net = tiny_net("dni", sg="mlp")
    x, y = batch(12)
    _, _, dh_true = reference_fcn3(x, y, {k: v.copy() for k, v in fcn3_params(net).items()})
    real_sg = net.hidden[0].sg
    net.hidden[1].sg = OracleSG(dh_true[1])
    before = {k: v.copy() for k, v in net.state_arrays().items()}
    align = net.gradient_alignment(x, y)
    assert align["cosine"][1] == pytest.approx(1.0, abs=1e-12)
    assert align["rel_error"][1] == pytest.approx(0.0, abs=1e-12)
    assert align["cosine"][0] == 0.0 and align["rel_error"][0] == pytest.approx(1.0)  # zero-initialised module
    assert real_sg is net.hidden[0].sg
    for k, v in net.state_arrays().items():
        assert np.array_equal(v, before[k]), f"diagnostics changed {k}"


# ------------------------------------------------------------------------------------------------------------
# short runs with stated bounds


def test_cdni_learns_spirals(tmp_path):
    """cDNI on 3-class spirals, fixed seed: the error bound (<= 10%) was set with margin above the measured value."""
    cfg = TrainConfig(data="spirals", mode="cdni", hidden=64, batch=64, epochs=8, lr=1e-2, sg_lr=1e-3,
                      val_size=300, seed=0, out=str(tmp_path / "run"), progress=False)  # fmt: skip
    metrics = train(cfg, log=lambda s: None)
    assert metrics[-1]["test_error_pct"] <= 10.0
    assert metrics[-1]["test_error_pct"] < metrics[0]["test_error_pct"]


@pytest.mark.network
def test_cdni_learns_an_mnist_subset(tmp_path, isolated):
    """Real MNIST (downloaded into a temporary cache: `isolated`; pytest --network runs it): FCN3 cDNI on 10,000
    training images for 4 epochs (156 steps), seed 0, default learning rates. Measured 7.85% test error on the first
    2,000 test images (seed 1: 7.50%); the bound leaves room for BLAS differences between machines, not for a
    broken engine (untrained: ~90%)."""
    cfg = TrainConfig(data="mnist", mode="cdni", epochs=4, train_subset=10_000, test_subset=2_000, val_size=1_000,
                      lr_decay_at=(), seed=0, out=str(tmp_path / "run"), progress=False)  # fmt: skip
    metrics = train(cfg, log=lambda s: None)
    assert metrics[-1]["test_error_pct"] <= 11.0


def test_sg_modules_can_have_their_own_optimiser():
    from minidni.core.optim import SGD, Adam

    net = tiny_net("dni", optimizer="adam", sg_optimizer="sgd")
    assert all(isinstance(opt, SGD) for name, opt in net.optimizers().items() if name.startswith("sg"))
    assert all(isinstance(opt, Adam) for name, opt in net.optimizers().items() if name.startswith("block"))
    with pytest.raises(ValueError, match="sg_optimizer must be 'adam' or 'sgd'"):
        TrainConfig(sg_optimizer="lbfgs").validate()


def test_bad_batches_get_clear_errors():
    net = tiny_net("cdni")
    x, y = batch(13)
    with pytest.raises(ValueError, match=r"x must be \(B, 7\)"):
        net.train_step(x[:, :5], y)
    with pytest.raises(TypeError, match="float64"):
        net.train_step(x.astype(np.float32), y)
    with pytest.raises(ValueError, match="labels must be"):
        net.train_step(x, y.astype(np.float64))
    with pytest.raises(ValueError, match="labels must be"):
        net.train_step(x, y[:3])
    x[0, 0] = np.nan
    with pytest.raises(DivergenceError):
        net.train_step(x, y)


@pytest.mark.parametrize("mode", ["bprop", "nobprop", "dni", "cdni"])
@pytest.mark.parametrize("bad", [-1, 4])
def test_a_label_outside_the_classes_is_refused_before_anything_moves(mode, bad):
    """A label of -1 would index class K-1 of the softmax (and of cDNI's one-hot) and train silently; a label
    of K would fail somewhere inside the loss with a message that names no label."""
    net = tiny_net(mode)
    x, y = batch(13)
    y[3] = bad
    before = snapshot(net)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got values in"):
        net.train_step(x, y)
    assert all(np.array_equal(v, before[k]) for k, v in net.state_arrays().items())


def test_the_trainer_refuses_labels_outside_the_classes_before_the_first_step(tmp_path, isolated):
    from minidni.data.datasets import make_spirals

    x, y = make_spirals(300, seed=0)
    y = y.copy()
    y[7] = -1
    data = (x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:])
    cfg = TrainConfig(data="spirals", model="fcn3", hidden=8, epochs=1, batch=20, out=str(tmp_path / "r"),
                      progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got values in \[-1, "):
        train(cfg, log=lambda s: None, data=data)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
