"""Epoch / iteration / batch accounting of the training loop."""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minitrain as mt


class RecordingNet:
    """Wraps a model's backend net and records the rows of every iteration."""

    def __init__(self, net):
        self.net, self.batches = net, []

    def step_rows(self, idx, start, stop, *args, **kwargs):
        self.batches.append(idx[start:stop].copy())
        return self.net.step_rows(idx, start, stop, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.net, name)


def recorded_fit(n=1000, batch_size=64, epochs=2, model_seed=0, **fit_kw):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 4))
    y = rng.integers(0, 3, n)
    model = mt.Sequential([mt.Dense(5, activation="relu"), mt.Dense(3)], seed=model_seed).build(4)
    model._net = RecordingNet(model._net)
    hist = model.fit(X, y, epochs=epochs, batch_size=batch_size, verbose=0, **fit_kw)
    return model, hist, model._net.batches


def test_iterations_per_epoch():
    model, hist, batches = recorded_fit()
    assert hist.iterations_per_epoch == 16 == int(np.ceil(1000 / 64))
    assert len(batches) == 32 and model.iteration == 32 and model.epoch == 2
    assert [len(b) for b in batches[:16]] == [64] * 15 + [1000 - 15 * 64]
    assert len(hist.iteration_loss) == 32 and hist.epochs == 2 and hist.epoch == [1, 2]


def test_drop_last():
    model, hist, batches = recorded_fit(drop_last=True)
    assert hist.iterations_per_epoch == 15
    assert len(batches) == 30 and all(len(b) == 64 for b in batches)
    assert model.iteration == 30


def test_each_index_once_per_epoch_and_fresh_order():
    _, _, batches = recorded_fit()
    first, second = np.concatenate(batches[:16]), np.concatenate(batches[16:])
    np.testing.assert_array_equal(np.sort(first), np.arange(1000))
    np.testing.assert_array_equal(np.sort(second), np.arange(1000))
    assert not np.array_equal(first, second)


def test_no_shuffle_keeps_order():
    _, _, batches = recorded_fit(shuffle=False)
    np.testing.assert_array_equal(np.concatenate(batches[:16]), np.arange(1000))


def test_same_seed_same_orders_and_weights():
    m1, h1, b1 = recorded_fit(model_seed=5)
    m2, h2, b2 = recorded_fit(model_seed=5)
    m3, _, b3 = recorded_fit(model_seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(b1, b2))
    np.testing.assert_array_equal(m1.params_flat, m2.params_flat)
    np.testing.assert_array_equal(h1.iteration_loss, h2.iteration_loss)
    assert not np.array_equal(np.concatenate(b1), np.concatenate(b3))
    assert not np.array_equal(m1.params_flat, m3.params_flat)


def test_fit_seed_gives_the_epoch_permutations():
    # fit(seed=9): the epoch permutations come from numpy.random.default_rng(9)
    rng = np.random.default_rng(9)
    expected = [rng.permutation(1000) for _ in range(2)]
    _, _, batches = recorded_fit(model_seed=1, seed=9)
    np.testing.assert_array_equal(np.concatenate(batches[:16]), expected[0])
    np.testing.assert_array_equal(np.concatenate(batches[16:]), expected[1])


def test_epoch_loss_is_sample_weighted_mean_of_iteration_losses():
    _, hist, batches = recorded_fit(epochs=1)
    sizes = np.array([len(b) for b in batches])
    expected = np.dot(hist.iteration_loss, sizes) / sizes.sum()
    assert hist.history["loss"][0] == pytest.approx(expected, rel=1e-12)
    assert hist.history["time"][0] > 0 and hist.history["lr"] == [0.01]


def test_counters_accumulate_over_fits_and_train_step():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(100, 4)), rng.integers(0, 3, 100)
    model = mt.Sequential([mt.Dense(3)], seed=0)
    model.fit(X, y, epochs=2, batch_size=30, verbose=0)
    assert (model.epoch, model.iteration) == (2, 8)
    hist = model.fit(X, y, epochs=1, batch_size=30, verbose=0)
    assert hist.epoch == [3] and (model.epoch, model.iteration) == (3, 12)
    model.train_step(X[:10], y[:10])
    assert (model.epoch, model.iteration) == (3, 13)
    assert model.optimizer.iterations == 13


def test_zero_epochs_trains_nothing():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    model = mt.Sequential([mt.Dense(3)], seed=0).build(4)
    before = model.params_flat.copy()
    hist = model.fit(X, y, epochs=0, batch_size=8, verbose=0)
    np.testing.assert_array_equal(model.params_flat, before)
    assert hist.epochs == 0 and model.iteration == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 300), batch_size=st.integers(1, 350), drop_last=st.booleans(),
       shuffle=st.booleans())
def test_accounting_for_any_n_and_batch_size(n, batch_size, drop_last, shuffle):
    clipped = min(batch_size, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # batch_size > n is clipped with a warning
        model, hist, batches = recorded_fit(n=n, batch_size=batch_size, epochs=2,
                                            drop_last=drop_last, shuffle=shuffle)
    per_epoch = n // clipped if drop_last else -(-n // clipped)
    assert hist.iterations_per_epoch == per_epoch and len(batches) == 2 * per_epoch
    assert model.iteration == 2 * per_epoch and len(hist.iteration_loss) == 2 * per_epoch
    for epoch in (batches[:per_epoch], batches[per_epoch:]):
        rows = np.concatenate(epoch)
        assert len(np.unique(rows)) == len(rows) == (per_epoch * clipped if drop_last else n)
        assert all(len(b) == clipped for b in epoch[:-1])
