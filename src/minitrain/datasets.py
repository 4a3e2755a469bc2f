"""Data sets shipped with minitrain, and a stratified train/test split."""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
from numpy.typing import ArrayLike

from ._validation import check_int, check_number


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The UCI optical-recognition handwritten digits (1797 images of 8x8 pixels, 0..16).

    The data ship with minitrain (see ``minitrain/data/README.md`` for the source and
    licence, CC BY 4.0); no network is needed.

    Returns
    -------
    X : numpy.ndarray of shape (1797, 64), float64
        The pixels, integers 0..16.
    y : numpy.ndarray of shape (1797,), int64
        The digits, 0..9.

    Examples
    --------
    >>> import minitrain as mt
    >>> X, y = mt.load_digits()
    >>> X.shape, int(y.max())
    ((1797, 64), 9)
    """
    with resources.files("minitrain").joinpath("data/digits.csv.gz").open("rb") as f:
        data = np.loadtxt(gzip.open(f), delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


def train_test_split(X: ArrayLike, y: ArrayLike, test_size: float = 0.2, seed: int = 0,
                     stratify: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray]:
    """Split rows into a random train set and test set.

    Parameters
    ----------
    X : array-like of shape (n_samples, ...)
        The features.
    y : array-like of shape (n_samples, ...)
        The targets.
    test_size : float in (0, 1), default 0.2
        Fraction of the rows (of each class, with `stratify`) in the test set.
    seed : int, default 0
        Seeds the random choice of test rows.
    stratify : bool, default True
        Split each class of `y` separately, so that both sets keep its proportions
        (for labels; pass False for regression targets).

    Returns
    -------
    X_train, X_test, y_train, y_test : numpy.ndarray
        The rows of X and y in each set, in their original order.

    Examples
    --------
    >>> import minitrain as mt
    >>> X, y = mt.load_digits()
    >>> X_train, X_test, y_train, y_test = mt.train_test_split(X, y, test_size=0.2)
    >>> len(X_train), len(X_test)
    (1438, 359)
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
