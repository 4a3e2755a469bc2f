"""The C core against its NumPy twin: same initialisation, batches and updates."""

import numpy as np
import pytest

import minitrain as mt
from helpers import LOSS_TARGETS, make_targets, relative_error

OPTIMIZERS = {
    "sgd": lambda: mt.SGD(lr=0.05),
    "momentum": lambda: mt.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda: mt.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda: mt.Adam(lr=0.01, weight_decay=1e-3),
    "adamw": lambda: mt.AdamW(lr=0.01, weight_decay=0.05),
    "clipped": lambda: mt.SGD(lr=0.5, clip_norm=0.1),
}


def train(backend, dtype, optimizer, loss="cross_entropy", activation="relu", epochs=2):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 12))
    y = make_targets(loss, 200, 4, rng)
    model = mt.Sequential([mt.Dense(16, activation=activation), mt.Dense(8, activation=activation),
                           mt.Dense(4)], loss=loss, seed=7, dtype=dtype, backend=backend)
    hist = model.fit(X, y, epochs=epochs, batch_size=24, optimizer=OPTIMIZERS[optimizer](),
                     verbose=0)
    return model, hist


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_float64_same_weights(optimizer):
    c, hc = train("c", "float64", optimizer)
    n, hn = train("numpy", "float64", optimizer)
    assert c.epoch == n.epoch == 2
    assert relative_error(c.params_flat, n.params_flat) < 1e-9
    np.testing.assert_allclose(hc.iteration_loss, hn.iteration_loss, rtol=1e-9)
    # training changed the weights: the comparison is not between two initialisations
    assert relative_error(c.params_flat, mt.Sequential(
        [mt.Dense(16, activation="relu"), mt.Dense(8, activation="relu"), mt.Dense(4)],
        seed=7, dtype="float64").build(12).params_flat) > 1e-2


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_float32_same_weights(optimizer):
    c, _ = train("c", "float32", optimizer)
    n, _ = train("numpy", "float32", optimizer)
    assert c.params_flat.dtype == np.float32
    assert relative_error(c.params_flat, n.params_flat) < 1e-4


@pytest.mark.parametrize("loss", LOSS_TARGETS)
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu", "leaky_relu"])
def test_losses_and_activations_same_weights(loss, activation):
    c, _ = train("c", "float64", "momentum", loss=loss, activation=activation)
    n, _ = train("numpy", "float64", "momentum", loss=loss, activation=activation)
    assert relative_error(c.params_flat, n.params_flat) < 1e-9


def test_same_initialisation_and_predictions():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 6))
    models = [mt.Sequential([mt.Dense(5, activation="tanh"), mt.Dense(3)], seed=11,
                            dtype="float64", backend=b).build(6) for b in ("c", "numpy")]
    np.testing.assert_array_equal(models[0].params_flat, models[1].params_flat)
    np.testing.assert_allclose(models[0].predict_proba(X), models[1].predict_proba(X), rtol=1e-12)


def test_train_step_matches_manual_numpy_sgd():
    """One iteration equals the textbook NumPy computation of a user's own trainer."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(8, 3))
    y = rng.integers(0, 2, 8)
    model = mt.Sequential([mt.Dense(4, activation="relu"), mt.Dense(2)], seed=0, dtype="float64")
    model.build(3)
    W1, b1, W2, b2 = (a.copy() for a in (model.layers[0].W, model.layers[0].b,
                                         model.layers[1].W, model.layers[1].b))
    loss = model.train_step(X, y, optimizer=mt.SGD(lr=0.1))
    h = np.maximum(X @ W1 + b1, 0)
    z = h @ W2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(8), y]).mean(), rel=1e-12)
    dz = p.copy()
    dz[np.arange(8), y] -= 1
    dz /= 8
    dh = dz @ W2.T * (h > 0)
    np.testing.assert_allclose(model.layers[1].W, W2 - 0.1 * h.T @ dz, rtol=1e-12)
    np.testing.assert_allclose(model.layers[1].b, b2 - 0.1 * dz.sum(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(model.layers[0].W, W1 - 0.1 * X.T @ dh, rtol=1e-12)
    np.testing.assert_allclose(model.layers[0].b, b1 - 0.1 * dh.sum(0), rtol=1e-12, atol=1e-15)
    assert model.iteration == 1 and model.epoch == 0


def test_softmax_cross_entropy_over_the_whole_exponent_range():
    """The core's own exp in the softmax against NumPy's: logits from 0 to 1500 below
    the row's largest (exp underflows to 0 past -708), loss and gradient in float64."""
    rng = np.random.default_rng(5)
    X = np.eye(12)
    y = rng.integers(0, 10, 12)
    results = []
    for backend in ("c", "numpy"):
        model = mt.Sequential([mt.Dense(10)], seed=0, dtype="float64", backend=backend).build(12)
        model.layers[0].W[...] = -np.geomspace(1e-3, 1500, 120).reshape(12, 10)
        model.layers[0].b[...] = 0
        results.append(model.loss_and_gradient(X, y))
    (loss_c, grad_c), (loss_n, grad_n) = results
    assert loss_c == pytest.approx(loss_n, rel=1e-15)
    # p - 1 for the labels cancels digits: an absolute floor far below the gradient's size
    np.testing.assert_allclose(grad_c, grad_n, rtol=1e-14, atol=1e-16)
    assert np.count_nonzero(grad_n) < grad_n.size  # some probabilities did underflow


@pytest.mark.parametrize("rows,classes", [(250, 10), (5, 1500), (40, 1024), (3, 2049)])
def test_softmax_cross_entropy_in_blocks_of_rows(rows, classes):
    """The core takes the softmax's exp over blocks of up to 1024 logits: several blocks
    of short rows, and rows longer than a block, against the NumPy twin."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(rows, 8)) * 3
    y = rng.integers(0, classes, rows)
    results = []
    for backend in ("c", "numpy"):
        model = mt.Sequential([mt.Dense(classes)], seed=0, dtype="float64", backend=backend)
        results.append(model.build(8).loss_and_gradient(X, y))
    (loss_c, grad_c), (loss_n, grad_n) = results
    assert loss_c == pytest.approx(loss_n, rel=1e-14)
    np.testing.assert_allclose(grad_c, grad_n, rtol=1e-12, atol=1e-16)
