"""The cost of an iteration beyond its arithmetic: what ``train_step`` adds to the core's
step on the digits shape (64-128-10, batch 32, SGD with momentum), piece by piece, and a
``train_step`` loop against ``fit`` on the same batches (digits and MNIST-shaped shapes).

``pytest bench/test_overhead.py --benchmark-only``; at one thread, pinned, the pieces are
within a few tens of nanoseconds of each other on a quiet machine:
``OMP_NUM_THREADS=1 taskset -c 0 pytest bench/test_overhead.py --benchmark-only``.
Compare the ``loop`` groups at 2 threads too: a ``train_step`` loop should stay within
10 % of ``fit`` per iteration.
"""

import numpy as np
import pytest

import minitrain as mt
from minitrain import threads

SHAPES = {"digits": ((64, 128, 10), 32), "mnist": ((784, 256, 128, 10), 128)}
BATCHES = 32  # per round of the loop benchmarks


def _model(widths, dtype):
    model = mt.Sequential([mt.Dense(w, activation="relu") for w in widths[1:-1]] +
                          [mt.Dense(widths[-1])], seed=0, dtype=dtype)
    return model, mt.SGD(lr=0.01, momentum=0.9)


def _data(widths, rows, dtype):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(rows, widths[0])).astype(dtype),
            rng.integers(0, widths[-1], rows))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("part", ["train_step", "core step", "input checks",
                                  "thread controller"])
def test_digits_iteration_parts(benchmark, dtype, part):
    widths, batch = SHAPES["digits"]
    model, opt = _model(widths, dtype)
    X, y = _data(widths, batch, dtype)
    for _ in range(10):
        model.train_step(X, y, optimizer=opt)
    net, ctl = model._net, threads.controller(model)
    fn = {"train_step": lambda: model.train_step(X, y, optimizer=opt),
          "core step": lambda: net.step(X, y, 0.01, 5),
          "input checks": lambda: model._check_xy(X, y),
          "thread controller": lambda: ctl.stop(ctl.start())}[part]
    benchmark.group = f"digits iteration parts, {dtype}"
    benchmark(fn)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("loop", ["train_step", "fit"])
def test_loop(benchmark, shape, loop):
    widths, batch = SHAPES[shape]
    model, opt = _model(widths, "float32")
    X, y = _data(widths, BATCHES * batch, "float32")
    batches = [(X[i:i + batch].copy(), y[i:i + batch].copy())
               for i in range(0, len(X), batch)]

    def steps():
        for Xb, yb in batches:
            model.train_step(Xb, yb, optimizer=opt)

    def fit():
        model.fit(X, y, epochs=1, batch_size=batch, optimizer=opt, metrics=None, verbose=0)

    fn = steps if loop == "train_step" else fit
    fn()  # warm-up: builds the model, sizes the workspace, times the thread counts
    benchmark.group = f"{BATCHES} iterations, {shape} {'-'.join(map(str, widths))} " \
                      f"batch {batch}"
    benchmark.extra_info["iterations"] = BATCHES
    benchmark.pedantic(fn, rounds=20 if shape == "digits" else 5, iterations=1,
                       warmup_rounds=1)
