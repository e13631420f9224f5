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

from minidni.cuda import norm_ops
from minidni.cuda import ops
from minidni.cuda.autotune import op_runner, plan_for
from minidni.cuda.checks import UNFUSED
from minidni.cuda.fused import OPTIMIZER_CODES
from minidni.cuda.loader import Kernels, get_kernels
from minidni.cuda.timing import DeviceTimer
from minidni.cuda.fused import use_kernels

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
# the cases: (kernel, shape) -> a call per version on random inputs of that shape (the same calls --kernels auto
# times: autotune.op_runner), and the minimum bytes and flops


def _cases(kernels, B, Din, D, K, rng):
    adam = OPTIMIZER_CODES["adam"]
    S = 4  # Adam's M and V, each read and written once per parameter, besides P itself

    def case(kernel, op, dims, shape, flops, floats):
        return {"kernel": kernel, "shape": shape, "run": op_runner(kernels, op, dims, rng), "flops": flops,
                "bytes": FP32 * floats}  # fmt: skip

    return [
        case("linear_forward", "linear_forward", (B, Din, D, 0), f"{B}x{Din} @ {Din}x{D}",
             2 * B * Din * D, B * Din + Din * D + B * D),
        case("sg_predict", "sg_predict", (B, D, K, D), f"{B}x{D} @ {D}x{D} + C[y] (K={K})",
             2 * B * D * D, B * D + (D + K + 1) * D + 2 * B * D + B),
        case("layer_update_adam", "layer_update", (B, Din, D, 0, adam), f"{Din}x{B} @ {B}x{D}",
             2 * B * Din * D + 10 * Din * D, B * Din + B * D + (2 + S) * Din * D),
        case("sg_update_adam", "sg_update", (B, D, K, D, adam), f"{D + K + 1}x{B} @ {B}x{D}",
             2 * B * (D + K + 1) * D + 10 * (D + K + 1) * D, B * D + 2 * B * D + B + (2 + S) * (D + K + 1) * D),
        case("bn_forward_train", "bn_forward_train", (B, D), f"{B}x{D}", 10 * B * D, B * D + 2 * B * D + 8 * D),
        case("bn_backward", "bn_backward", (B, D), f"{B}x{D}", 8 * B * D, 3 * B * D + 4 * D),
        case("optimizer_step", "optimizer_step", (Din * D, adam), f"Adam on {Din * D} parameters",
             10 * Din * D, 7 * Din * D),  # read P, g, M, V; write P, M, V
        case("softmax_xent", "softmax_xent", (B, 10), f"{B}x10", 5 * B * 10, 2 * B * 10 + 2 * B),
    ]  # fmt: skip


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
                timing = timer(lambda case=case, v=v: case["run"](v), repeats)
                rows.append(_row(case, v if v == UNFUSED else f"v{v}", timing.seconds, peaks))
                if timing.host_bound:
                    rows[-1]["host_bound"] = True  # the GPU waited for the host: not device time alone
                out(json.dumps(rows[-1]))
    return rows


def bench_steps(kernels, widths, batch, repeats, modes=("cdni", "dni"), out=print, seed=0, tune_log=None):
    """Whole training steps on random MNIST-shaped data, host included: unfused (the engine's ops), fused (every
    operation by its kernel) and auto (each operation by kernel or unfused, as `--kernels auto` chooses on this
    device: minidni.cuda.autotune)."""
    from minidni.dni.network import build_network

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
                    use_kernels(net, kernels)
                if path == "auto":
                    plan, _ = plan_for(net.fused_step, batch, kernels, log=tune_log or (lambda m: None))
                    use_kernels(net, kernels, plan=plan)
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
        from minidni.core.backend import set_backend

        set_backend("cupy")  # raises BackendError, saying why, where there is no GPU
        kernels, peaks = Kernels("cupy"), device_info()
        out(json.dumps({"table": "device", **peaks}))
    else:
        kernels, peaks = get_kernels("emulator"), None
        out(json.dumps({"table": "device", "gpu": None, "note": "CPU emulator: these timings say nothing about a GPU"}))
    shapes = [(batch, 784, width, 10) for width in widths]
    return bench_kernels(kernels, shapes, repeats, peaks, out), bench_steps(kernels, widths, batch, repeats, out=out)
