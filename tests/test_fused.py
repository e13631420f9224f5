"""The whole DNI/cDNI training step through the fused kernels (minidni.cuda.fused), run by the CPU emulator
(NumPy for what is not a kernel), equals the engine's own step (minidni.dni.steps.dni_step) - every
parameter, optimiser moment and batch-norm statistic, and the returned losses - to float32 tolerance."""

import copy
import os

import numpy as np
import pytest

from minidni.core.backend import gpu_available
from minidni.cuda.emulator import emulator_available, unavailable_reason
from minidni.cuda.loader import Kernels, get_kernels
from minidni.dni.blocks import DivergenceError
from minidni.dni.network import build_network
from minidni.core.layers import Tanh
from minidni.cuda.fused import use_kernels

pytestmark = pytest.mark.skipif(not emulator_available(), reason=f"CPU emulator: {unavailable_reason()}")

# small odd sizes: 13 inputs, 37 units, 5 classes, batch 11; the MLP module has one hidden layer of 19
CASES = {
    "cdni-linear-adam": dict(mode="cdni", sg="linear"),
    "dni-linear-sgd": dict(mode="dni", sg="linear", optimizer="sgd"),
    "dni-mlp-adam": dict(mode="dni", sg="mlp"),
    "cdni-mlp-sgd-scaled": dict(mode="cdni", sg="mlp", optimizer="sgd", sg_scale=11.0),
    "cdni-linear-no-bn-tanh-clip": dict(mode="cdni", sg="linear", batchnorm=False, clip=1e-3),
    "dni-fcn4-adam": dict(mode="dni", sg="linear", depth=4),
}


def _engine(case):
    kw = dict(depth=3, d_in=13, hidden=37, n_classes=5, sg_hidden=19, sg_layers=1, lr=1e-2, sg_lr=1e-2, seed=3)
    kw.update(CASES[case])
    engine = build_network(**kw)
    if CASES[case].get("batchnorm") is False:  # exercise another activation in the fused f'
        for block in engine.hidden:
            block.layers.layers[-1] = Tanh()
    for opt in engine.optimizers().values():
        # Adam divides by sqrt(V) + eps, so an element whose gradient is zero up to rounding takes a step set by
        # the rounding noise. An SG module's bias above a batch-norm block is such an element: its targets have
        # column sums of exactly 0 in exact arithmetic. Two correct implementations round differently; a larger
        # eps keeps that noise from deciding the comparison. (The kernels take eps from the optimiser.)
        if hasattr(opt, "eps"):
            opt.eps = 1e-3
    return engine


def _pair(case, versions=None, warm_steps=4):
    """The engine after `warm_steps` steps (so the SG modules are no longer zero) and a copy of it that steps
    through the emulated kernels: both start the compared steps from the same state."""
    engine = _engine(case)
    for x, y in _batches(warm_steps, seed=1):
        engine.train_step(x, y)
    fused = copy.deepcopy(engine)
    use_kernels(fused, get_kernels("emulator"), versions)
    return engine, fused


def _batches(n, B=11, d_in=13, K=5, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((B, d_in)).astype(np.float32), rng.integers(0, K, B)) for _ in range(n)]


def _assert_same_state(engine, fused, tol):
    a, b = engine.state_arrays(), fused.state_arrays()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=tol, atol=tol, err_msg=k)


@pytest.mark.parametrize("case", list(CASES))
def test_fused_step_equals_engine_step(case):
    for x, y in _batches(2):  # each compared step starts from the same state: one step equals one step
        engine, fused = _pair(case)
        want, got = engine.train_step(x, y), fused.train_step(x, y)
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
        np.testing.assert_allclose(got["sg_loss"], want["sg_loss"], rtol=1e-4)
        _assert_same_state(engine, fused, tol=2e-5)
    before = _pair(case)[0].state_arrays()
    moved = {k: float(np.abs(engine.state_arrays()[k] - before[k]).max()) for k in before if ".opt." not in k}
    assert all(v > 0 for k, v in moved.items() if "running" not in k), moved  # every parameter took a step


@pytest.mark.parametrize("version", [1, 2])
def test_fused_step_with_older_kernel_versions(version):
    versions = {"linear_forward": version, "sg_predict": version, "layer_update": version, "sg_update": version}
    engine, fused = _pair("cdni-linear-adam", versions)
    x, y = _batches(1)[0]
    engine.train_step(x, y)
    fused.train_step(x, y)
    _assert_same_state(engine, fused, tol=2e-5)


def test_fused_step_refuses_what_it_cannot_run():
    net = build_network(depth=3, d_in=13, hidden=37, n_classes=5, mode="bprop")
    with pytest.raises(ValueError, match="mode 'bprop' runs unfused"):
        use_kernels(net, get_kernels("emulator"))
    net = build_network(depth=3, d_in=13, hidden=37, n_classes=5, mode="cdni", sg_target="true")
    with pytest.raises(ValueError, match="sg_target='true' runs unfused"):
        use_kernels(net, get_kernels("emulator"))
    net = build_network(depth=3, d_in=13, hidden=37, n_classes=5, mode="cdni")
    with pytest.raises(ValueError, match="unknown kernels"):
        use_kernels(net, get_kernels("emulator"), {"sg_predikt": 1})


def test_fused_step_reports_divergence_like_the_engine():
    engine, fused = _pair("cdni-linear-adam")
    x, y = _batches(1)[0]
    for net in (engine, fused):
        net.hidden[0].sg.net.layers[-1].params["b"][...] = 1e6  # a module that predicts an enormous gradient
        with pytest.raises(DivergenceError, match="synthetic gradient of block 0 diverged"):
            net.train_step(x, y)


@pytest.mark.skipif(not gpu_available(), reason="needs a GPU (cupy.is_available())")
def test_gpu_fused_step_equals_engine_step_and_trains(tmp_path):
    """On a real GPU: the fused step through CuPy equals the unfused CuPy step, and a short run learns."""
    import cupy

    from minidni.core.backend import set_backend
    from minidni.runs.train import TrainConfig, train

    set_backend("cupy")
    try:
        kw = dict(depth=3, d_in=13, hidden=37, n_classes=5, lr=1e-2, sg_lr=1e-2, seed=3, mode="cdni", sg="linear")
        engine = build_network(**kw)
        fused = build_network(**kw)
        use_kernels(fused, Kernels("cupy"))
        for x, y in _batches(4):
            x, y = cupy.asarray(x), cupy.asarray(y)
            engine.train_step(x, y)
            fused.train_step(x, y)
        a, b = engine.state_arrays(), fused.state_arrays()
        for k in a:
            np.testing.assert_allclose(b[k].get(), a[k].get(), rtol=1e-4, atol=1e-4, err_msg=k)
        cfg = TrainConfig(data="spirals", mode="cdni", epochs=3, batch=64, kernels="fused", out=str(tmp_path / "r"))
        metrics = train(cfg, log=lambda m: None)
        assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    finally:
        set_backend("numpy")


@pytest.mark.skipif(not gpu_available(), reason="needs a GPU (cupy.is_available())")
@pytest.mark.parametrize("mode", ["dni", "cdni"])
def test_gpu_fused_step_at_the_real_shape(mode):
    """On a real GPU, the paper's FCN 3 (batch 256, 784 -> 256 -> 256 -> 10): one fused step from the engine's state
    equals the engine's CuPy step, every array within 1e-4 of its largest value; and it reads back once."""
    import cupy

    from minidni.core.backend import set_backend

    set_backend("cupy")
    try:
        engine = build_network(depth=3, mode=mode, seed=0)
        for opt in engine.optimizers().values():
            opt.eps = 1e-3  # see _engine
        rng = np.random.default_rng(0)
        batches = [(cupy.asarray(rng.standard_normal((256, 784)).astype(np.float32)),
                    cupy.asarray(rng.integers(0, 10, 256).astype(np.int32))) for _ in range(4)]  # fmt: skip
        for x, y in batches[:3]:
            engine.train_step(x, y)
        fused = copy.deepcopy(engine)
        use_kernels(fused, Kernels("cupy"))
        engine.train_step(*batches[3])
        fused.train_step(*batches[3], labels_checked=True)
        for k, a in engine.state_arrays().items():
            a, b = a.get(), fused.state_arrays()[k].get()
            assert np.abs(b - a).max() <= 1e-4 * max(np.abs(a).max(), 1e-30), k
    finally:
        set_backend("numpy")


class _CountingKernels:
    """A Kernels stand-in that counts launches, by kernel name, on the way to the emulator."""

    def __init__(self, inner):
        self.inner, self.xp, self.target, self.launches = inner, inner.xp, inner.target, []

    def function(self, stem, name):
        f = self.inner.function(stem, name)

        def launch(*args, **kwargs):
            self.launches.append(name)
            return f(*args, **kwargs)

        return launch


def test_the_on_paper_launch_count_is_what_the_fused_step_launches():
    from minidni.cuda import traffic

    net = build_network(depth=3, d_in=13, hidden=37, n_classes=5, mode="cdni", sg="linear", seed=3)
    counting = _CountingKernels(get_kernels("emulator"))
    use_kernels(net, counting)
    x, y = _batches(1)[0]
    net.train_step(x, y)
    paper = traffic.fused_step(B=11, d_in=13, D=37, K=5)
    assert len(counting.launches) == traffic.totals(paper)["kernel_launches"]
    for op in (o for o in paper if o["kernel"]):  # each kernel the paper names is launched (kernel names: op names)
        name = op["op"].split(": ")[1].split(" ")[0]
        assert any(launched.startswith(name) for launched in counting.launches), name


# ------------------------------------------------------------------------------------------------------------
# one device-to-host read per step, counted on the CuPy stand-in (NumPy arrays behind CuPy's rules, every host
# conversion counted: float, int, bool, item, tolist, get, asnumpy)

cupy_standin = pytest.importorskip("minidni.cuda.cupy_standin")


@pytest.fixture
def standin():
    pytest.importorskip("cupy", reason="the stand-in reads the installed CuPy's API")
    from minidni.core import backend

    saved = backend.active_module()
    xp = cupy_standin.CupyStandin()
    with xp.active():
        yield xp
    backend.use_array_module(*saved)


def _standin_pair(case, standin):
    """The engine's fused step on the emulator with NumPy arrays, and the same on stand-in device arrays."""
    from minidni.core import backend

    backend.use_array_module("numpy", np)
    _, numpy_fused = _pair(case)
    backend.use_array_module("cupy", standin)
    device = _engine(case)
    for k, v in numpy_fused.state_arrays().items():  # the same state, uploaded
        device.state_arrays()[k][...] = standin.asarray(v)
    for name, opt in device.optimizers().items():
        opt.t, opt.lr = numpy_fused.optimizers()[name].t, numpy_fused.optimizers()[name].lr
    use_kernels(device, cupy_standin.standin_kernels(standin))
    return numpy_fused, device


@pytest.mark.parametrize("case", list(CASES))
def test_a_fused_step_reads_back_once(case, standin):
    from minidni.core import backend

    numpy_fused, device = _standin_pair(case, standin)
    for x, y in _batches(2):
        backend.use_array_module("numpy", np)
        want = numpy_fused.train_step(x, y)
        backend.use_array_module("cupy", standin)
        with standin.counting() as reads:
            got = device.train_step(standin.asarray(x), standin.asarray(y), labels_checked=True)
        assert [r.kind for r in reads] == ["get"], [str(r) for r in reads]
        assert got == want  # the same numbers as with NumPy arrays: the stand-in changes no arithmetic
    for k, v in numpy_fused.state_arrays().items():
        np.testing.assert_array_equal(device.state_arrays()[k].get(), v, err_msg=k)


def test_labels_are_checked_on_the_host_or_in_one_extra_read(standin):
    _, device = _standin_pair("cdni-linear-adam", standin)
    x, y = _batches(1)[0]
    with standin.counting() as reads:
        device.train_step(standin.asarray(x), y)  # host labels: checked there, then uploaded
    assert len(reads) == 1
    with standin.counting() as reads:
        device.train_step(standin.asarray(x), standin.asarray(y))  # device labels nobody checked: one more read
    assert len(reads) == 2
    for labels in (np.full(11, 5), standin.asarray(np.full(11, -1))):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
            device.train_step(standin.asarray(x), labels)


def test_a_stray_host_read_in_the_fused_step_is_counted(standin, monkeypatch):
    """The count is able to fail: a float() planted in the step shows up as a second read, named by its line."""
    from minidni.cuda import fused

    _, device = _standin_pair("cdni-linear-adam", standin)
    original = fused.FusedDNIStep._predict

    def predict_and_peek(self, i, u, h, labels, stats):
        dh_syn, delta = original(self, i, u, h, labels, stats)
        float(stats[i])  # the stray read: a sync per block on a GPU
        return dh_syn, delta

    monkeypatch.setattr(fused.FusedDNIStep, "_predict", predict_and_peek)
    x, y = _batches(1)[0]
    with standin.counting() as reads:
        device.train_step(standin.asarray(x), standin.asarray(y), labels_checked=True)
    assert [r.kind for r in reads] == ["float", "float", "get"]
    assert "test_fused.py" in reads[0].where


@pytest.mark.skipif(
    os.environ.get("MINIDNI_EMU_SANITIZE") == "address",
    reason="a run draws its curves with matplotlib, whose C++ extension aborts with AddressSanitizer preloaded",
)
def test_a_diverged_fused_step_leaves_no_checkpoint_with_its_values(tmp_path, monkeypatch):
    """The fused step sees a divergence only at the end of the step, after its updates: the run must stop before
    anything is written, so the checkpoint on disk is the last epoch's, finite."""
    from minidni.data.checkpoint import load_checkpoint
    from minidni.cuda import fused
    from minidni.runs.train import TrainConfig, train

    original, calls = fused.FusedDNIStep.__call__, []

    def step(self, x, labels, labels_checked=False):
        calls.append(1)
        if len(calls) == 6:  # in epoch 2 (4 steps per epoch): a module starts predicting an enormous gradient
            self.net.hidden[1].sg.net.layers[-1].params["b"][...] = 1e6
        return original(self, x, labels, labels_checked)

    monkeypatch.setattr(fused.FusedDNIStep, "__call__", step)
    cfg = TrainConfig(data="spirals", model="fcn3", mode="cdni", hidden=8, epochs=3, batch=32, train_subset=128,
                      test_subset=64, kernels="emulator", progress=False, out=str(tmp_path / "run"))  # fmt: skip
    with pytest.raises(DivergenceError, match="block 1 diverged.*updates were applied"):
        train(cfg, log=lambda m: None)
    arrays, meta = load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))
    assert meta["epoch"] == 1
    assert all(np.isfinite(a).all() for a in arrays.values())


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(mode="bprop"), "mode 'bprop' runs unfused"),
        (dict(mode="cdni", sg_target="true"), "bootstrapped targets"),
        (dict(mode="cdni", p_update=0.5), "stochastic updates and complete unlock"),
        (dict(mode="cdni", unlock=True, input_hidden=8), "stochastic updates and complete unlock"),
        (dict(mode="cdni", depth=4, split=(2, 2)), "split network"),
        (dict(mode="cdni", arch="cnn", in_shape=(1, 8, 8), channels=3, sg_channels=3), "convolutional"),
        (dict(mode="cdni"), None),
    ],
)
def test_what_has_a_fused_form_is_said_once_and_refused_with_it(kwargs, reason):
    """`--kernels auto` (fused_form_problem) and use_kernels agree: one list of what the kernels run."""
    from minidni.cuda.fused import fused_form_problem

    net = build_network(**{"depth": 3, "d_in": 12, "hidden": 8, "n_classes": 4, **kwargs})
    problem = fused_form_problem(net)
    if reason is None:
        assert problem is None
        return
    assert reason in problem
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("'", ".")):
        use_kernels(net, get_kernels("emulator"))
