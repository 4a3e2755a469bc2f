"""What the caller does to its arrays, or what overflows, never reaches the weights: labels
changed during fit and non-finite gradients are refused with the model as it was."""

import numpy as np
import pytest

import minitrain as mt

BACKENDS = ["c", "numpy"]


class _AfterIteration(mt.Callback):
    """Calls `action(model)` once, at the end of iteration `at`, and keeps copies of what
    an update may change at that moment."""

    def __init__(self, at, action):
        super().__init__()
        self.at, self.action, self.saved = at, action, None

    def on_iteration_end(self, iteration, logs=None):
        if iteration == self.at:
            m = self.model
            self.saved = (m.params_flat.copy(), m.state_flat.copy(), m.buffers_flat.copy(),
                          m.iteration)
            self.action(m)


def _assert_kept(model, saved):
    params, state, buffers, iteration = saved
    np.testing.assert_array_equal(model.params_flat, params)
    np.testing.assert_array_equal(model.state_flat, state)
    np.testing.assert_array_equal(model.buffers_flat, buffers)
    assert model.iteration == iteration


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label", [10, -1, 10**15, -(2**62)])
def test_labels_changed_during_fit_raise_with_the_parameters_kept(backend, label):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 12))
    y = rng.integers(0, 10, 96)  # int64 and contiguous: fit uses it without a copy
    model = mt.Sequential([mt.Dense(16, activation="relu"), mt.BatchNorm(), mt.Dense(10)],
                          seed=0, backend=backend, dtype="float64")

    def corrupt(m):
        y[:] = label

    cb = _AfterIteration(2, corrupt)
    with pytest.raises(ValueError, match=r"\by\b.*outside \[0, 10\)"):
        model.fit(X, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb],
                  optimizer=mt.Adam(lr=0.01))
    _assert_kept(model, cb.saved)


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_changed_after_set_data_are_refused_by_step_rows(backend):
    from minitrain import backends

    model = mt.Sequential([mt.Dense(4)], seed=0, backend=backend, dtype="float64").build(3)
    net = model._net
    assert isinstance(net, backends.NumpyNet if backend == "numpy" else backends._core.Net)
    X, y = np.ones((5, 3)), np.zeros(5, dtype=np.int64)
    model._use_optimizer(mt.SGD(lr=0.1))
    net.reserve(5)
    net.set_data(X, y)
    y[3] = 4
    before = model.params_flat.copy()
    with pytest.raises(ValueError, match=r"\by\b"):
        net.step_rows(np.arange(5), 0, 5, 0.1, 1)
    np.testing.assert_array_equal(model.params_flat, before)


def _overflowing_regression(backend, optimizer):
    # float32 targets near float32's maximum: the loss (accumulated in double) is finite,
    # the float32 gradient 2 (p - y) is not
    model = mt.Sequential([mt.Dense(8, activation="tanh"), mt.BatchNorm(), mt.Dense(1)],
                          loss="mse", seed=0, backend=backend, optimizer=optimizer)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(32, 4)).astype(np.float32)
    return model, X, rng.normal(size=(32, 1)).astype(np.float32)


OPTIMIZERS = {"sgd momentum": lambda: mt.SGD(lr=0.01, momentum=0.9),
              "sgd clipped": lambda: mt.SGD(lr=0.01, clip_norm=1.0),
              "adam": lambda: mt.Adam(lr=0.01)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_train_step_with_an_overflowing_gradient_changes_nothing(backend, optimizer):
    model, X, y = _overflowing_regression(backend, OPTIMIZERS[optimizer]())
    model.train_step(X[:8], y[:8])
    model.train_step(X[8:16], y[8:16])
    saved = (model.params_flat.copy(), model.state_flat.copy(), model.buffers_flat.copy(),
             model.iteration)
    huge = np.full((8, 1), 3e38, dtype=np.float32)
    with pytest.raises(FloatingPointError, match="gradient is not finite"):
        model.train_step(X[16:24], huge)
    _assert_kept(model, saved)
    assert np.isfinite(model.params_flat).all()
    assert model.optimizer.iterations == 2
    # and training goes on from there
    assert np.isfinite(model.train_step(X[16:24], y[16:24]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_fit_with_an_overflowing_gradient_keeps_the_last_finite_weights(backend, optimizer):
    model, X, y = _overflowing_regression(backend, OPTIMIZERS[optimizer]())

    def overflow(m):
        y[:] = 3e38  # fit uses the caller's float32 (n, 1) targets without a copy

    cb = _AfterIteration(3, overflow)
    with pytest.raises(FloatingPointError, match="last finite iteration are kept"):
        model.fit(X, y, epochs=3, batch_size=8, verbose=0, callbacks=[cb], metrics=None)
    _assert_kept(model, cb.saved)
    assert np.isfinite(model.params_flat).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_on_targets_near_the_float32_maximum_raises_before_any_update(backend):
    model, X, _ = _overflowing_regression(backend, mt.SGD(lr=0.01))
    model.build(X.shape[1])
    before = model.params_flat.copy()
    with pytest.raises(FloatingPointError):
        model.fit(X, np.full((32, 1), 3e38, dtype=np.float32), epochs=1, batch_size=8,
                  verbose=0, metrics=None)
    np.testing.assert_array_equal(model.params_flat, before)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_bad_label_in_one_thread_s_rows_stops_every_thread(threads):
    # an iteration large enough for one parallel region: the rows of the loss pass are
    # split between the threads and the one bad label lies in one thread's share only;
    # every thread must take the same exit, or the team would meet at different barriers
    rng = np.random.default_rng(0)
    X = rng.normal(size=(512, 256)).astype(np.float32)
    y = rng.integers(0, 10, 512)
    model = mt.Sequential([mt.Dense(512, activation="relu"), mt.Dense(10)], seed=0)

    def corrupt(m):
        y[137] = 10

    cb = _AfterIteration(1, corrupt)
    mt.set_num_threads(threads)
    try:
        with pytest.raises(ValueError, match=r"\by\b.*outside \[0, 10\)"):
            model.fit(X, y, epochs=2, batch_size=512, verbose=0, callbacks=[cb])
        _assert_kept(model, cb.saved)
        y[137] = 3
        model.fit(X, y, epochs=1, batch_size=512, verbose=0)  # the team is still whole
    finally:
        mt.set_num_threads("auto")


# Gradients that overflow in one place only, the loss finite: each is caught where it is
# computed (a dW tile as it is stored, the bias sums of a packed or an in-place dZ, the
# batch-norm sums), at one thread and in a parallel region of two.
def _positive(rng, shape, scale):
    return (np.abs(rng.normal(size=shape)) * scale).astype(np.float32)


OVERFLOWS = {  # name: (features, x scale, first layer scale, last layer scale, batchnorm first)
    "dW tile, packed panels": (150, 1e20, 1e-20, 1e18, False),
    "dW tile, in place": (3, 1e20, 1e-20, 1e18, False),
    "bias sums of a packed dZ": (150, 1e-3, 1e2, 2e19, False),
    "bias sums of an in-place dZ": (3, 1e-3, 1e3, 2e19, False),
    "batch-norm sums": (64, 1.0, 1.0, 1e20, True),
}


@pytest.mark.parametrize("case", list(OVERFLOWS))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_a_gradient_that_overflows_in_one_place_changes_nothing(case, threads, dtype):
    features, xs, first, last, batchnorm = OVERFLOWS[case]
    rng = np.random.default_rng(0)
    X, y = _positive(rng, (256, features), xs), np.zeros((256, 1), np.float32)
    model = mt.Sequential([mt.BatchNorm() if batchnorm else mt.Dense(64), mt.Dense(1)],
                          loss="mse", seed=0, optimizer=mt.SGD(lr=1e-30, momentum=0.5),
                          dtype=dtype)
    model.build(features)
    for layer, scale in zip(model.layers, (first, last)):
        if isinstance(layer, mt.Dense):
            layer.W[...] = np.abs(layer.W) * scale
    mt.set_num_threads(threads)
    try:
        loss, grad = model.loss_and_gradient(X, y)
        assert np.isfinite(loss)
        bad = ~np.isfinite(grad)
        assert 0 < bad.sum() < grad.size  # the case overflows where its name says
        saved = (model.params_flat.copy(), model.state_flat.copy(),
                 model.buffers_flat.copy(), model.iteration)
        with pytest.raises(FloatingPointError, match="gradient is not finite"):
            model.train_step(X, y)
        _assert_kept(model, saved)
    finally:
        mt.set_num_threads("auto")
