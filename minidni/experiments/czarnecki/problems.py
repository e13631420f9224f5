"""What Czarnecki et al. (2017)'s small experiments train: toy problems with a known optimum, the two losses, the
linear and deep linear models, and the synthetic-gradient modules.

A synthetic-gradient (SG) module after layer i predicts the gradient of the loss with respect to that layer's
output h_i; the layers below update with the prediction instead of the true gradient. Czarnecki et al. read an SG
module as a model of the loss: a module that predicts g(h) implies a loss L_SG with dL_SG/dh = g(h). A *linear*
module g(h) = h A + t C + c implies a loss quadratic in h; the log loss is not quadratic, and for it a pointwise
sigmoid, g(h) = sigma(h A + c) - t, has the right shape. On linear models everything is explicit, so one can ask
exactly: does SG training reach the solution backprop reaches, and does the SG module learn the true gradient?

Problems (generated from a seeded generator; `make_problem`)
    x ~ N(0, I_D), N rows (D = 2 or 100; N in `report.budget_sizes`); a teacher w* ~ N(0, I_D / D), so that x w*
    has unit variance.
    mse : t = x w* + 0.5 e, e ~ N(0, 1): linear regression with noise. Optimum: least squares.
    log : t ~ Bernoulli(sigma(2 x w*)): noisy binary labels, not linearly separable, so the mean log loss has
          a finite minimiser, found by Newton's method in float64 (which refuses separable data).
    No biases anywhere (the teacher has none): every model is a linear map, x -> x M.

Models (`build_model`)
    linear : one Linear(D, 1), M = W.
    deep   : L = 10 Linear layers D -> D -> ... -> D -> 1 with no nonlinearity; M = W_1 W_2 ... W_L. The D x D
             layers start as random orthogonal matrices (so the product neither explodes nor vanishes), the last
             one as Linear's "xavier" init.

SG kinds (`SG_KINDS`), all with zero-initialised parameters, all predicting per-example gradients (the gradient of
one example's loss, i.e. B times the batch-mean gradient), all regressing with normalised SGD steps (the step size
divided by the largest eigenvalue of E[x x^T] for what the module reads, x; see `normalised_step`):
    linear  : g = h A + t C + c            (conditioned on the target t, as the paper's SG(h, y))
    sigmoid : g = sigma(h A + c) - t       (the output only: h must have t's width K)
    oracle  : g = the true gradient        (not learnt; for the invariant "a perfect SG is backprop")

Shape glossary: N data rows (= B, full batch); D input width; D_i width of h_i (D, or K for the output); K = 1
output width; L depth.

What this module deliberately is not: a trainer. It builds what is trained and says what each piece computes;
where the modules sit and how one step combines them is `training`. Everything is linear, float64 and NumPy only,
so that the optimum and the true gradient are known in closed form.
"""

import dataclasses

import numpy as np

from minidni.core import functional as F
from minidni.core.backend import BackendError, backend_name
from minidni.core.layers import Linear
from minidni.core.optim import SGD

LOSSES = ("mse", "log")
MODELS = ("linear", "deep")
SG_KINDS = ("linear", "sigmoid", "oracle")
DIMS = (2, 100)  # the paper's input widths (recalled); any positive integer works
NOISE_STD = 0.5  # mse: label noise
LOGIT_SCALE = 2.0  # log: the teacher's logits are 2 x w*, std about 2


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
