"""Optimisers against their textbook formulas, written out independently here in float64."""

import numpy as np
import pytest

from minidni.core.gradcheck import assert_close
from minidni.core.optim import SGD, Adam, StepSchedule, make_optimizer


def _grads(rng, shape, n):
    return [rng.standard_normal(shape) for _ in range(n)]


def test_adam_matches_the_paper_formulas():
    rng = np.random.default_rng(0)
    p = {"W": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    ref = {k: v.copy() for k, v in p.items()}
    opt = Adam(p, lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    for t in range(1, 6):
        g = {"W": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
        opt.step(g)
        for k in p:  # Kingma & Ba, Algorithm 1
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - 0.9**t), v[k] / (1 - 0.999**t)
            ref[k] = ref[k] - 1e-2 * m_hat / (np.sqrt(v_hat) + 1e-8)
        for k in p:
            assert_close(p[k], ref[k], rtol=1e-12, atol=1e-14, name=f"Adam step {t} {k}")
    m_t, v_t = opt.moments("W")
    assert_close(m_t, m["W"], rtol=1e-12, name="m_t")
    assert_close(v_t, v["W"], rtol=1e-12, name="v_t")


def test_sgd_momentum_matches_heavy_ball():
    rng = np.random.default_rng(1)
    p = {"W": rng.standard_normal((2, 3))}
    ref, vel = p["W"].copy(), np.zeros((2, 3))
    opt = SGD(p, lr=0.1, momentum=0.9)
    for g in _grads(rng, (2, 3), 4):
        opt.step({"W": g})
        vel = 0.9 * vel + g
        ref = ref - 0.1 * vel
    assert_close(p["W"], ref, rtol=1e-12)


def test_plain_sgd():
    p = {"W": np.ones(3)}
    SGD(p, lr=0.5, momentum=0.0).step({"W": np.array([1.0, 2.0, -2.0])})
    assert_close(p["W"], np.array([0.5, 0.0, 2.0]), rtol=0, atol=0)


def test_updates_are_in_place_and_keep_dtype():
    p = {"W": np.ones((2, 2), np.float32)}
    W = p["W"]
    Adam(p, lr=1e-3).step({"W": np.ones((2, 2), np.float32)})
    assert p["W"] is W and W.dtype == np.float32
    assert np.all(W < 1)


def test_state_dict_round_trip():
    rng = np.random.default_rng(2)
    p1 = {"W": rng.standard_normal(5)}
    p2 = {"W": p1["W"].copy()}
    a, b = Adam(p1, lr=1e-2), Adam(p2, lr=1e-2)
    a.step({"W": rng.standard_normal(5)})
    b.load_state_dict({"t": a.t, "lr": a.lr, "arrays": {k: v.copy() for k, v in a.state_arrays().items()}})
    p2["W"][...] = p1["W"]
    g = rng.standard_normal(5)
    a.step({"W": g})
    b.step({"W": g.copy()})
    assert np.array_equal(p1["W"], p2["W"])


def test_step_schedule():
    s = StepSchedule([300, 400], gamma=0.1)
    assert s.factor(0) == 1 and s.factor(299) == 1
    assert s.factor(300) == pytest.approx(0.1) and s.factor(400) == pytest.approx(0.01)
    assert StepSchedule().factor(10**9) == 1
    with pytest.raises(ValueError, match="positive step counts"):
        StepSchedule([0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="learning rate must be positive"):
        Adam({"W": np.zeros(2)}, lr=0)
    with pytest.raises(ValueError, match="momentum"):
        SGD({"W": np.zeros(2)}, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop", {"W": np.zeros(2)}, 0.1)
