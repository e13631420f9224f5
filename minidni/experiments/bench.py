"""`python -m minidni bench`: how close a training step gets to the speed of its own matrix products.

For each mode, on the FCN3 MNIST shapes (784 -> 256 -> 256 -> 10, batch 256, batch norm, Adam, random data):

    steps/s           whole training steps per second
    GFLOP/s           the step's matrix-product FLOPs (2 m k n each) divided by the step's time
    matmul_fraction   t(the step's matrix products run alone) / t(whole step)

The "alone" time replays exactly the products one step made - recorded by wrapping functional.matmul, the one
place minidni multiplies matrices - with the same operand arrays (same shapes, same memory layouts, same output
buffers), in the same process, interleaved with the step timings. A fraction of 1 would mean the engine adds
nothing to the unavoidable BLAS work; the rest is elementwise work, reductions, allocation and Python.

What this module deliberately is not: a test. Timings vary from machine to machine; the benchmark prints
ratios measured in one run and asserts nothing.
"""

import json
import os
import platform
import statistics
import time

import numpy as np

from minidni.core import functional as F
from minidni.dni.network import build_network
from minidni.runs.train import blas_info

BENCH_MODES = {
    "bprop": dict(mode="bprop"),
    "dni": dict(mode="dni", sg="linear"),
    "cdni": dict(mode="cdni", sg="linear"),
    "dni_mlp": dict(mode="dni", sg="mlp"),  # the paper's 2 x 1024 SG module: heavy, matmul-bound
}
DEFAULT_MODES = ("bprop", "dni", "cdni")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def thread_info():
    return {"cpu_count": os.cpu_count(), "blas": blas_info()}


def record_matmuls(fn):
    """Run fn() once and return the list of (a, b, out) operands of every matmul it made."""
    calls, original = [], F.matmul

    def recording(a, b, out=None):
        calls.append((a, b, out))
        return original(a, b, out=out)

    F.matmul = recording
    try:
        fn()
    finally:
        F.matmul = original
    return calls


def matmul_flops(calls):
    return sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b, _ in calls)


def _time(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def bench_mode(name, batch=256, steps=20, repeats=7, seed=0):
    """Measure one mode; returns the dict printed as a JSON line."""
    rng = np.random.default_rng(seed)
    net = build_network(depth=3, seed=seed, **BENCH_MODES[name])
    n_batches = 4
    xs = rng.standard_normal((n_batches, batch, 784)).astype(np.float32)
    ys = rng.integers(0, 10, size=(n_batches, batch))
    state = {"i": 0}

    def step():
        i = state["i"] % n_batches
        state["i"] += 1
        net.train_step(xs[i], ys[i])

    for _ in range(5):  # warm-up: allocator, BLAS threads, caches
        step()
    calls = record_matmuls(step)

    def replay():
        for a, b, out in calls:
            np.matmul(a, b, out=out)

    step_times, mm_times = [], []
    for _ in range(repeats):  # interleaved, so that both see the same machine state
        step_times.append(_time(step, steps))
        mm_times.append(_time(replay, steps))
    t_step, t_mm = statistics.median(step_times), statistics.median(mm_times)
    flops = matmul_flops(calls)
    return {
        "mode": name,
        "sg": BENCH_MODES[name].get("sg"),
        "batch": batch,
        "steps_per_s": round(1 / t_step, 2),
        "step_ms": round(1e3 * t_step, 3),
        "matmul_ms": round(1e3 * t_mm, 3),
        "matmuls_per_step": len(calls),
        "gflop_per_step": round(flops / 1e9, 4),
        "gflops_achieved": round(flops / t_step / 1e9, 2),
        "gflops_matmul_alone": round(flops / t_mm / 1e9, 2),
        "matmul_fraction": round(t_mm / t_step, 3),
    }


def run(modes=DEFAULT_MODES, batch=256, steps=20, repeats=7, out=print):
    for m in modes:
        if m not in BENCH_MODES:
            raise ValueError(f"unknown bench mode {m!r}; expected some of {tuple(BENCH_MODES)}")
    out(json.dumps({"cpu": cpu_model(), "numpy": np.__version__, **thread_info()}))
    results = []
    for m in modes:
        r = bench_mode(m, batch=batch, steps=steps, repeats=repeats)
        out(json.dumps(r))
        results.append(r)
    return results
