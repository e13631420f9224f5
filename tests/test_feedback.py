"""Error-signal strategies (minidni.dni.feedback): each one's formula checked exactly or by hand, the special cases in
which FA and DFA *are* backprop, the SG target, the fixed matrices, mixing, bad input, and short training runs.

Tiny float64 networks; the by-hand computations use Linear -> ReLU blocks (batchnorm=False) so that they fit in a
few lines and share no code with the engine's backward.
"""

import copy
import itertools

import numpy as np
import pytest

from minidni.data.checkpoint import load_checkpoint, restore_arrays, save_checkpoint
from minidni.data.datasets import make_spirals
from minidni.dni.network import build_network
from minidni.dni.feedback import (
    Backprop,
    DirectFeedbackAlignment,
    FeedbackAlignment,
    FeedbackNetwork,
    build_feedback_network,
)
from minidni.core.gradcheck import assert_close, numerical_gradient
from minidni.core.layers import Linear, ReLU, Sequential
from minidni.core.optim import make_optimizer

f64 = np.float64
D_IN, HIDDEN, K, LR, SG_LR = 7, 5, 4, 0.1, 0.05


def tiny(signals, optimizer="sgd", momentum=0.0, seed=0, **kw):
    kw = {"d_in": D_IN, "hidden": HIDDEN, "n_classes": K, "lr": LR, "sg_lr": SG_LR, "sg_hidden": 6, **kw}
    return build_feedback_network(signals, optimizer=optimizer, momentum=momentum, seed=seed, dtype=f64, **kw)


def batch(seed=0, B=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, D_IN)), rng.integers(0, K, B)


def blocks_only(arrays):
    return {k: v for k, v in arrays.items() if k.startswith("block")}


def snapshot(net):
    return {k: v.copy() for k, v in net.state_arrays().items()}


def softmax_error(logits, y):
    """e = dL/dlogits of the batch-mean cross-entropy, by hand."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return p / len(y)


def relu_net_forward(net, x):
    """h_i = relu(h_{i-1} W_i + b_i) for the hidden blocks of a batchnorm=False FCN; logits last."""
    Ws = [blk.layers[0].params["W"].copy() for blk in net.blocks]
    bs = [blk.layers[0].params["b"].copy() for blk in net.blocks]
    hs, h = [], x
    for W, b in zip(Ws[:-1], bs[:-1]):
        h = np.maximum(h @ W + b, 0)
        hs.append(h)
    return hs, hs[-1] @ Ws[-1] + bs[-1], Ws


def linear_stacks(widths, seed=0):
    """A deep LINEAR network: one Linear per block, no nonlinearity, SGD attached."""
    rng = np.random.default_rng(seed)
    stacks = [Sequential(Linear(a, b, init="xavier", rng=rng, dtype=f64)) for a, b in itertools.pairwise(widths)]
    for s in stacks:
        s.set_optimizer(lambda p: make_optimizer("sgd", p, LR, momentum=0.0))
    return stacks


# ------------------------------------------------------------------------------------------------------------
# the special cases in which a strategy is exactly backprop


def test_all_backprop_step_equals_the_dni_bprop_step():
    x, y = batch(1)
    fb = tiny("bp", depth=4, optimizer="adam", momentum=0.9)
    ref = build_network(depth=4, mode="bprop", d_in=D_IN, hidden=HIDDEN, n_classes=K, lr=LR, seed=0, dtype=f64)
    for step in range(3):
        assert fb.train_step(x, y)["loss"] == ref.train_step(x, y)["loss"]
    a, b = fb.state_arrays(), ref.state_arrays()
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_feedback_alignment_with_B_equal_to_W_transpose_is_backprop():
    x, y = batch(2)
    fa, bp = tiny(("fa", "fa", "fa"), optimizer="adam"), tiny(("bp", "bp", "bp"), optimizer="adam")
    for i, s in enumerate(fa.signals):  # W^T of the block above, as it is at the forward pass
        s.B[...] = fa.blocks[i + 1].layers[0].params["W"].T
    fa.train_step(x, y)
    bp.train_step(x, y)
    expected = bp.state_arrays()
    for k, v in blocks_only(fa.state_arrays()).items():
        assert_close(v, expected[k], rtol=1e-12, atol=1e-15, name=k)


def test_direct_feedback_alignment_with_B_the_jacobian_of_a_deep_linear_net_is_backprop():
    widths = (D_IN, 6, 5, 4, K)
    dfa = FeedbackNetwork(linear_stacks(widths), [DirectFeedbackAlignment(np.zeros((K, w))) for w in widths[1:-1]])
    bp = FeedbackNetwork(linear_stacks(widths), [Backprop() for _ in widths[1:-1]])
    Ws = [blk.layers[0].params["W"] for blk in dfa.blocks]
    for i, s in enumerate(dfa.signals):  # logits = h_i W_{i+1} ... W_out + const: B_i = (W_{i+1} ... W_out)^T
        s.B[...] = np.linalg.multi_dot([np.eye(widths[i + 1])] + Ws[i + 1 :]).T
    x, y = batch(3)
    out = dfa.error_signals(x, y)
    for i, (dh, delta) in enumerate(zip(out["signal"], out["true"])):
        assert_close(dh, delta, rtol=1e-10, atol=1e-15, name=f"dh_{i}")
    dfa.train_step(x, y)
    bp.train_step(x, y)
    expected = bp.state_arrays()
    for k, v in blocks_only(dfa.state_arrays()).items():
        assert_close(v, expected[k], rtol=1e-10, atol=1e-15, name=k)


def test_the_true_gradient_of_error_signals_matches_central_differences():
    net = tiny(("dfa", "sg"))  # batch norm in training mode: every row of h_i moves the loss
    x, y = batch(4)
    true = net.error_signals(x, y)["true"]
    twin = copy.deepcopy(net)
    h, hs = x, []
    for block in twin.blocks[:-1]:
        h, _ = block.forward(h)
        hs.append(h)
    for i, h in enumerate(hs):

        def loss(h=h, above=twin.blocks[i + 1 :]):
            out = h
            for block in above:
                out, _ = block.forward(out)
            p = np.exp(out - out.max(1, keepdims=True))
            return float(-np.mean(np.log(p[np.arange(len(y)), y] / p.sum(1))))

        assert_close(true[i], numerical_gradient(loss, h), rtol=1e-6, atol=1e-9, name=f"delta_{i}")


# ------------------------------------------------------------------------------------------------------------
# each formula by hand


def test_fa_and_dfa_signals_by_hand():
    x, y = batch(5)
    fa = tiny(("fa", "fa"), batchnorm=False)
    hs, logits, Ws = relu_net_forward(fa, x)
    e = softmax_error(logits, y)
    dh1 = e @ fa.signals[1].B  # B_out (K, D_1) in place of W_out^T
    dh0 = (dh1 * (hs[1] > 0)) @ fa.signals[0].B  # through block 1's ReLU, then B_1 in place of W_1^T
    got = fa.error_signals(x, y)
    assert_close(got["signal"][1], dh1, rtol=1e-12, atol=1e-15, name="fa dh_1")
    assert_close(got["signal"][0], dh0, rtol=1e-12, atol=1e-15, name="fa dh_0")
    assert_close(got["true"][0], (e @ Ws[2].T * (hs[1] > 0)) @ Ws[1].T, rtol=1e-12, atol=1e-15, name="delta_0")
    assert fa.signals[0].B.shape == Ws[1].T.shape and fa.signals[1].B.shape == Ws[2].T.shape

    dfa = tiny(("dfa", "dfa"), batchnorm=False)
    got = dfa.error_signals(x, y)
    for i in range(2):  # the same e, projected straight to each block
        assert_close(got["signal"][i], e @ dfa.signals[i].B, rtol=1e-12, atol=1e-15, name=f"dfa dh_{i}")


@pytest.mark.parametrize("sg", ["linear", "mlp"])
def test_zero_initialised_synthetic_gradients_leave_their_blocks_unchanged_at_step_0(sg):
    net = tiny(("sg", "sg"), sg=sg, optimizer="adam")
    before = snapshot(net)
    net.train_step(*batch(6))
    after = net.state_arrays()
    for k, v in before.items():
        if k.startswith(("block0.", "block1.")) and "running_" not in k and ".opt." not in k:
            assert np.array_equal(after[k], v), f"{k} moved although its signal was 0"
    assert not np.array_equal(after["block2.0.W"], before["block2.0.W"])  # the output block learned


def test_the_sg_target_is_the_true_backward_of_the_signal_of_the_block_above():
    """("sg", "sg"): M_1's target is the true delta_1; M_0's is block 1's true backward of M_1's prediction."""
    net = tiny(("sg", "sg"), batchnorm=False)  # linear cDNI modules: dh_syn = [h, onehot(y)] A + c
    rng = np.random.default_rng(7)
    for s in net.signals:
        for p in s.module.net.layers[0].params.values():
            p[...] = 0.1 * rng.standard_normal(p.shape)
    x, y = batch(8)
    hs, logits, Ws = relu_net_forward(net, x)
    e, onehot = softmax_error(logits, y), np.eye(K)[y]
    A = [s.module.net.layers[0].params["W"].copy() for s in net.signals]
    c = [s.module.net.layers[0].params["b"].copy() for s in net.signals]
    inputs = [np.concatenate([h, onehot], 1) for h in hs]
    preds = [inp @ a + b for inp, a, b in zip(inputs, A, c)]
    targets = [(preds[1] * (hs[1] > 0)) @ Ws[1].T, e @ Ws[2].T]  # bootstrapped below, true at the top
    result = net.train_step(x, y)
    for i, s in enumerate(net.signals):
        diff = preds[i] - targets[i]
        assert result["sg_loss"][i] == pytest.approx(np.sum(diff**2) / len(x), rel=1e-12)
        grad = 2 * diff / len(x)  # d L_sg / d pred
        layer = s.module.net.layers[0]
        assert_close(layer.params["W"], A[i] - SG_LR * inputs[i].T @ grad, rtol=1e-12, atol=1e-15, name=f"A_{i}")
        assert_close(layer.params["b"], c[i] - SG_LR * grad.sum(0), rtol=1e-12, atol=1e-15, name=f"c_{i}")
    # and block 0 stepped along its synthetic gradient: dW_0 = x^T (dh_0 * relu')
    W0 = net.blocks[0].layers[0].params["W"]
    assert_close(W0, Ws[0] - LR * x.T @ (preds[0] * (hs[0] > 0)), rtol=1e-12, atol=1e-15, name="W_0")


# ------------------------------------------------------------------------------------------------------------
# fixed matrices, mixing, diagnostics


def test_fixed_matrices_never_change_and_round_trip_through_a_checkpoint(tmp_path):
    signals = ("fa", "dfa", "sg")
    net = tiny(signals, optimizer="sgd", momentum=0.9)
    fixed = {k: v.copy() for k, v in net.state_arrays().items() if k.endswith(".B")}
    assert set(fixed) == {"fa0.B", "dfa1.B"}
    assert not any(k.startswith(("fa", "dfa")) for k in net.optimizers())  # no optimiser ever sees B
    for step in range(5):
        net.train_step(*batch(10 + step))
    for k, v in fixed.items():
        assert np.array_equal(net.state_arrays()[k], v), f"{k} changed during training"

    save_checkpoint(tmp_path / "fb.npz", net.state_arrays(), {"signals": list(signals)})
    other = tiny(signals, optimizer="sgd", momentum=0.9, seed=1)  # other weights and other B matrices
    assert not np.array_equal(other.state_arrays()["fa0.B"], fixed["fa0.B"])
    arrays, _ = load_checkpoint(tmp_path / "fb.npz")
    restore_arrays(other.state_arrays(), arrays)
    x, y = batch(20)
    assert other.train_step(x, y) == net.train_step(x, y)  # SGD's whole state is in state_arrays
    for k, v in net.state_arrays().items():
        assert np.array_equal(other.state_arrays()[k], v), k


def test_mixed_strategies_each_block_updates_by_its_own_rule():
    net = tiny(("dfa", "sg", "bp"), sg="mlp")
    net.signals[1].module.net.layers[-1].params["W"][...] = 0.05  # a non-zero synthetic gradient
    x, y = batch(11)
    twin = copy.deepcopy(net)  # the state before the step, to build the expected updates
    h, hs, caches = x, [], []
    for block in twin.blocks:
        h, cache = block.forward(h)
        hs.append(h)
        caches.append(cache)
    e = softmax_error(hs[-1], y)
    signals = [None, None, None, e]
    signals[2] = twin.blocks[3].backward(e, caches[3])  # bp: the output block's true backward
    sg_input = twin.signals[1].module
    signals[1], _ = sg_input.predict(hs[1], y)  # sg: M(h_1, y)
    signals[0] = e @ twin.signals[0].B  # dfa: e B_0
    net.train_step(x, y)
    for i, block in enumerate(twin.blocks):
        old = block.optimizer.params["params"].copy()  # all of block i's parameters, flat
        block.backward(signals[i], caches[i], need_dx=False)
        expected = old - LR * block.flat_grads
        assert_close(net.blocks[i].optimizer.params["params"], expected, rtol=1e-12, atol=1e-15, name=f"block {i}")


def test_alignment_is_one_for_backprop_and_changes_nothing():
    x, y = batch(12)
    assert tiny("bp", depth=4).alignment(x, y)["cosine"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    net = tiny(("fa", "dfa", "sg"), sg="mlp")  # batch norm in the blocks and in the SG module
    net.signals[2].module.net.layers[-1].params["W"][...] = 0.05
    before = snapshot(net)
    out = net.alignment(x, y)
    assert all(-1 <= c <= 1 for c in out["cosine"]) and len(out["norm_ratio"]) == 3
    assert abs(out["cosine"][0]) < 1 - 1e-3  # a random feedback matrix is not the gradient
    for k, v in net.state_arrays().items():
        assert np.array_equal(v, before[k]), f"{k} changed"


# ------------------------------------------------------------------------------------------------------------
# bad input


def test_bad_configurations_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown error-signal strategy 'kickback'"):
        tiny(("bp", "kickback"))
    with pytest.raises(ValueError, match="depth 4 needs 3 signals"):
        tiny(("bp", "fa"), depth=4)
    stacks = linear_stacks((D_IN, 5, K))
    with pytest.raises(ValueError, match=r"one error-signal strategy per hidden block \(1\)"):
        FeedbackNetwork(stacks, [Backprop(), Backprop()])
    with pytest.raises(TypeError, match="must be an ErrorSignal"):
        FeedbackNetwork(stacks, ["bp"])
    with pytest.raises(ValueError, match=r"B must be \(4, 5\) float64"):
        FeedbackNetwork(stacks, [FeedbackAlignment(np.zeros((5, 4)))])
    relu_first = [stacks[0], Sequential(ReLU(), *stacks[1].layers)]
    with pytest.raises(TypeError, match="needs the block above to start with a Linear layer, got ReLU"):
        FeedbackNetwork(relu_first, [FeedbackAlignment(np.zeros((K, 5)))])
    net = FeedbackNetwork(stacks, [DirectFeedbackAlignment(np.zeros((K, 3)))])
    with pytest.raises(ValueError, match=r"expected B of shape \(K, D\)"):
        net.train_step(*batch(0))


def test_bad_batches_are_refused_clearly():
    net = tiny(("fa", "sg"))
    x, y = batch(0)
    with pytest.raises(ValueError, match=r"x must be \(B, 7\)"):
        net.train_step(x[:, :3], y)
    with pytest.raises(TypeError, match="x must be float64"):
        net.train_step(x.astype(np.float32), y)
    with pytest.raises(ValueError, match=r"labels must be \(8,\) integers"):
        net.train_step(x, y.astype(f64))
    with pytest.raises(ValueError, match=r"labels must be \(8,\) integers"):
        net.alignment(x, y[:4])


# ------------------------------------------------------------------------------------------------------------
# short training runs: spirals hidden among 20 noise coordinates, which a frozen first layer cannot pick out


def spirals_loss(signals, steps=300, zero_feedback=False):
    x, y = make_spirals(200, 3, 0.2, seed=0, noise_dims=20)
    net = build_feedback_network(signals, d_in=x.shape[1], hidden=32, n_classes=3, lr=3e-3, sg_lr=1e-3, seed=0)
    if zero_feedback:  # DFA with B = 0: the hidden blocks never learn (the control)
        for s in net.signals:
            s.B[...] = 0
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, len(x), 64)
        net.train_step(x[idx], y[idx])
    return net.mean_loss(x, y)


@pytest.mark.parametrize("signals", ["bp", "fa", "dfa", "sg", ("dfa", "sg"), ("sg", "fa")])
def test_every_strategy_trains_its_hidden_blocks_on_spirals(signals):
    # measured: bp 0.26, fa 0.50, dfa 0.44, sg 0.45, mixes 0.41-0.44; the control below 0.94 (start: 1.18)
    assert spirals_loss(signals) < 0.75


def test_the_spirals_threshold_is_out_of_reach_when_hidden_blocks_do_not_learn():
    assert spirals_loss(("dfa", "dfa"), zero_feedback=True) > 0.85
