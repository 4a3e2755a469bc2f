"""Data sets shipped with minitrain, and a stratified train/test split."""

import gzip
from importlib import resources

import numpy as np

from ._validation import check_int, check_number


def load_digits():
    """The UCI optical-recognition handwritten digits (1797 images of 8x8 pixels, 0..16).

    Returns ``(X, y)``: X float64 (1797, 64), y int64 labels 0..9. The data ship with
    minitrain (see ``minitrain/data/README.md`` for the source and licence); no network.
    """
    with resources.files("minitrain").joinpath("data/digits.csv.gz").open("rb") as f:
        data = np.loadtxt(gzip.open(f), delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


def train_test_split(X, y, test_size=0.2, seed=0, stratify=True):
    """Split rows into train and test sets; per class when `stratify` (for labels).

    Returns ``X_train, X_test, y_train, y_test``.
    """
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X and y have different lengths: {len(X)} and {len(y)}")
    check_number("test_size", test_size, 0, low_open=True, high=1, high_open=True)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    test = np.concatenate([g[rng.permutation(len(g))][:int(round(test_size * len(g)))]
                           for g in groups])
    mask = np.zeros(len(y), dtype=bool)
    mask[test] = True
    if mask.all() or not mask.any():
        raise ValueError(f"test_size={test_size} leaves an empty train or test set")
    return X[~mask], X[mask], y[~mask], y[mask]
