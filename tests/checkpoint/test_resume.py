"""A resume continues the saved run exactly, or is refused with every conflict listed."""

import numpy as np
import pytest

import minitrain as mt
from minitrain import training


def data(n=232, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def model():
    return mt.Sequential([mt.Dense(8, activation="relu"), mt.Dense(2)], seed=0)


def test_resume_refuses_other_batching_and_optimizer_listing_each(tmp_path):
    X, y = data()
    path = tmp_path / "run.npz"
    first = model()
    first.fit(X, y, epochs=2, batch_size=8, optimizer=mt.SGD(lr=0.05, momentum=0.9), verbose=0)
    first.save(path)
    fresh = model()
    with pytest.raises(ValueError) as err:
        fresh.fit(X, y, epochs=4, batch_size=16, shuffle=False, verbose=0, resume_from=path,
                  optimizer=mt.SGD(lr=0.01, momentum=0.9))
    message = str(err.value)
    assert "lr 0.05 in the checkpoint, 0.01 here" in message
    assert "batch_size 8 in the checkpoint, 16 here" in message
    assert "shuffle True in the checkpoint, False here" in message
    assert "momentum" not in message  # equal settings are not listed
    assert not fresh.built and fresh.epoch == 0  # refused before anything changed
    with pytest.raises(ValueError, match="drop_last False in the checkpoint, True here"):
        fresh.fit(X, y, epochs=4, batch_size=8, drop_last=True, resume_from=path, verbose=0)
    with pytest.raises(ValueError, match=r"optimizer SGD\(.*\) in the checkpoint, Adam\("):
        fresh.fit(X, y, epochs=4, batch_size=8, optimizer="adam", resume_from=path, verbose=0)
    with pytest.raises(ValueError, match="n_samples 232 in the checkpoint, 200 here"):
        fresh.fit(X[:200], y[:200], epochs=4, batch_size=8, resume_from=path, verbose=0)


def test_resume_with_the_saved_settings_is_bit_identical(tmp_path):
    X, y = data()
    straight = model()
    hist = straight.fit(X, y, epochs=4, batch_size=8, verbose=0,
                        optimizer=mt.SGD(lr=0.05, momentum=0.9))
    path = tmp_path / "run.npz"
    half = model()
    half.fit(X, y, epochs=2, batch_size=8, optimizer=mt.SGD(lr=0.05, momentum=0.9), verbose=0)
    half.save(path)
    resumed = model()
    again = resumed.fit(X, y, epochs=4, batch_size=8, verbose=0, resume_from=path)
    np.testing.assert_array_equal(resumed.params_flat, straight.params_flat)
    assert again.iterations_per_epoch == hist.iterations_per_epoch == 29
    assert again.params == hist.params


def test_resume_conflicts_is_empty_for_the_saved_run(tmp_path):
    X, y = data()
    m = model()
    m.fit(X, y, epochs=1, batch_size=8, verbose=0)
    m.save(tmp_path / "m.npz")
    saved = mt.load(tmp_path / "m.npz")
    assert training.resume_conflicts(saved, model(), None, batch_size=8, shuffle=True,
                                       drop_last=False, n_samples=232) == []
    assert training.resume_conflicts(saved, model(), mt.SGD(lr=0.01), batch_size=9) == [
        ("batch_size", 8, 9)]
