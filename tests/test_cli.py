"""Tests for the command line (minidni.cli) and, through it, training runs, resume and evaluation.

Everything runs on the tiny spirals problem (2-d inputs, 3 classes, 2700 training rows): a run of a few epochs with
16 hidden units takes a fraction of a second. No test touches MNIST or the network.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minidni.runs import train as train_module
from minidni.data.checkpoint import load_checkpoint
from minidni.cli import HelpFormatter, build_parser, main
from minidni.runs.threads import DEFAULT_THREADS
from minidni.runs.train import TrainConfig

TINY = ["--data", "spirals", "--model", "fcn3", "--batch", "64", "--hidden", "16", "--sg-hidden", "16",
        "--val-size", "300", "--seed", "0", "--no-progress"]  # fmt: skip
pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py: temporary data cache, numpy backend
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_FILES = ("checkpoint.npz", "config.json", "curves.png", "metrics.jsonl")


@pytest.fixture
def real_plots():
    """Requested by the tests that check curves.png: they draw it with matplotlib."""


@pytest.fixture(autouse=True)
def fast_plots(request, monkeypatch):
    """Drawing curves.png takes ~0.5 s per epoch, ten times the training of a tiny run, and no other test looks at it.
    Tests that do not request `real_plots` get a stand-in that writes only the PNG signature (at the same point)."""
    if "real_plots" in request.fixturenames:
        return
    from minidni.runs import plots
    from minidni.data.checkpoint import atomic_write

    monkeypatch.setattr(plots, "plot_learning_curves", lambda metrics, path, **_: atomic_write(path, PNG_SIGNATURE))


def cli(capsys, *argv):
    """Run the CLI in-process: (return code, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def train_run(capsys, out, *extra, expect=0):
    rc, stdout, stderr = cli(capsys, "train", *TINY, "--out", out, *extra)
    assert rc == expect, stderr
    return stdout, stderr


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def without_seconds(metrics):
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]


def snapshot(out):
    """The bytes of every file in a run directory."""
    return {path.name: path.read_bytes() for path in sorted(Path(out).iterdir())}


def assert_same_run(out_a, out_b):
    """Two runs agree bit for bit: every metric except wall-clock seconds, and every checkpoint array and scalar."""
    assert without_seconds(read_metrics(out_a)) == without_seconds(read_metrics(out_b))
    arrays_a, meta_a = load_checkpoint(os.path.join(out_a, "checkpoint.npz"))
    arrays_b, meta_b = load_checkpoint(os.path.join(out_b, "checkpoint.npz"))
    assert sorted(arrays_a) == sorted(arrays_b)
    for k in arrays_a:
        assert arrays_a[k].dtype == arrays_b[k].dtype, k
        assert np.array_equal(arrays_a[k], arrays_b[k]), k
    for k in ("epoch", "step", "optimizers", "rng", "format_version"):
        assert meta_a[k] == meta_b[k], k
    config_a, config_b = dict(meta_a["config"]), dict(meta_b["config"])
    config_a.pop("out"), config_b.pop("out")
    assert config_a == config_b


class InterruptAfter:
    """Replaces minidni.runs.train.save_checkpoint: saves `n` checkpoints, then simulates Ctrl-C (KeyboardInterrupt)
    either right after the n-th save, or at the next save before anything is written (so metrics.jsonl already
    holds an epoch that the checkpoint does not)."""

    def __init__(self, n, before_next_save=False):
        self.n, self.before_next_save, self.calls = n, before_next_save, 0
        self.real = train_module.save_checkpoint

    def __call__(self, path, arrays, meta):
        self.calls += 1
        if self.calls <= self.n:
            self.real(path, arrays, meta)
        if self.calls == self.n + self.before_next_save:
            raise KeyboardInterrupt


# ---- a run and its files --------------------------------------------------------------------------------------


def test_tiny_cdni_run_writes_everything(tmp_path, capsys, real_plots):
    out = tmp_path / "run"
    stdout, stderr = train_run(capsys, out, "--mode", "cdni", "--epochs", "2")
    assert sorted(os.listdir(out)) == sorted(RUN_FILES)  # and no leftover temporary files
    assert "final test error" in stdout and str(out) in stdout
    assert re.search(r"epoch\s+2\b", stderr)  # progress chatter goes to stderr

    config = json.loads((out / "config.json").read_text())
    assert config["config"]["mode"] == "cdni" and config["config"]["epochs"] == 2 and config["config"]["hidden"] == 16
    env = config["environment"]
    assert env["numpy"] == np.__version__
    assert "git_revision" in env and "blas" in env
    assert env["backend"] == "numpy"

    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("epoch", "train_loss", "test_error_pct", "seconds", "sg_loss"):
            assert key in m, key
        assert math.isfinite(m["train_loss"]) and m["train_loss"] > 0
        assert 0 <= m["test_error_pct"] <= 100
        assert m["seconds"] >= 0
        assert len(m["sg_loss"]) == 2  # fcn3: two hidden blocks, one SG module each
        assert all(math.isfinite(v) and v >= 0 for v in m["sg_loss"])
        assert "sg_cosine" not in m
    assert metrics[1]["step"] == 2 * metrics[0]["step"] > 0
    assert metrics[-1]["test_error_pct"] < 60  # it learns something: chance is 66.7% on 3 balanced classes

    png = (out / "curves.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000

    arrays, meta = load_checkpoint(out / "checkpoint.npz")
    assert meta["epoch"] == 2 and meta["step"] == metrics[-1]["step"]
    assert any(k.startswith("sg") for k in arrays)
    assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")


def test_bprop_run_has_no_sg_loss(tmp_path, capsys):
    out = tmp_path / "run"
    train_run(capsys, out, "--mode", "bprop", "--epochs", "1")
    (m,) = read_metrics(out)
    assert not m.get("sg_loss")
    arrays, _ = load_checkpoint(out / "checkpoint.npz")
    assert not any(k.startswith("sg") for k in arrays)


@pytest.mark.parametrize("mode, sg", [("cdni", "linear"), ("dni", "mlp")])
def test_diagnostics(tmp_path, capsys, mode, sg, real_plots):
    out = tmp_path / "run"
    train_run(capsys, out, "--mode", mode, "--sg", sg, "--epochs", "2", "--diagnostics")
    metrics = read_metrics(out)
    assert len(metrics) == 2
    for m in metrics:
        assert len(m["sg_cosine"]) == len(m["sg_rel_error"]) == 2
        assert all(-1 - 1e-6 <= c <= 1 + 1e-6 for c in m["sg_cosine"])
        assert all(math.isfinite(r) and r >= 0 for r in m["sg_rel_error"])
    assert (out / "curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_diagnostics_refuse_a_validation_split_smaller_than_a_batch(tmp_path, capsys):
    """The alignment is measured on held-out rows; with fewer validation rows than a batch it would have to use
    training rows, which the SG modules were fitted on, and say nothing about generalisation."""
    _, stderr = train_run(capsys, tmp_path / "run", "--mode", "cdni", "--val-size", "40", "--diagnostics", expect=1)
    assert "held-out batch of 64 validation rows, but the validation split has 40" in stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_diagnostics_do_not_change_training(tmp_path, capsys):
    """The alignment measurement runs a forward/backward pass in training mode; it must not move the run."""
    plain, diag = tmp_path / "plain", tmp_path / "diag"
    flags = ["--mode", "dni", "--sg", "mlp", "--epochs", "2"]
    train_run(capsys, plain, *flags)
    train_run(capsys, diag, *flags, "--diagnostics")
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("seconds", "sg_cosine", "sg_rel_error")} for m in ms]  # noqa: E731
    assert strip(read_metrics(plain)) == strip(read_metrics(diag))
    a, _ = load_checkpoint(plain / "checkpoint.npz")
    b, _ = load_checkpoint(diag / "checkpoint.npz")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_same_seed_same_run(tmp_path, capsys):
    train_run(capsys, tmp_path / "a", "--mode", "cdni", "--epochs", "1")
    train_run(capsys, tmp_path / "b", "--mode", "cdni", "--epochs", "1")
    assert_same_run(tmp_path / "a", tmp_path / "b")


# ---- resume ---------------------------------------------------------------------------------------------------

RESUME_CASES = {
    "dni-mlp": ["--mode", "dni", "--sg", "mlp"],  # batch norm inside the SG modules, Adam state of every module
    "bprop": ["--mode", "bprop"],
    "feedback": ["--mode", "feedback", "--signals", "fa,sg"],  # fixed feedback matrices, a module's Adam state
}


@pytest.mark.parametrize("flags", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_resume_after_interrupt_is_bit_identical(tmp_path, capsys, monkeypatch, flags):
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(capsys, a, *flags, "--epochs", "3")

    with monkeypatch.context() as m:
        m.setattr(train_module, "save_checkpoint", InterruptAfter(1))
        _, stderr = train_run(capsys, b, *flags, "--epochs", "3", expect=130)
    assert "--resume" in stderr
    assert load_checkpoint(b / "checkpoint.npz")[1]["epoch"] == 1

    _, stderr = train_run(capsys, b, *flags, "--epochs", "3", "--resume")
    assert "resum" in stderr.lower()
    assert_same_run(a, b)


@pytest.mark.parametrize("flags", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_resume_with_more_epochs_is_bit_identical_at_a_constant_rate(tmp_path, capsys, flags):
    """Train N epochs, later continue the same run with --resume --epochs M > N: with no decay schedule this
    is exactly a run of M epochs."""
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(capsys, a, *flags, "--lr-decay-at", "none", "--epochs", "3")
    train_run(capsys, b, *flags, "--lr-decay-at", "none", "--epochs", "1")
    train_run(capsys, b, *flags, "--lr-decay-at", "none", "--epochs", "3", "--resume")
    assert_same_run(a, b)


def test_extending_a_run_keeps_its_learning_rate_milestones(tmp_path, capsys):
    """The decay schedule is fixed when a run starts (fractions of its --epochs); extending the run later keeps
    the milestones already passed instead of raising the learning rate again."""
    out = tmp_path / "run"
    train_run(capsys, out, "--mode", "cdni", "--epochs", "1")
    first = load_checkpoint(out / "checkpoint.npz")[1]["lr_milestones"]
    _, stderr = train_run(capsys, out, "--mode", "cdni", "--epochs", "3", "--resume")
    assert "keeping the checkpoint's learning-rate milestones" in stderr
    assert load_checkpoint(out / "checkpoint.npz")[1]["lr_milestones"] == first
    lrs = [m["lr"] for m in read_metrics(out)]
    assert lrs[1] == lrs[2] == pytest.approx(lrs[0]) and lrs[0] < 1e-3  # decayed in epoch 1, and stays so


def test_iterations_stop_the_run_at_an_exact_step_with_the_decay_at_fractions_of_it(tmp_path, capsys):
    """--iterations N: exactly N steps (the last epoch cut short), the learning rates divided at round(0.6 N) and
    round(0.8 N) - the paper's 300k and 400k of 500k - whatever the epoch length; a finished run refuses to resume."""
    probe = tmp_path / "probe"
    train_run(capsys, probe, "--mode", "cdni", "--epochs", "1", "--lr-decay-at", "none")
    n_batches = read_metrics(probe)[0]["step"]
    out, n = tmp_path / "run", n_batches + 5
    train_run(capsys, out, "--mode", "cdni", "--epochs", "3", "--iterations", n)
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [n_batches, n]  # two epochs, the second 5 steps long
    meta = load_checkpoint(out / "checkpoint.npz")[1]
    assert meta["lr_milestones"] == [round(0.6 * n), round(0.8 * n)] and meta["step"] == n
    assert metrics[-1]["lr"] == pytest.approx(TrainConfig.lr * 0.01)  # both milestones passed within the run
    _, stderr = train_run(capsys, out, "--mode", "cdni", "--epochs", "3", "--iterations", n, "--resume", expect=1)
    assert f"already >= iterations={n}" in stderr
    _, stderr = train_run(capsys, tmp_path / "short", "--epochs", "1", "--iterations", n, expect=1)
    assert f"iterations={n} needs at least 2 epochs" in stderr


@pytest.mark.parametrize("crash", ["fake-line", "crash-between-metrics-and-checkpoint"])
def test_metrics_logged_after_the_checkpoint_are_dropped_on_resume(tmp_path, capsys, monkeypatch, crash):
    flags = ["--mode", "dni", "--sg", "mlp", "--epochs", "3"]
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(capsys, a, *flags)

    with monkeypatch.context() as m:
        m.setattr(train_module, "save_checkpoint", InterruptAfter(1, before_next_save=crash != "fake-line"))
        train_run(capsys, b, *flags, expect=130)
    if crash == "fake-line":
        with open(b / "metrics.jsonl", "a") as f:
            f.write(
                json.dumps({"epoch": 2, "step": 999, "train_loss": 123.0, "test_error_pct": 99.0, "seconds": 1.0})
                + "\n"
            )
    # else the real thing: epoch 2's metrics were written, then the process died before its checkpoint
    assert [m["epoch"] for m in read_metrics(b)] == [1, 2]
    assert load_checkpoint(b / "checkpoint.npz")[1]["epoch"] == 1

    train_run(capsys, b, *flags, "--resume")
    assert_same_run(a, b)


def test_crash_before_the_first_checkpoint_can_be_resumed(tmp_path, capsys, monkeypatch):
    flags = ["--mode", "cdni", "--epochs", "2"]
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(capsys, a, *flags)
    with monkeypatch.context() as m:
        m.setattr(train_module, "save_checkpoint", InterruptAfter(0, before_next_save=True))
        train_run(capsys, b, *flags, expect=130)
    assert (b / "metrics.jsonl").exists() and not (b / "checkpoint.npz").exists()
    train_run(capsys, b, *flags, "--resume")
    assert_same_run(a, b)


def test_resume_refuses_a_changed_flag(tmp_path, capsys):
    out = tmp_path / "run"
    train_run(capsys, out, "--mode", "cdni", "--epochs", "1")
    before = snapshot(out)
    rc, _, err = cli(
        capsys, "train", *TINY, "--out", out, "--mode", "cdni", "--epochs", "2", "--resume", "--lr", "0.01"
    )
    assert rc == 1
    assert "lr" in err and "0.01" in err and "cannot resume" in err
    assert snapshot(out) == before


def test_resume_without_checkpoint(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    rc, _, err = cli(capsys, "train", *TINY, "--out", out, "--epochs", "2", "--resume")
    assert rc == 1
    assert "no checkpoint" in err and str(out) in err
    assert os.listdir(out) == []


@pytest.mark.parametrize("epochs", ["1", "2"])
def test_resume_to_no_more_epochs(tmp_path, capsys, epochs):
    out = tmp_path / "run"
    train_run(capsys, out, "--mode", "cdni", "--epochs", "2")
    before = snapshot(out)
    rc, _, err = cli(capsys, "train", *TINY, "--out", out, "--mode", "cdni", "--epochs", epochs, "--resume")
    assert rc == 1
    assert "cannot resume" in err and "epoch" in err and "2" in err
    assert snapshot(out) == before


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    train_run(capsys, out, "--mode", "cdni", "--epochs", "1")
    before = snapshot(out)
    rc, stdout, err = cli(capsys, "train", *TINY, "--out", out, "--mode", "bprop", "--epochs", "1")
    assert rc == 1
    assert "--resume" in err and str(out) in err
    assert stdout == ""
    assert snapshot(out) == before


# ---- evaluate -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cdni", "bprop"])
def test_evaluate_reproduces_the_logged_test_error(tmp_path, capsys, mode):
    out = tmp_path / "run"
    train_run(capsys, out, "--mode", mode, "--epochs", "2")
    last = read_metrics(out)[-1]
    rc, stdout, err = cli(capsys, "evaluate", out / "checkpoint.npz")
    assert rc == 0, err
    match = re.search(r"test error ([0-9.]+)%", stdout)
    assert match, stdout
    assert match.group(1) == f"{last['test_error_pct']:.2f}"
    assert "epoch 2" in stdout


def test_evaluate_accepts_the_run_directory_that_train_printed(tmp_path, capsys):
    out = tmp_path / "run"
    stdout, _ = train_run(capsys, out, "--epochs", "1")
    assert f"run written to {out}" in stdout
    rc_file, by_file, _ = cli(capsys, "evaluate", out / "checkpoint.npz")
    rc_dir, by_dir, err = cli(capsys, "evaluate", out)
    assert rc_file == rc_dir == 0, err
    assert by_dir == by_file and "test error" in by_dir


def test_evaluate_a_directory_without_a_checkpoint_says_so(tmp_path, capsys):
    rc, stdout, err = cli(capsys, "evaluate", tmp_path)
    assert rc == 1 and stdout == ""
    assert f"{tmp_path} is a directory with no checkpoint.npz" in err
    assert "Errno" not in err and "Traceback" not in err


def test_evaluate_missing_checkpoint(tmp_path, capsys):
    path = tmp_path / "nowhere" / "checkpoint.npz"
    rc, stdout, err = cli(capsys, "evaluate", path)
    assert rc == 1
    assert "no checkpoint" in err and str(path) in err
    assert stdout == ""


def test_evaluate_corrupt_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    train_run(capsys, out, "--mode", "cdni", "--epochs", "1")
    path = out / "checkpoint.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    rc, stdout, err = cli(capsys, "evaluate", path)
    assert rc == 1
    assert "corrupt" in err and str(path) in err
    assert "Traceback" not in err and stdout == ""


# ---- argument errors ------------------------------------------------------------------------------------------


def test_unknown_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *TINY, "--out", str(tmp_path / "run"), "--frobnicate", "3"])
    assert e.value.code == 2
    assert "--frobnicate" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--lr", "-1"], "positive"),
        (["--lr", "nan"], "positive finite"),
        (["--lr", "inf"], "positive finite"),
        (["--lr", "fast"], "positive number"),
        (["--epochs", "0"], "positive integer"),
        (["--epochs", "2.5"], "positive integer"),
        (["--model", "fcn1"], "fcnN"),
        (["--model", "mlp3"], "fcnN"),
        (["--mode", "foo"], "invalid choice"),
        (["--data", "cifar"], "invalid choice"),
        (["--seed", "-1"], ">= 0"),
        (["--lr-decay-at", "0.5,1.5"], "between 0 and 1"),
    ],
)
def test_bad_values_exit_2_saying_what_was_expected(tmp_path, capsys, flags, expected):
    with pytest.raises(SystemExit) as e:
        main(["train", *TINY, "--out", str(tmp_path / "run"), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err and expected in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--batch", "1"], "batch must be >= 2"),
        (["--batch", "5000"], "larger than the training set"),
        (["--val-size", "3000"], "val_size"),
        (["--optimizer", "sgd", "--momentum", "1.5"], "momentum"),
    ],
)
def test_values_validated_later_return_1(tmp_path, capsys, flags, expected):
    rc, stdout, err = cli(capsys, "train", *TINY, "--out", tmp_path / "run", *flags)
    assert rc == 1
    assert expected in err and "Traceback" not in err
    assert stdout == ""
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_the_split_error_shows_what_to_type(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", *TINY, "--out", tmp_path / "run", "--model", "fcn8", "--split", "3,4")
    assert rc == 1
    assert "e.g. --split 2,6" in err and "got 3,4" in err, err
    assert "got (3, 4)" not in err


def fake_cupy_without_gpu(monkeypatch):
    import types

    cupy = types.ModuleType("cupy")
    cupy.is_available = lambda: False
    monkeypatch.setitem(sys.modules, "cupy", cupy)


@pytest.mark.parametrize("command", [["train", *TINY], ["bench"]])
def test_backend_flag_errors_name_the_flag(tmp_path, capsys, monkeypatch, command):
    fake_cupy_without_gpu(monkeypatch)
    extra = ["--out", tmp_path / "run"] if command[0] == "train" else []
    rc, stdout, err = cli(capsys, *command, *extra, "--backend", "cupy")
    assert rc == 1 and stdout == ""
    assert "--backend cupy asks for CuPy" in err and "no usable GPU" in err, err
    assert "MINIDNI_BACKEND" not in err, f"the flag was used, not the environment variable: {err}"


def test_no_command(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_documented_command_line_parses():
    args = build_parser().parse_args(
        "train --data mnist --model fcn3 --mode cdni --epochs 10 --batch 256 --seed 0 --out runs/cdni".split()
    )
    assert args.command == "train"
    assert (args.data, args.model, args.mode, args.epochs, args.batch, args.seed, args.out) == (
        "mnist", "fcn3", "cdni", 10, 256, 0, "runs/cdni"
    )  # fmt: skip
    assert args.resume is False and args.progress is True


def test_documented_resume_and_evaluate_lines_parse():
    args = build_parser().parse_args("train --out runs/cdni --epochs 20 --resume".split())
    assert args.resume is True and args.epochs == 20 and args.out == "runs/cdni"
    args = build_parser().parse_args("evaluate runs/cdni/checkpoint.npz".split())
    assert args.command == "evaluate" and args.checkpoint == "runs/cdni/checkpoint.npz"


# ---- bench ----------------------------------------------------------------------------------------------------


def test_bench_prints_json_lines(capsys):
    rc, stdout, _ = cli(capsys, "bench", "--modes", "cdni", "--steps", "1", "--repeats", "1")
    assert rc == 0
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    header, result = lines
    assert "cpu" in header and header["cpu_count"] == os.cpu_count()
    assert result["mode"] == "cdni"
    assert result["steps_per_s"] > 0
    assert result["gflops_achieved"] > 0
    assert result["matmul_fraction"] > 0


def test_bench_times_the_cnn_it_names(capsys):
    """cnn_bprop times CNN 3: its products are exactly those of two 5x5 convolutions (forward, dW; dx for the second,
    as a convolution of dout) and of the linear layer (forward, dW, dx), counted in FLOPs at batch 4."""
    rc, stdout, _ = cli(capsys, "bench", "--modes", "cnn_bprop", "--batch", "4", "--steps", "1", "--repeats", "1")
    assert rc == 0
    result = json.loads(stdout.splitlines()[-1])
    conv0 = 28 * 28 * (5 * 5 * 1) * 32  # per example: 784 positions, 25 inputs, 32 channels
    conv1 = 14 * 14 * (5 * 5 * 32) * 32
    linear = 32 * 7 * 7 * 10
    flops = 2 * 4 * (2 * conv0 + 3 * conv1 + 3 * linear)
    assert result["arch"] == "cnn" and result["threads"] >= 1 and "vs_torch" not in result
    assert result["gflop_per_step"] == round(flops / 1e9, 4)
    assert result["steps_per_timing"] == 1 and 0 < result["matmul_fraction"]


def test_bench_vs_torch_without_torch_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed: `import torch` fails
    rc, _, stderr = cli(capsys, "bench", "--modes", "bprop", "--vs", "torch", "--batch", "4", "--steps", "1",
                        "--repeats", "1")  # fmt: skip
    assert rc == 1 and "pip install -e '.[bench]'" in stderr


@pytest.mark.parametrize("modes", ["nope", "cdni,nope", ","])
def test_bench_unknown_mode(capsys, modes):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--modes", modes, "--steps", "1", "--repeats", "1"])
    assert e.value.code == 2
    assert "--modes" in capsys.readouterr().err


# ---- the module entry point -----------------------------------------------------------------------------------


def _python_m_minidni(tmp_path, *args):
    env = dict(os.environ, MINIDNI_DATA=str(tmp_path / "data-cache"))
    env.pop("MINIDNI_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-m", "minidni", *map(str, args)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_m_minidni_help(tmp_path):
    p = _python_m_minidni(tmp_path, "--help")
    assert p.returncode == 0, p.stderr
    usage = p.stdout.split("\n\n")[0]  # the usage line (wrapped)
    for command in ("train", "experiment", "evaluate", "bench", "plot", "doctor", "kernels", "data"):
        assert command in usage, f"{command} missing from the usage line:\n{usage}"


# ---- --help: every subcommand listed, every default shown -------------------------------------------------------


def subcommands():
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, action.choices


def test_the_usage_line_lists_every_registered_subcommand():
    parser, commands = subcommands()
    usage = " ".join(parser.format_usage().split())
    listed = re.search(r"\{([\w,-]+)\}", usage).group(1).split(",")
    assert listed == list(commands), f"usage lists {listed}; registered: {list(commands)}"
    assert "plot" in listed and "evaluate" in listed


def has_default(action):
    """An option whose default --help should state: a value (not a flag, not None for "not set")."""
    if action.default is None or isinstance(action.default, bool) or action.default is argparse.SUPPRESS:
        return False
    return bool(action.option_strings) or action.nargs == "?"


def test_every_option_states_its_default_once():
    _, commands = subcommands()
    for name, parser in commands.items():
        assert parser.formatter_class is HelpFormatter, f"{name} --help would not show defaults"
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.dest}: no help text (argparse then shows no default either)"
            text = formatter._expand_help(action)
            count = text.lower().count("default")
            where = f"{name} {'/'.join(action.option_strings) or action.dest}: {text!r}"
            assert count <= 1, f"says its default twice: {where}"
            if has_default(action):
                assert count == 1, f"does not say its default: {where}"
    train_help = " ".join(commands["train"].format_help().split())
    assert "examples per training step (default: 256)" in train_help
    assert "learning rate of the layers (default: 0.002)" in train_help
    assert "(default: 0.6,0.8 as in the paper" in train_help  # its own words, not "(default: (0.6, 0.8))" again
    assert "(default: (0.6, 0.8))" not in train_help


# ---- --threads --------------------------------------------------------------------------------------------------


def test_threads_is_on_every_subcommand_that_trains_or_times():
    _, commands = subcommands()
    for name in ("train", "experiment", "bench"):
        (action,) = [a for a in commands[name]._actions if "--threads" in a.option_strings]
        assert action.default == DEFAULT_THREADS
        assert "BLAS threads for the matrix products (default 1: does not collapse on a busy machine" in " ".join(
            commands[name].format_help().split()
        )


def test_threads_reaches_the_train_config(tmp_path, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, **_: seen.append(cfg) or [])
    for flags, expected in (([], DEFAULT_THREADS), (["--threads", "2"], 2)):
        assert cli(capsys, "train", *TINY, "--out", tmp_path / "run", *flags)[0] == 0
        assert seen[-1].threads == expected


def test_table1_takes_modes_seeds_and_an_sg_rate_and_the_others_refuse_them(tmp_path, capsys, monkeypatch):
    from minidni.experiments import feedforward

    seen = []
    monkeypatch.setattr(feedforward, "run_experiment", lambda *a, **kw: seen.append(kw))
    rc, _, _ = cli(capsys, "experiment", "table1", "--budget", "paper", "--models", "fcn3", "--modes", "cdni,bprop",
                   "--seeds", "0", "--sg-lr", "1.5e-7", "--out", tmp_path)  # fmt: skip
    assert rc == 0 and seen[-1]["modes"] == ("cdni", "bprop") and seen[-1]["seeds"] == (0,)
    assert seen[-1]["sg_lr"] == 1.5e-7
    cli(capsys, "experiment", "table1", "--out", tmp_path)
    assert not {"modes", "seeds", "sg_lr"} & set(seen[-1])  # table1's own runs unless told
    for argv in (["table1", "--modes", "bptt"], ["stochastic", "--seeds", "1"], ["unlock", "--sg-lr", "1e-5"],
                 ["copy", "--sg-lr", "1e-5"], ["staleness", "--sg-lr", "1e-5"]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(["experiment", *argv, "--out", str(tmp_path)])
        assert e.value.code == 2, argv
        assert "--" in capsys.readouterr().err


def test_threads_reaches_the_experiments_and_the_bench(tmp_path, capsys, monkeypatch):
    from minidni import cli as cli_module
    from minidni.experiments import bench, czarnecki, feedforward, recurrent

    calls = []
    monkeypatch.setattr(feedforward, "run_experiment", lambda *a, **kw: calls.append(("table1", kw["threads"])))
    monkeypatch.setattr(recurrent, "run_experiment", lambda *a, **kw: calls.append(("copy", kw["threads"])))
    monkeypatch.setattr(czarnecki, "run", lambda *a, **kw: calls.append(("czarnecki", None)))
    monkeypatch.setattr(bench, "run", lambda *a, **kw: calls.append(("bench", None)))
    monkeypatch.setattr(cli_module, "use_blas_threads", lambda n: calls.append(("use_blas_threads", n)))
    for command in (["experiment", "table1"], ["experiment", "copy"], ["experiment", "czarnecki"], ["bench"]):
        out = ["--out", tmp_path / "x"] if command[0] == "experiment" else []
        assert cli(capsys, *command, *out, "--threads", "2")[0] == 0
    assert calls == [("table1", 2), ("copy", 2), ("use_blas_threads", 2), ("czarnecki", None),
                     ("use_blas_threads", 2), ("bench", None)]  # fmt: skip


@pytest.mark.parametrize("command", ["train", "experiment", "bench"])
@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5"])
def test_a_bad_thread_count_is_refused_saying_what_was_expected(tmp_path, capsys, command, value):
    args = {"train": ["train", *TINY], "experiment": ["experiment", "table1", "--out", str(tmp_path / "x")],
            "bench": ["bench"]}[command]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main([*args, "--threads", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --threads: expected a whole number of BLAS threads >= 1, got '{value}'" in err, err


def test_python_m_minidni_exit_codes(tmp_path):
    p = _python_m_minidni(tmp_path, "evaluate", tmp_path / "missing.npz")
    assert p.returncode == 1
    assert "no checkpoint" in p.stderr and "Traceback" not in p.stderr
    p = _python_m_minidni(tmp_path, "train", "--epochs", "0")
    assert p.returncode == 2
    assert "positive integer" in p.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mode", "feedback"], "mode 'feedback' and signals go together"),
        (["--mode", "cdni", "--signals", "fa"], "mode 'feedback' and signals go together"),
        (["--mode", "feedback", "--signals", "fa,xx"], "unknown error signal 'xx'"),
        (["--mode", "feedback", "--signals", "fa,fa,fa"], "names 3 blocks; fcn3 has 2 hidden blocks"),
        (["--mode", "feedback", "--signals", "fa", "--p-update", "0.5"], "no cnn model, --unlock, --p-update"),
    ],
)
def test_feedback_mode_flags_are_checked(tmp_path, capsys, flags, message):
    _, stderr = train_run(capsys, tmp_path / "run", *flags, expect=1)
    assert message in stderr


def test_feedback_mode_trains_and_logs_each_signals_alignment(tmp_path, capsys):
    train_run(capsys, tmp_path / "run", "--mode", "feedback", "--signals", "dfa,sg", "--epochs", "1", "--diagnostics")
    (m,) = read_metrics(tmp_path / "run")
    assert len(m["sg_cosine"]) == 2 and len(m["signal_norm_ratio"]) == 2
    assert m["sg_loss"][0] is None and m["sg_loss"][1] > 0  # DFA learns nothing; the SG module regresses
