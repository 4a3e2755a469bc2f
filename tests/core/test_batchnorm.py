"""BatchNorm: batch statistics in training, running statistics in inference, gradients."""

import numpy as np
import pytest

import minitrain as mt
from minitrain import _core
from helpers import blobs, finite_difference_error, fit_weights, training_output, with_probe

BACKENDS = ["c", "numpy"]
EPS = 1e-5


def _reference(X, gamma, beta, mean, var, eps=EPS):
    return gamma * (X - mean) / np.sqrt(var + eps) + beta


def _data(n=32, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + rng.normal(size=d) * 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_mode_normalises_with_batch_statistics(backend):
    X = _data()
    model = with_probe([mt.BatchNorm()], 6, len(X), backend=backend)
    bn = model.layers[0]
    rng = np.random.default_rng(1)
    bn.gamma[...] = rng.uniform(0.5, 2, 6)
    bn.beta[...] = rng.normal(size=6)
    out = training_output(model, X)
    expected = _reference(X, bn.gamma, bn.beta, X.mean(axis=0), X.var(axis=0))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    # computing a gradient does not move the running statistics
    np.testing.assert_array_equal(model.buffers_flat, np.r_[np.zeros(6), np.ones(6)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_statistics_and_inference_mode(backend):
    X = _data(n=60)
    y = np.random.default_rng(2).normal(size=(60, 2))
    model = mt.Sequential([mt.BatchNorm(momentum=0.8), mt.Dense(2)], loss="mse", seed=0,
                          dtype="float64", backend=backend)
    bn = model.layers[0]
    mean, var = np.zeros(6), np.ones(6)
    for batch in np.split(np.arange(60), [20, 45, 59]):  # the last batch has one row
        model.train_step(X[batch], y[batch], optimizer=mt.SGD(lr=0.1))
        n = len(batch)
        unbiased = X[batch].var(axis=0) * (n / (n - 1) if n > 1 else 1)
        mean = 0.8 * mean + 0.2 * X[batch].mean(axis=0)
        var = 0.8 * var + 0.2 * unbiased
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, var, rtol=1e-12)
    np.testing.assert_array_equal(model.buffers_flat, np.r_[bn.running_mean, bn.running_var])
    dense = model.layers[1]
    expected = _reference(X, bn.gamma, bn.beta, mean, var) @ dense.W + dense.b
    np.testing.assert_allclose(model.predict(X), expected, rtol=1e-10, atol=1e-12)
    # inference does not depend on the batch: one row gives the same output
    np.testing.assert_allclose(model.predict(X[:1]), expected[:1], rtol=1e-10, atol=1e-12)


def test_a_batch_of_one_row_outputs_beta():
    model = with_probe([mt.BatchNorm()], 3, 1)
    model.layers[0].beta[...] = [1.0, -2.0, 0.5]
    np.testing.assert_array_equal(training_output(model, np.array([[3.0, 4.0, 5.0]])),
                                  [[1.0, -2.0, 0.5]])


def _bn_net():
    return [mt.Dense(7), mt.BatchNorm(), mt.Activation("tanh"), mt.Dense(5, activation="tanh"),
            mt.BatchNorm(momentum=0.5, epsilon=1e-3), mt.Dense(3)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_difference_gradient_through_a_network(backend):
    X, y = blobs(16, 4, 3)
    model = mt.Sequential(_bn_net(), seed=3, dtype="float64", backend=backend)
    model.build(4)
    rng = np.random.default_rng(4)
    for bn in (model.layers[1], model.layers[4]):
        bn.gamma[...] = rng.uniform(0.5, 2, bn.units)
        bn.beta[...] = rng.normal(size=bn.units)
    error, grad = finite_difference_error(model, X, y)
    assert error < 1e-7
    # gamma and beta have gradients, and the Dense layer below (through dX) too
    bn = model.layers[1]
    at = (bn.gamma.ctypes.data - model.params_flat.ctypes.data) // 8
    assert np.all(grad[at:at + 2 * bn.units] != 0)
    assert np.all(grad[:4 * 7] != 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_difference_gradient_first_layer(backend):
    X, y = blobs(10, 3, 2)
    model = mt.Sequential([mt.BatchNorm(), mt.Dense(2, activation="tanh"), mt.Dropout(0.3),
                           mt.Dense(2)], seed=5, dtype="float64", backend=backend)
    model.build(3)
    model.layers[0].gamma[...] = [0.5, 1.5, 2.0]
    error, _ = finite_difference_error(model, X, y)
    assert error < 1e-7


def test_scale_and_shift_follow_the_weights_and_are_not_decayed():
    model = mt.Sequential(_bn_net(), seed=0)
    model.build(4)
    n_weights = 4 * 7 + 7 * 5 + 5 * 3
    assert model._n_decay == n_weights
    for bn in (model.layers[1], model.layers[4]):
        for view, value in ((bn.gamma, 1), (bn.beta, 0)):
            assert np.shares_memory(view, model.params_flat[n_weights:])
            np.testing.assert_array_equal(view, value)
    assert model.buffers_flat.size == 2 * (7 + 5)
    assert model.params_flat.size == n_weights + 7 + 5 + 3 + 2 * (7 + 5)


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 2e-4)])
def test_c_and_numpy_give_the_same_weights_and_statistics(dtype, rtol):
    X, y = blobs(150, 4, 3)
    c_params, c_buffers = fit_weights(_bn_net, X, y, "c", dtype)
    ref_params, ref_buffers = fit_weights(_bn_net, X, y, "numpy", dtype)
    np.testing.assert_allclose(c_params, ref_params, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(c_buffers, ref_buffers, rtol=rtol, atol=rtol)


def test_one_and_two_threads_give_identical_weights():
    # 256 rows x 256 columns: the columns are split between the threads
    X, y = blobs(512, 32, 4)
    net = lambda: [mt.Dense(256), mt.BatchNorm(), mt.Activation("relu"), mt.Dense(4)]  # noqa: E731
    one = fit_weights(net, X, y, "c", "float32", threads=1, epochs=1, batch_size=256)
    two = fit_weights(net, X, y, "c", "float32", threads=2, epochs=1, batch_size=256)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


@pytest.mark.parametrize("kwargs,name", [
    ({"momentum": 1.5}, "momentum"), ({"momentum": -0.1}, "momentum"),
    ({"momentum": float("nan")}, "momentum"), ({"epsilon": 0}, "epsilon"),
    ({"epsilon": -1e-5}, "epsilon"), ({"epsilon": float("inf")}, "epsilon"),
    ({"epsilon": float("nan")}, "epsilon")])
def test_bad_hyper_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mt.BatchNorm(**kwargs)


def test_bad_activation_layer():
    with pytest.raises(ValueError, match="activation"):
        mt.Activation("softmax")
    with pytest.raises(ValueError, match="activation"):
        mt.Activation("swish")


def test_model_must_end_with_dense():
    model = mt.Sequential([mt.Dense(3), mt.BatchNorm()], seed=0)
    with pytest.raises(ValueError, match="Dense"):
        model.build(2)
    assert not model.built


def test_binding_rejects_statistics_outside_the_buffers():
    layers = [{"kind": "batchnorm", "in": 3, "out": 3, "w_off": 0, "b_off": 3,
               "s_off": 2, "momentum": 0.9, "eps": 1e-5},
              {"kind": "dense", "in": 3, "out": 1, "w_off": 6, "b_off": 9}]
    args = (np.float64, "mse", layers, np.zeros(10), np.zeros(10), np.zeros(20))
    with pytest.raises(ValueError, match="running statistics"):
        _core.Net(*args, np.zeros(6))
    _core.Net(*args, np.zeros(8))  # s_off 2 + 2*3 fits


def test_configs():
    assert mt.BatchNorm(0.99, 1e-3).get_config() == {"class": "BatchNorm", "momentum": 0.99,
                                                      "epsilon": 1e-3}
    assert mt.Activation("logistic").get_config() == {"class": "Activation",
                                                      "activation": "sigmoid",
                                                      "negative_slope": 0.01}
