"""Validation during fit, metrics, the learning-curve plot and the CLI's use of them."""

import numpy as np
import pytest

import minitrain as mt
from minitrain import cli, evaluation

from helpers import cyclic_blobs


blobs = cyclic_blobs


def regression(n=120, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    y = np.stack([X @ [1.0, -2.0, 0.5], X[:, 0] ** 2], axis=1) + 0.1 * rng.standard_normal((n, 2))
    return X, y


def classifier(seed=0):
    return mt.Sequential([mt.Dense(16, activation="tanh"), mt.Dense(3)], seed=seed,
                         dtype="float64")


def regressor(seed=0):
    return mt.Sequential([mt.Dense(16, activation="tanh"), mt.Dense(2)], loss="mse",
                         seed=seed, dtype="float64")


def test_validation_data_is_evaluated_every_epoch():
    X, y = blobs()
    Xv, yv = blobs(60, seed=5)
    snaps = []

    class Keep(mt.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snaps.append(self.model.params_flat.copy())

    model = classifier()
    hist = model.fit(X, y, epochs=3, batch_size=25, optimizer=mt.SGD(lr=0.1),
                     validation_data=(Xv, yv), callbacks=[Keep()], verbose=0)
    assert list(hist.history) == ["loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"]
    for e in range(3):
        model.params_flat[:] = snaps[e]
        val = model.evaluate(Xv, yv)
        train = model.evaluate(X, y)
        assert hist.history["val_loss"][e] == val["loss"]
        assert hist.history["val_accuracy"][e] == val["accuracy"]
        assert hist.history["accuracy"][e] == train["accuracy"]
    # the epoch's loss is the sample-weighted mean of its iterations' losses
    per_it = hist.iteration_loss.reshape(3, 6)
    np.testing.assert_allclose(hist.history["loss"], per_it.mean(axis=1), rtol=1e-12)


def test_r2_for_regression_matches_its_definition():
    X, y = regression()
    Xv, yv = regression(50, seed=7)
    model = regressor()
    hist = model.fit(X, y, epochs=4, batch_size=20, optimizer=mt.Adam(lr=0.01),
                     validation_data=(Xv, yv), verbose=0)
    assert {"r2", "val_r2"} <= set(hist.history)
    pred = model.predict(Xv)
    ss_res = ((yv - pred) ** 2).sum(axis=0)
    ss_tot = ((yv - yv.mean(axis=0)) ** 2).sum(axis=0)
    r2 = np.mean([1 - ss_res[j] / ss_tot[j] for j in range(2)])
    assert hist.history["val_r2"][-1] == pytest.approx(r2, rel=1e-12)
    assert hist.history["val_r2"][-1] > hist.history["val_r2"][0]
    assert model.evaluate(Xv, yv, metrics=["r2", "mae"])["mae"] == pytest.approx(
        np.abs(pred - yv).mean(), rel=1e-12)
    # constant targets: 1 when predicted exactly, else 0 (scikit-learn's convention)
    assert evaluation.r2("mse", np.ones((4, 1)), np.ones((4, 1))) == 1.0
    assert evaluation.r2("mse", np.zeros((4, 1)), np.ones((4, 1))) == 0.0


def test_validation_split_holds_out_the_last_rows_of_each_class():
    X, y = blobs(151)
    train, val = evaluation.holdout(y, 0.2, stratify=True)
    for c in range(3):
        rows = np.flatnonzero(y == c)
        n_val = len(rows) - int(len(rows) * 0.8)
        np.testing.assert_array_equal(np.intersect1d(val, rows), rows[-n_val:])
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 151
    # training on the split equals training on the kept rows alone, and validation
    # equals evaluating the held-out rows
    model = classifier()
    hist = model.fit(X, y, epochs=2, batch_size=16, validation_split=0.2, verbose=0)
    ref = classifier()
    ref_hist = ref.fit(X[train], y[train], epochs=2, batch_size=16,
                       validation_data=(X[val], y[val]), verbose=0)
    np.testing.assert_array_equal(model.params_flat, ref.params_flat)
    assert hist.history == {**ref_hist.history, "time": hist.history["time"]}
    assert hist.params["n_samples"] == len(train)


def test_validation_split_for_regression_is_the_last_fraction():
    X, y = regression(100)
    train, val = evaluation.holdout(y, 0.25, stratify=False)
    np.testing.assert_array_equal(val, np.arange(75, 100))
    hist = regressor().fit(X, y, epochs=1, validation_split=0.25, verbose=0)
    assert hist.params["n_samples"] == 75 and "val_r2" in hist.history


def test_metrics_argument():
    X, y = blobs()
    hist = classifier().fit(X, y, epochs=1, metrics=None, validation_split=0.2, verbose=0)
    assert list(hist.history) == ["loss", "val_loss", "lr", "time"]
    hist = regressor().fit(*regression(), epochs=1, metrics=["mae", "r2"], verbose=0)
    assert list(hist.history) == ["loss", "mae", "r2", "lr", "time"]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = blobs()
    hist = classifier().fit(X, y, epochs=3, validation_split=0.2, verbose=0)
    path = tmp_path / "curves.png"
    fig = hist.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy"]
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    np.testing.assert_array_equal(fig.axes[0].lines[1].get_ydata(), hist.history["val_loss"])


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    X, y = blobs()
    hist = classifier().fit(X, y, epochs=1, verbose=0)
    with pytest.raises(ImportError, match=r'minitrain\[plot\]'):
        hist.plot("never.png")


def test_cli_validates_on_a_validation_split_and_plots(tmp_path, capsys):
    path = tmp_path / "cli.png"
    assert cli.main(["--epochs", "2", "--hidden", "16", "--validation-split", "0.1",
                     "--plot", str(path)]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if "iterations" in line)
    assert header.split() == ["epoch", "iterations", "loss", "accuracy", "val_loss",
                              "val_accuracy", "lr", "time", "(s)"]
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_bad_validation_arguments():
    X, y = blobs()
    model = classifier()
    bad = [
        (dict(metrics=["f1"]), ValueError, "metrics: unknown metric 'f1'"),
        (dict(metrics="precision"), ValueError, "unknown metric 'precision'"),
        (dict(metrics=["r2"]), ValueError, "'r2' does not apply to the cross_entropy loss"),
        (dict(validation_split=0.0), ValueError, r"validation_split must lie in \(0, 1\)"),
        (dict(validation_split=1.0), ValueError, r"validation_split must lie in \(0, 1\)"),
        (dict(validation_split=-0.2), ValueError, r"validation_split must lie in \(0, 1\)"),
        (dict(validation_split=True), ValueError, "validation_split must be a finite number"),
        (dict(validation_split=0.999), ValueError, "leaves an empty training or validation"),
        (dict(validation_split=0.2, validation_data=(X, y)), ValueError, "not both"),
        (dict(validation_data=X), TypeError, r"validation_data must be a tuple \(X_val, y_val\)"),
        (dict(validation_data=(X[:, :3], y)), ValueError,
         "validation_data X has 3 features, the model expects 4"),
        (dict(validation_data=(X, y[:10])), ValueError, "different lengths"),
        (dict(validation_data=(X, y + 5)), ValueError, "validation_data y holds labels outside"),
    ]
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            model.fit(X, y, epochs=1, verbose=0, **kwargs)
        assert not model.built and model.epoch == 0
    with pytest.raises(ValueError, match="metrics: 'accuracy' does not apply to the mse loss"):
        regressor().evaluate(*regression(), metrics=["accuracy"])
    # a built model is left as it was too
    model.fit(X, y, epochs=1, verbose=0)
    before = model.params_flat.copy()
    with pytest.raises(ValueError, match="validation_data X has 2 features"):
        model.fit(X, y, validation_data=(X[:, :2], y), verbose=0)
    np.testing.assert_array_equal(model.params_flat, before)
    assert model.epoch == 1
