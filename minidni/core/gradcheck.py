"""Gradient checking by float64 central differences, for minidni's layers and for yours.

    df/dx_j ~ (f(x + eps e_j) - f(x - eps e_j)) / (2 eps)          error O(eps^2)

To check a layer's backward, reduce its output to a scalar with a fixed random projection R,
L = sum(y * R), so that dL/dy = R; then every analytic gradient the layer produces (dx and its parameter
grads) is compared with the numerical one. Build the layer with dtype=np.float64: in float32 the finite
differences themselves are too noisy to tell a right backward from a slightly wrong one.

What this module deliberately is not: fast. It perturbs one number at a time, so keep shapes tiny.
"""

import numpy as np

from minidni.core.backend import to_numpy


def assert_close(actual, expected, rtol=1e-6, atol=1e-8, name="array"):
    """Raise AssertionError saying where `actual` first differs from `expected`, and by how much."""
    actual, expected = np.asarray(to_numpy(actual)), np.asarray(to_numpy(expected))
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape}, expected {expected.shape}")
    bad = ~np.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=False)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        worst = np.max(np.abs(actual - expected) / (atol + rtol * np.abs(expected)))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.size} entries differ (rtol={rtol:g}, atol={atol:g}); first at "
            f"index {idx}: got {actual[idx]!r}, expected {expected[idx]!r}; worst |diff|/tolerance = {worst:.3g}"
        )


def numerical_gradient(f, x, eps=1e-6):
    """Central-difference gradient of the scalar function f() with respect to the array x, perturbed in place."""
    if x.dtype != np.float64:
        raise TypeError(
            f"numerical gradients need float64 arrays, got {x.dtype}; build the model with dtype=np.float64"
        )
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)  # views: writing flat[j] perturbs x
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + eps
        f_plus = f()
        flat[j] = old - eps
        f_minus = f()
        flat[j] = old
        gflat[j] = (f_plus - f_minus) / (2 * eps)
    return grad


def check_layer(layer, x, train=True, seed=0, eps=1e-6, rtol=1e-5, atol=1e-7):
    """Check `layer.backward` (dx and every parameter gradient) against central differences at input x.

    Works for any object with forward(x, train) -> (y, cache), backward(dy, cache) -> dx and params/grads dicts
    (a minidni Layer or Sequential, or your own). Returns the dict of maximum absolute errors per quantity.
    """
    x = np.array(x, dtype=np.float64)
    y, cache = layer.forward(x, train)
    R = np.random.default_rng(seed).standard_normal(y.shape)  # dL/dy for L = sum(y * R)
    dx = layer.backward(R, cache)
    analytic = {"x": dx}
    analytic.update({name: g.copy() for name, g in _params_and_grads(layer)[1].items()})

    def loss():
        out, _ = layer.forward(x, train)
        return float(np.sum(out * R))

    errors = {}
    targets = {"x": x}
    targets.update(_params_and_grads(layer)[0])
    for name, arr in targets.items():
        num = numerical_gradient(loss, arr, eps)
        assert_close(analytic[name], num, rtol=rtol, atol=atol, name=f"d{name}")
        errors[name] = float(np.max(np.abs(analytic[name] - num)))
    return errors


def check_function(forward_loss, inputs, analytic, eps=1e-6, rtol=1e-5, atol=1e-7):
    """Check hand-written gradients of a scalar function.

    forward_loss(): recomputes the loss from the arrays in `inputs` (a {name: float64 array} dict it reads);
    analytic: {name: gradient} computed by your backward. Raises AssertionError at the first mismatch.
    """
    for name, arr in inputs.items():
        num = numerical_gradient(forward_loss, arr, eps)
        assert_close(analytic[name], num, rtol=rtol, atol=atol, name=f"d{name}")


def _params_and_grads(layer):
    """Flatten the params/grads of a layer or of a Sequential (layers[i].name) into two dicts."""
    if hasattr(layer, "layers"):
        params, grads = {}, {}
        for i, sub in enumerate(layer.layers):
            p, g = _params_and_grads(sub)
            params.update({f"{i}.{k}": v for k, v in p.items()})
            grads.update({f"{i}.{k}": v for k, v in g.items()})
        return params, grads
    return dict(layer.params), dict(layer.grads)
