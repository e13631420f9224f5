"""Stochastic updates: the gate's statistics, and exactly which parameters a gated step may move."""

import copy

import numpy as np
import pytest

from minidni.dni import stochastic
from minidni.dni.network import build_network
from minidni.dni import steps
from minidni.dni.steps import forward_hidden
from minidni.core.gradcheck import assert_close
from minidni.runs.train import TrainConfig, train
from minidni.cuda.fused import use_kernels

f64 = np.float64


def tiny_net(mode, p_update=0.5, depth=4, seed=0, **kw):
    return build_network(
        depth=depth, mode=mode, sg="linear", d_in=7, hidden=5, n_classes=4, optimizer="sgd", lr=0.1, sg_lr=0.01,
        momentum=0.0, seed=seed, dtype=f64, p_update=p_update, **kw,
    )  # fmt: skip


def batch(seed=0, B=8, d_in=7, n_classes=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, d_in)), rng.integers(0, n_classes, B)


def snapshot(net):
    return {k: v.copy() for k, v in net.state_arrays().items() if "running_" not in k}


def changed(net, before):
    return {k for k, v in net.state_arrays().items() if k in before and not np.array_equal(v, before[k])}


def moved_parts(net, before):
    """The prefixes ('block0', 'sg1', ...) of every part whose parameters changed."""
    return {k.split(".")[0] for k in changed(net, before)}


def nonzero_modules(net):
    for block in net.hidden:  # give the SG modules something non-zero to say
        block.sg.net.layers[-1].params["W"][...] = 0.05


# ------------------------------------------------------------------------------------------------------------
# the gate


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_each_block_is_chosen_in_about_p_of_the_passes(p):
    gate, n, draws = stochastic.UpdateGate(p, seed=1), 4, 20_000
    counts = np.zeros(n)
    for _ in range(draws):
        counts[gate.draw(n)] += 1
    sigma = np.sqrt(p * (1 - p) / draws)
    assert np.all(np.abs(counts / draws - p) < 5 * sigma), (counts / draws, p)


def test_the_order_is_random_and_p_one_chooses_every_block():
    gate = stochastic.UpdateGate(1.0, seed=0)
    orders = {tuple(gate.draw(3)) for _ in range(300)}
    assert all(sorted(o) == [0, 1, 2] for o in orders)
    assert len(orders) == 6  # every permutation of 3 blocks shows up


def test_the_gate_replays_from_its_state():
    gate = stochastic.UpdateGate(0.3, seed=4)
    state = copy.deepcopy(gate.state())
    first = [gate.draw(5) for _ in range(50)]
    gate.set_state(state)
    assert [gate.draw(5) for _ in range(50)] == first


def test_numpy_probabilities_are_accepted():
    assert stochastic.UpdateGate(np.float32(0.25)).p_update == 0.25


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan"), "0.5", True])
def test_bad_probabilities(p):
    with pytest.raises(ValueError, match="p_update"):
        stochastic.UpdateGate(p)
    with pytest.raises(ValueError, match="p_update"):
        tiny_net("cdni", p_update=p)


# ------------------------------------------------------------------------------------------------------------
# gated backprop: the chain breaks at the first block that skips


def test_gated_bprop_with_every_block_chosen_is_a_backprop_step():
    x, y = batch(1)
    gated, plain = tiny_net("bprop", p_update=0.5), tiny_net("bprop", p_update=1.0)
    steps.gated_bprop_step(gated, x, y, chosen=[3, 2, 1, 0])
    plain.train_step(x, y)
    for (k, a), b in zip(snapshot(gated).items(), snapshot(plain).values(), strict=True):
        assert_close(a, b, rtol=0, atol=0, name=k)


@pytest.mark.parametrize(
    "chosen,updated",
    [([2, 1, 0], []), ([3, 1, 0], ["block3"]), ([0, 3, 2], ["block3", "block2"]), ([3, 2, 1, 0], None)],
)
def test_gated_bprop_stops_at_the_first_block_that_skipped(chosen, updated):
    net = tiny_net("bprop")
    x, y = batch(2)
    before = snapshot(net)
    result = steps.gated_bprop_step(net, x, y, chosen)
    expected = {f"block{j}" for j in range(4)} if updated is None else set(updated)
    assert moved_parts(net, before) == expected
    assert sorted(result["updated"]) == sorted(int(b[-1]) for b in expected)


def test_gated_bprop_block_i_updates_with_probability_p_to_the_n_minus_i():
    """FCN 4 at p = 0.5: the output block updates in p of the steps, block i in p^(4 - i): the coins of the
    blocks above it (the paper's p^3 for the first layer: the chance its gradient arrives) and its own."""
    p, n_steps = 0.5, 4000
    net = tiny_net("bprop", p_update=p)
    x, y = batch(3)
    records = [steps.gated_step(net, x, y) for _ in range(n_steps)]
    frac = stochastic.update_counts(records, 4)
    expected = np.array([p**4, p**3, p**2, p])
    sigma = np.sqrt(expected * (1 - expected) / n_steps)
    assert np.all(np.abs(frac - expected) < 5 * sigma), (frac, expected)


# ------------------------------------------------------------------------------------------------------------
# gated DNI: a block updates iff its coin came up; M_j learns iff block j ran its backward


@pytest.mark.parametrize("chosen", [[], [1], [3], [2, 0], [0, 1, 2, 3], [3, 0, 2, 1]])
def test_gated_dni_moves_exactly_the_chosen_blocks_and_the_modules_below_them(chosen):
    net = tiny_net("cdni")
    nonzero_modules(net)
    x, y = batch(4)
    before = snapshot(net)
    result = steps.gated_dni_step(net, x, y, chosen)
    # block j (j > 0) produced dx_j, the target of M_j = sg{j-1}: that module learns
    expected = {f"block{j}" for j in chosen} | {f"sg{j - 1}" for j in chosen if j > 0}
    assert moved_parts(net, before) == expected
    assert [i for i, v in enumerate(result["sg_loss"]) if v is not None] == sorted(j - 1 for j in chosen if j > 0)


def test_gated_dni_block_update_uses_the_module_as_it_is_when_the_block_runs():
    """Order matters: if block 2 runs first, M_2 (sg1) has already taken its regression step when block 1 asks
    it for a synthetic gradient, so block 1 moves differently than when it runs first."""
    x, y = batch(5)
    nets = {}
    for order in ((1, 2), (2, 1)):
        net = tiny_net("cdni")
        nonzero_modules(net)
        steps.gated_dni_step(net, x, y, list(order))
        nets[order] = net
    a, b = (n.state_arrays()["block1.0.W"] for n in nets.values())
    assert not np.allclose(a, b)
    # block 2's own update does not depend on the order: nothing it reads changes in between
    assert_close(nets[(1, 2)].state_arrays()["block2.0.W"], nets[(2, 1)].state_arrays()["block2.0.W"], rtol=0,
                 atol=0, name="block2.0.W")  # fmt: skip


def test_gated_dni_step_matches_its_written_out_form():
    """Chosen [2, 1]: block 2 updates from M_3's prediction and M_2 regresses onto block 2's dx; then block 1
    updates from the *updated* M_2, and M_1 regresses onto block 1's dx."""
    x, y = batch(6)
    net = tiny_net("cdni")
    nonzero_modules(net)
    ref = copy.deepcopy(net)
    steps.gated_dni_step(net, x, y, [2, 1])

    hs, caches = forward_hidden(ref, x)
    dx2, _, _ = ref.hidden[2].synthetic_step(hs[2], caches[2], y)
    dh_syn, cache, _ = ref.hidden[1].synthetic_gradient(hs[1], y)
    ref.hidden[1].sg_update(dh_syn, cache, dh_target=dx2)
    dx1, _, _ = ref.hidden[1].synthetic_step(hs[1], caches[1], y)
    dh_syn, cache, _ = ref.hidden[0].synthetic_gradient(hs[0], y)
    ref.hidden[0].sg_update(dh_syn, cache, dh_target=dx1)
    for (k, a), b in zip(snapshot(net).items(), snapshot(ref).values(), strict=True):
        assert_close(a, b, rtol=0, atol=0, name=k)


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    monkeypatch.setattr("minidni.runs.train.plot_learning_curves", lambda *a, **k: None)  # matplotlib is slow


def test_dni_blocks_update_in_about_p_of_the_steps_in_a_real_run(tmp_path):
    """update_frac in the metrics: ~p for every block under cDNI (5 sigma over the run's steps)."""
    cfg = TrainConfig(data="spirals", model="fcn4", mode="cdni", hidden=16, batch=32, epochs=2, p_update=0.3,
                      lr=1e-2, sg_lr=1e-3, val_size=100, seed=0, out=str(tmp_path / "run"), progress=False)  # fmt: skip
    metrics = train(cfg, log=lambda s: None)
    steps = metrics[0]["step"]
    sigma = np.sqrt(0.3 * 0.7 / steps)
    for m in metrics:
        assert len(m["update_frac"]) == 4
        assert all(abs(f - 0.3) < 5 * sigma for f in m["update_frac"]), m["update_frac"]


def test_stochastic_run_resumes_bit_identically(tmp_path):
    """The gate's coins are in the checkpoint: 2 epochs, stop, 2 more == 4 epochs straight (constant rate)."""
    common = dict(data="spirals", model="fcn4", mode="cdni", hidden=16, batch=32, p_update=0.4, lr=1e-2, sg_lr=1e-3,
                  lr_decay_at=(), val_size=100, train_subset=320, seed=0, progress=False)  # fmt: skip
    straight = train(TrainConfig(epochs=4, out=str(tmp_path / "a"), **common), log=lambda s: None)
    train(TrainConfig(epochs=2, out=str(tmp_path / "b"), **common), log=lambda s: None)
    resumed = train(TrainConfig(epochs=4, out=str(tmp_path / "b"), **common), resume=True, log=lambda s: None)
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]  # noqa: E731
    assert strip(straight) == strip(resumed)


def test_stochastic_updates_refuse_true_targets_and_kernels():
    with pytest.raises(ValueError, match="bootstrap"):
        tiny_net("cdni", sg_target="true")
    with pytest.raises(ValueError, match="fused form"):
        use_kernels(tiny_net("cdni"), object())
