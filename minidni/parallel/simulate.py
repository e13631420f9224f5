"""A discrete-event simulator of training steps with one worker per block: predicted step time and throughput.

Given what one step of each block costs on this machine (`Costs`, seconds, measured at the run's batch size), it
plays out the worker loops of minidni.parallel.workers event by event and returns the events
(minidni.runs.timeline.Event, the kinds of timeline.KINDS) that `timeline.draw_timeline` draws as Gantt charts. Each
worker does its own events one after another. Two kinds of message couple neighbours, and each arrives `transfer`
seconds after the event it is sent after ends:

    h(t)   block i -> i+1, sent after forward(i, t)
    dx(t)  block i -> i-1, sent after update(i, t), as minidni.parallel.workers does (dx_after="backward": right after
           backward(i, t)); for bprop the true gradient, for DNI the target of block i-1's SG module.

An event's `needs` are the events after which the messages it read were sent. Block i, step t, N blocks (N-1 is
the output block; its forward includes the loss):

    bprop        [i>0] wait for h(t);  forward(t);  [i<N-1] wait for dx(t) from block i+1;  backward(t);  update(t)
    dni          [i>0] wait for h(t);  forward(t);  synthetic(t);  backward(t);  update(t);  then the targets of
                 its module (block i+1's dx(s)), each an sg_update recorded with step s:
                   delay=d     wait for the target of step t-d (if t-d >= 0) and apply it
                   delay=None  apply every target that has arrived by now, oldest first (looking again after
                               each one); then, while more than max_inflight are pending, wait for the oldest
                 after the last step: wait for and apply the remaining targets in order.
                 The output block: [wait for h(t)]; forward(t); backward(t); update(t).
    stochastic   dni, where each block (coins from np.random.default_rng(seed), one per block and step) does
                 its synthetic/backward/update only with probability p_update; its forward always runs. A block
                 that skips sends no target, and the block below drops that step from its pending targets (the
                 coins are known to every worker, so nobody waits for a target that will not come).
                 minidni.parallel.workers does not run this schedule: this is a prediction only.
    pipelined    GPipe with M micro-batches: forwards of micro-batches 0..M-1 flow up, then their backwards
                 flow down in reverse order (M-1..0), each dx sent right after its backward, then ONE update per
                 step after the block's last backward; step t+1's forwards start after the block's update
                 (synchronous: the same math as bprop). Assumptions: a micro-batch costs 1/M of the block's
                 forward and backward (cost linear in the batch, which overstates small-batch efficiency), and
                 one micro-batch message costs transfer/M. minidni.parallel.workers does not run it either.

Step time and throughput (`step_time`, `throughput`): step t is done when every block has finished its work on
batch t (forward, synthetic, backward, update; not the modules' regressions, which lag behind by design and are
recorded with the step of their target). The steady-state step time is the mean spacing of the done times
after the first `warmup` steps, (done(S-1) - done(warmup-1)) / (S - warmup), which leaves out the pipeline's
ramp-up; throughput is batch / step time. `sequential_time` is the reference: one step with every block in one
process, no transfers.

For the 8- and 64-worker predictions a fixed network is split into W equal blocks (`split_costs`,
`scaling_table`): each block gets 1/W of the whole network's forward, backward and update (cost linear in block
size, the loss spread evenly too), every hidden block carries one SG module of the measured boundary cost, every
message costs the measured transfer, each worker has a core of its own, and nothing contends (no shared memory
bandwidth, no network fabric beyond the measured transfer).

What this module deliberately is not: a measurement. Every number it gives is computed from the costs it is
handed; it runs no network and does not know what the blocks compute, only how long each piece takes.
"""

import json
import math
import numbers
from collections import deque
from dataclasses import asdict, dataclass, fields

import numpy as np

from minidni.dni.stochastic import check_p_update
from minidni.runs.timeline import Event, draw_timeline, legend_handles

SCHEDULES = ("bprop", "dni", "stochastic", "pipelined")
DX_AFTER = ("update", "backward")  # when a block sends its dx down: minidni.parallel.workers sends it after the update

# -------------------------------------------------------------------------------------------------------------
# costs


def _seconds(value, name):
    """A cost must be a finite number of seconds >= 0 (a bool is not a number of seconds)."""
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


@dataclass
class BlockCost:
    """Seconds for ONE step of one block at the run's batch size."""

    forward: float  # the block's forward (for the output block: forward + softmax loss)
    backward: float  # the block's backward (dx included where the worker computes it)
    update: float  # optimiser step of the block's parameters
    synthetic: float = 0.0  # SG module prediction M(h [, y]) (0 for the output block / locked backprop)
    sg_update: float = 0.0  # SG module regression step (0 for the output block / locked backprop)

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _seconds(getattr(self, f.name), f"BlockCost.{f.name}"))


@dataclass
class Costs:
    """The measured costs of one network: per block (block 0 first, the output block last) and per message."""

    blocks: list  # [BlockCost]
    transfer: float  # seconds for one message (an activation up or a gradient down) between workers
    batch: int  # the batch size the costs were measured at

    def __post_init__(self):
        if not isinstance(self.blocks, (list, tuple)) or not self.blocks:
            raise ValueError(f"Costs.blocks must be a non-empty list of BlockCost, got {self.blocks!r}")
        bad = [i for i, b in enumerate(self.blocks) if not isinstance(b, BlockCost)]
        if bad:
            raise ValueError(f"Costs.blocks[{bad[0]}] is not a BlockCost: {self.blocks[bad[0]]!r}")
        out = self.blocks[-1]
        if out.synthetic or out.sg_update:
            raise ValueError(
                "the output block (the last) has no SG module: its synthetic and sg_update costs must be 0, "
                f"got {out.synthetic} and {out.sg_update}"
            )
        self.blocks = list(self.blocks)
        self.transfer = _seconds(self.transfer, "Costs.transfer")
        if not (isinstance(self.batch, numbers.Integral) and not isinstance(self.batch, bool) and self.batch >= 1):
            raise ValueError(f"Costs.batch must be an integer >= 1, got {self.batch!r}")
        self.batch = int(self.batch)

    @property
    def n_blocks(self):
        return len(self.blocks)

    def to_json(self):
        """The costs as JSON text: {"blocks": [{forward, backward, update, synthetic, sg_update}, ...],
        "transfer": seconds, "batch": int}."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, data):
        """Costs from JSON text or the dict it holds; a clear ValueError for anything else."""
        expected = 'expected {"blocks": [{"forward", "backward", "update"[, "synthetic", "sg_update"]}, ...], '
        expected += '"transfer": seconds, "batch": int}'
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as err:
                raise ValueError(f"costs are not valid JSON ({err}); {expected}") from err
        if not isinstance(data, dict):
            raise ValueError(f"costs must be a JSON object, got {type(data).__name__}; {expected}")
        missing = [k for k in ("blocks", "transfer", "batch") if k not in data]
        if missing:
            raise ValueError(f"costs miss the keys {missing}; {expected}")
        if not isinstance(data["blocks"], list) or not data["blocks"]:
            raise ValueError(f"costs have no blocks (got {data['blocks']!r}); {expected}")
        blocks = []
        for i, row in enumerate(data["blocks"]):
            try:
                blocks.append(BlockCost(**row))
            except TypeError as err:  # not a dict, a missing or an unknown key
                raise ValueError(f"block {i} of the costs is not a BlockCost ({err}); {expected}") from err
        return cls(blocks, data["transfer"], data["batch"])


def sequential_time(costs, schedule, p_update=1.0):
    """Seconds for one step with every block in one process, no transfers: the single-worker reference.

    bprop and pipelined (the same math): the summed forward + backward + update. dni: plus every synthetic and
    sg_update. stochastic: the expected time, every forward plus p_update times the rest.
    """
    _check_schedule(schedule)
    p_update = check_p_update(p_update)
    f = sum(b.forward for b in costs.blocks)
    rest = sum(b.backward + b.update for b in costs.blocks)
    if schedule in ("bprop", "pipelined"):
        return f + rest
    rest += sum(b.synthetic + b.sg_update for b in costs.blocks)
    return f + (p_update * rest if schedule == "stochastic" else rest)


# -------------------------------------------------------------------------------------------------------------
# the simulation: one generator per worker, run by a scheduler that hands each worker the events it waits for


def _send_until_done(gen, value):
    """gen.send that returns None when the generator finishes."""
    try:
        return gen.send(value)
    except StopIteration:
        return None


class _Simulation:
    """The shared state: the events so far, each worker's clock, and the messages sent.

    A worker is a generator. To read a message it yields its key, ("h" or "dx", sender, step, micro-batch),
    and is resumed with the Event after which the message was sent, once that exists; its own events start
    when it is free and every message it reads has arrived (that event's end + latency).
    """

    def __init__(self, n_blocks, latency):
        self.latency = latency
        self.events = []
        self.free = [0.0] * n_blocks  # when each worker finishes its latest event
        self.sent = {}  # (message, block, step, micro) -> the Event after which block sent it

    def arrival(self, event):
        return event.end + self.latency

    def work(self, block, kind, step, duration, reads=(), sends=(), micro=0):
        """Block `block` does `kind` on `step` for `duration` seconds once the messages `reads` (keys) have
        arrived, then sends the messages named in `sends` ("h" up, "dx" down)."""
        sources = []
        for key in reads:
            sources.append((yield key))
        start = max([self.free[block]] + [self.arrival(e) for e in sources])
        event = Event(len(self.events), step, block, kind, start, start + duration, tuple(e.id for e in sources))
        self.events.append(event)
        self.free[block] = event.end
        for message in sends:
            self.sent[(message, block, step, micro)] = event

    def run(self, workers):
        """Advance every worker as far as the messages it waits for allow, until all have finished."""
        waiting = {}  # worker -> the key of the message it waits for
        for w in workers:
            waiting[w] = next(w, None)
        while waiting:
            progressed = False
            for w, key in list(waiting.items()):
                while key is not None and key in self.sent:
                    key = _send_until_done(w, self.sent[key])
                    progressed = True
                if key is None:
                    del waiting[w]
                else:
                    waiting[w] = key
            if not progressed and waiting:
                raise RuntimeError(f"simulated workers deadlocked, waiting for {sorted(waiting.values())}")
        return self.events


def _bprop_worker(sim, i, cost, n, steps, dx_after):
    for t in range(steps):
        h_in, dh_in = [("h", i - 1, t, 0)] if i > 0 else [], [("dx", i + 1, t, 0)] if i < n - 1 else []
        yield from sim.work(i, "forward", t, cost.forward, h_in, sends=["h"])
        yield from sim.work(i, "backward", t, cost.backward, dh_in, sends=["dx"] if dx_after == "backward" else [])
        yield from sim.work(i, "update", t, cost.update, sends=["dx"] if dx_after == "update" else [])


def _pipelined_worker(sim, i, cost, n, steps, m):
    for t in range(steps):
        for k in range(m):  # micro-batches flow up ...
            reads = [("h", i - 1, t, k)] if i > 0 else []
            yield from sim.work(i, "forward", t, cost.forward / m, reads, sends=["h"], micro=k)
        for k in reversed(range(m)):  # ... and down, last in first out (GPipe)
            reads = [("dx", i + 1, t, k)] if i < n - 1 else []
            yield from sim.work(i, "backward", t, cost.backward / m, reads, sends=["dx"], micro=k)
        yield from sim.work(i, "update", t, cost.update)


def _dni_worker(sim, i, cost, n, steps, dx_after, delay, max_inflight, runs):
    """runs: (steps, n) bool, whether block j does its synthetic/backward/update on step t (all True for dni)."""
    pending = deque()  # steps whose target (block i+1's dx) this block's module has yet to regress onto

    def target(s):
        return ("dx", i + 1, s, 0)

    def apply_oldest():
        s = pending.popleft()
        yield from sim.work(i, "sg_update", s, cost.sg_update, [target(s)])

    for t in range(steps):
        yield from sim.work(i, "forward", t, cost.forward, [("h", i - 1, t, 0)] if i > 0 else [], sends=["h"])
        if runs[t, i]:
            if i < n - 1:
                yield from sim.work(i, "synthetic", t, cost.synthetic)
            yield from sim.work(i, "backward", t, cost.backward, sends=["dx"] if dx_after == "backward" else [])
            yield from sim.work(i, "update", t, cost.update, sends=["dx"] if dx_after == "update" else [])
        if i == n - 1:
            continue
        if runs[t, i + 1]:  # block i+1 will send its dx of step t
            pending.append(t)
        if delay is not None:
            if pending and pending[0] == t - delay:
                yield from apply_oldest()
            continue
        while pending:  # every target that has arrived by now, oldest first (targets arrive in step order)
            arrived = sim.arrival((yield target(pending[0])))
            if arrived > sim.free[i]:
                break
            yield from apply_oldest()
        while len(pending) > max_inflight:
            yield from apply_oldest()
    while pending:  # after the last step: the remaining targets, in order, as they arrive
        yield from apply_oldest()


def _check_schedule(schedule):
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")


def _check_int(value, name, low):
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def simulate(
    costs, schedule, steps, delay=None, max_inflight=2, p_update=1.0, microbatches=4, seed=0, dx_after="update"
):
    """The events of `steps` training steps with one worker per block, as the worker loops run them.

    schedule: "bprop", "dni", "stochastic" or "pipelined" (the module docstring gives each loop). Each reads
    only its own arguments: delay and max_inflight (dni, stochastic; delay None is asynchronous, an int d >= 0
    regresses onto the target of step t-d after step t), p_update and seed (stochastic), microbatches
    (pipelined); every argument is checked whatever the schedule. dx_after: when a block sends its dx down,
    after its "update" (as minidni.parallel.workers does) or right after its "backward" (bprop, dni, stochastic; a
    pipeline sends each micro-batch's dx after its backward).

    Returns Events in the order they were created (every event after the events in its needs, so
    timeline.earliest_schedule(events, latency=...) reproduces them); ids are their positions, times in seconds
    from the start of the run. Pipelined micro-batch events carry the step they belong to.
    """
    _check_schedule(schedule)
    steps = _check_int(steps, "steps", 1)
    if delay is not None:
        delay = _check_int(delay, "delay (None: asynchronous; an int d >= 0: the target of step t-d)", 0)
    max_inflight = _check_int(max_inflight, "max_inflight", 1)
    p_update = check_p_update(p_update)
    microbatches = _check_int(microbatches, "microbatches", 1)
    seed = _check_int(seed, "seed", 0)
    if dx_after not in DX_AFTER:
        raise ValueError(f"dx_after must be one of {DX_AFTER}, got {dx_after!r}")
    if not isinstance(costs, Costs):
        raise ValueError(f"costs must be a minidni.parallel.simulate.Costs, got {type(costs).__name__}")

    n = costs.n_blocks
    if schedule == "pipelined":
        sim = _Simulation(n, costs.transfer / microbatches)
        workers = [_pipelined_worker(sim, i, c, n, steps, microbatches) for i, c in enumerate(costs.blocks)]
    elif schedule == "bprop":
        sim = _Simulation(n, costs.transfer)
        workers = [_bprop_worker(sim, i, c, n, steps, dx_after) for i, c in enumerate(costs.blocks)]
    else:
        sim = _Simulation(n, costs.transfer)
        if schedule == "stochastic":
            runs = np.random.default_rng(seed).random((steps, n)) < p_update  # (steps, n) the coins
        else:
            runs = np.ones((steps, n), dtype=bool)
        args = (n, steps, dx_after, delay, max_inflight, runs)
        workers = [_dni_worker(sim, i, c, *args) for i, c in enumerate(costs.blocks)]
    return sim.run(workers)


# -------------------------------------------------------------------------------------------------------------
# reading a simulation: step time, throughput, speed-up


def done_times(events):
    """done[t]: when every block has finished its forward/synthetic/backward/update on batch t (seconds).

    sg_update events are left out: a module's regression onto the target of step t lags behind by design (it is
    recorded with step t but runs during a later step, or after the last one).
    """
    done = {}
    for e in events:
        if e.kind != "sg_update":
            done[e.step] = max(done.get(e.step, 0.0), e.end)
    return [done[t] for t in range(len(done))]


def step_time(events, warmup=1):
    """Seconds per step in the steady state: (done(S-1) - done(warmup-1)) / (S - warmup), with done(-1) = 0.

    Leaving out the first `warmup` steps leaves out the ramp-up (under DNI the upper blocks start late; a
    pipeline fills). Every step in the mean is a whole step of the steady state, so for a periodic schedule
    this is exactly its period.
    """
    warmup = _check_int(warmup, "warmup", 0)
    done = done_times(events)
    if len(done) <= warmup:
        raise ValueError(f"step_time needs more steps than warmup={warmup}: the events hold {len(done)} steps")
    start = done[warmup - 1] if warmup else 0.0
    return (done[-1] - start) / (len(done) - warmup)


def throughput(events, batch, warmup=1):
    """Samples per second in the steady state: batch / step_time(events, warmup)."""
    batch = _check_int(batch, "batch", 1)
    return batch / step_time(events, warmup)


def speedup(costs, schedule, baseline="bprop", steps=16, warmup=2, **kw):
    """How many times faster `schedule` trains than `baseline` on the same workers: the ratio of their
    steady-state step times. baseline may also be "sequential": every block in one process running backprop
    (sequential_time(costs, "bprop")). kw (delay, max_inflight, ...) go to both simulations."""
    fast = step_time(simulate(costs, schedule, steps, **kw), warmup)
    if baseline == "sequential":
        return sequential_time(costs, "bprop") / fast
    return step_time(simulate(costs, baseline, steps, **kw), warmup) / fast


# -------------------------------------------------------------------------------------------------------------
# scaling: one fixed network split over more and more workers


def split_costs(whole, workers, boundary_sg=(0.0, 0.0), transfer=0.0, batch=1):
    """The costs of a fixed network split into `workers` equal blocks, from the costs of the whole network.

    whole: a BlockCost of the whole network run as one block (forward includes the loss; its synthetic and
    sg_update must be 0: give the module's cost as boundary_sg). boundary_sg: (synthetic, sg_update) seconds
    of one SG module at a block boundary, carried by every hidden block. transfer: seconds per message.

    Assumptions: an equal split; cost linear in block size (each block gets 1/W of the whole's forward,
    backward and update; the loss is spread evenly too); one SG module per boundary, of the measured cost
    whatever W; one core per worker, no contention; no network fabric beyond the measured transfer.
    """
    if not isinstance(whole, BlockCost):
        raise ValueError(f"whole must be a BlockCost of the whole network, got {type(whole).__name__}")
    if whole.synthetic or whole.sg_update:
        raise ValueError("the whole network has no SG module: give the boundary module's cost as boundary_sg")
    workers = _check_int(workers, "workers", 1)
    try:
        synthetic, sg_update = boundary_sg
    except (TypeError, ValueError) as err:
        raise ValueError(f"boundary_sg must be (synthetic, sg_update) seconds, got {boundary_sg!r}") from err
    share = {"forward": whole.forward / workers, "backward": whole.backward / workers, "update": whole.update / workers}
    hidden = BlockCost(**share, synthetic=synthetic, sg_update=sg_update)
    return Costs([hidden] * (workers - 1) + [BlockCost(**share)], transfer, batch)


def scaling_table(
    whole,
    boundary_sg=(0.0, 0.0),
    transfer=0.0,
    batch=1,
    workers=(1, 2, 4, 8, 16, 32, 64),
    schedules=("bprop", "dni", "pipelined"),
    steps=16,
    warmup=4,
    **kw,
):
    """Predicted steady-state step time, samples/s and speed-up over 1-worker bprop, per (workers, schedule).

    Each row is a dict {"workers", "schedule", "step_time", "samples_per_s", "speedup"}; the network is split
    by split_costs (its assumptions apply); kw (delay, max_inflight, microbatches, ...) go to simulate.
    """
    one = step_time(simulate(split_costs(whole, 1, boundary_sg, transfer, batch), "bprop", steps), warmup)
    rows = []
    for w in workers:
        costs = split_costs(whole, w, boundary_sg, transfer, batch)
        for schedule in schedules:
            t = step_time(simulate(costs, schedule, steps, **kw), warmup)
            rows.append(
                {"workers": w, "schedule": schedule, "step_time": t, "samples_per_s": batch / t, "speedup": one / t}
            )
    return rows


# -------------------------------------------------------------------------------------------------------------
# pictures


def plot_schedules(runs, path, title=None, warmup=1, simulated=None):
    """Gantt charts of simulated runs, e.g. {"bprop": events, "dni": events}, stacked on a shared time axis,
    each titled with its steady-state step time. simulated: the labels of the runs that were simulated (None:
    all of them); the others are titled as measured, e.g. a run in workers recorded with --timeline."""
    from minidni.runs.plots import pyplot, save_figure

    if not runs:
        raise ValueError("plot_schedules needs at least one run: {label: events}")
    plt = pyplot()
    # one row per run and a last, empty row for the key, where it covers no bar
    fig, axes = plt.subplots(len(runs) + 1, 1, figsize=(11, 1.4 + 1.6 * len(runs)), squeeze=False,
                             gridspec_kw={"height_ratios": [1.6] * len(runs) + [0.3]})  # fmt: skip
    n_blocks = 1 + max(e.block for events in runs.values() for e in events)
    for ax in axes[1:-1, 0]:
        ax.sharex(axes[0, 0])
    for ax, (label, events) in zip(axes[:-1, 0], runs.items()):
        how = "simulated" if simulated is None or label in simulated else "measured"
        title_row = f"{label} ({how}, one worker per block)"
        if len(done_times(events)) > warmup:
            title_row += f": {step_time(events, warmup) * 1e3:.3g} ms/step after {warmup} warm-up step(s)"
        draw_timeline(ax, events, title_row, n_blocks)
    axes[-1, 0].axis("off")
    axes[-1, 0].legend(handles=legend_handles(), loc="center", fontsize=7, ncol=5, frameon=False)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_scaling(rows, path, title=None):
    """Speed-up over 1-worker bprop against the number of workers (log2 axes), one line per schedule, with
    the ideal (speed-up = workers) dashed. rows: as scaling_table returns them."""
    from minidni.runs.plots import pyplot, save_figure

    if not rows:
        raise ValueError("plot_scaling needs rows from scaling_table")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    workers = sorted({r["workers"] for r in rows})
    ax.plot(workers, workers, ls="--", c="0.6", label="ideal")
    for schedule in dict.fromkeys(r["schedule"] for r in rows):
        mine = sorted((r["workers"], r["speedup"]) for r in rows if r["schedule"] == schedule)
        ax.plot(*zip(*mine), marker="o", label=schedule)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set(xlabel="workers (one block each)", ylabel="speed-up over 1-worker bprop", title=title or "predicted")
    ax.legend(fontsize=8)
    save_figure(fig, path)
