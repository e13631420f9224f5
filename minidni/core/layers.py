"""Layer objects: parameters, gradient buffers and an optimiser, around the math of `minidni.core.functional`.

    y, cache = layer.forward(x, train=True)
    dx = layer.backward(dy, cache)          # also fills layer.grads
    layer.update()                          # one optimiser step on layer.params

A layer never remembers its last input: `forward` hands the cache to the caller, and `backward` takes it back.
Two batches can therefore be in flight through the same layer at once (as they are under DNI), each with its
own cache. A cache also holds, by value, every parameter its backward reads (see Linear.forward), so a backward
run after an update still differentiates the function its forward computed.

What this module deliberately is not: a module tree with hooks, or an autograd graph. Sequential is a list.
"""

import copy
import functools
import sys

import numpy as np

from minidni.core import functional as F
from minidni.core.backend import DEFAULT_DTYPE, xp


class Layer:
    """Base class. Subclasses with parameters fill `params` and `grads` (same keys, same shapes)."""

    def __init__(self):
        self.params = {}  # name -> array, updated in place
        self.grads = {}  # name -> array, overwritten by each backward
        self.buffers = {}  # name -> array that is state but not trained (batch-norm running statistics)
        self.optimizer = None
        self._copies = {}  # name -> [the last snapshot's buffer, its reference count when only this dict holds it]

    def forward(self, x, train=True):
        raise NotImplementedError

    def backward(self, dy, cache, need_dx=True):
        raise NotImplementedError

    def set_optimizer(self, make_optimizer):
        """`make_optimizer(params) -> Optimizer`; layers without parameters need none."""
        self.optimizer = make_optimizer(self.params) if self.params else None

    def update(self):
        if self.optimizer is not None:
            self.optimizer.step(self.grads)

    def snapshot(self, name):
        """A copy of params[name] that no update changes, for a forward to compute with and cache (Linear.forward)."""
        snap = self.reusable(name, self.params[name].shape, self.params[name].dtype)
        snap[...] = self.params[name]  # nothing else holds the buffer (see reusable): no cache can see this write
        return snap

    def reusable(self, name, shape, dtype):
        """A buffer to write into (and perhaps cache): the last one under `name` if no cache holds it any more (its
        reference count is back to its value when only this layer held it), else a new one. Fresh ones made `bench
        dni_mlp` 18% slower, a CNN step ~10%: the allocator returns freed megabytes to the OS, to fault in again."""
        held = self._copies.get(name)
        if held is None or held[0].shape != tuple(shape) or held[0].dtype != dtype or self._references(name) != held[1]:
            self._copies[name] = [xp().empty(shape, dtype=dtype), None]
            self._copies[name][1] = self._references(name)
        return self._copies[name][0]

    def _references(self, name):
        # counted by one and the same call in both places above, so whatever the interpreter adds cancels out
        return sys.getrefcount(self._copies[name][0])

    def state_arrays(self, prefix=""):
        """Every array that defines this layer's state, by name: parameters, buffers, optimiser state."""
        out = {f"{prefix}{k}": v for k, v in self.params.items()}
        out.update({f"{prefix}{k}": v for k, v in self.buffers.items()})
        if self.optimizer is not None:
            out.update({f"{prefix}opt.{k}": v for k, v in self.optimizer.state_arrays().items()})
        return out

    def optimizers(self, prefix=""):
        return {prefix.rstrip("."): self.optimizer} if self.optimizer is not None else {}

    def __repr__(self):
        return f"{type(self).__name__}()"


class Linear(Layer):
    """z = x W + b, with W: (D_in, D_out) so that a batch is a row-major (B, D_in) matrix."""

    def __init__(self, d_in, d_out, init="he", bias=True, rng=None, dtype=DEFAULT_DTYPE):
        """bias=False drops b: right before batch norm, which subtracts the mean, a bias has no effect."""
        super().__init__()
        if d_in <= 0 or d_out <= 0:
            raise ValueError(f"Linear needs positive sizes, got d_in={d_in}, d_out={d_out}")
        self.d_in, self.d_out = d_in, d_out
        rng = np.random.default_rng(0) if rng is None else rng
        if init == "he":  # keeps the variance of ReLU activations constant from layer to layer
            W = rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / d_in)
        elif init == "xavier":
            W = rng.standard_normal((d_in, d_out)) * np.sqrt(1.0 / d_in)
        elif init == "zeros":  # the output layer of every synthetic-gradient module
            W = np.zeros((d_in, d_out))
        else:
            raise ValueError(f"unknown init {init!r}; expected 'he', 'xavier' or 'zeros'")
        backend = xp()
        self.params = {"W": backend.asarray(W, dtype=dtype)}
        if bias:
            self.params["b"] = backend.zeros(d_out, dtype=dtype)
        self.grads = {k: backend.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x, train=True):
        # The cache gets a snapshot of W, not W itself: W is a view into the flat buffer that the optimiser updates
        # in place, so a backward run after an update (batch t's, once batch t+1 has gone forward) would read the
        # new weights. The snapshot costs one pass over W per forward; updating into a fresh buffer instead would
        # break the flat layout that the optimisers and the fused CUDA step update in place.
        W = self.snapshot("W")  # (D_in, D_out)
        return F.linear_forward(x, W, self.params.get("b"))

    def backward(self, dy, cache, need_dx=True):
        has_b = "b" in self.params
        dx, _, _ = F.linear_backward(dy, cache, self.grads["W"], self.grads.get("b"), need_dx=need_dx, need_db=has_b)
        return dx

    def __repr__(self):
        return f"Linear({self.d_in}, {self.d_out}{'' if 'b' in self.params else ', bias=False'})"


class ReLU(Layer):
    def forward(self, x, train=True):
        return F.relu_forward(x)

    def backward(self, dy, cache, need_dx=True):
        return F.relu_backward(dy, cache)


class Tanh(Layer):
    def forward(self, x, train=True):
        return F.tanh_forward(x)

    def backward(self, dy, cache, need_dx=True):
        return F.tanh_backward(dy, cache)


class Sigmoid(Layer):
    def forward(self, x, train=True):
        return F.sigmoid_forward(x)

    def backward(self, dy, cache, need_dx=True):
        return F.sigmoid_backward(dy, cache)


class BatchNorm1d(Layer):
    """Batch normalisation of (B, D) activations.

    train=True normalises with the batch's statistics and folds them into the running estimates;
    train=False uses the running estimates (evaluation), which makes the layer a fixed affine map.
    """

    def __init__(self, d, momentum=0.1, eps=1e-5, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.d, self.momentum, self.eps = d, momentum, eps
        backend = xp()
        self.params = {"gamma": backend.ones(d, dtype=dtype), "beta": backend.zeros(d, dtype=dtype)}
        self.grads = {k: backend.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {"running_mean": backend.zeros(d, dtype=dtype), "running_var": backend.ones(d, dtype=dtype)}

    def forward(self, x, train=True):
        gamma, beta = self.params["gamma"], self.params["beta"]
        if not train:
            y = F.batchnorm_forward_eval(
                x, gamma, beta, self.buffers["running_mean"], self.buffers["running_var"], self.eps
            )
            return y, None
        if x.shape[0] < 2:
            raise ValueError("BatchNorm1d in training mode needs a batch of at least 2 rows")
        y, cache = F.batchnorm_forward_train(x, self.snapshot("gamma"), beta, self.eps)  # the backward reads gamma
        _, _, _, mean, var = cache
        self._track(mean, var, x.shape[0])
        return y, cache

    def _track(self, mean, var, n):
        """Fold the batch statistics (n values per unit) into the running estimates: exponential moving averages;
        the running variance is the unbiased estimate n/(n-1) var, as is customary."""
        self.buffers["running_mean"] *= 1 - self.momentum
        self.buffers["running_mean"] += self.momentum * mean
        self.buffers["running_var"] *= 1 - self.momentum
        self.buffers["running_var"] += (self.momentum * n / (n - 1)) * var

    def backward(self, dy, cache, need_dx=True):
        if cache is None:
            raise RuntimeError("BatchNorm1d.backward needs a cache from forward(train=True)")
        dx, _, _ = F.batchnorm_backward(dy, cache, dgamma=self.grads["gamma"], dbeta=self.grads["beta"])
        return dx

    def __repr__(self):
        return f"BatchNorm1d({self.d})"


class BatchNorm2d(BatchNorm1d):
    """Batch normalisation of (B, C, H, W) feature maps: one gamma, beta, mean and variance per channel, the
    statistics taken over the channel's B*H*W values. Running statistics as in BatchNorm1d; buffers are (C,)."""

    def __init__(self, c, momentum=0.1, eps=1e-5, dtype=DEFAULT_DTYPE):
        super().__init__(c, momentum, eps, dtype)  # self.d is the channel count C

    def forward(self, x, train=True):
        if x.ndim != 4 or x.shape[1] != self.d:
            raise ValueError(f"BatchNorm2d({self.d}) expects x of shape (B, {self.d}, H, W), got {tuple(x.shape)}")
        gamma, beta = self.params["gamma"], self.params["beta"]
        if not train:
            y = F.batchnorm2d_forward_eval(
                x, gamma, beta, self.buffers["running_mean"], self.buffers["running_var"], self.eps
            )
            return y, None
        n = x.shape[0] * x.shape[2] * x.shape[3]  # values per channel
        if n < 2:
            raise ValueError("BatchNorm2d in training mode needs at least 2 values per channel (B*H*W >= 2)")
        y, cache = F.batchnorm2d_forward_train(x, self.snapshot("gamma"), beta, self.eps)  # as in BatchNorm1d
        _, _, _, mean, var = cache
        self._track(mean, var, n)
        return y, cache

    def backward(self, dy, cache, need_dx=True):
        if cache is None:
            raise RuntimeError("BatchNorm2d.backward needs a cache from forward(train=True)")
        dx, _, _ = F.batchnorm2d_backward(dy, cache, dgamma=self.grads["gamma"], dbeta=self.grads["beta"])
        return dx

    def __repr__(self):
        return f"BatchNorm2d({self.d})"


class Conv2d(Layer):
    """out = conv(x, W) + b on NCHW maps: W (C_out, C_in, KH, KW), b (C_out,). See functional.conv2d_forward."""

    def __init__(
        self, c_in, c_out, kernel, stride=1, padding="same", bias=True, init="he", rng=None, dtype=DEFAULT_DTYPE
    ):
        """kernel, stride: an int or a (height, width) pair. padding: an int, a pair, or "same" ((K - 1) // 2 on
        each side: the output keeps the input's height and width; needs an odd kernel and stride 1).
        bias=False right before batch norm, as for Linear."""
        super().__init__()
        if c_in <= 0 or c_out <= 0:
            raise ValueError(f"Conv2d needs positive channel counts, got c_in={c_in}, c_out={c_out}")
        self.c_in, self.c_out = c_in, c_out
        self.kernel, self.stride = F.as_pair(kernel, "kernel"), F.as_pair(stride, "stride")
        (KH, KW), (sh, sw) = self.kernel, self.stride
        if KH < 1 or KW < 1 or sh < 1 or sw < 1:
            raise ValueError(f"Conv2d needs a positive kernel and stride, got kernel={kernel}, stride={stride}")
        if padding == "same":
            if KH % 2 == 0 or KW % 2 == 0 or self.stride != (1, 1):
                raise ValueError(
                    f"padding='same' needs an odd kernel and stride 1, got kernel={self.kernel}, stride={self.stride}"
                )
            self.padding = ((KH - 1) // 2, (KW - 1) // 2)
        else:
            self.padding = F.as_pair(padding, "padding")
        rng = np.random.default_rng(0) if rng is None else rng
        fan_in = c_in * KH * KW  # inputs that reach one output number
        shape = (c_out, c_in, KH, KW)
        if init == "he":
            W = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif init == "xavier":
            W = rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)
        elif init == "zeros":  # the output layer of every convolutional synthetic-gradient module
            W = np.zeros(shape)
        else:
            raise ValueError(f"unknown init {init!r}; expected 'he', 'xavier' or 'zeros'")
        backend = xp()
        self.params = {"W": backend.asarray(W, dtype=dtype)}
        if bias:
            self.params["b"] = backend.zeros(c_out, dtype=dtype)
        self.grads = {k: backend.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x, train=True):
        # a snapshot, as in Linear: the weight matrix the cache holds is W reshaped, which is a copy for most
        # shapes but a view of W itself for C_in = 1 or a 1x1 kernel
        W = self.snapshot("W")  # (C_out, C_in, KH, KW)
        cols = functools.partial(self.reusable, "cols") if train else None  # reused across training steps only
        return F.conv2d_forward(x, W, self.params.get("b"), self.stride, self.padding, workspace=cols)

    def backward(self, dy, cache, need_dx=True):
        has_b = "b" in self.params
        dx, _, _ = F.conv2d_backward(dy, cache, self.grads["W"], self.grads.get("b"), need_dx=need_dx, need_db=has_b,
                                     workspace=functools.partial(self.reusable, "dout_cols"))  # fmt: skip
        return dx

    def __repr__(self):
        extra = "" if "b" in self.params else ", bias=False"
        return (
            f"Conv2d({self.c_in}, {self.c_out}, kernel={self.kernel}, stride={self.stride}, "
            f"padding={self.padding}{extra})"
        )


class MaxPool2d(Layer):
    """The maximum of each kernel window, per channel; stride defaults to the kernel, padding is -inf."""

    def __init__(self, kernel, stride=None, padding=0):
        super().__init__()
        self.kernel = F.as_pair(kernel, "kernel")
        self.stride = self.kernel if stride is None else F.as_pair(stride, "stride")
        self.padding = F.as_pair(padding, "padding")

    def forward(self, x, train=True):
        return F.maxpool2d_forward(x, self.kernel, self.stride, self.padding)

    def backward(self, dy, cache, need_dx=True):
        return F.maxpool2d_backward(dy, cache)

    def __repr__(self):
        return f"MaxPool2d(kernel={self.kernel}, stride={self.stride}, padding={self.padding})"


class Flatten(Layer):
    """(B, C, H, W) -> (B, C*H*W), in C-order, so that a Linear layer can follow; the cache is the input shape."""

    def forward(self, x, train=True):
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, dy, cache, need_dx=True):
        return dy.reshape(cache)


class Sequential(Layer):
    """Layers applied in order; the cache is the list of the layers' caches."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)

    def forward(self, x, train=True):
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(x, train)
            caches.append(cache)
        return x, caches

    def backward(self, dy, caches, need_dx=True):
        for i in range(len(self.layers) - 1, -1, -1):
            # the first layer's input gradient is computed only if the caller wants it
            dy = self.layers[i].backward(dy, caches[i], need_dx=need_dx or i > 0)
        return dy

    def set_optimizer(self, make_optimizer):
        """One optimiser for the whole stack: a block updates as one unit (see flatten_parameters)."""
        owners = [layer for layer in self.layers if layer.params]
        if not owners:
            self.optimizer = None
            return
        flat_params, self.flat_grads = flatten_parameters(owners)
        self.optimizer = make_optimizer({"params": flat_params})

    def update(self):
        if self.optimizer is not None:
            self.optimizer.step({"params": self.flat_grads})

    def __deepcopy__(self, memo):
        # a deep copy turns views into independent arrays: re-point the copied layers at the copied flat buffers
        clone = Sequential.__new__(Sequential)
        memo[id(self)] = clone
        clone.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        if clone.optimizer is not None:
            owners = [layer for layer in clone.layers if layer.params]
            point_into(owners, clone.optimizer.params["params"], clone.flat_grads)
        return clone

    def state_arrays(self, prefix=""):
        out = {}
        for i, layer in enumerate(self.layers):
            out.update(layer.state_arrays(f"{prefix}{i}."))
        if self.optimizer is not None:
            out.update({f"{prefix}opt.{k}": v for k, v in self.optimizer.state_arrays().items()})
        return out

    def optimizers(self, prefix=""):
        out = {}
        for i, layer in enumerate(self.layers):
            out.update(layer.optimizers(f"{prefix}{i}."))
        return out if self.optimizer is None else {**out, prefix.rstrip("."): self.optimizer}

    def __repr__(self):
        return "Sequential(" + ", ".join(map(repr, self.layers)) + ")"


def flatten_parameters(layers):
    """Move the parameters and gradient buffers of `layers` into two contiguous 1-D buffers.

    Each layer keeps its named params/grads, now views into the buffers, so forward and backward read and
    write them exactly as before. An optimiser given the buffers updates every parameter of a block with a
    handful of long array operations instead of a handful per tensor - Adam over a block of weights, gains
    and biases is 10 passes, not 10 per tensor. Returns (flat_params, flat_grads).
    """
    arrays = [p for layer in layers for p in layer.params.values()]
    dtype = arrays[0].dtype
    if any(p.dtype != dtype for p in arrays):
        raise TypeError(f"cannot flatten parameters of different dtypes: {sorted({str(p.dtype) for p in arrays})}")
    backend = xp()
    total = sum(p.size for p in arrays)
    flat_params, flat_grads = backend.concatenate([p.ravel() for p in arrays]), backend.zeros(total, dtype=dtype)
    point_into(layers, flat_params, flat_grads)
    return flat_params, flat_grads


def point_into(layers, flat_params, flat_grads):
    """Make each layer's params and grads views into the flat buffers, in order (values already in place)."""
    offset = 0
    for layer in layers:
        for name, p in list(layer.params.items()):
            layer.params[name] = flat_params[offset : offset + p.size].reshape(p.shape)
            layer.grads[name] = flat_grads[offset : offset + p.size].reshape(p.shape)
            offset += p.size
