"""The experiment harness: budgets, the smoke budget end to end (on a small stand-in for MNIST), resuming, and the
table that prints our numbers beside the paper's."""

import json
import os

import numpy as np
import pytest

from minidni import cli
from minidni.data import datasets as data
from minidni.experiments import feedforward as experiments
from minidni.runs.train import TrainConfig, lr_milestones, run_steps

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py: temporary data cache, numpy backend


def fake_mnist(n_train=600, n_test=200, seed=0):
    """10 classes of 28x28 images: a class template plus noise, standardised like the real loader's output."""
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((10, 784)).astype(np.float32)

    def split(n):
        y = rng.integers(0, 10, n)
        x = templates[y] + rng.standard_normal((n, 784)).astype(np.float32)
        return x, y.astype(np.int64)

    (x_tr, y_tr), (x_te, y_te) = split(n_train), split(n_test)
    return x_tr, y_tr, x_te, y_te


@pytest.fixture
def stand_in(monkeypatch):
    """minidni.data.datasets.load_dataset('mnist', images=...) returns the stand-in (flat or as (N, 1, 28, 28)
    images)."""
    x_tr, y_tr, x_te, y_te = fake_mnist()
    calls = []

    def load_dataset(name, images=False, **_):
        calls.append((name, images))
        shape = (-1, 1, 28, 28) if images else (-1, 784)
        return data.Dataset(name, x_tr.reshape(shape), y_tr, x_te.reshape(shape), y_te, 10, "stand-in")

    monkeypatch.setattr(data, "load_dataset", load_dataset)
    monkeypatch.setattr("minidni.runs.train.plot_learning_curves", lambda *a, **k: None)  # per-run plots: slow
    return calls


def run_cli(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------------------------------------------
# budgets


def test_the_paper_budget_is_the_papers_schedule():
    """Exactly 500k steps of batch 256, Adam at 3e-5 for layers and SG modules alike, / 10 at exactly 300k and 400k
    (not at the nearest epoch); the epochs cover the steps, the last one cut short."""
    cfg = experiments.budget_config("paper", "fcn3", mode="cdni")
    steps_per_epoch = 55_000 // cfg.batch  # MNIST's 60k minus the 5k validation rows
    assert cfg.batch == 256 and cfg.lr == 3e-5 and cfg.sg_lr == 3e-5 and cfg.lr_gamma == 0.1
    assert cfg.iterations == 500_000
    assert 500_000 <= cfg.epochs * steps_per_epoch < 500_000 + steps_per_epoch
    assert lr_milestones(cfg, steps_per_epoch) == [300_000, 400_000]
    assert run_steps(cfg, steps_per_epoch) == 500_000
    cifar = experiments.budget_config("paper", "cnn3", "cifar10")  # 45,000 training images: more epochs
    assert 500_000 <= cifar.epochs * (45_000 // 256) < 500_000 + 45_000 // 256
    assert lr_milestones(cifar, 45_000 // 256) == [300_000, 400_000]
    assert experiments.budget_config("paper", "fcn3", mode="cdni", sg_lr=1.5e-7).sg_lr == 1.5e-7


def test_table1_selects_modes_seeds_and_an_sg_rate():
    runs = experiments.table1_runs("paper", models=("fcn3",), modes=("bprop", "cdni"), seeds=(0,), sg_lr=1.5e-7)
    assert [r.name for r in runs] == ["fcn3-bprop-seed0-sg_lr1.5e-07", "fcn3-cdni-seed0-sg_lr1.5e-07"]
    assert all(r.cfg.sg_lr == 1.5e-7 and r.cfg.iterations == 500_000 for r in runs)
    default = experiments.table1_runs("short", models=("fcn3",), modes=("cdni",))
    assert [r.cfg.seed for r in default] == [0, 1, 2] and all(r.cfg.sg_lr == TrainConfig.sg_lr for r in default)
    with pytest.raises(ValueError, match="table1 only"):
        experiments.run_experiment("stochastic", "smoke", "unused", modes=("dni",))


def test_the_short_budget_gives_conv_modules_their_own_sg_learning_rate():
    assert experiments.budget_config("short", "cnn3").sg_lr == experiments.CNN_SG_LR
    assert experiments.budget_config("short", "fcn3").sg_lr == TrainConfig.sg_lr
    assert experiments.budget_config("short", "cnn3").epochs == 5


def test_table1_uses_three_seeds_where_the_claim_rests_on_small_gaps():
    runs = experiments.table1_runs("short")
    seeds = {}
    for r in runs:
        seeds.setdefault((r.key["model"], r.key["mode"]), []).append(r.key["seed"])
    for model in ("fcn3", "fcn4", "fcn5", "fcn6"):
        assert seeds[(model, "bprop")] == seeds[(model, "cdni")] == [0, 1, 2]
        assert seeds[(model, "nobprop")] == seeds[(model, "dni")] == [0]
    assert len({r.name for r in runs}) == len(runs)  # every run has its own directory


def test_unknown_budget_and_experiment():
    with pytest.raises(ValueError, match="budget"):
        experiments.budget_config("long", "fcn3")
    with pytest.raises(ValueError, match="experiment"):
        experiments.run_experiment("table2", "smoke", "unused")


# ------------------------------------------------------------------------------------------------------------
# the smoke budget, end to end through the command line


@pytest.mark.parametrize("name", ["stochastic", "unlock"])
def test_smoke_experiment_writes_results_table_and_figure(tmp_path, capsys, stand_in, name):
    out = tmp_path / name
    rc, stdout, err = run_cli(capsys, "experiment", name, "--budget", "smoke", "--out", str(out))
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    runs = experiments.EXPERIMENTS[name]("smoke")
    assert [r["run"] for r in results["rows"]] == [os.path.join("runs", r.name) for r in runs]
    for row in results["rows"]:
        assert 0 <= row["test_error_pct"] <= 100
        assert (out / row["run"] / "checkpoint.npz").exists()
    table = (out / "table.md").read_text()
    assert f"python -m minidni experiment {name} --budget smoke" in table
    assert (out / f"{name}.png").stat().st_size > 1000


def test_table1_smoke_puts_the_papers_numbers_beside_ours_labelled(tmp_path, capsys, stand_in):
    out = tmp_path / "t1"
    rc, _, err = run_cli(
        capsys, "experiment", "table1", "--budget", "smoke", "--out", str(out), "--models", "fcn3,fcn4"
    )
    assert rc == 0, err
    table = (out / "table.md").read_text()
    assert "| fcn3 | " in table and "| fcn4 | " in table and "cnn3" not in table
    assert "(paper)" in table and "Jaderberg" in table
    # FCN 3 bprop is the one value checked against the paper's text; the others are marked as recalled
    line = next(line for line in table.splitlines() if line.startswith("| fcn3 |"))
    fcn3 = [cell.strip() for cell in line.strip("|").split("|")]
    assert "2.0" in fcn3 and "9.3 (recalled)" in fcn3 and "2.2 (recalled)" in fcn3
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {(r["model"], r["mode"]) for r in rows} == {(m, k) for m in ("fcn3", "fcn4") for k in experiments.MODES}
    assert (out / "table1.png").exists()


def test_table1_smoke_runs_the_cnns_on_images(tmp_path, capsys, stand_in):
    out = tmp_path / "cnn"
    rc, _, err = run_cli(capsys, "experiment", "table1", "--budget", "smoke", "--out", str(out), "--models", "cnn3")
    assert rc == 0, err
    assert ("mnist", True) in stand_in  # the CNN asked the loader for (N, 1, 28, 28) images
    assert "| cnn3 | " in (out / "table.md").read_text()


def test_a_finished_experiment_is_not_rerun_and_a_stopped_one_resumes(tmp_path, capsys, stand_in, monkeypatch):
    out = tmp_path / "u"
    assert run_cli(capsys, "experiment", "unlock", "--budget", "smoke", "--out", str(out))[0] == 0
    first = (out / "results.json").read_text()
    # delete one run's metrics and checkpoint: only that run is trained again, and it gives the same numbers
    victim = out / "runs" / experiments.unlock_runs("smoke")[1].name
    for f in ("metrics.jsonl", "checkpoint.npz"):
        (victim / f).unlink()
    trained = []
    real_train = experiments.train
    monkeypatch.setattr(experiments, "train", lambda cfg, **kw: trained.append(cfg.out) or real_train(cfg, **kw))
    rc, _, err = run_cli(capsys, "experiment", "unlock", "--budget", "smoke", "--out", str(out))
    assert rc == 0 and trained == [str(victim)]
    assert "done earlier" in err
    strip = lambda s: [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(s)["rows"]]  # noqa: E731
    assert strip((out / "results.json").read_text()) == strip(first)


def test_bad_experiment_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["experiment", "table3", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["experiment", "table1", "--out", str(tmp_path), "--models", "fcn3,mlp9"])
    with pytest.raises(SystemExit):
        cli.main(["experiment", "table1", "--budget", "weekend", "--out", str(tmp_path)])
    rc, _, err = run_cli(capsys, "experiment", "unlock", "--out", str(tmp_path), "--models", "fcn3")
    assert rc == 1 and "--models" in err


def test_two_jobs_give_the_same_results_as_one(tmp_path):
    """--jobs 2 trains runs in two worker processes (one BLAS thread each); every run is the run it would be
    alone with one thread, so the results match a sequential experiment's exactly (but for wall time)."""
    from threadpoolctl import threadpool_limits

    x_tr, y_tr, x_te, y_te = fake_mnist(n_train=320, n_test=100)
    arrays = (x_tr[:256], y_tr[:256], x_tr[256:], y_tr[256:], x_te, y_te)  # train, validation, test
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    with threadpool_limits(limits=1, user_api="blas"):
        one = experiments.run_experiment("unlock", "smoke", str(tmp_path / "one"), data=arrays, log=lambda s: None)
    two = experiments.run_experiment("unlock", "smoke", str(tmp_path / "two"), data=arrays, log=lambda s: None, jobs=2)
    assert strip(two) == strip(one)
    with pytest.raises(ValueError, match="jobs"):
        experiments.run_experiment("unlock", "smoke", str(tmp_path / "x"), jobs=0)


def test_arrays_that_are_not_the_named_data_set_carry_their_own_label(tmp_path, stand_in):
    """An experiment on arrays passed as data= with data_label says what they are in every config, table and log,
    and prints no paper number beside them; a label without arrays is refused."""
    from minidni.runs.train import load_data, train

    arrays = load_data(TrainConfig(data="mnist", train_subset=256, val_size=64, test_subset=128), log=lambda m: None)
    logged = []
    experiments.run_experiment("table1", "smoke", str(tmp_path / "t"), data_name="mnist", log=logged.append,
                               data=arrays, models=["fcn3"], data_label="stand-in")  # fmt: skip
    table = (tmp_path / "t" / "table.md").read_text()
    assert "on stand-in" in table and "mnist data" not in table.replace("shaped like mnist", "")
    assert "(recalled)" not in table and "--data mnist" not in table  # no paper numbers, no command that made them
    for run_dir in (tmp_path / "t" / "runs").iterdir():
        config = json.loads((run_dir / "config.json").read_text())["config"]
        assert config["data_label"] == "stand-in"
    assert any("on stand-in:" in line for line in logged)
    with pytest.raises(ValueError, match="data_label='stand-in' names arrays"):
        experiments.run_experiment("table1", "smoke", str(tmp_path / "u"), data_label="stand-in")
    with pytest.raises(ValueError, match="data_label='stand-in' names arrays"):
        train(TrainConfig(data="spirals", data_label="stand-in", out=str(tmp_path / "v")))
