"""The core's one-pass helpers and outputs: the finite-value and label checks run on every
batch, the L2 term of scikit-learn's loss read by the update pass, and the gradient kind's
penalised gradient (L-BFGS'), against NumPy."""

import numpy as np
import pytest

import minitrain as mt
from minitrain import _core
from minitrain.backends import make_net
from minitrain.optimizers import ADAM_KIND, GRADIENT_KIND, SGD_KIND, STYLE_SKLEARN, STYLE_TORCH


@pytest.fixture
def threads():
    default = mt.get_num_threads()
    yield mt.set_num_threads
    mt.set_num_threads(default)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 7, 16, 33, 1000])
def test_all_finite_matches_numpy(dtype, size):
    info = np.finfo(dtype)
    specials = [np.nan, np.inf, -np.inf, info.max, -info.max, info.tiny, info.tiny / 4, 0.0]
    for value in specials:
        for pos in {0, size // 2, size - 1}:
            a = np.linspace(-3, 3, size).astype(dtype)
            a[pos] = value
            assert _core.all_finite(a) == bool(np.isfinite(a).all()), (value, pos)
    assert _core.all_finite(np.ones((size, 3), dtype))
    assert _core.all_finite(np.zeros(0, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_all_finite_on_a_training_set(threads, dtype, n_threads):
    # from 2**21 elements the team shares the pass in chunks of 2**18
    threads(n_threads)
    size = (1 << 21) + 5
    a = np.zeros(size, dtype)
    assert _core.all_finite(a)
    assert _core.checked_as_is(a.reshape(-1, 1), np.dtype(dtype), -1, 1)
    for pos in (0, (1 << 18) - 1, 1 << 18, size // 2, size - 1):
        for value in (np.nan, np.inf, -np.inf):
            a[pos] = value
            assert not _core.all_finite(a), (pos, value)
            assert not _core.checked_as_is(a.reshape(-1, 1), np.dtype(dtype), -1, 1)
            a[pos] = 0


def test_all_finite_rejects_other_arrays():
    with pytest.raises(TypeError):
        _core.all_finite(np.ones(4, np.int64))
    with pytest.raises(TypeError):
        _core.all_finite(np.ones((4, 4))[:, ::2])


def test_labels_below():
    y = np.array([0, 3, 9, 2], dtype=np.int64)
    assert _core.labels_below(y, 10)
    assert not _core.labels_below(y, 9)
    assert not _core.labels_below(np.array([1, -1], dtype=np.int64), 10)
    with pytest.raises(TypeError):
        _core.labels_below(y.astype(np.int32), 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_checked_as_is(dtype):
    dt = np.dtype(dtype)
    X = np.ones((5, 3), dt)
    assert _core.checked_as_is(X, dt, -1, 0)
    assert _core.checked_as_is(X, dt, 5, 3)
    bad = X.copy()
    bad[4, 2] = np.nan
    refused = [(bad, dt, -1, 0), (X, dt, 4, 0), (X, dt, -1, 2), (X[:, :2], dt, -1, 0),
               (X.astype(np.float32 if dtype == np.float64 else np.float64), dt, -1, 0),
               (X.view(np.memmap), dt, -1, 0), (X.tolist(), dt, -1, 0), (X, dtype, -1, 0),
               (X[:0], dt, -1, 0), (X.ravel(), dt, -1, 0), (X, dt, -1, -1)]
    for args in refused:
        assert not _core.checked_as_is(*args)
    y = np.array([0, 2, 1], np.int64)
    int64 = np.dtype(np.int64)
    assert _core.checked_as_is(y, int64, 3, -1, 3)
    for args in [(y, int64, 3, -1, 2), (y, int64, 3, -1, 0), (y, int64, 2, -1, 3),
                 (y - 1, int64, 3, -1, 3), (y.astype(np.int32), int64, 3, -1, 3),
                 (y[:, None], int64, 3, -1, 3)]:
        assert not _core.checked_as_is(*args)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_checks_return_ready_batches_unchanged(dtype):
    # the fast path returns the caller's arrays; anything else still goes through the
    # full checks, which convert or refuse it as before
    from minitrain._validation import check_targets, check_X
    dt = np.dtype(dtype)
    X, labels, targets = np.ones((4, 3), dt), np.array([0, 1, 2, 1]), np.zeros((4, 2), dt)
    assert check_X(X, dt, 3) is X
    assert check_targets(labels, "cross_entropy", 3, 4, dt) is labels
    assert check_targets(targets, "mse", 2, 4, dt) is targets
    assert check_X(X.tolist(), dt, 3).dtype == dt
    with pytest.raises(ValueError, match="X has 3 features, the model expects 2"):
        check_X(X, dt, 2)
    with pytest.raises(ValueError, match="labels outside"):
        check_targets(labels, "cross_entropy", 2, 4, dt)
    with pytest.raises(ValueError, match="different lengths"):
        check_targets(labels, "cross_entropy", 3, 5, dt)
    with pytest.raises(ValueError, match="y must have shape"):
        check_targets(targets, "mse", 3, 4, dt)
    with pytest.raises(ValueError, match="binary cross-entropy"):
        check_targets(targets - 1, "binary_cross_entropy", 2, 4, dt)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_train_step_still_rejects_bad_batches(dtype):
    model = mt.Sequential([mt.Dense(4, activation="relu"), mt.Dense(3)], seed=0, dtype=dtype)
    X, y = np.ones((5, 2), dtype), np.array([0, 1, 2, 0, 1])
    model.train_step(X, y)
    before = model.params_flat.copy()
    bad = X.copy()
    bad[4, 1] = np.inf
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        model.train_step(bad, y)
    with pytest.raises(ValueError, match="labels outside"):
        model.train_step(X, np.array([0, 1, 2, 3, 1]))
    np.testing.assert_array_equal(model.params_flat, before)


# Two dense layers with n_params above the core's thresholds for a second thread and its
# update chunk size, so the threaded, multi-chunk update pass is the one tested.
N_IN, N_HID, N_OUT = 60, 700, 4
LAYERS = [{"kind": "dense", "act": "tanh", "in": N_IN, "out": N_HID, "w_off": 0,
           "b_off": N_IN * N_HID + N_HID * N_OUT},
          {"kind": "dense", "act": "identity", "in": N_HID, "out": N_OUT, "w_off": N_IN * N_HID,
           "b_off": N_IN * N_HID + N_HID * N_OUT + N_HID}]
N_DECAY = N_IN * N_HID + N_HID * N_OUT
N_PARAMS = N_DECAY + N_HID + N_OUT


def _run(backend, dtype, kind, style, weighted, update=True):
    """Three iterations; returns (l2_term after each, final params)."""
    rng = np.random.RandomState(3)
    params = rng.uniform(-0.2, 0.2, N_PARAMS).astype(dtype)
    net = make_net(backend, dtype, "cross_entropy", LAYERS, params,
                   np.zeros_like(params), np.zeros(2 * N_PARAMS, dtype))
    net.set_reduction("sklearn" if style == STYLE_SKLEARN else "mean")
    net.set_optimizer(kind, momentum=0.9, weight_decay=0.3, n_decay=N_DECAY, style=style)
    X, y = rng.randn(50, N_IN).astype(dtype), rng.randint(0, N_OUT, 50).astype(np.int64)
    w = rng.rand(50).astype(dtype) if weighted else None
    net.reserve(20)
    net.set_data(X, y, w)
    idx = rng.permutation(50).astype(np.int64)
    terms, expected = [], []
    for t, start in enumerate((0, 20, 40)):
        stop = min(start + 20, 50)
        weights = params[:N_DECAY].astype(np.float64)
        batch_weight = stop - start if w is None else float(w[idx[start:stop]].astype(np.float64).sum())
        expected.append(0.5 * 0.3 * np.dot(weights, weights) / batch_weight)
        net.step_rows(idx, start, stop, 0.01, t + 1, update)
        terms.append(net.l2_term)
    return np.array(terms), np.array(expected), params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", [SGD_KIND, ADAM_KIND])
@pytest.mark.parametrize("weighted", [False, True])
def test_l2_term_is_that_of_the_weights_before_the_update(dtype, kind, weighted):
    terms, expected, params = _run("c", dtype, kind, STYLE_SKLEARN, weighted)
    np.testing.assert_allclose(terms, expected, rtol=1e-12)
    twin_terms, twin_expected, twin_params = _run("numpy", dtype, kind, STYLE_SKLEARN, weighted)
    np.testing.assert_allclose(twin_terms, twin_expected, rtol=1e-12)
    if dtype == np.float64:  # (float32 GEMM roundings differ, and Adam magnifies them)
        np.testing.assert_allclose(params, twin_params, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_l2_term_is_zero_without_the_scikit_learn_update(backend):
    assert not _run(backend, np.float64, SGD_KIND, STYLE_TORCH, False)[0].any()
    assert not _run(backend, np.float64, ADAM_KIND, STYLE_SKLEARN, False, update=False)[0].any()


@pytest.mark.parametrize("kind", [SGD_KIND, ADAM_KIND, GRADIENT_KIND])
@pytest.mark.parametrize("style", [STYLE_SKLEARN, STYLE_TORCH])
def test_update_and_l2_term_do_not_depend_on_the_thread_count(threads, kind, style):
    results = []
    for n in (1, 2):
        threads(n)
        results.append(_run("c", np.float32, kind, style, True))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][2], results[1][2])


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("style", [STYLE_SKLEARN, STYLE_TORCH])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_kind_adds_the_l2_penalty_and_updates_nothing(backend, dtype, style,
                                                               weighted):
    rng = np.random.RandomState(5)
    params = rng.uniform(-0.2, 0.2, N_PARAMS).astype(dtype)
    grads, state = np.zeros_like(params), rng.rand(2 * N_PARAMS).astype(dtype)
    net = make_net(backend, dtype, "cross_entropy", LAYERS, params, grads, state)
    net.set_reduction("sklearn" if style == STYLE_SKLEARN else "mean")
    X, y = rng.randn(30, N_IN).astype(dtype), rng.randint(0, N_OUT, 30).astype(np.int64)
    w = rng.rand(30).astype(dtype) if weighted else None
    net.reserve(30)
    loss = net.step(X, y, 0.0, 0, False, sample_weight=w)
    plain = grads.copy()
    before, state_before = params.copy(), state.copy()
    net.set_optimizer(GRADIENT_KIND, weight_decay=0.3, n_decay=N_DECAY, style=style)
    assert net.step(X, y, 0.5, 1, True, sample_weight=w) == loss
    np.testing.assert_array_equal(params, before)
    np.testing.assert_array_equal(state, state_before)
    batch_weight = 30 if w is None else float(w.astype(np.float64).sum())
    wd = 0.3 / batch_weight if style == STYLE_SKLEARN else 0.3
    expected = plain.copy()
    expected[:N_DECAY] += dtype(wd) * before[:N_DECAY]
    np.testing.assert_allclose(grads, expected, rtol=1e-12 if dtype == np.float64 else 1e-6)
    np.testing.assert_array_equal(grads[N_DECAY:], plain[N_DECAY:])
    weights = before[:N_DECAY].astype(np.float64)
    expected_term = 0.5 * wd * np.dot(weights, weights) if style == STYLE_SKLEARN else 0.0
    np.testing.assert_allclose(net.l2_term, expected_term, rtol=1e-12)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_gradient_kind_leaves_the_running_statistics(backend):
    model = mt.Sequential([mt.Dense(6, activation="relu"), mt.BatchNorm(), mt.Dense(3)],
                          seed=0, dtype="float64", backend=backend).build(4)
    X, y = np.random.default_rng(0).normal(size=(10, 4)), np.arange(10) % 3
    running = model.buffers_flat.copy()
    loss, l2_term = model._gradient(X, y, weight_decay=0.1)
    np.testing.assert_array_equal(model.buffers_flat, running)
    weights = model.params_flat[:model._n_decay]
    assert l2_term == pytest.approx(0.5 * 0.1 / 10 * np.dot(weights, weights), rel=1e-12)
    assert np.isfinite(loss) and model.grads_flat.any()
