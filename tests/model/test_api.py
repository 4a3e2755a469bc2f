"""The public surface: construction, inference, logging, threads."""

import logging

import numpy as np
import pytest

import minitrain as mt


@pytest.fixture
def fitted():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(100, 6)), rng.integers(0, 4, 100)
    model = mt.Sequential([mt.Dense(8, activation="relu"), mt.Dense(4)], seed=0)
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    return model, X, y


def test_layer_weights_are_views_of_params_flat(fitted):
    model, _, _ = fitted
    assert model.params_flat.size == 6 * 8 + 8 * 4 + 8 + 4 == model.grads_flat.size
    for layer in model.layers:
        assert np.shares_memory(layer.W, model.params_flat)
        assert np.shares_memory(layer.b, model.params_flat)
    model.layers[0].W[0, 0] = 42.0
    assert 42.0 in model.params_flat


def test_initialisation_scales():
    model = mt.Sequential([mt.Dense(300, activation="relu"), mt.Dense(200, activation="tanh"),
                           mt.Dense(10)], seed=0).build(400)
    he, glorot = np.sqrt(6 / 400), np.sqrt(6 / (300 + 200))
    assert np.abs(model.layers[0].W).max() <= he and np.abs(model.layers[0].W).max() > 0.99 * he
    assert np.abs(model.layers[1].W).max() <= glorot and np.abs(model.layers[1].W).max() > 0.99 * glorot
    assert np.all(model.layers[0].b == 0)


def test_predict_in_batches_equals_one_batch(fitted):
    model, X, _ = fitted
    np.testing.assert_array_equal(model.predict_proba(X, batch_size=7), model.predict_proba(X))
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(model.predict(X), proba.argmax(axis=1))


def test_evaluate_matches_numpy(fitted):
    model, X, y = fitted
    result = model.evaluate(X, y)
    p = model.predict_proba(X).astype(np.float64)
    assert result["loss"] == pytest.approx(-np.log(p[np.arange(100), y]).mean(), rel=1e-5)
    assert result["accuracy"] == np.mean(p.argmax(1) == y)


def test_own_training_loop_with_train_step():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 3)), rng.integers(0, 2, 64)
    model = mt.Sequential([mt.Dense(8, activation="tanh"), mt.Dense(2)], seed=0)
    opt = mt.Adam(lr=0.01)
    losses = [model.train_step(X[i:i + 16], y[i:i + 16], optimizer=opt)
              for _ in range(20) for i in range(0, 64, 16)]
    assert losses[-1] < losses[0] and opt.iterations == 80 and model.iteration == 80


def test_verbose_prints_one_line_per_epoch(fitted, capsys):
    model, X, y = fitted
    model.fit(X, y, epochs=3, batch_size=16, verbose=1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    # epochs are numbered over the model's life: the fixture trained 2 already
    assert lines[2].startswith("Epoch 5/5 · 7 it · loss ") and lines[2].endswith(" s")


def test_verbose_zero_is_silent(fitted, caplog, capsys):
    model, X, y = fitted
    with caplog.at_level(logging.DEBUG, logger="minitrain"):
        model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert not caplog.records and capsys.readouterr() == ("", "")


def test_set_num_threads():
    n = mt.get_num_threads()
    try:
        mt.set_num_threads(1)
        assert mt.get_num_threads() == 1
    finally:
        mt.set_num_threads(n)
    with pytest.raises(ValueError, match="positive integer"):
        mt.set_num_threads(0)


def test_float64_model(fitted):
    _, X, y = fitted
    model = mt.Sequential([mt.Dense(4)], seed=0, dtype="float64")
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    assert model.params_flat.dtype == np.float64 and model.predict_proba(X).dtype == np.float64


def test_loss_aliases_and_optimizer_names():
    m = mt.Sequential([mt.Dense(2)], loss="sparse_categorical_crossentropy", optimizer="adam")
    assert m.loss == "cross_entropy" and isinstance(m.optimizer, mt.Adam)
    assert mt.Sequential([mt.Dense(2)], loss="mean_squared_error").loss == "mse"


def test_summary(fitted):
    model, _, _ = fitted
    lines = []
    assert model.summary(print_fn=lines.append) is None
    text = "\n".join(lines)
    assert "Dense(8, activation='relu')" in text and "Total params: 92" in text


def test_threads_are_visible_to_threadpoolctl():
    import threadpoolctl  # in the test extra
    n = mt.get_num_threads()
    assert any(i["user_api"] == "openmp" for i in threadpoolctl.threadpool_info())
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert mt.get_num_threads() == 1
    assert mt.get_num_threads() == n
