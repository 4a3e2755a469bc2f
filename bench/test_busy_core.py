"""The busy-core task as a pytest-benchmark suite: a busy loop on one core (started for
the module, bounded, ended by its pid) while minitrain runs each workload at its default
thread setting ("auto"), at 1 and at 2 threads, and PyTorch's manual loop its epoch.
``pytest bench/test_busy_core.py --benchmark-only``; bench/busy.py runs the same in fresh
processes, quiet and busy, and makes the table."""

import warnings

import numpy as np
import pytest

import minitrain as mt
from bench import busy
from bench import peers as P

CFG = busy.BusyConfig()


@pytest.fixture(scope="module", autouse=True)
def competitor():
    proc = busy.start_competitor(CFG.competitor_seconds)
    yield proc
    busy.stop_competitor(proc)


@pytest.fixture(params=busy.SETTINGS)
def setting(request):
    mt.set_num_threads("auto" if request.param == "default" else int(request.param))
    yield request.param
    mt.set_num_threads("auto")


@pytest.fixture(scope="module")
def mnist():
    return busy._mnist(CFG)


def test_digits_fit(benchmark, setting):
    X, y = mt.load_digits()
    X_train, _, y_train, _ = mt.train_test_split(X / 16.0, y, test_size=0.2, seed=0)

    def fit():
        model = mt.Sequential([mt.Dense(128, activation="relu"), mt.Dense(10)], seed=0)
        return model.fit(X_train, y_train, epochs=CFG.digits_epochs, batch_size=32,
                         verbose=0, optimizer=mt.SGD(lr=0.05, momentum=0.9))
    benchmark.group = f"busy core: {busy.LABELS['digits_fit']}"
    hist = benchmark.pedantic(fit, rounds=5, warmup_rounds=1)
    benchmark.extra_info["threads"] = hist.threads


@pytest.mark.parametrize("metrics", [None, "auto"])
def test_epoch(benchmark, setting, mnist, metrics):
    X, y = mnist
    model = mt.Sequential([mt.Dense(256, activation="relu"), mt.Dense(128, activation="relu"),
                           mt.Dense(10)], seed=0)
    opt = mt.SGD(lr=0.01, momentum=0.9)
    benchmark.group = f"busy core: {busy.LABELS['epoch' if metrics is None else 'epoch_metrics']}"
    hist = benchmark.pedantic(lambda: model.fit(X, y, epochs=1, batch_size=CFG.batch, verbose=0,
                                                metrics=metrics, optimizer=opt),
                              rounds=3, warmup_rounds=1)
    benchmark.extra_info["threads"] = hist.threads


def test_train_step(benchmark, setting, mnist):
    X, y = mnist
    model = mt.Sequential([mt.Dense(256, activation="relu"), mt.Dense(128, activation="relu"),
                           mt.Dense(10)], seed=0)
    opt = mt.SGD(lr=0.01, momentum=0.9)
    b, state = CFG.batch, {"i": 0}

    def step():
        s = state["i"] % (len(X) // b) * b
        state["i"] += 1
        model.train_step(X[s:s + b], y[s:s + b], optimizer=opt)
    benchmark.group = f"busy core: {busy.LABELS['train_step']}"
    benchmark.pedantic(step, rounds=300, warmup_rounds=10)


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_sklearn(benchmark, setting, solver):
    from sklearn.exceptions import ConvergenceWarning

    from minitrain.sklearn import MLPClassifier
    X, y = mt.load_digits()

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            MLPClassifier((128,), solver=solver, batch_size=32, max_iter=CFG.sklearn_iter,
                          tol=0.0, random_state=0).fit(X / 16.0, y)
    benchmark.group = f"busy core: {busy.LABELS['sklearn_' + solver]}"
    benchmark.pedantic(fit, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("threads", busy.SETTINGS)
def test_torch_epoch(benchmark, mnist, threads):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    if threads != "default":
        torch.set_num_threads(int(threads))
    try:
        X, y = mnist
        trainer = P.TorchTrainer(P.initial_weights(CFG.widths), 0.01, 0.9)
        seeds = iter(range(1, 1 << 30))
        benchmark.group = f"busy core: {busy.LABELS['epoch']}"
        benchmark.pedantic(lambda: trainer.epoch(X, y, CFG.batch, next(seeds)), rounds=3,
                           warmup_rounds=1)
    finally:
        torch.set_num_threads(before)
    assert np.isfinite(trainer.weights()[0][0]).all()
