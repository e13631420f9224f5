"""The timeline records what each block does, in order, with the other blocks' work it waited for; the earliest
schedule computed from it shows backprop's locks and DNI's freedom. A counting clock (each call 1 tick later)
makes every event last exactly one tick, so schedules are exact integers."""

import itertools
import json

import numpy as np
import pytest

from minidni.dni.network import build_network
from minidni.runs.timeline import (
    Event,
    Timeline,
    chrome_trace,
    earliest_schedule,
    makespan,
    plot_timeline,
    total_work,
    warmup_steps_of,
    without_steps,
    write_chrome_trace,
)


def counting_clock():
    ticks = itertools.count()
    return lambda: float(next(ticks))


def data(rng, b=16, d=6, k=3):
    return rng.standard_normal((b, d)).astype(np.float32), rng.integers(0, k, b)


def record(mode, steps=3, depth=4, **kw):
    net = build_network(depth=depth, mode=mode, d_in=6, hidden=8, n_classes=3, sg_hidden=8, seed=0, **kw)
    timeline = Timeline(clock=counting_clock())
    net.record_timeline(timeline)
    x, y = data(np.random.default_rng(1))
    for _ in range(steps):
        net.train_step(x, y)
    return net, timeline.events


def kinds(events, step):
    return [(e.block, e.kind) for e in events if e.step == step]


def test_bprop_records_the_locked_order():
    _, events = record("bprop", steps=2)
    f, b, u = "forward", "backward", "update"
    assert kinds(events, 0) == [
        (0, f),
        (1, f),
        (2, f),
        (3, f),
        (3, b),
        (3, u),
        (2, b),
        (2, u),
        (1, b),
        (1, u),
        (0, b),
        (0, u),
    ]
    assert kinds(events, 1) == kinds(events, 0)
    by = {(e.step, e.block, e.kind): e for e in events}
    assert by[(0, 1, f)].needs == (by[(0, 0, f)].id,)  # h_0 feeds block 1
    assert by[(0, 0, f)].needs == ()
    assert by[(0, 2, b)].needs == (by[(0, 3, b)].id,)  # the true gradient comes from the block above
    assert by[(0, 3, b)].needs == () and by[(0, 2, u)].needs == ()


def test_dni_block_updates_before_the_block_above_runs():
    _, events = record("cdni", steps=1)
    order = kinds(events, 0)
    assert order[:4] == [(0, "forward"), (0, "synthetic"), (0, "backward"), (0, "update")]
    assert order.index((0, "update")) < order.index((1, "forward"))  # no update lock
    by = {(e.block, e.kind): e for e in events}
    assert by[(1, "backward")].needs == ()  # its gradient was synthetic: it waited for nobody
    assert by[(0, "sg_update")].needs == (by[(1, "backward")].id,)  # M's target is block 1's dx
    assert by[(2, "sg_update")].needs == (by[(3, "backward")].id,)  # the top module: the true gradient


def test_earliest_schedule_shows_the_locks():
    """Under bprop block 0 starts step t+1 only after its own backward of step t, the last link of the whole
    backward chain; under DNI it waits only for block 1 (whose dx is its module's target), and starts step t+1
    before the output block of a 6-block network has finished step t."""
    _, bp = record("bprop", steps=3, depth=6)
    _, dni = record("cdni", steps=3, depth=6)
    bp_s, dni_s = earliest_schedule(bp), earliest_schedule(dni)
    first = lambda ev, step, block, kind: next(e for e in ev if (e.step, e.block, e.kind) == (step, block, kind))
    assert first(bp_s, 1, 0, "forward").start >= first(bp_s, 0, 0, "backward").end
    assert first(bp_s, 0, 0, "backward").start >= first(bp_s, 0, 5, "backward").end
    assert first(dni_s, 1, 0, "forward").start < first(dni_s, 0, 5, "backward").end
    # with unit durations the work is the number of events; DNI keeps more blocks busy at once
    assert total_work(bp) == len(bp) and total_work(dni) == len(dni)
    assert total_work(dni) / makespan(dni_s) > 1.5 * total_work(bp) / makespan(bp_s)
    assert makespan(bp_s) <= makespan(bp)  # never later than the recording itself


def test_earliest_schedule_respects_every_dependency():
    _, events = record("cdni", steps=3)
    sched = {e.id: e for e in earliest_schedule(events)}
    for e in sched.values():
        assert all(sched[n].end <= e.start for n in e.needs)
    for block in range(4):  # one worker per block: its events never overlap and keep their order
        mine = [e for e in sched.values() if e.block == block]
        assert all(a.end <= b.start for a, b in zip(mine, mine[1:]))


def test_earliest_schedule_rejects_a_dependency_out_of_order():
    events = [Event(0, 0, 0, "forward", 0, 1, needs=(1,)), Event(1, 0, 1, "forward", 1, 2)]
    with pytest.raises(ValueError, match="needs events"):
        earliest_schedule(events)


def test_stochastic_blocks_that_skip_record_no_update():
    net = build_network(depth=4, mode="cdni", d_in=6, hidden=8, n_classes=3, seed=0, p_update=0.5)
    timeline = Timeline(clock=counting_clock())
    net.record_timeline(timeline)
    x, y = data(np.random.default_rng(1))
    results = [net.train_step(x, y) for _ in range(20)]
    for step, result in enumerate(results):
        mine = [e for e in timeline.events if e.step == step]
        assert {e.block for e in mine if e.kind == "forward"} == {0, 1, 2, 3}  # every block runs its forward
        assert [e.block for e in mine if e.kind == "update"] == result["updated"]  # in the gate's order
    assert 0 < sum(len(r["updated"]) for r in results) < 80


def test_recording_changes_no_number_and_records_only_training():
    rng = np.random.default_rng(2)
    x, y = data(rng)
    nets = [build_network(depth=3, mode="cdni", d_in=6, hidden=8, n_classes=3, seed=0) for _ in range(2)]
    timeline = Timeline()
    nets[0].record_timeline(timeline)
    for _ in range(3):
        for net in nets:
            net.train_step(x, y)
        nets[0].error_pct(x, y)  # evaluation and diagnostics run forward passes: not recorded
        nets[0].gradient_alignment(x, y)
    a, b = nets[0].state_arrays(), nets[1].state_arrays()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert timeline.steps == 3 and {e.step for e in timeline.events} == {0, 1, 2}
    n = len(timeline.events)
    nets[0].record_timeline(None)
    nets[0].train_step(x, y)
    assert len(timeline.events) == n


def test_json_round_trip_and_errors(tmp_path):
    _, events = record("bprop", steps=1)
    timeline = Timeline()
    timeline.events = events
    assert Timeline.events_from_json(timeline.to_json()) == events
    with pytest.raises(ValueError, match="not a saved timeline"):
        Timeline.events_from_json('[{"id": 0}]')
    with pytest.raises(ValueError, match="not a saved timeline"):
        Timeline.events_from_json("{not json")
    t = Timeline()
    with t.step():
        with pytest.raises(ValueError, match="unknown event kind"):
            with t.event(0, "think"):
                pass
        with pytest.raises(RuntimeError, match="do not nest"):
            with t.step():
                pass


def test_plot_timeline_writes_a_png(tmp_path):
    _, bp = record("bprop", steps=2)
    _, dni = record("cdni", steps=2)
    path = tmp_path / "timeline.png"
    plot_timeline({"bprop": bp, "cdni": dni}, path, title="test")
    assert path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="at least one run"):
        plot_timeline({}, tmp_path / "x.png")


def test_training_run_records_its_first_steps(tmp_path):
    from minidni.runs.train import TrainConfig, train

    cfg = TrainConfig(data="spirals", model="fcn3", hidden=16, epochs=1, batch=64, train_subset=640, timeline=3,
                      out=str(tmp_path / "run"), progress=False)  # fmt: skip
    train(cfg, log=lambda *a: None)
    events = Timeline.events_from_json((tmp_path / "run" / "timeline.json").read_text())
    assert {e.step for e in events} == {0, 1, 2}  # exactly the first 3 of the run's 10 steps
    assert (tmp_path / "run" / "timeline.png").stat().st_size > 0
    # a run shorter than --timeline writes the steps it has
    short = TrainConfig(**{**cfg.__dict__, "timeline": 50, "out": str(tmp_path / "short")})
    train(short, log=lambda *a: None)
    assert len({e.step for e in Timeline.events_from_json((tmp_path / "short" / "timeline.json").read_text())}) == 10
    with pytest.raises(ValueError, match="timeline must be >= 0"):
        TrainConfig(timeline=-1).validate()


# -- the warm-up step, the legend, the Chrome trace ----------------------------------------------------------


def test_without_steps_leaves_out_the_warmup_and_starts_at_zero():
    _, events = record("cdni", steps=3)
    assert warmup_steps_of(events, 1) == [0] and warmup_steps_of(events, 5) == [0, 1, 2]
    assert warmup_steps_of(events, 0) == []
    with pytest.raises(ValueError, match="warmup_steps must be"):
        warmup_steps_of(events, -1)
    later = without_steps(events, [0])
    assert {e.step for e in later} == {1, 2} and len(later) == 2 * len(events) // 3
    assert min(e.start for e in later) == 0.0
    first = min(e.start for e in events if e.step == 1)
    assert all(
        a.duration == b.duration and a.start == b.start - first for a, b in zip(later, events[len(events) // 3 :])
    )
    assert earliest_schedule(later)  # every event each one needs is still there


def test_plot_timeline_leaves_out_the_warmup_and_its_legend_covers_no_bar(tmp_path, monkeypatch):
    import minidni.runs.plots
    import minidni.runs.timeline as T
    from minidni.runs.plots import pyplot

    drawn, figures = [], []
    draw = T.draw_timeline
    monkeypatch.setattr(
        T, "draw_timeline", lambda ax, events, *a, **k: drawn.append(events) or draw(ax, events, *a, **k)
    )
    monkeypatch.setattr(minidni.runs.plots, "save_figure", lambda fig, path: figures.append(fig) or fig.tight_layout())
    _, bp = record("bprop", steps=3)
    _, dni = record("cdni", steps=3)
    plot_timeline({"bprop": bp, "cdni": dni}, tmp_path / "t.png")
    assert len(drawn) == 4 and all({e.step for e in ev} == {1, 2} and min(e.start for e in ev) == 0 for ev in drawn)
    fig = figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [leg for ax in fig.axes if (leg := ax.get_legend()) is not None]
    assert len(legends) == 1
    texts = [t for ax in fig.axes for t in ax.texts]
    assert any("step 0 left out as warm-up" in t.get_text() for t in texts)
    charts = [ax for ax in fig.axes if ax.patches]  # the axes with bars
    assert len(charts) == 4
    for ax in charts:
        box = ax.get_window_extent(renderer)
        for other in [legends[0], *texts]:
            assert not other.get_window_extent(renderer).overlaps(box), f"{other} covers {ax.get_title()!r}"
    for text in texts:
        assert not legends[0].get_window_extent(renderer).overlaps(text.get_window_extent(renderer)), "legend on notes"
        assert fig.bbox.contains(*text.get_window_extent(renderer).p0), "notes cut off"
    for ax in charts:
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == ["block 0", "block 1", "block 2", "block 3 (output)"]
    assert [t.get_text() for t in legends[0].get_texts()] == ["forward", "synthetic", "backward", "update", "sg_update"]
    assert any("synthetic: the SG module after block i predicts" in t.get_text() for t in texts)
    # warmup_steps=0 draws every step; a run of warm-up steps only is drawn whole
    drawn.clear()
    plot_timeline({"bprop": bp}, tmp_path / "t.png", warmup_steps=0)
    plot_timeline({"bprop": [e for e in bp if e.step == 0]}, tmp_path / "t.png")
    assert [{e.step for e in ev} for ev in drawn] == [{0, 1, 2}] * 2 + [{0}] * 2
    pyplot().close("all")


def slices_by_thread(trace):
    """{(pid, tid): [complete events sorted by start]}"""
    out = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            out.setdefault((e["pid"], e["tid"]), []).append(e)
    return {k: sorted(v, key=lambda e: e["ts"]) for k, v in out.items()}


def test_chrome_trace_is_a_trace_a_viewer_opens():
    """The trace event format as ui.perfetto.dev and chrome://tracing read it: complete events in microseconds,
    one named process per run and one named thread per block, the warm-up step marked, an arrow per dependency.
    With the counting clock every event lasts one tick, which the trace must show as 1e6 us."""
    _, bp = record("bprop", steps=3)
    _, dni = record("cdni", steps=3)
    runs = {"fcn4 bprop": bp, "fcn4 cdni": dni}
    trace = json.loads(json.dumps(chrome_trace(runs)))  # JSON all the way: what a viewer reads
    assert trace["displayTimeUnit"] == "ms"
    events = trace["traceEvents"]
    meta = [e for e in events if e["ph"] == "M"]
    process = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert process == {1: "fcn4 bprop", 2: "fcn4 cdni"}
    thread = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    for pid in process:
        names = sorted(name for (p, _), name in thread.items() if p == pid)
        assert names == ["block 0", "block 1", "block 2", "block 3 (output)"]
    assert all(pid != 0 and tid != 0 for pid, tid in thread), "a viewer files tid 0 under the process itself"
    assert len({tid for _, tid in thread}) == len(thread), "two runs share a thread id"
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == len(bp) + len(dni)
    for (label, recorded), pid in zip(runs.items(), process):
        mine = [e for e in complete if e["pid"] == pid]
        for e, ev in zip(mine, recorded):
            assert {"ph", "ts", "dur", "pid", "tid", "name", "cat", "args"} <= set(e)
            assert thread[(e["pid"], e["tid"])].startswith(f"block {ev.block}"), "the event is on another block's track"
            assert e["args"]["step"] == ev.step and e["args"]["block"] == ev.block and e["args"]["event id"] == ev.id
            assert e["ts"] == ev.start * 1e6 and e["dur"] == 1e6, "ts and dur are microseconds; one tick is 1 s"
            warm = ev.step == 0
            assert e["cat"] == ("warm-up" if warm else "step")
            assert e["name"] == (f"warm-up: {ev.kind}" if warm else ev.kind)
            for n in ev.needs:
                assert f"(event {n})" in e["args"]["waited for"]
            if not ev.needs:
                assert e["args"]["waited for"] == "no other block's work"
        sg = [e for e in mine if e["name"].endswith("sg_update")]
        assert all("SG module after block" in e["args"]["what"] for e in sg)
    for track in slices_by_thread(trace).values():  # a block's events follow each other: a viewer nests nothing
        assert all(a["ts"] + a["dur"] <= b["ts"] for a, b in itertools.pairwise(track))
        assert all(e["dur"] >= 0 for e in track)
    # one arrow per dependency: its start inside the event waited for, its end inside the one that waited
    flows = {}
    for e in events:
        if e["ph"] in "sf":
            flows.setdefault(e["id"], {})[e["ph"]] = e
    assert len(flows) == sum(len(e.needs) for e in bp + dni)
    tracks = slices_by_thread(trace)

    def inside(f):  # the slices of f's track that f's time falls in
        return [s for s in tracks[(f["pid"], f["tid"])] if s["ts"] <= f["ts"] <= s["ts"] + s["dur"]]

    for pair in flows.values():
        assert pair["f"]["bp"] == "e" and len(inside(pair["s"])) == 1 and len(inside(pair["f"])) == 1
        assert inside(pair["s"])[0]["ts"] < inside(pair["f"])[0]["ts"]
    # warmup_steps=0 marks nothing
    assert all(e["cat"] == "step" for e in chrome_trace(runs, warmup_steps=0)["traceEvents"] if e["ph"] == "X")
    with pytest.raises(ValueError, match="at least one run"):
        chrome_trace({})


def test_write_chrome_trace_writes_the_json(tmp_path):
    _, events = record("cdni", steps=2)
    path = tmp_path / "timeline.trace.json"
    write_chrome_trace({"fcn4 cdni": events}, path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(chrome_trace({"fcn4 cdni": events})))
    assert [p.name for p in tmp_path.iterdir()] == ["timeline.trace.json"]  # no temporary file left


def test_training_run_writes_a_chrome_trace(tmp_path):
    """--timeline N writes timeline.trace.json next to timeline.json: the same events, step 0 marked warm-up."""
    from minidni.runs.train import TrainConfig, train

    cfg = TrainConfig(data="spirals", model="fcn3", hidden=16, epochs=1, batch=64, train_subset=640, timeline=3,
                      out=str(tmp_path / "run"), progress=False)  # fmt: skip
    train(cfg, log=lambda *a: None)
    events = Timeline.events_from_json((tmp_path / "run" / "timeline.json").read_text())
    trace = json.loads((tmp_path / "run" / "timeline.trace.json").read_text())
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert [(e["args"]["event id"], e["args"]["step"]) for e in complete] == [(e.id, e.step) for e in events]
    assert {e["cat"] for e in complete if e["args"]["step"] == 0} == {"warm-up"}
    assert {e["cat"] for e in complete if e["args"]["step"] > 0} == {"step"}
