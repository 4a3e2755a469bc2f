"""Finite-difference checks of the C core's gradients, in float64."""

import numpy as np
import pytest

import minitrain as mt
from helpers import LOSS_TARGETS, make_targets

ACTIVATIONS = ["identity", "relu", "leaky_relu", "tanh", "sigmoid", "gelu"]


def numerical_gradient(model, X, y, h=1e-6):
    p = model.params_flat
    grad = np.empty_like(p)
    for i in range(p.size):
        old = p[i]
        p[i] = old + h
        up = model.loss_and_gradient(X, y)[0]
        p[i] = old - h
        down = model.loss_and_gradient(X, y)[0]
        p[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


def check_gradient(hidden, activation, loss, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(13, 5))
    y = make_targets(loss, 13, n_out, rng)
    layers = [mt.Dense(h, activation=activation) for h in hidden] + [mt.Dense(n_out)]
    model = mt.Sequential(layers, loss=loss, seed=seed, dtype="float64").build(5)
    # biases start at zero: move them so their gradients (and kinks) are exercised
    model.params_flat[model._n_decay:] = rng.normal(scale=0.3, size=model.params_flat.size - model._n_decay)
    loss_value, grad = model.loss_and_gradient(X, y)
    num = numerical_gradient(model, X, y)
    assert np.isfinite(loss_value)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7 * max(1.0, np.abs(num).max()))
    return model, grad


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSS_TARGETS)
def test_every_activation_and_loss(activation, loss):
    check_gradient([4], activation, loss)


@pytest.mark.parametrize("hidden", [[], [6], [6, 5], [6, 5, 4]])
def test_one_to_three_hidden_layers(hidden):
    check_gradient(hidden, "tanh", "cross_entropy")


def test_bias_gradients_are_column_sums_of_output_gradient():
    # for the output bias of a softmax cross-entropy model: mean over rows of (p - onehot)
    model, grad = check_gradient([4], "relu", "cross_entropy", n_out=3)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(13, 5))
    y = make_targets("cross_entropy", 13, 3, rng)
    p = model.predict_proba(X)
    p[np.arange(13), y] -= 1
    # the last layer's biases are the last entries of params_flat
    assert np.shares_memory(model.layers[-1].b, model.params_flat[-3:])
    np.testing.assert_allclose(grad[-3:], p.mean(axis=0), rtol=1e-10, atol=1e-12)


def test_leaky_relu_slope_is_used():
    layer = mt.Dense(3, activation="leaky_relu", negative_slope=0.2)
    m = mt.Sequential([layer], loss="mse", dtype="float64", seed=0).build(2)
    layer.W[...] = np.eye(2, 3)
    out = m.predict(np.array([[-1.0, 2.0]]))
    np.testing.assert_allclose(out, [[-0.2, 2.0, 0.0]])
