import numpy as np
import pytest

import minitrain as mt

LOSS_TARGETS = ("cross_entropy", "mse", "binary_cross_entropy")


def make_targets(loss, n, n_out, rng):
    if loss == "cross_entropy":
        return rng.integers(0, n_out, n)
    if loss == "mse":
        return rng.normal(size=(n, n_out))
    return rng.integers(0, 2, (n, n_out)).astype(np.float64)


@pytest.fixture(scope="session")
def digits():
    """The shipped digits, standardised, split 80/20 (stratified, seed 0)."""
    X, y = mt.load_digits()
    Xtr, Xte, ytr, yte = mt.train_test_split(X, y, test_size=0.2, seed=0)
    mean, std = Xtr.mean(0), Xtr.std(0)
    std[std == 0] = 1
    return (Xtr - mean) / std, (Xte - mean) / std, ytr, yte
