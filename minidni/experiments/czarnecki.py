"""Czarnecki et al. (2017)'s small experiments: what a synthetic gradient learns on linear and deep linear models.

    python -m minidni experiment czarnecki --budget short --out runs/czarnecki

A synthetic-gradient (SG) module after layer i predicts the gradient of the loss with respect to that layer's
output h_i; the layers below update with the prediction instead of the true gradient. Czarnecki et al. read an SG
module as a model of the loss: a module that predicts g(h) implies a loss L_SG with dL_SG/dh = g(h). A *linear*
module g(h) = h A + t C + c implies a loss quadratic in h; the log loss is not quadratic, and for it a pointwise
sigmoid, g(h) = sigma(h A + c) - t, has the right shape. On linear models everything is explicit, so one can ask
exactly: does SG training reach the solution backprop reaches, and does the SG module learn the true gradient?

Problems (generated from a seeded generator; `make_problem`)
    x ~ N(0, I_D), N rows (D = 2 or 100; N in `budget_sizes`); a teacher w* ~ N(0, I_D / D), so that x w* has
    unit variance.
    mse : t = x w* + 0.5 e, e ~ N(0, 1): linear regression with noise. Optimum: least squares.
    log : t ~ Bernoulli(sigma(2 x w*)): noisy binary labels, not linearly separable, so the mean log loss has
          a finite minimiser, found by Newton's method in float64 (which refuses separable data).
    No biases anywhere (the teacher has none): every model is a linear map, x -> x M.

Models (`build_model`)
    linear : one Linear(D, 1), M = W.
    deep   : L = 10 Linear layers D -> D -> ... -> D -> 1 with no nonlinearity; M = W_1 W_2 ... W_L. The D x D
             layers start as random orthogonal matrices (so the product neither explodes nor vanishes), the last
             one as Linear's "xavier" init.

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
SG kinds (`SG_KINDS`), all with zero-initialised parameters, all predicting per-example gradients (the gradient of
one example's loss, i.e. B times the batch-mean gradient), all regressing with normalised SGD steps (the step size
divided by the largest eigenvalue of E[x x^T] for what the module reads, x; see `normalised_step`):
    linear  : g = h A + t C + c            (conditioned on the target t, as the paper's SG(h, y))
    sigmoid : g = sigma(h A + c) - t       (the output only: h must have t's width K)
    oracle  : g = the true gradient        (not learnt; for the invariant "a perfect SG is backprop")

Shape glossary: N data rows (= B, full batch); D input width; D_i width of h_i (D, or K for the output); K = 1
output width; L depth.

What this module deliberately is not: the DNI engine (minidni.dni.network, with minibatches, Adam and MLP modules) or a
study of nonlinear networks. Everything here is linear so that the optimum and the true gradient are known in
closed form.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np

from minidni.core import functional as F
from minidni.core.backend import BackendError, backend_name
from minidni.data.checkpoint import atomic_write
from minidni.core.layers import Linear
from minidni.core.optim import SGD
from minidni.runs.plots import pyplot, save_figure

LOSSES = ("mse", "log")
MODELS = ("linear", "deep")
MODES = ("bp", "sg_out", "sg_mid", "sg_every")
SG_KINDS = ("linear", "sigmoid", "oracle")
BUDGETS = ("smoke", "short")
DIMS = (2, 100)  # the paper's input widths (recalled); any positive integer works
NOISE_STD = 0.5  # mse: label noise
LOGIT_SCALE = 2.0  # log: the teacher's logits are 2 x w*, std about 2

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
# problems and their optima


@dataclasses.dataclass
class Problem:
    loss: str  # "mse" or "log"
    x: np.ndarray  # (N, D) inputs
    t: np.ndarray  # (N, K) targets: real numbers (mse) or 0/1 labels (log)
    w_teacher: np.ndarray  # (D, K) the map that generated t
    w_opt: np.ndarray  # (D, K) the minimiser of the mean loss over all linear maps
    loss_opt: float  # the mean loss at w_opt

    @property
    def dim(self):
        return self.x.shape[1]


def check_loss(loss):
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES} (mean squared error, binary log loss)")


def check_dim(dim):
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dimension must be a positive integer (the experiments use {DIMS}), got {dim!r}")


def make_problem(loss, dim, n, seed=0):
    """The data set described in the module docstring, from np.random.default_rng((seed, dim, loss index))."""
    check_loss(loss)
    check_dim(dim)
    if not (isinstance(n, (int, np.integer)) and n >= 2 * dim):
        raise ValueError(f"n must be an integer >= 2 * dim = {2 * dim} (enough rows for a unique optimum), got {n!r}")
    rng = np.random.default_rng((seed, dim, LOSSES.index(loss)))
    x = rng.standard_normal((n, dim))  # (N, D)
    w_teacher = rng.standard_normal((dim, 1)) / np.sqrt(dim)  # (D, 1): x w* has unit variance
    if loss == "mse":
        t = x @ w_teacher + NOISE_STD * rng.standard_normal((n, 1))  # (N, 1)
    else:
        p = 1 / (1 + np.exp(-LOGIT_SCALE * (x @ w_teacher)))
        t = (rng.random((n, 1)) < p).astype(np.float64)  # (N, 1) labels in {0, 1}
    w_opt = optimum(loss, x, t)
    loss_opt, _ = loss_and_grad(loss, x @ w_opt, t)
    return Problem(loss, x, t, w_teacher, w_opt, loss_opt)


def optimum(loss, x, t):
    """The linear map minimising the mean loss: least squares (mse), or Newton's method on the log loss."""
    if loss == "mse":
        return np.linalg.lstsq(x, t, rcond=None)[0]  # (D, 1)
    w = np.zeros((x.shape[1], 1))
    for _ in range(100):
        p = 1 / (1 + np.exp(-(x @ w)))  # (N, 1)
        grad = x.T @ (p - t) / len(x)  # (D, 1)
        if np.linalg.norm(grad) < 1e-12:
            return w
        hessian = (x * (p * (1 - p))).T @ x / len(x)  # (D, D)
        w -= np.linalg.solve(hessian, grad)
    raise ValueError("Newton's method did not converge: the labels are (nearly) linearly separable, so the log loss "
                     "has no finite minimiser; use more rows")  # fmt: skip


# -------------------------------------------------------------------------------------------------------------
# losses: batch means, returning the value and dL/dz


def loss_and_grad(loss, z, t):
    """z, t: (B, K) -> (mean loss, dz (B, K)).

    mse: (1/B) sum_b ||z_b - t_b||^2,               dz = 2 (z - t) / B
    log: (1/B) sum_b softplus(z_b) - t_b z_b,       dz = (sigma(z) - t) / B     (binary log loss on the logit z)
    """
    if loss == "mse":
        return F.mse(z, t)
    if loss == "log":
        B = z.shape[0]
        value = float(np.sum(np.logaddexp(0.0, z) - t * z)) / B  # softplus without overflow
        s, _ = F.sigmoid_forward(z)
        return value, (s - t) / B
    check_loss(loss)


# -------------------------------------------------------------------------------------------------------------
# synthetic-gradient modules: each predicts per-example gradients g (B, D_i), regresses with
#     L_sg = (1/B) sum_b ||g_b - g_target_b||^2
# and takes one plain SGD step on its own parameters


def top_eigenvalue(X):
    """lambda_max of X^T X / B for X (B, P): the largest curvature, up to the factor 2, of a least-squares fit on X."""
    return float(np.linalg.eigvalsh(X.T @ X / X.shape[0])[-1])


def normalised_step(module):
    """One SGD step of size lr / lambda, where lambda = module.curvature is the largest eigenvalue of the second
    moment E[x x^T] of what the module reads (for the sigmoid module weighted by the sigmoid's squared slope: the
    Gauss-Newton matrix). The module's regression has curvature 2 E[x x^T], so gradient descent on it is stable
    for any lr < 1, however large h grows while the model trains; with a fixed step size the modules diverged on
    some seeds (measured)."""
    module.optimizer.lr = module.optimizer.base_lr / max(module.curvature, 1e-12)
    module.optimizer.step(module.grads)


class LinearSG:
    """g = h A + t C + c: A (D_i, D_i), C (K, D_i), c (D_i,). Implied loss model: quadratic in h."""

    kind = "linear"

    def __init__(self, d, k, lr):
        self.params = {"A": np.zeros((d, d)), "C": np.zeros((k, d)), "c": np.zeros(d)}  # g = 0 at first
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.optimizer = SGD(self.params, lr, momentum=0.0)

    def predict(self, h, t):
        """h: (B, D_i), t: (B, K) -> g: (B, D_i), cache."""
        A, C, c = self.params["A"], self.params["C"], self.params["c"]
        return h @ A + t @ C + c, (h, t)

    def backward(self, g, cache, g_target):
        """Fill self.grads with dL_sg/d(A, C, c); returns L_sg. h and t are inputs: nothing flows back into them."""
        h, t = cache
        loss, dg = F.mse(g, g_target)  # dg = 2 (g - g_target) / B: (B, D_i)
        self.grads["A"][...] = h.T @ dg  # (D_i, D_i)
        self.grads["C"][...] = t.T @ dg  # (K, D_i)
        self.grads["c"][...] = dg.sum(axis=0)  # (D_i,)
        self.curvature = top_eigenvalue(np.hstack([h, t, np.ones((h.shape[0], 1))]))  # of E[x x^T], x = [h, t, 1]
        return loss

    def update(self):
        normalised_step(self)


class SigmoidSG:
    """g = sigma(h A + c) - t: A (K, K), c (K,), for h = the output z (width K). Implied loss model: the log loss
    of the logit h A + c (up to the factor A). With A = I and c = 0 it is the true log-loss gradient sigma(z) - t.
    Zero-initialised, its first prediction is sigma(0) - t = 1/2 - t, the true gradient of a zero logit."""

    kind = "sigmoid"

    def __init__(self, d, k, lr):
        if d != k:
            raise ValueError(f"a sigmoid SG predicts sigma(h A + c) - t and needs h of the targets' width {k}, got "
                             f"width {d}: put it on the output (mode 'sg_out')")  # fmt: skip
        self.params = {"A": np.zeros((k, k)), "c": np.zeros(k)}
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.optimizer = SGD(self.params, lr, momentum=0.0)

    def predict(self, h, t):
        """h: (B, K), t: (B, K) -> g: (B, K), cache (h, s = sigma(h A + c))."""
        s, _ = F.sigmoid_forward(h @ self.params["A"] + self.params["c"])  # (B, K)
        return s - t, (h, s)

    def backward(self, g, cache, g_target):
        h, s = cache
        loss, dg = F.mse(g, g_target)  # (B, K); dg/du = sigma'(u) = s (1 - s) for u = h A + c
        du = F.sigmoid_backward(dg, s)  # (B, K)
        self.grads["A"][...] = h.T @ du  # (K, K)
        self.grads["c"][...] = du.sum(axis=0)  # (K,)
        # Gauss-Newton: output k's parameters see x = [h, 1] weighted by the slope sigma'(u_k) = s_k (1 - s_k)
        x = np.hstack([h, np.ones((h.shape[0], 1))])  # (B, K + 1)
        self.curvature = max(top_eigenvalue(x * (s[:, k : k + 1] * (1 - s[:, k : k + 1]))) for k in range(s.shape[1]))
        return loss

    def update(self):
        normalised_step(self)


class OracleSG:
    """Returns the true per-example gradient (which the step hands it); nothing to learn."""

    kind = "oracle"

    def __init__(self):
        self.params = {}

    def update(self):
        pass


def make_sg(kind, d, k, lr):
    if kind == "linear":
        return LinearSG(d, k, lr)
    if kind == "sigmoid":
        return SigmoidSG(d, k, lr)
    if kind == "oracle":
        return OracleSG()
    raise ValueError(f"unknown SG kind {kind!r}; expected one of {SG_KINDS}")


# -------------------------------------------------------------------------------------------------------------
# models: lists of minidni Linear layers without bias, in float64


def build_model(model, dim, depth=10, lr=0.01, seed=0):
    """[Linear] for model "linear" (D -> 1), or `depth` of them D -> D -> ... -> D -> 1 for "deep"."""
    check_dim(dim)
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
    if backend_name() != "numpy":
        raise BackendError(f"the czarnecki experiments are NumPy code; the active backend is {backend_name()!r}")
    if model == "deep" and not (isinstance(depth, int) and depth >= 2):
        raise ValueError(f"a deep linear model needs depth >= 2, got {depth!r}")
    rng = np.random.default_rng((seed, dim, 7))
    widths = [dim, 1] if model == "linear" else [dim] * depth + [1]
    layers = []
    for d_in, d_out in zip(widths[:-1], widths[1:]):
        layer = Linear(d_in, d_out, init="xavier", bias=False, rng=rng, dtype=np.float64)
        if d_in == d_out:  # a random orthogonal matrix: the product of the D x D layers keeps its scale
            q, r = np.linalg.qr(rng.standard_normal((d_in, d_in)))
            layer.params["W"][...] = q * np.sign(np.diag(r))
        layer.set_optimizer(lambda params: SGD(params, lr, momentum=0.0))
        layers.append(layer)
    return layers


def end_to_end(layers):
    """M = W_1 W_2 ... W_L: (D, K), the linear map the whole model computes."""
    M = layers[0].params["W"]
    for layer in layers[1:]:
        M = M @ layer.params["W"]
    return M


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


def main(argv=None):
    """`python -m minidni.experiments.czarnecki --out DIR [--budget short] [--seeds 0,1,2] [--experiments linear_mse,...]`:
    the experiment command, with the choice of experiments."""
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


if __name__ == "__main__":
    raise SystemExit(main())
