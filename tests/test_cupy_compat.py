"""The GPU path's Python against what CuPy accepts, with no GPU: the static audit of every array call
(minidni.cuda.cupy_audit) and every training path run on the CuPy stand-in (minidni.cuda.cupy_standin).

The class of bug these catch: NumPy-only calls that work on the CPU and crash a GPU run at its first batch, such
as `xp.einsum(..., out=dgamma)` (CuPy's einsum takes only dtype and optimize), a NumPy array handed to a CuPy
function, a host array assigned into a device array, or an in-place update through repeated indices. Each kind
is planted below and must be caught. What CuPy accepts is read from the installed CuPy, so these tests need
CuPy installed (the test extra brings it), and no GPU.
"""

import copy
import inspect
import os

import numpy as np
import pytest

pytest.importorskip("cupy", reason="the CuPy checks read the installed CuPy's API (pip install cupy-cuda13x)")

from minidni.core import functional as F  # noqa: E402
from minidni.cuda import cupy_audit  # noqa: E402
from minidni.cuda.cupy_api import CupyApi, popped_keywords, signature_from_docstring, unsupported_in_notes  # noqa: E402
from minidni.cuda.cupy_standin import IMPLICIT, CupyStandin, DeviceArray, IncompatibleWithCupy  # noqa: E402
from minidni.dni.network import build_network  # noqa: E402

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py: numpy backend restored after each test


@pytest.fixture(scope="module")
def api():
    return CupyApi()


# ------------------------------------------------------------------------------------------------------------
# what CuPy accepts, read from the installed CuPy


def test_einsum_takes_only_what_its_source_pops(api):
    import cupy

    assert set(popped_keywords(cupy.einsum)) == {"dtype", "optimize"}
    assert {"out", "order", "casting"} <= unsupported_in_notes(cupy.einsum.__doc__)
    assert api.check("einsum", 3, ["out"]).ok is False
    assert api.check("einsum", 3, ["dtype", "optimize"]).ok is True


def test_ufuncs_take_out_dtype_and_casting_only(api):
    sig, where, _ = api.signature("add")
    assert where == "docstring" and list(sig.parameters) == ["x1", "x2", "out", "casting", "dtype"]
    for kw in ("where", "order", "subok", "signature"):
        assert api.check("maximum", 2, [kw]).ok is False, kw


def test_compiled_method_signatures_are_read_from_their_first_docstring_line(api):
    sig = signature_from_docstring("_ndarray_base.swapaxes(self, Py_ssize_t axis1, Py_ssize_t axis2) -> _ndarray_base")
    assert list(sig.parameters) == ["self", "axis1", "axis2"]
    assert signature_from_docstring("Returns the sum along a given axis.") is None
    assert api.check("ndarray.sum", 0, ["axis", "out", "keepdims"]).ok is True
    assert api.check("ndarray.mean", 0, ["where"]).ok is False
    assert api.check("vdot", 3).ok is False  # too many positional arguments


def test_a_note_about_devices_takes_no_argument_away():
    copyto_note = "casting, ``where``, and broadcasting is not supported, and an exception is raised"
    assert unsupported_in_notes(copyto_note) == set()
    assert unsupported_in_notes("- ``out``, ``order``, and ``casting`` options are not supported.") == {
        "out", "order", "casting"}  # fmt: skip


def test_missing_functions_and_methods_are_missing(api):
    assert api.check("errstate", 0, ["over"]).ok is False
    assert not api.has("ndarray.resize") and api.has("ndarray.get") and api.has("lib.stride_tricks.sliding_window_view")


# ------------------------------------------------------------------------------------------------------------
# the static audit


def test_every_array_call_of_the_package_is_verified_or_reviewed(api, capsys):
    sites = cupy_audit.audit_files(cupy_audit.device_modules(), api)
    cupy_audit.report(sites, api, verbose=True)
    print(capsys.readouterr().out.splitlines()[0])
    bad = [str(s) for s in sites if s.group in ("incompatible", "unverified")]
    assert not bad, "\n".join(bad)
    assert sum(s.group == "verified" for s in sites) > 200  # the audit does see the engine's calls


def test_the_host_only_list_names_real_modules():
    for name in cupy_audit.HOST_ONLY:
        assert (cupy_audit.PACKAGE / name).is_file(), name
    audited = {p.relative_to(cupy_audit.PACKAGE).as_posix() for p in cupy_audit.device_modules()}
    for core in ("core/functional.py", "core/layers.py", "dni/network.py", "dni/synthetic.py", "core/optim.py",
                 "cuda/fused.py", "cuda/bench.py"):  # fmt: skip
        assert core in audited


PLANTED = {  # body of a function f(x, m, out, kernels) -> the group the audit must put it in
    "einsum out=": ("xp().einsum('bd,bd->d', x, x, out=out)", "incompatible"),
    "array_module einsum": ("array_module(x).einsum('i,i->', x, x, out=out)", "incompatible"),
    "kernels.xp keyword": ("kernels.xp.zeros(3, like=x)", "incompatible"),
    "ufunc where=": ("xp().maximum(x, 0, where=m)", "incompatible"),
    "reduction where=": ("xp().sum(x, axis=0, where=m)", "incompatible"),
    "method where=": ("x.mean(axis=0, where=m)", "incompatible"),
    "missing function": ("xp().errstate(over='ignore')", "incompatible"),
    "missing method": ("x.resize((2, 3))", "incompatible"),
    "take mode=": ("backend = xp()\n    backend.take(x, [0, 1], mode='clip')", "incompatible"),
    "too many arguments": ("xp().vdot(x, x, x)", "incompatible"),
    "np.asarray of a parameter": ("np.asarray(x)", "unverified"),
    "repeated indices": ("idx = xp().asarray([0, 0])\n    x[idx] += 1", "unverified"),
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_a_planted_incompatibility_is_found(name, api):
    body, group = PLANTED[name]
    source = f"import numpy as np\nfrom .backend import array_module, xp\n\n\ndef f(x, m, out, kernels):\n    {body}\n"
    sites = cupy_audit.audit_source(source, "planted.py", api)
    assert any(s.group == group and s.line >= 6 for s in sites), [str(s) for s in sites]


def test_the_original_einsum_bug_is_found_in_functional(api):
    path = cupy_audit.PACKAGE / "core" / "functional.py"
    source = path.read_text()
    fixed = 'sum_dy_xhat = xp.einsum("bd,bd->d", dy, xhat)'
    assert fixed in source
    planted = source.replace(fixed, 'sum_dy_xhat = xp.einsum("bd,bd->d", dy, xhat, out=dgamma)')
    sites = cupy_audit.audit_source(planted, "minidni/core/functional.py", api)
    assert [s.call for s in sites if s.group == "incompatible"] == [
        'xp.einsum("bd,bd->d", dy, xhat, out=dgamma)']  # fmt: skip


def test_a_reviewed_site_says_why(api):
    source = "from .backend import xp\n\n\ndef f(x):\n    rows = xp().arange(3)\n"
    source += "    x[rows] -= 1  # cupy: rows has no repeats\n"
    (site,) = [s for s in cupy_audit.audit_source(source, "r.py", api) if s.group == "reviewed"]
    assert site.note == "rows has no repeats"


def test_the_command_fails_on_an_incompatible_file(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("from .backend import xp\n\n\ndef f(a, b):\n    return xp().einsum('i,i->', a, b, out=b)\n")
    assert cupy_audit.main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "1 incompatible" in out and "bad.py:5" in out
    assert cupy_audit.main([str(tmp_path / "none.py")]) == 2


def test_strict_mode_fails_on_a_site_nobody_reviewed(tmp_path, capsys):
    unsure = tmp_path / "unsure.py"
    unsure.write_text("import numpy as np\n\n\ndef f(x):\n    return np.asarray(x)\n")
    assert cupy_audit.main([str(unsure)]) == 0  # reported, but only --strict (CI) fails on it
    assert cupy_audit.main(["--strict", str(unsure)]) == 1
    assert "unsure.py:5: np.asarray(x)" in capsys.readouterr().out


def test_the_trainer_checks_every_label_before_the_first_step(tmp_path):
    """Once per run, on every set: CuPy's indexing would wrap an out-of-range label silently, and a kernel given
    one would read out of bounds; so no training step needs to read labels back from the GPU."""
    from minidni.runs.train import TrainConfig, train

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 2)).astype(np.float32), rng.integers(0, 3, 64)
    bad = y.copy()
    bad[5] = 3  # spirals has 3 classes
    cfg = TrainConfig(data="spirals", model="fcn3", hidden=8, epochs=1, batch=16, progress=False,
                      out=str(tmp_path / "run"))  # fmt: skip
    for data in ((x, bad, x, y, x, y), (x, y, x, y, x, bad)):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got values in \[0, 3\]"):
            train(cfg, log=lambda m: None, data=data)
        assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------------------------------------
# the stand-in keeps CuPy's rules


@pytest.fixture
def standin():
    xp = CupyStandin()
    with xp.active():
        yield xp


def test_the_standin_refuses_what_cupy_refuses(standin):
    x = standin.ones((3, 4), dtype=np.float32)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(x)
    assert IMPLICIT.startswith("Implicit conversion")
    with pytest.raises(TypeError, match="takes no keyword 'out'"):
        standin.einsum("bd,bd->d", x, x, out=standin.empty(4, dtype=np.float32))
    with pytest.raises(TypeError, match="NumPy array"):
        x + np.ones(4, dtype=np.float32)
    with pytest.raises(TypeError, match="NumPy array"):
        standin.ascontiguousarray(np.ones(3))  # cupy.ascontiguousarray takes a cupy.ndarray only
    with pytest.raises(TypeError, match="Unsupported type"):
        x[...] = np.zeros((3, 4), dtype=np.float32)  # CuPy gh-2079: no assignment from host arrays
    with pytest.raises(AttributeError, match="errstate"):
        standin.errstate
    with pytest.raises(AttributeError, match="resize"):
        x.resize
    with pytest.raises(IncompatibleWithCupy, match="repeated positions"):
        x[standin.asarray([0, 0])] += standin.asarray([[1.0], [2.0]], dtype=np.float32)
    with pytest.raises(IncompatibleWithCupy, match="repeated positions"):
        x[standin.asarray([0, 0]), 1] += 1.0  # even equal values: this never accumulates, on either library
    x[standin.asarray([0, 0]), 1] = 5.0  # one scalar for every position: the same result whichever write lands


def test_the_standin_answers_like_cupy(standin):
    x = standin.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    total = x.sum()
    assert isinstance(total, DeviceArray) and total.shape == ()  # CuPy reductions give 0-d device arrays
    assert isinstance(np.sum(x, axis=0), DeviceArray)  # NumPy functions on device arrays run CuPy's
    with standin.counting() as reads:
        assert float(total) == 15.0 and int(x[1, 2]) == 5 and x.tolist()[0] == [0.0, 1.0, 2.0]
        assert standin.asnumpy(x).sum() == 15 and x.get().shape == (2, 3)
    assert [r.kind for r in reads] == ["float", "int", "tolist", "asnumpy", "get"]
    assert all(r.where.endswith(f":{r.where.split(':')[1]}") and "test_cupy_compat.py" in r.where for r in reads)
    y = x * np.float64(2)  # a strongly typed NumPy scalar promotes float32 to float64, on CuPy as on NumPy 2
    assert y.dtype == np.float64 and standin.float64_from_float32
    assert (x * 2.0).dtype == np.float32  # a Python float is weak


# ------------------------------------------------------------------------------------------------------------
# every training path under the stand-in: it runs, and computes exactly what NumPy computes

ENGINE_CASES = {
    "bprop": dict(mode="bprop"),
    "nobprop": dict(mode="nobprop"),
    "dni-mlp": dict(mode="dni"),
    "cdni-linear": dict(mode="cdni"),
    "dni-true-targets": dict(mode="dni", sg_target="true"),
    "cdni-clip": dict(mode="cdni", clip=1e-4),
    "cdni-stochastic": dict(mode="cdni", p_update=0.5),
    "cdni-unlock": dict(mode="cdni", unlock=True, input_hidden=8),
    "cnn-cdni": dict(mode="cdni", arch="cnn", in_shape=(1, 6, 6), channels=3, sg_channels=3),
    "cnn-bprop": dict(mode="bprop", arch="cnn", in_shape=(1, 6, 6), channels=3),
    "cdni-sgd": dict(mode="cdni", optimizer="sgd"),
}


def _batches(case, n=2, B=8, seed=0):
    rng = np.random.default_rng(seed)
    shape = (B, 1, 6, 6) if case.get("arch") == "cnn" else (B, 12)
    return [(rng.standard_normal(shape).astype(np.float32), rng.integers(0, 5, B)) for _ in range(n)]


def _net(case):
    return build_network(depth=3, d_in=12, hidden=10, n_classes=5, sg_hidden=6, lr=1e-2, sg_lr=1e-2, seed=1, **case)


@pytest.mark.parametrize("name", list(ENGINE_CASES))
def test_every_engine_step_runs_under_cupy_rules_and_computes_what_numpy_computes(name, standin):
    case = ENGINE_CASES[name]
    batches = _batches(case)
    from minidni.core import backend

    with_numpy = []
    backend.use_array_module("numpy", np)
    net = _net(case)
    for x, y in batches:
        with_numpy.append(net.train_step(x, y))
    want = {k: np.array(v) for k, v in net.state_arrays().items()}
    want_error = net.error_pct(batches[0][0], batches[0][1])

    backend.use_array_module("cupy", standin)
    net = _net(case)
    for (x, y), expected in zip(batches, with_numpy):
        got = net.train_step(standin.asarray(x), standin.asarray(y))
        assert got == expected
    for k, v in net.state_arrays().items():
        assert isinstance(v, DeviceArray), k
        np.testing.assert_array_equal(v.get(), want[k], err_msg=k)
    assert net.error_pct(standin.asarray(batches[0][0]), standin.asarray(batches[0][1])) == want_error
    if case["mode"] in ("dni", "cdni") and "p_update" not in case and not case.get("unlock"):
        net.gradient_alignment(standin.asarray(batches[1][0]), standin.asarray(batches[1][1]))
    assert not standin.float64_from_float32, standin.float64_from_float32


def test_the_feedback_network_runs_under_cupy_rules(standin):
    from minidni.dni.feedback import build_feedback_network

    net = build_feedback_network(signals=["dfa", "sg"], d_in=12, hidden=10, n_classes=5, seed=0)
    x, y = _batches({})[0]
    net.train_step(standin.asarray(x), standin.asarray(y))
    net.alignment(standin.asarray(x), standin.asarray(y))
    assert not standin.float64_from_float32


def test_a_run_resumes_and_evaluates_under_cupy_rules(standin, tmp_path, monkeypatch):
    """Resuming copies the checkpoint's host arrays into device arrays: CuPy refuses `live[...] = host_array`.
    The trainer picks the fused kernels for dni/cdni on the cupy backend: here the emulator runs them."""
    from minidni.cuda import loader
    from minidni.cuda.cupy_standin import standin_kernels
    from minidni.runs.train import TrainConfig, evaluate, train

    real = loader.get_kernels
    monkeypatch.setattr(loader, "get_kernels", lambda t: standin_kernels(standin) if t == "cupy" else real(t))
    for mode in ("cdni", "dni", "bprop"):
        cfg = TrainConfig(data="spirals", model="fcn3", mode=mode, hidden=8, sg_hidden=8, epochs=1, batch=32,
                          train_subset=128, test_subset=64, progress=False, diagnostics=True,
                          out=str(tmp_path / mode))  # fmt: skip
        train(cfg, log=lambda m: None)
        cfg.epochs = 2
        metrics = train(cfg, resume=True, log=lambda m: None)
        assert [m["epoch"] for m in metrics] == [1, 2]
        assert evaluate(os.path.join(cfg.out, "checkpoint.npz"), log=lambda m: None)["epoch"] == 2
    assert not standin.float64_from_float32


def test_the_recurrent_trainers_run_under_cupy_rules(standin, tmp_path):
    from minidni.recurrent.multinet import MultiNetConfig, train_multinet
    from minidni.runs.rnn_train import RNNConfig, train_rnn

    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. a dog ran over the tree.\n" * 40)
    for kw in (dict(task="copy", mode="dni_aux", T=3, episodes=20, window=3, log_every=10),
               dict(task="repeat_copy", mode="bptt", T=3, episodes=20, window=3, log_every=10, cell="rnn"),
               dict(task="charlm", mode="dni", T=5, updates=20, eval_every=10, eval_chars=100,
                    text=str(text))):  # fmt: skip
        train_rnn(RNNConfig(hidden=8, batch=4, out=str(tmp_path / kw["task"]), **kw), log=lambda m: None)
    train_multinet(MultiNetConfig(hidden_a=8, hidden_b=8, batch=4, ticks=20, eval_ticks=10, log_every=10),
                   log=lambda m: None)  # fmt: skip
    # the copy tasks' metrics sum in float64 on purpose (many bits per batch); nothing else may promote
    promoted = {w.rsplit(":", 1)[0] for w in standin.float64_from_float32}
    assert promoted <= {os.path.join("minidni", "recurrent", "tasks.py")}


def test_the_gpu_benchmark_harness_runs_under_cupy_rules(standin):
    from minidni.cuda import bench
    from minidni.cuda.cupy_standin import standin_kernels

    kernels = standin_kernels(standin)
    rows = bench.bench_kernels(kernels, [(8, 12, 16, 3)], repeats=1, out=lambda s: None)
    assert {r["version"] for r in rows} >= {"v1", "unfused"}
    assert len(bench.bench_steps(kernels, (16,), 8, 1, out=lambda s: None)) == 2


# ------------------------------------------------------------------------------------------------------------
# planted at run time: each bug passes on NumPy and fails under the stand-in


def _einsum_out_batchnorm_backward(dy, cache, dgamma=None, dbeta=None):
    xhat, inv_std, gamma, _, _ = cache
    xp = F.array_module(dy)
    dbeta = xp.sum(dy, axis=0, out=dbeta)
    dgamma = xp.einsum("bd,bd->d", dy, xhat, out=dgamma)  # the bug this issue started from
    dx = xhat * (dgamma * (1 / dy.shape[0]))
    dx += dbeta * (1 / dy.shape[0])
    xp.subtract(dy, dx, out=dx)
    dx *= gamma * inv_std
    return dx, dgamma, dbeta


_softmax_cross_entropy = F.softmax_cross_entropy


def _host_labels_softmax(logits, labels):
    return _softmax_cross_entropy(logits, np.asarray(labels))  # a NumPy call on device labels


def _accumulating_one_hot(labels, n_classes, dtype=np.float32):
    from minidni.core.backend import xp

    counts = xp().zeros((n_classes,), dtype=dtype)
    counts[labels] += 1  # repeated labels: NumPy and CuPy both keep one, CuPy an undefined one
    out = xp().zeros((labels.shape[0], n_classes), dtype=dtype)
    out[xp().arange(labels.shape[0]), labels] = 1
    return out


PLANTED_AT_RUN_TIME = {
    "einsum out=": ("minidni.core.functional.batchnorm_backward", _einsum_out_batchnorm_backward, TypeError),
    "np.asarray of device labels": ("minidni.core.functional.softmax_cross_entropy", _host_labels_softmax, TypeError),
    "repeated-index update": ("minidni.dni.synthetic.one_hot", _accumulating_one_hot, IncompatibleWithCupy),
}


@pytest.mark.parametrize("name", list(PLANTED_AT_RUN_TIME))
def test_a_bug_planted_in_the_engine_fails_under_the_standin_only(name, standin, monkeypatch):
    target, replacement, error = PLANTED_AT_RUN_TIME[name]
    module, attr = target.rsplit(".", 1)
    import importlib

    parts = module.split(".")
    obj = importlib.import_module(".".join(parts[:2]))
    for p in parts[2:]:
        obj = getattr(obj, p)
    monkeypatch.setattr(obj, attr, replacement)
    x, y = _batches({})[0]
    y[:2] = 3  # repeated labels
    from minidni.core import backend

    backend.use_array_module("numpy", np)
    _net({"mode": "cdni"}).train_step(x, y)  # NumPy accepts it
    backend.use_array_module("cupy", standin)
    with pytest.raises(error):
        _net({"mode": "cdni"}).train_step(standin.asarray(x), standin.asarray(y))


def test_a_planted_float64_promotion_is_recorded(standin, monkeypatch):
    from minidni.core import layers

    original = layers.ReLU.forward
    monkeypatch.setattr(layers.ReLU, "forward", lambda self, x, train=True: original(self, x * np.float64(1.0)))
    x, y = _batches({})[0]
    net = _net({"mode": "bprop", "batchnorm": False})
    net.train_step(standin.asarray(x), standin.asarray(y))  # runs (same_kind casts float64 back into buffers)...
    assert any("test_cupy_compat.py" in w for w in standin.float64_from_float32)  # ... but the promotion is seen


def test_deep_copies_stay_on_the_device(standin):
    net = _net({"mode": "cdni"})
    clone = copy.deepcopy(net)
    assert all(isinstance(v, DeviceArray) for v in clone.state_arrays().values())
    assert inspect.isclass(standin.ndarray)
