"""The core's data-parallel entry points without MPI: a batch's parts, each stepped with
its shard (``Net.set_shard``) and the batch-norm sums summed by a reduce hook across
Python threads, give the gradient of the whole batch; ``Net.update`` applies a gradient
once, as the fused step does."""

import copy
import threading

import numpy as np
import pytest

import minitrain as mt


class ThreadSum:
    """An all-reduce between k Python threads: the hook of part r sums every part's
    buffer, in the order of the parts."""

    def __init__(self, k):
        self.k, self.bufs, self.barrier = k, [None] * k, threading.Barrier(k, timeout=30)
        self.calls = 0

    def hook(self, r):
        def reduce(buf):
            self.bufs[r] = buf.copy()
            self.barrier.wait()
            total = self.bufs[0].copy()
            for other in self.bufs[1:]:
                total += other
            self.barrier.wait()
            buf[...] = total
            self.calls += r == 0
        return reduce


def _layers():
    return [mt.Dense(12), mt.BatchNorm(), mt.Activation("relu"), mt.Dropout(0.25),
            mt.Dense(8, activation="tanh"), mt.BatchNorm(), mt.Dense(3)]


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("k", [2, 3])
def test_the_parts_of_a_batch_sum_to_its_gradient(backend, k):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(31, 5)), rng.integers(0, 3, 31)
    whole = mt.Sequential(_layers(), seed=0, dtype="float64", backend=backend).build(5)
    whole.iteration = 7  # the dropout masks of iteration 7
    loss, grad = whole.loss_and_gradient(X, y)
    parts = [copy.deepcopy(whole) for _ in range(k)]
    bounds = np.cumsum([0] + [len(p) for p in np.array_split(np.arange(31), k)])
    summer, losses = ThreadSum(k), [None] * k

    def run(r):
        net = parts[r]._net
        net.reserve(31)
        net.set_shard(int(bounds[r]), 31, 31.0, summer.hook(r))
        lo, hi = bounds[r], bounds[r + 1]
        losses[r] = net.step(X[lo:hi], y[lo:hi], 0.0, 0, False, iteration=7)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert summer.calls == 2 * 3  # per batch norm, two forward sums and one backward
    total = sum(p.grads_flat for p in parts)
    np.testing.assert_allclose(total, grad, rtol=1e-12, atol=1e-14)
    assert sum(losses) == pytest.approx(loss, rel=1e-13)


def test_set_shard_checks_its_arguments():
    model = mt.Sequential([mt.Dense(2)], seed=0).build(3)
    for bad in (dict(row0=-1), dict(row0=4, rows=4), dict(weight=-1.0),
                dict(weight=float("nan"))):
        with pytest.raises(ValueError, match="set_shard: row0 must lie in"):
            model._net.set_shard(**bad)
    with pytest.raises(TypeError, match="reduce must be callable"):
        model._net.set_shard(0, 4, 4.0, reduce=1)
    model._net.reserve(4)
    model._net.set_shard(2, 4, 4.0)  # rows [2, 5) would leave the global batch of 4
    with pytest.raises(ValueError, match="from row 2 of a global batch of 4"):
        model._net.step(np.zeros((3, 3), np.float32), np.zeros(3, np.int64), 0.0, 0, False)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_update_applies_the_gradient_of_a_step_once(backend):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(16, 4)), rng.integers(0, 3, 16)
    fused, split = (mt.Sequential([mt.Dense(6), mt.BatchNorm(), mt.Dense(3)], seed=0,
                                  dtype="float64", backend=backend) for _ in range(2))
    for m in (fused, split):
        m.build(4)
        m._use_optimizer(mt.Adam(0.01))
        m._net.reserve(16)
    with pytest.raises(ValueError, match="there is none"):
        split._net.update(0.01, 1)  # no step yet
    fused._net.step(X, y, 0.01, 1)
    split._net.step(X, y, 0.0, 0, False)
    split._net.update(0.01, 1)
    for name in ("params_flat", "state_flat", "buffers_flat"):
        np.testing.assert_array_equal(getattr(split, name), getattr(fused, name))
    before = split.params_flat.copy()
    with pytest.raises(ValueError, match="there is none"):
        split._net.update(0.01, 2)  # applied already
    np.testing.assert_array_equal(split.params_flat, before)


def test_with_a_reduce_hook_a_failed_part_still_calls_it():
    """A rank whose loss is not finite makes the same collective calls as the others,
    then raises, with nothing updated (the agreement needs it)."""
    model = mt.Sequential([mt.Dense(4), mt.BatchNorm(), mt.Dense(2)], seed=0,
                          dtype="float64").build(3)
    model._use_optimizer(mt.SGD(0.1))
    model._net.reserve(4)
    calls = []
    model._net.set_shard(0, 4, 4.0, lambda buf: calls.append(buf.size))
    with pytest.raises(FloatingPointError, match="not finite"):
        model._net.step(np.full((4, 3), np.inf), np.zeros(4, np.int64), 0.0, 0, False)
    assert calls == [4, 4, 8]  # forward's two sums, backward's one
    with pytest.raises(ValueError, match="there is none"):
        model._net.update(0.1, 1)


def test_with_a_reduce_hook_a_failed_fused_step_updates_nothing():
    model = mt.Sequential([mt.Dense(4), mt.BatchNorm(), mt.Dense(2)], seed=0,
                          dtype="float64").build(3)
    model._use_optimizer(mt.SGD(0.1, momentum=0.9))
    model._net.reserve(4)
    model._net.set_shard(0, 4, 4.0, lambda buf: None)
    before = {k: v.copy() for k, v in model.get_weights().items()}
    X, y = np.ones((4, 3)), np.array([0, 1, 0, 1])
    model._net.set_data(X, y)
    y[3] = 5  # changed after it was checked: the core finds it in the batch
    with pytest.raises(ValueError, match="outside"):
        model._net.step_rows(np.arange(4), 0, 4, 0.1, 1)
    for k, v in model.get_weights().items():
        np.testing.assert_array_equal(v, before[k])
    assert not model.state_flat.any()
