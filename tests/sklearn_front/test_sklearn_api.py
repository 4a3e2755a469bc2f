"""minitrain.sklearn against scikit-learn's estimator contract and API."""

import copy
import pickle
import tracemalloc
import unittest
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import sklearn.neural_network as sk
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from minitrain.sklearn import MLPClassifier, MLPRegressor

# Checks that skip themselves, and why. Any other skip fails the test.
JUSTIFIED_SKIPS = {
    # array-API dispatch: neither estimator supports it (array_api_support is False, as
    # for scikit-learn's MLPs); the check only runs when SCIPY_ARRAY_API=1 was set
    # before SciPy was imported
    "check_array_api_input",
    # scikit-learn's MLPClassifier has no decision_function either
    "check_classifiers_multilabel_output_format_decision_function",
}


@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)])
def test_sklearn_estimator_checks(estimator, check):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            check(estimator)
    except unittest.SkipTest:
        assert check.func.__name__ in JUSTIFIED_SKIPS


rng = np.random.RandomState(0)
X = rng.randn(80, 4)
Y_CLASS = np.digitize(X[:, 0], [-0.5, 0.5])
PARAMS = dict(hidden_layer_sizes=(6,), max_iter=20, random_state=0)


def quiet_fit(est, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*args, **kwargs)


@pytest.mark.parametrize("ours,ref", [(MLPClassifier, sk.MLPClassifier),
                                      (MLPRegressor, sk.MLPRegressor)])
def test_same_parameters_defaults_and_tags(ours, ref):
    assert ours().get_params() == ref().get_params()
    assert ours().__sklearn_tags__() == ref().__sklearn_tags__()
    assert ours(alpha=0.5, solver="sgd").get_params() == ref(alpha=0.5,
                                                            solver="sgd").get_params()


def test_string_labels_and_binary_output():
    y = np.array(["cat", "dog"])[(X[:, 0] > 0).astype(int)]
    clf = quiet_fit(MLPClassifier(**PARAMS), X, y)
    ref = quiet_fit(sk.MLPClassifier(**PARAMS), X, y)
    assert list(clf.classes_) == ["cat", "dog"] and clf.n_outputs_ == 1
    assert clf.out_activation_ == "logistic"
    np.testing.assert_array_equal(clf.predict(X), ref.predict(X))
    assert clf.predict_proba(X).shape == (80, 2)
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(clf.predict_proba(X)))
    assert clf.score(X, y) == ref.score(X, y)


def test_pandas_input_records_feature_names():
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    reg = quiet_fit(MLPRegressor(**PARAMS), df, pd.Series(X[:, 1]))
    np.testing.assert_array_equal(reg.feature_names_in_, ["a", "b", "c", "d"])
    with pytest.warns(UserWarning, match="feature names"):
        np.testing.assert_allclose(reg.predict(df), reg.predict(X))
    with pytest.raises(ValueError, match="feature names"):
        reg.predict(df.rename(columns={"a": "z"}))


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("early_stopping", [False, True])
def test_sparse_input_equals_dense(solver, early_stopping):
    Xs = sp.csr_matrix(np.where(np.abs(X) > 1, X, 0))
    params = dict(PARAMS, solver=solver, early_stopping=early_stopping)
    weights = rng.uniform(0.5, 2, X.shape[0])
    dense = quiet_fit(MLPClassifier(**params), Xs.toarray(), Y_CLASS, sample_weight=weights)
    sparse = quiet_fit(MLPClassifier(**params), Xs, Y_CLASS, sample_weight=weights)
    for a, b in zip(dense.coefs_ + dense.intercepts_, sparse.coefs_ + sparse.intercepts_):
        np.testing.assert_array_equal(a, b)
    assert sparse.n_iter_ == dense.n_iter_ > 1
    np.testing.assert_array_equal(sparse.predict_proba(Xs.tocsc()), dense.predict_proba(
        Xs.toarray()))


def test_sparse_input_is_made_dense_one_batch_at_a_time():
    # 2000 x 20000 at 0.1 % density: 320 MB dense, 0.4 MB sparse
    Xs = sp.random(2000, 20000, density=0.001, format="csr", random_state=0)
    y = np.asarray(Xs[:, :2000].sum(axis=1)).ravel()
    tracemalloc.start()
    try:
        reg = quiet_fit(MLPRegressor(hidden_layer_sizes=(4,), max_iter=2, batch_size=100,
                                     random_state=0), Xs, y)
        pred = reg.predict(Xs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pred.shape == (2000,) and np.isfinite(pred).all() and reg.n_iter_ == 2
    # a 100-row batch is 16 MB dense, in the core's workspace and as made from Xs
    # (plus the packing buffer); the whole X would be 320 MB
    assert peak < 50e6


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_pickle_deepcopy_and_clone(solver):
    clf = quiet_fit(MLPClassifier(solver=solver, **PARAMS), X, Y_CLASS)
    for other in (pickle.loads(pickle.dumps(clf)), copy.deepcopy(clf)):
        np.testing.assert_array_equal(other.predict_proba(X), clf.predict_proba(X))
        assert other.loss_ == clf.loss_
    fresh = clone(clf)
    assert fresh.get_params() == clf.get_params() and not hasattr(fresh, "coefs_")
    refit = quiet_fit(fresh, X, Y_CLASS)
    np.testing.assert_array_equal(refit.coefs_[0], clf.coefs_[0])


def test_assigned_coefs_are_used_for_prediction():
    reg = quiet_fit(MLPRegressor(activation="identity", **PARAMS), X, X[:, 0])
    ref = quiet_fit(sk.MLPRegressor(activation="identity", **PARAMS), X, X[:, 0])
    reg.coefs_ = [np.ones_like(c) for c in reg.coefs_]
    ref.coefs_ = [np.ones_like(c) for c in ref.coefs_]
    reg.intercepts_[1] = np.array([3.0])
    ref.intercepts_[1] = np.array([3.0])
    np.testing.assert_allclose(reg.predict(X), ref.predict(X), rtol=1e-12)


def test_verbose_prints_like_sklearn(capsys):
    quiet_fit(MLPClassifier(verbose=True, **PARAMS), X, Y_CLASS)
    ours = capsys.readouterr().out
    quiet_fit(sk.MLPClassifier(verbose=True, **PARAMS), X, Y_CLASS)
    assert ours == capsys.readouterr().out and ours.startswith("Iteration 1, loss = ")


BAD_CALLS = {
    "nan in X": lambda cls: cls(**PARAMS).fit(np.where(X > 2, np.nan, X), Y_CLASS),
    "inf in X": lambda cls: cls(**PARAMS).fit(np.where(X > 2, np.inf, X), Y_CLASS),
    "1-D X": lambda cls: cls(**PARAMS).fit(X[:, 0], Y_CLASS),
    "empty X": lambda cls: cls(**PARAMS).fit(X[:0], Y_CLASS[:0]),
    "length mismatch": lambda cls: cls(**PARAMS).fit(X, Y_CLASS[:-1]),
    "string X": lambda cls: cls(**PARAMS).fit(np.full((80, 4), "a"), Y_CLASS),
    "negative alpha": lambda cls: cls(alpha=-1.0).fit(X, Y_CLASS),
    "zero hidden size": lambda cls: cls(hidden_layer_sizes=(3, 0)).fit(X, Y_CLASS),
    "unknown solver": lambda cls: cls(solver="newton").fit(X, Y_CLASS),
    "unknown activation": lambda cls: cls(activation="gelu").fit(X, Y_CLASS),
    "float max_iter": lambda cls: cls(max_iter=2.5).fit(X, Y_CLASS),
    "sample_weight shape": lambda cls: cls(**PARAMS).fit(X, Y_CLASS,
                                                         sample_weight=np.ones(3)),
    "predict before fit": lambda cls: cls().predict(X),
    "predict wrong width": lambda cls: quiet_fit(cls(**PARAMS), X, Y_CLASS).predict(X[:, :3]),
    "early stopping with partial_fit": lambda cls: cls(early_stopping=True).partial_fit(
        X, Y_CLASS, **({"classes": [0, 1, 2]} if cls in (MLPClassifier, sk.MLPClassifier)
                       else {})),
    "validation set too small": lambda cls: cls(early_stopping=True, **PARAMS).fit(
        X[:10], Y_CLASS[:10]),
}
CLASSIFIER_BAD_CALLS = {
    "partial_fit without classes": lambda cls: cls().partial_fit(X, Y_CLASS),
    "partial_fit with lbfgs": lambda cls: cls(solver="lbfgs").partial_fit(X, Y_CLASS,
                                                                          classes=[0, 1, 2]),
    "new class in partial_fit": lambda cls: cls(**PARAMS).partial_fit(
        X, Y_CLASS, classes=[0, 1, 2]).partial_fit(X, Y_CLASS + 1),
    "warm_start with other classes": lambda cls: quiet_fit(
        cls(warm_start=True, **PARAMS), X, Y_CLASS).fit(X, Y_CLASS + 1),
    "continuous y": lambda cls: cls(**PARAMS).fit(X, X[:, 0]),
}


def _raised(call, cls):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            call(cls)
        except Exception as e:  # noqa: BLE001 - the type is what is compared
            return type(e)
    return None


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
@pytest.mark.parametrize("ours,ref", [(MLPClassifier, sk.MLPClassifier),
                                      (MLPRegressor, sk.MLPRegressor)])
def test_bad_input_raises_as_sklearn(name, ours, ref):
    expected = _raised(BAD_CALLS[name], ref)
    assert expected is not None and _raised(BAD_CALLS[name], ours) is expected


@pytest.mark.parametrize("name", sorted(CLASSIFIER_BAD_CALLS))
def test_classifier_bad_input_raises_as_sklearn(name):
    expected = _raised(CLASSIFIER_BAD_CALLS[name], sk.MLPClassifier)
    assert expected is not None
    assert _raised(CLASSIFIER_BAD_CALLS[name], MLPClassifier) is expected


def test_rejected_call_leaves_the_model_unchanged():
    clf = quiet_fit(MLPClassifier(**PARAMS), X, Y_CLASS)
    before = [c.copy() for c in clf.coefs_]
    with pytest.raises(ValueError):
        clf.partial_fit(X, Y_CLASS + 5)
    for a, b in zip(clf.coefs_, before):
        np.testing.assert_array_equal(a, b)
