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
# # Tutorial 02: update locking, seen on a timeline
#
# Tutorial 01 computed backpropagation by hand. Every gradient there had to wait: for the whole forward pass,
# then for the gradient of every layer above. This tutorial makes that waiting visible. The trainer records
# every piece of work each block does - its forward pass, its backward pass, its update, and under DNI its
# synthetic gradient and its module's regression step - with the time it took and the other blocks' work it
# had to wait for. From those records we draw timelines (Gantt charts) and measure what the locks cost.
#
# What you will see:
#
# 1. the three locks, written as dependencies between pieces of work;
# 2. one recorded step of backprop and one of DNI, and the order in which their pieces ran;
# 3. the earliest schedule those dependencies allow, one worker per block: with every piece costing one tick,
#    backprop needs $2N + 1$ ticks per step for $N$ blocks, DNI 5 ticks at every depth;
# 4. timelines recorded at a realistic size for backprop, DNI and stochastic updates;
# 5. the same recordings as a trace that Perfetto or chrome://tracing opens, to zoom into.
#
# Sizes: `MINIDNI_TINY=1` shrinks everything so that the script runs in a few seconds (the test suite does
# this); figures and the trace go to `tutorials/out/`, or to `$MINIDNI_TUTORIAL_OUT`.

# %%
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np

import minidni.core.backend
from minidni.dni.network import build_network
from minidni.runs.plots import pyplot, save_figure
from minidni.runs.threads import use_blas_threads
from minidni.runs.timeline import (
    Timeline,
    chrome_trace,
    earliest_schedule,
    makespan,
    plot_timeline,
    total_work,
    warmup_note,
    without_steps,
    write_chrome_trace,
)

use_blas_threads(1)  # one BLAS thread: a busy machine cannot slow the run down several times (minidni.runs.threads)
minidni.core.backend.set_backend("numpy")

TINY = os.environ.get("MINIDNI_TINY", "0") == "1"
try:
    HERE = Path(__file__).resolve().parent
except NameError:  # in a notebook: its own folder (tutorials/)
    HERE = Path.cwd()
OUT = Path(os.environ.get("MINIDNI_TUTORIAL_OUT") or HERE / "out")
OUT.mkdir(parents=True, exist_ok=True)
T_START = time.perf_counter()
FIGURES = ["02_ticks_per_step.png", "02_timeline.png"]
TRACE = "02_timeline.trace.json"  # section 5: not a figure, a file to open in ui.perfetto.dev or chrome://tracing

# the sizes of section 4; the tiny ones only prove that the script runs
D_IN, HIDDEN, BATCH = (20, 32, 16) if TINY else (784, 256, 256)  # section 4: MNIST-sized layers
STEPS = 3 if TINY else 4  # section 4: steps recorded after the warm-up step
DEPTHS = range(2, 5) if TINY else range(2, 9)
print(f"{'tiny' if TINY else 'default'} size; figures go to {OUT}")

# %% [markdown]
# ## 1. Three locks are three kinds of dependency
#
# A network of $N$ blocks computes $h_i = f_i(h_{i-1})$, $h_0 = x$, and a loss $L$ from $h_N$. Backprop's
# work on one batch splits into pieces per block: the forward pass $F_i$, the backward pass $B_i$ (which turns
# $\delta_i = \partial L/\partial h_i$ into the block's parameter gradients and $\delta_{i-1}$), and the update
# $U_i$. The pieces depend on each other:
#
# * $F_i$ needs $F_{i-1}$ (it reads $h_{i-1}$): the **forward lock**;
# * $B_i$ needs $B_{i+1}$ (it reads $\delta_i$), which needs $B_{i+2}$, ..., which needs $F_N$: the **backward
#   lock** and the **update lock** ($U_i$ comes after $B_i$, so after the whole forward pass);
# * block $i$'s next forward pass, $F_i$ of step $t+1$, runs with the updated parameters: it needs $U_i$ of step $t$.
#
# So the first block of step $t+1$ waits until the gradient of step $t$ has travelled the whole way down.
#
# A DNI block asks its synthetic-gradient module for $\hat\delta_i = M_{i+1}(h_i)$ right after its forward pass
# (a piece $S_i$), runs $B_i$ on it and updates. Its module regresses ($R_i$) onto block $i+1$'s $\delta_i$
# estimate, so $R_i$ needs $B_{i+1}$ - the only thing block $i$ ever waits for from above.
#
# `minidni.runs.timeline.Timeline` records these pieces: attach one with `net.record_timeline(timeline)` and every
# training step records, per block, events of kind `forward`, `synthetic`, `backward`, `update` and `sg_update`,
# each with its start, end and `needs`: the other blocks' events it read.

# %% [markdown]
# ## 2. One recorded step of backprop and of DNI
#
# A 4-block network (3 hidden blocks and the output block). To make the timing exact we give the timeline a
# clock that counts: each call is one tick later, so every event lasts exactly one tick.


# %%
def counting_clock():
    """A clock for the Timeline: 0, 1, 2, ... - every event then lasts exactly one tick."""
    ticks = itertools.count()
    return lambda: float(next(ticks))


rng = np.random.default_rng(0)
x_small = rng.standard_normal((16, 6)).astype(np.float32)  # (B, D_in)
y_small = rng.integers(0, 3, 16)  # (B,)


def record(mode, depth, steps, clock=None, p_update=1.0, x=x_small, y=y_small, hidden=8):
    """The events of `steps` training steps of a fresh network, from its very first step on."""
    net = build_network(depth=depth, mode=mode, d_in=x.shape[1], hidden=hidden, n_classes=3, sg_hidden=hidden,
                        seed=0, p_update=p_update)  # fmt: skip
    timeline = Timeline(clock=clock or counting_clock())
    net.record_timeline(timeline)
    for _ in range(steps):
        net.train_step(x, y)
    return timeline.events


for mode in ("bprop", "cdni"):
    events = record(mode, depth=4, steps=1)
    print(f"{mode}: {len(events)} events")
    for e in events:
        needs = f"  waits for event {list(e.needs)}" if e.needs else ""
        print(f"  {e.id:2d}  block {e.block}  {e.kind:<10}{needs}")

# %% [markdown]
# Read the two lists. Under backprop, block 0's update is the very last event: it waited for every forward and
# every backward above it. Under DNI (cDNI: the module also reads the label), block 0 has done its forward,
# synthetic gradient, backward and update before block 1 has even started; the only arrows from above point at
# the modules' regression steps. DNI also has more to do: each hidden block does five pieces of work where
# backprop does three (its module predicts and regresses), the output block three in both. We check these facts,
# and the dependencies, in code.

# %%
bp = record("bprop", depth=4, steps=1)
dni = record("cdni", depth=4, steps=1)
order_bp = [(e.block, e.kind) for e in bp]
order_dni = [(e.block, e.kind) for e in dni]
assert order_bp[-1] == (0, "update")  # update lock: block 0 is the last to learn from the batch
assert order_bp.index((0, "update")) > max(order_bp.index((j, "backward")) for j in range(4))
assert order_dni.index((0, "update")) < order_dni.index((1, "forward"))  # no update lock under DNI
by_kind = {(e.block, e.kind): e for e in dni}
assert all(by_kind[(j, "backward")].needs == () for j in range(3))  # a synthetic gradient waits for nobody
assert by_kind[(0, "sg_update")].needs == (by_kind[(1, "backward")].id,)  # M's target is block 1's dx
by_kind = {(e.block, e.kind): e for e in bp}
assert by_kind[(1, "backward")].needs == (by_kind[(2, "backward")].id,)  # backprop: delta comes from above
assert len(bp) == 3 * 4 and len(dni) == 5 * 3 + 3  # DNI's extra work: every module predicts and regresses
print("backprop locks block 0's update behind every other block; DNI does not")
print(f"pieces of work per step: backprop {len(bp)}, cDNI {len(dni)}")

# %% [markdown]
# ## 3. The earliest schedule, and what the locks cost per step
#
# Suppose every block had a worker of its own. The earliest time an event could start is the later of (a) the
# end of its block's previous event and (b) the end of every event it needs. `earliest_schedule` computes that
# from the recorded events, keeping each block's events in their recorded order and their recorded durations.
# It is computed, not measured - it says what the dependencies allow.
#
# With one tick per event, count the ticks per step in the steady state. Backprop: the $N$ forward passes run one
# after another, then the $N$ backward passes, then block 0's update, before block 0 can start the next step:
# $2N + 1$ ticks. DNI: block $i$ of step $t+1$ waits for its own 5 events of step $t$ (forward, synthetic,
# backward, update, its module's regression), and the regression waits for block $i+1$'s backward of step $t$,
# which is already done by then: **5 ticks per step, whatever the depth**. We measure both over 20 steps.


# %%
def ticks_per_step(events, first=9):
    """Steady-state ticks per step of the earliest schedule: from step `first`'s start to the last step's."""
    sched = earliest_schedule(events)
    start = {}
    for e in sched:
        start[e.step] = min(start.get(e.step, e.start), e.start)
    last = max(start)
    return (start[last] - start[first]) / (last - first)


per_step = {"bprop": [], "cdni": []}
for depth in DEPTHS:
    for mode in per_step:
        per_step[mode].append(ticks_per_step(record(mode, depth, steps=20)))
print("blocks N        :", list(DEPTHS))
for mode, ticks in per_step.items():
    print(f"{mode:<16}:", [f"{t:g}" for t in ticks])
assert per_step["bprop"] == [2 * n + 1 for n in DEPTHS]
assert per_step["cdni"] == [5.0 for _ in DEPTHS]

plt = pyplot()
fig, ax = plt.subplots(figsize=(5.5, 3.6))
ax.plot(list(DEPTHS), per_step["bprop"], marker="o", label="backprop: 2N + 1")
ax.plot(list(DEPTHS), per_step["cdni"], marker="s", label="cDNI: 5")
ax.set(xlabel="blocks N", ylabel="ticks per step (steady state)", ylim=(0, None),
       title="earliest schedule, one worker per block,\nevery recorded event one tick")  # fmt: skip
ax.legend()
save_figure(fig, OUT / FIGURES[0])

# %% [markdown]
# ## 4. Timelines at a realistic size
#
# Now with the real clock (`time.perf_counter`) and MNIST-sized layers: an FCN 4 with 784 inputs, 256 units per
# hidden block, batch 256 (random inputs: timing does not depend on the values). Three runs of a few steps each:
#
# * **bprop**;
# * **cDNI**;
# * **cDNI with stochastic updates** (`p_update=0.5`, tutorial 06): after every forward pass each block updates
#   only if its own coin comes up, in a random order. Blocks that skip record no backward and no update.
#
# Each run is recorded from its very first step, and that step is special: the first call of each matrix product
# pays for allocating its buffers and setting up BLAS, so it can take many times as long as the same call later
# (the run below prints what each warm-up step cost against a later step). That cost says nothing about locks,
# so `plot_timeline` leaves out each run's first recorded step (its `warmup_steps=1`, which `without_steps` below
# does by hand for the printed numbers) and says in the figure what it left out; the trace of section 5 keeps the
# step and marks it.
#
# On the left, what was recorded: this network runs in one process, so the picture shows the *logical order* of
# the work, one block at a time, and the gaps are the Python between the pieces. On the right, the earliest
# schedule of the same events with one worker per block, and how many blocks it keeps busy on average (the
# summed durations over its length; 1.0 would mean no overlap at all).

# %%
if not TINY:  # the sizes the text above states
    assert (D_IN, HIDDEN, BATCH) == (784, 256, 256)
x_big = rng.standard_normal((BATCH, D_IN)).astype(np.float32)
y_big = rng.integers(0, 3, BATCH)
runs = {}
for label, mode, p in (("bprop", "bprop", 1.0), ("cDNI", "cdni", 1.0), ("cDNI, p = 0.5", "cdni", 0.5)):
    events = record(mode, depth=4, steps=1 + STEPS, clock=time.perf_counter, p_update=p, x=x_big, y=y_big,
                    hidden=HIDDEN)  # fmt: skip
    runs[label] = events
    steady = without_steps(events, [0])  # what the figure draws: the steps after the warm-up step
    assert sorted({e.step for e in steady}) == list(range(1, 1 + STEPS))
    early = earliest_schedule(steady)
    assert makespan(early) <= makespan(steady) + 1e-12  # never later than the recording
    print(f"{label:<14} {len(steady):3d} events in {STEPS} steps, {1e3 * total_work(steady):6.1f} ms of work, "
          f"earliest schedule {1e3 * makespan(early):6.1f} ms: {total_work(steady) / makespan(early):.2f} blocks busy;"
          f" {warmup_note(events, [0])}")  # fmt: skip
plot_timeline(runs, OUT / FIGURES[1], title=f"FCN 4 ({D_IN}-{HIDDEN}-{HIDDEN}-{HIDDEN}-3), batch {BATCH}")

# %% [markdown]
# What to look for in `02_timeline.png`:
#
# * **bprop, left**: the V of every step - forwards going up, backwards coming down; block 0 idles from its
#   forward until the gradient comes back. On the right the only overlap is an update running while the block
#   below does its backward.
# * **cDNI, left**: a staircase - each block finishes with the batch before the next block starts. On the
#   right, the blocks work on different steps at the same time: block 0 starts step $t+1$ while the blocks above
#   are still on step $t$.
# * **stochastic updates**: steps in which a block's coin did not come up have no backward or update for it.
# * **the bill**: DNI does *more* work than backprop - section 2 counted five pieces per hidden block against
#   three, because every module predicts and regresses - so in one process it takes longer (compare the totals
#   printed above). What it buys is freedom of order; the time comes back only when the blocks really run on
#   separate workers.
#
# The wall-clock durations are those of this sequential run, Python overhead included, so the ratios are
# indicative only; the one-tick count of section 3 is the exact statement.

# %% [markdown]
# ## 5. The same runs in a trace viewer
#
# A static picture cannot zoom. `write_chrome_trace` writes the recorded events in the Chrome trace event format,
# the JSON that [ui.perfetto.dev](https://ui.perfetto.dev) ("Open trace file") and `chrome://tracing` in Chrome
# ("Load") open. `python -m minidni train ... --timeline N` writes the same file, `timeline.trace.json`, next to
# `timeline.json` in its run directory. What you see there:
#
# * one process per run (bprop, cDNI, cDNI with $p = 0.5$) and in it one track per block, named "block 0" to
#   "block 3 (output)", block 0 at the top (the Gantt charts put it at the bottom);
# * one slice per event, named by its kind (`forward`, `synthetic`, `backward`, `update`, `sg_update`), at its
#   recorded time; the keys W and S zoom, A and D pan, so a single forward pass of a few milliseconds fills the
#   screen;
# * click a slice: its arguments give the step, the block, what it computes (for example "SG module after block 1
#   regresses onto its target") and what it waited for (which block's event, of which kind, step and id), and an
#   arrow links it to each event of another block that it waited for. Under bprop each backward waits for the one
#   above, a chain from the output block all the way down; under cDNI the only arrows from the block above end at
#   the modules' regressions (section 2 checked both). In both, a forward pass waits for the block below;
# * the first step of every run is there too, marked: category "warm-up" and names such as "warm-up: forward".
#   Compare its slices with the later ones to see what the figure left out.
#
# The checks below read the file back the way a viewer does: every event is a complete event ("X") in
# microseconds on its own block's track, with its step and what it waited for, one arrow per event waited for,
# and only the first step is marked.

# %%
trace_path = OUT / TRACE
write_chrome_trace(runs, trace_path)  # warmup_steps=1: the first recorded step of each run is marked
trace = json.loads(trace_path.read_text())
assert trace == json.loads(json.dumps(chrome_trace(runs)))
slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
processes = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
assert list(processes.values()) == list(runs)  # one process per run, named by its label
for pid, (label, events) in zip(processes, runs.items()):
    mine = [e for e in slices if e["pid"] == pid]
    assert len(mine) == len(events) and len({e["tid"] for e in mine}) == 4  # every event, one track per block
    names = sorted(name for (p, _), name in threads.items() if p == pid)
    assert names == ["block 0", "block 1", "block 2", "block 3 (output)"]
    for s, ev in zip(mine, events):
        assert threads[(pid, s["tid"])].startswith(f"block {ev.block}")
        assert abs(s["ts"] - 1e6 * ev.start) < 1e-2 and abs(s["dur"] - 1e6 * ev.duration) < 1e-2  # us, to the ns
        assert (s["cat"] == "warm-up") == (ev.step == 0) and s["name"].endswith(ev.kind)
        assert s["args"]["step"] == ev.step and all(f"(event {n})" in s["args"]["waited for"] for n in ev.needs)
    arrows = [e for e in trace["traceEvents"] if e["ph"] == "s" and e["pid"] == pid]
    assert len(arrows) == sum(len(ev.needs) for ev in events)  # one arrow per event waited for
print(f"{len(slices)} events of {len(runs)} runs on {len(threads)} tracks written to {trace_path}")
print("open it at https://ui.perfetto.dev (Open trace file) or in Chrome at chrome://tracing (Load)")

# %% [markdown]
# ## Summary
#
# * The trainer records each block's work and what it waited for; nothing in these pictures is drawn by hand.
# * Backprop's locks make a step cost $2N + 1$ ticks on $N$ workers; DNI's cost 5 at any depth, because a block
#   waits only for its neighbour's backward pass (its module's target), never for the whole network.
# * The same records open in a trace viewer (`write_chrome_trace`; `--timeline N` writes `timeline.trace.json`):
#   one track per block, to zoom into, with the slow first step marked as warm-up rather than hidden.
# * Removing the locks is only worth it if the synthetic gradients are good. Tutorial 03 trains one module on
#   a gradient we know.

# %%
for name in FIGURES:
    assert (OUT / name).stat().st_size > 0, name
print(f"tutorial 02 finished in {time.perf_counter() - T_START:.1f}s")
