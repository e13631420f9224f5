"""The training steps: one batch through a network of decoupled blocks, as plain functions, the DNI step first.

Notation (Jaderberg et al. 2016), for a network of hidden blocks f_1 .. f_{N-1} and an output block f_N:

    h_i = f_i(h_{i-1}),  h_0 = x                     block i's output           code: h
    delta_i = dL/dh_i                                 the true gradient          code: dh_true
    delta_hat_i = M_{i+1}(h_i [, y])                 its synthetic estimate     code: dh_syn
    target for M_{i+1}: delta_hat_{i+1} d h_{i+1}/d h_i (bootstrapped), or delta_N-1 for the top module

The paper counts blocks from 1; the code (lists, metrics, error messages) counts them from 0, so "block 0" is f_1
and its module "sg0" is M_2. Every step takes the network (minidni.dni.network.Network: its blocks, its mode) and
a batch x: (B, D_in) rows or (B, C, H, W) images, labels: (B,); it returns the step's record
{"loss": float, "sg_loss": [float per hidden block], ...}. In this module's order:

    dni_step                 DNI / cDNI: every hidden block updates from its synthetic gradient as soon as it
                             has produced h_i; each module regresses onto the bootstrapped target from above
    dni_step_true_targets    the same updates, but each module regresses onto the true gradient (locked)
    bprop_step               locked backprop; nobprop_step trains only the output block
    gated_bprop_step,        stochastic updates (minidni.dni.stochastic): only the blocks whose coin came up
    gated_dni_step             run their backward and update, in the drawn order
    unlocked_step            complete unlock (minidni.dni.unlock): synthetic inputs as well, no block waits

    forward_hidden, output_loss    the two pieces the steps share: the forward pass, and the output block + loss
    STEPS                          which step a network runs: a table, looked up once when the network is built

One DNI step on a batch, in the order a decoupled system could run it (here sequentially):

    for block i = 1 .. N-1:
        h_i, cache_i  = f_i.forward(h_{i-1})
        dh_syn_i      = M_{i+1}(h_i)                   # no waiting for the layers above
        dx            = f_i.backward(dh_syn_i, cache_i) # also fills f_i's parameter gradients
        f_i.update()                                    # block i is done with this batch
        M_i.update(target = dx)                         # dx is delta_hat_i pulled back through f_i:
                                                        # the bootstrapped target of the module below
    logits = f_N.forward(h_{N-1});  dlogits = dL/dlogits
    dx = f_N.backward(dlogits);  f_N.update();  M_N.update(target = dx)   # the only true gradient

What this module deliberately is not: parallel. The order above is the logical order of the work; the point of DNI
is that block i's update depends only on M_{i+1} and not on the blocks above, and that is what the tests check.
Running blocks in separate workers is minidni.parallel, built on these same block methods. A network with an
attached minidni.runs.timeline.Timeline records every block's work (the blocks do, in minidni.dni.blocks).
"""

import math

from minidni.core import functional as F
from minidni.dni.blocks import DivergenceError

# ---------------------------------------------------------------------------------------------------------------
# DNI and cDNI


def dni_step(net, x, labels):
    """Every hidden block updates from its synthetic gradient as soon as it has produced h_i."""
    n = len(net.hidden)
    sg_loss = [0.0] * n
    pending = [None] * n  # (dh_syn, sg_cache) of M_{i+1}, waiting for its target
    h = x
    for i, block in enumerate(net.hidden):
        h_in = h
        h, cache = block.forward(h_in)  # (B, D_i)
        dx, dh_syn, sg_cache = block.synthetic_step(h, cache, labels, need_dx=i > 0)
        if i > 0:  # dx = delta_hat_i pulled back through block i: the target of the module below
            sg_loss[i - 1] = net.hidden[i - 1].sg_update(*pending[i - 1], dh_target=dx)
        pending[i] = (dh_syn, sg_cache)
    loss, dlogits, cache = output_loss(net, h, labels)
    dh_true = net.output.backward(dlogits, cache)  # the true dL/dh_{N-1}: only the top module sees it
    net.output.update()
    sg_loss[n - 1] = net.hidden[n - 1].sg_update(*pending[n - 1], dh_target=dh_true)
    return {"loss": loss, "sg_loss": sg_loss}


def dni_step_true_targets(net, x, labels):
    """For comparison: blocks still update from synthetic gradients, but each SG module regresses onto the
    true gradient dL/dh_i of this batch (full backprop at the forward pass's parameters, so this is locked)."""
    hs, caches = forward_hidden(net, x)
    loss, dh, out_cache = output_loss(net, hs[-1], labels)
    dh_true = [None] * len(net.hidden)
    dh = net.output.backward(dh, out_cache)
    net.output.update()
    for i in range(len(net.hidden) - 1, -1, -1):  # true gradients, before any hidden block changes
        dh_true[i] = dh
        if i > 0:
            dh = net.hidden[i].backward(dh, caches[i])
    sg_loss = []
    for i, block in enumerate(net.hidden):
        _, dh_syn, sg_cache = block.synthetic_step(hs[i], caches[i], labels, need_dx=False)
        sg_loss.append(block.sg_update(dh_syn, sg_cache, dh_true[i]))
    return {"loss": loss, "sg_loss": sg_loss}


# ---------------------------------------------------------------------------------------------------------------
# locked backprop, the baseline


def bprop_step(net, x, labels, train_hidden=True):
    """Locked backprop: every block waits for the whole forward pass and for the gradient from above."""
    hs, caches = forward_hidden(net, x)
    loss, dh, cache = output_loss(net, hs[-1], labels)
    dh = net.output.backward(dh, cache, need_dx=train_hidden)
    net.output.update()
    if train_hidden:
        for i in range(len(net.hidden) - 1, -1, -1):
            dh = net.hidden[i].backward(dh, caches[i], need_dx=i > 0)
            net.hidden[i].update()
    return {"loss": loss, "sg_loss": []}


def nobprop_step(net, x, labels):
    """Only the output block learns: the hidden blocks keep their initial weights (the paper's lower bound)."""
    return bprop_step(net, x, labels, train_hidden=False)


# ---------------------------------------------------------------------------------------------------------------
# stochastic updates: the coins of net.gate (minidni.dni.stochastic) choose which blocks run their backward


def gated_bprop_step(net, x, labels, chosen, train_hidden=True):
    """Backprop in which only the chosen blocks run their backward: the gradient stops at the first one that
    did not. Returns the step's record, with "updated": the blocks that really updated."""
    hs, caches = forward_hidden(net, x)  # the real forward pass: every block, every cache kept
    loss, dh, out_cache = output_loss(net, hs[-1], labels)
    n = len(net.hidden)
    updated = []
    if n not in chosen:  # the output block skipped its backward: nothing below hears about this batch
        return {"loss": loss, "sg_loss": [], "updated": updated}
    dh = net.output.backward(dh, out_cache, need_dx=train_hidden)
    net.output.update()
    updated.append(n)
    if train_hidden:
        for i in range(n - 1, -1, -1):
            if i not in chosen:
                break  # the chain is broken: blocks i, i-1, .., 0 get no gradient on this pass
            dh = net.hidden[i].backward(dh, caches[i], need_dx=i > 0)
            net.hidden[i].update()
            updated.append(i)
    return {"loss": loss, "sg_loss": [], "updated": updated}


def gated_dni_step(net, x, labels, chosen):
    """DNI / cDNI in which only the chosen blocks update, in the order given. SG losses of modules that got no
    target on this pass are None."""
    hs, caches = forward_hidden(net, x)
    loss, dlogits, out_cache = output_loss(net, hs[-1], labels)
    n = len(net.hidden)
    sg_loss = [None] * n
    for j in chosen:
        if j == n:  # the output block: the only true gradient, which is also the top module's target
            dh_true = net.output.backward(dlogits, out_cache)  # dL/dh of the last hidden block: hs[-1]'s shape
            net.output.update()
            dx = dh_true
        else:
            dx, _, _ = net.hidden[j].synthetic_step(hs[j], caches[j], labels, need_dx=j > 0)
        if j > 0:  # dx is the target of sg_{j-1}, the module on block j-1's output; ask it for its prediction now
            below = net.hidden[j - 1]
            dh_syn, sg_cache, _ = below.synthetic_gradient(hs[j - 1], labels)
            sg_loss[j - 1] = below.sg_update(dh_syn, sg_cache, dh_target=dx)
    return {"loss": loss, "sg_loss": sg_loss, "updated": list(chosen)}


def gated_step(net, x, labels):
    """One step under the network's gate: draw the coins (net.gate.draw), then the mode's gated step."""
    chosen = net.gate.draw(len(net.blocks))
    if net.mode == "bprop":
        return gated_bprop_step(net, x, labels, chosen, train_hidden=True)
    if net.mode == "nobprop":
        return gated_bprop_step(net, x, labels, chosen, train_hidden=False)
    return gated_dni_step(net, x, labels, chosen)


# ---------------------------------------------------------------------------------------------------------------
# complete unlock: synthetic inputs I_i(x) (minidni.dni.unlock) as well as synthetic gradients


def unlocked_step(net, x, labels):
    """One completely unlocked step of `net` (which has net.inputs[i - 1] = I_i for blocks i = 1 .. N-1)."""
    n = len(net.blocks)
    # the synthetic inputs, predicted from x before any block moves: (h_hat (B, D_{i-1}), cache) per block
    predicted = [None] + [net.inputs[i - 1].predict(x) for i in range(1, n)]
    hs, dxs, pending = [], [], []
    for i, block in enumerate(net.hidden):  # any order would do: no block reads another block's results
        u = x if i == 0 else predicted[i][0]
        h, cache = block.forward(u)  # (B, D_i)
        dx, dh_syn, sg_cache = block.synthetic_step(h, cache, labels, need_dx=i > 0)
        hs.append(h)
        dxs.append(dx)  # block i's input gradient, at its synthetic input: the target of sg_{i-1}
        pending.append((dh_syn, sg_cache))
    loss, dlogits, cache = output_loss(net, predicted[n - 1][0], labels)  # the output block, on its synthetic input
    dxs.append(net.output.backward(dlogits, cache))
    net.output.update()
    # the learning signals between neighbours: block i's real output trains I_{i+1}; block i+1's input
    # gradient trains sg_i
    input_loss, sg_loss = [], []
    for i in range(n - 1):
        h_hat, in_cache = predicted[i + 1]
        input_loss.append(net.inputs[i].update(h_hat, in_cache, h_real=hs[i]))
        sg_loss.append(net.hidden[i].sg_update(*pending[i], dh_target=dxs[i + 1]))
    return {"loss": loss, "sg_loss": sg_loss, "input_loss": input_loss}


# ---------------------------------------------------------------------------------------------------------------
# the pieces every step shares


def forward_hidden(net, x):
    """The real forward pass through the hidden blocks (training mode), every cache kept for a backward later:
    returns (hs, caches) with hs[i] = h_i, hidden block i's output; hs[-1] is what the output block reads."""
    hs, caches, h = [], [], x
    for block in net.hidden:
        h, cache = block.forward(h)  # (B, D_i), or (B, C, H_i, W_i) for a conv block
        hs.append(h)
        caches.append(cache)
    return hs, caches


def output_loss(net, h, labels):
    """Forward the output block on h and take the loss: returns (loss: float, dlogits (B, K), output cache)."""
    logits, cache = net.output.forward(h)  # (B, K)
    loss, dlogits = F.softmax_cross_entropy(logits, labels)
    loss = float(loss)
    if not math.isfinite(loss):
        raise DivergenceError(f"the training loss is {loss}; the network diverged (lower the learning rate)")
    return loss, dlogits, cache


# ---------------------------------------------------------------------------------------------------------------
# which step a network runs: (variant, mode, SG target) -> step. The variant is "plain", "gated" (stochastic
# updates) or "unlocked" (complete unlock); the modes without SG modules have no SG target (None).

STEPS = {
    ("plain", "dni", "bootstrap"): dni_step, ("plain", "cdni", "bootstrap"): dni_step,
    ("plain", "dni", "true"): dni_step_true_targets, ("plain", "cdni", "true"): dni_step_true_targets,
    ("plain", "bprop", None): bprop_step, ("plain", "nobprop", None): nobprop_step,
    ("gated", "dni", "bootstrap"): gated_step, ("gated", "cdni", "bootstrap"): gated_step,
    ("gated", "bprop", None): gated_step, ("gated", "nobprop", None): gated_step,
    ("unlocked", "dni", "bootstrap"): unlocked_step, ("unlocked", "cdni", "bootstrap"): unlocked_step,
}  # fmt: skip


def step_for(variant, mode, sg_target):
    """The step function of STEPS for a network so configured, or ValueError listing what exists."""
    key = (variant, mode, sg_target if mode in ("dni", "cdni") else None)
    if key not in STEPS:
        known = ", ".join(f"{v}/{m}/{t}" for v, m, t in STEPS)
        raise ValueError(f"no training step for {'/'.join(map(str, key))}; the steps are: {known}")
    return STEPS[key]
