"""The feed-forward path's golden fingerprint: per-step losses and SG losses of a few training steps in every
mode, on fixed data, with BLAS on one thread.

    python tests/golden/fingerprint.py           # print the fingerprint of this checkout
    python tests/golden/fingerprint.py --write   # record it as tests/golden/fingerprint.json

tests/test_golden.py recomputes it and compares with the recorded file. The file was first written from commit
9d37dab, before the package was split into layers (issue 16), so the test proves that the move changed no number.
Work that changes these numbers on purpose rewrites the file and says why in its commit.

The float64 runs are compared to 1e-10 relative (only summation order can move them, by ~1e-16), and to 1e-10
absolute for numbers that cancel to almost nothing (their digits are rounding noise and move with the BLAS
kernels of the CPU); the one float32 run to 1e-5, which any change of the algorithm exceeds by far.
"""

import json
import pathlib
import sys

import numpy as np
from threadpoolctl import threadpool_limits

from minidni import build_network

FILE = pathlib.Path(__file__).with_name("fingerprint.json")
STEPS = 4  # per case
BATCH = 8

# name -> (build_network keyword arguments, input shape per row)
CASES = {
    "fcn3_bprop": (dict(mode="bprop"), (20,)),
    "fcn3_nobprop": (dict(mode="nobprop"), (20,)),
    "fcn3_dni": (dict(mode="dni", sg_hidden=24), (20,)),
    "fcn3_cdni": (dict(mode="cdni"), (20,)),
    "fcn4_cdni_true_targets": (dict(depth=4, mode="cdni", sg_target="true"), (20,)),
    "fcn4_dni_clip_sgd": (dict(depth=4, mode="dni", sg_hidden=24, clip=0.01, optimizer="sgd", lr=0.05), (20,)),
    "fcn4_cdni_stochastic": (dict(depth=4, mode="cdni", p_update=0.5), (20,)),
    "fcn3_cdni_unlock": (dict(mode="cdni", unlock=True, input_hidden=24), (20,)),
    "fcn4_cdni_split": (dict(depth=4, mode="cdni", split=(2, 2)), (20,)),
    "fcn3_cdni_float32": (dict(mode="cdni", dtype=np.float32), (20,)),
    "cnn3_cdni": (dict(arch="cnn", mode="cdni", in_shape=(1, 8, 8), channels=4, sg_channels=4), (1, 8, 8)),
}


def run_case(kwargs, row_shape):
    """STEPS training steps on fixed random data: [{"loss": float, "sg_loss": [...], ...}] and a state checksum."""
    dtype = kwargs.get("dtype", np.float64)
    kwargs = {"depth": 3, "d_in": 20, "hidden": 16, "n_classes": 5, "sg_lr": 1e-3, "seed": 3, "dtype": dtype, **kwargs}
    if kwargs.get("arch") == "cnn":
        kwargs.pop("d_in"), kwargs.pop("hidden")
    net = build_network(**kwargs)
    rng = np.random.default_rng(11)
    steps = []
    for _ in range(STEPS):
        x = rng.standard_normal((BATCH, *row_shape)).astype(dtype)
        labels = rng.integers(0, 5, BATCH)
        out = net.train_step(x, labels)
        steps.append({k: (v if k != "updated" else sorted(int(i) for i in v)) for k, v in out.items()})
    state = net.state_arrays()
    checksum = {k: float(np.abs(np.asarray(v, dtype=np.float64)).sum()) for k, v in sorted(state.items())}
    return {"steps": steps, "state_abs_sums": checksum}


def fingerprint():
    with threadpool_limits(limits=1, user_api="blas"):
        return {name: run_case(kwargs, shape) for name, (kwargs, shape) in CASES.items()}


if __name__ == "__main__":
    result = fingerprint()
    text = json.dumps(result, indent=1, sort_keys=True)
    if "--write" in sys.argv[1:]:
        FILE.write_text(text + "\n")
        print(f"wrote {FILE}")
    else:
        print(text)
