# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 09: reproducing the paper's tables with the experiment harness
#
# Tutorials 01-08 took single steps apart. Reproducing a table of the paper is a different job: dozens of
# training runs, each hours long, that must survive being stopped, and whose numbers must end up next to the
# paper's without mixing the two up. `minidni.experiments.feedforward` does that job; the command line is
#
#     python -m minidni experiment {table1,stochastic,unlock} --budget {smoke,short,paper} --out DIR
#
# This tutorial opens it up:
#
# 1. an experiment is **a list of runs** (`experiments.table1_runs` and friends), each a `TrainConfig`;
# 2. a **budget** is one fixed schedule: `smoke` (seconds), `short` (sized for a 2-core CPU: minutes to tens of
#    minutes per run, hours for a whole experiment), `paper` (the paper's 500k iterations: hours per FCN run, about
#    two weeks per CNN run);
# 3. running the smoke budget of `table1 --models fcn3` (and, outside tiny mode, of `unlock`) through
#    `experiments.run_experiment`;
# 4. reading what it writes: `results.json`, `table.md` (the paper's numbers labelled as the paper's, the recalled
#    ones marked) and one directory per run;
# 5. **resuming**: a second call skips finished runs, and a run stopped mid-way continues to the same numbers;
# 6. Fashion-MNIST as a second data set.
#
# Sizes: everything here uses the smoke budget, so it takes seconds. The runs train on MNIST (from the local
# cache, or fetched into it as `python -m minidni data mnist` does); only in tiny mode (`MINIDNI_TINY=1`, the test
# suite, which has no network) or with `MINIDNI_STANDIN=1` on a generated stand-in, handed to the harness through
# its `data=` parameter under the data name "stand-in", so that every table, directory and figure it writes says
# so. Figures and run directories go to `tutorials/out/`, or to `$MINIDNI_TUTORIAL_OUT`.

# %%
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import minidni.core.backend
from minidni.experiments import feedforward as experiments
from minidni.data.datasets import DataError, load_dataset
from minidni.experiments.feedforward import Run, budget_config, run_all, run_experiment
from minidni.runs.threads import use_blas_threads
from minidni.runs.train import TrainConfig, load_data, lr_milestones, read_metrics, run_steps

minidni.core.backend.set_backend("numpy")
use_blas_threads(1)  # one BLAS thread: a busy machine cannot slow the run down several times (minidni.runs.threads)

TINY = os.environ.get("MINIDNI_TINY", "0") == "1"
STANDIN = TINY or os.environ.get("MINIDNI_STANDIN", "0") == "1"  # generated data instead of MNIST, only if asked
try:
    HERE = Path(__file__).resolve().parent
except NameError:  # in a notebook: its own folder (tutorials/)
    HERE = Path.cwd()
OUT = Path(os.environ.get("MINIDNI_TUTORIAL_OUT") or HERE / "out")
OUT.mkdir(parents=True, exist_ok=True)
WORK = OUT / "09_experiments"  # this tutorial's experiment directories
shutil.rmtree(WORK, ignore_errors=True)  # start from nothing: section 5 shows what happens when runs exist
T_START = time.perf_counter()
FIGURES = ["09_reproducing_the_paper{stand_in}.png"]  # what it writes into OUT (tests check); "_stand-in" if STANDIN
print(f"{'tiny' if TINY else 'default'} size; figures and runs go to {OUT}")

# %% [markdown]
# ## 1. An experiment is a list of runs
#
# Each experiment is a function `budget -> [Run]`, registered in `experiments.EXPERIMENTS`. A `Run` is a `key`
# (what the run is, for the tables: model, mode, seed, p_update, ...) and a `TrainConfig` (how to train it). Its
# `name`, built from the key, is the name of its directory. Nothing runs yet: these are plain lists.

# %%
for name, make_runs in experiments.EXPERIMENTS.items():
    runs = make_runs("short")
    print(f"{name:10s} {len(runs):3d} runs (short budget), e.g. {', '.join(r.name for r in runs[:3])}, ...")

runs = experiments.table1_runs("short")
print(f"\nthe first table1 run: key {runs[0].key}, directory runs/{runs[0].name}")
assert len(runs) == 40, "table1, short budget: 6 models x 4 modes, three seeds for bprop and cdni of the 4 FCNs"

# %% [markdown]
# **Seeds.** Table 1's interesting claims rest on small gaps - cDNI within a few tenths of a point of backprop -
# so the `short` budget trains bprop and cdni of every FCN with three seeds, and the runs whose gaps are whole
# points (`nobprop`, `dni`) with one. The smoke budget uses one seed everywhere: it only proves the pipeline.

# %%
seeds = {}
for r in runs:
    seeds.setdefault((r.key["model"], r.key["mode"]), []).append(r.key["seed"])
for model in ("fcn3", "cnn3"):
    print(f"{model}: " + ", ".join(f"{mode} seeds {seeds[model, mode]}" for mode in experiments.MODES))
for model in ("fcn3", "fcn4", "fcn5", "fcn6"):
    assert seeds[model, "bprop"] == seeds[model, "cdni"] == [0, 1, 2], "3 seeds where the claim rests on small gaps"
    assert seeds[model, "nobprop"] == seeds[model, "dni"] == [0]
assert all(len(r.key) and r.cfg.progress is False for r in runs)

# %% [markdown]
# ## 2. Budgets
#
# `budget_config(budget, model, data, **fields)` is the one place a budget is written down. Below, for each
# budget, every field of the run's `TrainConfig` that differs from the `TrainConfig()` defaults (for a cdni run;
# `mode` itself left out):

# %%
DEFAULTS = TrainConfig()


def changed(cfg):
    """The fields of cfg that differ from TrainConfig()'s defaults (without data, model and mode)."""
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in ("data", "model", "mode") and getattr(cfg, f.name) != getattr(DEFAULTS, f.name)
    }


for budget in experiments.BUDGETS:
    for model in ("fcn3", "cnn3"):
        print(f"{budget:6s} {model}: {changed(budget_config(budget, model, mode='cdni'))}")

# %% [markdown]
# What the paper budget means. The paper trains for 500k iterations of batch 256 with Adam at learning rate 3e-5,
# divided by 10 at 300k and 400k iterations. minidni counts epochs, over the 55,000 training images left after the
# 5,000-image validation split, so a paper-budget run sets `iterations` as well: it stops after exactly 500,000
# steps, in the middle of its last epoch, and the decay points 0.6 and 0.8 are fractions of those steps - the
# paper's 300k and 400k exactly, not the nearest epoch's end. The learning rate of the SG modules is not given in
# the project's notes of the paper; the budget uses the one Adam rate of 3e-5 for them too, as the independent
# reproductions we know of do, **their choice, not a number from the paper** (`--sg-lr` sets another).

# %%
paper = budget_config("paper", "fcn3", mode="cdni")
steps_per_epoch = 55_000 // paper.batch  # the last partial batch of each epoch is dropped
iterations = run_steps(paper, steps_per_epoch)
milestones = lr_milestones(paper, steps_per_epoch)
print(
    f"paper budget: {iterations:,} iterations of batch {paper.batch} in {paper.epochs} epochs of {steps_per_epoch} "
    f"steps (the last one cut short); lr {paper.lr:g} (SG modules {paper.sg_lr:g}), x{paper.lr_gamma:g} after "
    f"{milestones} steps"
)
assert iterations == experiments.PAPER_ITERATIONS == 500_000, "the paper budget runs exactly 500k iterations"
assert (paper.epochs - 1) * steps_per_epoch < iterations <= paper.epochs * steps_per_epoch, "... in its last epoch"
assert paper.batch == 256 and paper.lr == paper.sg_lr == 3e-5 and paper.lr_gamma == 0.1
assert milestones == [300_000, 400_000], "the decays at exactly 300k and 400k"

# %% [markdown]
# What that costs on a CPU. Nothing is timed here; the step times below were measured with one BLAS thread and
# are quoted from the docs: an FCN3 cDNI epoch (214 steps of batch 256) in `docs/results.md`, a CNN3 cDNI step at
# batch 256 in `docs/conv.md`. So the `short` budget is sized for a 2-core CPU - minutes for an FCN run, tens of
# minutes for a CNN run, and hours for a whole experiment of dozens of runs (`docs/results.md` lists each run's
# seconds) - while the paper budget takes hours for one FCN run and about two weeks for one CNN run.

# %%
FCN3_CDNI_EPOCH_S = 34 / 10  # docs/results.md: 10 epochs of FCN3 cDNI in 34 s of training
CNN3_CDNI_STEP_S = 2.39  # docs/conv.md: one CNN3 cDNI train_step at batch 256 (the slower CPU measured there)
cost = {}  # (budget, model) -> seconds of one cDNI run, estimated from the quoted step times
for budget in ("short", "paper"):
    for model in ("fcn3", "cnn3"):
        cfg = budget_config(budget, model, mode="cdni")
        epoch_s = FCN3_CDNI_EPOCH_S if model == "fcn3" else CNN3_CDNI_STEP_S * steps_per_epoch
        cost[budget, model] = cfg.epochs * epoch_s
        t = cost[budget, model]
        took = f"{t / 60:.1f} minutes" if t < 2 * 3600 else f"{t / 3600:.1f} hours" if t < 2 * 86400 else None
        took = took or f"{t / 86400:.1f} days"
        print(f"{budget:6s} {model} cDNI: {cfg.epochs:5d} epochs, about {took} (estimated from the quoted step times)")
assert 60 <= cost["short", "fcn3"] < 10 * 60 and 10 * 60 <= cost["short", "cnn3"] < 3600, "minutes / tens of minutes"
assert 3600 <= cost["paper", "fcn3"] < 10 * 3600, "hours for one paper-budget FCN run"
assert 10 * 86400 <= cost["paper", "cnn3"] < 20 * 86400, "about two weeks for one paper-budget CNN run"

# %% [markdown]
# ## 3. Running an experiment: the smoke budget
#
# `run_experiment(name, budget, out, data_name, data=...)` builds the runs, trains each into
# `out/runs/<name>/`, then writes the summary. Without `data` each run loads its data set itself
# (`minidni.runs.train.load_data`, from the cache or its sources). Here we load once and hand the arrays in: MNIST,
# or, only in tiny mode or with `MINIDNI_STANDIN=1`, a stand-in of the same shape, 10 classes of 784-feature rows
# (a class template plus noise). `data` is the tuple `load_data` returns,
# `(x_train, y_train, x_val, y_val, x_test, y_test)`, already cut to the budget's subset sizes: the harness
# uses it as it is.
#
# The harness writes the name of a run's data set into everything: `config.json`, each run's curves, `table.md`
# (where the paper's column is filled only for "mnist"), the figures. Arrays that are not MNIST but shaped like it
# get their own name, `data_label="stand-in"`: the runs are still built as for MNIST (`data_name="mnist"`: 784
# inputs, 10 classes), but every config, table, log line and title says stand-in, no paper number is printed
# beside them, and `table.md` records no command line (none makes these data).

# %%
SMOKE = budget_config("smoke", "fcn3")  # smoke subsets: 256 training, 64 validation, 128 test rows


def stand_in_mnist(seed=0):
    """The 6-tuple of load_data for the smoke budget, made up: a class template (784,) plus unit noise per row."""
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((10, 784)).astype(np.float32)  # (10, 784)

    def split(n):
        y = rng.integers(0, 10, n)  # (n,)
        return templates[y] + rng.standard_normal((n, 784)).astype(np.float32), y.astype(np.int64)  # (n, 784)

    return (*split(SMOKE.train_subset), *split(SMOKE.val_size), *split(SMOKE.test_subset))


assert (SMOKE.train_subset, SMOKE.val_size, SMOKE.test_subset, SMOKE.epochs) == (256, 64, 128, 1)
if STANDIN:
    DATA = LABEL = "stand-in"  # the name the harness writes everywhere
    why = "MINIDNI_TINY=1: the test suite has no network" if TINY else "MINIDNI_STANDIN=1"
    print(f"STAND-IN DATA, not MNIST ({why}): every table, directory and figure below says stand-in")
    data = stand_in_mnist()
else:
    DATA, LABEL = "mnist", None
    try:
        data = load_data(SMOKE)  # what each smoke run would load for itself: the cache, or fetched into it
    except DataError as e:
        raise SystemExit(
            f"MNIST could not be loaded:\n{e}\nFetch it with `python -m minidni data mnist`, or run this tutorial "
            "on a generated stand-in with MINIDNI_STANDIN=1."
        ) from e
source = "stand-in" if STANDIN else "MNIST"  # for titles
TABLE1 = WORK / f"table1-{DATA}"  # every directory names its data
NAMES = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
print(f"{source}: " + ", ".join(f"{name} {a.shape}" for name, a in zip(NAMES, data)))

# %% [markdown]
# First, Table 1's FCN 3 row: `table1 --models fcn3`, four runs (nobprop, bprop, cdni, dni), one epoch each on the
# smoke subset. Every line the harness logs is kept in `lines`, so that we can check what it did.

# %%
lines = []


def log(msg):
    lines.append(msg)
    print(msg)


t0 = time.perf_counter()
table1_rows = run_experiment(
    "table1", "smoke", str(TABLE1), data_name="mnist", log=log, data=data, models=["fcn3"], data_label=LABEL
)
print(f"--- table1 --models fcn3, smoke budget: {len(table1_rows)} runs in {time.perf_counter() - t0:.1f}s")

# %% [markdown]
# Outside tiny mode, also the `unlock` experiment (tutorial 07): FCN4 trained four ways - complete unlock, cDNI,
# DNI, backprop - the same number of epochs each. Its `table.md` has no paper column: the paper gives no table for
# it, only the statement quoted in the table's caption.

# %%
unlock_rows = []
if not TINY:
    t0 = time.perf_counter()
    unlock_rows = run_experiment(
        "unlock", "smoke", str(WORK / f"unlock-{DATA}"), data_name="mnist", log=lambda m: None, data=data,
        data_label=LABEL,
    )
    print((WORK / f"unlock-{DATA}" / "table.md").read_text())
    print(f"--- unlock, smoke budget: {len(unlock_rows)} runs in {time.perf_counter() - t0:.1f}s")

# %% [markdown]
# ## 4. What an experiment writes
#
#     OUT/results.json            the command, "complete", and one row per finished run: its key, final test and
#                                 validation error, epochs, seconds, and its directory
#     OUT/table.md                the command and how many runs are done, then our numbers beside the paper's
#     OUT/<experiment>.png        the experiment's figure
#     OUT/runs/<run name>/        each run: metrics.jsonl, config.json, curves.png, checkpoint.npz
#
# The three summary files are rewritten after every finished run, so a half-done experiment already has a partial
# table ("3 of 40 runs done so far").

# %%
for path in sorted(TABLE1.rglob("*")):
    if path.is_file():
        print(f"  {path.relative_to(TABLE1)}  ({path.stat().st_size:,} bytes)")
results = json.loads((TABLE1 / "results.json").read_text())
print(json.dumps({k: v for k, v in results.items() if k != "rows"}), "\nrows[0]:", json.dumps(results["rows"][0]))
assert results["experiment"] == "table1" and results["budget"] == "smoke" and results["rows"] == table1_rows
assert results["complete"], "every run finished, so the table is complete"
for row in table1_rows:
    run_dir = TABLE1 / row["run"]
    assert all((run_dir / f).exists() for f in ("metrics.jsonl", "config.json", "checkpoint.npz", "curves.png"))
    assert read_metrics(run_dir)[-1]["test_error_pct"] == row["test_error_pct"]
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert (config["data_label"] or config["data"]) == DATA, "each run names its data"

# %% [markdown]
# `table.md` of Table 1. For each mode, our number and the paper's (Jaderberg et al. 2016, Table 1, MNIST, after
# 500k iterations). Only one value of the paper's table has been checked against the paper's text (FCN 3 backprop,
# 2.0); every other paper value is recalled and carries "(recalled)" wherever it is printed
# (`experiments.PAPER_VERIFIED`). On the smoke budget our numbers are of course nowhere near the paper's: 256
# images, one epoch, 32 units. On the stand-in the paper's column stays empty ("-"): the paper has no numbers for
# it. The labels are checked at both sizes: on the stand-in, by summarising the same rows under the name "mnist"
# into a scratch directory (`experiments.summarise_table1`, what `run_experiment` calls).


# %%
def paper_column(table, model="fcn3"):
    """{mode: the paper's cell} of one model's row of a table1 table.md."""
    row = next(line for line in table.splitlines() if line.startswith(f"| {model} |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]  # ours, paper, ours, paper, ... per mode
    return dict(zip(experiments.MODES, cells[1::2]))


table = (TABLE1 / "table.md").read_text()
print(table)
assert f"Test error % on {DATA}:" in table, "the table names the data its numbers are from"
as_mnist = table
if STANDIN:
    assert set(paper_column(table).values()) == {"-"}, "no paper numbers beside the stand-in's"
    as_mnist = experiments.summarise_table1(table1_rows, {}, str(WORK / "labels-check"), "mnist")
paper_cells = paper_column(as_mnist)
print("the paper's column of FCN 3 (MNIST):", paper_cells)
assert paper_cells["bprop"] == "2.0", "FCN 3 bprop is the verified value: printed without a mark"
for mode in ("nobprop", "dni", "cdni"):
    value = experiments.PAPER_TABLE1["fcn3"][mode]
    assert paper_cells[mode] == f"{value} (recalled)", f"the paper's {mode} value must be marked as recalled"
assert "(paper)" in as_mnist and "Jaderberg" in as_mnist, "the paper's numbers must be labelled as the paper's"

# %% [markdown]
# ## 5. Resuming
#
# A full `short` experiment takes hours and a `paper` one weeks (section 2), so the harness assumes it will be
# stopped. Calling it
# again with the same `--out`:
#
# * a run whose `metrics.jsonl` reaches its last epoch and that has a checkpoint is **skipped** ("done earlier");
# * a run with a checkpoint but fewer epochs **resumes** from it, and (minidni's checkpoints hold every array, the
#   optimisers' step counts and the shuffling generator) ends with the same numbers, bit for bit, as if it had
#   never stopped;
# * a run with nothing is trained.
#
# First: the same call again. Every run is skipped, and `results.json` is rewritten with the same rows.

# %%
lines.clear()
again = run_experiment(
    "table1", "smoke", str(TABLE1), data_name="mnist", log=lines.append, data=data, models=["fcn3"], data_label=LABEL
)
skipped = [line for line in lines if "done earlier" in line]
print("\n".join(skipped))
assert len(skipped) == len(table1_rows), "a second call must skip every finished run"
assert not any(": training" in line or ": resuming" in line for line in lines), "nothing may be trained again"
assert again == table1_rows, "the rows of a skipped run are read back from its files, unchanged"

# %% [markdown]
# Second: a run stopped in the middle. We add our own experiment - any list of `Run`s goes to `run_all`, which is
# all `run_experiment` uses to train - with one cDNI FCN3 run of 2 epochs, twice: once straight through, once
# "switched off" after epoch 1 (here the log callback raises, right after the checkpoint of epoch 1 is written),
# then started again.


# %%
class SwitchedOff(Exception):
    pass


def resume_run():
    cfg = budget_config("smoke", "fcn3", "mnist", mode="cdni", epochs=2, data_label=LABEL)
    return [Run({"model": "fcn3", "mode": "cdni", "seed": 0}, cfg)]


def stop_after_epoch_1(msg):
    if msg.strip().startswith("epoch   1 "):
        raise SwitchedOff(msg.strip())


straight_dir = WORK / f"resume-straight-{DATA}"
straight = run_all(resume_run(), str(straight_dir), log=lambda m: None, data=data)["fcn3-cdni-seed0"]
try:
    run_all(resume_run(), str(WORK / f"resume-stopped-{DATA}"), log=stop_after_epoch_1, data=data)
except SwitchedOff as e:
    print(f"switched off after: {e}")
stopped_dir = WORK / f"resume-stopped-{DATA}" / "runs" / "fcn3-cdni-seed0"
print(
    f"left behind: epochs {[m['epoch'] for m in read_metrics(stopped_dir)]}, "
    f"checkpoint {(stopped_dir / 'checkpoint.npz').exists()}"
)

lines.clear()
resumed = run_all(resume_run(), str(stopped_dir.parent.parent), log=lines.append, data=data)["fcn3-cdni-seed0"]
print("\n".join(line for line in lines if "resum" in line))


def without_seconds(metrics):
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]


for a, b in zip(straight, resumed):
    print(
        f"epoch {a['epoch']}: test error straight {a['test_error_pct']:.2f}%, stopped and resumed "
        f"{b['test_error_pct']:.2f}%;  train loss {a['train_loss']:.6f} / {b['train_loss']:.6f}"
    )
assert any(": resuming" in line for line in lines), "the stopped run must resume from its checkpoint"
assert without_seconds(resumed) == without_seconds(straight), "a resumed run must end with the same numbers"

# %% [markdown]
# ## 6. A second data set: Fashion-MNIST
#
# Fashion-MNIST (Zalando Research, MIT licence) has MNIST's format exactly - 60,000 + 10,000 grey 28x28 images, 10
# classes - but its classes are clothes, and it is harder: a quick check that a result is not peculiar to digits.
# `python -m minidni data fashion-mnist` fetches it into the cache, from the official mirrors or, offline, from
# the Debian package `dataset-fashion-mnist`, every file checked against its md5 (`docs/data.md`); then every
# experiment takes `--data fashion-mnist`. The paper reports no Fashion-MNIST numbers, so the table's paper
# columns stay empty ("-"). Here, outside tiny mode, if it is cached: its classes, and the smoke budget of
# `table1 --models fcn3` on it.

# %%
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
fashion_rows = None
if TINY:
    print("tiny mode: Fashion-MNIST skipped (`python -m minidni data fashion-mnist` fetches it)")
else:
    try:
        ds = load_dataset("fashion-mnist", sources=("cache",), log=lambda msg: None)  # never the network
    except DataError:
        ds = None
        print("Fashion-MNIST is not in the cache: `python -m minidni data fashion-mnist` fetches it")
    if ds is not None:
        print(ds)
        counts = np.bincount(ds.y_train, minlength=10)
        print("training images per class:", dict(zip(FASHION_CLASSES, counts.tolist())))
        assert ds.x_train.shape == (60_000, 784) and counts.tolist() == [6000] * 10
        fashion_data = load_data(budget_config("smoke", "fcn3", data="fashion-mnist"), log=lambda msg: None)
        fashion_rows = run_experiment(
            "table1",
            "smoke",
            str(WORK / "table1-fashion"),
            data_name="fashion-mnist",
            log=lambda m: None,
            data=fashion_data,
            models=["fcn3"],
        )
        fashion_table = (WORK / "table1-fashion" / "table.md").read_text()
        print(fashion_table)
        row = next(line for line in fashion_table.splitlines() if line.startswith("| fcn3 |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert cells[1::2] == ["-"] * 4, "the paper has no Fashion-MNIST numbers: its columns must stay empty"

# %% [markdown]
# ### The picture
#
# Left: the smoke-budget test errors read back from `results.json` (Table 1's FCN 3 row; outside tiny mode also
# `unlock` and Fashion-MNIST), with the paper's FCN 3 values when the data are MNIST. Right: the training loss of the
# 2-epoch run of section 5, straight through, and stopped after epoch 1 then resumed: one curve on top of the other.

# %%
import matplotlib  # noqa: E402

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # a script writes files; a notebook also shows the figure inline
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1.7, 1]})
ax = axes[0]
bars = [(f"table1 fcn3: {r['mode']}", r["test_error_pct"], "C1") for r in table1_rows]
bars += [(f"unlock fcn4: {r['mode']}", r["test_error_pct"], "C0") for r in unlock_rows]
bars += [(f"fashion fcn3: {r['mode']}", r["test_error_pct"], "C2") for r in fashion_rows or []]
ax.bar(range(len(bars)), [b[1] for b in bars], color=[b[2] for b in bars])
if source == "MNIST":  # the paper's FCN 3 values beside ours (on the stand-in they would mean nothing)
    paper_values = [experiments.PAPER_TABLE1["fcn3"][r["mode"]] for r in table1_rows]
    ax.plot(
        range(len(table1_rows)),
        paper_values,
        "k_",
        ms=20,
        mew=2,
        label="the paper's FCN 3 (Table 1, 500k iterations; recalled except bprop)",
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, 125)  # room for the legend above the bars
ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=60, ha="right", fontsize=8)
ax.axhline(90, ls="--", c="gray", lw=1)
ax.set(ylabel="test error %", title=f"smoke budget ({source}; 256 rows, 1 epoch): proves the pipeline, not DNI")

ax = axes[1]
ax.plot(
    [m["epoch"] for m in straight], [m["train_loss"] for m in straight], "o-", lw=3, alpha=0.4, label="straight through"
)
ax.plot([m["epoch"] for m in resumed], [m["train_loss"] for m in resumed], "x--", c="k", label="stopped, resumed")
ax.axvline(1, c="gray", lw=0.8)
ax.annotate(" switched off", (1, ax.get_ylim()[0]), ha="left", va="bottom", fontsize=8, color="gray")
ax.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="resuming gives the same run", xticks=[1, 2])
ax.legend(fontsize=8)

fig.tight_layout()
figure = OUT / FIGURES[0].format(stand_in="_stand-in" if STANDIN else "")
fig.savefig(figure, dpi=100)
if "ipykernel" in sys.modules:
    plt.show()
plt.close(fig)
print(f"wrote {figure}")

# %% [markdown]
# ### Where to go from here
#
# * The real experiments: `python -m minidni experiment table1 --budget short --out runs/table1` (and
#   `stochastic`, `unlock`); each prints where it is, and can be stopped and started again at any time.
# * What each budget sets, the output files, and how to add an experiment: `docs/experiments.md`.
# * Measured results, each with the command that made it: `docs/results.md`.

# %%
assert figure.exists() and figure.stat().st_size > 0, "the figure was not written"
assert all(0 <= r["test_error_pct"] <= 100 for r in table1_rows + unlock_rows), "a test error out of range"
print(f"tutorial 09 finished in {time.perf_counter() - T_START:.1f}s")
