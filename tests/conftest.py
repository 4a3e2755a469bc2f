"""Fixtures shared by every test; shared helper functions live in helpers.py."""

import pytest

import minitrain as mt

@pytest.fixture(scope="session")
def digits():
    """The shipped digits, standardised, split 80/20 (stratified, seed 0)."""
    X, y = mt.load_digits()
    Xtr, Xte, ytr, yte = mt.train_test_split(X, y, test_size=0.2, seed=0)
    mean, std = Xtr.mean(0), Xtr.std(0)
    std[std == 0] = 1
    return (Xtr - mean) / std, (Xte - mean) / std, ytr, yte
