"""`python -m minidni experiment staleness`: test error against the delay of the synthetic-gradient targets.

In workers (minidni.parallel.workers) block i's SG module learns from a target that block i+1 makes after it has
received h_i, so the target of step s comes back some steps after block i has moved on. This experiment fixes that
delay:
with `delay = d` each module regresses at step t onto the target of step t - d (deterministic, so every run is
reproducible whatever the machine does), for d in DELAYS, plus one asynchronous run whose delay is whatever the
speeds make it (its mean staleness is reported beside it). Everything else is the run of the parallel benchmark
(minidni.parallel.speedup): cDNI, MNIST, FCN 8 with 512 units split 3,5, batch 256, in two process workers.

Output in --out: one run directory per (delay, seed), results.json (test error per delay and seed) and
staleness.png (test error against delay). A finished run is skipped, so an interrupted experiment continues.

What this module deliberately is not: a study of why staleness hurts; it measures how much.
"""

import json
import os

import numpy as np

from minidni.data.checkpoint import atomic_write, read_jsonl
from minidni.parallel.speedup import MODEL, SPLIT
from minidni.runs.threads import DEFAULT_THREADS

DELAYS = (0, 1, 2, 4, 8, 16)
BUDGETS = {
    "smoke": {
        "data": "spirals",
        "hidden": 16,
        "epochs": 2,
        "batch": 32,
        "train_subset": 320,
        "workers": "thread",
        "delays": (0, 2),
    },
    "short": {
        "data": "mnist",
        "hidden": 512,
        "epochs": 3,
        "batch": 256,
        "train_subset": 0,
        "workers": "process",
        "delays": DELAYS,
    },
}


def run(out, budget="short", seeds=(0,), log=print, threads=DEFAULT_THREADS):
    """Train every (delay, seed) of the budget (and one asynchronous run per seed), each worker with `threads` BLAS
    threads; write results.json and staleness.png; returns the results."""
    from minidni.parallel.workers import train_in_workers
    from minidni.runs.train import TrainConfig

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; expected one of {tuple(BUDGETS)}")
    b = BUDGETS[budget]
    os.makedirs(out, exist_ok=True)
    rows = []
    for seed in seeds:
        for delay in (*b["delays"], None):
            name = f"delay{delay}_seed{seed}" if delay is not None else f"async_seed{seed}"
            run_dir = os.path.join(out, name)
            if not os.path.exists(os.path.join(run_dir, "checkpoint.npz")):
                if os.path.exists(run_dir):  # an interrupted run: a run in workers writes everything at the end
                    for f in os.listdir(run_dir):
                        os.remove(os.path.join(run_dir, f))
                cfg = TrainConfig(
                    data=b["data"], model=MODEL, hidden=b["hidden"], split=SPLIT, mode="cdni", epochs=b["epochs"],
                    batch=b["batch"], train_subset=b["train_subset"], seed=seed, workers=b["workers"], delay=delay,
                    out=run_dir, progress=False, threads=threads,
                )  # fmt: skip
                log(f"{name}: training")
                train_in_workers(cfg, log=lambda _msg: None)
            last = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))[-1]
            rows.append({
                "delay": delay, "seed": seed, "test_error_pct": last["test_error_pct"],
                "staleness_mean": float(np.mean(last["staleness_mean"])),
            })  # fmt: skip
            log(f"{name}: test error {last['test_error_pct']:.2f}%, mean staleness {rows[-1]['staleness_mean']:.2f}")
    results = {"budget": budget, "network": f"{MODEL} split {SPLIT}, {b['hidden']} units, {b['data']}",
               "epochs": b["epochs"], "runs": rows}  # fmt: skip
    atomic_write(os.path.join(out, "results.json"), json.dumps(results, indent=1))
    plot(results, os.path.join(out, "staleness.png"))
    return results


def plot(results, path):
    """Test error against the delay d (log scale past 0), one dot per seed; the asynchronous runs at their mean
    staleness, as crosses."""
    from minidni.runs.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    fixed = [r for r in results["runs"] if r["delay"] is not None]
    free = [r for r in results["runs"] if r["delay"] is None]
    ax.plot([r["delay"] for r in fixed], [r["test_error_pct"] for r in fixed], "o", c="C0", label="delay d (fixed)")
    delays = sorted({r["delay"] for r in fixed})
    means = [np.mean([r["test_error_pct"] for r in fixed if r["delay"] == d]) for d in delays]
    ax.plot(delays, means, "-", c="C0", lw=1)
    ax.plot([r["staleness_mean"] for r in free], [r["test_error_pct"] for r in free], "x", c="C3", ms=8,
            label="asynchronous (at its mean staleness)")  # fmt: skip
    ax.set_xscale("symlog", linthresh=1)
    ax.set(xlabel="steps between an activation and the target that trains on it", ylabel="test error (%)",
           title=f"{results['network']}, cDNI, {results['epochs']} epochs")  # fmt: skip
    ax.legend(fontsize=8)
    save_figure(fig, path)
