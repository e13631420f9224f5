"""Two networks on two timescales, linked by a DNI: A learns from B without waiting for B's backward pass.

Network A (an LSTM) ticks every step and reads a stream of random symbols x_t in {0..K-1}. Its own task is to
name the symbol it is reading now (a readout on every step). Every T steps A sends B a message, a linear map of
its output, m = h_A W_m (B, d_m). Network B (another LSTM) ticks once per message and sees nothing else. B's task
at tick j is to name the symbol A read at the FIRST step of window j, T - 1 steps before the message was sent:

    step     t0 = jT   t0+1   ...   t0+T-1
    A reads  x_t0      x_t0+1 ...   x_t0+T-1       A's loss: name x_t, every step
    A sends                         m_j ------> B  B's loss: name x_t0

Only A ever sees x_t0, and nothing in A's own task asks it to remember a symbol once it has named it, so B can
solve its task only if A learns to keep x_t0 for T - 1 steps and to put it into the message: A must learn from
B's loss. The systems compared:

    dni     A's chunk of T steps ends with the message. A synthetic-gradient module predicts dL_B/dm at once
            from what A knows when it sends: its state [h, tanh(c)] and (sg_context, the default)
            the T symbols it read in the chunk, one-hot. A updates with its own in-chunk gradients plus the
            prediction sent back through W_m and its T steps. B trains by truncated BPTT over `b_ticks` ticks, so
            the true dL_B/dm_j exists only after B's chunk holding tick j has been forwarded and backpropagated
            (up to b_ticks messages later); then it becomes the module's regression target. A never waits for B.
            The module regresses a prediction made again from the same input with its current weights: it has
            taken regression steps since it predicted for all but the first message of B's chunk (as
            minidni.parallel.workers, and for the same reason: a late error fed back into weights that have moved).
            (Why the context: B's gradient depends on the symbol B must name. A module that reads only A's state
            can predict it only as far as the state already holds that symbol, so A learns to keep it only
            slowly - see docs/multinet.md for the measured difference.)
    bprop   the locked reference: A waits for B's backward pass and uses the true dL_B/dm. (Simulated here by
            running B's step for the message at once, with b_ticks = 1.)
    cut     A is trained by its own loss only; W_m never learns; B does the best it can with what arrives.
    frozen  A (and W_m) stay at their random initialisation; only B learns.

The metric: B's accuracy over the last `eval_ticks` ticks of training (symbols are fresh random draws every
step, so this is accuracy on unseen data); "solved" = at least 95 %. Chance is 1/K.

What this module deliberately is not: concurrent. The two networks run in one process, in the order a real
two-clock system would run them; minidni.parallel (later) runs decoupled parts in separate workers.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np

from minidni.core.backend import xp
from minidni.data.checkpoint import atomic_write, write_jsonl
from minidni.core.functional import softmax_xent_sum
from minidni.core.layers import Linear
from minidni.core.optim import make_optimizer
from minidni.recurrent.cells import LSTMCell, RecurrentNet
from minidni.recurrent.truncated import clip_grad_norm
from minidni.dni.synthetic import SyntheticGradient

SYSTEMS = ("dni", "bprop", "cut", "frozen")
SOLVED_ACCURACY = 0.95


@dataclasses.dataclass
class MultiNetConfig:
    system: str = "dni"  # dni | bprop | cut | frozen
    T: int = 5  # B ticks every T steps of A (and A's truncation)
    symbols: int = 8  # K
    hidden_a: int = 64
    hidden_b: int = 32
    message: int = 8  # d_m: the width of the A -> B link
    b_ticks: int = 3  # B's truncation, in ticks: how late the true gradient for a message arrives
    batch: int = 32
    lr: float = 3e-3
    sg_lr: float = None  # None: lr
    sg_use_scale: float = 1.0  # the link's synthetic gradient enters A multiplied by this
    sg_context: bool = True  # the link's SG module also reads the symbols A read in the chunk (False: state only)
    clip: float = 1.0
    ticks: int = 6000  # the budget: B ticks (A chunks)
    eval_ticks: int = 500  # B's accuracy is measured over this many last ticks
    log_every: int = 500
    seed: int = 0
    out: str = None  # where config.json and metrics.jsonl go (None: nowhere)

    def validate(self):
        if self.system not in SYSTEMS:
            raise ValueError(f"system must be one of {SYSTEMS}, got {self.system!r}")
        for name in ("T", "symbols", "hidden_a", "hidden_b", "message", "b_ticks", "batch", "ticks", "eval_ticks",
                     "log_every"):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.T < 2:
            raise ValueError(
                f"T must be >= 2 (B's target is the window's first symbol, T - 1 steps back), got {self.T}"
            )
        if self.symbols < 2:
            raise ValueError(f"symbols must be >= 2, got {self.symbols}")
        for name in ("lr", "sg_use_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive finite number, got {getattr(self, name)!r}")
        for name in ("sg_lr", "clip"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number or None, got {value!r}")
        if self.system != "bprop" and self.log_every < self.b_ticks:
            raise ValueError(f"log_every ({self.log_every}) must be at least b_ticks ({self.b_ticks}): B's accuracy "
                             "is recorded when B runs, once every b_ticks ticks")  # fmt: skip
        return self


class TwoTimescaleSystem:
    """A, its message head W_m, the link's SG module, and B, with the bookkeeping of the delayed targets."""

    def __init__(self, cfg):
        cfg.validate()
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        K = cfg.symbols
        self.a = RecurrentNet(LSTMCell(K, cfg.hidden_a, rng=rng), K, rng=rng)
        self.w_m = Linear(cfg.hidden_a, cfg.message, init="xavier", rng=rng)  # m = h_A W_m + b
        self.b = RecurrentNet(LSTMCell(cfg.message, cfg.hidden_b, rng=rng), K, rng=rng)
        make = lambda p: make_optimizer("adam", p, cfg.lr)
        for part in (self.a, self.w_m, self.b):
            part.set_optimizer(make)
        self.sg = None
        if cfg.system == "dni":
            # M reads what A knows when it sends - its state [h, tanh c] and, with sg_context, the chunk's symbols -
            # and predicts dL_B/dm (d_m numbers)
            d_sg = self.a.state_size + (cfg.T * K if cfg.sg_context else 0)
            self.sg = SyntheticGradient(d_sg, d_out=cfg.message, scale=cfg.batch, rng=rng)
            self.sg.set_optimizer(lambda p: make_optimizer("adam", p, cfg.sg_lr or cfg.lr))
        self.b_ticks = 1 if cfg.system == "bprop" else cfg.b_ticks
        self.s_a = self.a.initial_state(cfg.batch)
        self.s_b = self.b.initial_state(cfg.batch)
        self.inbox = []  # B's chunk so far: (message, B's target) per tick
        self.pending = []  # dni: the module's input per message in B's chunk, awaiting the true dL_B/dm
        self.sg_losses = []  # dni: the link module's regression losses as they arrive (emptied by each metric record)
        self.b_accuracy = None  # B's accuracy on its last chunk

    def a_chunk(self, xs):
        """A reads T symbols (T, B) ints, trains on its own loss (+ the link's gradient) and sends a message;
        returns (A's loss per step, A's accuracy, B's accuracy if B ran on this call else None)."""
        cfg, a = self.cfg, self.a
        logits, ss, cache = a.forward(xs, self.s_a)
        loss, dlogits = softmax_xent_sum(logits, xs)  # A's own task: name the symbol it reads
        h_end = a.cell.output(ss[-1])  # (B, H_A)
        m, m_cache = self.w_m.forward(h_end)  # (B, d_m): the message
        dm = None
        if cfg.system == "dni":
            sg_input = self._sg_input(ss[-1], xs)
            dm_syn, _ = self.sg.predict(sg_input)  # (B, d_m): the predicted dL_B/dm, available now
            self.pending.append(sg_input)  # M predicts again when the target arrives (see _b_chunk)
            dm = cfg.sg_use_scale * dm_syn
        elif cfg.system == "bprop":
            dm = self._b_step_now(m, xs[0])  # A waits for B's backward pass: the locked reference
        dhs_extra = None
        if dm is not None:
            dhs_extra = xp().zeros(ss.shape[:2] + (cfg.hidden_a,), dtype=ss.dtype)  # (T, B, H_A)
            dhs_extra[-1] = self.w_m.backward(dm, m_cache)  # also fills W_m's grads
        if cfg.system != "frozen":
            a.backward(dlogits, xp().zeros_like(ss[-1]), cache, dhs_extra)
            clip_grad_norm(list(a.layers().values()) + ([self.w_m] if dm is not None else []), cfg.clip)
            a.update()
            if dm is not None:
                self.w_m.update()
        self.s_a = ss[-1].copy()  # truncated: no gradient crosses A's chunk boundary
        acc_a = float((logits.argmax(axis=2) == xs).mean())
        b_acc = self.b_accuracy if cfg.system == "bprop" else None  # bprop: B already ran, for this message
        if cfg.system != "bprop":
            self.inbox.append((m, xs[0]))
            if len(self.inbox) == self.b_ticks:  # B's chunk is complete: B runs
                self._b_chunk()
                b_acc = self.b_accuracy
        return float(loss) / xs.shape[0], acc_a, b_acc

    def _sg_input(self, s_end, xs):
        """What the link's SG module reads: A's state as [h, tanh(c)] (B, 2 H_A), and with sg_context also the symbols
        A read in the chunk, one-hot, side by side (B, T K): everything A itself knows when it sends the message."""
        state = self.a.cell.features(s_end)  # [h, tanh(c)]: A's state is never reset, c is unbounded
        if not self.cfg.sg_context:
            return state
        onehot = xp().eye(self.cfg.symbols, dtype=s_end.dtype)[xs]  # (T, B, K)
        return xp().concatenate([state, onehot.transpose(1, 0, 2).reshape(xs.shape[1], -1)], axis=1)

    def _b_chunk(self):
        """B forwards and backpropagates its chunk of ticks (the inbox); returns dL_B/dm per message
        (b_ticks, B, d_m). Under dni these true gradients become the link module's targets, late."""
        ms = xp().stack([m for m, _ in self.inbox])  # (b_ticks, B, d_m)
        ys = xp().stack([y for _, y in self.inbox])  # (b_ticks, B)
        logits, ss, cache = self.b.forward(ms, self.s_b)
        _, dlogits = softmax_xent_sum(logits, ys)
        _, dms = self.b.backward(dlogits, xp().zeros_like(ss[-1]), cache, need_dxs=True)
        clip_grad_norm(self.b.layers().values(), self.cfg.clip)
        self.b.update()
        self.s_b = ss[-1].copy()  # B's own truncation: nothing crosses its chunk boundary
        for sg_input, dm_true in zip(self.pending, dms):
            # M has moved since it predicted for this message (its regressions on the messages before it): it
            # predicts again with its current weights and regresses that prediction
            pred, sg_cache = self.sg.predict(sg_input)  # (B, d_m)
            self.sg_losses.append(self.sg.update(pred, sg_cache, dm_true))
        self.pending, self.inbox = [], []
        self.b_accuracy = float((logits.argmax(axis=2) == ys).mean())
        return dms

    def _b_step_now(self, m, y):
        """bprop: B ticks on this message at once and A gets the true dL_B/dm (B, d_m) - A waits for B."""
        self.inbox = [(m, y)]
        return self._b_chunk()[0]


def train_multinet(cfg, log=print):
    """Train one system for cfg.ticks B-ticks; returns the metric records (the last is the result)."""
    system = TwoTimescaleSystem(cfg)
    rng = np.random.default_rng([cfg.seed, 1])  # the symbol stream
    if cfg.out:
        os.makedirs(cfg.out, exist_ok=True)
        atomic_write(os.path.join(cfg.out, "config.json"), json.dumps(dataclasses.asdict(cfg), indent=2))
    metrics, b_accs, a_accs, losses, t0 = [], [], [], [], time.perf_counter()
    for tick in range(1, cfg.ticks + 1):
        xs = xp().asarray(rng.integers(0, cfg.symbols, size=(cfg.T, cfg.batch)))
        loss, acc_a, acc_b = system.a_chunk(xs)
        a_accs.append(acc_a)
        losses.append(loss)
        if acc_b is not None:  # B ran (each entry: B's accuracy over its chunk of b_ticks ticks)
            b_accs.append(acc_b)
        if tick % cfg.log_every == 0 or tick == cfg.ticks:
            recent = b_accs[-max(1, cfg.eval_ticks // system.b_ticks) :]
            metrics.append({
                "tick": tick, "b_accuracy": float(np.mean(recent)), "a_accuracy": float(np.mean(a_accs[-cfg.log_every:])),
                "a_loss": float(np.mean(losses[-cfg.log_every:])),
                "sg_loss": float(np.mean(system.sg_losses)) if system.sg_losses else None,  # dni: the link module's
                "seconds": round(time.perf_counter() - t0, 2),
            })  # fmt: skip
            system.sg_losses = []
            if cfg.out:
                write_jsonl(os.path.join(cfg.out, "metrics.jsonl"), metrics)
    final = metrics[-1]
    final["solved"] = final["b_accuracy"] >= SOLVED_ACCURACY
    if cfg.out:
        write_jsonl(os.path.join(cfg.out, "metrics.jsonl"), metrics)
    log(f"multinet {cfg.system} T={cfg.T}: B accuracy {final['b_accuracy']:.3f} (chance {1 / cfg.symbols:.3f}), "
        f"A accuracy {final['a_accuracy']:.3f}, {final['seconds']:.0f} s")  # fmt: skip
    return metrics
