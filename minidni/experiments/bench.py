"""`python -m minidni bench`: how close a training step gets to the speed of its own matrix products, and to
PyTorch's.

For each mode, on the paper's MNIST shapes with batch norm, Adam and random data (batch 256):

    bprop, dni, cdni, dni_mlp            FCN 3: 784 -> 256 -> 256 -> 10 (dni and cdni with linear SG modules,
                                         dni_mlp with the paper's 2 x 1024 module)
    cnn_bprop, cnn_dni, cnn_cdni         CNN 3: (1, 28, 28) -> (32, 14, 14) -> (32, 7, 7) -> 10, 5x5 convolutions,
                                         the convolutional SG module (docs/conv.md)

it prints one JSON line:

    steps/s           whole training steps per second
    GFLOP/s           the step's matrix-product FLOPs (2 m k n each) divided by the step's time
    matmul_fraction   t(the step's matrix products run alone) / t(whole step)
    vs_torch          with --vs torch: t(PyTorch's step) / t(minidni's step), the same network, weights, data and
                      thread count (minidni.experiments.torch_reference); above 1, minidni is faster

The "alone" time replays exactly the products one step made - recorded by wrapping functional.matmul, the one
place minidni multiplies matrices - with the same operand arrays (same shapes, same memory layouts, same output
buffers), in the same process, interleaved with the step timings (and PyTorch's). A fraction of 1 would mean the
engine adds nothing to the unavoidable BLAS work; the rest is copies (im2col), elementwise work, reductions,
allocation and Python. Each figure is the median of `repeats` interleaved timings of `steps` steps.

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
from minidni.runs.threads import blas_threads
from minidni.runs.train import blas_info

BENCH_MODES = {
    "bprop": dict(arch="fcn", mode="bprop"),
    "dni": dict(arch="fcn", mode="dni", sg="linear"),
    "cdni": dict(arch="fcn", mode="cdni", sg="linear"),
    "dni_mlp": dict(arch="fcn", mode="dni", sg="mlp"),  # the paper's 2 x 1024 SG module: heavy, matmul-bound
    "cnn_bprop": dict(arch="cnn", mode="bprop"),
    "cnn_dni": dict(arch="cnn", mode="dni", sg="auto"),  # the convolutional SG module, two hidden 5x5 convs
    "cnn_cdni": dict(arch="cnn", mode="cdni", sg="auto"),
}
DEFAULT_MODES = ("bprop", "dni", "cdni")
EXAMPLE_SHAPE = {"fcn": (784,), "cnn": (1, 28, 28)}  # one MNIST example as each architecture reads it
WARMUP = 3  # untimed steps first
STEPS = {"fcn": 20, "cnn": 2}  # steps per timing by default: a CNN step takes ~100x an FCN step


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


def bench_mode(name, batch=256, steps=None, repeats=7, seed=0, vs=None):
    """Measure one mode; returns the dict printed as a JSON line. vs="torch" also times PyTorch's step."""
    spec = dict(BENCH_MODES[name])
    arch = spec.pop("arch")
    steps = STEPS[arch] if steps is None else steps
    shape = {"d_in": 784} if arch == "fcn" else {"in_shape": EXAMPLE_SHAPE[arch]}
    net = build_network(arch=arch, depth=3, seed=seed, **shape, **spec)
    n_batches = 4
    rng = np.random.default_rng(seed)  # the draws of torch_reference.random_batches: both sides see the same data
    xs = rng.standard_normal((n_batches, batch, *EXAMPLE_SHAPE[arch])).astype(np.float32)
    ys = rng.integers(0, 10, size=(n_batches, batch))
    state = {"i": 0}

    def step():
        i = state["i"] % n_batches
        state["i"] += 1
        return net.train_step(xs[i], ys[i])

    # warm-up (allocator, BLAS threads, caches, reusable buffers); the losses of these first steps from fresh
    # weights are what PyTorch's first steps must also compute
    warmup_losses = [step()["loss"] for _ in range(WARMUP)]
    calls = record_matmuls(step)

    def replay():
        for a, b, out in calls:
            np.matmul(a, b, out=out)

    timed = {"step": step, "matmul": replay}
    setup = None
    if vs == "torch":
        from minidni.experiments.torch_reference import torch_step  # lazily: torch is an optional extra

        threads = blas_threads() or 1  # torch's own threads: as many as the BLAS products get
        timed["torch"], setup = torch_step(arch, spec["mode"], batch, seed, threads=threads, sg=spec.get("sg"))
        # the yardstick must compute what minidni computes: the same losses over the first steps (the later ones
        # after updates from synthetic gradients), to float32 rounding
        torch_losses = [timed["torch"]()["loss"] for _ in range(WARMUP)]
        loss_gap = max(abs(a - b) / abs(a) for a, b in zip(warmup_losses, torch_losses))
        if not loss_gap < 1e-3:
            raise RuntimeError(f"{name}: PyTorch's first {WARMUP} losses differ from minidni's by up to {loss_gap:.1e} "
                               "(relative): the two steps do not compute the same thing, so their times do not "
                               "compare")  # fmt: skip
    times = {k: [] for k in timed}
    for _ in range(repeats):  # interleaved, so that all see the same machine state
        for k, fn in timed.items():
            times[k].append(_time(fn, steps))
    t_step, t_mm = statistics.median(times["step"]), statistics.median(times["matmul"])
    flops = matmul_flops(calls)
    result = {
        "mode": name,
        "arch": arch,
        "sg": spec.get("sg"),
        "batch": batch,
        "threads": blas_threads(),
        "steps_per_s": round(1 / t_step, 2),
        "step_ms": round(1e3 * t_step, 3),
        "matmul_ms": round(1e3 * t_mm, 3),
        "matmuls_per_step": len(calls),
        "gflop_per_step": round(flops / 1e9, 4),
        "gflops_achieved": round(flops / t_step / 1e9, 2),
        "gflops_matmul_alone": round(flops / t_mm / 1e9, 2),
        "matmul_fraction": round(t_mm / t_step, 3),
        "repeats": repeats,
        "steps_per_timing": steps,
    }
    if setup is not None:
        t_torch = statistics.median(times["torch"])
        result.update(torch_step_ms=round(1e3 * t_torch, 3), torch_steps_per_s=round(1 / t_torch, 2),
                      vs_torch=round(t_torch / t_step, 3), torch=setup["torch"], torch_threads=setup["threads"],
                      loss_gap=float(f"{loss_gap:.1e}"))  # fmt: skip
    return result


def run(modes=DEFAULT_MODES, batch=256, steps=None, repeats=7, out=print, vs=None):
    for m in modes:
        if m not in BENCH_MODES:
            raise ValueError(f"unknown bench mode {m!r}; expected some of {tuple(BENCH_MODES)}")
    if vs not in (None, "torch"):
        raise ValueError(f"vs must be None or 'torch', got {vs!r}")
    out(json.dumps({"cpu": cpu_model(), "numpy": np.__version__, **thread_info()}))
    results = []
    for m in modes:
        r = bench_mode(m, batch=batch, steps=steps, repeats=repeats, vs=vs)
        out(json.dumps(r))
        results.append(r)
    return results
