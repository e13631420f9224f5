"""`python -m minidni doctor`: is the GPU path sound on this machine? One command, a PASS / FAIL / SKIP line per check.

On a GPU (cupy.is_available()), in a few minutes:

    versions          driver, CUDA runtime, CuPy, NVRTC, cuBLAS, NumPy
    compile           every kernels/*.cu compiled by CuPy and every extern "C" kernel loaded from it
    kernels           every version of every kernel, and its unfused alternative, against its NumPy reference at the
                      real shapes (batch 256; 784->256, 256->256, 256->10, and width 1024), with the tests' tolerances
    fused steps       one fused dni and one fused cdni step against the engine's step from the same state: the
                      largest relative difference per array (max |fused - engine| / max |engine|), 1e-4 at most
    training run      a short fused run against the NumPy run of the same seed: final test error within 1 point
    timings           `bench --backend cupy`'s tables: each kernel against its unfused alternative (device time),
                      and whole steps unfused, fused and auto

Without a GPU it runs what can run - the kernels on the CPU emulator at reduced shapes, NVRTC with CuPy's options,
the CuPy audit and the engine under CuPy's rules (minidni.cuda.cupy_standin) - says what it skipped and why, and
exits non-zero if anything it ran failed. CI runs it that way. It needs nothing beyond what the package needs (and
CuPy for the GPU checks), so it runs from a checkout without installing minidni: `python -m minidni doctor` in
the repository's folder, where NumPy, matplotlib, tqdm, threadpoolctl and CuPy are importable.

What this module deliberately is not: the test suite. It checks one machine's installation end to end with real
shapes in minutes; the tests check every edge, on tiny shapes, everywhere.
"""

import copy
import platform
import sys
import time
import traceback
from dataclasses import dataclass

import numpy as np

from minidni.core.backend import gpu_available, to_numpy
from minidni.cuda import norm_ops
from minidni.cuda import ops
from minidni.cuda import reference
from minidni.cuda.checks import UNFUSED
from minidni.cuda.fused import use_kernels

REAL = {"batch": 256, "d_in": 784, "widths": (256, 1024), "classes": 10}  # the shapes of the paper's FCN, and wider
REDUCED = {"batch": 16, "d_in": 40, "widths": (24,), "classes": 10}  # the emulator runs a thread per CUDA thread
STEP_TOLERANCE = 1e-4  # largest relative difference per array between a fused step and the engine's
ERROR_POINTS = 1.0  # a fused run's final test error against the NumPy run's, in percentage points


@dataclass(frozen=True)
class Result:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str

    def __str__(self):
        return f"{self.status:4}  {self.name}: {self.detail}"


class Doctor:
    def __init__(self, gpu=None, out=print):
        self.gpu = gpu_available() if gpu is None else gpu
        self.out, self.results = out, []
        self.shapes = REAL if self.gpu else REDUCED

    def report(self, name, status, detail):
        self.results.append(Result(name, status, detail))
        self.out(str(self.results[-1]))

    def check(self, name, fn):
        """Run fn() -> (ok, detail); an exception is a FAIL with its message (and the traceback's last line)."""
        t0 = time.perf_counter()
        try:
            ok, detail = fn()
        except Exception as e:  # a check that crashes has failed; the others still run
            where = traceback.extract_tb(e.__traceback__)[-1]
            ok, detail = False, f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})"
        self.report(name, "PASS" if ok else "FAIL", f"{detail} [{time.perf_counter() - t0:.1f} s]")

    def skip(self, name, reason):
        self.report(name, "SKIP", reason)

    # -- the checks -------------------------------------------------------------------------------------------

    def run(self):
        mode = "GPU" if self.gpu else "no GPU (cupy.is_available() is False): the CPU emulator at reduced shapes"
        self.out(f"minidni doctor - {mode}")
        self.check("versions", self.versions)
        self.check("compile", self.compile_kernels)
        if self._cupy_missing():
            self.skip("cupy audit", self._cupy_missing())
            self.skip("engine under CuPy's rules", self._cupy_missing())
        else:
            self.check("cupy audit", self.cupy_audit)
            self.check("engine under CuPy's rules", self.standin_steps)
        kernels = self._kernels()
        for op in (*ops.VERSIONS, *norm_ops.VERSIONS):
            self.check(f"kernel {op}", lambda op=op: self.kernel_versions(kernels, op))
        for mode in ("dni", "cdni"):
            self.check(f"fused {mode} step", lambda mode=mode: self.fused_step(kernels, mode))
        self.check("fused training run", self.training_run)
        if self.gpu:
            self.check("timings", lambda: self.timings(kernels))
        else:
            self.skip("timings", "need a GPU: the emulator's wall clock says nothing about one")
        failed = [r.name for r in self.results if r.status == "FAIL"]
        skipped = sum(r.status == "SKIP" for r in self.results)
        passed = sum(r.status == "PASS" for r in self.results)
        self.out(f"{'FAIL' if failed else 'PASS'}: {passed} passed, {len(failed)} failed, {skipped} skipped"
                 + (f" ({', '.join(failed)})" if failed else ""))  # fmt: skip
        return 1 if failed else 0

    def _cupy_missing(self):
        try:
            import cupy  # noqa: F401
        except ImportError:
            return "CuPy is not installed (pip install -e '.[test]' brings it; no GPU needed)"
        return None

    def _kernels(self):
        from minidni.cuda.loader import Kernels, get_kernels

        return Kernels("cupy") if self.gpu else get_kernels("emulator")

    def versions(self):
        from minidni.cuda import nvrtc

        parts = [f"Python {platform.python_version()}", f"NumPy {np.__version__}"]
        try:
            import cupy

            parts.append(f"CuPy {cupy.__version__}")
        except ImportError:
            parts.append("CuPy not installed")
            cupy = None
        try:
            parts.append("NVRTC " + ".".join(map(str, nvrtc.version("cupy" if cupy else "ctypes"))))
        except Exception as e:  # noqa: BLE001 - reported, and the compile check fails with the detail
            parts.append(f"NVRTC not found ({type(e).__name__})")
        if not self.gpu:
            return True, ", ".join(parts) + "; no GPU, so no driver, CUDA runtime or cuBLAS to ask"
        runtime = cupy.cuda.runtime
        props = runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        cublas = cupy.cuda.cublas.getVersion(cupy.cuda.device.get_cublas_handle())
        parts += [
            f"GPU {name} (compute capability {props['major']}.{props['minor']})",
            f"driver {_cuda_version(runtime.driverGetVersion())}",
            f"CUDA runtime {_cuda_version(runtime.runtimeGetVersion())}",
            f"cuBLAS {cublas}",
        ]
        return True, ", ".join(parts)

    def compile_kernels(self):
        from minidni.cuda import nvrtc
        from minidni.cuda.loader import kernel_dir, kernel_files, module_source
        from minidni.cuda.report import extern_c_kernels

        files = kernel_files()
        if self.gpu:
            kernels, names = self._kernels(), 0
            for path in files:
                for name in extern_c_kernels(path.read_text()):
                    kernels.function(path.stem, name)  # CuPy compiles the module and loads the function
                    names += 1
            return True, f"{len(files)} files compiled by CuPy, {names} kernels loaded"
        via = "cupy" if nvrtc.cupy_unavailable_reason() is None else "ctypes"
        spilling = []
        for path in files:
            for arch in ("sm_80", "sm_90"):
                result = nvrtc.compile(module_source(path.stem), name=path.name, arch=arch,
                                       include_dirs=[str(kernel_dir())], report=True, via=via)  # fmt: skip
                report = nvrtc.parse_ptxas_report(result.log)
                spilling += [f"{k} [{arch}]" for k, r in report.items() if r["spill_stores"] or r["spill_loads"]]
        detail = f"{len(files)} files compiled for sm_80 and sm_90 by NVRTC with CuPy's options (via {via})"
        if spilling:
            return False, f"{detail}; spills in {', '.join(spilling)}"
        return True, f"{detail}, no spills; loading them needs a GPU"

    def cupy_audit(self):
        from minidni.cuda import cupy_audit
        from minidni.cuda.cupy_api import CupyApi

        api = CupyApi()
        sites = cupy_audit.audit_files(cupy_audit.device_modules(), api)
        bad = [str(s) for s in sites if s.group in ("incompatible", "unverified")]
        summary = cupy_audit.summary(sites, api)
        return not bad, summary + (f"; first: {bad[0]}" if bad else "")

    def standin_steps(self):
        """The engine's bprop, dni and cdni steps and the fused step, on NumPy arrays held to CuPy's rules."""
        from minidni.dni.network import build_network
        from minidni.cuda.cupy_standin import CupyStandin, standin_kernels

        standin = CupyStandin()
        rng = np.random.default_rng(0)
        ran = []
        with standin.active():
            x = standin.asarray(rng.standard_normal((8, 12)).astype(np.float32))
            y = standin.asarray(rng.integers(0, 5, 8).astype(np.int32))
            for mode, fused in (("bprop", False), ("dni", False), ("cdni", False), ("dni", True), ("cdni", True)):
                net = build_network(depth=3, d_in=12, hidden=10, n_classes=5, sg_hidden=6, mode=mode, seed=0)
                if fused:
                    use_kernels(net, standin_kernels(standin))
                with standin.counting() as reads:
                    net.train_step(x, y, labels_checked=True)
                if fused and len(reads) != 1:
                    return False, f"a fused {mode} step read back {len(reads)} times: {', '.join(map(str, reads))}"
                ran.append(f"{mode}{' fused' if fused else ''}")
        if standin.float64_from_float32:
            return False, f"float32 promoted to float64 at {', '.join(standin.float64_from_float32[:3])}"
        return True, f"{', '.join(ran)} steps ran; each fused step read back to the host once; no float64"

    def kernel_versions(self, kernels, op):
        """Every version of op and its unfused alternative against the reference, at this mode's shapes."""
        s = self.shapes
        B, K = s["batch"], s["classes"]
        worst, runs = 0.0, 0
        for version in (*{**ops.VERSIONS, **norm_ops.VERSIONS}[op], UNFUSED):
            for case in _op_cases(op, B, s["d_in"], s["widths"], K):
                worst = max(worst, _run_case(kernels, op, version, case, np.random.default_rng(runs)))
                runs += 1
        detail = f"{runs} runs (versions and shapes), worst error {worst:.2f} of the tolerance"
        return worst <= 1.0, detail

    def fused_step(self, kernels, mode):
        from minidni.core.backend import set_backend
        from minidni.dni.network import build_network

        s = self.shapes
        width, B = s["widths"][0], s["batch"]
        set_backend("cupy" if self.gpu else "numpy")
        try:
            xp = kernels.xp
            engine = build_network(depth=3, d_in=s["d_in"], hidden=width, n_classes=s["classes"], mode=mode,
                                   sg_hidden=width, seed=0)  # fmt: skip
            for opt in engine.optimizers().values():
                opt.eps = 1e-3  # Adam's steps on elements whose gradient is rounding noise would differ by lr
            rng = np.random.default_rng(0)

            def batch():
                x = rng.standard_normal((B, s["d_in"])).astype(np.float32)
                return xp.asarray(x), xp.asarray(rng.integers(0, s["classes"], B).astype(np.int32))

            for _ in range(3):  # warm up, so that the SG modules are no longer zero
                engine.train_step(*batch(), labels_checked=True)
            fused = copy.deepcopy(engine)
            use_kernels(fused, kernels)
            x, y = batch()
            want, got = engine.train_step(x, y, labels_checked=True), fused.train_step(x, y, labels_checked=True)
            worst, where = 0.0, ""
            for k, a in engine.state_arrays().items():
                a, b = to_numpy(a), to_numpy(fused.state_arrays()[k])
                rel = float(np.abs(b - a).max() / max(float(np.abs(a).max()), 1e-30))
                if rel > worst:
                    worst, where = rel, k
            loss_rel = abs(got["loss"] - want["loss"]) / max(abs(want["loss"]), 1e-30)
        finally:
            set_backend("numpy")
        detail = (f"largest relative difference {worst:.1e} ({where}), loss {loss_rel:.1e}; "
                  f"batch {B}, {s['d_in']} -> {width} -> {width} -> {s['classes']}")  # fmt: skip
        return worst <= STEP_TOLERANCE and loss_rel <= STEP_TOLERANCE, detail

    def training_run(self):
        """Spirals (generated: no download), FCN3 of width 64, cDNI, 10 epochs: about 5 s on the emulator, and a
        run that learns (about 1 % test error), so that the two runs' agreement means something."""
        import tempfile

        from minidni.core.backend import set_backend
        from minidni.runs.train import TrainConfig, train

        errors = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, backend, kernels in (("numpy", "numpy", "unfused"),
                                           ("fused", "cupy" if self.gpu else "numpy",
                                            "fused" if self.gpu else "emulator")):  # fmt: skip
                set_backend(backend)
                try:
                    cfg = TrainConfig(data="spirals", model="fcn3", mode="cdni", hidden=64, lr=1e-2, sg_lr=1e-4,
                                      epochs=10, batch=64, seed=0, kernels=kernels, progress=False,
                                      out=f"{tmp}/{name}")  # fmt: skip
                    errors[name] = train(cfg, log=lambda m: None)[-1]["test_error_pct"]
                finally:
                    set_backend("numpy")
        gap = abs(errors["fused"] - errors["numpy"])
        where = "on the GPU" if self.gpu else "on the CPU emulator"
        detail = (
            f"spirals cdni, 10 epochs: test error {errors['fused']:.2f}% fused {where}, {errors['numpy']:.2f}% with "
            f"NumPy (gap {gap:.2f} points, at most {ERROR_POINTS:g}; the NumPy run must learn: < 10%)"
        )
        return gap <= ERROR_POINTS and errors["numpy"] < 10, detail

    def timings(self, kernels):
        from minidni.cuda import bench

        lines = []
        rows = bench.bench_kernels(kernels, [(256, 784, 256, 10)], repeats=20, out=lambda m: None)
        by_kernel = {}
        for r in rows:
            by_kernel.setdefault(r["kernel"], {})[r["version"]] = r["us"]
        for kernel, times in by_kernel.items():
            cells = "  ".join(f"{v} {us:.1f}" for v, us in times.items())
            lines.append(f"    {kernel:18} us: {cells}")
        steps = bench.bench_steps(kernels, (256,), 256, 20, out=lambda m: None)
        for r in steps:
            lines.append(f"    step {r['mode']:4} ms: unfused {r['unfused_ms']:.3f}  fused {r['fused_ms']:.3f}  "
                         f"auto {r['auto_ms']:.3f}")  # fmt: skip
        self.out("\n".join(lines))
        slower = [r["mode"] for r in steps if r["auto_ms"] > 1.05 * r["unfused_ms"]]
        detail = "batch 256, width 256 (kernels: device time; steps: host included)"
        if slower:
            return False, f"{detail}; --kernels auto slower than unfused for {', '.join(slower)}"
        return True, detail


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}" if v else "none"


# ------------------------------------------------------------------------------------------------------------
# one kernel run against its reference


def _op_cases(op, B, d_in, widths, K):
    """The shapes at which op is checked: for the products every layer of an FCN3 of each width (d_in -> W,
    W -> W, W -> K), for batch norm each width, for the loss the classes."""
    layers = [(a, b) for W in widths for a, b in ((d_in, W), (W, W), (W, K))]
    if op in ("linear_forward", "layer_update"):
        return [{"B": B, "d_in": a, "d_out": b} for a, b in layers]
    if op in ("sg_predict", "sg_update"):
        return [{"B": B, "D": W, "K": k} for W in widths for k in (0, K)]
    if op in ("bn_forward_train", "bn_backward"):
        return [{"B": B, "D": W} for W in widths]
    if op == "softmax_xent":
        return [{"B": B, "K": K}]
    return [{"n": d_in * widths[-1]}]  # optimizer_step: a hidden layer's weights


def _run_case(kernels, op, version, case, rng):
    """Run op's `version` on random inputs; returns the worst |got - want| / (atol + rtol |want|) over its outputs
    (at most 1 passes, as np.testing.assert_allclose with the tests' tolerances)."""
    from minidni.core.optim import Adam

    xp = kernels.xp

    def rand(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def adam_step(P):
        """A device copy of P with an Adam state of its own, begun: (P_dev, OptimizerStep, host state)."""
        M, V = rand(*P.shape), np.abs(rand(*P.shape)) + 0.1
        params = {"params": xp.asarray(P.ravel().copy())}
        opt = Adam(params, 1e-3)
        opt.M["params"][...] = xp.asarray(M.ravel())
        opt.V["params"][...] = xp.asarray(V.ravel())
        opt.begin_step()
        step = ops.optimizer_step_of(opt, 0, P.size, P.shape)
        return params["params"].reshape(P.shape), step, {"M": M, "V": V}

    def worst(pairs, tol):
        w = 0.0
        for got, want in pairs:
            got = to_numpy(got)
            w = max(w, float(np.max(np.abs(got - want) / (tol + tol * np.abs(want)))))
        return w

    if op == "linear_forward":
        B, a, b = case["B"], case["d_in"], case["d_out"]
        x, P = rand(B, a), rand(a + 1, b, scale=a**-0.5)
        got = ops.linear_forward(kernels, xp.asarray(x), xp.asarray(P), 1, True, version=version)
        return worst([(got, reference.linear_forward(x, P, 1, True))], reference.product_tolerance(a))
    if op == "sg_predict":
        B, D, K = case["B"], case["D"], case["K"]
        u, P, h = rand(B, D), rand(D + K + 1, D, scale=0.1), np.maximum(rand(B, D), 0)
        y = rng.integers(0, max(K, 1), B).astype(np.int32)
        got = ops.sg_predict(kernels, xp.asarray(u), xp.asarray(P), xp.asarray(y), K, xp.asarray(h), 1,
                             inv_scale=0.5, version=version, labels_checked=True)  # fmt: skip
        want = reference.sg_predict(u, P, y, K, h, 1, 0.5)
        return worst(zip(got, want), reference.product_tolerance(D))
    if op == "layer_update":
        B, a, b = case["B"], case["d_in"], case["d_out"]
        x, delta, P = rand(B, a), rand(B, b), rand(a + 1, b)
        P_dev, step, state = adam_step(P)
        want_P = P.copy()
        reference.layer_update(x, delta, want_P, True, "adam", state, 1e-3, t=1)
        ops.layer_update(kernels, xp.asarray(x), xp.asarray(delta), P_dev, True, step, version=version)
        return worst([(P_dev, want_P), (step.state[0], state["M"]), (step.state[1], state["V"])],
                     reference.product_tolerance(B))  # fmt: skip
    if op == "sg_update":
        B, D, K = case["B"], case["D"], case["K"]
        u, dh, target, P = rand(B, D), rand(B, D, scale=1e-2), rand(B, D, scale=1e-2), rand(D + K + 1, D)
        y = rng.integers(0, max(K, 1), B).astype(np.int32)
        P_dev, step, state = adam_step(P)
        want_P = P.copy()
        want_loss = reference.sg_update(u, y, K, dh, target, 3.0, want_P, "adam", state, 1e-3, t=1)
        loss = ops.sg_update(kernels, xp.asarray(u), xp.asarray(y), K, xp.asarray(dh), xp.asarray(target), 3.0,
                             P_dev, step, version=version, labels_checked=True)  # fmt: skip
        tol = reference.product_tolerance(B)
        return max(worst([(P_dev, want_P), (step.state[0], state["M"]), (step.state[1], state["V"])], tol),
                   worst([(loss, np.float32([want_loss]))], reference.product_tolerance(B * D)))  # fmt: skip
    if op == "optimizer_step":
        n = case["n"]
        P, grad = rand(n), rand(n)
        P_dev, step, state = adam_step(P)
        want_P = P.copy()
        reference.optimizer_step("adam", want_P, grad, state, 1e-3, t=1)
        ops.optimizer_step(kernels, P_dev, xp.asarray(grad), step.flat(), version=version)
        return worst([(P_dev, want_P), (step.state[0], state["M"]), (step.state[1], state["V"])],
                     reference.product_tolerance(1))  # fmt: skip
    if op == "bn_forward_train":
        B, D = case["B"], case["D"]
        z, gamma, beta = rand(B, D, scale=3.0), rand(D), rand(D)
        rm, rv = rand(D), np.abs(rand(D)) + 0.5
        want_rm, want_rv = rm.copy(), rv.copy()
        want = reference.bn_forward_train(z, gamma, beta, want_rm, want_rv, 1)
        rm_dev, rv_dev = xp.asarray(rm), xp.asarray(rv)
        got = norm_ops.bn_forward_train(kernels, xp.asarray(z), xp.asarray(gamma), xp.asarray(beta), rm_dev, rv_dev,
                                        1, version=version)  # fmt: skip
        return worst([*zip(got, want), (rm_dev, want_rm), (rv_dev, want_rv)], reference.reduction_tolerance(B))
    if op == "bn_backward":
        B, D = case["B"], case["D"]
        z, dy, gamma = rand(B, D, scale=3.0), rand(B, D), rand(D)
        _, xhat, inv_std = reference.bn_forward_train(z, gamma, rand(D), np.zeros(D, np.float32),
                                                      np.ones(D, np.float32), 0)  # fmt: skip
        want = reference.bn_backward(dy, xhat, inv_std, gamma)
        got = norm_ops.bn_backward(kernels, xp.asarray(dy), xp.asarray(xhat), xp.asarray(inv_std), xp.asarray(gamma),
                                   version=version)  # fmt: skip
        return worst(zip(got, want), reference.reduction_tolerance(B))
    if op == "softmax_xent":
        B, K = case["B"], case["K"]
        logits, y = rand(B, K, scale=3.0), rng.integers(0, K, B).astype(np.int32)
        want = reference.softmax_xent(logits, y)
        got = norm_ops.softmax_xent(kernels, xp.asarray(logits), xp.asarray(y), version=version, labels_checked=True)
        return worst(zip(got, want), reference.reduction_tolerance(K))
    raise ValueError(f"no doctor case for {op!r}")


def main(gpu=None, out=print):
    """The CLI's `doctor`: returns the exit status (1 if any check failed)."""
    try:
        return Doctor(gpu=gpu, out=out).run()
    finally:
        sys.stdout.flush()
