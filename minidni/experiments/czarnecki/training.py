"""How Czarnecki et al. (2017)'s small experiments train: where the SG modules sit, one full-batch step, what is
measured, and one run.

Training: full-batch gradient descent (B = N): every layer takes its own plain SGD step, every SG module its own
normalised one; all of one step's gradients are computed from the same parameters, then applied together. Where
SG modules sit (`MODES`):
    bp       : backprop, no module.
    sg_out   : one module on the output z = h_L: every layer updates with dL/dz predicted, the loss is never
               differentiated by the layers (the module regresses onto the true dL/dz).
    sg_mid   : one module after layer L/2 (deep only): layers above it get backprop, layers below the prediction;
               the module regresses onto the true gradient arriving from above.
    sg_every : a module after every layer but the last (deep only), bootstrapped as in DNI: each module regresses
               onto the prediction of the module above, carried down through the layers in between; only the top
               module sees the true gradient.

`train_run(RunConfig(...))` trains one configuration and returns its curve of evaluations (`evaluate`: the loss,
the distance of the end-to-end map to the optimum, and per module how far its prediction and its parameters are
from the true gradient) with the final figures. The problems, models and modules are `problems`' (shapes as in
its glossary).

What this module deliberately is not: the DNI engine (minidni.dni, with minibatches, Adam and MLP modules)
or a study of nonlinear networks. It is plain full-batch gradient descent on linear models, so that where a run
ends can be compared with the closed-form optimum.
"""

import dataclasses
import math
import time

import numpy as np

from minidni.core import functional as F
from minidni.experiments.czarnecki.problems import (
    MODELS,
    SG_KINDS,
    build_model,
    check_dim,
    check_loss,
    end_to_end,
    loss_and_grad,
    make_problem,
    make_sg,
)


# -------------------------------------------------------------------------------------------------------------
# where the SG modules sit

MODES = ("bp", "sg_out", "sg_mid", "sg_every")  # see the module docstring


def sg_positions(mode, depth):
    """The layers i (1-based) whose output h_i has an SG module after it."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode in ("sg_mid", "sg_every") and depth < 2:
        raise ValueError(f"mode {mode!r} needs a deep model (depth >= 2); a linear model has 'bp' and 'sg_out'")
    return {"bp": (), "sg_out": (depth,), "sg_mid": (depth // 2,), "sg_every": tuple(range(1, depth))}[mode]


# -------------------------------------------------------------------------------------------------------------
# one step


def forward(layers, x):
    """hs = [h_0 = x, h_1, ..., h_L = z] and the layers' caches."""
    hs, caches = [x], []
    for layer in layers:
        h, cache = layer.forward(hs[-1])  # (B, D_i)
        hs.append(h)
        caches.append(cache)
    return hs, caches


def true_gradients(layers, dz):
    """[dL/dh_0, ..., dL/dh_L] (batch-mean units) by backprop from dz; touches no layer's grads."""
    deltas = [dz]
    for layer in reversed(layers):
        deltas.append(F.matmul(deltas[-1], layer.params["W"].T))  # dh_{i-1} = dh_i W_i^T, as Linear.backward
    return deltas[::-1]


def compute_step(layers, sgs, x, t, loss):
    """Compute one step's gradients from the current parameters; nothing is updated yet.

    sgs: {i: SG module after layer i}. Going down from the loss, `delta` is the gradient that arrives at h_i from
    above: the true one, or, below a module, that module's prediction carried down (bootstrapping). At a module
    the arriving delta becomes its regression target and its own prediction is what continues down. Fills
    layer.grads and each module's grads; returns (loss value, {i: SG loss}).
    """
    B = x.shape[0]
    hs, caches = forward(layers, x)
    value, delta = loss_and_grad(loss, hs[-1], t)  # delta = dL/dz: (B, K)
    oracle = any(sg.kind == "oracle" for sg in sgs.values())
    truth = true_gradients(layers, delta) if oracle else None
    jobs = []
    for i in range(len(layers), 0, -1):  # layer i maps h_{i-1} -> h_i
        if i in sgs:
            sg, target = sgs[i], B * delta  # per-example units
            if sg.kind == "oracle":
                g, cache = B * truth[i], None
            else:
                g, cache = sg.predict(hs[i], t)  # (B, D_i)
            jobs.append((i, g, cache, target))
            delta = g / B  # what the layers below see in place of dL/dh_i
        delta = layers[i - 1].backward(delta, caches[i - 1], need_dx=i > 1)  # fills grads["W"]: (D_{i-1}, D_i)
    sg_losses = {}
    for i, g, cache, target in jobs:
        sg_losses[i] = 0.0 if sgs[i].kind == "oracle" else sgs[i].backward(g, cache, target)
    return value, sg_losses


def apply_step(layers, sgs):
    for layer in layers:
        layer.update()
    for sg in sgs.values():
        sg.update()


# -------------------------------------------------------------------------------------------------------------
# what is measured


def true_sg_map(layers, i, loss, kind):
    """The parameters with which module `kind` after layer i returns the true gradient exactly, or None.

    mse, linear: g_i = 2 (h_i P - t) P^T with P = W_{i+1} ... W_L, i.e. A* = 2 P P^T, C* = -2 P^T, c* = 0.
    log, sigmoid (on the output): g = sigma(z) - t, i.e. A* = I, c* = 0. A linear module cannot be exact for log.
    """
    if loss == "mse" and kind == "linear":
        P = np.eye(layers[-1].d_out)
        for layer in reversed(layers[i:]):
            P = layer.params["W"] @ P  # (D_i, K)
        return {"A": 2 * P @ P.T, "C": -2 * P.T, "c": np.zeros(P.shape[0])}
    if loss == "log" and kind == "sigmoid" and i == len(layers):
        k = layers[-1].d_out
        return {"A": np.eye(k), "c": np.zeros(k)}
    return None


def relative_distance(params, reference):
    """sqrt(sum ||p - p*||^2) / sqrt(sum ||p*||^2) over the named arrays (the denominator at least 1e-12)."""
    num = sum(float(np.sum((params[k] - reference[k]) ** 2)) for k in reference)
    den = sum(float(np.sum(reference[k] ** 2)) for k in reference)
    return math.sqrt(num) / max(math.sqrt(den), 1e-12)


def quadratic_fixed_point(problem, sg):
    """Where a model trained through a linear module on its output z must stop: the layers stop when
    x^T g = 0 with g = a z + t C + c and z = x M, so M_q = -(x^T x)^{-1} x^T (t C + c) / a. This is the
    minimiser of the quadratic loss the module implies, not of the real loss (unless the module is exact)."""
    a, C, c = sg.params["A"][0, 0], sg.params["C"], sg.params["c"]
    if a == 0:
        return None
    x = problem.x
    return -np.linalg.solve(x.T @ x, x.T @ (problem.t @ C + c)) / a  # (D, 1)


def evaluate(layers, sgs, problem):
    """Full-data loss, the distance of M to the optimum, and per module how far its prediction (and, where a true
    map exists, its parameters) is from the true gradient."""
    x, t = problem.x, problem.t
    N = x.shape[0]
    hs, _ = forward(layers, x)
    value, dz = loss_and_grad(problem.loss, hs[-1], t)
    M = end_to_end(layers)
    record = {
        "loss": value,
        "excess_loss": value - problem.loss_opt,
        "map_distance": float(np.linalg.norm(M - problem.w_opt) / np.linalg.norm(problem.w_opt)),
        "cosine": float(np.sum(M * problem.w_opt) / (np.linalg.norm(M) * np.linalg.norm(problem.w_opt) + 1e-300)),
        "sg": {},
    }
    truth = true_gradients(layers, dz)
    for i, sg in sgs.items():
        if sg.kind == "oracle":
            continue
        g_true = N * truth[i]  # per-example gradients: (N, D_i)
        g, _ = sg.predict(hs[i], t)
        reference = true_sg_map(layers, i, problem.loss, sg.kind)
        record["sg"][str(i)] = {
            "prediction_error": float(np.linalg.norm(g - g_true) / max(np.linalg.norm(g_true), 1e-300)),
            "map_distance": None if reference is None else relative_distance(sg.params, reference),
        }
    return record


# -------------------------------------------------------------------------------------------------------------
# one training run


@dataclasses.dataclass
class RunConfig:
    loss: str = "mse"  # "mse" or "log"
    dim: int = 2  # D: the input width
    model: str = "deep"  # "linear" (one layer) or "deep" (`depth` layers, no nonlinearity)
    depth: int = 10  # L, for model="deep"
    mode: str = "bp"  # where SG modules sit: "bp", "sg_out", "sg_mid", "sg_every"
    sg: str = "linear"  # the kind of the modules: "linear", "sigmoid" (sg_out only), "oracle"
    n: int = 200  # N: rows of data, all of them in every (full-batch) step
    steps: int = 2000  # gradient steps
    lr: float = 0.02  # every layer's SGD learning rate
    sg_lr: float = 0.5  # every module's normalised SGD step size (see normalised_step: below 1 is stable)
    evals: int = 60  # evaluations spread evenly over the run (plus one at step 0)
    seed: int = 0  # seeds the data and the initial layers

    @property
    def name(self):
        sg = "" if self.mode == "bp" else f"-{self.sg}"
        return f"{self.loss}-{self.model}-d{self.dim}-{self.mode}{sg}-s{self.seed}"

    def validate(self):
        check_loss(self.loss)
        check_dim(self.dim)
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {MODELS}")
        if self.sg not in SG_KINDS:
            raise ValueError(f"unknown SG kind {self.sg!r}; expected one of {SG_KINDS}")
        sg_positions(self.mode, self.depth if self.model == "deep" else 1)
        if self.sg == "sigmoid" and self.mode not in ("bp", "sg_out"):
            raise ValueError(f"a sigmoid SG sits on the output only (mode 'sg_out'), not in mode {self.mode!r}")
        for name in ("steps", "evals"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("lr", "sg_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")


def setup(cfg, problem=None):
    """(problem, layers, {i: SG module}) for a run, before its first step."""
    cfg.validate()
    problem = make_problem(cfg.loss, cfg.dim, cfg.n, cfg.seed) if problem is None else problem
    layers = build_model(cfg.model, cfg.dim, cfg.depth, cfg.lr, cfg.seed)
    positions = sg_positions(cfg.mode, len(layers))
    sgs = {i: make_sg(cfg.sg, layers[i - 1].d_out, problem.t.shape[1], cfg.sg_lr) for i in positions}
    return problem, layers, sgs


def train_run(cfg, problem=None):
    """Train one configuration; returns {"config", "curve": [evaluation records], "final": {...}, "seconds"}."""
    problem, layers, sgs = setup(cfg, problem)
    eval_at = set(np.linspace(0, cfg.steps, cfg.evals + 1).round().astype(int).tolist())
    curve, sg_losses, start = [], {}, time.perf_counter()
    for step in range(cfg.steps + 1):
        if step in eval_at:
            record = {"step": step, **evaluate(layers, sgs, problem)}
            for i, v in sg_losses.items():
                record["sg"][str(i)]["sg_loss"] = v
            curve.append(record)
            if not math.isfinite(record["loss"]):
                break  # diverged: the curve ends here and says so
        if step == cfg.steps:
            break
        _, sg_losses = compute_step(layers, sgs, problem.x, problem.t, cfg.loss)
        apply_step(layers, sgs)
    final = dict(curve[-1])
    final["diverged"] = not math.isfinite(final["loss"])
    M = end_to_end(layers)
    final["map"] = M[:, 0].tolist()  # (D,): K = 1
    final["w_opt"] = problem.w_opt[:, 0].tolist()
    final["sg_params"] = {str(i): {k: v.tolist() for k, v in sg.params.items()} for i, sg in sgs.items()
                          if cfg.dim <= 10 or sg.kind == "sigmoid" or i == len(layers)}  # fmt: skip
    if cfg.mode == "sg_out" and cfg.sg == "linear" and not final["diverged"]:
        M_q = quadratic_fixed_point(problem, sgs[len(layers)])
        final["quadratic_fixed_point_distance"] = (
            None if M_q is None else float(np.linalg.norm(M - M_q) / np.linalg.norm(M_q))
        )
    return {
        "config": dataclasses.asdict(cfg),
        "loss_opt": problem.loss_opt,
        "curve": curve,
        "final": final,
        "seconds": time.perf_counter() - start,
    }
