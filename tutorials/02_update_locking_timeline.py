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
# 4. timelines recorded at a realistic size for backprop, DNI and stochastic updates.
#
# Sizes: `MINIDNI_TINY=1` shrinks everything so that the script runs in a few seconds (the test suite does
# this); figures go to `tutorials/out/`, or to `$MINIDNI_TUTORIAL_OUT`.

# %%
import itertools
import os
import time
from pathlib import Path

import numpy as np

import minidni.core.backend
from minidni.dni.network import build_network
from minidni.runs.plots import pyplot, save_figure
from minidni.runs.timeline import Timeline, earliest_schedule, makespan, plot_timeline, total_work

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

# the sizes of section 4; the tiny ones only prove that the script runs
D_IN, HIDDEN, BATCH = (20, 32, 16) if TINY else (784, 256, 256)  # section 4: MNIST-sized layers
STEPS = 3 if TINY else 4
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
    net = build_network(depth=depth, mode=mode, d_in=x.shape[1], hidden=hidden, n_classes=3, sg_hidden=hidden,
                        seed=0, p_update=p_update)  # fmt: skip
    if clock is not None:
        net.train_step(x, y)  # one step unrecorded: the first call of a BLAS routine pays for its set-up
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
# the modules' regression steps. We check both facts, and the dependencies, in code.

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
print("backprop locks block 0's update behind every other block; DNI does not")

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
# On the left, what was recorded: this network runs in one process, so the picture shows the *logical order* of
# the work, one block at a time, and the gaps are the Python between the pieces. On the right, the earliest
# schedule of the same events with one worker per block, and how many blocks it keeps busy on average (the
# summed durations over its length; 1.0 would mean no overlap at all).

# %%
x_big = rng.standard_normal((BATCH, D_IN)).astype(np.float32)
y_big = rng.integers(0, 3, BATCH)
runs = {}
for label, mode, p in (("bprop", "bprop", 1.0), ("cDNI", "cdni", 1.0), ("cDNI, p = 0.5", "cdni", 0.5)):
    events = record(mode, depth=4, steps=STEPS, clock=time.perf_counter, p_update=p, x=x_big, y=y_big,
                    hidden=HIDDEN)  # fmt: skip
    runs[label] = events
    busy = total_work(events) / makespan(earliest_schedule(events))
    print(f"{label:<22} {len(events):3d} events, {1e3 * total_work(events):6.1f} ms of work, "
          f"earliest schedule {1e3 * makespan(earliest_schedule(events)):6.1f} ms: {busy:.2f} blocks busy")  # fmt: skip
    assert makespan(earliest_schedule(events)) <= makespan(events) + 1e-12  # never later than the recording
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
# * **the bill**: DNI does *more* work in total than backprop - every module predicts and regresses - so in one
#   process it is slower. What it buys is freedom of order; the time comes back only when the blocks really
#   run on separate workers.
#
# The wall-clock durations are those of this sequential run, Python overhead included, so the ratios are
# indicative only; the one-tick count of section 3 is the exact statement.

# %% [markdown]
# ## Summary
#
# * The trainer records each block's work and what it waited for; nothing in these pictures is drawn by hand.
# * Backprop's locks make a step cost $2N + 1$ ticks on $N$ workers; DNI's cost 5 at any depth, because a block
#   waits only for its neighbour's backward pass (its module's target), never for the whole network.
# * Removing the locks is only worth it if the synthetic gradients are good. Tutorial 03 trains one module on
#   a gradient we know.

# %%
for name in FIGURES:
    assert (OUT / name).stat().st_size > 0, name
print(f"tutorial 02 finished in {time.perf_counter() - T_START:.1f}s")
