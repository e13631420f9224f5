"""Optimisers and learning-rate schedules.

An optimiser is bound to one layer's parameter dictionary and keeps that layer's optimiser state (momentum,
Adam moments). That is what lets every block of a decoupled network update on its own, the moment its
(synthetic) gradient exists, with no global "optimizer.step()" that waits for the whole network.

All updates are in place, through preallocated scratch buffers, because the step runs for every block on
every batch.

What this module deliberately is not: a parameter-group system. A block that needs another learning rate gets
another optimiser.
"""

import math

from minidni.core.backend import array_module


class Optimizer:
    """Base class: `params` is the layer's {name: array} dict, updated in place by `step(grads)`."""

    def __init__(self, params, lr):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.params = params
        self.base_lr = float(lr)
        self.lr = float(lr)  # base_lr times the schedule's current factor (set by the trainer)
        self.t = 0  # steps taken
        self._scratch = {k: p.copy() for k, p in params.items()}  # reused temporaries, one per parameter

    def begin_step(self):
        """Count the step; optimisers whose step has per-step constants return them (see Adam)."""
        self.t += 1
        return ()

    def step(self, grads):
        self.begin_step()
        for name, p in self.params.items():
            self._update(name, p, grads[name], self._scratch[name])

    def _update(self, name, p, g, tmp):
        raise NotImplementedError

    # the optimiser's state as named arrays plus scalars, for checkpoints
    def state_arrays(self):
        return {}

    def state_dict(self):
        return {"t": self.t, "lr": self.lr, "arrays": self.state_arrays()}

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.lr = float(state["lr"])
        for name, arr in self.state_arrays().items():
            arr[...] = array_module(arr).asarray(state["arrays"][name])  # CuPy refuses to assign a host array


# The two update rules, element by element and in place, as plain functions: the optimiser classes below call
# them on their own state, and minidni.cuda.unfused on the state views a fused kernel would update (tmp: scratch
# of p's shape).


def sgd_update(p, g, v, lr, momentum, tmp):
    """v <- mu v + g;  p <- p - lr v."""
    if momentum:
        v *= momentum
        v += g
    else:
        v[...] = g
    array_module(p).multiply(v, lr, out=tmp)
    p -= tmp


def adam_update(p, g, M, V, a_t, eps_t, beta1, beta2, tmp):
    """Adam in its sum form (see Adam): M <- b1 M + g;  V <- b2 V + g^2;  p <- p - a_t M / (sqrt(V) + eps_t)."""
    xp = array_module(p)
    M *= beta1
    M += g
    xp.multiply(g, g, out=tmp)
    V *= beta2
    V += tmp
    xp.sqrt(V, out=tmp)
    tmp += eps_t
    xp.divide(M, tmp, out=tmp)
    tmp *= a_t
    p -= tmp


class SGD(Optimizer):
    """Stochastic gradient descent with (heavy-ball) momentum: v <- mu v + g; p <- p - lr v."""

    def __init__(self, params, lr, momentum=0.9):
        super().__init__(params, lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.velocity = {k: 0 * p for k, p in params.items()}

    def _update(self, name, p, g, tmp):
        sgd_update(p, g, self.velocity[name], self.lr, self.momentum, tmp)

    def state_arrays(self):
        return {f"velocity.{k}": v for k, v in self.velocity.items()}


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), with its two moments kept as exponentially weighted *sums*.

    The paper keeps averages, m_t = b1 m_{t-1} + (1 - b1) g_t and v_t = b2 v_{t-1} + (1 - b2) g_t^2, and steps
        p <- p - lr m_hat / (sqrt(v_hat) + eps),   m_hat = m_t / (1 - b1^t),  v_hat = v_t / (1 - b2^t).
    Here M_t = b1 M_{t-1} + g_t and V_t = b2 V_{t-1} + g_t^2, so m_t = (1 - b1) M_t and v_t = (1 - b2) V_t.
    Substituting, the same step is
        p <- p - a_t M_t / (sqrt(V_t) + eps_t),   c_t = sqrt((1 - b2) / (1 - b2^t)),
        a_t = lr (1 - b1) / ((1 - b1^t) c_t),      eps_t = eps / c_t.
    The constants fold into two scalars per step, and each update is 10 in-place passes over the parameter
    instead of 12: this runs for every parameter of every block on every batch.
    """

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.M = {k: 0 * p for k, p in params.items()}  # sum_k b1^(t-k) g_k      = m_t / (1 - b1)
        self.V = {k: 0 * p for k, p in params.items()}  # sum_k b2^(t-k) g_k^2    = v_t / (1 - b2)

    def begin_step(self):
        """Count the step and fold this step's constants: returns (a_t, eps_t). Fused GPU kernels that apply the
        update element by element (minidni.cuda) call this once per step instead of `step`."""
        self.t += 1
        c = math.sqrt((1 - self.beta2) / (1 - self.beta2**self.t))
        self.a_t = self.lr * (1 - self.beta1) / ((1 - self.beta1**self.t) * c)
        self.eps_t = self.eps / c
        return self.a_t, self.eps_t

    def _update(self, name, p, g, tmp):
        adam_update(p, g, self.M[name], self.V[name], self.a_t, self.eps_t, self.beta1, self.beta2, tmp)

    def moments(self, name):
        """The paper's (m_t, v_t) for one parameter, for inspection and tests."""
        return (1 - self.beta1) * self.M[name], (1 - self.beta2) * self.V[name]

    def state_arrays(self):
        return {**{f"M.{k}": a for k, a in self.M.items()}, **{f"V.{k}": a for k, a in self.V.items()}}


class StepSchedule:
    """Multiply the learning rate by `gamma` at each milestone (in steps): the paper divides by 10 at 300k and 400k."""

    def __init__(self, milestones=(), gamma=0.1):
        self.milestones = sorted(int(m) for m in milestones)
        if any(m <= 0 for m in self.milestones):
            raise ValueError(f"milestones must be positive step counts, got {milestones}")
        self.gamma = gamma

    def factor(self, step):
        """The factor in force for (0-based) training step `step`."""
        return self.gamma ** sum(step >= m for m in self.milestones)


def make_optimizer(name, params, lr, momentum=0.9):
    if name == "adam":
        return Adam(params, lr)
    if name == "sgd":
        return SGD(params, lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; expected 'adam' or 'sgd'")
