"""Out-of-core training: X memory-mapped from disk is gathered batch by batch."""

import tracemalloc

import numpy as np
import pytest

import minitrain as mt
from minitrain._validation import check_X


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    rng = np.random.default_rng(0)
    n, d = 16384, 256
    X = rng.standard_normal((n, d), dtype=np.float32)
    y = (X[:, :10].sum(axis=1) > 0).astype(np.int64) + 2 * (X[:, 10] > 0)
    path = tmp_path_factory.mktemp("data") / "X.npy"
    np.save(path, X)
    return path, X, y


def model():
    return mt.Sequential([mt.Dense(32, activation="relu"), mt.Dense(4)], seed=0)


def test_memmap_fit_gives_the_in_memory_weights(on_disk):
    path, X, y = on_disk
    X_mm = np.load(path, mmap_mode="r")[:4096]
    X, y = X[:4096], y[:4096]
    assert isinstance(X_mm, np.memmap)
    kwargs = dict(epochs=2, batch_size=128, optimizer=mt.SGD(lr=0.05, momentum=0.9),
                  validation_split=0.1, verbose=0)
    a, b = model(), model()
    hist_a = a.fit(X, y, **kwargs)
    kwargs["optimizer"] = mt.SGD(lr=0.05, momentum=0.9)
    hist_b = b.fit(X_mm, y, **kwargs)
    np.testing.assert_array_equal(a.params_flat, b.params_flat)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert hist_a.history[key] == hist_b.history[key]
    np.testing.assert_array_equal(a.predict(X_mm[:100]), a.predict(X[:100]))


def test_fit_never_loads_the_memmap_whole(on_disk):
    """Peak Python-side allocation during fit stays far below the size of X: the
    batches are gathered by the C core from the mapped pages; only batches of the
    evaluated rows are copied."""
    path, X, y = on_disk
    X_mm = np.load(path, mmap_mode="r")
    assert np.shares_memory(check_X(X_mm, np.float32), X_mm)  # checked, not copied
    m = model()
    # a first fit sizes the workspaces (for the training and the inference batches)
    m.fit(X_mm[:2048], y[:2048], epochs=1, batch_size=256, validation_split=0.5, verbose=0)
    tracemalloc.start()
    try:
        m.fit(X_mm, y, epochs=1, batch_size=256, validation_split=0.2, verbose=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 4, (peak, X.nbytes)


def test_every_training_row_is_visited_once_per_epoch(on_disk):
    """The rows the loop hands to the backend: each epoch a permutation of exactly the
    training rows (the validation rows are never trained on)."""
    path, X, y = on_disk
    X_mm = np.load(path, mmap_mode="r")
    m = mt.Sequential([mt.Dense(8, activation="relu"), mt.Dense(4)], seed=0,
                      backend="numpy").build(X.shape[1])
    batches = []
    step_rows = m._net.step_rows

    def recording_step_rows(idx, start, stop, *args, **kwargs):
        batches.append(idx[start:stop].copy())
        return step_rows(idx, start, stop, *args, **kwargs)

    m._net.step_rows = recording_step_rows
    m.fit(X_mm, y, epochs=2, batch_size=1024, validation_split=0.25, metrics=None, verbose=0)
    train, val = mt.evaluation.holdout(y, 0.25, stratify=True)
    per_epoch = len(batches) // 2
    assert per_epoch == -(-len(train) // 1024)
    for epoch in (batches[:per_epoch], batches[per_epoch:]):
        rows = np.concatenate(epoch)
        np.testing.assert_array_equal(np.sort(rows), train)
    assert not np.array_equal(np.concatenate(batches[:per_epoch]),
                              np.concatenate(batches[per_epoch:]))  # reshuffled


def test_memmap_of_another_dtype_warns_that_it_is_loaded(on_disk, tmp_path):
    _, X, y = on_disk
    path = tmp_path / "X64.npy"
    np.save(path, X[:512].astype(np.float64))
    X64 = np.load(path, mmap_mode="r")
    with pytest.warns(UserWarning, match="memory-mapped as float64.*loaded whole"):
        model().fit(X64, y[:512], epochs=1, verbose=0)
