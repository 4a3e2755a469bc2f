"""minitrain.sklearn computes scikit-learn's numbers: same coefs_, intercepts_, loss_curve_
(1e-8 relative for sgd/adam, 1e-5 for lbfgs) with the same parameters and random_state."""

import pickle
import warnings

import numpy as np
import pytest
import sklearn.neural_network as sk
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning

import minitrain.sklearn as mts
from minitrain import datasets
from minitrain.backends import make_net
from minitrain.optimizers import ADAM_KIND, SGD_KIND, STYLE_SKLEARN, STYLE_TORCH

RTOL = {"sgd": 1e-8, "adam": 1e-8, "lbfgs": 1e-5}

_rng = np.random.RandomState(0)
X = _rng.randn(120, 5)
Y_REG = X @ _rng.randn(5) + 0.1 * _rng.randn(120)
Y_REG2 = np.c_[Y_REG, X[:, 0] ** 2]
Y_CLASS = np.digitize(X[:, 1] + 0.3 * X[:, 2], [-0.5, 0.5])  # 3 classes
Y_BIN = np.where(X[:, 0] > 0, "yes", "no")
Y_MULTILABEL = (X[:, :3] > 0).astype(int)
WEIGHTS = _rng.rand(120)


def assert_close(actual, expected, rtol):
    """Each array within rtol of the other, relative to its largest magnitude."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape and a.dtype == e.dtype
        np.testing.assert_allclose(a, e, rtol=0, atol=rtol * np.abs(e).max())


def assert_same_fit(ours, ref, solver, X_pred=X):
    rtol = RTOL[solver]
    assert_close(ours.coefs_, ref.coefs_, rtol)
    assert_close(ours.intercepts_, ref.intercepts_, rtol)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.loss_ == pytest.approx(ref.loss_, rel=rtol)
    for name in ("loss_curve_", "validation_scores_"):
        if getattr(ref, name, None) is not None:
            assert_close([getattr(ours, name)], [getattr(ref, name)], rtol)
    for name in ("t_", "n_layers_", "n_outputs_", "out_activation_", "n_features_in_"):
        assert getattr(ours, name) == getattr(ref, name)
    for name in ("best_loss_", "best_validation_score_"):
        if getattr(ref, name, None) is not None:
            assert getattr(ours, name) == pytest.approx(getattr(ref, name), rel=rtol)
    if is_classifier(ref):
        np.testing.assert_array_equal(ours.predict(X_pred), ref.predict(X_pred))
        np.testing.assert_allclose(ours.predict_proba(X_pred), ref.predict_proba(X_pred),
                                   rtol=0, atol=10 * rtol)
    else:
        assert_close([ours.predict(X_pred)], [ref.predict(X_pred)], 10 * rtol)


def fit_both(name, y, fit_params=None, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = getattr(sk, name)(**params).fit(X, y, **(fit_params or {}))
        ours = getattr(mts, name)(**params).fit(X, y, **(fit_params or {}))
    return ours, ref


BASE = dict(hidden_layer_sizes=(9, 7), random_state=1, max_iter=12, batch_size=16,
            learning_rate_init=0.01, alpha=0.01)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_each_solver_and_activation_on_digits(solver, activation):
    Xd, yd = datasets.load_digits()
    Xd, yd = Xd[:300].astype(np.float64) / 16, yd[:300]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        params = dict(hidden_layer_sizes=(16,), activation=activation, solver=solver,
                      random_state=0, max_iter=8, batch_size=32, alpha=1e-3,
                      learning_rate_init=0.1 if solver == "sgd" else 0.01)
        ref = sk.MLPClassifier(**params).fit(Xd, yd)
        ours = mts.MLPClassifier(**params).fit(Xd, yd)
    assert_same_fit(ours, ref, solver, Xd)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("target", ["binary", "multiclass", "multilabel"])
def test_classification_targets(solver, target):
    y = {"binary": Y_BIN, "multiclass": Y_CLASS, "multilabel": Y_MULTILABEL}[target]
    ours, ref = fit_both("MLPClassifier", y, solver=solver, **BASE)
    assert ours.out_activation_ == ("softmax" if target == "multiclass" else "logistic")
    assert_same_fit(ours, ref, solver)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("y,loss", [(Y_REG, "squared_error"), (Y_REG2, "squared_error"),
                                    (np.exp(Y_REG / 3), "poisson")],
                         ids=["single", "multi-output", "poisson"])
def test_regression(solver, y, loss):
    ours, ref = fit_both("MLPRegressor", y, solver=solver, loss=loss, **BASE)
    assert_same_fit(ours, ref, solver)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("name,y", [("MLPClassifier", Y_CLASS), ("MLPRegressor", Y_REG2)])
def test_sample_weight(solver, name, y):
    ours, ref = fit_both(name, y, fit_params={"sample_weight": WEIGHTS}, solver=solver,
                         **BASE)
    assert_same_fit(ours, ref, solver)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("name,y,weighted", [("MLPClassifier", Y_CLASS, False),
                                             ("MLPClassifier", Y_CLASS, True),
                                             ("MLPRegressor", Y_REG, False)])
def test_early_stopping(solver, name, y, weighted):
    fit_params = {"sample_weight": WEIGHTS} if weighted else None
    params = {**BASE, "max_iter": 40, "n_iter_no_change": 3}
    ours, ref = fit_both(name, y, fit_params, solver=solver, early_stopping=True,
                         validation_fraction=0.2, **params)
    assert ours.best_loss_ is None and len(ours.validation_scores_) == ours.n_iter_
    assert_same_fit(ours, ref, solver)


@pytest.mark.parametrize("schedule", ["constant", "invscaling", "adaptive"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_learning_rate_schedules_and_momentum(schedule, nesterov):
    ours, ref = fit_both("MLPClassifier", Y_CLASS, solver="sgd", learning_rate=schedule,
                         nesterovs_momentum=nesterov, tol=1e-2, n_iter_no_change=2,
                         random_state=0, max_iter=40, learning_rate_init=0.05,
                         hidden_layer_sizes=(8,))
    assert_same_fit(ours, ref, "sgd")


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_no_shuffle_no_momentum_auto_batch(solver):
    ours, ref = fit_both("MLPRegressor", Y_REG, solver=solver, shuffle=False, momentum=0.0,
                         random_state=3, max_iter=15, hidden_layer_sizes=(6,))
    assert_same_fit(ours, ref, solver)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_warm_start(solver):
    params = dict(BASE, solver=solver, warm_start=True, max_iter=5)
    ours, ref = mts.MLPClassifier(**params), sk.MLPClassifier(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for est in (ours, ref):
            est.fit(X, Y_CLASS)
            est.set_params(max_iter=7)
            est.fit(X[:90], Y_CLASS[:90])
    assert_same_fit(ours, ref, solver)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("name,y", [("MLPClassifier", Y_CLASS), ("MLPRegressor", Y_REG2)])
def test_partial_fit(solver, name, y):
    ours, ref = getattr(mts, name)(solver=solver, **BASE), getattr(sk, name)(solver=solver,
                                                                            **BASE)
    extra = {"classes": np.unique(Y_CLASS)} if name == "MLPClassifier" else {}
    for est in (ours, ref):
        for start in range(0, 120, 40):
            rows = slice(start, start + 40)
            est.partial_fit(X[rows], y[rows], sample_weight=WEIGHTS[rows], **extra)
            extra = {}
        extra = {"classes": np.unique(Y_CLASS)} if name == "MLPClassifier" else {}
    assert ours.n_iter_ == 1 and len(ours.loss_curve_) == 3
    assert_same_fit(ours, ref, solver)


def test_partial_fit_continues_after_pickling():
    ours, ref = mts.MLPClassifier(**BASE), sk.MLPClassifier(**BASE)
    for est in (ours, ref):
        est.partial_fit(X[:60], Y_CLASS[:60], classes=np.unique(Y_CLASS))
    ours = pickle.loads(pickle.dumps(ours))
    ours.partial_fit(X[60:], Y_CLASS[60:])
    ref.partial_fit(X[60:], Y_CLASS[60:])
    assert_same_fit(ours, ref, "adam")


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_float32_input_keeps_scikit_learns_dtypes(solver):
    # sgd and adam train in float32; L-BFGS works on SciPy's float64 copy of the
    # parameters, so scikit-learn's float32 fit ends with float64 coefficients
    X32 = X.astype(np.float32)
    params = dict(BASE, solver=solver)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = mts.MLPRegressor(**params).fit(X32, Y_REG)
        ref = sk.MLPRegressor(**params).fit(X32, Y_REG)
    expected = np.float64 if solver == "lbfgs" else np.float32
    assert all(c.dtype == expected for c in ours.coefs_ + ours.intercepts_)
    assert ours.predict(X32).dtype == ref.predict(X32).dtype == expected
    assert isinstance(ours.loss_, float)  # accumulated in float64, as scikit-learn does
    # float32 sums in another order for sgd and adam; the same float64 fit for lbfgs
    assert_close(ours.coefs_, ref.coefs_, RTOL["lbfgs"] if solver == "lbfgs" else 1e-4)


def test_float64_parameters_keep_a_float32_warm_start_in_float64():
    params = dict(BASE, solver="adam", warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = mts.MLPRegressor(**params).fit(X, Y_REG).fit(X.astype(np.float32), Y_REG)
        ref = sk.MLPRegressor(**params).fit(X, Y_REG).fit(X.astype(np.float32), Y_REG)
    assert all(c.dtype == np.float64 for c in ours.coefs_ + ours.intercepts_)
    assert_same_fit(ours, ref, "adam")


# ---------------------------------------------------------------------------------
# The core's scikit-learn reduction and optimizer style, against the NumPy twin and
# against finite differences.
LAYERS = [{"kind": "dense", "act": "tanh", "in": 4, "out": 5, "w_off": 0, "b_off": 35},
          {"kind": "dense", "act": "identity", "in": 5, "out": 3, "w_off": 20, "b_off": 40}]


def _nets(loss, reduction="sklearn"):
    """The C net and its NumPy twin over copies of the same parameters:
    (net, params, grads) each."""
    params = np.random.RandomState(0).uniform(-0.5, 0.5, 43)
    nets = []
    for backend in ("c", "numpy"):
        p, g = params.copy(), np.zeros_like(params)
        net = make_net(backend, np.float64, loss, LAYERS, p, g, np.zeros(86))
        net.set_reduction(reduction)
        net.reserve(16)
        nets.append((net, p, g))
    return nets


def _targets(loss, rng, n=16):
    if loss == "cross_entropy":
        return rng.randint(0, 3, n).astype(np.int64)
    if loss == "binary_cross_entropy":
        return (rng.rand(n, 3) > 0.5).astype(np.float64)
    if loss == "poisson":
        return rng.poisson(2.0, (n, 3)).astype(np.float64)
    return rng.randn(n, 3)


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy", "mse", "poisson"])
@pytest.mark.parametrize("kind,nesterov", [(SGD_KIND, True), (SGD_KIND, False),
                                           (ADAM_KIND, False)])
@pytest.mark.parametrize("reduction,style", [("sklearn", STYLE_SKLEARN),
                                             ("mean", STYLE_TORCH)])
def test_weighted_core_matches_numpy_twin(loss, kind, nesterov, reduction, style):
    rng = np.random.RandomState(1)
    Xs, ys, w = rng.randn(40, 4), _targets(loss, rng, 40), rng.rand(40)
    idx = rng.permutation(40).astype(np.int64)
    (c, pc, _), (n, pn, _) = _nets(loss, reduction)
    losses = []
    for net in (c, n):
        net.set_optimizer(kind, momentum=0.9, nesterov=nesterov, weight_decay=0.01,
                          n_decay=35, style=style)
        net.set_data(Xs, ys, w)
        losses.append([net.step_rows(idx, s, s + 16 if s < 32 else 40, 0.05, t + 1)
                       for t, s in enumerate((0, 16, 32) * 2)])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-13)
    np.testing.assert_allclose(pc, pn, rtol=0, atol=1e-13)


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy", "mse", "poisson"])
@pytest.mark.parametrize("reduction", ["sklearn", "mean"])
def test_weighted_gradient_matches_finite_differences(loss, reduction):
    rng = np.random.RandomState(2)
    Xs, ys, w = rng.randn(16, 4), _targets(loss, rng), rng.rand(16)
    (net, p, g), _ = _nets(loss, reduction)
    numeric = np.empty_like(p)
    for i in range(p.size):
        old = p[i]
        p[i] = old + 1e-6
        up = net.step(Xs, ys, 0.0, 0, False, sample_weight=w)
        p[i] = old - 1e-6
        down = net.step(Xs, ys, 0.0, 0, False, sample_weight=w)
        p[i] = old
        numeric[i] = (up - down) / 2e-6
    net.step(Xs, ys, 0.0, 0, False, sample_weight=w)
    np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-8)


def test_sklearn_reduction_values():
    """Half squared error summed over outputs, log losses capped at -log(eps)."""
    (net, p, _), _ = _nets("mse")
    p[...] = 0  # the network outputs 0
    Xs, ys = np.zeros((2, 4)), np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    assert net.step(Xs, ys, 0.0, 0, False) == pytest.approx(0.5 * 9 / 2)
    assert net.step(Xs, ys, 0.0, 0, False, sample_weight=np.array([1.0, 3.0])) == pytest.approx(
        0.5 * (5 + 3 * 4) / 4)
    (net, p, _), _ = _nets("binary_cross_entropy")
    p[...] = 0
    p[40:] = 100.0  # logits of 100: scikit-learn's clipped probabilities cap the loss
    ys = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    cap = -np.log(np.finfo(np.float64).eps)
    assert net.step(Xs, ys, 0.0, 0, False) == pytest.approx((2 * cap + cap) / 2)


def test_same_bits_on_one_and_two_threads():
    import minitrain as mt

    rng = np.random.RandomState(0)
    # batches of 400 x 100 hidden units: large enough for the core to use both threads
    Xb, yb, w = rng.rand(600, 32), rng.randint(0, 5, 600), rng.rand(600)
    before = mt.get_num_threads()
    fits = []
    try:
        for threads in (1, 2):
            mt.set_num_threads(threads)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = mts.MLPClassifier(hidden_layer_sizes=(100,), max_iter=2, batch_size=400,
                                        random_state=0).fit(Xb, yb, sample_weight=w)
            fits.append(clf.coefs_ + clf.intercepts_ + [np.array(clf.loss_curve_)])
    finally:
        mt.set_num_threads(before)
    for a, b in zip(*fits):
        np.testing.assert_array_equal(a, b)
