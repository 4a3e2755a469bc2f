"""Dropout: inverted scaling, counter-based masks, identity in inference, gradients."""

import numpy as np
import pytest

import minitrain as mt
from minitrain import _core
from minitrain import functional as F
from helpers import blobs, finite_difference_error, fit_weights, training_output, with_probe

BACKENDS = ["c", "numpy"]


def _mask(backend, rate, iteration=0, n=200, d=100, seed=3):
    """The training-mode mask of Dropout(rate) on ones (n, d): its output is the mask."""
    model = with_probe([mt.Dropout(rate)], d, n, backend=backend, seed=seed)
    model.iteration = iteration
    return training_output(model, np.ones((n, d)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_training_keeps_expected_fraction_with_inverted_scaling(backend, rate):
    mask = _mask(backend, rate)
    kept = mask != 0
    np.testing.assert_allclose(mask[kept], 1 / (1 - rate), rtol=1e-15)
    # 20000 elements: the kept fraction's standard deviation is at most 0.0035
    assert abs(kept.mean() - (1 - rate)) < 0.015
    # every row and column is masked independently, not in blocks
    assert 0 < kept.mean(axis=1).min() and kept.mean(axis=1).max() < 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_is_the_documented_hash_keyed_by_seed_and_iteration(backend):
    mask = _mask(backend, 0.5, iteration=7)
    np.testing.assert_array_equal(mask, F.dropout_mask(3, 7, 0, mask.shape, 0.5, np.float64))
    np.testing.assert_array_equal(mask, _mask(backend, 0.5, iteration=7))
    assert (mask != _mask(backend, 0.5, iteration=8)).mean() > 0.4
    assert (mask != _mask(backend, 0.5, iteration=7, seed=4)).mean() > 0.4


def test_rate_zero_is_the_identity_in_training():
    np.testing.assert_array_equal(_mask("c", 0.0), np.ones((200, 100)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_in_predict_and_evaluate(backend):
    X, y = blobs(60, 5, 3)
    with_dropout = mt.Sequential([mt.Dense(16, activation="tanh"), mt.Dropout(0.5),
                                  mt.Dense(3)], seed=1, dtype="float64", backend=backend)
    plain = mt.Sequential([mt.Dense(16, activation="tanh"), mt.Dense(3)], seed=1,
                          dtype="float64", backend=backend)
    with_dropout.build(5)
    plain.build(5)
    np.testing.assert_array_equal(with_dropout.params_flat, plain.params_flat)
    np.testing.assert_array_equal(with_dropout.predict_proba(X), plain.predict_proba(X))
    assert with_dropout.evaluate(X, y) == plain.evaluate(X, y)
    # while the training loss sees the masks
    assert with_dropout.loss_and_gradient(X, y)[0] != plain.loss_and_gradient(X, y)[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_difference_gradient_with_a_fixed_mask(backend):
    X, y = blobs(12, 4, 3)
    model = mt.Sequential([mt.Dropout(0.2), mt.Dense(8, activation="tanh"), mt.Dropout(0.4),
                           mt.Dense(3)], seed=2, dtype="float64", backend=backend)
    model.build(4)
    model.iteration = 5
    error, grad = finite_difference_error(model, X, y)
    assert error < 1e-7
    # the next iteration draws other masks, hence another gradient
    model.iteration = 6
    assert not np.allclose(model.loss_and_gradient(X, y)[1], grad)


def _dropout_net():
    return [mt.Dense(32, activation="relu"), mt.Dropout(0.3), mt.Dense(16, activation="tanh"),
            mt.Dropout(0.1), mt.Dense(3)]


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 2e-5)])
def test_c_and_numpy_give_the_same_weights_after_two_epochs(dtype, rtol):
    X, y = blobs(150, 6, 3)
    c, _ = fit_weights(_dropout_net, X, y, "c", dtype)
    ref, _ = fit_weights(_dropout_net, X, y, "numpy", dtype)
    np.testing.assert_allclose(c, ref, rtol=rtol, atol=rtol)
    # dropout changed the run: it is not the network without it
    plain, _ = fit_weights(lambda: [l for l in _dropout_net() if not isinstance(l, mt.Dropout)],
                           X, y, "c", dtype)
    assert not np.allclose(c, plain)


def test_one_and_two_threads_give_identical_weights():
    # 256 rows x 256 units: the masks are drawn by both threads
    X, y = blobs(512, 32, 4)
    net = lambda: [mt.Dense(256, activation="relu"), mt.Dropout(0.5), mt.Dense(4)]  # noqa: E731
    one, _ = fit_weights(net, X, y, "c", "float32", threads=1, epochs=1, batch_size=256)
    two, _ = fit_weights(net, X, y, "c", "float32", threads=2, epochs=1, batch_size=256)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_rate_outside_unit_interval_is_rejected(rate):
    with pytest.raises(ValueError, match="rate"):
        mt.Dropout(rate)


@pytest.mark.parametrize("rate", ["0.5", None, True])
def test_rate_must_be_a_number(rate):
    with pytest.raises(TypeError, match="rate"):
        mt.Dropout(rate)


def test_binding_rejects_a_bad_rate():
    params = np.zeros(12)
    layers = [{"kind": "dropout", "in": 3, "out": 3, "rate": 1.0},
              {"kind": "dense", "in": 3, "out": 3, "w_off": 0, "b_off": 9}]
    with pytest.raises(ValueError, match="rate"):
        _core.Net(np.float64, "cross_entropy", layers, params, np.zeros(12), np.zeros(24))


def test_config_and_summary():
    layer = mt.Dropout(0.25)
    assert layer.get_config() == {"class": "Dropout", "rate": 0.25}
    model = mt.Sequential([mt.Dense(4), layer, mt.Dense(2)], seed=0)
    model.build(3)
    assert layer.units == 4 and layer.n_params == 0
    lines = []
    model.summary(print_fn=lines.append)
    assert any(line.startswith("Dropout(0.25)") for line in lines)
