"""`python -m minidni bench --backend cupy`: every kernel version against its unfused alternative, on a GPU.

Two tables, as JSON lines:

1. kernels - for each kernel and version, and for the unfused alternative that computes the same thing with the
   same arguments (the launcher's version="unfused": cuBLAS products + elementwise ops, minidni.cuda.unfused):
   time per call, GFLOP/s, GB/s, and the floor that the GPU's memory bandwidth and peak FP32 rate set for that
   amount of work,
       floor = max(bytes / bandwidth, flops / peak),
   where bytes and flops are the minimum the operation needs (each operand read once, each result written once).
   Shapes: the FCN3 MNIST step (batch 256, 784 -> 256 -> 256 -> 10, cDNI) and the same at a larger width.
   Times are device time alone (minidni.cuda.timing: the calls queue up behind a delay kernel, so the argument
   checks and launch overhead of each Python call are not in them; a row marked host_bound could not be queued
   fast enough, and its time includes the GPU waiting). Launchers get labels_checked=True, as in the fused step.
2. steps - the whole DNI/cDNI training step, unfused (the engine's own ops on CuPy arrays), fused (every
   operation by its kernel) and auto (each operation by kernel or unfused, as `--kernels auto` chooses on this
   GPU), as time per step including the host (each step reads its losses back once), and the ratios.

Peak bandwidth and FP32 rate are *nominal* (from the device's clocks, bus width and SM count); they are labelled
so.

What this module deliberately is not: a test, or a CPU benchmark. On a machine without a GPU it says so and
stops (with target="emulator" it runs the same code on the CPU emulator, which proves the harness works and
measures nothing about a GPU).
"""

import json
import time

import numpy as np

from ..optim import Adam
from . import norm_ops, ops
from .checks import UNFUSED
from .loader import Kernels, get_kernels
from .timing import DeviceTimer

FP32 = 4  # bytes
# FP32 lanes per SM by compute capability major.minor (CUDA programming guide, arithmetic instructions table)
_FP32_LANES = {(7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128, (9, 0): 128, (10, 0): 128, (12, 0): 128}


# cudaDeviceAttr values (CUDA runtime API), stable across CUDA versions; CUDA 13's cudaDeviceProp no longer has
# the clock fields, so the nominal peaks are read as attributes
_ATTR = {"clock_khz": 13, "sms": 16, "memory_clock_khz": 36, "bus_width_bits": 37}


def device_info():
    """Name and nominal peaks of the current GPU (None where the driver does not say)."""
    import cupy

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)

    def attr(name):
        try:
            return cupy.cuda.runtime.deviceGetAttribute(_ATTR[name], dev.id)
        except cupy.cuda.runtime.CUDARuntimeError:  # not reported by this driver: that peak stays unknown
            return None

    cc = (props["major"], props["minor"])
    mem_khz, bus, clock_khz, sms = attr("memory_clock_khz"), attr("bus_width_bits"), attr("clock_khz"), attr("sms")
    bandwidth = 2 * mem_khz * 1e3 * bus / 8 if mem_khz and bus else None  # DDR: 2 transfers per clock
    lanes = _FP32_LANES.get(cc)
    peak = 2 * lanes * sms * clock_khz * 1e3 if lanes and sms and clock_khz else None  # an FMA is 2 flops
    name = props["name"]
    return {
        "gpu": name.decode() if isinstance(name, bytes) else name,
        "compute_capability": f"{cc[0]}.{cc[1]}",
        "sms": sms,
        "nominal_bandwidth_GBps": round(bandwidth / 1e9, 1) if bandwidth else None,
        "nominal_fp32_GFLOPs": round(peak / 1e9, 1) if peak else None,
        "cupy": cupy.__version__,
    }


def _step_seconds(target, fn, repeats):
    """Seconds per whole training step, host included (a step reads its loss back once, so the device cannot run
    ahead of the host): CUDA events around `repeats` steps on a GPU, the wall clock on the emulator."""
    fn()  # warm-up: compilation, allocator, caches
    if target != "cupy":
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats
    import cupy

    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / 1e3 / repeats


# ----------------------------------------------------------------------------------------------------------
# the cases: (kernel, shape) -> the fused call per version, the unfused call, and the minimum bytes and flops


def _cases(kernels, B, Din, D, K, rng):
    xp = kernels.xp

    def arr(*shape, scale=1.0):
        return xp.asarray((rng.standard_normal(shape) * scale).astype(np.float32))

    x, h, dz = arr(B, Din), xp.maximum(arr(B, D), 0), arr(B, D, scale=1e-3)
    labels = xp.asarray(rng.integers(0, K, B).astype(np.int32))
    W1 = arr(Din, D, scale=0.05)  # a hidden layer (no bias: batch norm follows)
    P_sg = arr(D + K + 1, D, scale=1e-3)  # a cDNI module [A; C; c]
    target = arr(B, D, scale=1e-3)
    gamma, beta = xp.ones(D, np.float32), xp.zeros(D, np.float32)
    rm, rv = xp.zeros(D, np.float32), xp.ones(D, np.float32)

    def adam_for(P):
        opt = Adam({"params": P.ravel()}, 1e-3)
        opt.begin_step()
        return opt, ops.optimizer_step_of(opt, 0, P.size, P.shape)

    opt1, step1 = adam_for(W1)
    opt_sg, step_sg = adam_for(P_sg)
    dW1 = xp.empty_like(W1)
    xhat, inv_std = norm_ops.bn_forward_train(kernels, dz, gamma, beta, rm, rv, 1)[1:]
    logits = arr(B, 10)
    loss = xp.zeros(1, np.float32)  # sg_update adds each call's loss here
    S = 4  # Adam's M and V, each read and written once per parameter, besides P itself

    return [
        {
            "kernel": "linear_forward",
            "shape": f"{B}x{Din} @ {Din}x{D}",
            "fused": lambda v: ops.linear_forward(kernels, x, W1, 1, has_bias=False, version=v),
            "flops": 2 * B * Din * D,
            "bytes": FP32 * (B * Din + Din * D + B * D),
        },
        {
            "kernel": "sg_predict",
            "shape": f"{B}x{D} @ {D}x{D} + C[y] (K={K})",
            "fused": lambda v: ops.sg_predict(kernels, h, P_sg, labels, K, h, 1, version=v, labels_checked=True),
            "flops": 2 * B * D * D,
            "bytes": FP32 * (B * D + (D + K + 1) * D + 2 * B * D + B),
        },
        {
            "kernel": "layer_update_adam",
            "shape": f"{Din}x{B} @ {B}x{D}",
            "fused": lambda v: ops.layer_update(kernels, x, dz, W1, False, step1, version=v),
            "flops": 2 * B * Din * D + 10 * Din * D,
            "bytes": FP32 * (B * Din + B * D + (2 + S) * Din * D),
        },
        {
            "kernel": "sg_update_adam",
            "shape": f"{D + K + 1}x{B} @ {B}x{D}",
            "fused": lambda v: ops.sg_update(
                kernels, h, labels, K, dz, target, 1.0, P_sg, step_sg, version=v, labels_checked=True, loss=loss
            ),
            "flops": 2 * B * (D + K + 1) * D + 10 * (D + K + 1) * D,
            "bytes": FP32 * (B * D + 2 * B * D + B + (2 + S) * (D + K + 1) * D),
        },
        {
            "kernel": "bn_forward_train",
            "shape": f"{B}x{D}",
            "fused": lambda v: norm_ops.bn_forward_train(kernels, dz, gamma, beta, rm, rv, 1, version=v),
            "flops": 10 * B * D,
            "bytes": FP32 * (B * D + 2 * B * D + 8 * D),
        },
        {
            "kernel": "bn_backward",
            "shape": f"{B}x{D}",
            "fused": lambda v: norm_ops.bn_backward(kernels, dz, xhat, inv_std, gamma, version=v),
            "flops": 8 * B * D,
            "bytes": FP32 * (3 * B * D + 4 * D),
        },
        {
            "kernel": "optimizer_step",
            "shape": f"Adam on {Din * D} parameters",
            "fused": lambda v: ops.optimizer_step(kernels, W1.ravel(), dW1.ravel(), step1.flat(), version=v),
            "flops": 10 * Din * D,
            "bytes": FP32 * 7 * Din * D,  # read P, g, M, V; write P, M, V
        },
        {
            "kernel": "softmax_xent",
            "shape": f"{B}x10",
            "fused": lambda v: norm_ops.softmax_xent(kernels, logits, labels, version=v, labels_checked=True),
            "flops": 5 * B * 10,
            "bytes": FP32 * (2 * B * 10 + 2 * B),
        },
    ]


_VERSIONS_OF = {**ops.VERSIONS, **norm_ops.VERSIONS, "layer_update_adam": ops.VERSIONS["layer_update"]}
_VERSIONS_OF["sg_update_adam"] = ops.VERSIONS["sg_update"]


def _row(case, version, seconds, peaks):
    row = {
        "table": "kernels",
        "kernel": case["kernel"],
        "shape": case["shape"],
        "version": version,
        "us": round(seconds * 1e6, 2),
        "GFLOPs": round(case["flops"] / seconds / 1e9, 1),
        "GBps": round(case["bytes"] / seconds / 1e9, 1),
    }
    if peaks:
        bw, fl = peaks.get("nominal_bandwidth_GBps"), peaks.get("nominal_fp32_GFLOPs")
        floor = max(case["bytes"] / (bw * 1e9) if bw else 0, case["flops"] / (fl * 1e9) if fl else 0)
        row["floor_us"] = round(floor * 1e6, 2)
    return row


def bench_kernels(kernels, shapes, repeats, peaks=None, out=print, seed=0):
    """Every kernel version and its unfused alternative (the launcher's version="unfused", minidni.cuda.unfused:
    the same contract in cuBLAS + elementwise ops), device time alone (minidni.cuda.timing)."""
    timer = DeviceTimer(kernels)
    rows = []
    for B, Din, D, K in shapes:
        for case in _cases(kernels, B, Din, D, K, np.random.default_rng(seed)):
            for v in (*_VERSIONS_OF[case["kernel"]], UNFUSED):
                timing = timer(lambda case=case, v=v: case["fused"](v), repeats)
                rows.append(_row(case, v if v == UNFUSED else f"v{v}", timing.seconds, peaks))
                if timing.host_bound:
                    rows[-1]["host_bound"] = True  # the GPU waited for the host: not device time alone
                out(json.dumps(rows[-1]))
    return rows


def bench_steps(kernels, widths, batch, repeats, modes=("cdni", "dni"), out=print, seed=0, tune_log=None):
    """Whole training steps on random MNIST-shaped data, host included: unfused (the engine's ops), fused (every
    operation by its kernel) and auto (each operation by kernel or unfused, as `--kernels auto` chooses on this
    device: minidni.cuda.autotune)."""
    from ..dni import build_network
    from .autotune import plan_for

    xp, rng, rows = kernels.xp, np.random.default_rng(seed), []
    x = xp.asarray(rng.standard_normal((batch, 784)).astype(np.float32))
    y = xp.asarray(rng.integers(0, 10, batch).astype(np.int32))  # in range: the steps need not check them
    for width in widths:
        for mode in modes:
            sg = "linear" if mode == "cdni" else "mlp"
            times = {}
            for path in ("unfused", "fused", "auto"):
                net = build_network(depth=3, mode=mode, sg=sg, hidden=width, seed=seed)
                if path != "unfused":
                    net.use_kernels(kernels)
                if path == "auto":
                    plan, _ = plan_for(net.fused_step, batch, kernels, log=tune_log or (lambda m: None))
                    net.use_kernels(kernels, plan=plan)
                step = lambda net=net: net.train_step(x, y, labels_checked=True)  # noqa: E731
                times[path] = _step_seconds(kernels.target, step, repeats)
            row = {
                "table": "steps",
                "mode": mode,
                "sg": sg,
                "batch": batch,
                "width": width,
                "unfused_ms": round(times["unfused"] * 1e3, 3),
                "fused_ms": round(times["fused"] * 1e3, 3),
                "auto_ms": round(times["auto"] * 1e3, 3),
                "speedup": round(times["unfused"] / times["fused"], 2),
                "auto_speedup": round(times["unfused"] / times["auto"], 2),
            }
            rows.append(row)
            out(json.dumps(row))
    return rows


def run(target="cupy", widths=(256, 1024), batch=256, repeats=50, out=print):
    """Both tables. target='cupy' needs a GPU (BackendError otherwise); 'emulator' is a harness check only."""
    if target == "cupy":
        from ..backend import set_backend

        set_backend("cupy")  # raises BackendError, saying why, where there is no GPU
        kernels, peaks = Kernels("cupy"), device_info()
        out(json.dumps({"table": "device", **peaks}))
    else:
        kernels, peaks = get_kernels("emulator"), None
        out(json.dumps({"table": "device", "gpu": None, "note": "CPU emulator: these timings say nothing about a GPU"}))
    shapes = [(batch, 784, width, 10) for width in widths]
    return bench_kernels(kernels, shapes, repeats, peaks, out), bench_steps(kernels, widths, batch, repeats, out=out)
