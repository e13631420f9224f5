"""The schedule simulator plays the worker loops of minidni.parallel.workers event by event. Small cases are checked
against times worked out by hand (costs that are powers of two, so the sums are exact); random costs check the
invariants every schedule must keep: nobody reads a message before it arrives, a worker does one thing at a
time, and timeline.earliest_schedule (with the message latency) reproduces every event."""

import itertools
import json
import math

import numpy as np
import pytest

from minidni.parallel.simulate import (
    SCHEDULES,
    BlockCost,
    Costs,
    done_times,
    plot_scaling,
    plot_schedules,
    scaling_table,
    sequential_time,
    simulate,
    speedup,
    split_costs,
    step_time,
    throughput,
)
from minidni.runs.timeline import Event, earliest_schedule

UNIT_HIDDEN = BlockCost(1.0, 1.0, 1.0, 1.0, 1.0)  # forward, backward, update, synthetic, sg_update
UNIT_OUTPUT = BlockCost(1.0, 1.0, 1.0)


def unit_costs(transfer, n=2):
    return Costs([UNIT_HIDDEN] * (n - 1) + [UNIT_OUTPUT], transfer, batch=8)


def random_costs(rng, n, transfer=None):
    hidden = [BlockCost(*rng.uniform(0.1, 2.0, 5)) for _ in range(n - 1)]
    out = BlockCost(*rng.uniform(0.1, 2.0, 3))
    return Costs(hidden + [out], rng.uniform(0.0, 1.0) if transfer is None else transfer, batch=4)


def by_key(events):
    """(step, block, kind) -> the events of that kind (a list: micro-batches and several sg_updates)."""
    out = {}
    for e in events:
        out.setdefault((e.step, e.block, e.kind), []).append(e)
    return out


def times(events, block, kinds=None):
    return [(e.kind, e.step, e.start, e.end) for e in events if e.block == block and (kinds is None or e.kind in kinds)]


# -------------------------------------------------------------------------------------------------------------
# hand-computed schedules


def test_bprop_two_unit_blocks_by_hand():
    """Block 0: forward [0,1]; h reaches block 1 at 1+tau; block 1 forward, backward, update, and its dx (sent
    after the update, as minidni.parallel.workers does) reaches block 0 at 4+2tau; block 0 backward, update. A step
    takes the sum of all costs plus two transfers: 6 + 2 tau."""
    tau = 0.25
    events = simulate(unit_costs(tau), "bprop", steps=3)
    period = 6 + 2 * tau
    for t in range(3):
        t0 = t * period
        assert times(events, 0)[3 * t : 3 * t + 3] == [
            ("forward", t, t0, t0 + 1),
            ("backward", t, t0 + 4 + 2 * tau, t0 + 5 + 2 * tau),
            ("update", t, t0 + 5 + 2 * tau, t0 + 6 + 2 * tau),
        ]
        assert times(events, 1)[3 * t : 3 * t + 3] == [
            ("forward", t, t0 + 1 + tau, t0 + 2 + tau),
            ("backward", t, t0 + 2 + tau, t0 + 3 + tau),
            ("update", t, t0 + 3 + tau, t0 + 4 + tau),
        ]
    assert done_times(events) == [period, 2 * period, 3 * period]
    assert step_time(events, warmup=1) == period
    assert throughput(events, batch=8, warmup=0) == 8 / period
    # dx sent right after the backward: block 1's update overlaps block 0's backward
    assert step_time(simulate(unit_costs(tau), "bprop", 3, dx_after="backward")) == period - 1


def test_bprop_step_time_for_n_blocks():
    """Locked backprop: every forward, backward and update is on the critical path, plus 2 (N-1) transfers. With
    dx sent right after the backward, only block 0's update is (the others update while dx travels down)."""
    costs = Costs([BlockCost(1.0, 2.0, 0.5)] * 4, 0.125, batch=1)
    assert step_time(simulate(costs, "bprop", 4)) == 4 * (1.0 + 2.0 + 0.5) + 2 * 3 * 0.125
    assert step_time(simulate(costs, "bprop", 4, dx_after="backward")) == 4 * (1.0 + 2.0) + 0.5 + 2 * 3 * 0.125


def test_dni_equal_blocks_run_at_the_busiest_workers_pace():
    """Asynchronous DNI with a small transfer: nobody waits, and a step takes the per-step work of the busiest
    worker (a hidden block: forward + synthetic + backward + update + sg_update). Step 0 is shorter: no target
    has come yet, so the steady state starts at step 1."""
    hidden, out = BlockCost(1.0, 2.0, 0.5, 0.25, 0.5), BlockCost(1.0, 2.0, 0.5)
    costs = Costs([hidden] * 3 + [out], 0.125, batch=1)
    for k in (1, 2, 3):
        events = simulate(costs, "dni", 9, max_inflight=k)
        assert step_time(events, warmup=2) == 1.0 + 0.25 + 2.0 + 0.5 + 0.5
        block0 = [e for e in events if e.block == 0 and e.kind != "sg_update"]
        assert sum(b.start - a.end for a, b in itertools.pairwise(block0) if a.step == b.step) == 0  # never waits


def test_dni_slow_output_block_sets_the_pace():
    """The output block is the bottleneck: max_inflight throttles the blocks below to its pace."""
    hidden, out = BlockCost(1.0, 1.0, 0.5, 0.25, 0.25), BlockCost(3.0, 4.0, 1.0)
    costs = Costs([hidden] * 2 + [out], 0.125, batch=1)
    events = simulate(costs, "dni", 24, max_inflight=2)
    assert step_time(events, warmup=4) == pytest.approx(8.0, rel=1e-12)
    forwards0 = [e.start for e in events if e.block == 0 and e.kind == "forward"]
    assert forwards0[-1] - forwards0[-2] == pytest.approx(8.0)  # block 0 waits for its targets


def test_dni_delay_zero_waits_for_each_target():
    """delay=0, two unit blocks, tau = 1/2: after update(t) at 6t+4, block 0 waits for the target of step t,
    which left block 1 after its update at 6t+4.5 and arrives at 6t+5; sg_update [6t+5, 6t+6]; step t+1's
    forward at 6t+6. The period is 5 + 2 tau = 6, against 5 (block 0's work) when nobody waits."""
    tau = 0.5
    events = simulate(unit_costs(tau), "dni", 3, delay=0)
    for t in range(3):
        t0 = 6.0 * t
        assert times(events, 0)[5 * t : 5 * t + 5] == [
            ("forward", t, t0, t0 + 1),
            ("synthetic", t, t0 + 1, t0 + 2),
            ("backward", t, t0 + 2, t0 + 3),
            ("update", t, t0 + 3, t0 + 4),
            ("sg_update", t, t0 + 5, t0 + 6),
        ]
        assert times(events, 1)[3 * t : 3 * t + 3] == [
            ("forward", t, t0 + 1.5, t0 + 2.5),
            ("backward", t, t0 + 2.5, t0 + 3.5),
            ("update", t, t0 + 3.5, t0 + 4.5),
        ]
    assert step_time(events, warmup=1) == 6.0
    # dx sent right after block 1's backward: it arrives at 6t+4, just as block 0 finishes its update
    assert step_time(simulate(unit_costs(tau), "dni", 4, delay=0, dx_after="backward"), warmup=1) == 5.0
    # asynchronously (targets used in pairs, periods 4 and 6) or one step late, block 0 never waits: on average
    # 5 per step (delay=1: step 0 has no regression to do, so the steady state starts at step 1)
    assert step_time(simulate(unit_costs(tau), "dni", 9, delay=None), warmup=1) == 5.0
    assert step_time(simulate(unit_costs(tau), "dni", 9, delay=1), warmup=2) == 5.0


def test_async_dni_applies_what_has_arrived_looking_again_after_each():
    """delay=None, two unit blocks, tau = 3/8. The target of step 0 leaves block 1 at 4.375 and arrives at 4.75,
    after block 0's update(0) ends at 4: block 0 goes on. After update(1) at 8 it applies target 0 [8, 9]; the
    target of step 1 arrived at 8.75 meanwhile, so it applies that one too [9, 10] before step 2's forward."""
    events = simulate(unit_costs(0.375), "dni", 3, delay=None)
    block0 = times(events, 0)
    assert block0[:12] == [
        ("forward", 0, 0.0, 1.0),
        ("synthetic", 0, 1.0, 2.0),
        ("backward", 0, 2.0, 3.0),
        ("update", 0, 3.0, 4.0),
        ("forward", 1, 4.0, 5.0),
        ("synthetic", 1, 5.0, 6.0),
        ("backward", 1, 6.0, 7.0),
        ("update", 1, 7.0, 8.0),
        ("sg_update", 0, 8.0, 9.0),
        ("sg_update", 1, 9.0, 10.0),
        ("forward", 2, 10.0, 11.0),
        ("synthetic", 2, 11.0, 12.0),
    ]


def test_dni_delay_d_applies_target_t_minus_d_after_step_t():
    rng = np.random.default_rng(3)
    for d in (0, 1, 3):
        events = simulate(random_costs(rng, 3), "dni", 6, delay=d)
        for i in (0, 1):
            mine = [(e.kind, e.step) for e in events if e.block == i]
            expected = []
            for t in range(6):
                expected += [("forward", t), ("synthetic", t), ("backward", t), ("update", t)]
                if t - d >= 0:
                    expected.append(("sg_update", t - d))
            expected += [("sg_update", s) for s in range(max(0, 6 - d), 6)]
            assert mine == expected


def test_pipelined_with_one_micro_batch_is_bprop():
    rng = np.random.default_rng(0)
    for n in (1, 2, 4):
        costs = random_costs(rng, n)
        bprop = simulate(costs, "bprop", 3, dx_after="backward")  # a pipeline sends dx after each backward
        assert simulate(costs, "pipelined", 3, microbatches=1) == bprop


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_pipelined_bubble_fraction(n, m):
    """GPipe, equal blocks, no transfer, no update cost: a step takes (M + N - 1)(f + b)/M, so each worker is
    idle for the bubble fraction (N-1)/(M+N-1) of it."""
    f, b = 1.0, 2.0
    costs = Costs([BlockCost(f, b, 0.0)] * n, 0.0, batch=1)
    events = simulate(costs, "pipelined", 4, microbatches=m)
    period = step_time(events, warmup=1)
    assert period == pytest.approx((m + n - 1) * (f + b) / m, rel=1e-12)
    assert 1 - (f + b) / period == pytest.approx((n - 1) / (m + n - 1), rel=1e-12)
    per_block_step = by_key(events)
    for i in range(n):
        assert len(per_block_step[(2, i, "forward")]) == len(per_block_step[(2, i, "backward")]) == m
        assert len(per_block_step[(2, i, "update")]) == 1


def test_pipelined_update_is_on_block_zeros_path():
    costs = Costs([BlockCost(1.0, 2.0, 0.5)] * 3, 0.0, batch=1)
    assert step_time(simulate(costs, "pipelined", 4, microbatches=2)) == (2 + 2) * 3.0 / 2 + 0.5


def test_stochastic_with_p_one_is_async_dni():
    rng = np.random.default_rng(1)
    for k in (1, 2, 5):
        costs = random_costs(rng, 4)
        assert simulate(costs, "stochastic", 7, max_inflight=k, p_update=1.0, seed=3) == simulate(
            costs, "dni", 7, max_inflight=k
        )


def test_stochastic_skipped_blocks_send_no_targets():
    costs = random_costs(np.random.default_rng(2), 4)
    events = simulate(costs, "stochastic", 40, p_update=0.5, seed=7)
    keys = by_key(events)
    ran = {(t, i): (t, i, "backward") in keys for t in range(40) for i in range(4)}
    assert 0 < sum(ran.values()) < len(ran)  # some coins came up, some did not
    for t in range(40):
        for i in range(4):
            assert (t, i, "forward") in keys  # a block always passes its h up
            assert ((t, i, "update") in keys) == ran[t, i]
            if i < 3:
                assert ((t, i, "synthetic") in keys) == ran[t, i]
                assert ((t, i, "sg_update") in keys) == ran[t, i + 1]  # a target only from a block that ran
    assert simulate(costs, "stochastic", 40, p_update=0.5, seed=7) == events  # the seed fixes the coins
    assert simulate(costs, "stochastic", 40, p_update=0.5, seed=8) != events


# -------------------------------------------------------------------------------------------------------------
# invariants on random costs


def check_invariants(events, latency):
    by_id = {e.id: e for e in events}
    assert [e.id for e in events] == list(range(len(events)))
    for e in events:
        assert e.end >= e.start >= 0
        for n in e.needs:
            src = by_id[n]
            assert src.block != e.block and src.id < e.id
            assert e.start >= src.end + latency - 1e-12, (e, src)
    for block in {e.block for e in events}:
        mine = [e for e in events if e.block == block]  # in the order the worker did them
        assert all(b.start >= a.end for a, b in itertools.pairwise(mine)), f"block {block} runs two events at once"
    again = earliest_schedule(events, latency=latency)
    flat = [t for e in events for t in (e.start, e.end)]
    assert [t for e in again for t in (e.start, e.end)] == pytest.approx(flat, rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_messages_arrive_before_use_and_workers_do_one_thing_at_a_time(seed):
    rng = np.random.default_rng(seed)
    costs = random_costs(rng, int(rng.integers(1, 6)))
    for schedule, kw in [
        ("bprop", {}),
        ("dni", {"max_inflight": int(rng.integers(1, 4))}),
        ("dni", {"delay": int(rng.integers(0, 3))}),
        ("stochastic", {"p_update": 0.6, "seed": seed}),
    ]:
        check_invariants(simulate(costs, schedule, 6, **kw), costs.transfer)
    m = int(rng.integers(1, 5))
    check_invariants(simulate(costs, "pipelined", 4, microbatches=m), costs.transfer / m)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dx_after", ["update", "backward"])
def test_needs_name_the_messages_of_each_loop(seed, dx_after):
    """needs: the events after which the messages read were sent (h after forward, dx after dx_after)."""
    rng = np.random.default_rng(seed)
    n = 3
    costs = random_costs(rng, n)
    for schedule in ("bprop", "dni"):
        events = simulate(costs, schedule, 5, dx_after=dx_after)
        by_id = {e.id: e for e in events}
        for e in events:
            src = [(by_id[i].step, by_id[i].block, by_id[i].kind) for i in e.needs]
            if e.kind == "forward":
                assert src == ([(e.step, e.block - 1, "forward")] if e.block > 0 else [])
            elif e.kind == "backward" and schedule == "bprop":
                assert src == ([(e.step, e.block + 1, dx_after)] if e.block < n - 1 else [])
            elif e.kind == "sg_update":
                assert src == [(e.step, e.block + 1, dx_after)]
            else:
                assert src == []


@pytest.mark.parametrize("k", [1, 2, 3])
def test_async_dni_keeps_at_most_max_inflight_targets_pending(k):
    """When block i starts step t's forward, at most k targets of earlier steps are still unapplied."""
    costs = Costs([BlockCost(0.25, 0.5, 0.25, 0.125, 0.125)] * 2 + [BlockCost(2.0, 3.0, 1.0)], 0.5, batch=1)
    events = simulate(costs, "dni", 12, max_inflight=k)
    for i in (0, 1):
        applied = {e.step: e.start for e in events if e.block == i and e.kind == "sg_update"}
        assert sorted(applied) == list(range(12))
        for f in (e for e in events if e.block == i and e.kind == "forward"):
            pending = [s for s in range(f.step) if applied[s] > f.start]
            assert len(pending) <= k
        most = max(
            len([s for s in range(f.step) if applied[s] > f.start])
            for f in events
            if f.block == i and f.kind == "forward"
        )
        assert most == k  # the slow output block keeps the limit reached


def test_earliest_schedule_latency():
    chain = [Event(0, 0, 0, "forward", 0.0, 1.0), Event(1, 0, 1, "forward", 1.0, 2.0, (0,))]
    assert earliest_schedule(chain) == chain  # the default: no latency
    assert [(e.start, e.end) for e in earliest_schedule(chain, latency=0.5)] == [(0.0, 1.0), (1.5, 2.5)]


# -------------------------------------------------------------------------------------------------------------
# references, speed-up, scaling


def test_sequential_time():
    costs = Costs([BlockCost(1.0, 2.0, 4.0, 8.0, 16.0), BlockCost(32.0, 64.0, 128.0)], 0.5, batch=2)
    assert sequential_time(costs, "bprop") == sequential_time(costs, "pipelined") == 1 + 2 + 4 + 32 + 64 + 128
    assert sequential_time(costs, "dni") == 255.0
    assert sequential_time(costs, "stochastic", p_update=0.5) == 33 + 0.5 * (255 - 33)


def test_a_single_worker_has_no_speedup():
    costs = Costs([BlockCost(1.0, 2.0, 0.5)], 0.25, batch=4)
    for schedule in SCHEDULES:
        assert step_time(simulate(costs, schedule, 3)) == sequential_time(costs, "bprop") == 3.5
        assert speedup(costs, schedule, "bprop", steps=3) == 1.0
        assert speedup(costs, schedule, "sequential", steps=3) == 1.0


def test_speedup_of_dni_over_bprop():
    costs = Costs([BlockCost(1.0, 1.0, 1.0, 1.0, 1.0), BlockCost(1.0, 1.0, 1.0)], 0.25, batch=8)
    assert speedup(costs, "dni", "bprop", steps=7, warmup=1) == (6 + 2 * 0.25) / 5.0  # dni: periods 4, 6, ...


def test_split_costs():
    whole = BlockCost(8.0, 16.0, 4.0)
    costs = split_costs(whole, 4, boundary_sg=(0.5, 0.25), transfer=0.125, batch=32)
    assert costs.n_blocks == 4 and costs.transfer == 0.125 and costs.batch == 32
    assert costs.blocks[:3] == [BlockCost(2.0, 4.0, 1.0, 0.5, 0.25)] * 3
    assert costs.blocks[3] == BlockCost(2.0, 4.0, 1.0)
    assert split_costs(whole, 1).blocks == [whole]
    with pytest.raises(ValueError, match="boundary_sg"):
        split_costs(BlockCost(1.0, 1.0, 1.0, 1.0, 0.0), 2)
    with pytest.raises(ValueError, match="workers"):
        split_costs(whole, 0)


def test_scaling_table():
    whole = BlockCost(8.0, 16.0, 4.0)
    rows = scaling_table(whole, boundary_sg=(0.5, 0.25), transfer=2**-10, batch=32, workers=(1, 2, 8), steps=12)
    assert [(r["workers"], r["schedule"]) for r in rows] == [
        (w, s) for w in (1, 2, 8) for s in ("bprop", "dni", "pipelined")
    ]
    for r in rows:
        if r["workers"] == 1:
            assert r["speedup"] == pytest.approx(1.0) and r["step_time"] == pytest.approx(28.0)
        assert r["samples_per_s"] == pytest.approx(32 / r["step_time"])
        assert r["speedup"] == pytest.approx(28.0 / r["step_time"])
    dni8 = next(r for r in rows if r["workers"] == 8 and r["schedule"] == "dni")
    assert dni8["step_time"] == pytest.approx(28.0 / 8 + 0.75, rel=1e-9)  # a hidden block's work per step
    bprop8 = next(r for r in rows if r["workers"] == 8 and r["schedule"] == "bprop")
    assert bprop8["speedup"] < 1.2  # the locks leave almost nothing to gain


def test_throughput_needs_steps_beyond_the_warmup():
    events = simulate(unit_costs(0.0), "bprop", 2)
    with pytest.raises(ValueError, match="more steps than warmup=2"):
        step_time(events, warmup=2)
    assert step_time(events, warmup=0) == 6.0


# -------------------------------------------------------------------------------------------------------------
# input checks


def test_costs_json_round_trip():
    costs = Costs([BlockCost(0.1, 0.2, 0.3, 0.04, 0.05), BlockCost(0.5, 0.6, 0.7)], 1e-4, batch=64)
    text = costs.to_json()
    assert Costs.from_json(text) == costs
    assert Costs.from_json(json.loads(text)) == costs
    assert json.loads(text)["blocks"][1] == {
        "forward": 0.5,
        "backward": 0.6,
        "update": 0.7,
        "synthetic": 0.0,
        "sg_update": 0.0,
    }


@pytest.mark.parametrize(
    "data, message",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"blocks": [], "transfer": 0.0, "batch": 1}, "no blocks"),
        ({"blocks": [{"forward": 1, "backward": 1, "update": 1}], "batch": 1}, r"miss the keys \['transfer'\]"),
        ({"blocks": [{"forward": 1, "backward": 1}], "transfer": 0.0, "batch": 1}, "block 0 of the costs"),
        ({"blocks": [{"forward": -1, "backward": 1, "update": 1}], "transfer": 0.0, "batch": 1}, "forward must"),
        ({"blocks": [{"forward": 1, "backward": math.nan, "update": 1}], "transfer": 0, "batch": 1}, "backward"),
        ({"blocks": [{"forward": 1, "backward": 1, "update": 1}], "transfer": math.inf, "batch": 1}, "transfer"),
        ({"blocks": [{"forward": 1, "backward": 1, "update": 1}], "transfer": 0.0, "batch": 0}, "batch"),
        ({"blocks": [{"forward": 1, "backward": 1, "update": 1, "synthetic": 1}], "transfer": 0, "batch": 1}, "output"),
    ],
)
def test_bad_costs_get_clear_errors(data, message):
    with pytest.raises(ValueError, match=message):
        Costs.from_json(data)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"schedule": "gpipe"}, "unknown schedule 'gpipe'"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"delay": -1}, "delay"),
        ({"delay": True}, "delay"),
        ({"max_inflight": 0}, "max_inflight must be an integer >= 1"),
        ({"p_update": 0.0}, "p_update must be a probability"),
        ({"p_update": 1.5}, "p_update must be a probability"),
        ({"microbatches": 0}, "microbatches must be an integer >= 1"),
        ({"dx_after": "forward"}, "dx_after must be one of"),
    ],
)
def test_bad_arguments_get_clear_errors(kw, message):
    args = {"schedule": "dni", "steps": 3} | kw
    with pytest.raises(ValueError, match=message):
        simulate(unit_costs(0.0), **args)


# -------------------------------------------------------------------------------------------------------------
# pictures


def test_plots_write_pngs(tmp_path):
    costs = unit_costs(0.25, n=3)
    runs = {s: simulate(costs, s, 3, microbatches=2) for s in ("bprop", "dni", "pipelined")}
    plot_schedules(runs, tmp_path / "schedules.png", title="three schedules")
    rows = scaling_table(BlockCost(8.0, 16.0, 4.0), (0.5, 0.25), 0.01, batch=8, workers=(1, 2, 4), steps=6)
    plot_scaling(rows, tmp_path / "scaling.png")
    for name in ("schedules.png", "scaling.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one run"):
        plot_schedules({}, tmp_path / "x.png")
