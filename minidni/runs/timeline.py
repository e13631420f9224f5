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
from the same events (`plot_timeline`):

    recorded   where the events happened. A Network runs its blocks one after another in one process, so
               this shows the logical order of the work, one thing at a time (the picture says so).
    earliest   `earliest_schedule`: every block on a worker of its own, each event started as soon as its
               worker is free and the events it needs have ended, with the durations measured in the
               recorded run. Computed from the recorded dependencies, not measured: it shows what the locks
               allow. Under backprop, block 0 cannot start step t+1 before the gradient of step t has come
               all the way down; under DNI it waits only for its neighbour.

What this module deliberately is not: a profiler (durations are whatever the sequential run took, Python
overhead included), and not parallel. Events carry wall-clock times, so blocks that ran in separate workers would
show real concurrency in the recorded picture; the trainers here run every block in one process.
"""

import contextlib
import json
import time
from dataclasses import asdict, dataclass

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


COLOURS = {
    "forward": "#4c72b0",
    "synthetic": "#dd8452",
    "backward": "#c44e52",
    "update": "#55a868",
    "sg_update": "#8172b3",
}


def draw_timeline(ax, events, title, n_blocks=None, note=None, arrows=True):
    """A Gantt chart of `events` on a matplotlib Axes: one row per block (block 0 at the bottom, the output
    block at the top), one bar per event coloured by kind, a dashed line where each step starts, and (arrows)
    a grey line from each event to the other blocks' events it waited for."""
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
    ax.set(xlabel="time (ms)", title=title)
    if note:
        ax.text(0.01, 0.98, note, transform=ax.transAxes, va="top", fontsize=7, color="0.3")


def legend_handles():
    """Coloured patches naming each event kind, for a figure legend."""
    from matplotlib.patches import Patch

    return [Patch(color=c, label=k) for k, c in COLOURS.items()]


EARLIEST_NOTE = (
    "computed from the recorded events: one worker per block,\neach event as early as its dependencies allow"
)


def plot_timeline(runs, path, title=None, recorded="recorded in one process (the logical order)"):
    """Gantt charts of several recorded runs, e.g. {"bprop": events, "cdni": events}: per run, the recorded
    order (left) and the earliest schedule with one worker per block (right), on shared time axes. recorded:
    what the left panels show; a run in workers (minidni.parallel.workers) recorded real concurrency, and its earliest
    schedule shows how close the workers came to what the dependencies allow."""
    from minidni.runs.plots import pyplot, save_figure

    if not runs:
        raise ValueError("plot_timeline needs at least one run: {label: events}")
    plt = pyplot()
    fig, axes = plt.subplots(len(runs), 2, figsize=(12, 1.2 + 1.7 * len(runs)), sharex=True, squeeze=False)
    n_blocks = 1 + max(e.block for events in runs.values() for e in events)
    for row, (label, events) in enumerate(runs.items()):
        early = earliest_schedule(events)
        parallelism = total_work(events) / makespan(early)  # 1.0: no two blocks ever work at the same time
        draw_timeline(axes[row, 0], events, f"{label}: {recorded}", n_blocks)
        title_right = f"{label}: earliest schedule, {parallelism:.2f} blocks busy"
        draw_timeline(axes[row, 1], early, title_right, n_blocks)
    # the earliest schedules end early, so their right-hand side is free for the notes and the legend
    axes[0, 1].text(0.99, 0.97, EARLIEST_NOTE, transform=axes[0, 1].transAxes, ha="right", va="top", fontsize=7)
    axes[-1, 1].legend(handles=legend_handles(), loc="lower right", fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
