"""Timelines of training steps: which block computes what, and when, recorded by the trainer.

An event is one piece of one block's work on one step: its forward pass, its synthetic gradient (asking its
module M for dh_syn), its backward pass, its parameter update, or its module's regression step. A
`minidni.dni.network.Network` records them while a Timeline is attached (`net.record_timeline(timeline)`), with the
wall-clock start and end of each and the events of *other* blocks whose results it reads (`needs`):

    kind        block i's event                         needs (besides block i's own earlier events)
    forward     h_i = f_i(h_{i-1})                      forward of block i-1 (not under complete unlock)
    synthetic   dh_syn = M_{i+1}(h_i [, y])             -
    backward    dx = f_i.backward(dh)                   backward of block i+1, unless dh was synthetic
    update      f_i's optimiser step                    -
    sg_update   M_{i+1} regresses onto its target       backward of block i+1 (the target is its dx)

Block i's own events run one after another, in the order recorded: a block is one worker. Two pictures come
from the same events (`plot_timeline`), and one file to explore them in (`chrome_trace`):

    recorded   where the events happened. A Network runs its blocks one after another in one process, so
               this shows the logical order of the work, one thing at a time (the picture says so).
    earliest   `earliest_schedule`: every block on a worker of its own, each event started as soon as its
               worker is free and the events it needs have ended, with the durations measured in the
               recorded run. Computed from the recorded dependencies, not measured: it shows what the locks
               allow. Under backprop, block 0 cannot start step t+1 before the gradient of step t has come
               all the way down; under DNI it waits only for its neighbour.
    trace      the recorded events in the Chrome trace event format, one track per block and an arrow to each
               event waited for, for ui.perfetto.dev or chrome://tracing, where a learner can zoom into a run.

The first step of a run is slow for reasons that have nothing to do with locks (first calls allocate memory and set
up BLAS), so the Gantt charts leave it out and the trace marks it "warm-up" (see "the warm-up step" below).

What this module deliberately is not: a profiler (durations are whatever the sequential run took, Python
overhead included), and not parallel. Events carry wall-clock times, so blocks that ran in separate workers would
show real concurrency in the recorded picture; the trainers here run every block in one process.
"""

import contextlib
import json
import time
from dataclasses import asdict, dataclass, replace

KINDS = ("forward", "synthetic", "backward", "update", "sg_update")


@dataclass
class Event:
    """One piece of work: block `block` did `kind` on step `step` from `start` to `end` (seconds)."""

    id: int
    step: int
    block: int
    kind: str
    start: float
    end: float
    needs: tuple = ()  # ids of other blocks' events whose results this one read

    @property
    def duration(self):
        return self.end - self.start


class Timeline:
    """Collects Events while a step is open (`with timeline.step(): ...`); outside a step nothing is recorded,
    so evaluation and diagnostics (which also run forward passes) leave no events."""

    def __init__(self, clock=time.perf_counter, forward_locked=True):
        self.clock = clock
        self.forward_locked = forward_locked  # False under complete unlock: h_{i-1} is predicted, not waited for
        self.events = []
        self.steps = 0
        self._open = False
        self._origin = None  # the clock at the first step: event times are relative to it
        self._latest = {}  # (kind, block) -> id of the latest such event in the open step

    @contextlib.contextmanager
    def step(self):
        """Open one training step: events recorded inside it get this step's number."""
        if self._open:
            raise RuntimeError("a timeline step is already open; steps do not nest")
        if self._origin is None:
            self._origin = self.clock()
        self._open, self._latest = True, {}
        try:
            yield self
        finally:
            self._open = False
            self.steps += 1

    def _needs(self, block, kind):
        """The other blocks' events this one reads, by the rules of the module docstring."""
        latest = self._latest.get
        if kind == "forward" and self.forward_locked:
            wanted = [latest(("forward", block - 1))]
        elif kind == "backward" and latest(("synthetic", block)) is None:
            wanted = [latest(("backward", block + 1))]  # a true gradient, from the block above
        elif kind == "sg_update":
            wanted = [latest(("backward", block + 1))]
        else:
            wanted = []
        return tuple(i for i in wanted if i is not None)

    @contextlib.contextmanager
    def event(self, block, kind):
        """Record the work done inside the `with` as block `block`'s `kind` (nothing if no step is open)."""
        if not self._open:
            yield
            return
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {KINDS}")
        needs = self._needs(block, kind)
        start = self.clock() - self._origin
        yield
        event = Event(len(self.events), self.steps, block, kind, start, self.clock() - self._origin, needs)
        self.events.append(event)
        self._latest[(kind, block)] = event.id
        if kind == "forward":  # a new forward pass: this block's synthetic gradient is yet to come
            self._latest.pop(("synthetic", block), None)

    # -- saving ----------------------------------------------------------------------------------------------

    def to_json(self):
        return json.dumps([asdict(e) for e in self.events])

    @staticmethod
    def events_from_json(text):
        """The events of a saved timeline (a JSON list of Event fields); a clear error for anything else."""
        try:
            rows = json.loads(text)
            return [Event(**{**row, "needs": tuple(row["needs"])}) for row in rows]
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"not a saved timeline (a JSON list of events with {list(Event.__annotations__)}): "
                             f"{err}") from err  # fmt: skip


def earliest_schedule(events, latency=0.0):
    """Every event started as early as its dependencies allow, one worker per block.

    Events are taken in recorded order (a sequential run records them in an order that respects every
    dependency). Event e starts at max(end of its block's previous event, end of every event in e.needs +
    latency) and lasts as long as it did in the recording; latency (seconds) is the time a result takes to
    reach another worker. Returns new Events with the computed start and end.
    """
    end_of, worker_free, out = {}, {}, []
    for e in events:
        missing = [n for n in e.needs if n not in end_of]
        if missing:
            raise ValueError(f"event {e.id} needs events {missing} that come after it or are not in the list")
        start = max([worker_free.get(e.block, 0.0)] + [end_of[n] + latency for n in e.needs])
        scheduled = Event(e.id, e.step, e.block, e.kind, start, start + e.duration, e.needs)
        end_of[e.id] = worker_free[e.block] = scheduled.end
        out.append(scheduled)
    return out


def makespan(events):
    """From the first event's start to the last event's end (seconds)."""
    return max(e.end for e in events) - min(e.start for e in events) if events else 0.0


def total_work(events):
    """The summed durations of the events (seconds): the makespan if one worker did everything without gaps."""
    return sum(e.duration for e in events)


# -- the warm-up step ----------------------------------------------------------------------------------------
#
# The first step of a run pays for set-up that later steps do not: NumPy allocates its buffers, BLAS starts its
# threads and picks its kernels. How much that costs depends on the machine and the BLAS threads: block 0's first
# forward pass of an MNIST run has been recorded at 24 ms against 1 ms later. A picture that keeps that step at face
# value tells a learner about set-up, not about locks, so the Gantt charts leave it out and the trace marks it.


def warmup_steps_of(events, warmup_steps=1):
    """The numbers of the first `warmup_steps` steps recorded in `events`, in order (all of them if there are fewer)."""
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a whole number >= 0 (recorded steps to treat as warm-up), "
                         f"got {warmup_steps!r}")  # fmt: skip
    return sorted({e.step for e in events})[:warmup_steps]


def without_steps(events, steps):
    """`events` without those of `steps`, moved in time so that the first one left starts at 0; `needs` keeps only
    the events that are left (within a step nothing is lost: every event a step's event needs is of that step)."""
    keep = [e for e in events if e.step not in set(steps)]
    ids = {e.id for e in keep}
    t0 = min((e.start for e in keep), default=0.0)
    return [replace(e, start=e.start - t0, end=e.end - t0, needs=tuple(n for n in e.needs if n in ids)) for e in keep]


def _steps_text(steps):
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"


def warmup_note(events, warmup):
    """One line on what leaving out the warm-up steps `warmup` leaves out: their work against a later step's."""
    later = [e for e in events if e.step not in set(warmup)]
    n_later = len({e.step for e in later})
    work = 1e3 * total_work([e for e in events if e.step in set(warmup)]) / len(warmup)
    per_step = f", against {1e3 * total_work(later) / n_later:.3g} ms per later step" if n_later else ""
    return f"{_steps_text(warmup)} left out as warm-up: {work:.3g} ms of work per step{per_step}"


# -- Gantt charts -------------------------------------------------------------------------------------------

COLOURS = {
    "forward": "#4c72b0",
    "synthetic": "#dd8452",
    "backward": "#c44e52",
    "update": "#55a868",
    "sg_update": "#8172b3",
}

# what the two kinds of module work are, naming the module the way every figure does (the legend keeps the short
# kind names, so that it fits under one panel of a wider figure: tutorial 16, minidni.parallel.simulate)
KINDS_NOTE = (
    "synthetic: the SG module after block i predicts block i's gradient; "
    "sg_update: the SG module after block i regresses onto its target (both in block i's row)"
)


def draw_timeline(ax, events, title, n_blocks=None, note=None, arrows=True):
    """A Gantt chart of `events` on a matplotlib Axes: one row per block (block 0 at the bottom, the output
    block at the top), one bar per event coloured by kind, a dashed line where each step starts, and (arrows)
    a grey line from each event to the other blocks' events it waited for. Draws the events it is given: leave
    out a warm-up step before (`without_steps`, as `plot_timeline` does). note: a line under the title."""
    if not events:
        raise ValueError("no events to draw: was a Timeline attached while the network trained?")
    n_blocks = n_blocks or 1 + max(e.block for e in events)
    scale = 1e3  # seconds -> ms
    by_id = {e.id: e for e in events}
    for e in events:
        ax.barh(e.block, e.duration * scale, left=e.start * scale, height=0.6, color=COLOURS[e.kind], lw=0)
        if arrows:
            for n in e.needs:
                src = by_id[n]
                ax.plot([src.end * scale, e.start * scale], [src.block, e.block], c="0.55", lw=0.5, zorder=0)
    first = {}
    for e in events:
        first.setdefault(e.step, e.start)
    for t in first.values():  # where each step starts
        ax.axvline(t * scale, c="0.8", ls="--", lw=0.7, zorder=0)
    labels = [f"block {b}" for b in range(n_blocks)]
    labels[-1] += " (output)"
    ax.set_yticks(range(n_blocks), labels, fontsize=8)
    ax.set(xlabel="time (ms)", title=f"{title}\n{note}" if note else title)  # above the bars, never on them


def legend_handles():
    """Coloured patches naming each event kind, for a figure legend (KINDS_NOTE says what the module kinds are)."""
    from matplotlib.patches import Patch

    return [Patch(color=c, label=k) for k, c in COLOURS.items()]


EARLIEST_NOTE = (
    "right: computed from the recorded events, one worker per block, each event as early as its dependencies allow"
)


def plot_timeline(runs, path, title=None, recorded="recorded in one process (the logical order)", warmup_steps=1):
    """Gantt charts of several recorded runs, e.g. {"bprop": events, "cdni": events}: per run, the recorded
    order (left) and the earliest schedule with one worker per block (right), on shared time axes. recorded:
    what the left panels show; a run in workers (minidni.parallel.workers) recorded real concurrency, and its earliest
    schedule shows how close the workers came to what the dependencies allow.

    The first `warmup_steps` recorded steps of each run are left out (see "the warm-up step" above; 0 keeps
    every step, e.g. for a recording that already skipped it) and a line under the legend says what they cost;
    a run that recorded nothing but warm-up steps is drawn whole, and the line says so. The legend and the notes
    sit in a row of their own under the charts, so they cover no bar."""
    from minidni.runs.plots import pyplot, save_figure

    if not runs:
        raise ValueError("plot_timeline needs at least one run: {label: events}")
    shown, notes = {}, [KINDS_NOTE, EARLIEST_NOTE]
    for label, events in runs.items():
        warmup = warmup_steps_of(events, warmup_steps)
        later = len({e.step for e in events}) - len(warmup)
        shown[label] = without_steps(events, warmup) if warmup and later else events
        if warmup and later:
            notes.append(f"{label}: {warmup_note(events, warmup)} (first calls allocate memory, set up BLAS)")
        elif warmup:
            notes.append(f"{label}: every recorded step is a warm-up step, drawn as it is (record more steps)")
    plt = pyplot()
    n = len(runs)
    key_height = 0.3 + 0.17 * len(notes)  # inches: the legend's row, then one line per note
    fig = plt.figure(figsize=(12, 0.6 + 1.7 * n + key_height))
    grid = fig.add_gridspec(n + 1, 2, height_ratios=[1.7] * n + [key_height])
    n_blocks = 1 + max((e.block for events in shown.values() for e in events), default=0)
    first = None
    for row, (label, events) in enumerate(shown.items()):
        early = earliest_schedule(events)
        parallelism = total_work(events) / makespan(early) if events else 0.0  # 1.0: one block at a time
        panels = (
            (events, f"{label}: {recorded}"),
            (early, f"{label}: earliest schedule, {parallelism:.2f} blocks busy"),
        )
        for col, (drawn, panel) in enumerate(panels):
            ax = fig.add_subplot(grid[row, col], sharex=first)
            first = first or ax
            draw_timeline(ax, drawn, panel, n_blocks)
            if row < n - 1:  # one time axis, labelled once at the bottom
                ax.tick_params(labelbottom=False)
                ax.set_xlabel("")
    key = fig.add_subplot(grid[n, :])
    key.axis("off")
    key.legend(handles=legend_handles(), loc="upper center", ncol=5, fontsize=8, frameon=False)
    notes = "\n".join(notes)
    # the notes hang a fixed distance under the legend's row (not at a fraction of the row's height, which the
    # layout may shrink): what does not fit in the row goes into the margin that tight_layout makes for it
    key.annotate(notes, (0.5, 1.0), xycoords="axes fraction", xytext=(0, -24), textcoords="offset points", ha="center",
                 va="top", fontsize=7.5, color="0.3")  # fmt: skip
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


# -- the Chrome trace event format ----------------------------------------------------------------------------
#
# The JSON that ui.perfetto.dev ("Open trace file") and chrome://tracing ("Load") open, as the Trace Event Format
# defines it: {"traceEvents": [...]}, each event a dict with ph (its phase: "X" a complete event with a start and a
# duration, "M" metadata, "s"/"f" the start and end of a flow arrow), ts and dur in microseconds, and pid and tid
# (the process and the thread it belongs to; viewers draw one track per thread).

WHAT = {  # block i's event, in words, for the viewer's details pane ({j}: the block's input, x for block 0)
    "forward": "h_{i} = f_{i}({j})",
    "synthetic": "dh_syn = SG module after block {i} applied to h_{i}",
    "backward": "dx = f_{i}.backward(dh)",
    "update": "block {i}'s optimiser step",
    "sg_update": "SG module after block {i} regresses onto its target",
}


def _ns(seconds):
    """Seconds as whole nanoseconds: rounding start and end once each keeps a block's events in order and apart."""
    return round(seconds * 1e9)


def _metadata(what, pid, tid, **args):
    """A metadata event: a process's or a thread's name or place in the list."""
    return {"ph": "M", "name": what, "pid": pid, "tid": tid, "args": args}


def chrome_trace(runs, warmup_steps=1):
    """The recorded runs, {label: events} as for plot_timeline, as a Chrome trace (a JSON-serialisable dict).

    One process per run (named by its label), one thread per block (named "block i", the output block "block N-1
    (output)"): a viewer shows each block as a track and lets a learner zoom from the whole run to one event. Each
    event is a complete event named by its kind, with its step, block, id and what it waited for in args; a flow
    arrow (cat "needs") runs from every event to each other block's event that it waited for.

    The first `warmup_steps` recorded steps of each run are marked, not left out: category "warm-up" and names
    such as "warm-up: forward". A viewer zooms, so the long warm-up events squeeze nothing, and a trace that keeps
    every recorded event stays the whole record; the mark says why those events are slow (0: mark nothing, e.g.
    for a recording that skipped the warm-up step).

    Ids: pid = 1 + the run's position, tid = 1000 * pid + block. Neither is 0 (a viewer reads tid 0 as "no
    thread" and files such events under the process's own thread), and no two runs share a tid."""
    if not runs:
        raise ValueError("chrome_trace needs at least one run: {label: events}")
    trace, flows = [], 0
    for pid, (label, events) in enumerate(runs.items(), start=1):
        warmup = set(warmup_steps_of(events, warmup_steps))
        blocks = sorted({e.block for e in events})
        tid = {b: 1000 * pid + b for b in blocks}
        trace += [_metadata("process_name", pid, 1000 * pid, name=label),
                  _metadata("process_sort_index", pid, 1000 * pid, sort_index=pid)]  # fmt: skip
        for b in blocks:  # the sort index keeps block 0 first where a viewer would sort the names as text
            name = f"block {b}" + (" (output)" if b == blocks[-1] and len(blocks) > 1 else "")
            trace += [_metadata("thread_name", pid, tid[b], name=name),
                      _metadata("thread_sort_index", pid, tid[b], sort_index=b)]  # fmt: skip
        by_id = {e.id: e for e in events}
        for e in events:
            start, end = _ns(e.start), _ns(e.end)
            waited = [by_id[n] for n in e.needs if n in by_id]
            args = {
                "step": e.step,
                "block": e.block,
                "event id": e.id,
                "what": WHAT[e.kind].format(i=e.block, j=f"h_{e.block - 1}" if e.block else "x"),
                "waited for": "; ".join(f"block {w.block}'s {w.kind} of step {w.step} (event {w.id})" for w in waited)
                or "no other block's work",
            }
            warm = e.step in warmup
            if warm:
                args["warm-up"] = (
                    "the first calls allocate memory and set up BLAS: this step can be slower than later ones"
                )
            name, cat = (f"warm-up: {e.kind}", "warm-up") if warm else (e.kind, "step")
            trace.append({"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid[e.block],
                          "ts": start / 1e3, "dur": (end - start) / 1e3, "args": args})  # fmt: skip
            for w in waited:  # an arrow from the middle of the event waited for to the middle of this one
                flows += 1
                for ph, src in (("s", w), ("f", e)):
                    mid = (_ns(src.start) + _ns(src.end)) // 2
                    flow = {"ph": ph, "id": flows, "cat": "needs", "name": "needs", "pid": pid, "tid": tid[src.block],
                            "ts": mid / 1e3}  # fmt: skip
                    if ph == "f":
                        flow["bp"] = "e"  # bind to the enclosing slice (the default is the next one)
                    trace.append(flow)
    return {
        "traceEvents": trace,
        "displayTimeUnit": "ms",
        "otherData": {
            "source": "minidni.runs.timeline.chrome_trace",
            "warm-up": f"the first {warmup_steps} recorded step(s) of each run: category 'warm-up', "
            "names 'warm-up: ...'",
        },
    }


def write_chrome_trace(runs, path, warmup_steps=1):
    """Write chrome_trace(runs, warmup_steps) as JSON to `path`, atomically; open it in ui.perfetto.dev
    ("Open trace file") or chrome://tracing ("Load")."""
    from minidni.data.checkpoint import atomic_write

    atomic_write(path, json.dumps(chrome_trace(runs, warmup_steps)))
