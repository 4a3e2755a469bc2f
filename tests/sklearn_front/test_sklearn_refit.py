"""A fitted minitrain.sklearn estimator refits on data of another shape as scikit-learn's
does: fit with warm_start=False starts afresh, whatever the earlier fit was."""

import warnings

import numpy as np
import pytest
import sklearn.neural_network as sk
from sklearn.exceptions import ConvergenceWarning

import minitrain.sklearn as mts

_rng = np.random.RandomState(0)
X = _rng.randn(90, 5)
Y3 = np.digitize(X[:, 1] + 0.3 * X[:, 2], [-0.5, 0.5])
Y2 = (X[:, 0] > 0).astype(int)
Y_REG = X @ _rng.randn(5)
Y_REG2 = np.c_[Y_REG, X[:, 0] ** 2]

BASE = dict(hidden_layer_sizes=(6,), random_state=1, max_iter=8, batch_size=16,
            learning_rate_init=0.01)
RTOL = {"sgd": 1e-8, "adam": 1e-8, "lbfgs": 1e-5}

# (estimator, first solver, first data, second solver, second data)
CASES = {
    "3 classes then 2": ("MLPClassifier", "adam", (X, Y3), "adam", (X, Y2)),
    "5 features then 4": ("MLPRegressor", "sgd", (X, Y_REG), "sgd", (X[:, :4], Y_REG)),
    "1 output then 2": ("MLPRegressor", "adam", (X, Y_REG), "adam", (X, Y_REG2)),
    "lbfgs then adam on fewer features": ("MLPRegressor", "lbfgs", (X, Y_REG), "adam",
                                          (X[:, :3], Y_REG)),
    "adam then lbfgs on fewer features": ("MLPClassifier", "adam", (X, Y3), "lbfgs",
                                          (X[:, :3], Y3)),
    "sgd then adam on 2 classes of fewer features": ("MLPClassifier", "sgd", (X, Y3), "adam",
                                                     (X[:, :2], Y2)),
}


def _close(actual, expected, rtol):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=0, atol=rtol * np.abs(e).max())


@pytest.mark.parametrize("case", CASES)
def test_refit_on_other_shapes_matches_a_fresh_scikit_learn_fit(case):
    name, solver1, data1, solver2, data2 = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = getattr(mts, name)(solver=solver1, **BASE).fit(*data1)
        ours.set_params(solver=solver2)
        ours.fit(*data2)
        theirs = getattr(sk, name)(solver=solver1, **BASE).fit(*data1)
        theirs.set_params(solver=solver2)
        theirs.fit(*data2)
        fresh = getattr(sk, name)(solver=solver2, **BASE).fit(*data2)
    rtol = RTOL[solver2]
    for ref in (theirs, fresh):
        _close(ours.coefs_, ref.coefs_, rtol)
        _close(ours.intercepts_, ref.intercepts_, rtol)
        assert ours.n_iter_ == ref.n_iter_
        assert ours.loss_ == pytest.approx(ref.loss_, rel=rtol)
        assert ours.n_features_in_ == ref.n_features_in_
        assert ours.n_outputs_ == ref.n_outputs_
    expected = fresh.predict(data2[0])
    np.testing.assert_allclose(ours.predict(data2[0]), expected, rtol=0,
                               atol=10 * rtol * max(1.0, np.abs(expected).max()))
