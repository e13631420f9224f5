"""Complete unlock: synthetic inputs as well as synthetic gradients, so that no block waits for any other.

Synthetic gradients remove the update and backward locks, but block i still waits for h_{i-1} from the block
below (the forward lock). Jaderberg et al. (2016, Sec. 3.3) remove that too: every block after the first also gets
a synthetic-INPUT model that predicts its input from the network's input x.

Numbering is the code's: blocks 0 .. N-1 (N-1 is the output block), h_i = block i's output, sg_i = the
synthetic-gradient module on h_i (net.hidden[i].sg), I_i = the synthetic-input model of block i (net.inputs[i-1]):

    u_i = I_i(x) ~ h_{i-1}                               code: the block's synthetic input

so block i can run the moment x exists. One completely unlocked step (minidni.dni.steps.unlocked_step):

    every block i, in any order (none reads anything another block produced on this batch):
        u_i            = x                 for block 0, else I_i(x)
        h_i, cache_i   = block_i.forward(u_i)
        g_i            = sg_i(h_i, y)       for a hidden block; dL/dlogits (true) for the output block
        dx_i           = block_i.backward(g_i, cache_i);  block_i.update()
    then the signals between neighbours, which in a real system arrive whenever they arrive:
        I_{i+1} regresses onto h_i          (the activation block i really emitted on this batch - computed, like
                                             everything here, from block i's own synthetic input)
        sg_i    regresses onto dx_{i+1}     (at h_i; dx_{i+1} is block i+1's input gradient at its synthetic
                                             input u_{i+1}: bootstrapping)

A block's update therefore uses only its synthetic input and its synthetic gradient; the real activations and
gradients only ever train the predictors I and sg. Evaluation runs the real forward pass x -> block 0 -> .. ->
block N-1, which is right once every I_i(x) matches the activation that really reaches block i.

What this module deliberately is not: convolutional. Synthetic inputs here are MLPs from a flat x to a flat h, for
the FCN experiment of the paper.
"""

import numpy as np

from minidni.core import functional as F
from minidni.core.backend import DEFAULT_DTYPE
from minidni.core.layers import BatchNorm1d, Linear, ReLU, Sequential


class SyntheticInput:
    """I(x) -> h_hat: (B, D_x) -> (B, D), an MLP (Linear -> BN -> ReLU) x n + Linear, regressed onto the real h.

    Loss, the same convention as the synthetic-gradient modules: (1/B) sum_b ||h_hat_b - h_b||^2.
    """

    def __init__(self, d_x, d, hidden=(1024,), rng=None, dtype=DEFAULT_DTYPE):
        rng = np.random.default_rng(0) if rng is None else rng
        self.d_x, self.d, self.hidden = d_x, d, tuple(hidden)
        layers, width = [], d_x
        for w in self.hidden:
            layers += [Linear(width, w, bias=False, rng=rng, dtype=dtype), BatchNorm1d(w, dtype=dtype), ReLU()]
            width = w
        # not zero-initialised: unlike a gradient, an input of exactly zero is not a safe starting guess
        layers.append(Linear(width, d, init="xavier", rng=rng, dtype=dtype))
        self.net = Sequential(*layers)

    def predict(self, x, train=True):
        """x: (B, D_x) -> h_hat (B, D) and the cache that `update` needs."""
        return self.net.forward(x, train)

    def update(self, h_hat, cache, h_real):
        """One regression step of h_hat towards the real activation h_real (B, D); returns the loss."""
        loss, dpred = F.mse(h_hat, h_real)
        self.net.backward(dpred, cache, need_dx=False)  # x is data: nothing to send back
        self.net.update()
        return loss

    def set_optimizer(self, make_optimizer):
        self.net.set_optimizer(make_optimizer)

    def state_arrays(self, prefix=""):
        return self.net.state_arrays(prefix)

    def optimizers(self, prefix=""):
        return self.net.optimizers(prefix)

    def __repr__(self):
        return f"SyntheticInput(d_x={self.d_x}, d={self.d}, hidden={self.hidden})"


def make_synthetic_inputs(d_x, widths, hidden=(1024,), rng=None, dtype=DEFAULT_DTYPE):
    """One SyntheticInput per block after the first: widths[i] is the width of the input of block i+1."""
    return [SyntheticInput(d_x, d, hidden, rng, dtype) for d in widths]
