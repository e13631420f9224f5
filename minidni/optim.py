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

from .backend import array_module


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

    def step(self, grads):
        self.t += 1
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
            arr[...] = state["arrays"][name]


class SGD(Optimizer):
    """Stochastic gradient descent with (heavy-ball) momentum: v <- mu v + g; p <- p - lr v."""

    def __init__(self, params, lr, momentum=0.9):
        super().__init__(params, lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.velocity = {k: 0 * p for k, p in params.items()}

    def _update(self, name, p, g, tmp):
        v = self.velocity[name]
        if self.momentum:
            v *= self.momentum
            v += g
        else:
            v[...] = g
        array_module(p).multiply(v, self.lr, out=tmp)
        p -= tmp

    def state_arrays(self):
        return {f"velocity.{k}": v for k, v in self.velocity.items()}


class Adam(Optimizer):
    """Adam (Kingma & Ba): moment estimates m, v with bias correction folded into the step size."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.m = {k: 0 * p for k, p in params.items()}
        self.v = {k: 0 * p for k, p in params.items()}

    def step(self, grads):
        self.t += 1
        # bias corrections as scalars: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), eps scaled to match
        c2 = math.sqrt(1 - self.beta2**self.t)
        self._lr_t = self.lr * c2 / (1 - self.beta1**self.t)
        self._eps_t = self.eps * c2
        for name, p in self.params.items():
            self._update(name, p, grads[name], self._scratch[name])

    def _update(self, name, p, g, tmp):
        xp = array_module(p)
        m, v = self.m[name], self.v[name]
        # m <- b1 m + (1 - b1) g, written as b1 (m - g) + g: three in-place passes, no temporary
        m -= g
        m *= self.beta1
        m += g
        # v <- b2 v + (1 - b2) g^2
        v *= self.beta2
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - self.beta2
        v += tmp
        # p <- p - lr_t m / (sqrt(v) + eps_t)
        xp.sqrt(v, out=tmp)
        tmp += self._eps_t
        xp.divide(m, tmp, out=tmp)
        tmp *= self._lr_t
        p -= tmp

    def state_arrays(self):
        out = {f"m.{k}": a for k, a in self.m.items()}
        out.update({f"v.{k}": a for k, a in self.v.items()})
        return out


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
