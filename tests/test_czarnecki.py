"""Czarnecki et al.'s small experiments (the package minidni.experiments.czarnecki): the SG modules' gradients by
float64 central differences, the step by backprop's, the invariant "an SG that returns the true gradient is
backprop", where SG training converges (to the optimum under MSE; to the quadratic model's minimiser with a linear
SG under log loss), the smoke budget end to end through the command line, and the errors on bad input."""

import dataclasses
import json

import numpy as np
import pytest

from minidni.cli import main
from minidni.core import functional as F
from minidni.core.gradcheck import assert_close, check_function, numerical_gradient
from minidni.experiments import czarnecki as cz
from minidni.experiments.czarnecki import report

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py: numpy backend, temporary data cache
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rows_and_targets(B=6, D=3, K=1, seed=0, labels=False):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((B, D))
    t = (rng.random((B, K)) < 0.5).astype(float) if labels else rng.standard_normal((B, K))
    return h, t, rng


# -------------------------------------------------------------------------------------------------------------
# gradients by central differences


@pytest.mark.parametrize("loss", cz.LOSSES)
def test_loss_gradient_matches_central_differences(loss):
    z, t, _ = rows_and_targets(B=5, D=1, labels=loss == "log")
    z *= 3  # logits well away from 0: the sigmoid's curvature matters
    _, dz = cz.loss_and_grad(loss, z, t)
    check_function(lambda: cz.loss_and_grad(loss, z, t)[0], {"z": z}, {"z": dz})


def test_linear_sg_gradients_match_central_differences():
    h, t, rng = rows_and_targets(B=6, D=3)
    sg = cz.LinearSG(3, 1, lr=0.1)
    for p in sg.params.values():
        p[...] = rng.standard_normal(p.shape)  # not the zero init: every term of the gradient matters
    g_target = rng.standard_normal((6, 3))
    g, cache = sg.predict(h, t)
    sg.backward(g, cache, g_target)

    def sg_loss():
        return F.mse(sg.predict(h, t)[0], g_target)[0]

    check_function(sg_loss, sg.params, {k: v.copy() for k, v in sg.grads.items()})


def test_sigmoid_sg_gradients_match_central_differences():
    h, t, rng = rows_and_targets(B=7, D=1, labels=True)
    h *= 2
    sg = cz.SigmoidSG(1, 1, lr=0.1)
    sg.params["A"][...] = 0.7
    sg.params["c"][...] = -0.3
    g_target = rng.standard_normal((7, 1))
    g, cache = sg.predict(h, t)
    assert_close(g, 1 / (1 + np.exp(-(0.7 * h - 0.3))) - t, rtol=1e-12, name="sigma(h A + c) - t")
    sg.backward(g, cache, g_target)

    def sg_loss():
        return F.mse(sg.predict(h, t)[0], g_target)[0]

    check_function(sg_loss, sg.params, {k: v.copy() for k, v in sg.grads.items()})


@pytest.mark.parametrize("loss", cz.LOSSES)
def test_backprop_step_gradients_match_central_differences(loss):
    problem = cz.make_problem(loss, 3, 12, seed=1)
    layers = cz.build_model("deep", 3, depth=4, seed=1)
    cz.compute_step(layers, {}, problem.x, problem.t, loss)
    for i, layer in enumerate(layers):
        W = layer.params["W"]

        def total():
            hs, _ = cz.forward(layers, problem.x)
            return cz.loss_and_grad(loss, hs[-1], problem.t)[0]

        assert_close(layer.grads["W"], numerical_gradient(total, W), rtol=1e-6, atol=1e-9, name=f"dW_{i + 1}")


# -------------------------------------------------------------------------------------------------------------
# exact invariants


def step_of(layers, sgs, problem):
    cz.compute_step(layers, sgs, problem.x, problem.t, problem.loss)
    grads = [layer.grads["W"].copy() for layer in layers]
    cz.apply_step(layers, sgs)
    return grads, [layer.params["W"].copy() for layer in layers]


@pytest.mark.parametrize("loss", cz.LOSSES)
@pytest.mark.parametrize("mode", ["sg_out", "sg_mid", "sg_every"])
def test_an_sg_that_returns_the_true_gradient_makes_the_step_a_backprop_step(loss, mode):
    # B = 64, a power of two: the per-example scaling g = B * delta and back (g / B) is exact in floating point
    problem = cz.make_problem(loss, 4, 64, seed=2)
    reference = cz.build_model("deep", 4, depth=6, lr=0.05, seed=3)
    layers = cz.build_model("deep", 4, depth=6, lr=0.05, seed=3)
    sgs = {i: cz.make_sg("oracle", 4, 1, 0.1) for i in cz.sg_positions(mode, 6)}
    for _ in range(3):  # three steps: the states stay identical, bit for bit
        bp_grads, bp_params = step_of(reference, {}, problem)
        sg_grads, sg_params = step_of(layers, sgs, problem)
        for a, b in zip(sg_grads + sg_params, bp_grads + bp_params):
            np.testing.assert_array_equal(a, b)


def test_a_linear_sg_set_to_the_true_map_makes_the_step_a_backprop_step():
    """Under MSE the true gradient at h_i is linear in (h_i, t): g = h_i (2 P P^T) + t (-2 P^T), P = W_{i+1}..W_L.
    Modules holding exactly those parameters give backprop's step (to rounding) and have zero regression loss."""
    problem = cz.make_problem("mse", 3, 40, seed=4)
    reference = cz.build_model("deep", 3, depth=5, seed=5)
    layers = cz.build_model("deep", 3, depth=5, seed=5)
    sgs = {i: cz.LinearSG(3 if i < 5 else 1, 1, 0.1) for i in cz.sg_positions("sg_every", 5)}
    for i, sg in sgs.items():
        for k, v in cz.true_sg_map(layers, i, "mse", "linear").items():
            sg.params[k][...] = v
    _, sg_losses = cz.compute_step(layers, sgs, problem.x, problem.t, "mse")
    cz.compute_step(reference, {}, problem.x, problem.t, "mse")
    for i, (a, b) in enumerate(zip(layers, reference)):
        assert_close(a.grads["W"], b.grads["W"], rtol=1e-10, atol=1e-13, name=f"dW_{i + 1}")
    assert max(sg_losses.values()) < 1e-20, sg_losses


def test_a_sigmoid_sg_with_identity_map_is_the_true_log_loss_gradient():
    problem = cz.make_problem("log", 3, 50, seed=6)
    reference = cz.build_model("linear", 3, seed=7)
    layers = cz.build_model("linear", 3, seed=7)
    sg = cz.SigmoidSG(1, 1, 0.1)
    sg.params["A"][...] = 1.0  # sigma(z) - t, exactly dL/dz per example
    _, sg_losses = cz.compute_step(layers, {1: sg}, problem.x, problem.t, "log")
    cz.compute_step(reference, {}, problem.x, problem.t, "log")
    assert_close(layers[0].grads["W"], reference[0].grads["W"], rtol=1e-12, atol=1e-15, name="dW")
    assert sg_losses[1] < 1e-28


def test_fresh_linear_modules_predict_zero_so_only_the_top_layer_moves():
    problem = cz.make_problem("mse", 3, 30, seed=8)
    layers = cz.build_model("deep", 3, depth=4, seed=8)
    sgs = {i: cz.make_sg("linear", 3, 1, 0.1) for i in cz.sg_positions("sg_every", 4)}
    before = [layer.params["W"].copy() for layer in layers]
    cz.compute_step(layers, sgs, problem.x, problem.t, "mse")
    cz.apply_step(layers, sgs)
    for i in range(3):
        np.testing.assert_array_equal(layers[i].params["W"], before[i])
    assert not np.array_equal(layers[3].params["W"], before[3])


def test_bootstrapped_target_is_the_prediction_above_carried_down_one_layer():
    """Module i regresses onto B * (g_{i+1} / B) W_{i+1}^T; the top module onto the true per-example gradient."""
    problem = cz.make_problem("mse", 3, 16, seed=9)
    layers = cz.build_model("deep", 3, depth=3, seed=9)
    sgs = {i: cz.LinearSG(3, 1, 0.1) for i in (1, 2)}
    rng = np.random.default_rng(0)
    for sg in sgs.values():
        for p in sg.params.values():
            p[...] = rng.standard_normal(p.shape)
    hs, _ = cz.forward(layers, problem.x)
    B, t = problem.x.shape[0], problem.t
    g2, _ = sgs[2].predict(hs[2], t)
    g1, _ = sgs[1].predict(hs[1], t)
    _, dz = cz.loss_and_grad("mse", hs[3], t)
    targets = {2: B * dz @ layers[2].params["W"].T, 1: B * (g2 / B) @ layers[1].params["W"].T}
    cz.compute_step(layers, sgs, problem.x, t, "mse")
    for i, g in ((1, g1), (2, g2)):
        dg = 2 * (g - targets[i]) / B
        assert_close(sgs[i].grads["A"], hs[i].T @ dg, rtol=1e-12, atol=1e-14, name=f"dA of module {i}")
        assert_close(sgs[i].grads["C"], t.T @ dg, rtol=1e-12, atol=1e-14, name=f"dC of module {i}")


def test_problems_are_seeded_and_their_optimum_is_a_critical_point():
    for loss in cz.LOSSES:
        a, b = cz.make_problem(loss, 5, 200, seed=3), cz.make_problem(loss, 5, 200, seed=3)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.t, b.t)
        assert not np.array_equal(a.x, cz.make_problem(loss, 5, 200, seed=4).x)
        _, dz = cz.loss_and_grad(loss, a.x @ a.w_opt, a.t)
        assert np.linalg.norm(a.x.T @ dz) < 1e-10, f"{loss}: the optimum's gradient is not zero"
        worse, _ = cz.loss_and_grad(loss, a.x @ (a.w_opt * 1.01), a.t)
        assert worse > a.loss_opt
    assert set(np.unique(cz.make_problem("log", 2, 50).t)) == {0.0, 1.0}


def test_end_to_end_map_is_the_product_of_the_weights():
    layers = cz.build_model("deep", 3, depth=4, seed=1)
    x = np.random.default_rng(0).standard_normal((5, 3))
    hs, _ = cz.forward(layers, x)
    assert_close(hs[-1], x @ cz.end_to_end(layers), rtol=1e-12, name="z = x W_1 ... W_L")
    for layer in layers[:-1]:  # orthogonal D x D layers
        assert_close(layer.params["W"].T @ layer.params["W"], np.eye(3), atol=1e-12, name="W^T W")


@pytest.mark.parametrize("kind", ["linear", "sigmoid"])
def test_normalised_steps_keep_a_module_stable_however_large_its_input(kind):
    """The module regresses onto a target it can represent exactly, from inputs 30x larger than unit scale: its
    normalised steps bring the loss down a hundredfold; the same step size without the normalisation diverges
    (linear) or ends at least ten times worse (sigmoid, whose saturation slows it down instead)."""
    rng = np.random.default_rng(0)
    d = 4 if kind == "linear" else 1
    h = 30 * rng.standard_normal((64, d))
    t = (rng.random((64, 1)) < 0.5).astype(float)
    teacher = cz.make_sg(kind, d, 1, 0.6)
    for p in teacher.params.values():
        p[...] = rng.standard_normal(p.shape) / (30 if kind == "linear" else 10)
    g_target, _ = teacher.predict(h, t)
    start = F.mse(cz.make_sg(kind, d, 1, 0.6).predict(h, t)[0], g_target)[0]  # a fresh module's loss
    final = {}
    for normalised in (True, False):
        sg = cz.make_sg(kind, d, 1, 0.6)
        with np.errstate(all="ignore"):  # the plain steps overflow: that is the point
            for _ in range(300):
                g, cache = sg.predict(h, t)
                final[normalised] = sg.backward(g, cache, g_target)
                if normalised:
                    sg.update()
                else:
                    sg.optimizer.step(sg.grads)  # the plain step of size 0.6
    assert final[True] < 1e-2 * start, (final[True], start)
    assert not final[False] <= 10 * final[True], f"the plain step did as well ({final}): the test shows nothing"


# -------------------------------------------------------------------------------------------------------------
# convergence: thresholds that a wrong step, target or module would miss


def test_sg_every_layer_on_a_deep_linear_model_reaches_least_squares_and_learns_the_true_maps():
    cfg = cz.RunConfig(loss="mse", dim=2, model="deep", mode="sg_every", n=100, steps=1500, lr=0.01, sg_lr=0.5)
    result = cz.train_run(cfg)
    final = result["final"]
    assert final["map_distance"] < 1e-6, final["map_distance"]
    assert final["excess_loss"] < 1e-10
    for i, sg in final["sg"].items():
        assert sg["map_distance"] < 1e-4, f"module {i} did not learn A* = 2 P P^T, C* = -2 P^T: {sg}"
    assert result["curve"][0]["map_distance"] > 0.1  # it started far away


def test_under_log_loss_a_linear_sg_stops_at_its_quadratic_model_and_a_sigmoid_sg_at_the_optimum():
    problem = cz.make_problem("log", 20, 200, seed=0)
    base = cz.RunConfig(loss="log", dim=20, model="linear", mode="sg_out", n=200, steps=2000, lr=0.5, sg_lr=0.5)
    linear = cz.train_run(dataclasses.replace(base, sg="linear"), problem)["final"]
    sigmoid = cz.train_run(dataclasses.replace(base, sg="sigmoid"), problem)["final"]
    assert linear["quadratic_fixed_point_distance"] < 1e-6  # at M_q = -(x^T x)^-1 x^T (t C + c) / a ...
    assert linear["map_distance"] > 1e-2 and linear["excess_loss"] > 1e-4  # ... which is not the optimum
    assert sigmoid["map_distance"] < 1e-3 and sigmoid["excess_loss"] < 1e-7
    assert sigmoid["sg"]["1"]["map_distance"] < 1e-3  # it learnt A = 1, c = 0: the true gradient


# -------------------------------------------------------------------------------------------------------------
# the experiment, end to end, and bad input


def test_smoke_budget_through_the_command_line_writes_everything_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cz"
    assert main(["experiment", "czarnecki", "--budget", "smoke", "--out", str(out)]) == 0
    document = json.loads((out / "results.json").read_text())
    assert document["experiment"] == "czarnecki" and document["budget"] == "smoke"
    expected = {cfg.name for _, cfg in cz.all_runs("smoke", (0,))}
    assert {r["run"] for r in document["rows"]} == expected
    assert {p.stem for p in (out / "runs").glob("*.json")} == expected
    table = (out / "table.md").read_text()
    assert "**mse**" in table and "**log**" in table and "(recalled)" in table
    for name in cz.FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name

    def no_training(*args, **kw):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(report, "FIGURES", {})  # drawn once above; the rest checks runs and rows (report.run reads it)
    only = cz.run(str(tmp_path / "subset"), "smoke", (1,), log=lambda m: None, experiments=("linear_mse",))
    assert {(r["model"], r["loss"], r["seed"]) for r in only["rows"]} == {("linear", "mse", 1)}
    assert "--experiments linear_mse" in only["command"]

    monkeypatch.setattr(report, "train_run", no_training)  # the name report.run calls
    again = cz.run(str(out), "smoke", (0,), log=lambda m: None)
    assert again["rows"] == document["rows"]


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        cz.make_problem("hinge", 2, 50)
    for dim in (0, -3, 2.5, True, "2"):
        with pytest.raises(ValueError, match="dimension must be a positive integer"):
            cz.make_problem("mse", dim, 50)
    with pytest.raises(ValueError, match="n must be an integer >= 2 \\* dim"):
        cz.make_problem("mse", 10, 12)
    with pytest.raises(ValueError, match="unknown budget 'paper'"):
        cz.run(str(tmp_path / "x"), "paper")
    with pytest.raises(ValueError, match="seeds must be"):
        cz.all_runs("smoke", (-1,))
    with pytest.raises(ValueError, match="unknown mode 'sg_all'"):
        cz.RunConfig(mode="sg_all").validate()
    with pytest.raises(ValueError, match="needs a deep model"):
        cz.RunConfig(model="linear", mode="sg_mid").validate()
    with pytest.raises(ValueError, match="unknown SG kind 'mlp'"):
        cz.RunConfig(mode="sg_out", sg="mlp").validate()
    with pytest.raises(ValueError, match="output only"):
        cz.RunConfig(mode="sg_every", sg="sigmoid").validate()
    with pytest.raises(ValueError, match="needs h of the targets' width"):
        cz.SigmoidSG(3, 1, 0.1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        cz.RunConfig(steps=0).validate()
    with pytest.raises(ValueError, match="lr must be a positive number"):
        cz.RunConfig(lr=float("nan")).validate()
    with pytest.raises(ValueError, match="unknown experiments \\['mnist'\\]"):
        cz.all_runs("smoke", (0,), ("linear_mse", "mnist"))
    assert cz.main(["--out", str(tmp_path / "w"), "--seeds", "-1"]) == 1
    assert "seeds must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cz.main(["--out", str(tmp_path / "w"), "--experiments", "linear_mse,table1"])
    assert "--experiments: expected a comma-separated subset" in capsys.readouterr().err
    assert main(["experiment", "czarnecki", "--budget", "paper", "--out", str(tmp_path / "y")]) == 1
    assert "budgets ('smoke', 'short')" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "czarnecki", "--seeds", "0,x", "--out", str(tmp_path / "z")])
    assert "--seeds" in capsys.readouterr().err
