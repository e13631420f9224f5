"""Truncated BPTT and recurrent DNI: the exact invariants.

- BPTT: nothing crosses a chunk boundary.
- The synthetic gradient enters the core scaled by 0.1, and only there.
- The bootstrapped target equals the gradient of (next chunk's losses + <M(s_next), s_next>) with respect to the
  boundary state, computed here by an explicit longer unroll and by central differences.
- With a module that returns the TRUE future gradient (and scale 1), the DNI chunk gradients of a sequence add up
  to the full-sequence BPTT gradient.
"""

import copy

import numpy as np
import pytest

from minidni.core import functional as F
from minidni.core.gradcheck import numerical_gradient
from minidni.core.optim import SGD, Adam
from minidni.recurrent.cells import LSTMCell, RecurrentNet, RNNCell
from minidni.recurrent.truncated import TruncatedTrainer, clip_grad_norm
from minidni.dni.synthetic import SyntheticGradient

T, B, D, H, O = 3, 2, 3, 4, 2


def _setup(Cell=LSTMCell, mode="dni", seed=0, lr=0.0, sg_weights=True, sg_lr=None, n_classes=None, **kw):
    """A float64 net and SG module; lr = 0 keeps the weights fixed (SGD with lr 0 is not allowed: tiny lr);
    sg_lr: the module's own SGD rate (None: lr); n_classes: a context-conditioned module."""
    rng = np.random.default_rng(seed)
    net = RecurrentNet(Cell(D, H, rng=rng, dtype=np.float64), O, rng=rng, dtype=np.float64)

    def sgd(rate):
        return lambda p: SGD(p, rate or 1e-300, momentum=0.0)

    make = sgd(lr)
    net.set_optimizer(make)
    sg = None
    if mode != "bptt":
        sg = SyntheticGradient(net.state_size, n_classes=n_classes, rng=rng, dtype=np.float64)
        if sg_weights:  # a module that predicts something nonzero, so that every path is exercised
            lin = sg.net.layers[-1]
            lin.params["W"][...] = 0.3 * rng.standard_normal(lin.params["W"].shape)
            lin.params["b"][...] = 0.1 * rng.standard_normal(lin.params["b"].shape)
        sg.set_optimizer(sgd(lr if sg_lr is None else sg_lr))
    trainer = TruncatedTrainer(net, mode, sg=sg, clip=None, **kw)
    trainer.set_aux_optimizer(make)
    return trainer, rng


def _mse_loss(targets):
    def loss_fn(logits):  # sum over steps of the batch-mean squared error
        diff = logits - targets
        return float((diff**2).sum() / logits.shape[1]), 2 * diff / logits.shape[1]

    return loss_fn


def _grads(net):
    return {f"{n}.{k}": g.copy() for n, layer in net.layers().items() for k, g in layer.grads.items()}


@pytest.mark.parametrize("Cell", [RNNCell, LSTMCell])
def test_bptt_chunk_gradient_is_the_chunk_alone(Cell):
    trainer, rng = _setup(Cell, mode="bptt")
    xs = rng.standard_normal((2 * T, B, D))
    ys = rng.standard_normal((2 * T, B, O))
    net0 = copy.deepcopy(trainer.net)
    trainer.begin_sequence(B)
    trainer.train_chunk(xs[:T], _mse_loss(ys[:T]))
    s_T = trainer.s.copy()
    trainer.train_chunk(xs[T:], _mse_loss(ys[T:]), ends_sequence=True)
    got = _grads(trainer.net)
    # by hand: the second chunk alone, from the carried state, nothing at its end
    logits, _, cache = net0.forward(xs[T:], s_T)
    _, dlogits = _mse_loss(ys[T:])(logits)
    net0.backward(dlogits, np.zeros_like(s_T), cache)
    for k, g in _grads(net0).items():
        np.testing.assert_allclose(got[k], g, rtol=1e-9, atol=1e-12, err_msg=k)


def test_synthetic_gradient_enters_scaled_by_0_1():
    trainer, rng = _setup(mode="dni")
    assert trainer.sg_use_scale == 0.1
    xs, ys = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, O))
    net0, sg0 = copy.deepcopy(trainer.net), copy.deepcopy(trainer.sg)
    trainer.begin_sequence(B)
    trainer.train_chunk(xs, _mse_loss(ys))
    got = _grads(trainer.net)

    logits, ss, cache = net0.forward(xs, net0.initial_state(B))
    pred, _ = sg0.predict(net0.cell.features(ss[-1]))
    assert np.abs(pred).max() > 1e-3  # a real prediction, not zeros
    _, dlogits = _mse_loss(ys)(logits)
    for scale, should_match in ((0.1, True), (1.0, False)):
        net0.backward(dlogits, scale * pred, cache)
        ok = all(np.allclose(got[k], g, rtol=1e-9, atol=1e-12) for k, g in _grads(net0).items())
        assert ok == should_match, scale


def test_zero_initialised_module_makes_the_first_dni_step_a_bptt_step():
    dni, rng = _setup(mode="dni", sg_weights=False)
    bptt, _ = _setup(mode="bptt")
    xs, ys = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, O))
    for tr in (dni, bptt):
        tr.begin_sequence(B)
        tr.train_chunk(xs, _mse_loss(ys))
    for k, g in _grads(bptt.net).items():
        np.testing.assert_array_equal(_grads(dni.net)[k], g)


def _second_chunk_target(trainer, rng, ends_sequence=False):
    """Two chunks of one sequence: returns (xs, ys, s_T, net1, sg1, target), where net1 and sg1 are copies of the
    core and the module as chunk 2 is forwarded with them, and target is what M(s_T) regressed onto in chunk 2."""
    xs = rng.standard_normal((2 * T, B, D))
    ys = rng.standard_normal((2 * T, B, O))
    trainer.begin_sequence(B)
    trainer.train_chunk(xs[:T], _mse_loss(ys[:T]))
    s_T = trainer.s.copy()
    net1, sg1 = copy.deepcopy(trainer.net), copy.deepcopy(trainer.sg)  # the weights chunk 2 is forwarded with
    recorded = {}
    real_update = trainer.sg.update

    def spy(pred, cache, target):
        recorded["target"] = target.copy()
        return real_update(pred, cache, target)

    trainer.sg.update = spy
    trainer.train_chunk(xs[T:], _mse_loss(ys[T:]), ends_sequence=ends_sequence)
    return xs, ys, s_T, net1, sg1, recorded["target"]


@pytest.mark.parametrize("Cell", [RNNCell, LSTMCell])
@pytest.mark.parametrize("last,discount", [(False, 1.0), (True, 1.0), (False, 0.5)])
def test_bootstrapped_target_against_an_explicit_longer_unroll(Cell, last, discount):
    """Target for M(s_T) = d/ds_T [losses of chunk 2 + lambda <M(s_2T), s_2T>] (M(s_2T) held fixed), with the
    weights chunk 2 was forwarded with; at the end of a sequence the second term is absent."""
    trainer, rng = _setup(Cell, mode="dni", sg_discount=discount)
    xs, ys, s_T, net1, sg1, target = _second_chunk_target(trainer, rng, ends_sequence=last)

    _, ss, _ = net1.forward(xs[T:], s_T)
    m_next = (
        np.zeros_like(s_T) if last else sg1.predict(net1.cell.features(ss[-1]))[0]
    )  # fixed: a constant in the objective
    if not last:
        assert np.abs(m_next).max() > 1e-3

    def objective():
        logits, ss_, _ = net1.forward(xs[T:], s_T)
        return _mse_loss(ys[T:])(logits)[0] + discount * float((m_next * ss_[-1]).sum())

    numeric = numerical_gradient(objective, s_T)
    np.testing.assert_allclose(target, numeric, rtol=1e-6, atol=1e-8)
    # and it is NOT the scaled version the core used (the common shortcut)
    if not last:
        logits, _, cache = net1.forward(xs[T:], s_T)
        shortcut = net1.state_backward(_mse_loss(ys[T:])(logits)[1], 0.1 * m_next, cache)
        assert not np.allclose(shortcut, target, rtol=1e-3)
        if discount == 0.5:  # and the undiscounted target differs too
            undiscounted = net1.state_backward(_mse_loss(ys[T:])(logits)[1], m_next, cache)
            assert not np.allclose(undiscounted, target, rtol=1e-3)


def test_bootstrapped_target_uses_the_weights_the_chunk_was_forwarded_with():
    """With a core that really learns, the target for M(s_T) is the gradient of the next chunk's losses (+ lambda
    <M(s_2T), s_2T>) under the weights chunk 2 was FORWARDED with - not those after the core's update in that chunk.
    (The test above keeps the weights fixed, so it cannot tell the two apart.)"""
    trainer, rng = _setup(LSTMCell, mode="dni", lr=0.5)
    xs, ys, s_T, net1, sg1, target = _second_chunk_target(trainer, rng)
    net2 = trainer.net  # the core after its update in chunk 2

    def target_with(net):
        logits, ss, cache = net.forward(xs[T:], s_T)
        m_next = sg1.predict(net1.cell.features(ss[-1]))[0]  # M(s_2T), as chunk 2 predicted it
        return net.state_backward(_mse_loss(ys[T:])(logits)[1], m_next, cache)

    before, after = target_with(net1), target_with(copy.deepcopy(net2))
    assert np.abs(before - after).max() > 1e-3, "the core's update must move the target, or this test is blind"
    np.testing.assert_allclose(target, before, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("n_classes", [None, 3])
def test_module_regresses_a_fresh_prediction_of_its_current_weights(n_classes):
    """Three chunks. The prediction at the end of the second, M(s_2), is made BEFORE M's regression step in that
    chunk (onto the target of M(s_1)); its own target arrives in the third chunk. By then M has moved, so M must
    regress a prediction made again from the same input (and context) with its current weights: the gradient of
    its regression step is then the gradient of the regression loss where M now is."""
    trainer, rng = _setup(LSTMCell, mode="dni", lr=0.1, sg_lr=0.5, n_classes=n_classes)
    xs = rng.standard_normal((3 * T, B, D))
    ys = rng.standard_normal((3 * T, B, O))
    contexts = [None if n_classes is None else rng.integers(0, n_classes, B) for _ in range(3)]
    made, regressed = [], []  # the predictions train_chunk made; (M's network before, pred, target, grads after)
    real_predict, real_update = trainer.sg.predict, trainer.sg.update

    def spy_predict(h, labels=None, train=True):
        out = real_predict(h, labels, train)
        made.append(out[0].copy())
        return out

    def spy_update(pred, cache, target):
        before = copy.deepcopy(trainer.sg.net)  # M's weights as they are when the target arrives
        loss = real_update(pred, cache, target)
        grads = {k: g.copy() for k, g in trainer.sg.net.layers[-1].grads.items()}
        regressed.append((before, pred.copy(), target.copy(), grads))
        return loss

    trainer.begin_sequence(B)
    trainer.train_chunk(xs[:T], _mse_loss(ys[:T]), context=contexts[0])
    trainer.sg.predict, trainer.sg.update = spy_predict, spy_update
    trainer.train_chunk(xs[T : 2 * T], _mse_loss(ys[T : 2 * T]), context=contexts[1])
    used_by_core = made[0]  # M(s_2), as the core used it in the second chunk
    features_2 = trainer.net.cell.features(trainer.s)  # M's input at s_2
    trainer.train_chunk(xs[2 * T :], _mse_loss(ys[2 * T :]), ends_sequence=True, context=contexts[2])

    m_net, pred, target, grads = regressed[-1]  # the regression onto the target of M(s_2), in the third chunk
    x_in = trainer.sg.module_input(features_2, contexts[1])  # [features, one-hot context] for a conditioned M
    scale = trainer.sg.scale
    fresh = m_net.forward(x_in)[0] / scale  # M(s_2) with the weights M has when its target arrives
    assert np.abs(fresh - used_by_core).max() > 1e-3, "M's step in the second chunk must move the prediction"
    np.testing.assert_allclose(pred, fresh, rtol=1e-12, atol=1e-14)

    # the gradient M applied = central differences of its regression loss at its current weights: the network's
    # output (scale * M) against scale * target, as SyntheticGradient.update defines it
    def regression_loss():
        return F.mse(m_net.forward(x_in)[0], scale * target)[0]

    out_layer = m_net.layers[-1]
    for k in ("W", "b"):
        numeric = numerical_gradient(regression_loss, out_layer.params[k])
        np.testing.assert_allclose(grads[k], numeric, rtol=1e-6, atol=1e-9, err_msg=k)


class OracleSG(SyntheticGradient):
    """The perfect synthetic-gradient module: for the state of each boundary, that boundary's true future gradient.
    It looks the answer up by the state it reads, so predicting again for a boundary gives the same answer."""

    def __init__(self, d, states, answers):
        super().__init__(d, dtype=np.float64)
        self.states, self.answers = list(states), list(answers)

    def predict(self, h, labels=None, train=True):
        k = int(np.argmin([np.abs(h - s).max() for s in self.states]))  # the boundary whose state h is
        return self.answers[k], None

    def update(self, dh_syn, cache, dh_target):
        return 0.0


@pytest.mark.parametrize("Cell", [RNNCell, LSTMCell])
def test_true_gradient_module_makes_chunk_gradients_add_up_to_full_bptt(Cell):
    n_chunks = 3
    trainer, rng = _setup(Cell, mode="bptt")  # weights fixed (lr ~ 0): every chunk sees the same weights
    net = trainer.net
    xs = rng.standard_normal((n_chunks * T, B, D))
    ys = rng.standard_normal((n_chunks * T, B, O))

    # full BPTT over the whole sequence, and the true dL_future/ds at each boundary
    logits, ss, cache = net.forward(xs, net.initial_state(B))
    _, dlogits = _mse_loss(ys)(logits)
    net.backward(dlogits, np.zeros((B, net.state_size)), cache)
    full = _grads(net)
    true_future, boundary_states = [], []
    for k in range(1, n_chunks):
        boundary_states.append(net.cell.features(ss[k * T - 1]))
        sub = copy.deepcopy(net)
        lg, _, c = sub.forward(xs[k * T :], ss[k * T - 1])
        true_future.append(sub.state_backward(_mse_loss(ys[k * T :])(lg)[1], np.zeros((B, net.state_size)), c))

    oracle = OracleSG(net.state_size, boundary_states, true_future)
    dni = TruncatedTrainer(net, "dni", sg=oracle, sg_use_scale=1.0, clip=None)
    dni.begin_sequence(B)
    total = {k: np.zeros_like(g) for k, g in full.items()}
    for k in range(n_chunks):
        sl = slice(k * T, (k + 1) * T)
        dni.train_chunk(xs[sl], _mse_loss(ys[sl]), ends_sequence=k == n_chunks - 1)
        for name, g in _grads(net).items():
            total[name] += g
    for name, g in full.items():
        np.testing.assert_allclose(total[name], g, rtol=1e-8, atol=1e-11, err_msg=name)


def test_dni_aux_backpropagates_the_aux_error_from_the_first_step():
    trainer, rng = _setup(mode="dni_aux", aux_weight=0.5)
    A = trainer.aux.params["W"]
    A[...] = 0.2 * rng.standard_normal(A.shape)
    xs, ys = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, O))
    net0, sg0, aux0 = copy.deepcopy(trainer.net), copy.deepcopy(trainer.sg), copy.deepcopy(trainer.aux)
    trainer.begin_sequence(B)
    metrics, _ = trainer.train_chunk(xs, _mse_loss(ys))
    got = _grads(trainer.net)

    logits, ss, cache = net0.forward(xs, net0.initial_state(B))
    pred, _ = sg0.predict(net0.cell.features(ss[-1]))
    a, a_cache = aux0.forward(net0.cell.output(ss[0]))
    aux_loss, daux = F.mse(a, pred)
    assert metrics["aux_loss"] == pytest.approx(aux_loss)
    extra = np.zeros((T, B, H))
    extra[0] = aux0.backward(0.5 * daux, a_cache)
    np.testing.assert_allclose(trainer.aux.grads["W"], aux0.grads["W"], rtol=1e-9)
    net0.backward(_mse_loss(ys)(logits)[1], 0.1 * pred, cache, extra)
    for k, g in _grads(net0).items():
        np.testing.assert_allclose(got[k], g, rtol=1e-9, atol=1e-12, err_msg=k)
    assert np.abs(extra[0]).max() > 0


def test_state_carries_and_resets():
    trainer, rng = _setup(mode="dni")
    xs, ys = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, O))
    trainer.begin_sequence(B)
    trainer.train_chunk(xs, _mse_loss(ys))
    assert trainer.s is not None and trainer.pending is not None
    trainer.train_chunk(xs, _mse_loss(ys), ends_sequence=True)
    assert trainer.s is None and trainer.pending is None
    with pytest.raises(RuntimeError, match="begin_sequence"):
        trainer.train_chunk(xs, _mse_loss(ys))


def test_sg_learns_the_future_gradient_of_a_fixed_net():
    """With the core frozen and a future that is a fixed function of the boundary state (no inputs after it, fixed
    targets), the module's regression error falls by a factor of three."""
    rng = np.random.default_rng(5)
    net = RecurrentNet(LSTMCell(D, H, rng=rng, dtype=np.float64), O, rng=rng, dtype=np.float64)
    net.set_optimizer(lambda p: SGD(p, 1e-300, momentum=0.0))
    sg = SyntheticGradient(net.state_size, dtype=np.float64)
    sg.set_optimizer(lambda p: Adam(p, 1e-2))
    trainer = TruncatedTrainer(net, "dni", sg=sg, clip=None)
    losses = []
    for episode in range(300):
        xs = rng.standard_normal((2 * T, 8, D))
        xs[T:] = 0  # the future depends on s_T alone
        ys = np.ones((2 * T, 8, O))  # a target the frozen net does not fit: gradients stay nonzero
        trainer.begin_sequence(8)
        trainer.train_chunk(xs[:T], _mse_loss(ys[:T]))
        m, _ = trainer.train_chunk(xs[T:], _mse_loss(ys[T:]), ends_sequence=True)
        losses.append(m["sg_loss"])
    assert np.mean(losses[-30:]) < np.mean(losses[:10]) / 3


def test_bad_arguments_raise():
    rng = np.random.default_rng(0)
    net = RecurrentNet(LSTMCell(D, H, rng=rng), O, rng=rng)
    with pytest.raises(ValueError, match="unknown recurrent training mode"):
        TruncatedTrainer(net, "rtrl")
    with pytest.raises(ValueError, match="needs a SyntheticGradient"):
        TruncatedTrainer(net, "dni")
    with pytest.raises(ValueError, match="state has 8"):
        TruncatedTrainer(net, "dni", sg=SyntheticGradient(4))
    with pytest.raises(ValueError, match="sg_use_scale"):
        TruncatedTrainer(net, "dni", sg=SyntheticGradient(8), sg_use_scale=0)
    with pytest.raises(ValueError, match="sg_discount"):
        TruncatedTrainer(net, "dni", sg=SyntheticGradient(8), sg_discount=1.5)


def test_divergence_is_an_error():
    trainer, rng = _setup(mode="bptt")
    trainer.begin_sequence(B)
    with pytest.raises(FloatingPointError, match="diverged"):
        trainer.train_chunk(rng.standard_normal((T, B, D)), lambda lg: (float("nan"), lg))


def test_clip_grad_norm():
    rng = np.random.default_rng(0)
    net = RecurrentNet(RNNCell(D, H, rng=rng, dtype=np.float64), O, rng=rng, dtype=np.float64)
    for layer in net.layers().values():
        for g in layer.grads.values():
            g[...] = 1.0
    n = sum(g.size for layer in net.layers().values() for g in layer.grads.values())
    assert clip_grad_norm(net.layers().values(), 1.0) == pytest.approx(np.sqrt(n))
    after = np.sqrt(sum((g**2).sum() for layer in net.layers().values() for g in layer.grads.values()))
    assert after == pytest.approx(1.0)
