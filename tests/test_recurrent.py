"""Recurrent cells: every backward through time against float64 central differences."""

import numpy as np
import pytest

from minidni.core.gradcheck import check_function
from minidni.core.optim import Adam
from minidni.recurrent.cells import (
    LSTMCell,
    RecurrentNet,
    RNNCell,
    make_cell,
    unroll_backward,
    unroll_forward,
    zero_grads,
)

CELLS = [RNNCell, LSTMCell]


def _net(Cell, d_in=3, hidden=4, d_out=2, seed=1):
    rng = np.random.default_rng(seed)
    cell = Cell(d_in, hidden, rng=rng, dtype=np.float64)
    return RecurrentNet(cell, d_out, rng=rng, dtype=np.float64), rng


@pytest.mark.parametrize("Cell", CELLS)
def test_cell_step_backward_matches_central_differences(Cell):
    rng = np.random.default_rng(0)
    cell = Cell(3, 5, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 3))
    s = rng.standard_normal((2, cell.state_size))
    R = rng.standard_normal((2, cell.state_size))

    def loss():
        return float((cell.step(x, s)[0] * R).sum())

    _, cache = cell.step(x, s)
    zero_grads(cell)
    dx, ds = cell.step_backward(R, cache)
    grads = {"x": dx, "s": ds, "W": cell.grads["W"].copy(), "b": cell.grads["b"].copy()}
    check_function(loss, {"x": x, "s": s, "W": cell.params["W"], "b": cell.params["b"]}, grads)


@pytest.mark.parametrize("Cell", CELLS)
def test_backward_through_a_whole_unrolled_sequence(Cell):
    """Loss on every step's logits AND on the last state: gradients for W, b, readout, every input and s_0."""
    net, rng = _net(Cell)
    T, B = 6, 2
    xs = rng.standard_normal((T, B, 3))
    s0 = 0.5 * rng.standard_normal((B, net.state_size))
    R = rng.standard_normal((T, B, 2))  # dL/dlogits
    R_end = rng.standard_normal((B, net.state_size))  # dL/ds_T: what a synthetic gradient would inject

    def loss():
        logits, ss, _ = net.forward(xs, s0)
        return float((logits * R).sum() + (ss[-1] * R_end).sum())

    logits, ss, cache = net.forward(xs, s0)
    ds0 = net.backward(R, R_end, cache)
    analytic = {
        "W": net.cell.grads["W"].copy(),
        "b": net.cell.grads["b"].copy(),
        "V": net.readout.grads["W"].copy(),
        "c": net.readout.grads["b"].copy(),
        "s0": ds0,
    }
    inputs = {
        "W": net.cell.params["W"],
        "b": net.cell.params["b"],
        "V": net.readout.params["W"],
        "c": net.readout.params["b"],
        "s0": s0,
    }
    check_function(loss, inputs, analytic)

    # the input gradients, from the raw unroll
    _, caches = unroll_forward(net.cell, xs, s0)
    dh_readout = (R.reshape(T * B, 2) @ net.readout.params["W"].T).reshape(T, B, -1)
    zero_grads(net.cell)
    dxs, ds0_raw = unroll_backward(net.cell, dh_readout, R_end, caches)
    np.testing.assert_allclose(ds0_raw, ds0, rtol=1e-12)
    check_function(loss, {"xs": xs}, {"xs": dxs})


@pytest.mark.parametrize("Cell", CELLS)
def test_gradients_accumulate_over_steps_and_backward_resets_them(Cell):
    net, rng = _net(Cell)
    xs = rng.standard_normal((4, 2, 3))
    s0 = net.initial_state(2)
    R = rng.standard_normal((4, 2, 2))
    _, _, cache = net.forward(xs, s0)
    net.backward(R, np.zeros_like(s0), cache)
    first = net.cell.grads["W"].copy()
    net.backward(R, np.zeros_like(s0), cache)  # a second call must not add onto the first
    np.testing.assert_array_equal(net.cell.grads["W"], first)
    assert np.abs(first).sum() > 0


@pytest.mark.parametrize("Cell", CELLS)
def test_state_backward_gives_ds0_and_leaves_parameter_gradients_alone(Cell):
    net, rng = _net(Cell)
    xs = rng.standard_normal((5, 3, 3))
    s0 = rng.standard_normal((3, net.state_size))
    R = rng.standard_normal((5, 3, 2))
    R_end = rng.standard_normal((3, net.state_size))
    _, _, cache = net.forward(xs, s0)
    ds0 = net.backward(R, R_end, cache)
    before = {k: g.copy() for k, g in net.cell.grads.items()}
    other_end = rng.standard_normal((3, net.state_size))
    ds0_state = net.state_backward(R, R_end, cache)
    np.testing.assert_allclose(ds0_state, ds0, rtol=1e-12, atol=1e-14)
    net.state_backward(R, other_end, cache)
    for k, g in before.items():
        np.testing.assert_array_equal(net.cell.grads[k], g)
    # linear in what arrives at the end: (R, a) + (0, b) = (R, a + b)
    lhs = net.state_backward(R, R_end + other_end, cache)
    rhs = net.state_backward(R, R_end, cache) + net.state_backward(None, other_end, cache)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("Cell", CELLS)
def test_backward_after_an_update_uses_the_weights_of_its_forward(Cell):
    """A window's backward (and state_backward) run after an optimiser step gives exactly the gradients it gave
    before the step: the caches hold the weights the window was forwarded with (as for every layer)."""
    net, rng = _net(Cell)
    net.set_optimizer(lambda params: Adam(params, lr=0.1))
    xs = rng.standard_normal((4, 2, 3))
    s0 = 0.5 * rng.standard_normal((2, net.state_size))
    R, R_end = rng.standard_normal((4, 2, 2)), rng.standard_normal((2, net.state_size))
    _, _, cache = net.forward(xs, s0)

    def gradients():
        ds0, dxs = net.backward(R, R_end, cache, need_dxs=True)
        out = {"ds0": ds0, "dxs": dxs, "state_backward": net.state_backward(R, R_end, cache)}
        out.update({f"cell.{k}": g.copy() for k, g in net.cell.grads.items()})
        out.update({f"readout.{k}": g.copy() for k, g in net.readout.grads.items()})
        return out

    before = gradients()
    params = {f"{part}.{k}": p for part in ("cell", "readout") for k, p in getattr(net, part).params.items()}
    params_before = {k: p.copy() for k, p in params.items()}
    net.update()  # a real step, in place
    for k, p in params.items():
        assert not np.array_equal(p, params_before[k]), f"the step left {k} unchanged: the test would prove nothing"
    net.forward(xs + 1, s0)  # the next window goes forward with the new weights while this window's cache is held
    after = gradients()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=f"{Cell.__name__}: {k} after the update")

    # one step on its own (cell.step without a window's shared copy of W) keeps its weights too
    x, s = rng.standard_normal((2, 3)), rng.standard_normal((2, net.state_size))
    _, step_cache = net.cell.step(x, s)
    dx_before, ds_before = net.cell.step_backward(R_end, step_cache, param_grads=False)
    net.cell.update()
    net.cell.step(x + 1, s)  # the next step, with the new weights
    dx_after, ds_after = net.cell.step_backward(R_end, step_cache, param_grads=False)
    np.testing.assert_array_equal(dx_after, dx_before)
    np.testing.assert_array_equal(ds_after, ds_before)


def test_lstm_state_is_h_then_c_and_matches_the_equations():
    rng = np.random.default_rng(3)
    cell = LSTMCell(2, 3, rng=rng, dtype=np.float64)
    x, s = rng.standard_normal((1, 2)), rng.standard_normal((1, 6))
    h_prev, c_prev = s[:, :3], s[:, 3:]
    z = np.concatenate([x, h_prev], axis=1) @ cell.params["W"] + cell.params["b"]
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    i, f, o, g = sig(z[:, :3]), sig(z[:, 3:6]), sig(z[:, 6:9]), np.tanh(z[:, 9:])
    c = f * c_prev + i * g
    s_new, _ = cell.step(x, s)
    np.testing.assert_allclose(s_new[:, 3:], c, rtol=1e-12)
    np.testing.assert_allclose(s_new[:, :3], o * np.tanh(c), rtol=1e-12)
    np.testing.assert_allclose(cell.output(s_new), o * np.tanh(c), rtol=1e-12)
    assert np.all(cell.params["b"][3:6] == 1.0)  # forget-gate bias starts at 1


def test_token_inputs_are_one_hot():
    net, rng = _net(LSTMCell, d_in=5)
    tokens = rng.integers(0, 5, size=(4, 2))
    s0 = net.initial_state(2)
    logits_tok, _, _ = net.forward(tokens, s0)
    logits_vec, _, _ = net.forward(np.eye(5)[tokens], s0)
    np.testing.assert_allclose(logits_tok, logits_vec, rtol=1e-12)
    with pytest.raises(ValueError, match="0..4"):
        net.forward(np.full((2, 2), 5), s0)


def test_bad_shapes_and_names_raise():
    net, rng = _net(RNNCell)
    with pytest.raises(ValueError, match=r"\(T, B, 3\)"):
        net.forward(rng.standard_normal((4, 2, 5)), net.initial_state(2))
    with pytest.raises(ValueError, match="state of shape"):
        net.forward(rng.standard_normal((4, 2, 3)), net.initial_state(3))
    with pytest.raises(ValueError, match="unknown recurrent cell"):
        make_cell("gru", 3, 4)
    with pytest.raises(ValueError, match="positive"):
        LSTMCell(0, 4)
