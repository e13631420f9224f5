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
# # Tutorial 16: blocks that train in parallel workers
#
# Tutorial 02 recorded the work of every block in *one* process and computed what the locks would allow if
# every block had a worker of its own. This tutorial gives every block a worker of its own (`minidni.parallel.workers`)
# and records what really happens, with the real clock, in each worker. Then it predicts the same thing from
# measured costs (`minidni.parallel.simulate`) and asks how well the prediction did.
#
# What you will see:
#
# 1. the worker loop: what block $i$ does with the messages from its neighbours, and why under DNI it never
#    waits for the blocks above it;
# 2. exactness first: with `delay=0`, blocks in thread workers reproduce the one-process cDNI run bit for bit;
# 3. real concurrency: an FCN 8 cut into two blocks, trained with cDNI and with backprop in two *process*
#    workers; their recorded timelines side by side, samples per second, and blocks busy on average;
# 4. predicting it: per-block costs measured alone, the two schedules simulated, prediction against
#    measurement; the simulator's scaling table for 1 to 64 workers and the assumptions behind it;
# 5. staleness: how late each synthetic-gradient module learns from its targets in an asynchronous run, and
#    what a deterministic delay of 0, 1, 2, ... steps does to the accuracy;
# 6. when things go wrong: more MPI ranks than blocks, and a worker that dies or hangs.
#
# Sizes: `MINIDNI_TINY=1` shrinks everything so that the script runs in seconds (the test suite does this);
# figures and the runs' directories (`16_runs/`, deleted when the script starts) go to `tutorials/out/`, or to
# `$MINIDNI_TUTORIAL_OUT`. The timings depend on the machine and on what else runs on it: a run on 2 cores
# shares them with everything else, so the script prints the load average beside the numbers.

# %%
import dataclasses
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import minidni.core.backend
from minidni.data.checkpoint import load_checkpoint
from minidni.data.datasets import DataError, load_dataset
from minidni.runs.plots import pyplot, save_figure
from minidni.parallel.simulate import (
    BlockCost,
    Costs,
    plot_scaling,
    plot_schedules,
    scaling_table,
    sequential_time,
    simulate,
    split_costs,
    step_time,
)
from minidni.parallel.speedup import (
    costs_in_subprocess,
    late_targets,
    measure_transfer,
    measured_timeline,
    without_modules,
)
from minidni.runs.timeline import draw_timeline, legend_handles
from minidni.runs.train import TrainConfig, train
from minidni.parallel.faults import CRASH_ENV
from minidni.parallel.workers import WorkerError, mpiexec_path, plot_staleness, train_in_workers
from minidni.runs.threads import use_blas_threads

minidni.core.backend.set_backend("numpy")  # the workers run the engine on the CPU
use_blas_threads(1)  # this process too: one BLAS thread, as each worker has (minidni.runs.threads)

TINY = os.environ.get("MINIDNI_TINY", "0") == "1"
STAND_IN = TINY or os.environ.get("MINIDNI_STANDIN") == "1"  # section 3 on generated rows instead of MNIST
try:
    HERE = Path(__file__).resolve().parent
except NameError:  # in a notebook: its own folder (tutorials/)
    HERE = Path.cwd()
OUT = Path(os.environ.get("MINIDNI_TUTORIAL_OUT") or HERE / "out")
OUT.mkdir(parents=True, exist_ok=True)
T_START = time.perf_counter()
RUNS = OUT / "16_runs"  # every training run of this tutorial writes its directory here
shutil.rmtree(RUNS, ignore_errors=True)  # train refuses to overwrite a finished run: start from nothing

# section 3: the two-block network and its data (MNIST rows from the cache, or a stand-in)
HIDDEN = 64 if TINY else 512  # units per hidden layer of the FCN 8
N_TRAIN = 2048 if TINY else 16384  # training rows: 16 / 64 steps per epoch
BATCH = 128 if TINY else 256
EPOCHS = 1 if TINY else 2
TIMELINE_STEPS = 8 if TINY else 12  # the workers record their first steps
REPEATS = 3 if TINY else 15  # section 4: timings per piece (the median is kept)
# section 5: deterministic delays on spirals
DELAYS = (0, 2, 8) if TINY else (0, 1, 2, 4, 8, 16)
SG_LRS = (1e-3,) if TINY else (1e-3, 1e-4)
SEEDS = (0,) if TINY else (0, 1)
DELAY_EPOCHS = 2 if TINY else 8
FIGURES = [
    "16_measured_timelines{stand_in}.png",
    "16_simulated_schedules.png",
    "16_scaling.png",
    "16_staleness{stand_in}.png",
    "16_accuracy_vs_delay.png",
]  # every figure this script writes into OUT; {stand_in}: "_stand-in" where section 3 ran on the stand-in


def quiet(_msg):
    """A log function that drops the runs' progress lines (their numbers are read from the returned metrics)."""


print(f"{'tiny' if TINY else 'default'} size; figures go to {OUT}; load average {os.getloadavg()[0]:.2f}")

# %% [markdown]
# ## 1. The worker loop
#
# A network of $N$ blocks, $h_i = f_i(h_{i-1})$, $h_{-1} = x$, block $N-1$ the output block with the loss $L$.
# In `minidni.parallel.workers` every block runs in a worker of its own, and the only thing that couples two neighbours
# is a message:
#
# * **up**, block $i \to i+1$: $(t, h_i, y)$, the activations of step $t$ and the labels (cDNI's modules and the
#   loss read them);
# * **down**, block $i+1 \to i$: $(t, dx)$ with $dx = \hat\delta_{i+1}\,\partial h_{i+1}/\partial h_i$, block
#   $i+1$'s gradient pulled back through it. For backprop it is the true $\delta_i = \partial L/\partial h_i$;
#   for DNI it is the **bootstrapped target** of block $i$'s module $M_{i+1}$ (tutorial 05).
#
# Hidden block $i$ under DNI, step $t$ (block 0 reads its own batch instead of receiving one):
#
# ```
# receive (t, h_{i-1}, y) from block i-1            # the only wait: for the block below
# h_i = f_i(h_{i-1});              send (t, h_i, y) up
# dh_syn = M_{i+1}(h_i, y)                          # the synthetic gradient, now
# dx = f_i.backward(dh_syn);       send (t, dx) down   # the target of M_i, the module below
# f_i.update()
# M_{i+1} regresses onto the targets that have come down: (s, dx_{i+1}(s)) for steps s <= t
#   (if M_{i+1} has changed since step s, it first predicts again on the stored h_i(s), y: only the target is late)
# ```
#
# Nothing in the first five lines reads anything from above: block $i$ can start step $t+1$ while block $i+1$
# is still on step $t$. What comes from above is only the target of its module, and *when* the module learns
# from it is a choice:
#
# * `delay=d`: after its update of step $t$, block $i$ waits for the target of step $t - d$ and regresses
#   onto it. Deterministic: threads, processes and MPI ranks give the same numbers, and `delay=0` is exactly the
#   one-process step of `minidni.dni.steps.dni_step` (each module learns from step $t$'s target within step $t$);
# * `delay=None` (asynchronous): block $i$ regresses onto whatever targets have arrived and waits only when more
#   than `max_inflight` are outstanding. The **staleness** $t - s$ of each target is whatever the speeds make it,
#   and the run logs it.
#
# Under locked backprop the same workers run `receive h; forward; send h up; receive dx from above; backward;
# send dx down; update`: block $i$ waits for the true gradient of step $t$ before its backward, so only one
# block works at a time, plus the overlap of one block's update with the backward of the block below. That is
# the baseline, on the same workers.
#
# Which worker kind gives real parallelism: `"process"` (one OS process per block, each with one BLAS thread)
# does; `"thread"` overlaps only inside NumPy's matrix products (which release the GIL) and is here for
# exactness checks and tests; `"mpi"` (one MPI rank per block, `mpiexec`) does, across machines too.

# %% [markdown]
# ## 2. Exactness first: threads reproduce the one-process run bit for bit
#
# Before timing anything: does the worker loop compute the same thing? With `delay=0` every module learns from
# the target of step $t$ within step $t$, as in `Network.train_step`. We train the same cDNI FCN 4 on spirals
# once in one process and once with its 4 blocks in 4 thread workers (`workers="thread"`, `delay=0`), and
# compare every array of the two checkpoints: parameters, batch-norm statistics, Adam moments, SG modules.

# %%
exact = dict(data="spirals", model="fcn4", mode="cdni", hidden=16 if TINY else 64, epochs=1 if TINY else 3,
             batch=64, train_subset=512 if TINY else 0, lr=1e-2, sg_lr=1e-3, progress=False)  # fmt: skip
m_one = train(TrainConfig(out=str(RUNS / "exact_one_process"), **exact), log=quiet)
m_thr = train_in_workers(TrainConfig(out=str(RUNS / "exact_threads"), workers="thread", delay=0, **exact), log=quiet)
a_one, _ = load_checkpoint(RUNS / "exact_one_process" / "checkpoint.npz")
a_thr, meta_thr = load_checkpoint(RUNS / "exact_threads" / "checkpoint.npz")
differ = [k for k in a_one if not np.array_equal(a_one[k], a_thr[k])]
print(f"{len(a_one)} arrays in each checkpoint; arrays that differ: {differ or 'none'}")
print(
    f"test error: one process {m_one[-1]['test_error_pct']:.2f}%, 4 thread workers {m_thr[-1]['test_error_pct']:.2f}%"
)
assert sorted(a_one) == sorted(a_thr), "the two runs should save the same arrays"
assert len(a_one) == 37, "4 blocks, 3 SG modules, batch-norm statistics and Adam moments: 37 arrays"
assert not differ, f"delay=0 in threads must reproduce the one-process run bit for bit; differ: {differ}"
assert [m["train_loss"] for m in m_one] == [m["train_loss"] for m in m_thr]
assert all(lag == 0 for m in m_thr for lag in m["staleness_max"]), "delay=0: every target used in its own step"

# %% [markdown]
# The same holds for process workers and MPI ranks (`tests/test_workers.py` checks all three): the transport
# changes when the numbers arrive, never which numbers. From here on, everything that differs between the runs
# is *when* things happen.
#
# ## 3. Real concurrency: two blocks in two processes
#
# The network is an FCN 8 (7 hidden layers Linear → BN → ReLU, then a linear output layer) with
# `HIDDEN` units, cut into **two blocks** with `split="3,5"`: block 0 holds 3 hidden layers, block 1 holds the
# other 4 and the output layer, about the same cost each (block 1 also computes the loss). One cDNI module
# (linear, reading $h$ and the label) sits between them. Each block runs in its own OS process
# (`workers="process"`, one BLAS thread each), and the runs record their first `TIMELINE_STEPS` steps: every
# event with the wall-clock time at which it really started and ended in its worker (the workers start their
# clocks together, after a barrier).
#
# cDNI runs asynchronously (`delay=None`, at most `max_inflight=2` targets outstanding); backprop runs in the
# same two workers, locked. The data: `N_TRAIN` MNIST rows, loaded with `load_dataset("mnist")` (the local
# cache, or downloaded into it; `python -m minidni data mnist` does that ahead of time; if no source can supply
# them, the script stops and says how to get them). A generated stand-in of ten Gaussian clusters in 784
# dimensions is used only when asked for: always with `MINIDNI_TINY=1`, or with `MINIDNI_STANDIN=1`; then the
# printed lines, the figures' titles and the runs' directories say "stand-in". The timing does not depend on the
# values; the test errors do.


# %%
def gaussian_digits(n, seed):
    """n rows (n, 784) float32 and labels (n,) int64: ten Gaussian clusters, the stand-in for MNIST rows."""
    centres = np.random.default_rng(1234).standard_normal((10, 784)) * 0.3  # (10, 784), the same for every seed
    r = np.random.default_rng(seed)
    y = r.integers(0, 10, n)  # (n,)
    return (centres[y] + r.standard_normal((n, 784))).astype(np.float32), y.astype(np.int64)


if STAND_IN:
    why = "MINIDNI_TINY=1 (the test suite has no network)" if TINY else "MINIDNI_STANDIN=1"
    print(f"section 3 trains on a generated stand-in for MNIST, not MNIST, because {why}")
    source = "stand-in"
    x_tr, y_tr = gaussian_digits(N_TRAIN, seed=0)
    x_te, y_te = gaussian_digits(500, seed=10_000)
else:
    try:
        ds = load_dataset("mnist", log=quiet)  # the cache, or downloaded into it
    except DataError as e:
        raise SystemExit(
            f"tutorial 16 needs MNIST and could not get it:\n{e}\nFetch it with `python -m minidni data mnist`, or "
            "run with MINIDNI_STANDIN=1 to train section 3 on a generated stand-in instead."
        ) from e
    source = "MNIST"
    pick = np.random.default_rng(0).permutation(len(ds.x_train))[:N_TRAIN]
    x_tr, y_tr = ds.x_train[pick], ds.y_train[pick]  # (N_TRAIN, 784), (N_TRAIN,)
    x_te, y_te = ds.x_test[:2000], ds.y_test[:2000]
TAG = "" if source == "MNIST" else "_stand_in"  # in the run directories' names: what they trained on
FIG_TAG = "" if source == "MNIST" else "_stand-in"  # in the names of the figures drawn from section 3's runs
no_val = (x_tr[:0], y_tr[:0])  # no validation rows: nothing is tuned here
DATA = (x_tr, y_tr, *no_val, x_te, y_te)  # what train.load_data would return
print(f"{source}: train {x_tr.shape}, test {x_te.shape}")

two_blocks = dict(data="mnist", model="fcn8", split="3,5", hidden=HIDDEN, batch=BATCH, epochs=EPOCHS,
                  progress=False, timeline=TIMELINE_STEPS,
                  data_label=None if source == "MNIST" else "stand-in")  # config.json: what the rows are  # fmt: skip
runs = {}
for mode in ("cdni", "bprop"):
    out = RUNS / f"{mode}_2_processes{TAG}"
    t0 = time.perf_counter()
    cfg = TrainConfig(out=str(out), mode=mode, workers="process", **two_blocks)
    metrics = train_in_workers(cfg, log=quiet, data=DATA)
    _, meta = load_checkpoint(out / "checkpoint.npz")
    events, busy = measured_timeline(out)  # the events the workers recorded, and total work / makespan
    runs[mode] = {"out": out, "metrics": metrics, "workers": meta["workers"], "events": events, "busy": busy}
    w = meta["workers"]
    print(f"{source}, {mode:>5} in 2 processes: {w['samples_per_s']:7.0f} samples/s ({w['seconds']:.2f} s of "
          f"training, {time.perf_counter() - t0:.1f} s with start-up and evaluation), {busy:.2f} blocks busy in the "
          f"first {TIMELINE_STEPS} steps, test error {metrics[-1]['test_error_pct']:.2f}%")  # fmt: skip
measured_ratio = runs["cdni"]["workers"]["samples_per_s"] / runs["bprop"]["workers"]["samples_per_s"]
print(f"cDNI / bprop in the same two processes: {measured_ratio:.2f}x the samples per second "
      f"(load average now {os.getloadavg()[0]:.2f})")  # fmt: skip
# the reference: the same cDNI network in one process, blocks one after another, every target used at once
one = train(TrainConfig(out=str(RUNS / f"cdni_1_process{TAG}"), mode="cdni", **dict(two_blocks, timeline=0)),
            log=quiet, data=DATA)  # fmt: skip
one_rate = one[-1]["step"] * BATCH / sum(m["seconds"] for m in one)  # its epochs' seconds include evaluation
print(f"{source},  cdni in 1 process:    {one_rate:7.0f} samples/s (epochs with their evaluation), test error "
      f"{one[-1]['test_error_pct']:.2f}%; in 2 processes, asynchronous: "
      f"{runs['cdni']['metrics'][-1]['test_error_pct']:.2f}%")  # fmt: skip
test_error = {"cdni in 2 processes": runs["cdni"]["metrics"][-1]["test_error_pct"],
              "bprop in 2 processes": runs["bprop"]["metrics"][-1]["test_error_pct"],
              "cdni in 1 process": one[-1]["test_error_pct"]}  # fmt: skip
if source == "MNIST":  # after these 2 short epochs (MNIST, default size): backprop ahead, cDNI about 8-9% either way
    assert 4.0 < test_error["bprop in 2 processes"] < 5.5, test_error
    assert 7.5 < test_error["cdni in 1 process"] < 9.5, test_error
    # the asynchronous run's staleness depends on the timing, so its error moves from run to run
    assert abs(test_error["cdni in 2 processes"] - test_error["cdni in 1 process"]) < 2.0, test_error

# %% [markdown]
# The one-process run is the accuracy to match: the same network and batches, every module learning from its
# target within the step. (Its samples per second include each epoch's evaluation, so it is only a rough
# reference for the speed.)
#
# The checks are on the bookkeeping, not on the speed (a busy machine can make any ratio): each run used two
# workers and trained every step; every recorded step has each block's forward, backward and update, and under
# cDNI block 0's synthetic gradient and one regression of its module (when the module has changed since it
# predicted for step $s$, it predicts again on the stored $h_0(s)$ before regressing onto the late target, so a
# step may have two `synthetic` events); within a worker (one clock) the events never overlap; and two workers
# keep at most two blocks busy. (Comparing the clocks of two processes is left to the picture: each worker's
# times are measured from its own start after the barrier, which the operating system may release a fraction of
# a millisecond apart.)

# %%
for mode, r in runs.items():
    steps = r["metrics"][-1]["step"]
    assert r["workers"]["blocks"] == 2 and steps == EPOCHS * (N_TRAIN // BATCH)
    kinds = {}
    for e in r["events"]:
        kinds.setdefault((e.block, e.kind), []).append(e.step)
    every = list(range(TIMELINE_STEPS))
    for block in (0, 1):
        for kind in ("forward", "backward", "update"):
            assert sorted(kinds[(block, kind)]) == every, f"{mode}: block {block} {kind}"
        mine = sorted((e for e in r["events"] if e.block == block), key=lambda e: e.start)
        assert all(a.end <= b.start for a, b in itertools.pairwise(mine)), f"{mode}: block {block}'s events overlap"
    if mode == "cdni":
        assert sorted(kinds[(0, "sg_update")]) == every, "one regression of block 0's module per step"
        predictions = kinds[(0, "synthetic")]  # its own of every step, and a fresh one before a late regression
        assert set(predictions) == set(every) and all(predictions.count(s) <= 2 for s in every)
        assert (1, "synthetic") not in kinds, "the output block has no module"
    else:
        assert not any(k in kinds for k in ((0, "synthetic"), (0, "sg_update"))), "bprop has no modules"
    assert 0 < r["busy"] <= 2 + 1e-9, "two workers cannot keep more than two blocks busy"


# %%
def window(events, first, n):
    """The events of steps first .. first + n - 1, times shifted to start at 0, `needs` kept only inside."""
    keep = [e for e in events if first <= e.step < first + n]
    ids, t0 = {e.id for e in keep}, min(e.start for e in keep)
    return [dataclasses.replace(e, start=e.start - t0, end=e.end - t0, needs=tuple(k for k in e.needs if k in ids))
            for e in keep]  # fmt: skip


FIRST, SHOWN = (1, 5) if TINY else (2, 8)  # leave out the first step(s): first calls pay for their set-up
plt = pyplot()
fig, axes = plt.subplots(1, 2, figsize=(13, 3.2), sharex=True)
for ax, mode in zip(axes, ("bprop", "cdni")):
    r = runs[mode]
    title = (f"{mode}: 2 processes, steps {FIRST}-{FIRST + SHOWN - 1} as recorded (wall clock)\n"
             f"{r['workers']['samples_per_s']:.0f} samples/s over the run, {r['busy']:.2f} blocks busy")  # fmt: skip
    draw_timeline(ax, window(r["events"], FIRST, SHOWN), title, n_blocks=2)
fig.suptitle(f"FCN 8 ({HIDDEN} units) split 3,5, batch {BATCH}, {source}: what the workers recorded")
axes[0].legend(handles=legend_handles(), loc="upper left", bbox_to_anchor=(0, -0.3), fontsize=8, ncol=5)
save_figure(fig, OUT / FIGURES[0].format(stand_in=FIG_TAG))

# %% [markdown]
# What to look for in `16_measured_timelines.png` (real time, both panels on the same axis):
#
# * **bprop**: the blocks take turns. Block 0 does its forward, then waits while block 1 does its forward and
#   backward, then runs its own backward and update; only block 1's update overlaps with block 0's backward.
# * **cDNI**: both rows are full. Block 0 starts step $t+1$ right after its update of step $t$, while block 1
#   works on step $t$; block 0's module regression (`sg_update`) runs when block 1's target has come down.
# * compare the bars with the costs of each piece timed alone (section 4). On an otherwise idle machine they are
#   about the same; with a third busy process on 2 cores (another run, a test suite), a worker loses its core
#   part of the time, its bars grow and gaps open. With another training run beside it, this cDNI run can lose
#   its whole advantage over backprop. The run prints its own samples per second and ratio; no timing is
#   asserted, since a shared machine can make any ratio (what is asserted is the bookkeeping above, and after
#   the 2 epochs on MNIST, the test errors: backprop 4-5.5%, cDNI in one process 7.5-9.5%, and the
#   asynchronous cDNI run within 2 points of it).
#
# ## 4. Predicting it: costs, a simulator, and a scaling table
#
# `speedup.costs_in_subprocess` times every piece of each block alone (forward, synthetic gradient, backward,
# update, module regression; the median of `REPEATS` calls at the run's shapes) in a fresh process with one
# BLAS thread, as each worker has. `speedup.measure_transfer` times one message from one worker process to
# another (half a ping-pong through the workers' own queues). The bprop blocks are the same blocks without
# their module, so their costs are the same with `synthetic = sg_update = 0` (`without_modules`). In the
# asynchronous cDNI run nearly every target comes back after the module has already regressed onto a later
# one, so it is predicted again first (section 1): `late_targets` adds that prediction to every regression.
#
# `simulate.simulate` then plays the worker loops of section 1 out with those costs, event by event, and
# `step_time` reads off the steady-state seconds per step (the mean spacing of the steps' end times after a
# warm-up). Nothing is fitted to the measured runs.

# %%
cfg_cdni = TrainConfig(mode="cdni", **two_blocks)
costs = costs_in_subprocess(cfg_cdni, (784,), 10, REPEATS)
transfer = measure_transfer((BATCH, HIDDEN), repeats=10 if TINY else 30)
costs = Costs(costs.blocks, transfer, BATCH)
costs_bp = without_modules(costs)
for i, c in enumerate(costs.blocks):
    print(f"block {i}: forward {c.forward * 1e3:.2f} ms, synthetic {c.synthetic * 1e3:.2f}, backward "
          f"{c.backward * 1e3:.2f}, update {c.update * 1e3:.2f}, sg_update {c.sg_update * 1e3:.2f}")  # fmt: skip
print(f"one message between two worker processes: {transfer * 1e3:.3f} ms")

SIM_STEPS, WARMUP = 32, 4
sim_cdni = simulate(late_targets(costs), "dni", SIM_STEPS, max_inflight=2, dx_after="backward")  # as workers.py
sim_bprop = simulate(costs_bp, "bprop", SIM_STEPS, dx_after="backward")
t_cdni, t_bprop = step_time(sim_cdni, WARMUP), step_time(sim_bprop, WARMUP)
predicted_ratio = t_bprop / t_cdni
print(f"predicted: bprop {t_bprop * 1e3:.2f} ms/step, cDNI {t_cdni * 1e3:.2f} ms/step in 2 workers")
print(f"cDNI / bprop samples per second: predicted {predicted_ratio:.2f}x, measured {measured_ratio:.2f}x "
      f"(prediction {100 * (predicted_ratio / measured_ratio - 1):+.0f}%)")  # fmt: skip
measured_step = {m: BATCH / r["workers"]["samples_per_s"] for m, r in runs.items()}
print(
    f"measured ms/step: bprop {measured_step['bprop'] * 1e3:.2f}, cDNI {measured_step['cdni'] * 1e3:.2f} "
    "(over the whole run, first steps included)"
)

# %% [markdown]
# Two checks of the simulator's bookkeeping, which hold whatever the machine measured:
#
# * a worker does all its own work of a step before it can start the next, so no schedule's step time is
#   below the busiest worker's summed forward + synthetic + backward + update (the module's regression may
#   lag behind, so it is left out of this bound);
# * locked backprop in two workers is one chain per step: block 0's forward, the message up, block 1's forward
#   and backward, the message down, block 0's backward and update (block 1's update overlaps with the last
#   two). So its step time is exactly $F_0 + F_1 + B_1 + B_0 + U_0 + 2\tau$ with $\tau$ the transfer -
#   provided block 1's update is no longer than what block 0 does meanwhile, as it is here.

# %%
for name, c, t in (("cdni", costs, t_cdni), ("bprop", costs_bp, t_bprop)):
    busiest = max(b.forward + b.synthetic + b.backward + b.update for b in c.blocks)
    print(f"{name}: simulated step {t * 1e3:.3f} ms >= busiest worker's own work {busiest * 1e3:.3f} ms")
    assert t >= busiest * (1 - 1e-12)
(b0, b1), tau = costs_bp.blocks, transfer
chain = b0.forward + tau + b1.forward + b1.backward + tau + b0.backward + b0.update
assert b1.update <= tau + b0.backward + b0.update + b0.forward + tau  # block 1's update hides behind block 0
assert abs(t_bprop - chain) <= 1e-9 * chain, (t_bprop, chain)
assert t_bprop <= sequential_time(costs_bp, "bprop") + 2 * tau + 1e-12  # the same work, two messages more
print(f"bprop: simulated {t_bprop * 1e3:.3f} ms = the chain F0 + F1 + B1 + B0 + U0 + 2 transfers "
      f"{chain * 1e3:.3f} ms")  # fmt: skip
first_steps = {"bprop in 2 workers": [e for e in sim_bprop if e.step < 6],
               "cdni in 2 workers": [e for e in sim_cdni if e.step < 6]}  # fmt: skip
plot_schedules(first_steps, OUT / FIGURES[1], title=f"simulated from the measured costs: FCN 8 ({HIDDEN}) split 3,5")

# %% [markdown]
# `16_simulated_schedules.png` is the same two schedules as section 3's recorded ones, drawn from the costs
# alone. The prediction is only as good as those costs, and they leave things out:
#
# * each piece is timed alone: anything that slows busy workers down together (a third process on the
#   machine, shared caches and memory bandwidth, the operating system moving processes between cores) is not
#   in it;
# * the transfer is the median of a short ping-pong and varies from run to run (the run prints it).
#   Locked backprop pays two transfers per step on its critical path (the chain above); cDNI hides them behind
#   block 0's own work. So a transfer measured too long makes backprop's predicted step too slow and the
#   predicted ratio too high;
# * the measured samples per second cover the whole run, its first steps (which pay for their set-up) and the
#   last regressions included; the prediction is the steady state.
#
# **Scaling.** How would the speed-up grow with more workers? We cannot measure 64 workers on this machine,
# but the simulator can extrapolate, under the assumptions of `simulate.split_costs`, spelled out:
#
# * the whole network's forward, backward and update (the summed costs of both blocks above) are cut into $W$
#   **equal** blocks, each costing $1/W$ of the whole (cost linear in block size; the loss spread evenly too);
# * every hidden block carries one SG module whose prediction and regression cost what the one measured at
#   the split costs, whatever $W$ (in a real network a module's cost depends on the width at its boundary);
# * every message costs the measured transfer; every worker has a core of its own and nothing contends: no
#   shared memory bandwidth or caches, no network fabric (this machine has 2 cores, so 64 workers are
#   hypothetical).
#
# Schedules: locked backprop, cDNI (asynchronous, `max_inflight=2`) and a synchronous GPipe-style pipeline with
# 4 micro-batches (the same math as backprop; a micro-batch assumed to cost 1/4 of the batch, which flatters it).

# %%
whole = BlockCost(forward=sum(b.forward for b in costs_bp.blocks), backward=sum(b.backward for b in costs_bp.blocks),
                  update=sum(b.update for b in costs_bp.blocks))  # fmt: skip
boundary = (costs.blocks[0].synthetic, late_targets(costs).blocks[0].sg_update)  # a late target: predicted again
WORKERS = (1, 2, 4, 8, 16, 32, 64)
rows = scaling_table(whole, boundary, transfer, BATCH, workers=WORKERS, max_inflight=2, dx_after="backward")
print(
    f"{'workers':>7} | "
    + " | ".join(f"{s:>9}" for s in ("bprop", "dni", "pipelined"))
    + "   (speed-up over 1-worker bprop)"
)
for w in WORKERS:
    row = {r["schedule"]: r["speedup"] for r in rows if r["workers"] == w}
    print(f"{w:>7} | " + " | ".join(f"{row[s]:8.2f}x" for s in ("bprop", "dni", "pipelined")))
for r in rows:
    assert r["speedup"] <= r["workers"] * (1 + 1e-9), f"faster than ideal: {r}"
    if r["workers"] == 1:
        assert abs(r["speedup"] - 1) < 1e-9, (
            "one worker: every schedule is the sequential step (no modules, no messages)"
        )
network = whole.forward + whole.backward + whole.update  # one step of the whole network, seconds
dni_64 = next(r for r in rows if r["workers"] == 64 and r["schedule"] == "dni")
print(f"cDNI at 64 workers: {dni_64['step_time'] * 1e3:.3f} ms/step; one module's prediction and regression "
      f"{sum(boundary) * 1e3:.3f} ms, 1/64 of the network {network / 64 * 1e3:.3f} ms")  # fmt: skip
assert dni_64["step_time"] >= boundary[0] + network / 64 - 1e-12  # a hidden block's own work every step
split_2 = split_costs(whole, 2, boundary, transfer, BATCH)
assert abs(sum(b.forward for b in split_2.blocks) - whole.forward) < 1e-15  # the split conserves the work
speedup = {(r["schedule"], r["workers"]): r["speedup"] for r in rows}
assert all(speedup["bprop", w] < 1.05 for w in WORKERS), "locked backprop gains nothing from more workers"
assert speedup["dni", 64] > speedup["dni", 8] > speedup["dni", 2] > 1, "cDNI's predicted speed-up grows with W"
plot_scaling(rows, OUT / FIGURES[2], title=f"predicted: FCN 8 ({HIDDEN} units) cut into W equal blocks")

# %% [markdown]
# Read the table with its assumptions: locked backprop gains nothing from more workers (one works at a time;
# at most an update overlaps with the backward below it, and the messages make it slower; asserted: never above
# 1.05x), cDNI's step is one block's share plus one module's prediction and regression, so its speed-up grows
# with $W$ (asserted from 2 to 8 to 64 workers) until the module's fixed cost dominates, and the pipeline gains
# from its micro-batches until the fill and drain of each step dominate. These are predictions from costs
# measured on this machine, not measurements: the run prints them, and they change with the machine and its
# load.
#
# ## 5. Staleness, and what delay does to accuracy
#
# In the asynchronous cDNI run of section 3, block 0's module learnt from each target $s$ at some later step
# $t$ of block 0: the **staleness** $t - s$. The run logged every pair (`staleness.json`, and its own
# `staleness.png`). With `max_inflight=2`, block 0 waits once more than 2 targets are outstanding, so each
# target is used at most 2 steps late, and every step's target is used exactly once.

# %%
staleness = {int(k): v for k, v in json.loads((runs["cdni"]["out"] / "staleness.json").read_text()).items()}
pairs = np.array(staleness[0])  # (steps, 2): (t, s) per target block 0's module used
lag = pairs[:, 0] - pairs[:, 1]
print(f"block 0's module: {len(lag)} targets, staleness mean {lag.mean():.2f}, max {lag.max()}, "
      f"counts {np.bincount(lag).tolist()} for 0, 1, 2 steps late")  # fmt: skip
assert sorted(pairs[:, 1].tolist()) == list(range(EPOCHS * (N_TRAIN // BATCH))), "every target used exactly once"
assert lag.min() >= 0 and lag.max() <= 2, "max_inflight=2: no target used more than 2 steps late"
plot_staleness(staleness, OUT / FIGURES[3].format(stand_in=FIG_TAG),
               title=f"cDNI in 2 processes on {source}, asynchronous (max_inflight=2)")

# %% [markdown]
# Asynchrony makes the staleness depend on the machine. To see what staleness *does*, we fix it:
# `delay=d` makes every module learn from the target of step $t - d$ at step $t$, deterministically (thread
# workers here: the numbers do not depend on the transport). FCN 4 (64 units) cDNI on spirals, `DELAY_EPOCHS`
# epochs of batch 64, for each delay, seed and SG learning rate (the layers' is 1e-2, as in tutorial 04). The
# bookkeeping check: each target is used exactly $d$ steps late, except at the end, where the last $d$ targets
# are used as soon as the last step is done.

# %%
delay_runs = dict(data="spirals", model="fcn4", mode="cdni", hidden=16 if TINY else 64, epochs=DELAY_EPOCHS,
                  batch=64, train_subset=512 if TINY else 0, lr=1e-2, progress=False)  # fmt: skip
error = {}  # (sg_lr, delay) -> test error % per seed
for sg_lr in SG_LRS:
    for d in DELAYS:
        for seed in SEEDS:
            out = RUNS / f"delay{d}_sglr{sg_lr:g}_seed{seed}"
            cfg = TrainConfig(out=str(out), workers="thread", delay=d, sg_lr=sg_lr, seed=seed, **delay_runs)
            m = train_in_workers(cfg, log=quiet)
            error.setdefault((sg_lr, d), []).append(m[-1]["test_error_pct"])
            for block, used in json.loads((out / "staleness.json").read_text()).items():
                last = m[-1]["step"] - 1
                lags = {s: t - s for t, s in used}
                assert sorted(lags) == list(range(last + 1)), f"block {block}: every target exactly once"
                assert all(lags[s] == d for s in range(last + 1 - d)), f"block {block}: delay {d} not kept"
                assert all(lags[s] == last - s for s in range(max(0, last + 1 - d), last + 1))  # the final drain
        print(f"sg_lr {sg_lr:g}, delay {d:2d}: test error " + ", ".join(f"{e:5.2f}%" for e in error[(sg_lr, d)]))

fig, ax = plt.subplots(figsize=(6, 3.8))
for sg_lr in SG_LRS:
    mean = [np.mean(error[(sg_lr, d)]) for d in DELAYS]
    ax.plot(range(len(DELAYS)), mean, marker="o", label=f"SG modules' lr {sg_lr:g} (mean of {len(SEEDS)} seeds)")
    for k, d in enumerate(DELAYS):
        ax.plot([k] * len(SEEDS), error[(sg_lr, d)], ".", c=ax.lines[-1].get_color(), alpha=0.5)
ax.set_xticks(range(len(DELAYS)), [str(d) for d in DELAYS])
ax.set(xlabel="delay d: each module learns from the target of step t - d", ylabel="test error %",
       title=f"cDNI FCN 4 on spirals, {DELAY_EPOCHS} epochs, thread workers")  # fmt: skip
ax.legend(fontsize=8)
save_figure(fig, OUT / FIGURES[4])
if not TINY:  # the statements below, at the default size (8 epochs, two seeds, two SG learning rates)
    for sg_lr in SG_LRS:
        e = {d: np.array(error[(sg_lr, d)]) for d in DELAYS}  # delay -> (seeds,) test error %
        assert all(e[d].max() < 2.0 for d in DELAYS if d <= 4), f"sg_lr {sg_lr:g}: delays up to 4 should cost little"
        assert abs(e[8].mean() - e[0].mean()) < 2.0, f"sg_lr {sg_lr:g}: delay 8 within two points of delay 0: {e}"
        assert (e[16] > e[0] + 2.0).all() and e[16].max() > 8.0, f"sg_lr {sg_lr:g}: delay 16 should cost points: {e}"

# %% [markdown]
# What the runs show (the numbers are printed above; two seeds only; the run asserts what follows): on
# this small problem a few steps of staleness cost little. A late module regresses onto a target made from the
# network as it was $d$ steps ago (block $i+1$'s weights and module, and $h_i(s)$, a batch old), but it predicts
# again with its current weights, so its regression gradient is exact where it now is and only the target is
# late. With both SG learning rates the test error stays at about 0.5-1.5% up to a delay of 4 (asserted: below
# 2%), and at 8 it is within about a point of `delay=0` (asserted: two); at 16 steps both seeds lose several
# points (asserted: more than two) and one of them ends near or above 10% (asserted: above 8%).
# Deterministic delays are not the whole story of an asynchronous run: there the staleness varies from step to
# step (section 3's run kept it at 0-2 steps with `max_inflight=2`, the knob that bounds it), and on MNIST the
# asynchronous cDNI run above can be compared with its one-process twin.
#
# ## 6. When things go wrong
#
# **More MPI ranks than blocks.** `--distributed` runs one MPI rank per block (rank $i$ runs block $i$), so the
# number of ranks must equal the number of blocks; every rank checks this before it touches the data, and rank
# 0 says why. Here, the two-block FCN 8 started on 3 ranks (only if `mpiexec` and `mpi4py` are installed:
# `pip install -e '.[mpi]'`).

# %%
mpi_cmd = [mpiexec_path() or "mpiexec", "-n", "3", sys.executable, "-m", "minidni", "train", "--distributed", "--data", "spirals",
           "--model", "fcn8", "--split", "3,5", "--hidden", "16", "--epochs", "1", "--train-subset", "256",
           "--out", str(RUNS / "mpi_3_ranks"), "--no-progress"]  # fmt: skip
if mpiexec_path() and importlib.util.find_spec("mpi4py") is not None:
    print("$ " + " ".join(["mpiexec", "-n", "3", "python"] + mpi_cmd[4:]))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    done = subprocess.run(mpi_cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    said = (done.stdout + done.stderr).strip()
    print(f"exit code {done.returncode}; it said:\n{said}")
    assert done.returncode != 0, "three ranks for two blocks must fail"
    assert "has 2 blocks, but 3 ranks were started; use mpiexec -n 2" in said, said
else:
    print("mpiexec or mpi4py is not installed (pip install -e '.[mpi]' brings both): skipping the MPI example. "
          "The command would be:\n$ " + " ".join(["mpiexec", "-n", "3", "python"] + mpi_cmd[4:]))  # fmt: skip

# %% [markdown]
# **A worker that dies, or hangs.** Every wait in the workers is bounded by `wait_timeout` seconds, and the
# coordinator watches its worker processes. The fault injection `MINIDNI_WORKER_CRASH="BLOCK:STEP"` makes a
# worker die at that step the way a killed process dies (`os._exit`, without a word; so only with process
# workers, as it would end a thread worker's whole process), and `"BLOCK:STEP:hang"` makes it stop answering
# while alive. Both must end the run with a `WorkerError` that names the block, within a bounded time, and
# leave no worker behind.

# %%
WAIT = 1.0 if TINY else 2.0  # seconds any worker waits for a message (the default is 120)
crash_runs = dict(two_blocks, data="spirals", data_label=None, hidden=16, batch=64, epochs=1, timeline=0,
                  train_subset=512)  # fmt: skip
for spec, expect in (("1:5", "block 1"), ("1:5:hang", "from block 1")):
    os.environ[CRASH_ENV] = spec  # read by the workers when they start
    t0 = time.perf_counter()
    try:
        train_in_workers(TrainConfig(out=str(RUNS / f"crash_{spec.replace(':', '_')}"), mode="cdni", workers="process",
                          wait_timeout=WAIT, **crash_runs), log=quiet)  # fmt: skip
        raise AssertionError(f"{CRASH_ENV}={spec}: the run should have failed")
    except WorkerError as err:
        took = time.perf_counter() - t0
        print(f"{CRASH_ENV}={spec}: WorkerError after {took:.1f} s:\n  {err}")
        assert expect in str(err), err
        assert took < WAIT + 30, f"the failure took {took:.1f} s to surface"  # start-up + one wait, not forever
    finally:
        del os.environ[CRASH_ENV]

# %% [markdown]
# A dead worker is noticed as soon as its process has exited (the coordinator polls every 0.2 s); a hung one
# when its neighbour has waited `wait_timeout` seconds for its message. Then every worker is stopped and the
# error names the block: the one that died, or, for a hang, the one that stopped answering, followed by which
# block gave up waiting for what.
#
# ## Summary
#
# * A DNI block's worker loop waits only for the block below (its input); what comes from above is only the
#   target of its module, which it may use late. With `delay=0` the workers compute exactly the one-process run.
# * In two processes, cDNI keeps both blocks busy where locked backprop takes turns; the measured speed-up
#   depends on the machine and on what else runs on it, and the simulator, fed with costs measured alone,
#   predicts the case where nothing else does.
# * A few steps of staleness cost little on spirals, sixteen cost several points; `max_inflight` bounds the
#   staleness of an asynchronous run.
# * Every wait is bounded; a dead or stuck worker ends the run with an error naming it.

# %%
for name in (f.format(stand_in=FIG_TAG) for f in FIGURES):
    assert (OUT / name).stat().st_size > 0, name
print(f"tutorial 16 finished in {time.perf_counter() - T_START:.1f}s")
