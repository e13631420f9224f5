"""`python -m minidni doctor` (minidni.doctor): its checks can fail, and say why. The whole doctor runs in CI
on a machine without a GPU (.ci/run); here each kind of failure is planted once."""

import numpy as np
import pytest

from minidni import doctor
from minidni.cuda import reference
from minidni.cuda.emulator import emulator_available, unavailable_reason

pytestmark = [
    pytest.mark.skipif(not emulator_available(), reason=f"CPU emulator: {unavailable_reason()}"),
    pytest.mark.usefixtures("isolated"),
]


def _doctor():
    lines = []
    return doctor.Doctor(gpu=False, out=lines.append), lines


def test_every_kernel_check_passes_on_the_emulator():
    d, lines = _doctor()
    kernels = d._kernels()
    for op in ("linear_forward", "sg_update", "bn_backward", "softmax_xent"):
        d.check(f"kernel {op}", lambda op=op: d.kernel_versions(kernels, op))
    assert all(line.startswith("PASS") for line in lines), lines


def test_a_kernel_that_disagrees_with_its_reference_fails(monkeypatch):
    original = reference.linear_forward
    monkeypatch.setattr(reference, "linear_forward", lambda *args: original(*args) + 1e-3)
    d, lines = _doctor()
    d.check("kernel linear_forward", lambda: d.kernel_versions(d._kernels(), "linear_forward"))
    assert lines[-1].startswith("FAIL  kernel linear_forward:") and "of the tolerance" in lines[-1]


def test_a_fused_step_that_drifts_from_the_engine_fails(monkeypatch):
    from minidni.cuda import fused

    original = fused.FusedDNIStep._predict

    def predict(self, i, u, h, labels, stats):
        dh_syn, delta = original(self, i, u, h, labels, stats)
        delta *= np.float32(1.01)  # 1 % too large: the block's update drifts from the engine's
        return dh_syn, delta

    monkeypatch.setattr(fused.FusedDNIStep, "_predict", predict)
    d, lines = _doctor()
    d.check("fused cdni step", lambda: d.fused_step(d._kernels(), "cdni"))
    assert lines[-1].startswith("FAIL  fused cdni step: largest relative difference")


def test_a_check_that_crashes_is_a_failure_and_the_run_says_so():
    d, lines = _doctor()
    d.check("boom", lambda: 1 / 0)
    assert lines[-1].startswith("FAIL  boom: ZeroDivisionError") and "test_doctor.py" in lines[-1]
    d.skip("timings", "need a GPU")
    assert lines[-1] == "SKIP  timings: need a GPU"


def test_the_standin_check_counts_reads_of_the_fused_step():
    pytest.importorskip("cupy", reason="the stand-in reads the installed CuPy's API")
    d, lines = _doctor()
    d.check("engine under CuPy's rules", d.standin_steps)
    assert lines[-1].startswith("PASS") and "read back to the host once" in lines[-1]
