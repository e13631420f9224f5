"""Algorithmic sequence tasks for recurrent networks: Copy and Repeat Copy (Graves et al. 2014, "Neural Turing
Machines"), their loss, and a curriculum that lengthens the sequences as the network learns.

Every array is time-major: x (L, B, D_in), y (L, B, D_out), mask (L, B). A batch shares one difficulty, so
every sequence in it has the same length L and no padding is needed. Patterns are random bit vectors, each bit
Bernoulli(0.5), drawn fresh for every episode: the network cannot memorise them, it has to store and recall.

Copy, difficulty N (bits = 8 by default; D_in = bits + 1, D_out = bits, L = 2N + 1):

    step      0 .. N-1                  N                         N+1 .. 2N
    input     p_t (channels 0..bits-1)  delimiter (channel bits)  zeros
    target    (not scored)              (not scored)              p_0 .. p_{N-1}, in order

Repeat Copy, difficulty N, R repeats (D_in = bits + 2, D_out = bits + 1, L = N + 1 + N R + 1):

    step      0 .. N-1          N                           N+1 .. N+NR           N+NR+1
    input     p_t               delimiter (channel bits),   zeros                 zeros
                                R / max_repeats (bits+1)
    target    (not scored)      (not scored)                p_0 .. p_{N-1}, R     end marker on channel bits,
                                                            times in a row        every other output 0

The end marker says "I have finished": to raise it on the right step the network has to count the repeats.
Its output channel (bits) has target 0 on every other step and is scored on every answer step too: raising it
early is penalised, as is not raising it at the end.

The loss (what a trainer backpropagates) is the binary cross-entropy of sigmoid(logits) against the targets,
summed over the scored steps and output bits and divided by the batch size: the cost per sequence, in nats,
the way Graves reports it. It is computed in the stable form

    xent(z, y) = max(z, 0) - y z + log1p(exp(-|z|))        = -y log s - (1 - y) log(1 - s),  s = sigmoid(z)

which never takes the exponential of a large positive number. Its gradient is (sigmoid(z) - y) mask / B.

Two metrics, both averaged over the scored output bits only: `bits_per_bit` (the same cross-entropy in bits,
log base 2: zero logits score exactly 1 bit, a perfect prediction 0) and `bit_error_rate` (the fraction of
scored bits whose rounded prediction, logit > 0, is wrong).

The curriculum. A level is "solved" when the mean cross-entropy over the last `window` training batches at
that level, in bits per scored output bit, is below `threshold` (defaults: 50 batches, 0.15 bits). Then the
level goes up by one and the window starts empty again, so every level gets at least `window` batches. This is
our stated criterion, not a value taken from a paper: 0.15 bits is far below the 1 bit per bit of guessing,
so most bits must be predicted right, and with confidence, for a level to count as solved.

What a level means (our choice, not a recalled paper value):
    copy         N = level.
    repeat_copy  N = level, and each batch draws its repeat count R uniformly from {1, ..., max_repeats}
                 (default max_repeats = 3). The repeat channel carries R / max_repeats, in (0, 1]. Difficulty
                 grows with the level through N alone: the counting part of the task stays the same at every
                 level, and the pattern to store grows by one vector per level.

What this module deliberately is not: a data set or a trainer. Episodes are generated on the host with NumPy
from the generator you pass (so a run is reproducible from its seed); the loss and metrics follow the device of
the logits they are given. Training the RNN, and deciding when to call the curriculum, is the trainer's job.
"""

import math
import numbers
from collections import deque
from typing import NamedTuple

import numpy as np

from minidni.core.backend import array_module

TASKS = ("copy", "repeat_copy")
MAX_REPEATS = 3  # repeat_copy: R is drawn from {1, ..., MAX_REPEATS} and the repeat channel carries R / MAX_REPEATS


class Episode(NamedTuple):
    """One batch of one task at one difficulty, time-major."""

    x: np.ndarray  # (L, B, D_in) float32 inputs
    y: np.ndarray  # (L, B, D_out) float32 targets in {0, 1}
    mask: np.ndarray  # (L, B) float32: 1 where the output is scored, 0 elsewhere
    length: int  # the difficulty N: how many vectors the network has to store


# ------------------------------------------------------------------------------------------------------------
# argument checks


def _check_int(name, value, minimum):
    """An integer (a bool is not a count) no smaller than `minimum`."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}")
    return rng


def _random_patterns(rng, n, batch, bits):
    """N random bit vectors per sequence, each bit Bernoulli(0.5)."""
    return rng.integers(0, 2, size=(n, batch, bits)).astype(np.float32)  # (N, B, bits)


# ------------------------------------------------------------------------------------------------------------
# the tasks


def copy_episode(rng, batch, n, bits=8):
    """Copy: show N random bit vectors, then a delimiter; the network must output the N vectors in order.

    Returns an Episode with x (2N+1, B, bits+1), y (2N+1, B, bits), mask (2N+1, B) that is 1 on the last N steps.
    """
    rng = _check_rng(rng)
    batch, n, bits = _check_int("batch", batch, 1), _check_int("n", n, 1), _check_int("bits", bits, 1)
    L = 2 * n + 1
    p = _random_patterns(rng, n, batch, bits)  # (N, B, bits)

    x = np.zeros((L, batch, bits + 1), dtype=np.float32)  # (L, B, D_in)
    x[:n, :, :bits] = p
    x[n, :, bits] = 1.0  # the delimiter: "the pattern is over, start answering"

    y = np.zeros((L, batch, bits), dtype=np.float32)  # (L, B, D_out)
    y[n + 1 :] = p  # the answer phase: the input is all zeros, the target is the pattern

    mask = np.zeros((L, batch), dtype=np.float32)  # (L, B)
    mask[n + 1 :] = 1.0  # what the network outputs while it is still reading is not scored
    return Episode(x, y, mask, n)


def repeat_copy_episode(rng, batch, n, repeats, bits=8, max_repeats=MAX_REPEATS):
    """Repeat Copy: show N random bit vectors, then a delimiter with the repeat count; the network must output
    the N vectors `repeats` times in a row and then raise the end marker.

    Returns an Episode with L = N + 1 + N*repeats + 1: x (L, B, bits+2), y (L, B, bits+1), mask (L, B) that is 1
    on the last N*repeats + 1 steps. Input channel bits+1 carries repeats / max_repeats on the delimiter step.
    """
    rng = _check_rng(rng)
    batch, n, bits = _check_int("batch", batch, 1), _check_int("n", n, 1), _check_int("bits", bits, 1)
    max_repeats = _check_int("max_repeats", max_repeats, 1)
    repeats = _check_int("repeats", repeats, 1)
    if repeats > max_repeats:
        raise ValueError(f"repeats must be in 1..max_repeats = 1..{max_repeats}, got {repeats}")
    answer = n * repeats  # steps of copied output before the end marker
    L = n + 1 + answer + 1
    p = _random_patterns(rng, n, batch, bits)  # (N, B, bits)

    x = np.zeros((L, batch, bits + 2), dtype=np.float32)  # (L, B, D_in)
    x[:n, :, :bits] = p
    x[n, :, bits] = 1.0  # delimiter
    x[n, :, bits + 1] = repeats / max_repeats  # the count, normalised into (0, 1]

    y = np.zeros((L, batch, bits + 1), dtype=np.float32)  # (L, B, D_out)
    y[n + 1 : n + 1 + answer, :, :bits] = np.tile(p, (repeats, 1, 1))  # (N R, B, bits): p_0..p_{N-1}, R times
    y[L - 1, :, bits] = 1.0  # the end marker, alone on the last step

    mask = np.zeros((L, batch), dtype=np.float32)  # (L, B)
    mask[n + 1 :] = 1.0  # every answer step and the end step; on answer steps the end channel is scored as 0
    return Episode(x, y, mask, n)


def task_dims(task, bits=8):
    """(D_in, D_out) of a task's episodes: what an RNN for it must read and emit."""
    _check_task(task)
    bits = _check_int("bits", bits, 1)
    return (bits + 1, bits) if task == "copy" else (bits + 2, bits + 1)


def _check_task(task):
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def make_episode(task, rng, batch, level, bits=8, max_repeats=MAX_REPEATS):
    """One batch of `task` at curriculum level `level`: the one entry point a trainer calls.

    copy:        N = level.
    repeat_copy: N = level, repeats drawn uniformly from {1, ..., max_repeats} (one count for the whole batch).
    """
    _check_task(task)
    rng = _check_rng(rng)
    level = _check_int("level", level, 1)
    if task == "copy":
        return copy_episode(rng, batch, level, bits)
    max_repeats = _check_int("max_repeats", max_repeats, 1)
    repeats = int(rng.integers(1, max_repeats + 1))  # drawn before the patterns
    return repeat_copy_episode(rng, batch, level, repeats, bits, max_repeats)


# ------------------------------------------------------------------------------------------------------------
# loss and metrics


def _check_outputs(logits, y, mask):
    """logits and y (L, B, D), mask (L, B), on the device of the logits; the mask must score something."""
    m = array_module(logits)
    z = m.asarray(logits)
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float64)
    y, mask = m.asarray(y, dtype=z.dtype), m.asarray(mask, dtype=z.dtype)
    if z.ndim != 3 or y.shape != z.shape or mask.shape != z.shape[:2]:
        raise ValueError(
            f"expected logits and y of one shape (L, B, D) and mask (L, B); got logits {z.shape}, y {y.shape}, "
            f"mask {mask.shape}"
        )
    return m, z, y, mask


def _xent(m, z, y):
    """Elementwise binary cross-entropy of sigmoid(z) against y, in nats, stable for any |z|."""
    return m.maximum(z, 0) - y * z + m.log1p(m.exp(-m.abs(z)))


def _sigmoid(m, z):
    """sigmoid(z) from exp(-|z|), which is never larger than 1: no overflow for large |z|."""
    e = m.exp(-m.abs(z))
    return m.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _scored_bits(mask, d):
    n = float(mask.sum()) * d
    if n <= 0:
        raise ValueError("the mask scores no outputs: expected at least one step with mask 1")
    return n


def sigmoid_xent(logits, y, mask):
    """The training loss and its gradient.

    loss = (1/B) sum_{t, b, k} mask[t, b] xent(logits[t, b, k], y[t, b, k])   (nats per sequence)
    dlogits = (sigmoid(logits) - y) mask / B                                    (L, B, D)
    """
    m, z, y, mask = _check_outputs(logits, y, mask)
    B = z.shape[1]
    w = mask[:, :, None]  # (L, B, 1): broadcast over the output bits
    loss = float((_xent(m, z, y) * w).sum(dtype=m.float64)) / B  # accumulate in float64 for a precise total
    dlogits = (_sigmoid(m, z) - y) * (w / B)  # (L, B, D)
    return loss, dlogits


def bits_per_bit(logits, y, mask):
    """Mean cross-entropy over the scored output bits, in bits: 1.0 for zero logits, 0 for a perfect answer."""
    m, z, y, mask = _check_outputs(logits, y, mask)
    n = _scored_bits(mask, z.shape[2])
    nats = float((_xent(m, z, y) * mask[:, :, None]).sum(dtype=m.float64))
    return nats / n / math.log(2)


def bit_error_rate(logits, y, mask):
    """Fraction of the scored output bits whose rounded prediction (logit > 0) is not the target."""
    m, z, y, mask = _check_outputs(logits, y, mask)
    n = _scored_bits(mask, z.shape[2])
    wrong = (z > 0) != (y > 0.5)  # (L, B, D) bool
    return float((wrong * mask[:, :, None]).sum(dtype=m.float64)) / n


# ------------------------------------------------------------------------------------------------------------
# the curriculum


class Curriculum:
    """Length curriculum: train at one level until it is solved, then move up one.

    Call `update(error)` once per training batch with that batch's error in bits per scored output bit
    (`bits_per_bit`). The level advances when the mean of the last `window` errors recorded at the current
    level is below `threshold`; errors from earlier levels never count. With max_level set, the curriculum stops
    there: solving max_level sets `solved` (and `done`) but does not advance.

    level:   the current level (start at first).
    solved:  the highest level solved so far (start - 1 before any).
    history: [(batch_index, new_level), ...], one per advance; batch_index counts update calls from 0 and names
             the batch whose error completed the window.
    """

    def __init__(self, start=1, threshold=0.15, window=50, max_level=None):
        self.start = _check_int("start", start, 1)
        if not (isinstance(threshold, numbers.Real) and not isinstance(threshold, bool) and 0 < threshold < math.inf):
            raise ValueError(f"threshold must be a positive finite number (bits per bit), got {threshold!r}")
        self.threshold = float(threshold)
        self.window = _check_int("window", window, 1)
        if max_level is not None:
            max_level = _check_int("max_level", max_level, self.start)
        self.max_level = max_level
        self.level = self.start
        self.solved = self.start - 1
        self.history = []
        self.batches = 0  # update calls so far, at every level
        self._errors = deque(maxlen=self.window)  # the errors at the current level, newest last

    @property
    def done(self):
        """True once max_level has been solved (never without a max_level)."""
        return self.max_level is not None and self.solved >= self.max_level

    def update(self, error):
        """Record one batch's error at the current level; return True if the level just advanced."""
        if not (isinstance(error, numbers.Real) and not isinstance(error, bool)) or not error >= 0:
            raise ValueError(f"error must be a non-negative number (bits per output bit), got {error!r}")
        index = self.batches
        self.batches += 1
        self._errors.append(float(error))
        if len(self._errors) < self.window or not sum(self._errors) / self.window < self.threshold:
            return False
        self.solved = max(self.solved, self.level)
        if self.max_level is not None and self.level >= self.max_level:
            return False  # the last level: solved, nowhere to go
        self.level += 1
        self.history.append((index, self.level))
        self._errors.clear()  # the next level starts its own window
        return True

    # settings and progress as plain numbers and lists (JSON-friendly), for checkpoints
    def _settings(self):
        return {"start": self.start, "threshold": self.threshold, "window": self.window, "max_level": self.max_level}

    def state_dict(self):
        state = self._settings()
        state.update(
            level=self.level,
            solved=self.solved,
            batches=self.batches,
            errors=list(self._errors),
            history=[list(event) for event in self.history],
        )
        return state

    def load_state_dict(self, state):
        """Restore the progress saved by state_dict; the settings must be this curriculum's own."""
        saved = {k: state[k] for k in self._settings()}
        if saved != self._settings():
            raise ValueError(f"checkpoint curriculum settings {saved} differ from this curriculum's {self._settings()}")
        errors = [float(e) for e in state["errors"]]
        if len(errors) > self.window:
            raise ValueError(f"checkpoint holds {len(errors)} errors, more than the window of {self.window}")
        self.level = int(state["level"])
        self.solved = int(state["solved"])
        self.batches = int(state["batches"])
        self._errors = deque(errors, maxlen=self.window)
        self.history = [(int(i), int(level)) for i, level in state["history"]]

    def __repr__(self):
        return (
            f"Curriculum(level={self.level}, solved={self.solved}, threshold={self.threshold}, "
            f"window={self.window}, max_level={self.max_level})"
        )
