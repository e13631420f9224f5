"""Stochastic updates: each block does its backward and update on a forward pass only with probability p_update.

The experiment (Jaderberg et al. 2016, Fig. 7) asks what happens when blocks do not update in lock-step. After
each forward pass, every block independently flips a coin: with probability p_update it does its backward pass
and its update, in a random order among the blocks chosen. Nothing else is synchronised.

Numbering is the code's: blocks 0 .. N-1 (N-1 is the output block) and sg_i, the synthetic-gradient module on
block i's output (net.hidden[i].sg; minidni.dni.steps maps these to the paper's f_{i+1} and M_{i+2}).

    bprop (gated):  a block's gradient comes from the block above it. If any block above skipped its backward,
                    the chain is broken and everything below gets no gradient on this pass: block 0 receives an
                    error gradient only if all N-1 blocks above it ran (probability p^(N-1), the paper's p^3 for
                    its 4-layer FCN), and updates with probability p^N.
    dni / cdni:     block i's gradient comes from its own module sg_i, which is always there. It updates with
                    probability p no matter what the other blocks do. sg_i itself learns only when block i+1 runs
                    its backward (that is when its target, block i+1's input gradient, exists).

One gated step on a batch (x, y) (minidni.dni.steps: gated_step, gated_bprop_step, gated_dni_step):

    forward every block (the real forward pass; every cache is kept)
    chosen = [blocks whose coin came up, in random order]
    bprop:    walk from the output block down, stopping at the first block not chosen
    dni:      for j in chosen:  j = N-1 (output):  update from the true dL/dlogits;  sg_{N-2} regresses onto dx_j
                                otherwise:         update from dh_syn = sg_j(h_j);   sg_{j-1} regresses onto dx_j
              (dx_j: block j's input gradient. Every block runs its training-mode forward on every pass, so
              batch-norm running statistics move even in blocks whose coin did not come up.)

The order matters under DNI: if block j+1 runs before block j, sg_j has already taken a regression step when
block j asks it for a synthetic gradient.

This module holds the coins (UpdateGate); the gated steps are with the other training steps in minidni.dni.steps.

What this module deliberately is not: asynchronous. The coins make the *schedule* irregular; the steps still run
one after another in this process, so that every run is reproducible from its seed.
"""

import numbers

import numpy as np


def check_p_update(p_update):
    """p_update must be a probability in (0, 1]: 0 would freeze every block, and a bool is not a probability."""
    if not (isinstance(p_update, numbers.Real) and not isinstance(p_update, bool) and 0 < p_update <= 1):
        raise ValueError(f"p_update must be a probability in (0, 1], got {p_update!r}")
    return float(p_update)


class UpdateGate:
    """The coins: which blocks update after a forward pass, and in what order.

    Its random generator is separate from every other one and is saved in checkpoints (state/set_state), so a
    resumed run draws the same schedule as an uninterrupted one.
    """

    def __init__(self, p_update, seed=0):
        self.p_update = check_p_update(p_update)
        self.rng = np.random.default_rng([seed, 2])

    def draw(self, n_blocks):
        """The indices of the blocks that update on this forward pass, in the order they run."""
        chosen = self.rng.random(n_blocks) < self.p_update  # (n_blocks,) one coin per block
        order = self.rng.permutation(n_blocks)
        return [int(j) for j in order if chosen[j]]

    def state(self):
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state

    def __repr__(self):
        return f"UpdateGate(p_update={self.p_update})"


def update_counts(records, n_blocks):
    """How often each block updated, as a fraction of the steps in `records` (the "updated" lists)."""
    counts = np.zeros(n_blocks)
    for r in records:
        counts[r["updated"]] += 1
    return counts / max(len(records), 1)
