"""Callbacks: hooks, early stopping, convergence, time budget, loggers, progress display."""

import csv
import io
import json
import sys
import types

import numpy as np
import pytest

import minitrain as mt
from minitrain import training
from minitrain.callbacks import CallbackList


def small_problem(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    y = (X[:, 0] - X[:, 2] > 0).astype(np.int64)
    return X, y


def small_model(seed=0):
    return mt.Sequential([mt.Dense(8, activation="relu"), mt.Dense(2)], seed=seed,
                         dtype="float64")


class Curve(mt.Callback):
    """Replaces a logged value by a constructed curve, so stopping rules see it."""

    def __init__(self, key, values):
        self.key, self.values = key, values

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch - 1]


class Snapshots(mt.Callback):
    def __init__(self):
        self.params = {}

    def on_epoch_end(self, epoch, logs=None):
        self.params[epoch] = self.model.params_flat.copy()


def test_hooks_order_and_arguments():
    X, y = small_problem()
    calls = []

    class Trace(mt.Callback):
        def on_train_begin(self, logs=None):
            calls.append(("train_begin", self.params["epochs"]))

        def on_epoch_begin(self, epoch, logs=None):
            calls.append(("epoch_begin", epoch))

        def on_iteration_end(self, iteration, logs=None):
            calls.append(("iteration", iteration, logs["epoch"], logs["batch"]))

        def on_epoch_end(self, epoch, logs=None):
            calls.append(("epoch_end", epoch, sorted(logs)))

        def on_train_end(self, logs=None):
            calls.append(("train_end",))

    model = small_model()
    model.fit(X, y, epochs=2, batch_size=60, callbacks=[Trace()], verbose=0)
    keys = ["accuracy", "loss", "lr", "time"]
    assert calls == [("train_begin", 2), ("epoch_begin", 1), ("iteration", 1, 1, 1),
                     ("iteration", 2, 1, 2), ("epoch_end", 1, keys), ("epoch_begin", 2),
                     ("iteration", 3, 2, 1), ("iteration", 4, 2, 2), ("epoch_end", 2, keys),
                     ("train_end",)]


def test_iteration_hook_is_only_called_when_overridden():
    class EpochOnly(mt.Callback):
        def on_epoch_end(self, epoch, logs=None):
            pass

    class PerIteration(mt.Callback):
        def on_iteration_end(self, iteration, logs=None):
            pass

    quiet = CallbackList([EpochOnly(), mt.EarlyStopping(monitor="loss"),
                          mt.CSVLogger("unused.csv")], None, {})
    assert quiet.on_iteration_end == []  # the loop's per-iteration test is then falsy
    busy = CallbackList([EpochOnly(), PerIteration()], None, {})
    assert len(busy.on_iteration_end) == 1


def test_early_stopping_stops_at_the_right_epoch_and_restores_the_best_weights():
    X, y = small_problem()
    curve = [0.9, 0.7, 0.5, 0.6, 0.55, 0.52, 0.4, 0.3]
    snaps = Snapshots()
    stop = mt.EarlyStopping(patience=3, restore_best_weights=True)
    model = small_model()
    hist = model.fit(X, y, epochs=8, batch_size=40, validation_split=0.25, verbose=0,
                     callbacks=[Curve("val_loss", curve), snaps, stop])
    # best 0.5 at epoch 3; epochs 4, 5, 6 do not improve -> stop after epoch 6
    assert hist.epoch == [1, 2, 3, 4, 5, 6]
    assert hist.stop_reason == "early_stopping"
    assert (stop.best_epoch, stop.stopped_epoch, stop.best) == (3, 6, 0.5)
    assert model.epoch == 6
    np.testing.assert_array_equal(model.params_flat, snaps.params[3])
    assert not np.array_equal(snaps.params[6], snaps.params[3])


def test_a_reused_early_stopping_starts_afresh_in_each_fit():
    X, y = small_problem()
    stop = mt.EarlyStopping(patience=1)
    model = small_model()
    model.fit(X, y, epochs=3, batch_size=40, validation_split=0.25, verbose=0,
              callbacks=[Curve("val_loss", [0.5, 0.6, 0.7]), stop])
    assert stop.stopped_epoch == 2
    hist = model.fit(X, y, epochs=3, batch_size=40, validation_split=0.25, verbose=0,
                     callbacks=[Curve("val_loss", [None, None, 0.9, 0.8, 0.7]), stop])
    assert hist.epochs == 3 and hist.stop_reason == "completed" and stop.best == 0.7


def test_early_stopping_min_delta_and_mode_max():
    X, y = small_problem()
    model = small_model()
    hist = model.fit(X, y, epochs=5, batch_size=40, validation_split=0.25, verbose=0,
                     callbacks=[Curve("val_loss", [1.0, 0.95, 0.5, 0.4, 0.3]),
                                mt.EarlyStopping(patience=1, min_delta=0.1)])
    assert hist.epochs == 2  # 0.95 is not 0.1 below 1.0
    model = small_model()
    snaps = Snapshots()
    stop = mt.EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=True)
    hist = model.fit(X, y, epochs=6, batch_size=40, validation_split=0.25, verbose=0,
                     callbacks=[Curve("val_accuracy", [0.5, 0.8, 0.7, 0.8, 0.9, 0.9]),
                                snaps, stop])
    assert stop.mode == "max"
    assert hist.epochs == 4 and stop.best_epoch == 2
    np.testing.assert_array_equal(model.params_flat, snaps.params[2])


def test_convergence_check_follows_scikit_learn():
    """tol/n_iter_no_change: an epoch counts as no improvement when its loss is not
    below best - tol; stop once the count exceeds n_iter_no_change."""
    X, y = small_problem()
    model = small_model()
    curve = [1.0, 0.5, 0.45, 0.44, 0.43, 0.1, 0.1]
    hist = model.fit(X, y, epochs=7, batch_size=40, tol=0.1, n_iter_no_change=2,
                     callbacks=[Curve("loss", curve)], verbose=0)
    assert hist.epochs == 5 and hist.stop_reason == "converged"
    # without tol, all epochs run
    hist = small_model().fit(X, y, epochs=7, batch_size=40, callbacks=[Curve("loss", curve)],
                             verbose=0)
    assert hist.epochs == 7 and hist.stop_reason == "completed"


def test_max_time_cuts_the_run_and_records_the_partial_epoch(monkeypatch):
    X, y = small_problem()
    model = small_model()
    clock = types.SimpleNamespace(now=0.0)
    clock.perf_counter = lambda: clock.now
    monkeypatch.setattr(training, "time", clock)  # the runner's clock: time as we say

    class Slow(mt.Callback):
        def on_iteration_end(self, iteration, logs=None):
            clock.now += 10.0 if iteration == 4 else 0.1

    hist = model.fit(X, y, epochs=50, batch_size=40, max_time=5.0, callbacks=[Slow()],
                     verbose=0)
    assert hist.stop_reason == "max_time"
    assert model.iteration == 4 and hist.epochs == 2
    assert len(hist.iteration_loss) == 4  # epoch 2 was cut after its first iteration


def test_a_callback_can_stop_training():
    X, y = small_problem()

    class StopAt(mt.Callback):
        def on_iteration_end(self, iteration, logs=None):
            if iteration == 5:
                self.model.stop_training = True

    model = small_model()
    hist = model.fit(X, y, epochs=10, batch_size=40, callbacks=[StopAt()], verbose=0)
    assert hist.stop_reason == "callback" and model.iteration == 5 and hist.epochs == 2


def test_csv_and_json_loggers(tmp_path):
    X, y = small_problem()
    model = small_model()
    csv_path, json_path = tmp_path / "log.csv", tmp_path / "log.jsonl"
    hist = model.fit(X, y, epochs=3, batch_size=40, validation_split=0.25, verbose=0,
                     callbacks=[mt.CSVLogger(csv_path), mt.JSONLogger(json_path)])
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr",
                             "time"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for key in ("loss", "val_loss", "val_accuracy"):
        assert [float(r[key]) for r in rows] == hist.history[key]
    lines = [json.loads(line) for line in json_path.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert [line["val_loss"] for line in lines] == hist.history["val_loss"]
    # append=True continues a file after a resume
    model.fit(X, y, epochs=1, batch_size=40, verbose=0,
              callbacks=[mt.CSVLogger(csv_path, append=True)], metrics=None)
    with open(csv_path) as f:
        assert [r[0] for r in csv.reader(f)] == ["epoch", "1", "2", "3", "4"]


def test_verbose_0_prints_nothing(capsys, caplog):
    X, y = small_problem()
    caplog.set_level("DEBUG", logger="minitrain")
    small_model().fit(X, y, epochs=2, batch_size=40, validation_split=0.25, verbose=0,
                      callbacks=[mt.EarlyStopping(patience=0)])
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert [r for r in caplog.records if r.levelno >= 20] == []


def test_verbose_2_prints_one_line_per_epoch(capsys):
    X, y = small_problem()
    small_model().fit(X, y, epochs=2, batch_size=40, validation_split=0.25, verbose=2,
                      optimizer=mt.SGD(lr=0.05))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("Epoch 2/2 · 3 it · loss ")
    assert "val_accuracy" in lines[1] and "lr 0.05" in lines[1]


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("with_tqdm", [True, False])
def test_progress_bar(with_tqdm, monkeypatch):
    if not with_tqdm:
        monkeypatch.setitem(sys.modules, "tqdm", None)
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    else:
        pytest.importorskip("tqdm")
    X, y = small_problem()
    screen = FakeTerminal()
    small_model().fit(X, y, epochs=2, batch_size=40, verbose=0,
                      callbacks=[mt.ProgressBar(stream=screen)])
    text = screen.getvalue()
    assert "Epoch 1/2" in text and "Epoch 2/2" in text
    assert "3/3" in text and "loss " in text and "lr 0.01" in text and "it/s" in text
    # and the epoch lines, on the same stream
    assert text.count("Epoch 1/2 · 3 it · loss ") == 1 and text.count("Epoch 2/2 · 3 it") == 1


def test_verbose_1_draws_the_bar_only_on_a_terminal(monkeypatch, capsys):
    X, y = small_problem()
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", screen)
    small_model().fit(X, y, epochs=1, batch_size=40, verbose=1)
    assert "Epoch 1/1" in screen.getvalue() and len(capsys.readouterr().out.splitlines()) == 1
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    small_model().fit(X, y, epochs=1, batch_size=40, verbose=1)
    assert plain.getvalue() == "" and len(capsys.readouterr().out.splitlines()) == 1


def test_bad_callback_arguments():
    X, y = small_problem()
    model = small_model()
    with pytest.raises(ValueError, match="monitor 'val_loss' is not logged.*validation_data"):
        model.fit(X, y, callbacks=[mt.EarlyStopping()], verbose=0)
    with pytest.raises(ValueError, match="monitor 'val_acc' is not logged"):
        model.fit(X, y, validation_split=0.2, callbacks=[mt.EarlyStopping("val_acc")],
                  verbose=0)
    with pytest.raises(ValueError, match="monitor 'r2' is not logged"):
        model.fit(X, y, callbacks=[mt.ModelCheckpoint("x.npz", "r2", save_best_only=True)],
                  verbose=0)
    with pytest.raises(TypeError, match="callbacks must be minitrain Callback instances"):
        model.fit(X, y, callbacks=[print], verbose=0)
    with pytest.raises(ValueError, match=r"tol must lie in \[0"):
        model.fit(X, y, tol=-1, verbose=0)
    with pytest.raises(ValueError, match="n_iter_no_change must be >= 1"):
        model.fit(X, y, tol=1e-4, n_iter_no_change=0, verbose=0)
    with pytest.raises(ValueError, match=r"max_time must lie in \(0, inf\]"):
        model.fit(X, y, max_time=0, verbose=0)
    assert not model.built and model.history is None
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        mt.EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="patience must be >= 0"):
        mt.EarlyStopping(patience=-1)
    with pytest.raises(TypeError, match="monitor must be a log name"):
        mt.EarlyStopping(monitor=3)
