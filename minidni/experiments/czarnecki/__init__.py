"""Czarnecki et al. (2017)'s small experiments: what a synthetic gradient learns on linear and deep linear models.

    python -m minidni experiment czarnecki --budget short --out runs/czarnecki

On linear models the optimum, the true gradient and an SG module's best parameters are known in closed form, so
one can ask exactly whether SG training reaches the solution backprop reaches, and whether the module learns the
true gradient. Read top-down: `problems` (the data, the losses, the models, the SG modules), `training` (where the
modules sit, one full-batch step, what is measured, one run), `report` (the grid of runs, the table, the figures,
the command line). Their public names are re-exported here: `from minidni.experiments import czarnecki as cz`.

What this package deliberately is not: the DNI engine (minidni.dni) or a study of nonlinear networks.
"""

from minidni.experiments.czarnecki.problems import (
    DIMS,
    LOSSES,
    MODELS,
    SG_KINDS,
    LinearSG,
    OracleSG,
    Problem,
    SigmoidSG,
    build_model,
    end_to_end,
    loss_and_grad,
    make_problem,
    make_sg,
    optimum,
)
from minidni.experiments.czarnecki.training import (
    MODES,
    RunConfig,
    apply_step,
    compute_step,
    evaluate,
    forward,
    quadratic_fixed_point,
    setup,
    sg_positions,
    train_run,
    true_gradients,
    true_sg_map,
)
from minidni.experiments.czarnecki.report import (
    BUDGETS,
    EXPERIMENTS,
    FIGURES,
    LABELS,
    all_runs,
    deep_mse,
    linear_mse,
    log_loss,
    main,
    run,
    table,
)

__all__ = [
    # problems
    "LOSSES",
    "MODELS",
    "SG_KINDS",
    "DIMS",
    "Problem",
    "make_problem",
    "optimum",
    "loss_and_grad",
    "LinearSG",
    "SigmoidSG",
    "OracleSG",
    "make_sg",
    "build_model",
    "end_to_end",
    # training
    "MODES",
    "sg_positions",
    "forward",
    "true_gradients",
    "compute_step",
    "apply_step",
    "true_sg_map",
    "quadratic_fixed_point",
    "evaluate",
    "RunConfig",
    "setup",
    "train_run",
    # report
    "BUDGETS",
    "EXPERIMENTS",
    "linear_mse",
    "deep_mse",
    "log_loss",
    "table",
    "LABELS",
    "FIGURES",
    "all_runs",
    "run",
    "main",
]
