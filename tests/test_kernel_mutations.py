"""Mutation tests: plant a small bug in a copy of a shipped kernel and check that the comparison with the NumPy
reference catches it. A kernel test that still passes on a mutant proves nothing; these show that ours fail.

The mutants are built from the shipped sources in memory (the files on disk are not touched) and run by the CPU
emulator through the normal launchers, so each is exactly "the shipped kernel, with one thing wrong".
"""

import numpy as np
import pytest

from minidni.cuda import norm_ops, ops, reference
from minidni.cuda.emulator import EmulatedModule, emulator_available, unavailable_reason
from minidni.cuda.loader import get_kernels, include_options, kernel_dir, kernel_source

pytestmark = pytest.mark.skipif(not emulator_available(), reason=f"CPU emulator: {unavailable_reason()}")


class _MutantKernels:
    """The emulator's kernels, except that file `stem` is built from `source`."""

    def __init__(self, stem, source):
        self.inner, self.xp, self.target = get_kernels("emulator"), np, "emulator"
        self.stem, self.module = stem, EmulatedModule(code=source, options=include_options(), name=f"{stem}_mutant")

    def function(self, stem, name):
        return self.module.get_function(name) if stem == self.stem else self.inner.function(stem, name)


def _mutate(text, old, new):
    assert text.count(old) == 1, f"mutation site {old!r} must occur exactly once"
    return text.replace(old, new)


def _with_header_inlined(stem, header, old, new):
    """kernels/<stem>.cu with `#include "<header>"` replaced by a mutated copy of the header."""
    mutated = _mutate((kernel_dir() / header).read_text(), old, new)
    return _mutate(kernel_source(stem), f'#include "{header}"', mutated)


def _sg_predict_matches(kernels, version):
    rng = np.random.default_rng(0)
    B, Du, D, K = 19, 70, 33, 10
    u, h = rng.standard_normal((B, Du)).astype(np.float32), rng.random((B, D)).astype(np.float32)
    P = rng.standard_normal((Du + K + 1, D)).astype(np.float32)
    labels = rng.integers(0, K, B).astype(np.int32)
    want, _ = reference.sg_predict(u, P, labels, K, h, 1)
    got, _ = ops.sg_predict(kernels, u, P, labels, K, h, 1, version=version)
    return np.allclose(got, want, rtol=1e-4, atol=1e-4)


def _bn_forward_matches(kernels, version):
    rng = np.random.default_rng(0)
    B, D = 37, 33
    z = (rng.standard_normal((B, D)) * 2 + 1).astype(np.float32)
    gamma, beta = rng.random(D).astype(np.float32) + 0.5, rng.standard_normal(D).astype(np.float32)
    rm, rv = np.zeros(D, np.float32), np.ones(D, np.float32)
    want = reference.bn_forward_train(z, gamma, beta, rm.copy(), rv.copy(), 1)[0]
    got = norm_ops.bn_forward_train(kernels, z, gamma, beta, rm, rv, 1, version=version)[0]
    return np.allclose(got, want, rtol=1e-4, atol=1e-4)


MUTANTS = {
    # the naive version's reduction stops one short of the end
    "sg_predict v1: k < Du - 1": (
        "sg_predict",
        lambda: _mutate(
            kernel_source("sg_predict"), "for (int k = 0; k < Du; ++k)", "for (int k = 0; k < Du - 1; ++k)"
        ),
        _sg_predict_matches,
        1,
    ),
    # the gathered label row is off by one
    "sg_predict: C[y + 1]": (
        "sg_predict",
        lambda: _mutate(kernel_source("sg_predict"), "P[(Du + labels[m]) * D + n]", "P[(Du + labels[m] + 1) * D + n]"),
        _sg_predict_matches,
        3,
    ),
    # the tiled inner product starts each slice one step late
    "tiles.cuh: k = 1 .. BK": (
        "sg_predict",
        lambda: _with_header_inlined(
            "sg_predict",
            "tiles.cuh",
            "for (int k = 0; k < BK; ++k) {",
            "for (int k = 1; k < BK; ++k) {",
        ),
        _sg_predict_matches,
        2,
    ),
    # batch norm's mean divides by B - 1
    "batchnorm: mean over B - 1": (
        "batchnorm",
        lambda: kernel_source("batchnorm").replace("sum * (1.0f / B)", "sum * (1.0f / (B - 1))"),
        _bn_forward_matches,
        1,
    ),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_reference_comparison_catches_the_mutant(name):
    stem, make_source, matches, version = MUTANTS[name]
    source = make_source()
    assert source != kernel_source(stem)  # the mutation applied
    assert matches(get_kernels("emulator"), version)  # the shipped kernel passes the same comparison
    assert not matches(_MutantKernels(stem, source), version)  # and the mutant fails it


def _sanitizer_active():
    from minidni.cuda import emulator

    return emulator.sanitizer() == "address"


OOB_SCRIPT = """
import numpy as np
from minidni.cuda import ops, reference
from minidni.cuda.emulator import EmulatedModule
from minidni.cuda.loader import include_options, kernel_dir, kernel_source

# the tile loader's bounds check admits k == K: one element past the end of the last row of u
header = (kernel_dir() / "tiles.cuh").read_text().replace(
    "As[k][m] = (m0 + m < M && k0 + k < K)", "As[k][m] = (m0 + m < M && k0 + k <= K)")
source = kernel_source("sg_predict").replace('#include "tiles.cuh"', header)


class Mutant:
    xp, target = np, "emulator"
    module = EmulatedModule(code=source, options=include_options(), name="sg_predict_oob")

    def function(self, stem, name):
        return self.module.get_function(name)


rng = np.random.default_rng(0)
B, Du, D = 19, 70, 33
u, h = rng.standard_normal((B, Du)).astype(np.float32), rng.random((B, D)).astype(np.float32)
P = rng.standard_normal((Du + 1, D)).astype(np.float32)
got, _ = ops.sg_predict(Mutant(), u, P, None, 0, h, 1, version=3)
want, _ = reference.sg_predict(u, P, None, 0, h, 1)
print("results equal:", np.allclose(got, want, rtol=1e-4, atol=1e-4))
"""


@pytest.mark.skipif(not _sanitizer_active(), reason="runs in CI's AddressSanitizer pass (MINIDNI_EMU_SANITIZE=address)")
def test_sanitizer_catches_a_mutant_that_reads_out_of_bounds_but_computes_the_right_answer():
    """Some bugs leave every result right: this mutant reads one float past the end of u and multiplies it by a
    zero, so the reference comparison (usually) passes. Only the sanitizer sees it - which is why CI runs one."""
    import subprocess
    import sys

    # in a subprocess: ASan ends the process it finds the error in
    result = subprocess.run(
        [sys.executable, "-c", OOB_SCRIPT], check=False, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "heap-buffer-overflow" in result.stderr
    assert "results equal" not in result.stdout
