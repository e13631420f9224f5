"""minidni: synthetic gradients and Decoupled Neural Interfaces (DNI), from scratch, written to be read.

The package is in layers; each imports only the ones below it (import-linter checks this in CI: .importlinter):

    cli, doctor          the command line, and the GPU path's self-check
    experiments          the papers' experiments as resumable batches of runs
    parallel             every block in a worker of its own; the simulator; the parallel benchmark
    runs                 a run in one process: config, training loops, checkpoints, metrics, plots, timelines
    recurrent            cells, truncated BPTT with synthetic gradients, copy tasks, two-timescale networks
    cuda | data          the fused CUDA kernels | data sets, text and the files minidni writes
    dni                  the DNI method: SG modules, decoupled blocks, the training steps, networks   } the
    core                 arrays, the math, layers, optimisers, gradient checks                       } textbook

Read the textbook first, top-down: core (backend -> functional -> layers -> optim -> gradcheck), then dni
(synthetic -> blocks -> steps -> network). docs/map.md gives the path, with a line per module.

The names below are the documented public API, importable from `minidni` itself; everything else is imported from
its module (`from minidni.dni.steps import dni_step`).
"""

from minidni.version import __version__  # first: every layer may read it

# the textbook core
from minidni.core.backend import set_backend
from minidni.core.gradcheck import assert_close, check_function, check_layer
from minidni.core.layers import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)
from minidni.core.optim import SGD, Adam, StepSchedule

# the DNI method
from minidni.dni.blocks import DecoupledBlock, DivergenceError
from minidni.dni.feedback import FeedbackNetwork, build_feedback_network
from minidni.dni.network import Network, build_network, cnn_blocks, fcn_blocks
from minidni.dni.steps import dni_step
from minidni.dni.stochastic import UpdateGate
from minidni.dni.synthetic import SyntheticGradient, make_synthetic_gradient
from minidni.dni.unlock import SyntheticInput

# the lab
from minidni.cuda.fused import use_kernels
from minidni.cuda.loader import get_kernels
from minidni.data.datasets import load_dataset, make_spirals, train_val_split
from minidni.experiments.compare import compare_runs
from minidni.experiments.feedforward import run_experiment
from minidni.parallel.workers import train_in_workers
from minidni.recurrent.cells import LSTMCell, RecurrentNet, RNNCell
from minidni.recurrent.truncated import TruncatedTrainer
from minidni.runs.rnn_train import RNNConfig, evaluate_bpc, train_rnn
from minidni.runs.timeline import Timeline
from minidni.runs.train import TrainConfig, evaluate, load_data, train

__all__ = [
    "__version__",
    "set_backend",
    "assert_close",
    "check_function",
    "check_layer",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "Sequential",
    "SGD",
    "Adam",
    "StepSchedule",
    "DecoupledBlock",
    "DivergenceError",
    "FeedbackNetwork",
    "build_feedback_network",
    "Network",
    "build_network",
    "cnn_blocks",
    "fcn_blocks",
    "dni_step",
    "UpdateGate",
    "SyntheticGradient",
    "make_synthetic_gradient",
    "SyntheticInput",
    "use_kernels",
    "get_kernels",
    "load_dataset",
    "make_spirals",
    "train_val_split",
    "compare_runs",
    "run_experiment",
    "train_in_workers",
    "LSTMCell",
    "RecurrentNet",
    "RNNCell",
    "TruncatedTrainer",
    "RNNConfig",
    "evaluate_bpc",
    "train_rnn",
    "Timeline",
    "TrainConfig",
    "evaluate",
    "load_data",
    "train",
]
