"""Training learns: the shipped digits with a 64-128-10 network."""

import numpy as np
import pytest

import minitrain as mt


@pytest.mark.parametrize("optimizer", [mt.SGD(lr=0.05, momentum=0.9), mt.Adam(lr=0.001)],
                         ids=["sgd", "adam"])
def test_digits_reach_95_percent_within_30_epochs(digits, optimizer):
    Xtr, Xte, ytr, yte = digits
    model = mt.Sequential([mt.Dense(128, activation="relu"), mt.Dense(10)], seed=0)
    hist = model.fit(Xtr, ytr, epochs=30, batch_size=32, optimizer=optimizer, verbose=0)
    result = model.evaluate(Xte, yte)
    assert result["accuracy"] >= 0.95
    assert hist.history["loss"][-1] < 0.1 * hist.history["loss"][0]
    assert np.mean(model.predict(Xte) == yte) == pytest.approx(result["accuracy"])


def test_shipped_digits_are_the_uci_data():
    X, y = mt.load_digits()
    assert X.shape == (1797, 64) and y.shape == (1797,)
    assert X.min() == 0 and X.max() == 16 and np.all(X == np.round(X))
    np.testing.assert_array_equal(np.bincount(y), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])


def test_regression_learns_a_linear_map():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(512, 3))
    A = rng.normal(size=(3, 2))
    y = X @ A + 0.5
    model = mt.Sequential([mt.Dense(16, activation="tanh"), mt.Dense(2)], loss="mse", seed=0)
    model.fit(X, y, epochs=60, batch_size=32, optimizer=mt.Adam(lr=0.01), verbose=0)
    assert model.evaluate(X, y)["loss"] < 0.01 * y.var()
    assert model.predict(X).shape == (512, 2)


def test_binary_and_multilabel_classification():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = np.stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0], axis=1).astype(float)
    model = mt.Sequential([mt.Dense(16, activation="relu"), mt.Dense(2)],
                          loss="binary_cross_entropy", seed=0)
    model.fit(X, y, epochs=40, batch_size=32, optimizer=mt.Adam(lr=0.01), verbose=0)
    assert model.evaluate(X, y)["accuracy"] > 0.95
    proba = model.predict_proba(X)
    assert proba.shape == (400, 2) and np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_array_equal(model.predict(X), (proba > 0.5).astype(int))
    single = mt.Sequential([mt.Dense(1, activation="sigmoid")], loss="bce", seed=0)
    single.fit(X, y[:, 0], epochs=30, batch_size=32, optimizer=mt.Adam(lr=0.05), verbose=0)
    assert single.predict(X).shape == (400,) and single.evaluate(X, y[:, 0])["accuracy"] > 0.95


def test_softmax_output_layer_is_fused_into_the_loss(digits):
    Xtr, _, ytr, _ = digits
    logits = mt.Sequential([mt.Dense(10)], seed=0)
    softmax = mt.Sequential([mt.Dense(10, activation="softmax")], seed=0)
    for m in (logits, softmax):
        m.fit(Xtr[:200], ytr[:200], epochs=2, batch_size=50, verbose=0)
    np.testing.assert_array_equal(logits.params_flat, softmax.params_flat)
    np.testing.assert_allclose(softmax.predict_proba(Xtr[:5]).sum(axis=1), 1, rtol=1e-6)
