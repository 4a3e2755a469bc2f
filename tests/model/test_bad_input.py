"""Bad input: a clear ValueError/TypeError naming the argument, and the model unchanged."""

import numpy as np
import pytest

import minitrain as mt


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 5)), rng.integers(0, 3, 40)


@pytest.fixture
def model(data):
    m = mt.Sequential([mt.Dense(4, activation="relu"), mt.Dense(3)], seed=0)
    m.fit(*data, epochs=1, batch_size=8, verbose=0)
    return m


def snapshot(m):
    return (m.params_flat.copy(), m.state_flat.copy(), m.epoch, m.iteration,
            m.optimizer.iterations, m.rng.bit_generator.state)


def assert_unchanged(m, before):
    after = snapshot(m)
    for a, b in zip(before[:2], after[:2]):
        np.testing.assert_array_equal(a, b)
    assert before[2:] == after[2:]


BAD_FIT = [
    (lambda X, y: (X[:, 0], y), {}, ValueError, "X must be 2-D"),
    (lambda X, y: (X[None], y), {}, ValueError, "X must be 2-D"),
    (lambda X, y: (X[:0], y[:0]), {}, ValueError, "X is empty"),
    (lambda X, y: (X, y[:-1]), {}, ValueError, "X and y have different lengths"),
    (lambda X, y: (np.where(np.arange(40)[:, None] == 3, np.nan, X), y), {}, ValueError,
     "X contains NaN"),
    (lambda X, y: (np.where(np.arange(40)[:, None] == 3, np.inf, X), y), {}, ValueError,
     "X contains NaN or infinity"),
    (lambda X, y: (X, y + 0.5), {}, ValueError, "y must hold integer class labels"),
    (lambda X, y: (X, np.where(np.arange(40) == 2, np.nan, y)), {}, ValueError, "y contains NaN"),
    (lambda X, y: (X, y + 3), {}, ValueError, "labels outside"),
    (lambda X, y: (X, y.astype(str)), {}, TypeError, "y must hold numbers"),
    (lambda X, y: (X.astype(str), y), {}, TypeError, "X must hold numbers"),
    (lambda X, y: (X[:, :4], y), {}, ValueError, "X has 4 features, the model expects 5"),
    (lambda X, y: (X, y), {"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    (lambda X, y: (X, y), {"batch_size": 2.5}, TypeError, "batch_size must be an integer"),
    (lambda X, y: (X, y), {"batch_size": True}, TypeError, "batch_size must be an integer"),
    (lambda X, y: (X, y), {"epochs": -1}, ValueError, "epochs must be >= 0"),
    (lambda X, y: (X, y), {"epochs": "3"}, TypeError, "epochs must be an integer"),
    (lambda X, y: (X, y), {"optimizer": "rmsprop"}, ValueError, "optimizer must be"),
    (lambda X, y: (X, y), {"seed": -2}, ValueError, "seed must be >= 0"),
]


@pytest.mark.parametrize("make, kwargs, error, message", BAD_FIT)
def test_fit_rejects_and_leaves_model_unchanged(model, data, make, kwargs, error, message):
    before = snapshot(model)
    with pytest.raises(error, match=message):
        model.fit(*make(*data), **{"epochs": 1, "verbose": 0, **kwargs})
    assert_unchanged(model, before)


@pytest.mark.parametrize("make, kwargs, error, message", BAD_FIT[:12])
def test_train_step_rejects_and_leaves_model_unchanged(model, data, make, kwargs, error, message):
    before = snapshot(model)
    with pytest.raises(error, match=message):
        model.train_step(*make(*data))
    assert_unchanged(model, before)


def test_unbuilt_model_is_not_built_by_a_rejected_fit(data):
    m = mt.Sequential([mt.Dense(3)], seed=0)
    state = m.rng.bit_generator.state
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(*data, batch_size=0)
    assert not m.built and m.rng.bit_generator.state == state


def test_regression_target_with_wrong_number_of_columns(data):
    X, _ = data
    m = mt.Sequential([mt.Dense(2)], loss="mse", seed=0)
    with pytest.raises(ValueError, match=r"y must have shape \(40, 2\)"):
        m.fit(X, np.zeros((40, 3)), verbose=0)
    with pytest.raises(ValueError, match="y must lie in"):
        mt.Sequential([mt.Dense(1)], loss="bce").fit(X, np.full(40, 2.0), verbose=0)


@pytest.mark.parametrize("lr", [0, -0.1, np.nan, np.inf, "0.1"])
@pytest.mark.parametrize("cls", [mt.SGD, mt.Adam, mt.AdamW])
def test_bad_learning_rate(cls, lr):
    with pytest.raises(ValueError, match="lr must"):
        cls(lr=lr)


@pytest.mark.parametrize("kwargs, message", [
    ({"momentum": 1.0}, "momentum must lie in"), ({"momentum": -0.1}, "momentum"),
    ({"nesterov": True}, "nesterov=True needs a momentum"), ({"weight_decay": -1}, "weight_decay"),
    ({"clip_norm": np.nan}, "clip_norm")])
def test_bad_sgd_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mt.SGD(**kwargs)


def test_bad_model_definitions():
    with pytest.raises(ValueError, match="units must be >= 1"):
        mt.Dense(0)
    with pytest.raises(ValueError, match="activation must be one of"):
        mt.Dense(3, activation="swish")
    with pytest.raises(ValueError, match="loss must be one of"):
        mt.Sequential([mt.Dense(3)], loss="hinge")
    with pytest.raises(TypeError, match="dtype must be one of .*'mixed_bfloat16'.*got 'int32'"):
        mt.Sequential([mt.Dense(3)], dtype="int32")
    with pytest.raises(TypeError, match="layers must be minitrain layers"):
        mt.Sequential([lambda x: x])
    with pytest.raises(ValueError, match="backend must be one of"):
        mt.Sequential([mt.Dense(3)], backend="cuda").build(2)
    with pytest.raises(ValueError, match="must output logits"):
        mt.Sequential([mt.Dense(3, activation="relu")]).build(2)
    with pytest.raises(ValueError, match="softmax is only supported"):
        mt.Sequential([mt.Dense(3, activation="softmax"), mt.Dense(2)]).build(2)


def test_batch_size_larger_than_n_is_clipped_with_a_warning(data):
    X, y = data
    m = mt.Sequential([mt.Dense(3)], seed=0)
    with pytest.warns(UserWarning, match="batch_size=100 is larger than the 40 samples"):
        hist = m.fit(X, y, batch_size=100, epochs=2, verbose=0)
    assert hist.iterations_per_epoch == 1 and hist.params["batch_size"] == 40


def test_non_contiguous_and_other_dtypes_are_converted(data):
    X, y = data
    wide = np.repeat(X, 2, axis=1)[:, ::2]
    assert not wide.flags.c_contiguous
    fits = []
    for Xc, yc in [(X, y), (wide, y.astype(np.int32)), (X.astype(np.float32), y.astype(float)),
                   (X.tolist(), y.tolist())]:
        m = mt.Sequential([mt.Dense(3)], seed=0)
        m.fit(Xc, yc, epochs=1, batch_size=8, verbose=0)
        fits.append(m.params_flat)
    for p in fits[1:]:
        np.testing.assert_array_equal(p, fits[0])


def test_divergence_stops_with_epoch_and_iteration_and_keeps_finite_weights():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3)) * 1e3
    y = rng.normal(size=(64, 1)) * 1e3
    m = mt.Sequential([mt.Dense(8, activation="relu"), mt.Dense(1)], loss="mse", seed=0)
    with pytest.raises(FloatingPointError, match=r"diverged at epoch \d+, iteration \d+") as err:
        m.fit(X, y, epochs=50, batch_size=16, optimizer=mt.SGD(lr=10.0), verbose=0)
    assert np.all(np.isfinite(m.params_flat))
    assert m.optimizer.iterations == m.iteration
    assert f"iteration {m.iteration + 1} overall" in str(err.value)


def test_predict_before_fit(data):
    with pytest.raises(ValueError, match="not trained yet"):
        mt.Sequential([mt.Dense(3)]).predict(data[0])
    regressor = mt.Sequential([mt.Dense(1)], loss="mse")
    regressor.fit(data[0], data[1].astype(float), verbose=0)
    with pytest.raises(AttributeError, match="classification"):
        regressor.predict_proba(data[0])
