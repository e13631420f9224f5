"""The GPU path from the command line and the benchmark harness, on a machine without a GPU: the kernels run on
the CPU emulator where asked, and everything that needs a GPU says so clearly instead of falling back."""

import json

import numpy as np
import pytest

from minidni.core.backend import gpu_available
from minidni.cli import main
from minidni.cuda.emulator import emulator_available, unavailable_reason
from minidni.cuda.loader import get_kernels

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py: temporary data cache, numpy backend
needs_emulator = pytest.mark.skipif(not emulator_available(), reason=f"CPU emulator: {unavailable_reason()}")

TINY = ["--data", "spirals", "--batch", "64", "--hidden", "16", "--val-size", "300", "--seed", "0", "--no-progress"]


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _losses(out):
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line)["train_loss"] for line in f]


@needs_emulator
def test_train_with_emulated_kernels_matches_the_engine(tmp_path, capsys):
    runs = {}
    for kernels in ("emulator", "unfused"):
        out = tmp_path / kernels
        rc, _, err = cli(capsys, "train", *TINY, "--mode", "cdni", "--epochs", "2", "--kernels", kernels, "--out", out)
        assert rc == 0, err
        assert f"training step: {kernels}" in err
        runs[kernels] = _losses(out)
    np.testing.assert_allclose(runs["emulator"], runs["unfused"], rtol=1e-4)


def test_fused_kernels_need_the_cupy_backend(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", *TINY, "--epochs", "1", "--kernels", "fused", "--out", tmp_path / "r")
    assert rc == 1
    assert "--kernels fused runs the CUDA kernels on a GPU: select --backend cupy" in err


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
@pytest.mark.parametrize(
    "argv", [["train", *TINY, "--backend", "cupy", "--epochs", "1"], ["bench", "--backend", "cupy"]]
)
def test_gpu_commands_without_a_gpu_say_so(tmp_path, capsys, argv):
    rc, _, err = cli(capsys, *argv, *(["--out", tmp_path / "r"] if argv[0] == "train" else []))
    assert rc == 1
    assert "--backend cupy asks for CuPy, but CuPy" in err  # the flag the user typed, not MINIDNI_BACKEND
    assert "MINIDNI_BACKEND" not in err


def test_kernels_report_prints_every_kernel(capsys):
    from minidni.cuda.report import extern_c_kernels, kernel_files

    rc, out, _ = cli(capsys, "kernels", "report")
    assert rc == 0
    for path in kernel_files():
        for name in extern_c_kernels(path.read_text()):
            assert f"| `{name}` |" in out, name


@needs_emulator
def test_bench_harness_runs_on_the_emulator():
    """The GPU benchmark's code paths (operands, versions, unfused baselines, byte and flop counts, the step
    comparison) run end to end; the timings themselves mean nothing here and are not checked."""
    from minidni.cuda import bench

    lines = []
    kernels = get_kernels("emulator")
    rows = bench.bench_kernels(kernels, shapes=[(8, 13, 19, 5)], repeats=1, out=lines.append)
    kinds = {(r["kernel"], r["version"]) for r in rows}
    for kernel, versions in bench._VERSIONS_OF.items():
        if kernel in ("layer_update", "sg_update"):
            continue  # benchmarked as their Adam variants
        assert {(kernel, f"v{v}") for v in versions} | {(kernel, "unfused")} <= kinds, kernel
    assert all(r["us"] > 0 and r["GBps"] >= 0 and r["GFLOPs"] >= 0 for r in rows)
    steps = bench.bench_steps(kernels, widths=(19,), batch=8, repeats=1, out=lines.append)
    assert {r["mode"] for r in steps} == {"cdni", "dni"} and all(r["speedup"] > 0 for r in steps)
    assert len(lines) == len(rows) + len(steps) and all(json.loads(line) for line in lines)


def test_kernels_are_found_from_a_source_checkout(monkeypatch):
    """`pip install .` then `python -m minidni` in the repository imports ./minidni, which has no kernels
    subpackage: the loader must then find the checkout's kernels/ folder (it did not, once)."""
    from importlib import resources

    from minidni.cuda import loader

    installed = loader.kernel_dir()

    def no_package(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(resources, "files", no_package)
    found = loader.kernel_dir()
    assert (found / "tiles.cuh").is_file() and sorted(p.name for p in found.glob("*.cu")) == sorted(
        p.name for p in installed.glob("*.cu")
    )


def test_kernels_report_without_nvrtc_says_how_to_get_it(capsys, monkeypatch):
    from minidni.cuda import nvrtc

    def missing():
        raise nvrtc.NvrtcNotFound("NVRTC not found: pip install 'nvidia-cuda-nvrtc>=13,<14'")

    monkeypatch.setattr(nvrtc, "version", missing)
    rc, _, err = cli(capsys, "kernels", "report")
    assert rc == 1 and "pip install" in err
