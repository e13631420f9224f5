"""Truncated BPTT, and DNI for recurrent networks: a synthetic gradient at every truncation boundary.

A recurrent network that reads a long (or endless) sequence is trained in windows ("chunks") of T steps. The
state s carries forward from one chunk to the next, but truncated BPTT drops every gradient that would flow back
across a boundary: the loss at step 2T cannot teach the network anything about what it should have kept at step
T - 1. DNI adds, at the end of each chunk, a prediction of that missing gradient,

    ds_T_hat = M(s_T)        (M: a synthetic-gradient module, minidni.dni.synthetic; s = [h, c] for an LSTM,
                              which M reads as [h, tanh(c)]: see LSTMCell.features)

and backpropagates it through the chunk together with the chunk's own losses, scaled by 0.1 (`sg_use_scale`):

    chunk k:   dL/ds_t  for t in the chunk  =  true in-chunk gradients  +  0.1 * M(s_end) sent back from s_end

M learns by regression onto a bootstrapped target, one chunk later. When the next chunk has been forwarded, the
gradient of its losses with respect to its starting state (this chunk's s_end) is computed, together with the
NEXT boundary's prediction, unscaled, backpropagated through the next chunk:

    target(s_k) = d/ds_k [ sum of the losses in chunk k+1 ]  +  lambda M(s_{k+1}) . d s_{k+1} / d s_k

The target is computed by a second, state-only backward pass through the next chunk, with the weights that chunk
was forwarded with (before the core updates). With lambda = 1 (`sg_discount`, the default) M regresses onto the
true gradient of all future losses whenever the next prediction is right; the last boundary of a sequence, whose
future holds no loss, regresses onto the in-chunk gradient alone.

What M regresses is a prediction made again, from the same input ([h, tanh c] of s_k, and the context) with its
current weights. The prediction the core used was made in chunk k, before M's regression step of chunk k, so its
value and cache belong to weights that have moved since; regressing it would feed a late error back into weights
that have moved on. Predicting again makes the gradient of the regression loss exact where M now is, and only the
target is late (minidni.parallel.workers does the same, for the same reason).

The 0.1 damps what the CORE does with a prediction; it is not part of what M learns. (A common shortcut reuses the
core's scaled backward pass as the target, which makes M learn a gradient discounted by 0.1 per chunk.)

On an endless stream (the language model) the undiscounted sum need not be finite - an LSTM's cell can carry a
gradient forever. With lambda = 1 (module learning rate 3e-3) we measured the language model's SG loss, averaged
per 1,000 updates, growing from about 200 to about 4,800 within 5,000 updates, one chunk's reaching 1.5e6
(docs/charlm.md). lambda < 1 weighs the next prediction by lambda in the target, so M learns the future
gradient discounted by lambda per chunk, as a value function is discounted in reinforcement learning.

Modes:
    bptt     truncated BPTT: nothing crosses a boundary
    dni      a synthetic gradient at every boundary, as above
    dni_aux  DNI + Aux: the core also predicts its own future synthetic gradient. A linear head on the first output
             of each chunk, A(h_1), regresses onto M(s_T) (held fixed), the synthetic gradient T steps ahead; its
             error is backpropagated into the core, shaping the state to carry what the future will ask for.

With `context` (and an SG module built with n_classes) the module is conditioned like cDNI: M(s_T, c), e.g. c =
the next input symbol.

What this module deliberately is not: a data loop. It trains one chunk at a time; the tasks (minidni.recurrent.tasks)
and the language model (minidni.runs.rnn_train) decide where sequences begin and end.
"""

import numpy as np

from minidni.core import functional as F
from minidni.core.backend import xp
from minidni.core.layers import Linear
from minidni.dni.synthetic import SyntheticGradient

MODES = ("bptt", "dni", "dni_aux")


def clip_grad_norm(layers, max_norm):
    """Scale every gradient of `layers` so that their joint L2 norm is at most max_norm; returns the norm before."""
    grads = [g for layer in layers for g in layer.grads.values()]
    norm = float(np.sqrt(sum(float((g * g).sum()) for g in grads)))
    if max_norm is not None and norm > max_norm:
        for g in grads:
            g *= max_norm / norm
    return norm


class TruncatedTrainer:
    """Trains a RecurrentNet chunk by chunk, carrying its state s: truncated BPTT, DNI or DNI + Aux."""

    def __init__(self, net, mode="bptt", sg=None, sg_use_scale=0.1, aux_weight=1.0, clip=1.0, rng=None,
                 sg_discount=1.0):  # fmt: skip
        """net: a minidni.recurrent.cells.RecurrentNet (with an optimiser set); sg: a SyntheticGradient over the state
        (d = net.state_size), required for dni and dni_aux; sg_use_scale: the factor applied to M(s_T) before the
        core uses it (0.1); aux_weight: weight of the DNI + Aux loss; clip: max L2 norm of the core's gradient per
        chunk (None: no clipping); sg_discount: lambda in the target, in-chunk gradients + lambda M(s_next) sent
        back (1: the undiscounted future, right for episodes that end; < 1 for endless streams, see above)."""
        if mode not in MODES:
            raise ValueError(f"unknown recurrent training mode {mode!r}; expected one of {MODES}")
        if mode != "bptt":
            if not isinstance(sg, SyntheticGradient):
                raise ValueError(f"mode {mode!r} needs a SyntheticGradient module over the state, got {sg!r}")
            if sg.d != net.state_size or sg.d_out != net.state_size:
                raise ValueError(f"the SG module reads {sg.d} and predicts {sg.d_out} numbers, but the state has "
                                 f"{net.state_size}")  # fmt: skip
        if not sg_use_scale > 0:
            raise ValueError(f"sg_use_scale must be positive, got {sg_use_scale}")
        if not 0 <= sg_discount <= 1:
            raise ValueError(f"sg_discount must be in [0, 1], got {sg_discount}")
        self.sg_discount = float(sg_discount)
        self.net, self.mode, self.sg = net, mode, sg if mode != "bptt" else None
        self.sg_use_scale, self.aux_weight, self.clip = float(sg_use_scale), float(aux_weight), clip
        self.aux = None
        if mode == "dni_aux":  # A(h): (B, H) -> (B, S), a prediction of the synthetic gradient T steps ahead
            rng = np.random.default_rng(0) if rng is None else rng
            self.aux = Linear(net.cell.hidden, net.state_size, init="zeros", rng=rng, dtype=net.dtype)
        self.s = None  # the carried state (B, S)
        self.pending = None  # (M's input at s_k, its context): the last boundary, awaiting its target

    def set_aux_optimizer(self, make_optimizer):
        if self.aux is not None:
            self.aux.set_optimizer(make_optimizer)

    def begin_sequence(self, batch):
        """A new sequence: the state starts at zero and no prediction awaits a target."""
        self.s = self.net.initial_state(batch)
        self.pending = None

    def train_chunk(self, xs, loss_fn, ends_sequence=False, context=None):
        """Forward one chunk from the carried state, backpropagate, update; returns this chunk's metrics.

        xs: (T, B, D) inputs or (T, B) tokens; loss_fn(logits (T, B, O)) -> (loss, dlogits); ends_sequence: no
        future follows this chunk, so no synthetic gradient is added at its end; context: (B,) integer context
        for a conditioned SG module (used for this chunk's end)."""
        if self.s is None:
            raise RuntimeError("call begin_sequence(batch) before the first chunk")
        net = self.net
        logits, ss, cache = net.forward(xs, self.s)  # ss: (T, B, S)
        s_end = ss[-1]
        loss, dlogits = loss_fn(logits)
        if not np.isfinite(loss):
            raise FloatingPointError(f"the chunk's loss is {loss}; training diverged (lower the learning rate?)")
        metrics = {"loss": float(loss), "sg_loss": None, "aux_loss": None}

        # 1. The future's gradient at s_end, predicted: M(s_T). None for BPTT and at the end of a sequence.
        ds_syn, sg_input = None, None
        ds_end = xp().zeros_like(s_end)
        if self.sg is not None and not ends_sequence:
            sg_input = net.cell.features(s_end)  # (B, S): M reads [h, tanh c]
            ds_syn, _ = self.sg.predict(sg_input, context)  # (B, S); its cache is not kept (see step 5)
            ds_end = self.sg_use_scale * ds_syn  # what the core uses: 0.1 M(s_T)

        # 2. DNI + Aux: the core's first output of the chunk also predicts M(s_T).
        dhs_extra = None
        if self.aux is not None and ds_syn is not None:
            h_first = net.cell.output(ss[0])  # (B, H)
            aux_pred, aux_cache = self.aux.forward(h_first)
            aux_loss, daux = F.mse(aux_pred, ds_syn * self.sg.scale)  # on the SG net's own (O(1)) output scale
            dhs_extra = xp().zeros(ss.shape[:2] + (net.cell.hidden,), dtype=ss.dtype)  # (T, B, H)
            dhs_extra[0] = self.aux.backward(self.aux_weight * daux, aux_cache)
            self.aux.update()
            metrics["aux_loss"] = float(aux_loss)

        # 3. The target for the previous boundary's prediction, with the weights of this forward pass: this
        #    chunk's losses plus M(s_T) unscaled, backpropagated to the chunk's start (zero future at a sequence end).
        target = None
        if self.pending is not None:
            future = ds_end if ds_syn is None else self.sg_discount * ds_syn  # (ds_end is zero at a sequence end)
            target = net.state_backward(dlogits, future, cache)

        # 4. The core's own update: in-chunk gradients plus the scaled synthetic gradient (and the aux loss).
        net.backward(dlogits, ds_end, cache, dhs_extra)
        metrics["grad_norm"] = clip_grad_norm(net.layers().values(), self.clip)
        net.update()

        # 5. The previous boundary's SG module learns, now that its target exists. M took a regression step (in
        #    step 5 of the previous chunk) after it predicted for that boundary, so it predicts again from the same
        #    input with its current weights and regresses that fresh prediction.
        if self.pending is not None:
            prev_input, prev_context = self.pending
            prev_pred, prev_cache = self.sg.predict(prev_input, prev_context)  # (B, S): M(s_k), current weights
            metrics["sg_loss"] = float(self.sg.update(prev_pred, prev_cache, target))
        self.pending = (sg_input, context) if ds_syn is not None else None
        self.s = None if ends_sequence else s_end.copy()  # the state carries on; no gradient ever crosses
        return metrics, logits

    def layers(self):
        out = dict(self.net.layers())
        if self.sg is not None:
            out["sg"] = self.sg
        if self.aux is not None:
            out["aux"] = self.aux
        return out

    def state_arrays(self):
        out = {}
        for name, layer in self.layers().items():
            out.update(layer.state_arrays(f"{name}."))
        return out
