"""Helpers shared by the tests (fixtures are in conftest.py): data sets, targets per
loss, error measures; for the layer tests, reading a training-mode output, and finite
differences."""

import numpy as np

import minitrain as mt


def with_probe(layers, n_features, n_rows, backend="c", seed=0):
    """A float64 MSE model: `layers` then a probe Dense(n_rows) with zero weights."""
    model = mt.Sequential([*layers, mt.Dense(n_rows)], loss="mse", seed=seed,
                          dtype="float64", backend=backend)
    model.build(n_features)
    model.layers[-1].W[...] = 0
    model.layers[-1].b[...] = 0
    return model


def training_output(model, X):
    """The training-mode output A (n, d) of the layers below the probe, for X (n, in).

    The probe outputs P = 0, so with y = -(n²/2)·I the MSE gradient dloss/dP is the
    identity and the probe's weight gradient Aᵀ·I is exactly Aᵀ.
    """
    n = len(X)
    _, grad = model.loss_and_gradient(X, -(n * n / 2) * np.eye(n))
    probe = model.layers[-1]
    off = sum(layer.n_weights for layer in model.layers[:-1])
    return grad[off:off + probe.W.size].reshape(probe.W.shape).T


def finite_difference_error(model, X, y, h=1e-6):
    """Largest |analytic - central difference| / max(1, |analytic|) over all parameters,
    with every evaluation at the model's current iteration (same dropout masks)."""
    _, grad = model.loss_and_gradient(X, y)
    p = model.params_flat
    numeric = np.empty_like(grad)
    for i in range(p.size):
        old = p[i]
        p[i] = old + h
        plus, _ = model.loss_and_gradient(X, y)
        p[i] = old - h
        minus, _ = model.loss_and_gradient(X, y)
        p[i] = old
        numeric[i] = (plus - minus) / (2 * h)
    return np.max(np.abs(grad - numeric) / np.maximum(1, np.abs(grad))), grad


def fit_weights(layers_fn, X, y, backend, dtype="float64", threads=None, epochs=2,
                optimizer=None, loss="cross_entropy", batch_size=32):
    """params_flat and buffers_flat after `epochs` of SGD with momentum from seed 0."""
    before = mt.get_num_threads()
    if threads:
        mt.set_num_threads(threads)
    try:
        model = mt.Sequential(layers_fn(), loss=loss, seed=0, dtype=dtype, backend=backend)
        model.fit(X, y, epochs=epochs, batch_size=batch_size, verbose=0,
                  optimizer=optimizer or mt.SGD(lr=0.05, momentum=0.9))
    finally:
        mt.set_num_threads(before)
    return model.params_flat.copy(), model.buffers_flat.copy()


def blobs(n, d, classes, seed=0):
    """A small classification problem: Gaussian blobs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.normal(size=(n, d)) + 2 * rng.normal(size=(classes, d))[y]
    return X, y


LOSS_TARGETS = ("cross_entropy", "mse", "binary_cross_entropy")


def make_targets(loss, n, n_out, rng):
    if loss == "cross_entropy":
        return rng.integers(0, n_out, n)
    if loss == "mse":
        return rng.normal(size=(n, n_out))
    return rng.integers(0, 2, (n, n_out)).astype(np.float64)


def relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def cyclic_blobs(n=150, seed=0, classes=3, features=4, spread=2.0):
    """Gaussian blobs around the first unit vectors; the classes cycle row by row."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.standard_normal((n, features)) + spread * np.eye(classes, features)[y]
    return X, y.astype(np.int64)


def subprocess_path(test_file):
    """PYTHONPATH for a subprocess that imports `test_file`'s module and these helpers."""
    import os
    here = os.path.dirname(os.path.abspath(test_file))
    return os.pathsep.join([here, os.path.dirname(os.path.abspath(__file__))])
