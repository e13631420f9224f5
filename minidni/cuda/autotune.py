"""`--kernels auto` on a GPU: for every operation of the fused step at this network's shapes, the hand-written
kernel or the array library's own ops (cuBLAS + elementwise passes, minidni.cuda.unfused) - whichever this GPU
runs faster, measured once at start-up and remembered.

Why measure: on paper a kernel can lose. The v3 product tiles its output 64 x 64, so a 256 x 256 result is 16
blocks on a GPU with 132 SMs, with no split-K and no double buffering, while cuBLAS picks among many kernels per
shape. Which wins depends on the GPU, the shape and the library versions, so it is measured where it runs:

    plan, record = autotune.plan_for(net.fused_step, batch, kernels)   # {op_key: version}, what to log
    use_kernels(net, kernels, plan=plan)

For each operation and shape (FusedDNIStep.operations) the fastest kernel version and the unfused alternative are
timed on random inputs of that shape with minidni.cuda.timing (device time alone, the median of a few rounds).
The kernel is kept unless it is more than 5 % slower (TOLERANCE): a fused kernel also saves memory traffic that
a single operation's time does not show. Choices are cached in a JSON file keyed on everything that could change
them: the kernel sources with every header they include, the device and its compute capability, the CuPy, CUDA
runtime, driver and NVRTC versions, and the kernel versions on offer. A second run with the same key measures
nothing.

What this module deliberately is not: a search over launch geometries or tile sizes (the kernels' versions are
fixed programs), or a promise about speed where nothing was measured (on the CPU emulator the timer is the wall
clock, which says nothing about a GPU; the tests use it to check the choosing logic only).
"""

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minidni.cuda import norm_ops
from minidni.cuda import ops
from minidni.cuda.checks import UNFUSED
from minidni.cuda.fused import OPTIMIZER_CODES
from minidni.cuda.loader import kernel_dir
from minidni.cuda.timing import DeviceTimer

TOLERANCE = 1.05  # a kernel is kept unless it takes more than 5 % longer than the unfused alternative
REPEATS = 20  # calls per timed round (3 rounds, the median)
VERSIONS = {**ops.VERSIONS, **norm_ops.VERSIONS}


@dataclass(frozen=True)
class Choice:
    version: object  # the kernel version kept (an int) or "unfused"
    kernel: int  # the kernel version that was timed (the fastest on offer)
    kernel_us: float
    unfused_us: float
    host_bound: bool  # a timing never had the device's queue full: treat its figure with care


def choose(kernel_seconds, unfused_seconds, kernel_version):
    """The rule: keep the kernel unless it is more than TOLERANCE times slower than the alternative."""
    return kernel_version if kernel_seconds <= TOLERANCE * unfused_seconds else UNFUSED


# ------------------------------------------------------------------------------------------------------------
# what the choice depends on


def kernels_fingerprint():
    """sha256 over every kernel source and header, by name: a changed tiles.cuh changes every choice's key."""
    h = hashlib.sha256()
    for path in sorted(kernel_dir().iterdir()):
        if path.suffix in (".cu", ".cuh"):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def device_identity(kernels):
    """The device and library versions a timing belongs to."""
    if kernels.target != "cupy":
        return {"device": "CPU emulator (wall-clock timings: a check of the logic, not of a GPU)"}
    import cupy

    from minidni.cuda import nvrtc

    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return {
        "device": name.decode() if isinstance(name, bytes) else name,
        "compute_capability": f"{props['major']}.{props['minor']}",
        "cupy": cupy.__version__,
        "cuda_runtime": runtime.runtimeGetVersion(),
        "driver": runtime.driverGetVersion(),
        "nvrtc": ".".join(map(str, nvrtc.version())),
    }


def cache_key(identity):
    blob = json.dumps(
        {"kernels": kernels_fingerprint(), "versions": VERSIONS, "identity": identity, "tolerance": TOLERANCE},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_dir():
    """$MINIDNI_CACHE/autotune, else $XDG_CACHE_HOME/minidni/autotune or ~/.cache/minidni/autotune."""
    if os.environ.get("MINIDNI_CACHE"):
        return Path(os.environ["MINIDNI_CACHE"]) / "autotune"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minidni" / "autotune"


def _read(path):
    try:
        data = json.loads(path.read_text())
        return {k: Choice(**v) for k, v in data["choices"].items()}
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: measure again and rewrite
        return {}


def _write(path, identity, choices):
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"identity": identity, "choices": {k: asdict(c) for k, c in sorted(choices.items())}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autotune-")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)  # atomic: a concurrent or interrupted run never leaves half a file


# ------------------------------------------------------------------------------------------------------------
# timing one operation at one shape


def op_runner(kernels, op, dims, rng):
    """A function of the version that runs `op` once at `dims` (FusedDNIStep.operations' dims) on random inputs."""
    xp = kernels.xp

    def arr(*shape, scale=1.0):
        return xp.asarray((rng.standard_normal(shape) * scale).astype(np.float32))

    def labels(B, K):
        return xp.asarray(rng.integers(0, max(K, 1), B).astype(np.int32))

    def step(shape, kind):
        if kind == OPTIMIZER_CODES["adam"]:
            state, scalars = (xp.zeros(shape, np.float32), xp.zeros(shape, np.float32)), (1e-4, 1e-8, 0.9, 0.999)
            return ops.OptimizerStep("adam", state, tuple(np.float32(s) for s in scalars))
        return ops.OptimizerStep("sgd", (xp.zeros(shape, np.float32),), (np.float32(1e-4), np.float32(0.9)))

    if op == "linear_forward":
        B, d_in, d_out, bias = dims
        x, P = arr(B, d_in), arr(d_in + bias, d_out, scale=0.05)
        return lambda v: ops.linear_forward(kernels, x, P, 1, bool(bias), version=v)
    if op == "layer_update":
        B, d_in, d_out, bias, kind = dims
        x, delta, P = arr(B, d_in), arr(B, d_out, scale=1e-3), arr(d_in + bias, d_out)
        s = step(P.shape, kind)
        return lambda v: ops.layer_update(kernels, x, delta, P, bool(bias), s, version=v)
    if op == "sg_predict":
        B, d_u, K, D = dims
        u, P, y, h = arr(B, d_u), arr(d_u + K + 1, D, scale=1e-3), labels(B, K), xp.maximum(arr(B, D), 0)
        return lambda v: ops.sg_predict(kernels, u, P, y, K, h, 1, version=v, labels_checked=True)
    if op == "sg_update":
        B, d_u, K, D, kind = dims
        u, y, dh, target = arr(B, d_u), labels(B, K), arr(B, D, scale=1e-3), arr(B, D, scale=1e-3)
        P, s, loss = arr(d_u + K + 1, D, scale=1e-3), step((d_u + K + 1, D), kind), xp.zeros(1, np.float32)
        return lambda v: ops.sg_update(
            kernels, u, y, K, dh, target, 1.0, P, s, version=v, labels_checked=True, loss=loss
        )
    if op == "optimizer_step":
        n, kind = dims
        P, g, s = arr(n), arr(n, scale=1e-3), step((n,), kind)
        return lambda v: ops.optimizer_step(kernels, P, g, s, version=v)
    if op == "bn_forward_train":
        B, D = dims
        z, gamma, beta = arr(B, D), xp.ones(D, np.float32), xp.zeros(D, np.float32)
        rm, rv = xp.zeros(D, np.float32), xp.ones(D, np.float32)
        return lambda v: norm_ops.bn_forward_train(kernels, z, gamma, beta, rm, rv, 1, version=v)
    if op == "bn_backward":
        B, D = dims
        dy, xhat, inv_std, gamma = arr(B, D), arr(B, D), xp.ones(D, np.float32), xp.ones(D, np.float32)
        return lambda v: norm_ops.bn_backward(kernels, dy, xhat, inv_std, gamma, version=v)
    if op == "softmax_xent":
        B, K = dims
        logits, y = arr(B, K), labels(B, K)
        return lambda v: norm_ops.softmax_xent(kernels, logits, y, version=v, labels_checked=True)
    raise ValueError(f"no timing case for {op!r}")


def measure(kernels, op, dims, timer, seed=0):
    """Choice for one operation at one shape: its fastest kernel version against the unfused alternative."""
    run = op_runner(kernels, op, dims, np.random.default_rng(seed))
    kernel_version = VERSIONS[op][-1]
    fused = timer(lambda: run(kernel_version), REPEATS)
    unfused = timer(lambda: run(UNFUSED), REPEATS)
    return Choice(
        version=choose(fused.seconds, unfused.seconds, kernel_version),
        kernel=kernel_version,
        kernel_us=round(fused.seconds * 1e6, 3),
        unfused_us=round(unfused.seconds * 1e6, 3),
        host_bound=fused.host_bound or unfused.host_bound,
    )


# ------------------------------------------------------------------------------------------------------------
# a whole step


def plan_for(step, batch, kernels, timer=None, log=print):
    """(plan, record) for a FusedDNIStep `step` at batch size `batch`: the plan maps each op_key to the version
    that runs it; the record says what was chosen, from what timings, on what, and where the cache is - for the
    run's config.json."""
    identity = device_identity(kernels)
    path = cache_dir() / f"{cache_key(identity)}.json"
    cached = _read(path)
    wanted = step.operations(batch)
    missing = [k for k in wanted if k not in cached]
    if missing:
        timer = DeviceTimer(kernels) if timer is None else timer
        log(f"--kernels auto: timing {len(missing)} operations against their unfused alternative (once per GPU)")
        for key in missing:
            op, dims = wanted[key]
            cached[key] = measure(kernels, op, dims, timer)
        _write(path, identity, cached)
    plan = {k: cached[k].version for k in wanted}
    record = {
        "plan": plan,
        "timings_us": {k: {"kernel": cached[k].kernel_us, "unfused": cached[k].unfused_us} for k in wanted},
        "host_bound": sorted(k for k in wanted if cached[k].host_bound),
        "measured_now": len(missing),
        "identity": identity,
        "cache": str(path),
        "rule": f"kernel unless more than {round((TOLERANCE - 1) * 100)}% slower than unfused",
    }
    return plan, record
