"""A diverging sgd fit with early_stopping=True: scikit-learn trains on through the
non-finite loss and keeps the weights of the best validation score (its issue 29504);
minitrain.sklearn does the same, to the same numbers."""

import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
import scipy.sparse as sp  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402

from minitrain.sklearn import MLPRegressor  # noqa: E402

PARAMS = dict(hidden_layer_sizes=100, activation="identity", solver="sgd",
              learning_rate_init=1, max_iter=20, early_stopping=True, random_state=0)


def _fit(cls, X, y, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overflow and ConvergenceWarning, in both
        return cls(**{**PARAMS, **params}).fit(X, y)


def _same_curve(ours, theirs):
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    assert ours.shape == theirs.shape
    assert np.array_equal(np.isfinite(ours), np.isfinite(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-12)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_diverging_fit_keeps_the_best_weights_as_sklearn(sparse, momentum):
    X, y = load_iris(return_X_y=True)
    theirs = _fit(SkMLPRegressor, X, y, momentum=momentum)
    ours = _fit(MLPRegressor, sp.csr_matrix(X) if sparse else X, y, momentum=momentum)
    assert not np.isfinite(theirs.loss_curve_[-1])  # the case: it diverged
    assert len(ours.loss_curve_) == len(theirs.loss_curve_) == ours.n_iter_ == theirs.n_iter_
    assert ours.t_ == theirs.t_
    _same_curve(ours.loss_curve_, theirs.loss_curve_)
    _same_curve(ours.validation_scores_, theirs.validation_scores_)
    assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_,
                                                        rel=1e-12)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-12)


def test_without_early_stopping_both_refuse_the_non_finite_weights():
    X, y = load_iris(return_X_y=True)
    for cls in (SkMLPRegressor, MLPRegressor):
        with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
            _fit(cls, X, y, early_stopping=False)
