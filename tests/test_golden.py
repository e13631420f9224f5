"""The feed-forward path computes what it computed before the package was split into layers (issue 16): every
mode's per-step losses, SG losses and final state against tests/golden/fingerprint.json (see fingerprint.py)."""

import importlib.util
import json
import math
import pathlib

import pytest

HERE = pathlib.Path(__file__).parent / "golden"
spec = importlib.util.spec_from_file_location("golden_fingerprint", HERE / "fingerprint.py")
golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(golden)

RECORDED = json.loads(golden.FILE.read_text())


def _differences(recorded, now, rel, path=""):
    """Where two fingerprints differ by more than `rel` relative: a list of 'path: recorded vs now'."""
    if isinstance(recorded, dict):
        if set(recorded) != set(now):
            return [f"{path}: keys {sorted(recorded)} vs {sorted(now)}"]
        return [d for k in recorded for d in _differences(recorded[k], now[k], rel, f"{path}.{k}")]
    if isinstance(recorded, list):
        if not isinstance(now, list) or len(recorded) != len(now):
            return [f"{path}: {recorded!r} vs {now!r}"]
        return [d for i, (a, b) in enumerate(zip(recorded, now)) for d in _differences(a, b, rel, f"{path}[{i}]")]
    if isinstance(recorded, float) and isinstance(now, float):
        # abs_tol: a number that cancels to ~1e-12 (an SG bias that received no signal) is all rounding noise,
        # whose digits move with the BLAS build's kernels (seen between two CPU models of the CI machine kind)
        close = math.isclose(recorded, now, rel_tol=rel, abs_tol=max(rel * 1e-3, 1e-10))
        return [] if close else [f"{path}: {recorded!r} vs {now!r}"]
    return [] if recorded == now else [f"{path}: {recorded!r} vs {now!r}"]


@pytest.mark.parametrize("name", sorted(golden.CASES))
def test_every_mode_computes_the_recorded_numbers(name, isolated):
    kwargs, shape = golden.CASES[name]
    with golden.threadpool_limits(limits=1, user_api="blas"):
        now = json.loads(json.dumps(golden.run_case(kwargs, shape)))  # the same float -> JSON round trip
    rel = 1e-5 if "float32" in name else 1e-10
    diffs = _differences(RECORDED[name], now, rel)
    assert not diffs, f"{name} changed ({len(diffs)} numbers, first 5):\n" + "\n".join(diffs[:5])


def test_the_fingerprint_covers_every_case():
    assert sorted(RECORDED) == sorted(golden.CASES)
