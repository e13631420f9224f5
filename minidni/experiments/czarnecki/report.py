"""Czarnecki et al. (2017)'s small experiments, run and reported: the grid of runs, the table, the figures.

    python -m minidni experiment czarnecki --budget short --out runs/czarnecki
    python -m minidni.experiments.czarnecki --budget short --out runs/cz-linear --experiments linear_mse

Three experiments (`EXPERIMENTS`), each a set of `training.RunConfig`s sized by a budget (`BUDGETS`,
`budget_sizes`):
    linear_mse : Q1, a linear model under MSE, backprop vs a linear SG on its output;
    deep_mse   : Q2, a 10-layer deep linear model under MSE, SG on the output, in the middle, after every layer;
    log_loss   : Q3, log loss, a linear vs a sigmoid SG on the output (and, deep, linear modules inside).
`run` trains every run into out/runs/<name>.json (skipping those already there, so a stopped call continues), then
writes out/results.json, out/table.md (`table`: our numbers next to the paper's claims) and the figures
(`FIGURES`). `main` is the command line above.

What this module deliberately is not: a general experiment tracker. One JSON file per run, one table, four
figures; the numbers come from `training.train_run`.
"""

import dataclasses
import json
import os

import numpy as np

from minidni.data.checkpoint import atomic_write
from minidni.experiments.czarnecki.problems import DIMS, LOSSES, MODELS, check_dim
from minidni.experiments.czarnecki.training import MODES, RunConfig, train_run
from minidni.runs.plots import pyplot, save_figure

BUDGETS = ("smoke", "short")

# The paper's claims shown next to our numbers. Tags as in the project's notes: the claims were checked against a
# quoted source, the details (which experiments, which figure) are recalled.
PAPER_CLAIMS = (
    (
        "a linear SG module implicitly models the loss as quadratic in h; for log loss a pointwise sigmoid on a "
        "linear SG is advised (Czarnecki et al. 2017; claim verified, details recalled)"
    ),
    "convergence of SG training is proved for linear and deep linear models (claim verified, details recalled)",
    (
        "the small-scale experiments: linear and 10-layer deep linear models on 2-D and 100-D toy data, MSE and "
        "log loss, backprop vs SG converging to the same solution (recalled)"
    ),
)


# -------------------------------------------------------------------------------------------------------------
# the experiments: each a function returning {run name: result}


def budget_sizes(budget, dim, model):
    """(N, steps) for a budget. smoke: N = 4 D + 16, 10 steps, seconds in all (it proves the pipeline). short:
    N = 200 (D <= 10) or 500, 3000 steps (2000 for the 100-D deep model): about 6 minutes of training per seed on
    2 shared cores, most of it the 100-D deep runs (0.01-0.05 s a step)."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; the czarnecki experiment has budgets {BUDGETS}")
    check_dim(dim)
    if budget == "smoke":
        return 4 * dim + 16, 10
    n = 200 if dim <= 10 else 500
    steps = 3000 if dim <= 10 or model == "linear" else 2000  # a 100-D deep step costs 0.02-0.05 s
    return n, steps


def _runs(budget, seed, loss, model, dims, variants, **fields):
    results = {}
    for dim in dims:
        n, steps = budget_sizes(budget, dim, model)
        for mode, sg in variants:
            cfg = RunConfig(loss=loss, dim=dim, model=model, mode=mode, sg=sg, n=n, steps=steps, seed=seed,
                            evals=5 if budget == "smoke" else 60, **fields)  # fmt: skip
            results[cfg.name] = cfg
    return results


def linear_mse_runs(budget="short", seed=0, dims=DIMS):
    """Q1. A linear model under MSE, backprop vs a linear SG on its output: does it reach least squares, and does
    the module learn the true gradient 2 (z - t), i.e. A = 2, C = -2, c = 0?"""
    return _runs(budget, seed, "mse", "linear", dims, [("bp", "linear"), ("sg_out", "linear")], lr=0.1, sg_lr=0.5)


def deep_mse_runs(budget="short", seed=0, dims=DIMS):
    """Q2. A 10-layer deep linear model under MSE: backprop vs one SG on the output, one in the middle, and one
    after every layer (bootstrapped): does the end-to-end map reach least squares, do the modules learn their
    true maps A* = 2 P P^T, C* = -2 P^T?"""
    variants = [("bp", "linear"), ("sg_out", "linear"), ("sg_mid", "linear"), ("sg_every", "linear")]
    return _runs(budget, seed, "mse", "deep", dims, variants, lr=0.01, sg_lr=0.5)


def log_loss_runs(budget="short", seed=0, dims=DIMS):
    """Q3. Log loss: a linear SG vs a sigmoid SG on the output of a linear and of a deep linear model (and, for
    the deep one, linear modules in the middle and after every layer): which reaches the log-loss optimum?"""
    out = {}
    out.update(_runs(budget, seed, "log", "linear", dims, [("bp", "linear"), ("sg_out", "linear"),
                                                            ("sg_out", "sigmoid")], lr=0.5, sg_lr=0.5))  # fmt: skip
    variants = [("bp", "linear"), ("sg_out", "linear"), ("sg_out", "sigmoid"), ("sg_mid", "linear"),
                ("sg_every", "linear")]  # fmt: skip
    out.update(_runs(budget, seed, "log", "deep", dims, variants, lr=0.02, sg_lr=0.5))
    return out


EXPERIMENTS = {"linear_mse": linear_mse_runs, "deep_mse": deep_mse_runs, "log_loss": log_loss_runs}


def linear_mse(budget="short", seed=0, dims=DIMS):
    """Run Q1; returns {run name: result} (curves and final figures)."""
    return {name: train_run(cfg) for name, cfg in linear_mse_runs(budget, seed, dims).items()}


def deep_mse(budget="short", seed=0, dims=DIMS):
    """Run Q2; returns {run name: result}."""
    return {name: train_run(cfg) for name, cfg in deep_mse_runs(budget, seed, dims).items()}


def log_loss(budget="short", seed=0, dims=DIMS):
    """Run Q3; returns {run name: result}."""
    return {name: train_run(cfg) for name, cfg in log_loss_runs(budget, seed, dims).items()}


# -------------------------------------------------------------------------------------------------------------
# summaries


def summary_row(name, result):
    cfg, f = result["config"], result["final"]
    sg = [v for v in f["sg"].values()]
    errors = [v["prediction_error"] for v in sg]
    maps = [v["map_distance"] for v in sg if v["map_distance"] is not None]
    return {
        "run": name,
        "experiment": result["experiment"],
        **{k: cfg[k] for k in ("loss", "model", "dim", "mode", "sg", "seed", "n", "steps")},
        "sg": cfg["sg"] if cfg["mode"] != "bp" else "-",
        "loss_value": f["loss"],
        "excess_loss": f["excess_loss"],
        "map_distance": f["map_distance"],
        "cosine": f["cosine"],
        "sg_prediction_error_max": max(errors) if errors else None,
        "sg_map_distance_max": max(maps) if maps else None,
        "quadratic_fixed_point_distance": f.get("quadratic_fixed_point_distance"),
        "diverged": f["diverged"],
        "seconds": result["seconds"],
    }


def _cell(values, fmt="{:.2g}"):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(float(np.mean(values)))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def table(rows):
    """One Markdown table per loss: our numbers, averaged over seeds (range in brackets where several)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["loss"], r["model"], r["dim"], r["mode"], r["sg"]), []).append(r)

    def order(key):
        return LOSSES.index(key[0]), MODELS.index(key[1]), key[2], MODES.index(key[3]), key[4]

    lines = [
        (
            "Our measured numbers at the end of training (full-batch gradient descent; mean over seeds, range in "
            "brackets). excess loss = loss - the optimum's loss (least squares for mse, the log-loss minimiser for "
            "log); |M - M*|/|M*| = relative distance of the end-to-end linear map to that optimum; SG error = max "
            "over modules of ||g - g_true|| / ||g_true|| over the data; SG map = max over modules of the relative "
            "distance of the module's parameters to the ones that give the true gradient exactly (where they "
            "exist); M_q = where the module's quadratic loss model is minimised (linear SG on the output only)."
        ),
        "",
        "The paper's claims (Czarnecki et al. 2017), for comparison: " + "; ".join(PAPER_CLAIMS) + ".",
        "",
    ]
    for loss in LOSSES:
        keys = sorted((k for k in groups if k[0] == loss), key=order)
        if not keys:
            continue
        lines += [
            f"**{loss}**" + (" (optimum: least squares)" if loss == "mse" else " (optimum: Newton's method)"),
            "",
            (
                "| model | D | mode | SG | seeds | steps | excess loss | \\|M - M*\\|/\\|M*\\| | cos(M, M*) | "
                "SG error | SG map | \\|M - M_q\\|/\\|M_q\\| | diverged |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key in keys:
            g = groups[key]

            def col(field, fmt="{:.2g}", g=g):
                return _cell([r[field] for r in g], fmt)

            diverged = sum(r["diverged"] for r in g)
            lines.append(
                f"| {key[1]} | {key[2]} | {key[3]} | {key[4]} | {len(g)} | {g[0]['steps']} | {col('excess_loss')} | "
                f"{col('map_distance')} | {col('cosine', '{:.4f}')} | {col('sg_prediction_error_max')} | "
                f"{col('sg_map_distance_max')} | {col('quadratic_fixed_point_distance')} | "
                f"{diverged or 'no'} |"
            )
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------------
# figures: one line per (mode, SG kind), seed 0 only


LABELS = {"bp": "backprop", "sg_out": "SG on output", "sg_mid": "SG in the middle", "sg_every": "SG every layer"}


def _label(cfg):
    label = LABELS[cfg["mode"]]
    return label + (f" ({cfg['sg']})" if cfg["mode"] == "sg_out" and cfg["loss"] == "log" else "")


def _style(cfg):
    colors = {"bp": "k", "sg_out": "C0", "sg_mid": "C1", "sg_every": "C2"}
    ls = ":" if cfg["sg"] == "sigmoid" and cfg["mode"] != "bp" else "-"
    return {"color": "C3" if ls == ":" else colors[cfg["mode"]], "ls": ls, "lw": 1.4}


def _panels(results, field, path, ylabel, title, losses=LOSSES, floor=1e-16):
    """A grid of panels (loss x (model, D)); one line per (mode, SG kind), seed 0 only (the others would overlap)."""
    plt = pyplot()
    seed = min(r["config"]["seed"] for r in results.values())
    cols = sorted({(r["config"]["model"], r["config"]["dim"]) for r in results.values()},
                  key=lambda c: (MODELS.index(c[0]), c[1]))  # fmt: skip
    rows = [loss for loss in losses if any(r["config"]["loss"] == loss for r in results.values())]
    if not rows or not cols:
        return
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.3 * len(cols), 2.8 * len(rows)), squeeze=False)
    for a, loss in enumerate(rows):
        for b, (model, dim) in enumerate(cols):
            ax = axes[a][b]
            for r in results.values():
                cfg = r["config"]
                if (cfg["loss"], cfg["model"], cfg["dim"], cfg["seed"]) != (loss, model, dim, seed):
                    continue
                steps = [p["step"] for p in r["curve"]]
                ys = [max(field(p), floor) if field(p) is not None else float("nan") for p in r["curve"]]
                ax.plot(steps, ys, label=_label(cfg), **_style(cfg))
            ax.set(yscale="log", title=f"{loss}, {model}, D = {dim}", xlabel="step")
            if b == 0:
                ax.set_ylabel(ylabel)
            ax.legend(fontsize=6, loc="upper right")
    fig.suptitle(title)
    save_figure(fig, path)


def plot_loss_curves(results, path):
    _panels(results, lambda p: p["excess_loss"], path, "loss - optimum",
            "excess loss: backprop vs synthetic gradients")  # fmt: skip


def plot_map_distance(results, path):
    _panels(results, lambda p: p["map_distance"], path, "|M - M*| / |M*|",
            "distance of the learnt linear map M to the optimum M*")  # fmt: skip


def plot_sg_maps(results, path):
    """How far each module's parameters are from the ones that give the true gradient (mse, linear modules)."""

    def worst(p):
        values = [v["map_distance"] for v in p["sg"].values() if v["map_distance"] is not None]
        return max(values) if values else None

    subset = {n: r for n, r in results.items() if r["config"]["mode"] != "bp" and r["config"]["loss"] == "mse"}
    _panels(subset, worst, path, "|theta - theta*| / |theta*|, worst module",
            "SG parameters vs the true gradient's linear map (mse)", losses=("mse",))  # fmt: skip


def plot_linear_vs_sigmoid(results, path):
    """Log loss, SG on the output: linear vs sigmoid module, against backprop (excess loss and distance)."""
    subset = {n: r for n, r in results.items()
              if r["config"]["loss"] == "log" and r["config"]["mode"] in ("bp", "sg_out")}  # fmt: skip
    if not subset:
        return
    plt = pyplot()
    seed = min(r["config"]["seed"] for r in subset.values())
    cols = sorted({(r["config"]["model"], r["config"]["dim"]) for r in subset.values()},
                  key=lambda c: (MODELS.index(c[0]), c[1]))  # fmt: skip
    fig, axes = plt.subplots(2, len(cols), figsize=(3.3 * len(cols), 5.4), squeeze=False)
    for b, (model, dim) in enumerate(cols):
        for r in subset.values():
            cfg = r["config"]
            if (cfg["model"], cfg["dim"], cfg["seed"]) != (model, dim, seed):
                continue
            steps = [p["step"] for p in r["curve"]]
            label = "backprop" if cfg["mode"] == "bp" else f"{cfg['sg']} SG on output"
            style = {"color": {"bp": "k", "linear": "C0", "sigmoid": "C3"}["bp" if cfg["mode"] == "bp" else cfg["sg"]]}
            axes[0][b].plot(steps, [max(p["excess_loss"], 1e-16) for p in r["curve"]], label=label, **style)
            axes[1][b].plot(steps, [max(p["map_distance"], 1e-16) for p in r["curve"]], label=label, **style)
        axes[0][b].set(yscale="log", title=f"log loss, {model}, D = {dim}")
        axes[1][b].set(yscale="log", xlabel="step")
        axes[0][b].legend(fontsize=7, loc="upper right")
    axes[0][0].set_ylabel("loss - optimum")
    axes[1][0].set_ylabel("|M - M*| / |M*|")
    fig.suptitle("log loss: a linear SG (a quadratic loss model) vs a sigmoid SG")
    save_figure(fig, path)


FIGURES = {
    "czarnecki_loss_curves.png": plot_loss_curves,
    "czarnecki_map_distance.png": plot_map_distance,
    "czarnecki_sg_maps.png": plot_sg_maps,
    "czarnecki_linear_vs_sigmoid.png": plot_linear_vs_sigmoid,
}


# -------------------------------------------------------------------------------------------------------------
# running them all into a directory, resumably


def all_runs(budget, seeds, experiments=tuple(EXPERIMENTS)):
    """[(experiment name, RunConfig)] for the experiments (default: all three) and seeds, cheapest first."""
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown or not experiments:
        raise ValueError(f"unknown experiments {unknown}; expected a non-empty subset of {tuple(EXPERIMENTS)}")
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; the czarnecki experiment has budgets {BUDGETS}")
    seeds = tuple(seeds)
    if not seeds or not all(isinstance(s, (int, np.integer)) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty sequence of integers >= 0, got {seeds!r}")
    runs = []
    for seed in seeds:
        for experiment in experiments:
            runs += [(experiment, cfg) for cfg in EXPERIMENTS[experiment](budget, seed).values()]
    return sorted(runs, key=lambda r: (r[1].dim, r[1].model == "deep"))  # the 100-D deep runs last


def run(out, budget="short", seeds=(0,), log=print, experiments=tuple(EXPERIMENTS)):
    """Train every run of `experiments` into out/runs/<name>.json (skipping the ones already there: a stopped call
    continues), then write out/results.json, out/table.md and the figures for those runs. Returns the
    results.json document; each run's curves are in its out/runs/<name>.json."""
    runs = all_runs(budget, seeds, experiments)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    results = {}
    for k, (experiment, cfg) in enumerate(runs, 1):
        path = os.path.join(out, "runs", f"{cfg.name}.json")
        if os.path.exists(path):
            with open(path) as f:
                done = json.load(f)
            if done["config"] == dataclasses.asdict(cfg):
                results[cfg.name] = {**done, "experiment": experiment}
                log(f"[{k}/{len(runs)}] {cfg.name}: done earlier")
                continue
            raise ValueError(f"{path} was written with another configuration (another budget?); use a new --out")
        result = {**train_run(cfg), "experiment": experiment}
        atomic_write(path, json.dumps(result))
        results[cfg.name] = result
        f = result["final"]
        log(f"[{k}/{len(runs)}] {cfg.name}: excess loss {f['excess_loss']:.3g}, |M - M*|/|M*| "
            f"{f['map_distance']:.3g} ({result['seconds']:.1f} s)")  # fmt: skip
    command = f"python -m minidni experiment czarnecki --budget {budget}" + (
        f" --seeds {','.join(map(str, seeds))}" if tuple(seeds) != (0,) else ""
    )
    if tuple(experiments) != tuple(EXPERIMENTS):
        command = f"python -m minidni.experiments.czarnecki --budget {budget} --seeds {','.join(map(str, seeds))} " + (
            f"--experiments {','.join(experiments)}"
        )
    rows = [summary_row(name, r) for name, r in results.items()]
    document = {"experiment": "czarnecki", "budget": budget, "command": command, "seeds": list(seeds),
                "experiments": list(experiments), "rows": rows}  # fmt: skip
    atomic_write(os.path.join(out, "results.json"), json.dumps(document, indent=1))
    atomic_write(os.path.join(out, "table.md"), f"`{command}`\n\n" + table(rows))
    for name, plot in FIGURES.items():
        plot(results, os.path.join(out, name))
    log(table(rows))
    return document


# -------------------------------------------------------------------------------------------------------------
# the command line


def main(argv=None):
    """`python -m minidni.experiments.czarnecki --out DIR [--budget short] [--seeds 0,1,2] [--experiments
    linear_mse,...]`: the experiment command, with the choice of experiments."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m minidni.experiments.czarnecki", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--budget", choices=BUDGETS, default="short")
    p.add_argument("--seeds", default="0", help="comma-separated integers >= 0")
    p.add_argument("--experiments", default=",".join(EXPERIMENTS), help="a comma-separated subset of "
                   f"{','.join(EXPERIMENTS)}")  # fmt: skip
    args = p.parse_args(argv)
    experiments = tuple(e.strip() for e in args.experiments.split(",") if e.strip())
    if not experiments or any(e not in EXPERIMENTS for e in experiments):
        p.error(
            f"--experiments: expected a comma-separated subset of {','.join(EXPERIMENTS)}, got {args.experiments!r}"
        )
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers >= 0, got {args.seeds!r}")
    try:
        run(args.out, args.budget, seeds, log=lambda m: print(m, file=sys.stderr, flush=True), experiments=experiments)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
