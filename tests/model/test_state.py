"""get_state / set_state, pickling and deep copies: a copy predicts the same and
trains on bit-identically, through the model's arrays alone."""

import copy
import multiprocessing
import pickle

import numpy as np
import pytest

import minitrain as mt


@pytest.fixture(scope="module")
def data():
    X, y = mt.load_digits()
    return (X[:400] / 16.0), y[:400]


def _model(backend, seed=0):
    return mt.Sequential([mt.Dense(16), mt.BatchNorm(), mt.Activation("relu"),
                          mt.Dropout(0.2), mt.Dense(10)], seed=seed, backend=backend,
                         dtype="float64")


def _same(a, b):
    assert a.epoch == b.epoch and a.iteration == b.iteration
    assert a.optimizer.iterations == b.optimizer.iterations
    for name in ("params_flat", "state_flat", "buffers_flat"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


COPIES = {"pickle": lambda m: pickle.loads(pickle.dumps(m)),
          "deepcopy": copy.deepcopy,
          "set_state": lambda m: _via_set_state(m)}


def _via_set_state(model):
    other = mt.Sequential([mt.Dense(3)], loss="mse", seed=5)  # another model altogether
    other.set_state(model.get_state())
    return other


@pytest.mark.parametrize("how", sorted(COPIES))
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_copy_continues_training_bit_identically(data, backend, how):
    X, y = data
    model = _model(backend)
    model.fit(X, y, epochs=2, batch_size=32, verbose=0,
              optimizer=mt.Adam(lr=0.01, weight_decay=1e-3))
    twin = COPIES[how](model)
    assert twin is not model and twin._net is not model._net
    assert twin.params_flat is not model.params_flat
    _same(model, twin)
    assert np.array_equal(model.predict_proba(X), twin.predict_proba(X))
    assert twin.history.history == model.history.history
    h1 = model.fit(X, y, epochs=2, batch_size=32, verbose=0)
    h2 = twin.fit(X, y, epochs=2, batch_size=32, verbose=0)
    _same(model, twin)
    assert h1.history["loss"] == h2.history["loss"]
    assert np.array_equal(model.predict(X), twin.predict(X))


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_unbuilt_model_round_trip(data, backend):
    X, y = data
    model = mt.Sequential([mt.Dense(8, activation="tanh"), mt.Dropout(0.1), mt.Dense(10)],
                          backend=backend)  # seed None: the generator's state is what counts
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert not twin.built and twin.n_features_in_ is None
        twin.fit(X, y, epochs=1, verbose=0)
    model.fit(X, y, epochs=1, verbose=0)
    _same(model, twin)


def test_state_is_plain_arrays_and_json_values(data):
    import json
    X, y = data
    model = _model("c")
    model.fit(X, y, epochs=1, verbose=0, optimizer=mt.SGD(lr=0.05, momentum=0.9))
    state = model.get_state()
    arrays = state.pop("arrays")
    assert set(arrays) == {"params_flat", "grads_flat", "state_flat", "buffers_flat"}
    assert all(type(a) is np.ndarray for a in arrays.values())
    assert not np.shares_memory(arrays["params_flat"], model.params_flat)
    history = state.pop("history")
    assert isinstance(history.pop("iteration_loss"), np.ndarray)
    json.dumps([state, history])  # everything else is JSON
    assert state["optimizer"]["class"] == "SGD" and state["optimizer"]["iterations"] == 13


def test_set_state_checks_before_changing(data):
    X, y = data
    model = _model("c")
    model.fit(X, y, epochs=1, verbose=0)
    before = model.params_flat.copy()
    state = model.get_state()
    state["arrays"]["params_flat"] = state["arrays"]["params_flat"][:-1]
    with pytest.raises(ValueError, match="params_flat"):
        model.set_state(state)
    with pytest.raises(ValueError, match="state"):
        model.set_state({"config": {}})
    with pytest.raises(TypeError, match="state must be a dict"):
        model.set_state([1, 2])
    assert np.array_equal(model.params_flat, before) and model.epoch == 1


def test_checkpoint_is_the_state(tmp_path, data):
    X, y = data
    model = _model("c")
    model.fit(X, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = mt.load(tmp_path / "m.npz")
    _same(model, loaded)
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))


def _continue(blob, X, y):  # in another process
    model = pickle.loads(blob)
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    return pickle.dumps(model)


def test_multiprocessing_and_joblib_round_trip(tmp_path, data):
    X, y = data
    model = _model("c")
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    blob = pickle.dumps(model)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        there = pickle.loads(pool.apply(_continue, (blob, X, y)))
    joblib = pytest.importorskip("joblib")
    joblib.dump(model, tmp_path / "model.joblib")
    from_file = joblib.load(tmp_path / "model.joblib")
    there_too, _ = joblib.Parallel(n_jobs=2)(joblib.delayed(_continue)(blob, X, y)
                                         for _ in range(2))
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    from_file.fit(X, y, epochs=1, batch_size=32, verbose=0)
    _same(model, there)
    _same(model, pickle.loads(there_too))
    _same(model, from_file)


class _KeepBest(mt.Callback):
    """What experiment trackers do: a deep copy of the model at every epoch's end."""

    def __init__(self):
        self.copies = []

    def on_epoch_end(self, epoch, logs=None):
        self.copies.append(copy.deepcopy(self.model))


def test_copies_taken_during_fit_change_nothing(data):
    X, y = data
    keep = _KeepBest()
    model = _model("c")
    model.fit(X, y, epochs=3, batch_size=32, verbose=0, validation_split=0.25,
              callbacks=[keep, mt.EarlyStopping(patience=5)])
    plain = _model("c")
    plain.fit(X, y, epochs=3, batch_size=32, verbose=0, validation_split=0.25,
              callbacks=[mt.EarlyStopping(patience=5)])
    _same(model, plain)
    assert [c.epoch for c in keep.copies] == [1, 2, 3]
    _same(keep.copies[-1], model)
    # the copy carries the callbacks' state of its epoch
    assert keep.copies[0].get_state()["callbacks"] != {}
