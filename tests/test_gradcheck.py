"""The gradient checker itself: it must catch a wrong backward, or every other test proves nothing."""

import numpy as np
import pytest

from minidni.core.gradcheck import assert_close, check_layer, numerical_gradient
from minidni.core.layers import Layer, Linear


class WrongTanh(Layer):
    """tanh with a backward that forgets the square: d/dx = 1 - y (wrong)."""

    def forward(self, x, train=True):
        y = np.tanh(x)
        return y, y

    def backward(self, dy, cache, need_dx=True):
        return dy * (1 - cache)


class WrongLinearBias(Linear):
    """Linear whose bias gradient is off by the batch mean instead of the sum."""

    def backward(self, dy, cache, need_dx=True):
        dx = super().backward(dy, cache, need_dx)
        self.grads["b"][...] = dy.mean(axis=0)
        return dx


def test_catches_wrong_input_gradient():
    x = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(AssertionError, match="dx"):
        check_layer(WrongTanh(), x)


def test_catches_wrong_parameter_gradient():
    x = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(AssertionError, match="db"):
        check_layer(WrongLinearBias(4, 2, dtype=np.float64), x)


def test_numerical_gradient_of_a_quadratic():
    a = np.array([1.0, -2.0, 3.0])
    g = numerical_gradient(lambda: float(np.sum(a**2)), a)
    assert_close(g, 2 * a, rtol=1e-8)


def test_numerical_gradient_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        numerical_gradient(lambda: 0.0, np.zeros(3, np.float32))


def test_assert_close_says_where():
    with pytest.raises(AssertionError, match=r"first at index \(1,\)"):
        assert_close(np.array([1.0, 2.5, 3.0]), np.array([1.0, 2.0, 3.0]), name="v")
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.zeros(2), np.zeros(3))
