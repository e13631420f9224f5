"""`python -m minidni bench parallel`: the speed-up of blocks that train in parallel workers, predicted, then measured.

The network is MNIST's FCN 8 with 512 units, split into two blocks of about equal cost (SPLIT, --split 3,5: 3
hidden layers, then 4 hidden layers and the output layer), trained with cDNI and batch 256. In that order:

 1. costs     each block's forward, synthetic gradient, backward, update and module regression, timed piece by
              piece in a fresh process with one BLAS thread (median of `repeats` calls, on random data of the
              run's shapes), and the time one message takes from one worker process to another (half a
              ping-pong of an activation through the workers' own queues). The same costs, without the SG
              modules' pieces, are locked backprop's. Written to costs.json before any run starts.
 2. predict   minidni.parallel.simulate plays the worker loops out with those costs: cDNI in two workers against locked
              backprop in the same two workers. Nothing is fitted to the runs below.
 3. measure   the real runs, each `python -m minidni train` in a fresh process: cDNI and bprop in two process
              workers (one BLAS thread each), cDNI in one process (the accuracy to match), and bprop in one
              process with two BLAS threads (the other way to use two cores).
 4. scale     simulate's predictions for 1..64 workers of the same network cut into equal blocks (the
              assumptions of simulate.split_costs): locked backprop, DNI, DNI with stochastic updates (p 0.5) and
              pipelined backprop (GPipe, 4 micro-batches), in scaling.json and scaling.png, and their Gantt
              charts on 4 workers in schedules_4_workers.png.

Every number is printed as a ratio of two measurements from this one run, with the run directories beside it.
The machine matters: on 2 cores a third busy process (a browser, a test run) takes a core from a worker.

What this module deliberately is not: a test. It asserts nothing about speed; tests/test_speedup.py checks the
bookkeeping on tiny runs.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np

from minidni.data.checkpoint import atomic_write, load_checkpoint, read_jsonl
from minidni.dni.steps import output_loss
from minidni.parallel.simulate import (
    BlockCost,
    Costs,
    plot_scaling,
    plot_schedules,
    scaling_table,
    simulate,
    split_costs,
    step_time,
)
from minidni.runs.timeline import Timeline, makespan, total_work
from minidni.parallel.workers import BLAS_ENV

MODEL, HIDDEN, SPLIT = "fcn8", 512, "3,5"
BUDGETS = {  # epochs of the real runs, and the training rows (0: all) - smoke is for the tests
    "smoke": {"epochs": 1, "train_subset": 1024, "data": "spirals", "hidden": 32, "batch": 64, "repeats": 3},
    "short": {"epochs": 3, "train_subset": 0, "data": "mnist", "hidden": HIDDEN, "batch": 256, "repeats": 31},
    "full": {"epochs": 10, "train_subset": 0, "data": "mnist", "hidden": HIDDEN, "batch": 256, "repeats": 31},
}
RUNS = ("cdni_workers", "bprop_workers", "cdni_1process", "bprop_1process_2threads")  # its run directories
TIMELINE_STEPS = 40  # the worker runs record their first steps, for the measured Gantt charts


# -------------------------------------------------------------------------------------------------------------
# 1. costs, from single-block microbenchmarks


def measure_costs(cfg, in_shape, n_classes, repeats=15):
    """simulate.Costs of cfg's network at batch cfg.batch, each piece of each block timed alone in this process
    (call it with one BLAS thread: `costs_in_subprocess` does). The transfer is left 0: see measure_transfer."""
    from minidni.runs.train import build_from_config

    net = build_from_config(cfg, in_shape, n_classes)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((cfg.batch, *in_shape)).astype(np.float32)  # (B, D_in)
    y = rng.integers(0, n_classes, cfg.batch)  # (B,)

    def median(fn):
        for _ in range(3):
            fn()  # warm: first-call allocations, caches, the CPU's clock
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    blocks, h = [], x
    decoupled = cfg.mode in ("dni", "cdni")
    for i, block in enumerate(net.blocks):
        if block is net.output:
            _, dlogits, cache = output_loss(net, h, y)
            cost = BlockCost(
                forward=median(lambda: output_loss(net, h, y)),
                backward=median(lambda: block.backward(dlogits, cache)),
                update=median(block.update),
            )
        else:
            x_in = h
            h, cache = block.forward(x_in)
            dh = np.ones_like(h) * 1e-3  # stands in for the gradient: its values do not change the time
            if decoupled:
                dh, sg_cache, _ = block.synthetic_gradient(h, y)
            cost = BlockCost(
                forward=median(lambda: block.forward(x_in)),
                backward=median(lambda: block.backward(dh, cache, need_dx=i > 0)),
                update=median(block.update),
                synthetic=median(lambda: block.synthetic_gradient(h, y)) if decoupled else 0.0,
                sg_update=median(lambda: block.sg_update(dh, sg_cache, dh)) if decoupled else 0.0,
            )
        blocks.append(cost)
    return Costs(blocks, 0.0, cfg.batch)


def late_targets(costs):
    """The costs of asynchronous workers: a target that comes back after the module has already regressed
    onto a later one is predicted again first (workers.run_block), so each regression also costs a prediction.
    In two asynchronous workers nearly every target is that late (staleness >= 1), so every one is counted."""
    blocks = [
        BlockCost(b.forward, b.backward, b.update, b.synthetic, b.sg_update + b.synthetic) if b.sg_update else b
        for b in costs.blocks
    ]
    return Costs(blocks, costs.transfer, costs.batch)


def costs_in_subprocess(cfg, in_shape, n_classes, repeats):
    """measure_costs in a fresh Python with one BLAS thread, as each worker has; returns Costs."""
    from minidni.runs.train import config_dict

    code = (
        "import json, sys; from minidni.parallel.speedup import _costs_main; "
        "print(_costs_main(json.loads(sys.stdin.read())))"
    )
    request = {"config": config_dict(cfg), "in_shape": list(in_shape), "n_classes": n_classes, "repeats": repeats}
    env = {**os.environ, **{k: "1" for k in BLAS_ENV}}
    done = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(request), capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the cost microbenchmark failed:\n{done.stderr[-2000:]}")
    return Costs.from_json(done.stdout.strip().splitlines()[-1])


def without_modules(costs):
    """The same blocks under locked backprop: their layers cost the same, and there are no SG modules."""
    return Costs([BlockCost(b.forward, b.backward, b.update) for b in costs.blocks], costs.transfer, costs.batch)


def _costs_main(request):
    from minidni.runs.train import TrainConfig

    cfg = TrainConfig(**{**request["config"], "lr_decay_at": tuple(request["config"]["lr_decay_at"])})
    return measure_costs(cfg, tuple(request["in_shape"]), request["n_classes"], request["repeats"]).to_json()


def measure_transfer(shape, repeats=100):
    """Seconds for one message (t, h, y) with h of `shape` (float32) to get from one worker process to another
    through the queues minidni.parallel.workers uses: half the median round trip of a ping-pong between two
    processes."""
    import multiprocessing as mp

    from minidni.parallel.workers import main_left_alone

    ctx = mp.get_context("spawn")
    ping, pong = ctx.Queue(), ctx.Queue()
    echo = ctx.Process(target=_echo, args=(ping, pong, repeats + 1), name="minidni-echo")
    with main_left_alone():
        echo.start()
    h = np.ones(shape, np.float32)
    y = np.zeros(shape[0], np.int64)
    times = []
    try:
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            ping.put((k, np.array(h), y))  # the copy a QueueLink send makes
            pong.get(timeout=60)
            times.append(time.perf_counter() - t0)
    finally:
        echo.join(timeout=10)
        if echo.is_alive():
            echo.terminate()
    return float(np.median(times[1:])) / 2  # the first round trip includes the echo's start


def _echo(ping, pong, n):
    for _ in range(n):
        msg = ping.get(timeout=60)
        pong.put((msg[0], np.array(msg[1]), msg[2]))


# -------------------------------------------------------------------------------------------------------------
# 3. the real runs


def train_run(out, log, threads=1, **fields):
    """`python -m minidni train` in a fresh process with `threads` BLAS threads per process; returns its metrics,
    the checkpoint's record of the workers and the wall time of its epochs."""
    args = [sys.executable, "-m", "minidni", "train", "--out", out, "--no-progress", "--threads", str(threads)]
    for k, v in fields.items():
        if v is True:
            args.append(f"--{k.replace('_', '-')}")
        elif v is not None and v is not False:
            args += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, **{k: str(threads) for k in BLAS_ENV}}  # and the same from the start of the process
    log(f"  $ {' '.join(args[1:])}")
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the run {out} failed:\n{done.stderr[-3000:]}")
    metrics = read_jsonl(os.path.join(out, "metrics.jsonl"))
    _, meta = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    seconds = sum(m["seconds"] for m in metrics)
    return {"metrics": metrics, "seconds": seconds, "workers": meta.get("workers"), "out": out}


def measured_timeline(out):
    """The events a worker run recorded (timeline.json), and how many blocks were busy on average."""
    with open(os.path.join(out, "timeline.json")) as f:
        events = Timeline.events_from_json(f.read())
    return events, total_work(events) / makespan(events)


# -------------------------------------------------------------------------------------------------------------
# the benchmark


def run(out, budget="full", seed=0, log=print):
    """Steps 1-4 of the module docstring; writes results.json, costs.json, scaling.json and the figures to `out`."""
    from minidni.runs.train import N_CLASSES, TrainConfig

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; expected one of {tuple(BUDGETS)}")
    b = BUDGETS[budget]
    taken = [d for d in RUNS if os.path.exists(os.path.join(out, d))]
    if taken:
        raise FileExistsError(f"{out} already holds this benchmark's runs ({', '.join(taken)}); choose another --out")
    os.makedirs(out, exist_ok=True)
    common = dict(
        data=b["data"], model=MODEL, hidden=b["hidden"], split=SPLIT, epochs=b["epochs"], batch=b["batch"], seed=seed
    )
    if b["train_subset"]:
        common["train_subset"] = b["train_subset"]
    cfg = TrainConfig(mode="cdni", **common)
    in_shape = (784,) if b["data"] != "spirals" else (2,)
    n_classes = N_CLASSES[b["data"]]

    log(f"1. costs: every piece of each block timed alone, one BLAS thread ({MODEL}, {b['hidden']} units, split "
        f"{SPLIT})")  # fmt: skip
    # one measurement feeds both schedules: the layers cost the same under cDNI and backprop, so the predicted
    # ratio does not depend on the noise between two separate microbenchmarks
    measured = costs_in_subprocess(cfg, in_shape, n_classes, b["repeats"])
    costs = {"cdni": measured, "bprop": without_modules(measured)}
    transfer = measure_transfer((b["batch"], b["hidden"]))
    for c in costs.values():
        c.transfer = transfer
    atomic_write(os.path.join(out, "costs.json"), json.dumps({m: json.loads(c.to_json()) for m, c in costs.items()}))
    for i, c in enumerate(costs["cdni"].blocks):
        log(f"   block {i}: forward {c.forward * 1e3:.2f} ms, synthetic {c.synthetic * 1e3:.2f}, backward "
            f"{c.backward * 1e3:.2f}, update {c.update * 1e3:.2f}, sg_update {c.sg_update * 1e3:.2f}")  # fmt: skip
    log(f"   one message between worker processes: {transfer * 1e3:.3f} ms")

    log("2. predict (minidni.parallel.simulate, nothing fitted)")
    steps = 32
    sim_cdni = simulate(late_targets(costs["cdni"]), "dni", steps, max_inflight=cfg.max_inflight, dx_after="backward")
    sim_bprop = simulate(costs["bprop"], "bprop", steps, dx_after="backward")
    predicted = step_time(sim_bprop, warmup=4) / step_time(sim_cdni, warmup=4)
    log(f"   predicted: cDNI in 2 workers {predicted:.2f}x the samples/s of bprop in 2 workers")

    log("3. measure: the real runs")
    runs = {
        "cdni_workers": train_run(
            os.path.join(out, "cdni_workers"), log, mode="cdni", workers="process", timeline=TIMELINE_STEPS, **common
        ),
        "bprop_workers": train_run(
            os.path.join(out, "bprop_workers"), log, mode="bprop", workers="process", timeline=TIMELINE_STEPS, **common
        ),
        "cdni_1process": train_run(os.path.join(out, "cdni_1process"), log, mode="cdni", **common),
        "bprop_1process_2threads": train_run(
            os.path.join(out, "bprop_1process_2threads"), log, threads=2, mode="bprop", **common
        ),
    }
    samples = {k: r["metrics"][-1]["step"] * b["batch"] / r["seconds"] for k, r in runs.items()}
    measured = samples["cdni_workers"] / samples["bprop_workers"]
    error = {k: r["metrics"][-1]["test_error_pct"] for k, r in runs.items()}
    busy = {k: measured_timeline(runs[k]["out"])[1] for k in ("cdni_workers", "bprop_workers")}

    log("4. scale: the same network cut into 1..64 equal blocks (simulate.split_costs' assumptions)")
    c, bp = costs["cdni"].blocks, costs["bprop"].blocks
    whole = BlockCost(
        forward=sum(x.forward for x in bp), backward=sum(x.backward for x in bp), update=sum(x.update for x in bp)
    )
    boundary = (c[0].synthetic, c[0].sg_update + c[0].synthetic)  # a late target is predicted again (late_targets)
    rows = scaling_table(
        whole, boundary, transfer, b["batch"], schedules=("bprop", "dni", "stochastic", "pipelined"),
        max_inflight=cfg.max_inflight, p_update=0.5, microbatches=4, dx_after="backward",
    )  # fmt: skip
    atomic_write(os.path.join(out, "scaling.json"), json.dumps(rows, indent=1))
    plot_scaling(rows, os.path.join(out, "scaling.png"),
                 title=f"predicted speed-up, {MODEL} ({b['hidden']} units) cut into W equal blocks")  # fmt: skip
    four = split_costs(whole, 4, boundary, transfer, b["batch"])
    kinds = {  # label: (schedule, its settings)
        "locked backprop": ("bprop", {}),
        "DNI, asynchronous": ("dni", {"max_inflight": cfg.max_inflight}),
        "DNI, stochastic updates p = 0.5": ("stochastic", {"p_update": 0.5}),
        "pipelined backprop (GPipe, 4 micro-batches)": ("pipelined", {"microbatches": 4}),
    }
    plot_schedules(
        {k: _first_steps(simulate(four, sched, 10, dx_after="backward", **kw), 6) for k, (sched, kw) in kinds.items()},
        os.path.join(out, "schedules_4_workers.png"),
        title="simulated: the same network cut into 4 equal blocks, one worker each",
    )
    measured_events = {
        f"{k.replace('_', ' in ')}": _first_steps(measured_timeline(runs[k]["out"])[0], 6)
        for k in ("bprop_workers", "cdni_workers")
    }
    simulated_events = {
        "bprop in workers, predicted": _first_steps(sim_bprop, 6),
        "cdni in workers, predicted": _first_steps(sim_cdni, 6),
    }
    plot_schedules(
        {**measured_events, **simulated_events},
        os.path.join(out, "schedules.png"),
        title="two blocks in two worker processes: measured (top two) and simulated (bottom two)",
        simulated=set(simulated_events),
    )
    results = {
        "budget": budget,
        "network": f"{MODEL}, {b['hidden']} units, split {SPLIT}, batch {b['batch']}, {b['data']}",
        "epochs": b["epochs"],
        "samples_per_s": samples,
        "test_error_pct": error,
        "blocks_busy": busy,
        "speedup_measured": measured,
        "speedup_predicted": predicted,
        "prediction_error": predicted / measured - 1,
        "vs_1process_2threads": samples["cdni_workers"] / samples["bprop_1process_2threads"],
        "error_gap_vs_1process_cdni": error["cdni_workers"] - error["cdni_1process"],
        "staleness_mean": runs["cdni_workers"]["metrics"][-1].get("staleness_mean"),
        "scaling": {f"{r['schedule']}@{r['workers']}": r["speedup"] for r in rows if r["workers"] in (2, 8, 64)},
    }
    atomic_write(os.path.join(out, "results.json"), json.dumps(results, indent=1))
    log(report(results))
    return results


def _first_steps(events, n):
    return [e for e in events if e.step < n]


def report(r):
    s = r["samples_per_s"]
    lines = [
        f"{r['network']}, {r['epochs']} epochs",
        f"  samples/s: cDNI 2 workers {s['cdni_workers']:.0f} | bprop 2 workers {s['bprop_workers']:.0f} | "
        f"cDNI 1 process {s['cdni_1process']:.0f} | bprop 1 process 2 BLAS threads {s['bprop_1process_2threads']:.0f}",
        f"  cDNI in 2 workers / bprop in 2 workers: measured {r['speedup_measured']:.2f}x, predicted "
        f"{r['speedup_predicted']:.2f}x (prediction {100 * r['prediction_error']:+.1f}%)",
        f"  cDNI in 2 workers / bprop in 1 process with 2 BLAS threads: {r['vs_1process_2threads']:.2f}x",
        f"  blocks busy on average (measured timelines): cDNI {r['blocks_busy']['cdni_workers']:.2f}, bprop "
        f"{r['blocks_busy']['bprop_workers']:.2f}",
        "  test error %: " + ", ".join(f"{k} {v:.2f}" for k, v in r["test_error_pct"].items()),
        f"  cDNI in workers minus cDNI in 1 process: {r['error_gap_vs_1process_cdni']:+.2f} points "
        f"(staleness of the targets, mean steps: {r['staleness_mean']})",
        "  predicted speed-up over 1-worker bprop: " + ", ".join(f"{k} {v:.2f}x" for k, v in r["scaling"].items()),
    ]
    return "\n".join(lines)
