"""Gradient clipping by global norm (Optimizer(clip_norm=...))."""

import numpy as np
import pytest

import minitrain as mt
from helpers import blobs, fit_weights

BACKENDS = ["c", "numpy"]


def _model(backend, **kwargs):
    model = mt.Sequential([mt.Dense(10, activation="tanh"), mt.Dense(3)], seed=0,
                          dtype="float64", backend=backend, **kwargs)
    model.build(5)
    return model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip_norm", [0.05, 1e6])
def test_applied_gradient_has_the_clipped_norm(backend, clip_norm):
    X, y = blobs(40, 5, 3)
    model = _model(backend)
    _, grad = model.loss_and_gradient(X, y)
    norm = np.linalg.norm(grad)
    assert 0.05 < norm < 1e6
    before = model.params_flat.copy()
    model.train_step(X, y, optimizer=mt.SGD(lr=1.0, clip_norm=clip_norm))
    applied = before - model.params_flat
    np.testing.assert_allclose(applied, grad * min(1, clip_norm / norm), rtol=1e-9,
                               atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(applied), min(norm, clip_norm), rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipping_comes_before_momentum_and_weight_decay(backend):
    X, y = blobs(40, 5, 3)
    model = _model(backend)
    _, grad = model.loss_and_gradient(X, y)
    clipped = grad * (0.1 / np.linalg.norm(grad))
    weights = model.params_flat.copy()
    weights[5 * 10 + 10 * 3:] = 0  # L2 decay reaches W1 and W2, not the biases
    model.train_step(X, y, optimizer=mt.SGD(lr=0.5, momentum=0.9, weight_decay=0.01,
                                            clip_norm=0.1))
    # the momentum buffer starts at the first (clipped, decayed) gradient
    np.testing.assert_allclose(model.state_flat[:grad.size], clipped + 0.01 * weights,
                               rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("optimizer", [
    lambda: mt.SGD(lr=0.2, momentum=0.9, clip_norm=0.3),
    lambda: mt.Adam(lr=0.01, clip_norm=0.2),
    lambda: mt.AdamW(lr=0.01, weight_decay=0.1, clip_norm=0.2)])
def test_c_and_numpy_agree(optimizer):
    X, y = blobs(120, 5, 3)
    net = lambda: [mt.Dense(12, activation="relu"), mt.Dense(3)]  # noqa: E731
    c, _ = fit_weights(net, X, y, "c", optimizer=optimizer())
    ref, _ = fit_weights(net, X, y, "numpy", optimizer=optimizer())
    np.testing.assert_allclose(c, ref, rtol=1e-10, atol=1e-12)
    unclipped = optimizer()
    unclipped.clip_norm = 0.0
    plain, _ = fit_weights(net, X, y, "c", optimizer=unclipped)
    assert not np.allclose(c, plain)  # the clipping was active


def test_norm_is_thread_count_independent():
    # 40k parameters: the squared norm is summed by both threads, in fixed chunks
    X, y = blobs(256, 150, 4)
    net = lambda: [mt.Dense(256, activation="relu"), mt.Dense(4)]  # noqa: E731
    runs = [fit_weights(net, X, y, "c", "float32", threads=t, epochs=1, batch_size=128,
                        optimizer=mt.SGD(lr=0.1, clip_norm=0.01))[0] for t in (1, 2)]
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("clip_norm", [-1.0, float("nan"), float("inf"), "1"])
def test_bad_clip_norm(clip_norm):
    with pytest.raises(ValueError, match="clip_norm"):
        mt.SGD(clip_norm=clip_norm)
    with pytest.raises(ValueError, match="clip_norm"):
        mt.Adam(clip_norm=clip_norm)
