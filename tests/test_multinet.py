"""The two-timescale system (minidni.recurrent.multinet): which parameters each system trains, the delayed true
gradient that becomes the link module's target, the scaled prediction A uses, the locked reference, and a short learning
run."""

import copy
import dataclasses
import json
import os

import numpy as np
import pytest

from minidni.core.gradcheck import numerical_gradient
from minidni.data import checkpoint
from minidni.recurrent import multinet
from minidni.recurrent.multinet import (
    MultiNetConfig,
    TwoTimescaleSystem,
    softmax_xent_sum,
    train_multinet,
)

K, T, BATCH = 4, 3, 3


def tiny(system, **kw):
    fields = dict(system=system, T=T, symbols=K, hidden_a=5, hidden_b=4, message=3, batch=BATCH, clip=1e9)
    fields.update(kw)
    return MultiNetConfig(**fields)


def symbols(rng, n=T):
    return rng.integers(0, K, size=(n, BATCH))


def params(*parts):
    """Copies of every parameter of the given RecurrentNets / layers."""
    out = {}
    for i, part in enumerate(parts):
        layers = part.layers() if hasattr(part, "layers") and callable(part.layers) else {"": part}
        for name, layer in layers.items():
            out.update({f"{i}.{name}.{k}": v.copy() for k, v in layer.params.items()})
    return out


def changed(before, after):
    return {k for k in before if not np.array_equal(before[k], after[k])}


def grads(net):
    return {f"{n}.{k}": g.copy() for n, layer in net.layers().items() for k, g in layer.grads.items()}


def true_message_gradients(b, s_b, ms, ys):
    """dL_B/dm for each message: B (a copy, as it was before its chunk) forwards the messages from its state and
    backpropagates its loss, the sum over ticks of the batch-mean cross-entropy."""
    logits, ss, cache = b.forward(ms, s_b)
    _, dlogits = softmax_xent_sum(logits, ys)
    _, dms = b.backward(dlogits, np.zeros_like(ss[-1]), cache, need_dxs=True)
    return dms


def linear_regression_gradients(x, W, b, target):
    """Central differences, in float64, of a linear module's regression loss (1/B) ||x W + b - target||^2 with
    respect to W and b (the link module's network regresses its output onto scale * target)."""
    x, W, b, target = (np.asarray(a, dtype=np.float64) for a in (x, W, b, target))
    loss = lambda: float(((x @ W + b - target) ** 2).sum()) / x.shape[0]
    return numerical_gradient(loss, W), numerical_gradient(loss, b)


def random_link_module(system, rng):
    """The link module's output layer starts at zero (so its first predictions are 0); give it weights."""
    out = system.sg.net.layers[-1]
    out.params["W"][...] = rng.standard_normal(out.params["W"].shape)
    out.params["b"][...] = rng.standard_normal(out.params["b"].shape)


# ------------------------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    "field,value",
    [("system", "locked"), ("T", 1), ("T", 0), ("symbols", 1), ("hidden_a", 0), ("hidden_b", 0), ("message", 0),
     ("b_ticks", 0), ("batch", 0), ("ticks", 0), ("eval_ticks", 0), ("log_every", 0), ("T", 2.5), ("lr", 0.0),
     ("lr", float("nan")), ("sg_use_scale", -1.0), ("sg_use_scale", float("inf"))],
)  # fmt: skip
def test_validate_names_the_bad_field(field, value):
    cfg = dataclasses.replace(MultiNetConfig(), **{field: value})
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        cfg.validate()
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        TwoTimescaleSystem(cfg)


def test_good_config_passes():
    cfg = MultiNetConfig(T=2, symbols=2)
    assert cfg.validate() is cfg


# ------------------------------------------------------------------------------------------------------------
# which parameters each system trains


def test_cut_trains_a_and_b_but_never_the_message_head():
    system = TwoTimescaleSystem(tiny("cut", b_ticks=1))
    rng = np.random.default_rng(0)
    a0, w0, b0 = params(system.a), params(system.w_m), params(system.b)
    for _ in range(3):
        system.a_chunk(symbols(rng))
    assert changed(w0, params(system.w_m)) == set()
    assert changed(a0, params(system.a)) == set(a0)  # cell and readout
    assert changed(b0, params(system.b)) == set(b0)
    assert system.sg is None


def test_frozen_trains_only_b():
    system = TwoTimescaleSystem(tiny("frozen", b_ticks=1))
    rng = np.random.default_rng(0)
    a0, w0, b0 = params(system.a), params(system.w_m), params(system.b)
    for _ in range(3):
        _, _, b_acc = system.a_chunk(symbols(rng))
        assert 0 <= b_acc <= 1
    assert changed(a0, params(system.a)) == set()
    assert changed(w0, params(system.w_m)) == set()
    assert changed(b0, params(system.b)) == set(b0)


@pytest.mark.parametrize("system_name", ["dni", "bprop"])
def test_dni_and_bprop_train_the_message_head(system_name):
    system = TwoTimescaleSystem(tiny(system_name, b_ticks=1))
    rng = np.random.default_rng(0)
    if system.sg is not None:
        random_link_module(system, rng)
    w0 = params(system.w_m)
    system.a_chunk(symbols(rng))
    assert changed(w0, params(system.w_m)) == set(w0)


# ------------------------------------------------------------------------------------------------------------
# dni: late true gradients become the link module's targets


def test_b_runs_every_b_ticks_a_chunks_and_its_true_gradients_are_the_targets():
    system = TwoTimescaleSystem(tiny("dni", b_ticks=3))
    rng = np.random.default_rng(1)
    random_link_module(system, rng)

    recorded = {"targets": [], "before_b": []}
    real_update, real_b_chunk = system.sg.update, system._b_chunk

    def spy_update(pred, cache, target):
        recorded["targets"].append(target.copy())
        return real_update(pred, cache, target)

    def spy_b_chunk():  # B as it is before its chunk: a copy, its state, and the messages in its inbox
        inbox = [(m.copy(), y.copy()) for m, y in system.inbox]
        recorded["before_b"].append((copy.deepcopy(system.b), system.s_b.copy(), inbox))
        return real_b_chunk()

    system.sg.update = spy_update
    system._b_chunk = spy_b_chunk

    for tick in range(1, 7):
        _, _, b_acc = system.a_chunk(symbols(rng))
        assert len(system.pending) == len(system.inbox) == tick % 3  # grows to 3, then B runs and it empties
        assert (b_acc is None) == (tick % 3 != 0)
    assert len(recorded["before_b"]) == 2 and len(recorded["targets"]) == 6

    for j, (b, s_b, inbox) in enumerate(recorded["before_b"]):
        ms = np.stack([m for m, _ in inbox])
        ys = np.stack([y for _, y in inbox])
        dms = true_message_gradients(b, s_b, ms, ys)
        assert np.abs(dms).max() > 0
        for i in range(3):
            np.testing.assert_array_equal(recorded["targets"][3 * j + i], dms[i])
        if j == 1:  # the second chunk's B is not the first's: B trained in between
            assert not np.array_equal(recorded["before_b"][0][0].cell.params["W"], b.cell.params["W"])
    assert len(system.sg_losses) == 6


def test_the_link_module_regresses_a_fresh_prediction_of_its_current_weights():
    """B's chunk brings the targets of b_ticks messages at once, and the module takes one regression step per
    message. So when it regresses any message but the chunk's first, it has moved since it predicted for it (its
    steps on the chunk's earlier messages). It must predict again from the same input with its current weights,
    and its gradient must be that of the regression loss where it now is."""
    system = TwoTimescaleSystem(tiny("dni", b_ticks=3, sg_lr=0.05))
    rng = np.random.default_rng(5)
    random_link_module(system, rng)
    made, used, regressed = [], [], []  # every prediction; the one A used per tick; (M's net before, pred, ...)
    real_predict, real_update = system.sg.predict, system.sg.update

    def spy_predict(h, *args, **kw):
        out = real_predict(h, *args, **kw)
        made.append((h.copy(), out[0].copy()))
        return out

    def spy_update(pred, cache, target):
        before = copy.deepcopy(system.sg.net)  # M's weights when the target arrives
        loss = real_update(pred, cache, target)
        grads_after = {k: g.copy() for k, g in system.sg.net.layers[-1].grads.items()}
        regressed.append((before, pred.copy(), target.copy(), grads_after))
        return loss

    system.sg.predict, system.sg.update = spy_predict, spy_update
    for _ in range(6):
        first = len(made)
        system.a_chunk(symbols(rng))
        used.append(made[first])  # a_chunk predicts for its message first; B's chunk (if it runs) predicts again
    assert len(regressed) == 6

    scale = system.sg.scale
    for j, ((x, pred_used), (m_net, pred, target, grads_after)) in enumerate(zip(used, regressed)):
        fresh = m_net.forward(x)[0] / scale  # M's prediction for message j with its weights of that moment
        np.testing.assert_allclose(pred, fresh, rtol=1e-6, atol=1e-7, err_msg=f"message {j}")
        if j % 3:  # M has taken a regression step (on an earlier message of B's chunk) since it predicted for j
            assert np.abs(fresh - pred_used).max() > 1e-3, f"message {j}: M must have moved"
        # the gradient applied = that of the regression loss at the weights M has when the target arrives
        out = m_net.layers[-1]
        dW, db = linear_regression_gradients(x, out.params["W"], out.params["b"], scale * target)
        np.testing.assert_allclose(grads_after["W"], dW, rtol=1e-3, atol=1e-4, err_msg=f"message {j}: dW")
        np.testing.assert_allclose(grads_after["b"], db, rtol=1e-3, atol=1e-4, err_msg=f"message {j}: db")


@pytest.mark.parametrize("sg_context", [False, True])
def test_the_link_prediction_enters_a_scaled_by_sg_use_scale(sg_context):
    system = TwoTimescaleSystem(tiny("dni", sg_use_scale=0.5, sg_context=sg_context))
    rng = np.random.default_rng(2)
    random_link_module(system, rng)
    xs = symbols(rng)
    a0, w0, sg0, s_a = copy.deepcopy(system.a), copy.deepcopy(system.w_m), copy.deepcopy(system.sg), system.s_a.copy()
    system.a_chunk(xs)
    got = {**grads(system.a), **{f"w_m.{k}": g.copy() for k, g in system.w_m.grads.items()}}

    logits, ss, cache = a0.forward(xs, s_a)
    _, dlogits = softmax_xent_sum(logits, xs)
    _, m_cache = w0.forward(a0.cell.output(ss[-1]))
    state = np.concatenate([ss[-1][:, : a0.cell.hidden], np.tanh(ss[-1][:, a0.cell.hidden :])], 1)  # [h, tanh c]
    sg_in = state
    if sg_context:
        sg_in = np.concatenate([state, np.eye(K, dtype=ss.dtype)[xs].transpose(1, 0, 2).reshape(BATCH, T * K)], 1)
    pred, _ = sg0.predict(sg_in)
    assert np.abs(pred).max() > 1e-3
    matches = {}
    for scale in (0.5, 1.0, 0.1):
        a1, w1 = copy.deepcopy(a0), copy.deepcopy(w0)
        extra = np.zeros(ss.shape[:2] + (a1.cell.hidden,), dtype=ss.dtype)
        extra[-1] = w1.backward(scale * pred, m_cache)
        a1.backward(dlogits, np.zeros_like(ss[-1]), cache, extra)
        want = {**grads(a1), **{f"w_m.{k}": g for k, g in w1.grads.items()}}
        matches[scale] = all(np.allclose(got[k], want[k], rtol=1e-6, atol=1e-9) for k in want)
    assert matches == {0.5: True, 1.0: False, 0.1: False}


def test_sg_context_appends_the_chunks_symbols_one_hot():
    cfg = tiny("dni", sg_context=True)
    system = TwoTimescaleSystem(cfg)
    assert system.sg.d == 2 * cfg.hidden_a + T * K
    rng = np.random.default_rng(3)
    xs = symbols(rng)
    s = rng.standard_normal((BATCH, 2 * cfg.hidden_a)).astype(np.float32)
    got = system._sg_input(s, xs)
    assert got.shape == (BATCH, 2 * cfg.hidden_a + T * K)
    H = cfg.hidden_a
    np.testing.assert_array_equal(got[:, :H], s[:, :H])  # h as it is
    np.testing.assert_allclose(got[:, H : 2 * H], np.tanh(s[:, H:]), rtol=1e-6)  # c squashed
    for b in range(BATCH):
        for t in range(T):
            block = got[b, 2 * cfg.hidden_a + t * K : 2 * cfg.hidden_a + (t + 1) * K]
            np.testing.assert_array_equal(block, np.eye(K)[xs[t, b]])
    seen = []  # and a_chunk hands the module exactly that
    real_predict = system.sg.predict
    system.sg.predict = lambda h, *a, **k: seen.append(h.copy()) or real_predict(h, *a, **k)
    system.a_chunk(xs)
    assert seen[0].shape == (BATCH, 2 * cfg.hidden_a + T * K)
    np.testing.assert_array_equal(seen[0][:, 2 * cfg.hidden_a :], got[:, 2 * cfg.hidden_a :])
    s_a = system.s_a  # A's state at the message, as the module reads it: [h, tanh c]
    np.testing.assert_allclose(seen[0][:, : 2 * H], np.concatenate([s_a[:, :H], np.tanh(s_a[:, H:])], 1), rtol=1e-6)


def test_without_context_the_module_reads_the_state_alone():
    cfg = tiny("dni", sg_context=False)
    system = TwoTimescaleSystem(cfg)
    assert system.sg.d == 2 * cfg.hidden_a and system.sg.d_out == cfg.message
    s = np.full((BATCH, 2 * cfg.hidden_a), 3.0, dtype=np.float32)
    got = system._sg_input(s, symbols(np.random.default_rng(0)))
    np.testing.assert_array_equal(got[:, : cfg.hidden_a], 3.0)
    np.testing.assert_allclose(got[:, cfg.hidden_a :], np.tanh(3.0), rtol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# bprop: A waits for B and gets the true gradient


def test_bprop_gives_a_the_true_gradient_of_b_at_once():
    system = TwoTimescaleSystem(tiny("bprop", b_ticks=3))
    assert system.b_ticks == 1 and system.sg is None
    rng = np.random.default_rng(4)
    received = []
    real_backward = system.w_m.backward
    system.w_m.backward = lambda dm, cache, *a, **k: received.append(dm.copy()) or real_backward(dm, cache, *a, **k)
    for _ in range(3):
        xs = symbols(rng)
        a0, w0, b0 = copy.deepcopy(system.a), copy.deepcopy(system.w_m), copy.deepcopy(system.b)
        s_a, s_b = system.s_a.copy(), system.s_b.copy()
        _, _, b_acc = system.a_chunk(xs)
        assert b_acc is not None and system.inbox == [] and system.pending == []
        _, ss, _ = a0.forward(xs, s_a)
        m, _ = w0.forward(a0.cell.output(ss[-1]))
        dm = true_message_gradients(b0, s_b, m[None], xs[:1])[0]
        assert np.abs(dm).max() > 0
        np.testing.assert_array_equal(received[-1], dm)
    assert len(received) == 3


# ------------------------------------------------------------------------------------------------------------
# training runs


def test_train_multinet_writes_config_and_metrics_atomically(tmp_path, monkeypatch):
    written = []
    real = multinet.atomic_write
    spy = lambda path, data: written.append(path) or real(path, data)
    monkeypatch.setattr(multinet, "atomic_write", spy)
    monkeypatch.setattr(checkpoint, "atomic_write", spy)  # metrics.jsonl goes through checkpoint.write_jsonl
    out = tmp_path / "run"
    cfg = tiny("dni", ticks=12, log_every=5, eval_ticks=6, out=str(out), sg_context=True)
    metrics = train_multinet(cfg, log=lambda s: None)
    assert sorted(os.listdir(out)) == ["config.json", "metrics.jsonl"]  # no temporary files left
    assert {os.path.basename(p) for p in written} == {"config.json", "metrics.jsonl"}
    assert json.loads((out / "config.json").read_text()) == dataclasses.asdict(cfg)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == metrics
    assert [m["tick"] for m in metrics] == [5, 10, 12]
    final = metrics[-1]
    assert set(final) == {"tick", "b_accuracy", "a_accuracy", "a_loss", "sg_loss", "seconds", "solved"}
    # B ran (and the link module learnt) at ticks 3, 6, 9, 12: every record holds the mean of its new SG losses
    assert all(m["sg_loss"] is not None and m["sg_loss"] >= 0 for m in metrics)
    assert isinstance(final["solved"], bool) and final["solved"] == (final["b_accuracy"] >= 0.95)
    assert 0 <= final["b_accuracy"] <= 1 and 0 <= final["a_accuracy"] <= 1
    assert all("solved" not in m for m in metrics[:-1])


def test_train_multinet_is_deterministic_and_needs_no_out_directory():
    cfg = tiny("dni", ticks=9, log_every=3, sg_context=True)
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]
    assert strip(train_multinet(cfg, log=lambda s: None)) == strip(train_multinet(cfg, log=lambda s: None))


def test_a_learns_from_b_only_through_the_link():
    """T = 3, 4 symbols (chance 0.25). B can name the first symbol of the window only if A learns, from B's
    gradient, to keep it in its message: the locked reference and the DNI link solve it in a few hundred ticks,
    while with the link cut B stays near chance, and a random A passes on too little."""
    base = dict(T=3, symbols=4, hidden_a=16, hidden_b=16, message=4, batch=16, lr=1e-2, log_every=100)
    acc = {}
    for system, ticks in (("bprop", 400), ("dni", 800), ("cut", 400), ("frozen", 400)):
        cfg = MultiNetConfig(system=system, ticks=ticks, eval_ticks=60, sg_context=True, **base)
        acc[system] = train_multinet(cfg, log=lambda s: None)[-1]["b_accuracy"]
    assert acc["bprop"] >= 0.95 and acc["dni"] >= 0.95, acc
    assert acc["cut"] < 0.35 and acc["frozen"] < 0.6, acc
