"""The batch-norm and softmax cross-entropy kernels (kernels/batchnorm.cu, kernels/softmax_xent.cu) against their
NumPy references (minidni.cuda.reference), through the launchers in minidni.cuda.norm_ops.

Every version of every kernel runs on small, odd shapes - sizes that are not multiples of the 32-column tiles,
the 16 row-lanes or the 8 rows per block - on the CPU emulator, and again through CuPy where a GPU is present
(those tests are skipped, never faked, elsewhere). Float32 sums in a different order differ in the last bits, so
tolerances grow with the length of the reduction behind each output.
"""

import numpy as np
import pytest

from minidni.core.backend import gpu_available
from minidni.cuda import norm_ops, reference
from minidni.cuda.loader import get_kernels
from minidni.core.gradcheck import assert_close

try:
    from minidni.cuda.emulator import emulator_available, unavailable_reason

    EMULATOR_MISSING = None if emulator_available() else unavailable_reason()
except ImportError as exc:  # the emulator module itself is absent or broken
    EMULATOR_MISSING = f"minidni.cuda.emulator cannot be imported: {exc}"


CUPY_AVAILABLE = gpu_available()
needs_emulator = pytest.mark.skipif(EMULATOR_MISSING is not None, reason=f"no CPU emulator: {EMULATOR_MISSING}")
needs_gpu = pytest.mark.skipif(not CUPY_AVAILABLE, reason="needs CuPy and a CUDA GPU")

# The emulator runs every test; the GPU runs the same tests when present.
TARGETS = [pytest.param("emulator", marks=needs_emulator), pytest.param("cupy", marks=needs_gpu)]


@pytest.fixture(params=TARGETS)
def kernels(request):
    return get_kernels(request.param)


@pytest.fixture
def emulated():
    """Kernels on the emulator, for the tests of what the launchers reject (nothing is launched there)."""
    if EMULATOR_MISSING is not None:
        pytest.skip(f"no CPU emulator: {EMULATOR_MISSING}")
    return get_kernels("emulator")


def tolerance(n):
    """rtol = atol for a float32 result behind a reduction over n terms (the rule the doctor uses too)."""
    return reference.reduction_tolerance(n)


def to_host(a):
    return a.get() if hasattr(a, "get") else a


# ------------------------------------------------------------------------------------------------------------
# batch norm


def bn_inputs(B, D, seed=0):
    """z with column means far from 0 (so a one-pass variance would cancel), gamma, beta, running statistics."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((B, D)) * rng.uniform(0.5, 3.0, D) + rng.uniform(-5.0, 5.0, D)  # (B, D)
    gamma, beta = rng.uniform(0.5, 1.5, D), rng.uniform(-0.5, 0.5, D)  # (D,), (D,)
    running_mean, running_var = rng.standard_normal(D), rng.uniform(0.5, 2.0, D)  # (D,), (D,)
    return [a.astype(np.float32) for a in (z, gamma, beta, running_mean, running_var)]


@pytest.mark.parametrize("version", [*norm_ops.VERSIONS["bn_forward_train"], "unfused"])  # unfused: cuda/unfused.py
@pytest.mark.parametrize("act", sorted(reference.ACTS.values()))
@pytest.mark.parametrize("D", [1, 5, 33, 70])
@pytest.mark.parametrize("B", [2, 7, 37])
def test_bn_forward_train_matches_reference(kernels, B, D, act, version):
    z, gamma, beta, running_mean, running_var = bn_inputs(B, D)
    want_mean, want_var = running_mean.copy(), running_var.copy()
    want_h, want_xhat, want_inv_std = reference.bn_forward_train(z, gamma, beta, want_mean, want_var, act, 0.1, 1e-5)

    xp = kernels.xp
    dev_mean, dev_var = xp.asarray(running_mean), xp.asarray(running_var)
    args = [xp.asarray(a) for a in (z, gamma, beta)]
    h, xhat, inv_std = norm_ops.bn_forward_train(kernels, *args, dev_mean, dev_var, act, 0.1, 1e-5, version=version)

    tol = tolerance(B)
    assert_close(h, want_h, rtol=tol, atol=tol, name=f"h (v{version})")
    assert_close(xhat, want_xhat, rtol=tol, atol=tol, name=f"xhat (v{version})")
    assert_close(inv_std, want_inv_std, rtol=tol, atol=tol, name=f"inv_std (v{version})")
    assert_close(dev_mean, want_mean, rtol=tol, atol=tol, name=f"running_mean (v{version})")
    assert_close(dev_var, want_var, rtol=tol, atol=tol, name=f"running_var (v{version})")


def bn_backward_inputs(B, D, seed=1):
    """dy and the cache of a real forward pass (xhat, inv_std), and gamma."""
    z, gamma, beta, running_mean, running_var = bn_inputs(B, D, seed)
    _, xhat, inv_std = reference.bn_forward_train(z, gamma, beta, running_mean, running_var, 0)
    dy = np.random.default_rng(seed + 1).standard_normal((B, D)).astype(np.float32)  # (B, D)
    return dy, xhat, inv_std, gamma


@pytest.mark.parametrize("version", [*norm_ops.VERSIONS["bn_backward"], "unfused"])  # unfused: cuda/unfused.py
@pytest.mark.parametrize("D", [1, 5, 33, 70])
@pytest.mark.parametrize("B", [2, 7, 37])
def test_bn_backward_matches_reference(kernels, B, D, version):
    dy, xhat, inv_std, gamma = bn_backward_inputs(B, D)
    want_dx, want_dgamma, want_dbeta = reference.bn_backward(dy, xhat, inv_std, gamma)

    xp = kernels.xp
    dx, dgamma, dbeta = norm_ops.bn_backward(
        kernels, *[xp.asarray(a) for a in (dy, xhat, inv_std, gamma)], version=version
    )

    tol = tolerance(B)
    assert_close(dbeta, want_dbeta, rtol=tol, atol=tol, name=f"dbeta (v{version})")
    assert_close(dgamma, want_dgamma, rtol=tol, atol=tol, name=f"dgamma (v{version})")
    assert_close(dx, want_dx, rtol=tol, atol=tol, name=f"dx (v{version})")


@pytest.mark.parametrize("version", [*norm_ops.VERSIONS["bn_backward"], "unfused"])  # unfused: cuda/unfused.py
def test_bn_backward_writes_into_given_gradient_views(kernels, version):
    """dgamma and dbeta may be views into one flat gradient buffer: only their own slices are written."""
    B, D = 7, 33
    dy, xhat, inv_std, gamma = bn_backward_inputs(B, D)
    _, want_dgamma, want_dbeta = reference.bn_backward(dy, xhat, inv_std, gamma)

    xp = kernels.xp
    flat = xp.full(2 * D + 3, 7.0, dtype=np.float32)  # (2D + 3,): [pad, dgamma, pad, dbeta, pad]
    dgamma_view, dbeta_view = flat[1 : D + 1], flat[D + 2 : 2 * D + 2]
    args = [xp.asarray(a) for a in (dy, xhat, inv_std, gamma)]
    _, dgamma, dbeta = norm_ops.bn_backward(kernels, *args, dgamma=dgamma_view, dbeta=dbeta_view, version=version)

    assert dgamma is dgamma_view and dbeta is dbeta_view
    tol = tolerance(B)
    assert_close(flat[1 : D + 1], want_dgamma, rtol=tol, atol=tol, name="dgamma in the flat buffer")
    assert_close(flat[D + 2 : 2 * D + 2], want_dbeta, rtol=tol, atol=tol, name="dbeta in the flat buffer")
    pads = to_host(flat)[[0, D + 1, 2 * D + 2]]
    assert (pads == 7.0).all(), f"entries outside the views were overwritten: {pads}"


# ------------------------------------------------------------------------------------------------------------
# softmax cross-entropy


def xent_inputs(B, K, seed=2):
    """Logits with rows shifted by up to +-60, where exp without the max shift would overflow float32."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, K)) * 3 + rng.uniform(-60, 60, (B, 1))  # (B, K)
    labels = rng.integers(0, K, B)  # (B,)
    return logits.astype(np.float32), labels.astype(np.int32)


@pytest.mark.parametrize("version", [*norm_ops.VERSIONS["softmax_xent"], "unfused"])  # unfused: cuda/unfused.py
@pytest.mark.parametrize("K", [1, 3, 10, 33, 70])
@pytest.mark.parametrize("B", [1, 2, 7, 37])
def test_softmax_xent_matches_reference(kernels, B, K, version):
    logits, labels = xent_inputs(B, K)
    want_rows, want_dlogits = reference.softmax_xent(logits, labels)

    xp = kernels.xp
    rows, dlogits = norm_ops.softmax_xent(kernels, xp.asarray(logits), xp.asarray(labels), version=version)

    tol = tolerance(K)
    assert_close(rows, want_rows, rtol=tol, atol=tol, name=f"loss_rows (v{version})")
    assert_close(dlogits, want_dlogits, rtol=tol, atol=tol / B, name=f"dlogits (v{version})")


@pytest.mark.parametrize("version", norm_ops.VERSIONS["softmax_xent"])
def test_softmax_xent_kernel_writes_nan_for_a_label_out_of_range(kernels, version):
    """The launcher refuses bad labels; the kernel itself, launched directly, marks the row NaN and reads nothing
    out of bounds - and the other rows are unaffected."""
    B, K = 5, 33
    logits, labels = xent_inputs(B, K)
    labels[1], labels[3] = K, -1
    good = [0, 2, 4]
    want_rows, want_dlogits = reference.softmax_xent(logits[good], labels[good])

    xp = kernels.xp
    rows, dlogits = xp.zeros(B, dtype=np.float32), xp.zeros((B, K), dtype=np.float32)
    rows_per_block = norm_ops.XENT_ROWS
    grid, block = (
        ((1,), (B,)) if version == 1 else (((B + rows_per_block - 1) // rows_per_block,), (32, rows_per_block))
    )
    f = kernels.function("softmax_xent", f"softmax_xent_v{version}")
    f(grid, block, (xp.asarray(logits), xp.asarray(labels), rows, dlogits, np.int32(B), np.int32(K)))

    rows, dlogits = to_host(rows), to_host(dlogits)
    assert np.isnan(rows[[1, 3]]).all() and np.isnan(dlogits[[1, 3]]).all()
    tol = tolerance(K)
    assert_close(rows[good], want_rows, rtol=tol, atol=tol, name="loss of the rows with good labels")
    # the reference divides by its own batch of 3; the kernel by B = 5
    assert_close(dlogits[good] * B / 3, want_dlogits, rtol=tol, atol=tol, name="dlogits of the good rows")


# ------------------------------------------------------------------------------------------------------------
# larger shapes, on a real GPU only (on the emulator they would take minutes)


@needs_gpu
@pytest.mark.parametrize("version", [*norm_ops.VERSIONS["bn_forward_train"], "unfused"])  # unfused: cuda/unfused.py
def test_bn_large_on_gpu(version):
    kernels = get_kernels("cupy")
    B, D = 256, 1000
    z, gamma, beta, running_mean, running_var = bn_inputs(B, D)
    want_mean, want_var = running_mean.copy(), running_var.copy()
    want_h, want_xhat, want_inv_std = reference.bn_forward_train(z, gamma, beta, want_mean, want_var, 1)
    xp = kernels.xp
    dev_mean, dev_var = xp.asarray(running_mean), xp.asarray(running_var)
    h, xhat, inv_std = norm_ops.bn_forward_train(
        kernels, xp.asarray(z), xp.asarray(gamma), xp.asarray(beta), dev_mean, dev_var, 1, version=version
    )
    tol = tolerance(B)
    for name, got, want in [("h", h, want_h), ("xhat", xhat, want_xhat), ("inv_std", inv_std, want_inv_std)]:
        assert_close(got, want, rtol=tol, atol=tol, name=name)
    assert_close(dev_mean, want_mean, rtol=tol, atol=tol, name="running_mean")
    assert_close(dev_var, want_var, rtol=tol, atol=tol, name="running_var")

    dy = np.random.default_rng(3).standard_normal((B, D)).astype(np.float32)
    want_dx, want_dgamma, want_dbeta = reference.bn_backward(dy, want_xhat, want_inv_std, gamma)
    dx, dgamma, dbeta = norm_ops.bn_backward(kernels, xp.asarray(dy), xhat, inv_std, xp.asarray(gamma), version=version)
    for name, got, want in [("dx", dx, want_dx), ("dgamma", dgamma, want_dgamma), ("dbeta", dbeta, want_dbeta)]:
        assert_close(got, want, rtol=tol, atol=tol, name=name)


@needs_gpu
@pytest.mark.parametrize("version", [*norm_ops.VERSIONS["softmax_xent"], "unfused"])  # unfused: cuda/unfused.py
@pytest.mark.parametrize("B, K", [(512, 10), (300, 1000)])
def test_softmax_xent_large_on_gpu(B, K, version):
    kernels = get_kernels("cupy")
    logits, labels = xent_inputs(B, K)
    want_rows, want_dlogits = reference.softmax_xent(logits, labels)
    xp = kernels.xp
    rows, dlogits = norm_ops.softmax_xent(kernels, xp.asarray(logits), xp.asarray(labels), version=version)
    tol = tolerance(K)
    assert_close(rows, want_rows, rtol=tol, atol=tol, name="loss_rows")
    assert_close(dlogits, want_dlogits, rtol=tol, atol=tol / B, name="dlogits")


# ------------------------------------------------------------------------------------------------------------
# what the launchers refuse (checked before anything is launched)


def test_bn_forward_train_rejects_bad_inputs(emulated):
    z, gamma, beta, running_mean, running_var = bn_inputs(7, 5)

    def call(**changes):
        args = {"z": z, "gamma": gamma, "beta": beta, "running_mean": running_mean, "running_var": running_var}
        args.update({"act": 1}, **changes)
        return norm_ops.bn_forward_train(emulated, **args)

    with pytest.raises(TypeError, match="z must be float32, got float64"):
        call(z=z.astype(np.float64))
    with pytest.raises(TypeError, match="z must be a numpy.ndarray"):
        call(z=z.tolist())
    with pytest.raises(ValueError, match="z must be a 2-D array"):
        call(z=z[0])
    with pytest.raises(ValueError, match="at least 2 rows"):
        call(z=z[:1])
    with pytest.raises(ValueError, match="z must be C-contiguous"):
        call(z=np.asfortranarray(z))
    with pytest.raises(ValueError, match=r"gamma must have shape \(5,\), got \(4,\)"):
        call(gamma=gamma[:4])
    with pytest.raises(TypeError, match="running_var must be float32"):
        call(running_var=running_var.astype(np.float64))
    with pytest.raises(ValueError, match="running_mean must be C-contiguous"):
        call(running_mean=np.zeros(10, np.float32)[::2])
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        call(act="gelu")
    with pytest.raises(ValueError, match="act must be one of the codes"):
        call(act=4)
    with pytest.raises(ValueError, match=r"bn_forward_train has versions \(1, 2\) and 'unfused', got version=3"):
        call(version=3)


def test_bn_forward_train_accepts_act_names(emulated):
    z, gamma, beta, running_mean, running_var = bn_inputs(7, 5)
    by_name = norm_ops.bn_forward_train(emulated, z, gamma, beta, running_mean.copy(), running_var.copy(), "tanh")
    by_code = norm_ops.bn_forward_train(emulated, z, gamma, beta, running_mean.copy(), running_var.copy(), 2)
    np.testing.assert_array_equal(by_name[0], by_code[0])


def test_bn_backward_rejects_bad_inputs(emulated):
    dy, xhat, inv_std, gamma = bn_backward_inputs(7, 5)
    with pytest.raises(ValueError, match=r"xhat must have shape \(7, 5\), got \(7, 4\)"):
        norm_ops.bn_backward(emulated, dy, xhat[:, :4].copy(), inv_std, gamma)
    with pytest.raises(TypeError, match="inv_std must be float32"):
        norm_ops.bn_backward(emulated, dy, xhat, inv_std.astype(np.float64), gamma)
    with pytest.raises(ValueError, match="dy must be C-contiguous"):
        norm_ops.bn_backward(emulated, np.asfortranarray(dy), xhat, inv_std, gamma)
    flat = np.zeros(20, np.float32)
    with pytest.raises(ValueError, match="dgamma must be C-contiguous"):
        norm_ops.bn_backward(emulated, dy, xhat, inv_std, gamma, dgamma=flat[::4], dbeta=flat[:5])
    with pytest.raises(ValueError, match=r"dbeta must have shape \(5,\), got \(6,\)"):
        norm_ops.bn_backward(emulated, dy, xhat, inv_std, gamma, dbeta=flat[:6])


def test_softmax_xent_rejects_bad_inputs(emulated):
    logits, labels = xent_inputs(7, 10)
    with pytest.raises(TypeError, match="labels must be int32, got int64"):
        norm_ops.softmax_xent(emulated, logits, labels.astype(np.int64))
    with pytest.raises(TypeError, match="logits must be float32, got float16"):
        norm_ops.softmax_xent(emulated, logits.astype(np.float16), labels)
    with pytest.raises(ValueError, match=r"labels must have shape \(7,\), got \(6,\)"):
        norm_ops.softmax_xent(emulated, logits, labels[:6])
    with pytest.raises(ValueError, match="logits must be C-contiguous"):
        norm_ops.softmax_xent(emulated, np.asfortranarray(logits), labels)
    with pytest.raises(ValueError, match="logits must have at least 1 rows and 1 column"):
        norm_ops.softmax_xent(emulated, logits[:, :0], labels)
    for bad in (10, -1):
        wrong = labels.copy()
        wrong[3] = bad
        with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
            norm_ops.softmax_xent(emulated, logits, wrong)
