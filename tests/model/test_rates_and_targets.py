"""The learning rate is checked whenever it is set and every value a schedule returns
before it is used; targets that overflow the model's dtype and negative Poisson counts
are refused. A refused call leaves the model as it was."""

import math

import numpy as np
import pytest

import minitrain as mt
from minitrain import functional as F
from minitrain import schedules as S


class BadAfter(S.Schedule):
    """0.05 for the first `good` iterations, then `value`."""

    def __init__(self, good, value):
        self.good, self.value = good, value

    def __call__(self, t):
        return 0.05 if t < self.good else self.value


def problem(n=40, loss="cross_entropy"):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) if loss == "cross_entropy" else X[:, :1] * 0.5
    return X, y


def snapshot(model):
    snap = {k: v.copy() for k, v in model.get_weights().items()} if model.built else {}
    if model.built:
        snap["state"] = model.state_flat.copy()
    return (snap, model.epoch, model.iteration, model.optimizer.iterations,
            model.optimizer.lr, model.rng.bit_generator.state, model.built)


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after[1:] == before[1:]
    assert set(after[0]) == set(before[0])
    for k in before[0]:
        np.testing.assert_array_equal(after[0][k], before[0][k])


@pytest.mark.parametrize("value", [-5, 0, 0.0, math.nan, math.inf, -math.inf, "0.1", True, None])
@pytest.mark.parametrize("cls", [mt.SGD, mt.Adam, mt.AdamW])
def test_setting_a_bad_learning_rate_is_refused(cls, value):
    opt = cls(lr=0.02)
    with pytest.raises(ValueError, match="lr must"):
        opt.lr = value
    assert opt.lr == 0.02
    opt.lr = 0.5
    assert opt.lr == 0.5 and type(opt.lr) is float


def test_reduce_lr_on_plateau_still_sets_the_rate():
    X, y = problem()
    opt = mt.SGD(lr=0.1)
    cb = mt.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    mt.Sequential([mt.Dense(2)], seed=0).fit(X, y, epochs=3, optimizer=opt, callbacks=[cb],
                                             verbose=0)
    assert opt.lr == pytest.approx(0.1 * 0.5 ** 2)  # the first epoch sets the best


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.1, -1e-300, "fast", None,
                                   True])
def test_a_schedule_value_that_is_not_a_positive_rate_stops_train_step(value):
    X, y = problem()
    model = mt.Sequential([mt.Dense(2)], seed=0, optimizer=mt.SGD(lr=BadAfter(2, value)))
    model.train_step(X, y)
    model.train_step(X, y)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"BadAfter\(.*\) returned .* at iteration 2"):
        model.train_step(X, y)
    assert_unchanged(model, before)
    assert model.optimizer.lr == 0.05


def test_a_schedule_may_decay_to_zero():
    X, y = problem()
    model = mt.Sequential([mt.Dense(2)], seed=0)
    opt = mt.SGD(lr=S.CosineDecay(0.1, decay_steps=3))
    model.fit(X, y, epochs=2, batch_size=10, optimizer=opt, verbose=0)
    assert opt.lr == 0.0 and model.iteration == 8
    before = model.params_flat.copy()
    model.train_step(X, y)  # a zero rate: no update
    np.testing.assert_array_equal(model.params_flat, before)


def test_a_schedule_bad_at_its_first_value_is_refused_before_fit_or_train_step_start():
    X, y = problem()
    with pytest.raises(ValueError, match="returned nan at iteration 0"):
        mt.SGD(lr=BadAfter(0, math.nan))
    opt = mt.SGD(lr=BadAfter(1, math.nan))
    opt.iterations = 1  # as an optimizer that has run once
    for call in ("fit", "train_step"):
        model = mt.Sequential([mt.Dense(2)], seed=0)
        before = snapshot(model)
        with pytest.raises(ValueError, match="returned nan at iteration 1"):
            if call == "fit":
                model.fit(X, y, epochs=2, batch_size=10, optimizer=opt, verbose=0)
            else:
                model.train_step(X, y, optimizer=opt)
        assert_unchanged(model, before)
        assert not model.built


def test_a_schedule_going_bad_mid_fit_stops_it_before_the_update():
    X, y = problem()
    model = mt.Sequential([mt.Dense(2)], seed=0)
    with pytest.raises(ValueError, match="returned -1.0 at iteration 5"):
        model.fit(X, y, epochs=3, batch_size=10, optimizer=mt.SGD(lr=BadAfter(5, -1.0)),
                  verbose=0)
    assert model.iteration == 5 and model.optimizer.iterations == 5
    assert np.isfinite(model.params_flat).all()
    # the weights of the same five updates in a run stopped there
    ref = mt.Sequential([mt.Dense(2)], seed=0)
    ref.fit(X, y, epochs=3, batch_size=10, optimizer=mt.SGD(lr=0.05), callbacks=[StopAt(5)],
            verbose=0)
    assert ref.iteration == 5
    np.testing.assert_array_equal(model.params_flat, ref.params_flat)
    np.testing.assert_array_equal(model.state_flat, ref.state_flat)
    assert model.rng.bit_generator.state == ref.rng.bit_generator.state


class StopAt(mt.callbacks.Callback):
    def __init__(self, iteration):
        self.iteration = iteration

    def on_iteration_end(self, iteration, logs=None):
        if iteration == self.iteration:
            self.stop("test")


@pytest.mark.parametrize("loss", ["mse", "poisson"])
def test_targets_overflowing_a_float32_model_are_refused(loss):
    X, _ = problem()
    y = np.full((40, 1), 1e39)
    model = mt.Sequential([mt.Dense(1)], loss=loss, seed=0)
    with pytest.raises(ValueError, match="y holds values too large for the model's dtype "
                                         "float32"):
        model.fit(X, y, verbose=0)
    assert not model.built
    model.fit(X, np.ones((40, 1)), verbose=0)
    before = snapshot(model)
    for call in (lambda: model.train_step(X, y), lambda: model.evaluate(X, y),
                 lambda: model.loss_and_gradient(X, y)):
        with pytest.raises(ValueError, match="y holds values too large"):
            call()
        assert_unchanged(model, before)
    with pytest.raises(ValueError, match="validation_data y holds values too large"):
        model.fit(X, np.ones((40, 1)), validation_data=(X, y), verbose=0)
    assert_unchanged(model, before)
    # a float64 model takes them
    wide = mt.Sequential([mt.Dense(1)], loss=loss, seed=0, dtype="float64")
    wide.fit(X, np.ones((40, 1)), verbose=0)
    assert np.isfinite(wide.evaluate(X, y)["loss"])


def test_poisson_fits_with_the_default_metrics():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = rng.poisson(np.exp(0.5 * X[:, 0] - 0.2)).astype(np.float64)
    model = mt.Sequential([mt.Dense(1)], loss="poisson", seed=0, dtype="float64")
    hist = model.fit(X, y, epochs=30, batch_size=20, optimizer=mt.SGD(lr=0.05), verbose=0)
    assert set(hist.history) == {"loss", "lr", "time"}
    assert hist.history["loss"][-1] < 0.8 * hist.history["loss"][0]
    result = model.evaluate(X, y)
    assert set(result) == {"loss"}
    out = X @ model.layers[0].W + model.layers[0].b
    assert result["loss"] == pytest.approx(F.loss_value("poisson", out, y[:, None]), rel=1e-12)
    assert model.layers[0].W[0, 0] == pytest.approx(0.5, abs=0.15)
    hist = model.fit(X, y, epochs=1, validation_split=0.2, verbose=0)
    assert set(hist.history) == {"loss", "val_loss", "lr", "time"}


@pytest.mark.parametrize("y, message", [
    (-1.0, "y must hold counts >= 0 for the Poisson loss"),
    (-1, "y must hold counts >= 0 for the Poisson loss"),
    (math.nan, "y contains NaN or infinity"), (math.inf, "y contains NaN or infinity")])
def test_poisson_refuses_negative_or_non_finite_counts(y, message):
    X, _ = problem()
    targets = np.ones(40, dtype=np.asarray(y).dtype)
    targets[7] = y
    model = mt.Sequential([mt.Dense(1)], loss="poisson", seed=0)
    with pytest.raises(ValueError, match=message):
        model.fit(X, targets, verbose=0)
    assert not model.built
    model.fit(X, np.ones(40), verbose=0)
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        model.train_step(X, targets)
    assert_unchanged(model, before)


def test_inputs_overflowing_the_model_are_refused_naming_X():
    X, y = problem()
    model = mt.Sequential([mt.Dense(2)], seed=0)
    model.fit(X, y, verbose=0)
    before = snapshot(model)
    wide = X.astype(np.float64)
    wide[3, 1] = 1e39
    for call in (lambda: model.train_step(wide, y), lambda: model.predict(wide),
                 lambda: model.fit(wide, y, verbose=0)):
        with pytest.raises(ValueError, match="X holds values too large for the model's dtype "
                                             "float32"):
            call()
        assert_unchanged(model, before)
    # finite float32 inputs whose outputs overflow: refused, not NaN or arbitrary labels
    with pytest.raises(ValueError, match="X: the model's outputs overflow float32"):
        model.predict(np.full((2, 4), 3e38, np.float32) * np.sign(model.layers[0].W[:, 0]))
    with pytest.raises(ValueError, match="X: the model's outputs overflow"):
        model.predict_proba(np.full((2, 4), 3e38, np.float32) * np.sign(model.layers[0].W[:, 0]))
    assert_unchanged(model, before)
