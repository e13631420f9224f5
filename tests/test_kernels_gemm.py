"""Every version of every GEMM-shaped kernel (kernels/linear_forward, sg_predict, layer_update, sg_update, optim)
against its NumPy reference (minidni.cuda.reference), run by the CPU emulator on odd shapes - not multiples of
the 16 or 64 tile sizes - and, where a GPU exists, through CuPy."""

import numpy as np
import pytest

from minidni.core.backend import gpu_available
from minidni.cuda import ops, reference
from minidni.cuda.emulator import emulator_available, unavailable_reason
from minidni.cuda.loader import Kernels, get_kernels
from minidni.core.optim import SGD, Adam

EMULATOR = pytest.param(
    "emulator", marks=pytest.mark.skipif(not emulator_available(), reason=f"CPU emulator: {unavailable_reason()}")
)
GPU = pytest.param("cupy", marks=pytest.mark.skipif(not gpu_available(), reason="needs a GPU (cupy.is_available())"))

# (B, D_in, D_out): one inside a single tile, ones that straddle 16- and 64-wide tiles
SHAPES = [(3, 5, 7), (19, 70, 33), (67, 17, 66)]


@pytest.fixture(params=[EMULATOR, GPU])
def kernels(request):
    return get_kernels(request.param) if request.param == "emulator" else Kernels("cupy")


def _dev(kernels, a):
    return kernels.xp.asarray(a)


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _close(got, want, reduction=1, what=""):
    tol = reference.product_tolerance(reduction)  # error grows with the reduction length
    np.testing.assert_allclose(_host(got), want, rtol=tol, atol=tol, err_msg=what)


def _state(rng, kind, shape):
    if kind == "sgd":
        return {"velocity": _rand(rng, *shape)}
    return {"M": _rand(rng, *shape), "V": np.abs(_rand(rng, *shape)) + 0.1}


def _kernel_step(kernels, kind, P, state, lr):
    """The engine optimiser bound to a device copy of P, begun, with `state` loaded: its OptimizerStep."""
    params = {"params": _dev(kernels, P.ravel().copy())}
    if kind == "sgd":
        opt = SGD(params, lr, momentum=0.9)
        opt.velocity["params"][...] = _dev(kernels, state["velocity"].ravel())
    else:
        opt = Adam(params, lr)
        opt.M["params"][...] = _dev(kernels, state["M"].ravel())
        opt.V["params"][...] = _dev(kernels, state["V"].ravel())
    opt.begin_step()
    return params["params"].reshape(P.shape), ops.optimizer_step_of(opt, 0, P.size, P.shape), opt


def _ref_step_kwargs(kind):
    return {"momentum": 0.9} if kind == "sgd" else {"t": 1}


@pytest.mark.parametrize("version", [*ops.VERSIONS["linear_forward"], "unfused"])  # unfused: cuda/unfused.py
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("has_bias", [True, False])
def test_linear_forward(kernels, version, shape, act, has_bias):
    rng = np.random.default_rng(1)
    B, Din, Dout = shape
    x, P = _rand(rng, B, Din), _rand(rng, Din + has_bias, Dout, scale=0.3)
    want = reference.linear_forward(x, P, act, has_bias)
    got = ops.linear_forward(kernels, _dev(kernels, x), _dev(kernels, P), act, has_bias, version=version)
    _close(got, want, Din)


@pytest.mark.parametrize("version", [*ops.VERSIONS["sg_predict"], "unfused"])  # unfused: cuda/unfused.py
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("K", [0, 10])
@pytest.mark.parametrize("act", [1, 2])
def test_sg_predict(kernels, version, shape, K, act):
    rng = np.random.default_rng(2)
    B, Du, D = shape
    u, h = _rand(rng, B, Du), np.maximum(_rand(rng, B, D), 0) if act == 1 else np.tanh(_rand(rng, B, D))
    P, labels = _rand(rng, Du + K + 1, D, scale=0.3), rng.integers(0, max(K, 1), B).astype(np.int32)
    want_syn, want_delta = reference.sg_predict(u, P, labels, K, h, act, inv_scale=0.5)
    dev = [_dev(kernels, a) for a in (u, P, labels, h)]
    got_syn, got_delta = ops.sg_predict(kernels, dev[0], dev[1], dev[2], K, dev[3], act, 0.5, version=version)
    _close(got_syn, want_syn, Du, "dh_syn")
    _close(got_delta, want_delta, Du, "delta")


@pytest.mark.parametrize("version", [*ops.VERSIONS["layer_update"], "unfused"])  # unfused: cuda/unfused.py
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("has_bias", [True, False])
def test_layer_update(kernels, version, shape, kind, has_bias):
    rng = np.random.default_rng(3)
    B, Din, Dout = shape
    x, delta = _rand(rng, B, Din), _rand(rng, B, Dout, scale=0.1)
    P, state = _rand(rng, Din + has_bias, Dout), _state(rng, kind, (Din + has_bias, Dout))
    P_dev, step, _ = _kernel_step(kernels, kind, P, state, lr=0.05)
    want_P, want_state = P.copy(), {k: v.copy() for k, v in state.items()}
    reference.layer_update(x, delta, want_P, has_bias, kind, want_state, 0.05, **_ref_step_kwargs(kind))
    ops.layer_update(kernels, _dev(kernels, x), _dev(kernels, delta), P_dev, has_bias, step, version=version)
    _close(P_dev, want_P, B, "P")
    for (name, want), got in zip(want_state.items(), step.state):
        _close(got, want, B, name)


@pytest.mark.parametrize("version", [*ops.VERSIONS["sg_update"], "unfused"])  # unfused: cuda/unfused.py
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("K", [0, 10])
def test_sg_update(kernels, version, shape, kind, K):
    rng = np.random.default_rng(4)
    B, Du, D = shape
    u, dh_syn, dh_target = _rand(rng, B, Du), _rand(rng, B, D, scale=0.01), _rand(rng, B, D, scale=0.01)
    labels = rng.integers(0, max(K, 1), B).astype(np.int32)
    P, state = _rand(rng, Du + K + 1, D), _state(rng, kind, (Du + K + 1, D))
    scale = 3.0
    P_dev, step, _ = _kernel_step(kernels, kind, P, state, lr=0.05)
    want_P, want_state = P.copy(), {k: v.copy() for k, v in state.items()}
    want_loss = reference.sg_update(
        u, labels, K, dh_syn, dh_target, scale, want_P, kind, want_state, 0.05, **_ref_step_kwargs(kind)
    )
    dev = [_dev(kernels, a) for a in (u, labels, dh_syn, dh_target)]
    loss = ops.sg_update(kernels, dev[0], dev[1], K, dev[2], dev[3], scale, P_dev, step, version=version)
    _close(P_dev, want_P, B, "P")
    for (name, want), got in zip(want_state.items(), step.state):
        _close(got, want, B, name)
    np.testing.assert_allclose(float(_host(loss)[0]), want_loss, rtol=1e-5)


# the shapes the fused step runs at in the paper's FCN 3 (batch 256; 784 -> 256 -> 256 -> 10) and at width 1024:
# too large for the emulator (seconds per launch), so on a GPU only
REAL_SHAPES = [(256, 784, 256), (256, 256, 256), (256, 256, 10), (256, 1024, 1024)]


@pytest.mark.skipif(not gpu_available(), reason="needs a GPU (cupy.is_available())")
@pytest.mark.parametrize("version", [1, 2, 3, "unfused"])
@pytest.mark.parametrize("shape", REAL_SHAPES)
def test_every_product_kernel_at_the_real_shapes_on_gpu(version, shape):
    kernels = Kernels("cupy")
    test_linear_forward(kernels, version, shape, 1, False)
    test_linear_forward(kernels, version, shape, 0, True)
    test_sg_predict(kernels, version, shape, 10, 1)
    test_layer_update(kernels, version, shape, "adam", shape[2] == 10)
    test_sg_update(kernels, version, shape, "adam", 10)


@pytest.mark.parametrize("version", [*ops.VERSIONS["optimizer_step"], "unfused"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("n", [1, 255, 700])
def test_optimizer_step(kernels, kind, n, version):
    rng = np.random.default_rng(5)
    P, grad, state = _rand(rng, n), _rand(rng, n), _state(rng, kind, (n,))
    P_dev, step, _ = _kernel_step(kernels, kind, P, state, lr=0.05)
    want_P, want_state = P.copy(), {k: v.copy() for k, v in state.items()}
    reference.optimizer_step(kind, want_P, grad, want_state, 0.05, **_ref_step_kwargs(kind))
    ops.optimizer_step(kernels, P_dev, _dev(kernels, grad), step, version=version)
    _close(P_dev, want_P, 1, "P")
    for (name, want), got in zip(want_state.items(), step.state):
        _close(got, want, 1, name)


def test_launchers_reject_bad_input():
    kernels = get_kernels("emulator") if emulator_available() else None
    if kernels is None:
        pytest.skip(f"CPU emulator: {unavailable_reason()}")
    x, P = np.ones((4, 3), np.float32), np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"P must have shape \(3, 5\)"):
        ops.linear_forward(kernels, x, P, 0, has_bias=False)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.linear_forward(kernels, x.astype(np.float64), P, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.linear_forward(kernels, np.ones((3, 4), np.float32).T, P, 0)
    with pytest.raises(ValueError, match="versions"):
        ops.linear_forward(kernels, x, P, 0, version=9)
    u, h = np.ones((4, 5), np.float32), np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        ops.sg_predict(kernels, u, np.ones((9, 5), np.float32), np.array([0, 1, 2, 3], np.int32), 3, h, 1)
