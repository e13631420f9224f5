"""The training run: data, model, epochs, metrics, plots and resumable checkpoints in one output directory.

    cfg = TrainConfig(model="fcn3", mode="cdni", epochs=10, out="runs/cdni")
    history = train(cfg)

The output directory holds
    config.json     the configuration, library versions, git revision and BLAS threads of the run
    metrics.jsonl   one JSON object per epoch (epoch, train_loss, test_error_pct, seconds, ...)
    curves.png      the learning curves
    checkpoint.npz  everything needed to continue exactly (parameters, optimiser moments, RNG state, epoch)

Every file is written atomically. `train(cfg, resume=True)` continues from the checkpoint and produces the same
metrics, bit for bit, as a run that was never interrupted (except the wall-clock `seconds`).

What this module deliberately is not: a general experiment framework. It trains the FCN and CNN classifiers of
minidni.dni.network (with stochastic updates or complete unlock if asked) on the data sets of minidni.data.datasets;
the paper's experiments, as batches of such runs, are minidni.experiments.feedforward.
"""

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

from minidni.version import __version__
from minidni.core.backend import backend_name, xp
from minidni.data.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    read_jsonl,
    restore_arrays,
    save_checkpoint,
    write_jsonl,
)
from minidni.core.functional import check_labels
from minidni.dni.network import MODES, SG_TARGETS, build_network, check_split
from minidni.dni.feedback import SIGNALS, FeedbackNetwork, build_feedback_network
from minidni.core.optim import StepSchedule
from minidni.runs.plots import plot_learning_curves
from minidni.dni.stochastic import check_p_update
from minidni.runs.threads import DEFAULT_THREADS, check_threads, use_blas_threads
from minidni.runs.timeline import Timeline, plot_timeline, write_chrome_trace

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
CURVES = "curves.png"
TIMELINE = "timeline"  # --timeline N: timeline.json (the events), timeline.png (their Gantt chart) and
#                        timeline.trace.json (the Chrome trace event format: open it in ui.perfetto.dev)

# configuration fields that may change when a run is resumed; everything else must match the checkpoint
# (max_inflight and wait_timeout are read only by a run in workers, which cannot be resumed)
RESUMABLE_CHANGES = (
    "epochs", "out", "progress", "data_dir", "kernels", "timeline", "max_inflight", "wait_timeout", "threads"
)
PLOT_EVERY_EPOCH_UNTIL = 100  # learning curves redrawn after each of the first 100 epochs,
PLOT_INTERVAL_S = 60.0  # then at most once a minute (and after the last epoch)
KERNELS = ("auto", "fused", "unfused", "emulator")
WORKERS = ("process", "thread", "mpi")  # where a run's blocks can live: minidni.parallel.workers
TRAIN_MODES = MODES + ("feedback",)  # feedback: minidni.dni.feedback's per-block error signals (bp, fa, dfa, sg)
N_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "spirals": 3}
DEFAULT_VAL_SIZE = {"mnist": 5000, "fashion-mnist": 5000, "cifar10": 5000, "spirals": 300}


@dataclasses.dataclass
class TrainConfig:
    data: str = "mnist"  # mnist | fashion-mnist | cifar10 (needs its archive) | spirals (2-D points, FCNs only)
    data_label: str = None  # what the data are called in logs, titles and tables when train() is given arrays
    #                         (data=) that are not cfg.data itself but shaped like it, e.g. "stand-in" (None: data)
    model: str = "fcn3"  # "fcnN": N-1 hidden blocks (Linear -> BN -> ReLU) + a linear output layer;
    #                      "cnnN": N-1 conv blocks (5x5 conv -> BN -> max pool -> ReLU) + a linear output layer
    mode: str = "cdni"  # bprop | nobprop | dni | cdni | feedback (an error-signal strategy per block: `signals`)
    signals: str = None  # mode feedback (minidni.dni.feedback): bp | fa | dfa | sg per hidden block, comma-separated,
    #                      or one name for every block, e.g. "dfa" or "fa,sg"
    sg: str = "auto"  # synthetic-gradient module: auto (dni: mlp, cdni: linear, as in the paper) | linear | mlp
    sg_hidden: int = 1024  # width of the hidden layers of an mlp SG module (paper: 1024)
    sg_layers: int = 2  # number of hidden layers of an mlp SG module (paper: 2)
    sg_target: str = "bootstrap"  # bootstrap (the paper) | true (SG modules regress on true gradients)
    hidden: int = 256  # units per hidden block (paper: 256)
    channels: int = 32  # cnnN: channels of every conv block
    sg_channels: int = 32  # cnnN: channels of the hidden convs of a convolutional SG module
    p_update: float = 1.0  # < 1: stochastic updates, each block updates after a forward pass with this probability
    unlock: bool = False  # complete unlock: synthetic inputs I_i(x) for every block after the first (dni/cdni, fcn)
    input_hidden: int = 1024  # width of the hidden layer of a synthetic-input model
    input_lr: float = None  # learning rate of the synthetic-input models (None: lr)
    batchnorm: bool = True
    optimizer: str = "adam"  # adam | sgd (with momentum)
    sg_optimizer: str = None  # the SG modules' optimiser, adam | sgd (None: the same as `optimizer`)
    lr: float = 2e-3  # learning rate of the network's layers (chosen on the validation split, docs/results.md)
    sg_lr: float = 1e-5  # learning rate of the SG modules: their targets are O(1/batch), see docs/dni.md
    sg_scale: float = 1.0  # SG modules regress onto sg_scale x the gradient (see SyntheticGradient.update)
    momentum: float = 0.9  # for sgd
    lr_decay_at: tuple = (0.6, 0.8)  # fractions of the run after which every lr is multiplied by lr_gamma
    lr_gamma: float = 0.1  # (the paper: / 10 at 300k and 400k of 500k iterations, i.e. at 0.6 and 0.8)
    epochs: int = 10
    iterations: int = None  # if set, the run stops after exactly this many steps (its last epoch cut short) and
    #                         lr_decay_at are fractions of it: the paper's 500k steps, / 10 at exactly 300k and 400k
    batch: int = 256
    seed: int = 0
    val_size: int = None  # validation rows carved from the training set, to tune on (None: mnist 5000, spirals 300)
    train_subset: int = 0  # if > 0, train on only this many (shuffled) training rows: quick runs and tests
    test_subset: int = 0  # if > 0, evaluate on only the first this-many test rows
    diagnostics: bool = False  # log cosine / relative error of synthetic vs true gradients each epoch
    timeline: int = 0  # record the run's first N steps block by block (minidni.runs.timeline): timeline.json / .png
    sg_clip: float = None  # rescale synthetic gradients whose norm exceeds this (None: never)
    sg_max_norm: float = 1e3  # stop the run if a synthetic gradient's norm exceeds this
    data_dir: str = None  # data cache directory (default: $MINIDNI_DATA or ~/.cache/minidni)
    out: str = "runs/run"
    progress: bool = True  # show a progress bar
    split: str = None  # fcnN: layers per block, e.g. "3,5": an FCN 8 as two blocks (None: one layer per block)
    workers: str = None  # run every block in a worker of its own (minidni.parallel.workers): "process" or
    #                      "thread" on this machine, "mpi" (--distributed) one MPI rank per block; None: one process,
    #                      in order
    delay: int = None  # workers: each SG module trains on the target of the step `delay` steps back, waiting for
    #                    it (deterministic: the same numbers in every worker layout); None: asynchronous
    max_inflight: int = 2  # asynchronous workers: a block waits when more than this many targets are outstanding
    wait_timeout: float = 120.0  # workers: seconds any worker waits for a message before it gives up (no hangs)
    kernels: str = "auto"  # how the step runs: auto (fused CUDA kernels on a GPU for dni/cdni, else the engine's
    #                        own ops) | fused | unfused | emulator (the CUDA kernels on the CPU emulator: slow)
    threads: int = DEFAULT_THREADS  # BLAS threads for the matrix products (minidni.runs.threads: why 1 by default)

    def validate(self):
        """Raise ValueError naming the first bad field and what was expected."""
        if self.data not in N_CLASSES:
            raise ValueError(f"data must be one of {tuple(N_CLASSES)}, got {self.data!r}")
        arch, _ = parse_model(self.model)
        if arch == "cnn" and self.data == "spirals":
            raise ValueError("a CNN needs image data (mnist, fashion-mnist or cifar10); spirals are 2-D points")
        check_p_update(self.p_update)
        if self.unlock and (self.mode not in ("dni", "cdni") or arch != "fcn"):
            raise ValueError(
                f"unlock (complete unlock) needs mode dni or cdni and an fcn model, got {self.mode} {self.model}"
            )
        if self.unlock and self.p_update < 1:
            raise ValueError("unlock and p_update < 1 are separate experiments; choose one")
        if (self.unlock or self.p_update < 1) and self.sg_target != "bootstrap":
            raise ValueError("unlock and p_update < 1 bootstrap the SG targets: sg_target must be 'bootstrap'")
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if (self.mode == "feedback") != (self.signals is not None):
            raise ValueError("mode 'feedback' and signals go together: --mode feedback --signals bp|fa|dfa|sg[,...]")
        if self.mode == "feedback":
            names = feedback_signals(self.signals, parse_model(self.model)[1])
            if arch != "fcn" or self.unlock or self.p_update < 1 or self.kernels not in ("auto", "unfused"):
                raise ValueError(
                    f"mode feedback ({','.join(names)}) trains FCNs with the engine's own locked step: no cnn model, "
                    "--unlock, --p-update or CUDA kernels"
                )
        if self.sg not in ("auto", "linear", "mlp"):
            raise ValueError(f"sg must be 'auto', 'linear' or 'mlp', got {self.sg!r}")
        if self.sg_target not in SG_TARGETS:
            raise ValueError(f"sg_target must be one of {SG_TARGETS}, got {self.sg_target!r}")
        for name in ("optimizer", "sg_optimizer"):
            if getattr(self, name) not in ("adam", "sgd") and not (
                name == "sg_optimizer" and self.sg_optimizer is None
            ):
                raise ValueError(f"{name} must be 'adam' or 'sgd', got {getattr(self, name)!r}")
        for name in ("sg_hidden", "sg_layers", "hidden", "epochs", "channels", "sg_channels", "input_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch < 2:
            raise ValueError(f"batch must be >= 2 (batch norm needs two rows), got {self.batch}")
        if self.input_lr is not None and not (math.isfinite(self.input_lr) and self.input_lr > 0):
            raise ValueError(f"input_lr must be a positive finite number or None, got {self.input_lr}")
        for name in ("lr", "sg_lr", "sg_scale", "sg_max_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value}")
        if self.sg_clip is not None and not (math.isfinite(self.sg_clip) and self.sg_clip > 0):
            raise ValueError(f"sg_clip must be a positive finite number or None, got {self.sg_clip}")
        if self.iterations is not None and not (isinstance(self.iterations, int) and self.iterations >= 1):
            raise ValueError(f"iterations must be a positive integer or None, got {self.iterations!r}")
        for name in ("val_size", "train_subset", "test_subset", "timeline"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if any(not 0 < f < 1 for f in self.lr_decay_at):
            raise ValueError(
                f"lr_decay_at must hold fractions of the run strictly between 0 and 1, got {self.lr_decay_at}"
            )
        check_threads(self.threads)
        if self.data_label is not None and not (isinstance(self.data_label, str) and self.data_label.strip()):
            raise ValueError(f"data_label must be a non-empty name or None, got {self.data_label!r}")
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {self.kernels!r}")
        if not (math.isfinite(self.lr_gamma) and 0 < self.lr_gamma <= 1):
            raise ValueError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if self.split is not None:
            if arch != "fcn" or self.mode == "feedback" or self.unlock:
                raise ValueError(f"split (layers per block) is for fcn models in bprop/nobprop/dni/cdni without "
                                 f"unlock, got {self.model} {self.mode}{' unlock' if self.unlock else ''}")  # fmt: skip
            check_split(parse_split(self.split), parse_model(self.model)[1])
        if self.workers is not None:
            check_workers_config(self)
        return self


def check_workers_config(cfg):
    """The settings a run in workers (minidni.parallel.workers) supports; ValueError naming the first that is not."""
    if cfg.workers not in WORKERS:
        raise ValueError(f"workers must be one of {WORKERS} (or None for one process), got {cfg.workers!r}")
    if cfg.mode not in ("bprop", "dni", "cdni"):
        raise ValueError(f"a run in workers trains mode bprop, dni or cdni, got {cfg.mode!r}")
    if cfg.p_update < 1 or cfg.unlock:
        raise ValueError("stochastic updates (--p-update) and complete unlock run in one process, not in workers")
    if cfg.iterations is not None:
        raise ValueError("--iterations (a run cut at an exact step) runs in one process, not in workers")
    if cfg.sg_target != "bootstrap":
        raise ValueError("in workers the SG modules learn from bootstrapped targets only (sg_target='bootstrap')")
    if cfg.kernels not in ("auto", "unfused"):
        raise ValueError(f"workers run the engine's own step (kernels auto or unfused), got {cfg.kernels!r}")
    if cfg.diagnostics:
        raise ValueError("--diagnostics needs every block in one process; a run in workers logs staleness instead")
    if cfg.delay is not None and (isinstance(cfg.delay, bool) or not isinstance(cfg.delay, int) or cfg.delay < 0):
        raise ValueError(f"delay must be an integer >= 0 (steps) or None (asynchronous), got {cfg.delay!r}")
    if isinstance(cfg.max_inflight, bool) or not isinstance(cfg.max_inflight, int) or cfg.max_inflight < 1:
        raise ValueError(f"max_inflight must be an integer >= 1, got {cfg.max_inflight!r}")
    if not (isinstance(cfg.wait_timeout, (int, float)) and 0 < cfg.wait_timeout < float("inf")):
        raise ValueError(f"wait_timeout must be a positive number of seconds, got {cfg.wait_timeout!r}")


def feedback_signals(signals, n_layers):
    """'fa,sg' -> ('fa', 'sg'); one name is repeated for every hidden block of an n_layers-deep FCN."""
    names = tuple(s.strip() for s in str(signals).split(","))
    if len(names) == 1:
        names = names * (n_layers - 1)
    unknown = [n for n in names if n not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown error signal {unknown[0]!r} in signals {signals!r}; expected names from {SIGNALS}")
    if len(names) != n_layers - 1:
        raise ValueError(
            f"signals {signals!r} names {len(names)} blocks; fcn{n_layers} has {n_layers - 1} hidden blocks"
        )
    return names


def parse_model(model):
    """'fcn3' -> ('fcn', 3); 'cnn4' -> ('cnn', 4)."""
    ok = isinstance(model, str) and model[:3] in ("fcn", "cnn") and model[3:].isdigit() and int(model[3:]) >= 2
    if not ok:
        raise ValueError(
            f"model must be 'fcnN' or 'cnnN' with N >= 2 (e.g. fcn3 = 2 hidden blocks + output), got {model!r}"
        )
    return model[:3], int(model[3:])


def parse_split(split):
    """'3,5' -> (3, 5); None -> None. Each entry must be an integer (check_split checks the rest)."""
    if split is None:
        return None
    parts = [p.strip() for p in str(split).split(",")]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"split must be layers per block as comma-separated integers, e.g. '3,5', got {split!r}")
    return tuple(int(p) for p in parts)


def depth(model):
    """'fcn3' -> 3."""
    return parse_model(model)[1]


# -------------------------------------------------------------------------------------------------------------
# data


def load_data(cfg, log=print):
    """(x_train, y_train, x_val, y_val, x_test, y_test) as arrays of the active backend, features float32."""
    from minidni.data import datasets as data

    images = parse_model(cfg.model)[0] == "cnn"  # a CNN reads (N, C, H, W) images, an FCN flat rows
    if cfg.data in ("mnist", "fashion-mnist", "cifar10"):
        ds = data.load_dataset(cfg.data, cache_dir=cfg.data_dir, log=log, images=images)
    else:  # spirals: a small synthetic problem for tests and tutorials, with its own held-out test points
        ds = data.load_dataset(
            "spirals", n_per_class=1000, n_test_per_class=300, n_classes=N_CLASSES["spirals"], seed=cfg.seed
        )
    x, y, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    val_size = DEFAULT_VAL_SIZE[cfg.data] if cfg.val_size is None else cfg.val_size
    x_tr, y_tr, x_val, y_val = data.train_val_split(x, y, val_size, cfg.seed)
    if cfg.train_subset:
        x_tr, y_tr = x_tr[: cfg.train_subset], y_tr[: cfg.train_subset]
    if cfg.test_subset:
        x_test, y_test = x_test[: cfg.test_subset], y_test[: cfg.test_subset]
    if x_tr.shape[0] < cfg.batch:
        raise ValueError(f"batch {cfg.batch} is larger than the training set ({x_tr.shape[0]} rows)")
    backend = xp()
    return tuple(backend.asarray(a) for a in (x_tr, y_tr, x_val, y_val, x_test, y_test))


def build_from_config(cfg, in_shape, n_classes):
    """The network of cfg for inputs of shape in_shape: (D,) rows for an FCN, (C, H, W) images for a CNN."""
    arch, n_layers = parse_model(cfg.model)
    if cfg.mode == "feedback":
        return build_feedback_network(
            signals=feedback_signals(cfg.signals, n_layers),
            d_in=int(np.prod(in_shape)),
            hidden=cfg.hidden,
            n_classes=n_classes,
            batchnorm=cfg.batchnorm,
            sg="linear" if cfg.sg == "auto" else cfg.sg,  # auto: cDNI's linear module, fed the label
            sg_hidden=cfg.sg_hidden,
            sg_layers=cfg.sg_layers,
            optimizer=cfg.optimizer,
            lr=cfg.lr,
            sg_lr=cfg.sg_lr,
            momentum=cfg.momentum,
            max_norm=cfg.sg_max_norm,
            seed=cfg.seed,
        )
    return build_network(
        depth=n_layers,
        arch=arch,
        in_shape=tuple(in_shape) if arch == "cnn" else None,
        channels=cfg.channels,
        sg_channels=cfg.sg_channels,
        p_update=cfg.p_update,
        unlock=cfg.unlock,
        input_hidden=cfg.input_hidden,
        input_lr=cfg.input_lr,
        split=parse_split(cfg.split),
        mode=cfg.mode,
        sg=cfg.sg,
        d_in=int(np.prod(in_shape)),
        hidden=cfg.hidden,
        n_classes=n_classes,
        batchnorm=cfg.batchnorm,
        sg_hidden=cfg.sg_hidden,
        sg_layers=cfg.sg_layers,
        sg_target=cfg.sg_target,
        optimizer=cfg.optimizer,
        sg_optimizer=cfg.sg_optimizer,
        lr=cfg.lr,
        sg_lr=cfg.sg_lr,
        sg_scale=cfg.sg_scale,
        momentum=cfg.momentum,
        max_norm=cfg.sg_max_norm,
        clip=cfg.sg_clip,
        seed=cfg.seed,
    )


def attach_kernels(net, choice, batch=None, log=print):
    """Route net's training step through the CUDA kernels (minidni.cuda) or not; returns (what was chosen, record).

    auto: the fused kernels on a GPU (CuPy backend) for the steps that have a fused form (dni/cdni with
    bootstrapped targets), each operation at each of the run's shapes by the kernel or by the array library's own
    ops, whichever this GPU runs faster (minidni.cuda.autotune, measured once per GPU and cached; needs `batch`);
    the engine's own array ops otherwise. The results are the same step either way, to float32 rounding; the
    kernels are there for speed. 'fused' runs every kernel regardless. 'emulator' runs the kernels on the CPU
    emulator: a way to watch them train without a GPU, ~35x slower than NumPy (~47 s against ~1.3 s per MNIST
    FCN3 epoch, 2 cores). The record is None, or for auto on a GPU the plan with its timings (for config.json).
    """
    if choice == "unfused" or isinstance(net, FeedbackNetwork):
        return "unfused", None
    tune = False
    if choice == "auto":
        from minidni.cuda.fused import fused_form_problem

        if backend_name() != "cupy" or fused_form_problem(net) is not None:
            return "unfused", None
        choice, tune = "fused", True
    if choice == "fused" and backend_name() != "cupy":
        raise ValueError(
            "--kernels fused runs the CUDA kernels on a GPU: select --backend cupy "
            "(or --kernels emulator to run the same kernels on the CPU emulator, slowly)"
        )
    if choice == "emulator" and backend_name() != "numpy":
        raise ValueError("--kernels emulator runs the kernels on NumPy arrays: select --backend numpy")
    from minidni.cuda.fused import use_kernels
    from minidni.cuda.loader import get_kernels

    kernels = get_kernels("cupy" if choice == "fused" else "emulator")
    use_kernels(net, kernels)  # ValueError if no fused form
    if not tune:
        return choice, None
    from minidni.cuda.autotune import plan_for

    plan, record = plan_for(net.fused_step, batch, kernels, log=log)
    use_kernels(net, kernels, plan=plan)
    kept = sum(v != "unfused" for v in plan.values())
    return f"auto ({kept} of {len(plan)} operations by their kernel, the rest unfused)", record


# -------------------------------------------------------------------------------------------------------------
# run bookkeeping


def environment():
    """What produced a run: versions, git revision, BLAS and its thread count."""
    info = {
        "minidni": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "backend": backend_name(),
        "platform": platform.platform(),
        "git_revision": None,
    }
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            info["git_revision"] = rev.stdout.strip()
            status = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5)  # fmt: skip
            info["git_dirty"] = bool(status.stdout.strip())  # uncommitted changes: the revision is not the whole story
    except (OSError, subprocess.SubprocessError):
        pass
    info["blas"] = blas_info()
    return info


def blas_info():
    """The BLAS libraries NumPy uses, with version, architecture and thread count (via threadpoolctl)."""
    from threadpoolctl import threadpool_info

    return [
        {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
        for p in threadpool_info()
        if p.get("user_api") == "blas"
    ]


def config_dict(cfg):
    d = dataclasses.asdict(cfg)
    d["lr_decay_at"] = list(d["lr_decay_at"])
    return d


def read_metrics(out):
    return read_jsonl(os.path.join(out, METRICS))


def write_metrics(out, metrics):
    write_jsonl(os.path.join(out, METRICS), metrics)


def run_steps(cfg, n_batches):
    """How many steps the run trains: cfg.iterations if set, else cfg.epochs epochs of n_batches steps."""
    if cfg.iterations is None:
        return cfg.epochs * n_batches
    if cfg.iterations > cfg.epochs * n_batches:
        raise ValueError(
            f"iterations={cfg.iterations} needs at least {math.ceil(cfg.iterations / n_batches)} epochs of "
            f"{n_batches} steps, got epochs={cfg.epochs}"
        )
    return cfg.iterations


def lr_milestones(cfg, n_batches):
    """The steps after which every learning rate is multiplied by cfg.lr_gamma: the fractions cfg.lr_decay_at
    of the run's steps (run_steps; a run in workers uses the same ones)."""
    return [max(1, round(f * run_steps(cfg, n_batches))) for f in cfg.lr_decay_at]


def network_state(net, shuffle_rng, epoch, step, milestones, cfg):
    """The checkpoint: every array of the network, the optimisers' scalars, the schedule and the shuffling RNG."""
    meta = {
        "epoch": epoch,
        "step": step,
        "lr_milestones": milestones,
        "config": config_dict(cfg),
        "optimizers": {name: {"t": opt.t, "lr": opt.lr} for name, opt in net.optimizers().items()},
        "rng": shuffle_rng.bit_generator.state,
        "gate_rng": net.gate.state() if net.gate is not None else None,  # the coins of stochastic updates
    }
    return net.state_arrays(), meta


def _restore(net, shuffle_rng, arrays, meta):
    restore_arrays(net.state_arrays(), arrays)
    for name, opt in net.optimizers().items():
        opt.t = int(meta["optimizers"][name]["t"])
        opt.lr = float(meta["optimizers"][name]["lr"])
    shuffle_rng.bit_generator.state = meta["rng"]
    if net.gate is not None:
        net.gate.set_state(meta["gate_rng"])


def _check_resumable(cfg, meta):
    saved = meta["config"]
    now = config_dict(cfg)
    diffs = [k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in diffs)
        raise CheckpointError(f"cannot resume: the configuration differs from the checkpoint's ({detail})")
    if cfg.iterations is not None and meta["step"] >= cfg.iterations:
        raise CheckpointError(
            f"cannot resume: the checkpoint is at step {meta['step']}, already >= iterations={cfg.iterations}"
        )
    if meta["epoch"] >= cfg.epochs:
        raise CheckpointError(
            f"cannot resume: the checkpoint is at epoch {meta['epoch']}, already >= epochs={cfg.epochs}"
        )


# -------------------------------------------------------------------------------------------------------------
# the loop


def train(cfg, resume=False, log=print, data=None):
    """Train as configured; returns the list of per-epoch metrics. `data` (the tuple of load_data) skips loading.
    The matrix products use cfg.threads BLAS threads for the run (the limit before it is restored after)."""
    cfg.validate()
    if cfg.workers is not None:  # the parallel layer, above this one, trains such a run
        raise ValueError(
            f"workers={cfg.workers!r}: a run whose blocks are in workers is trained by "
            "minidni.parallel.workers.train_in_workers(cfg) (python -m minidni train --workers picks it); "
            "train() runs every block in this process"
        )
    if cfg.data_label is not None and data is None:
        raise ValueError(f"data_label={cfg.data_label!r} names arrays passed as train(cfg, data=...); without them "
                         f"the run loads {cfg.data!r} itself and is called that")  # fmt: skip
    with use_blas_threads(cfg.threads):
        return _train(cfg, resume, log, data)


def _train(cfg, resume, log, data):
    out = cfg.out
    ckpt_path = os.path.join(out, CHECKPOINT)
    if not resume and (os.path.exists(ckpt_path) or os.path.exists(os.path.join(out, METRICS))):
        raise FileExistsError(
            f"{out} already holds a run (checkpoint or metrics); pass --resume to continue it or choose another --out"
        )
    x_tr, y_tr, x_val, y_val, x_te, y_te = data if data is not None else load_data(cfg, log)
    # Every label in range, checked once per run so that no step needs to: the fused CUDA step would read labels
    # back from the GPU on every batch otherwise, a kernel given an out-of-range label reads out of bounds, and
    # CuPy's own indexing wraps such a label around without an error.
    for y in (y_tr, y_val, y_te):
        check_labels(y, N_CLASSES[cfg.data])  # one read per set (minidni.cuda.ops)
    net = build_from_config(cfg, x_tr.shape[1:], N_CLASSES[cfg.data])
    chosen, kernel_record = attach_kernels(net, cfg.kernels, cfg.batch, log)
    if backend_name() != "numpy" or cfg.kernels != "auto":  # the plain NumPy step needs no announcement
        log(f"training step: {chosen} ({backend_name()} backend)")
    shuffle_rng = np.random.default_rng([cfg.seed, 1])  # separate from the init RNG, saved in checkpoints
    # the held-out batch for --diagnostics: the first `batch` validation rows - of the training batch size,
    # because a gradient of a batch-mean loss scales with 1/B, and never training rows, which the SG modules
    # have been fitted on
    if cfg.diagnostics and x_val.shape[0] < cfg.batch:
        raise ValueError(
            f"--diagnostics measures the synthetic gradients on a held-out batch of {cfg.batch} validation rows, "
            f"but the validation split has {x_val.shape[0]}: raise --val-size to at least {cfg.batch} or lower --batch"
        )
    diag_x, diag_y = x_val[: cfg.batch], y_val[: cfg.batch]

    n_batches = x_tr.shape[0] // cfg.batch  # the last partial batch is dropped: every step sees `batch` rows
    milestones = lr_milestones(cfg, n_batches)

    start_epoch, step, metrics = 0, 0, []
    if resume and not os.path.exists(ckpt_path) and os.path.exists(os.path.join(out, METRICS)):
        # the run stopped before its first checkpoint was written: there is nothing to continue, so start over
        log(f"{out} has metrics but no checkpoint (stopped during epoch 1); starting the run again")
        write_metrics(out, [])
        resume = False
    if resume:
        arrays, meta = load_checkpoint(ckpt_path)
        _check_resumable(cfg, meta)
        _restore(net, shuffle_rng, arrays, meta)
        start_epoch, step = meta["epoch"], meta["step"]
        if meta["lr_milestones"] != milestones:  # --epochs changed: the schedule already begun is kept
            log(
                f"keeping the checkpoint's learning-rate milestones (steps {meta['lr_milestones']}); "
                f"a new run of {cfg.epochs} epochs would use {milestones}"
            )
            milestones = meta["lr_milestones"]
        # epochs logged after the checkpoint was written (a crash between the two) are dropped and redone
        metrics = [m for m in read_metrics(out) if m["epoch"] <= start_epoch]
        write_metrics(out, metrics)
        log(f"resuming {out} from epoch {start_epoch} (step {step})")
    schedule = StepSchedule(milestones, cfg.lr_gamma)
    after_step = _timeline_recorder(net, cfg, step) if cfg.timeline else None
    run_info = {"config": config_dict(cfg), "environment": environment()}
    if kernel_record is not None:  # --kernels auto on a GPU: which operations run by kernel, and why
        run_info["kernels"] = kernel_record
    atomic_write(os.path.join(out, CONFIG), json.dumps(run_info, indent=2))

    log(
        f"training {cfg.model} ({cfg.mode}{', sg=' + cfg.sg if cfg.mode in ('dni', 'cdni') else ''}"
        f"{', signals=' + cfg.signals if cfg.signals else ''}) on {cfg.data_label or cfg.data}: "
        f"{x_tr.shape[0]} train / {x_val.shape[0]} val / {x_te.shape[0]} test rows, {n_batches} steps per epoch"
    )
    total_steps = run_steps(cfg, n_batches)
    last_plot = -math.inf
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        if step >= total_steps:  # --iterations reached (a resumed run given more epochs than it needs)
            break
        t0 = time.perf_counter()
        batches = min(n_batches, total_steps - step)  # the last epoch of an --iterations run is cut short
        bar = _progress(range(batches), cfg.progress, f"epoch {epoch}/{cfg.epochs}")
        record = {"epoch": epoch}
        trained, step = _train_epoch(net, x_tr, y_tr, shuffle_rng, schedule, step, cfg.batch, bar, after_step)
        record.update(trained)
        record["val_error_pct"] = net.error_pct(x_val, y_val) if x_val.shape[0] else None
        record["test_error_pct"] = net.error_pct(x_te, y_te)  # reported, never used to choose anything
        if cfg.diagnostics and cfg.mode in ("dni", "cdni"):
            align = net.gradient_alignment(diag_x, diag_y)
            record["sg_cosine"], record["sg_rel_error"] = align["cosine"], align["rel_error"]
        if cfg.diagnostics and cfg.mode == "feedback":  # every strategy's signal against the true gradient
            align = net.alignment(diag_x, diag_y)
            record["sg_cosine"], record["signal_norm_ratio"] = align["cosine"], align["norm_ratio"]
        record["seconds"] = time.perf_counter() - t0
        metrics.append(record)
        # metrics first, checkpoint second: a crash in between is repaired on resume (see above)
        write_metrics(out, metrics)
        arrays, meta = network_state(net, shuffle_rng, epoch, step, milestones, cfg)
        save_checkpoint(ckpt_path, arrays, meta)
        log(epoch_summary(record))
        # the curves after every epoch, except in runs of thousands of short epochs (the paper's schedule), where
        # redrawing them would cost more than the epoch: there at most once a minute, and after the last epoch
        last = epoch == cfg.epochs or step >= total_steps
        if last or time.perf_counter() - last_plot >= PLOT_INTERVAL_S or epoch <= PLOT_EVERY_EPOCH_UNTIL:
            plot_learning_curves(metrics, os.path.join(out, CURVES),
                                 title=f"{cfg.model} {cfg.mode} on {cfg.data_label or cfg.data}")  # fmt: skip
            last_plot = time.perf_counter()
    if after_step is not None:
        after_step(last=True)  # a run shorter than --timeline steps still writes what it recorded
    return metrics


def _timeline_recorder(net, cfg, step):
    """Attach a Timeline to `net` for the first cfg.timeline steps of the run; returns the function to call after
    every step, which writes timeline.json and timeline.png (atomically) and detaches it when enough are in."""
    if step > 0:
        return None  # a resumed run: its first steps were recorded (or not) by the run that made them
    timeline = Timeline()
    net.record_timeline(timeline)

    def after_step(last=False):
        if net.timeline is not None and (timeline.steps >= cfg.timeline or last):
            net.record_timeline(None)
            runs = {f"{cfg.model} {cfg.mode}": timeline.events}
            atomic_write(os.path.join(cfg.out, TIMELINE + ".json"), timeline.to_json())
            write_chrome_trace(runs, os.path.join(cfg.out, TIMELINE + ".trace.json"))  # the warm-up step marked
            plot_timeline(runs, os.path.join(cfg.out, TIMELINE + ".png"))  # the warm-up step left out

    return after_step


def _train_epoch(net, x, y, shuffle_rng, schedule, step, batch, bar, after_step=None):
    """One pass over (x, y) in a fresh random order; returns the epoch's training record and the new step count."""
    perm = shuffle_rng.permutation(x.shape[0])
    loss_sum, factor = 0.0, None
    sums = {}  # per-block sums of "sg_loss" / "input_loss" and how many steps contributed to each
    updates = np.zeros(len(net.blocks))  # how many steps each block updated in (stochastic updates)
    for b in bar:
        if schedule.factor(step) != factor:  # learning rates change only at the schedule's milestones
            factor = schedule.factor(step)
            net.set_lr_factor(factor)
        idx = perm[b * batch : (b + 1) * batch]
        result = net.train_step(x[idx], y[idx], labels_checked=True)  # (batch, D_in), (batch,): see check_labels
        step += 1
        if after_step is not None:
            after_step()
        loss_sum += result["loss"]
        for key in ("sg_loss", "input_loss"):
            for i, v in enumerate(result.get(key, [])):
                if v is not None:  # None: under stochastic updates the module got no target on this step
                    total, count = sums.setdefault(key, {}).get(i, (0.0, 0))
                    sums[key][i] = (total + v, count + 1)
        if "updated" in result:
            updates[result["updated"]] += 1
        if b % 20 == 0:
            bar.set_postfix(loss=f"{result['loss']:.4f}")
    n = len(bar)
    output = net.blocks[-1] if isinstance(net, FeedbackNetwork) else net.blocks[-1].layers  # its Sequential
    record = {"step": step, "train_loss": loss_sum / n, "lr": output.optimizer.lr}
    for key, per_block in sums.items():
        record[key] = [per_block[i][0] / per_block[i][1] if i in per_block else None for i in range(len(net.hidden))]
    if net.gate is not None:
        record["update_frac"] = (updates / n).tolist()  # ~p_update per block under dni; p^(N-i) under bprop
    return record, step


def epoch_summary(r):
    s = f"epoch {r['epoch']:3d}  loss {r['train_loss']:.4f}  "
    if r.get("val_error_pct") is not None:
        s += f"val err {r['val_error_pct']:.2f}%  "
    s += f"test err {r['test_error_pct']:.2f}%  {r['seconds']:.1f}s"
    if r.get("sg_cosine"):
        s += "  cos(syn,true) " + " ".join(f"{c:.2f}" for c in r["sg_cosine"])
    return s


def _progress(iterable, enabled, desc):
    if not enabled:
        return _NoBar(iterable)
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


class _NoBar:
    """The progress bar's interface, doing nothing."""

    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def __len__(self):
        return len(self.iterable)

    def set_postfix(self, **_):
        pass


def evaluate(checkpoint_path, log=print, data_dir=None):
    """Test error (%) of a saved checkpoint, rebuilt from the configuration stored inside it."""
    arrays, meta = load_checkpoint(checkpoint_path)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in meta["config"].items() if k in fields})
    cfg.lr_decay_at = tuple(cfg.lr_decay_at)
    if data_dir is not None:
        cfg.data_dir = data_dir
    *_, x_te, y_te = load_data(cfg, log)
    net = build_from_config(cfg, x_te.shape[1:], N_CLASSES[cfg.data])
    restore_arrays(net.state_arrays(), arrays, where=checkpoint_path)
    return {"epoch": meta["epoch"], "test_error_pct": net.error_pct(x_te, y_te), "test_rows": int(x_te.shape[0])}
