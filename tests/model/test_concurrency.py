"""One model shared between threads gives the results of serial calls, and separate models
in separate threads give the bits of solo runs."""

import copy
import pickle
import threading

import numpy as np
import pytest

import minitrain as mt


def _data(n=600, features=128, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features)).astype(np.float32)
    return X, rng.integers(0, classes, n)


def _model(seed=0, backend="c", dtype="float32"):
    return mt.Sequential([mt.Dense(256, activation="relu"), mt.Dense(10)], seed=seed,
                         backend=backend, dtype=dtype,
                         optimizer=mt.SGD(lr=0.05, momentum=0.9))


def _run_together(*jobs):
    """Run each job in its own thread, started together; re-raise the first error."""
    errors = []
    start = threading.Barrier(len(jobs))

    def wrap(job):
        try:
            start.wait()
            job()
        except BaseException as err:  # noqa: BLE001 - reported in the main thread
            errors.append(err)

    threads = [threading.Thread(target=wrap, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _snapshot(model):
    return (model.params_flat.copy(), model.state_flat.copy(), model.optimizer.iterations,
            model.iteration)


def _restore(model, saved):
    params, state, model.optimizer.iterations, model.iteration = saved
    model.params_flat[...] = params
    model.state_flat[...] = state


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_train_step_from_two_threads_equals_a_serial_order(backend):
    # the batch sizes vary so that each thread grows the workspace under the other's step
    X, y = _data()
    sizes = {0: [3, 330, 17, 450, 64, 1, 599, 140] * 2,
             1: [190, 5, 422, 33, 250, 8, 571, 360] * 2}
    batches = {k: [(X[:n] * (1 + 0.1 * k), y[:n]) for n in v] for k, v in sizes.items()}
    shared = _model(backend=backend).build(X.shape[1])
    initial = _snapshot(shared)
    losses = {0: [], 1: []}

    def worker(k):
        for Xb, yb in batches[k]:
            losses[k].append(shared.train_step(Xb, yb))

    _run_together(lambda: worker(0), lambda: worker(1))
    assert shared.iteration == shared.optimizer.iterations == 32

    # replay serially: each thread's calls ran in its own order, interleaved somehow; at
    # each point the next call was one thread's next, and only the right one gives the
    # loss it returned
    replay = _model(backend=backend).build(X.shape[1])
    _restore(replay, initial)
    done = {0: 0, 1: 0}
    while done[0] < len(batches[0]) or done[1] < len(batches[1]):
        before = _snapshot(replay)
        for k in (0, 1):
            if done[k] == len(batches[k]):
                continue
            if replay.train_step(*batches[k][done[k]]) == losses[k][done[k]]:
                done[k] += 1
                break
            _restore(replay, before)
        else:
            pytest.fail(f"no serial order gives the losses returned (after {done})")
    np.testing.assert_array_equal(shared.params_flat, replay.params_flat)
    np.testing.assert_array_equal(shared.state_flat, replay.state_flat)


def test_predict_with_growing_batches_while_another_thread_fits():
    X, y = _data()
    solo = _model()
    solo.fit(X, y, epochs=2, batch_size=16, verbose=0)
    shared = _model()
    shared.build(X.shape[1])  # predict may start before fit has built the model
    proba = []

    def predicting():
        for n in range(1, X.shape[0] + 1, 20):  # each call grows the workspace
            proba.append(shared.predict_proba(X[:n]))

    _run_together(lambda: shared.fit(X, y, epochs=2, batch_size=16, verbose=0), predicting)
    np.testing.assert_array_equal(shared.params_flat, solo.params_flat)
    assert len(proba) == len(range(1, X.shape[0] + 1, 20))
    for p, n in zip(proba, range(1, X.shape[0] + 1, 20)):
        assert p.shape == (n, 10)
        np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(shared.predict_proba(X), solo.predict_proba(X))


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_loss_and_gradient_and_predict_proba_from_two_threads(backend):
    X, y = _data()
    model = _model(backend=backend)
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    parts = [(X[:137], y[:137]), (X[100:600], y[100:600])]
    expected = [(model.loss_and_gradient(Xp, yp), model.predict_proba(Xp))
                for Xp, yp in parts]
    wrong = []

    def worker(k):
        (Xp, yp), ((loss, grad), proba) = parts[k], expected[k]
        for _ in range(15 if backend == "c" else 6):
            got_loss, got_grad = model.loss_and_gradient(Xp, yp)
            if got_loss != loss or not np.array_equal(got_grad, grad):
                wrong.append(("loss_and_gradient", k))
            if not np.array_equal(model.predict_proba(Xp), proba):
                wrong.append(("predict_proba", k))

    _run_together(lambda: worker(0), lambda: worker(1))
    assert wrong == []


def test_separate_models_in_two_threads_are_bit_identical_to_solo_runs():
    data = [_data(n=300, seed=1), _data(n=300, seed=2)]

    def fitted(k):
        model = _model(seed=10 + k, dtype="float64" if k else "float32")
        model.fit(*data[k], epochs=2, batch_size=32, verbose=0)
        return model

    solo = [fitted(0).params_flat, fitted(1).params_flat]
    together = [None, None]

    def worker(k):
        together[k] = fitted(k).params_flat

    _run_together(lambda: worker(0), lambda: worker(1))
    for k in (0, 1):
        np.testing.assert_array_equal(together[k], solo[k])


def test_a_model_with_its_lock_can_still_be_copied_and_pickled():
    model = _model()
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other._lock is not model._lock
        X, y = _data(n=40)
        np.testing.assert_array_equal(other.fit(X, y, epochs=1, verbose=0).iteration_loss,
                                      _model().fit(X, y, epochs=1, verbose=0).iteration_loss)
