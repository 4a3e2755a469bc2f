"""Thread count and instruction set: process-wide thread settings, "auto" mode, thread
counts that change at any iteration, threadpoolctl, and an ISA fixed per net and per call."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import minitrain as mt
from minitrain import _core
from minitrain import threads as T


@pytest.fixture(autouse=True)
def restore_threads():
    """Every test starts in auto mode; the setting before it is restored after it."""
    before = mt.get_num_threads() if _core.num_threads_fixed() else "auto"
    mt.set_num_threads("auto")
    yield
    mt.set_num_threads(before)


def data(rows=512, features=200, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features)).astype(np.float32)
    return X, rng.integers(0, classes, rows)


def layers():
    # wide enough that an iteration runs on a team (the core keeps small ones serial)
    return [mt.Dense(128, activation="relu"), mt.BatchNorm(), mt.Dropout(0.2),
            mt.Dense(64, activation="tanh"), mt.Dense(5)]


def fit(threads=None, callbacks=None, epochs=2):
    X, y = data()
    if threads is not None:
        mt.set_num_threads(threads)
    model = mt.Sequential(layers(), seed=0)
    hist = model.fit(X, y, epochs=epochs, batch_size=128, verbose=0, callbacks=callbacks,
                     optimizer=mt.SGD(lr=0.05, momentum=0.9))
    return model, hist


def weights(model):
    return model.params_flat.copy(), model.buffers_flat.copy()


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_weights_are_bit_identical_on_1_2_and_3_threads():
    one, hist = fit(1)
    assert hist.threads == [1, 1]
    for n in (2, 3):
        model, hist = fit(n)
        assert hist.threads == [n, n] and mt.get_num_threads() == n
        assert_same(weights(model), weights(one))


class EveryIteration(mt.Callback):
    """Changes the thread count after every iteration."""

    def __init__(self, change):
        self.change, self.calls = change, 0

    def on_iteration_end(self, iteration, logs):
        self.calls += 1
        self.change(self.calls)


def test_a_thread_count_changing_every_iteration_gives_the_one_thread_weights():
    reference = weights(fit(1)[0])
    seen = []

    def fixed(i):  # explicit counts 1, 2, 3, 2, 1, ...
        mt.set_num_threads([1, 2, 3, 2][i % 4])
        seen.append(mt.get_num_threads())

    model, _ = fit(callbacks=[EveryIteration(fixed)], epochs=3)
    reference3 = weights(fit(1, epochs=3)[0])
    assert_same(weights(model), reference3)
    assert set(seen) == {1, 2, 3}

    mt.set_num_threads("auto")
    holder = {}

    def auto(i):  # auto mode, the net's team changed under the controller
        holder["model"]._net.threads = 1 + i % 3

    model = mt.Sequential(layers(), seed=0)
    holder["model"] = model
    X, y = data()
    model.fit(X, y, epochs=2, batch_size=128, verbose=0, callbacks=[EveryIteration(auto)],
              optimizer=mt.SGD(lr=0.05, momentum=0.9))
    assert_same(weights(model), reference)


def test_auto_mode_trains_as_one_thread_and_says_what_it_used():
    reference = weights(fit(1)[0])
    mt.set_num_threads("auto")
    assert not _core.num_threads_fixed()
    model, hist = fit(epochs=2)
    assert_same(weights(model), reference)
    assert len(hist.threads) == 2
    assert all(1 <= n <= _core.max_threads() for n in hist.threads)
    assert 1 <= mt.get_num_threads() <= _core.max_threads()


def test_set_num_threads_semantics():
    mt.set_num_threads(1)
    assert _core.num_threads_fixed() and mt.get_num_threads() == 1
    mt.set_num_threads(np.int64(2))
    assert mt.get_num_threads() == 2
    mt.set_num_threads("auto")
    assert not _core.num_threads_fixed()
    for bad in (0, -1, 1.5, True, "two", None):
        with pytest.raises(ValueError, match="positive integer or 'auto'"):
            mt.set_num_threads(bad)


def run(code, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=environ).stdout.split()


def test_the_environment_fixes_the_count_and_sets_the_wait_policy():
    code = ("import os, minitrain as mt\nfrom minitrain import _core\n"
            "print(_core.num_threads_fixed(), mt.get_num_threads(),"
            " os.environ.get('GOMP_SPINCOUNT'), _core.max_threads())\n")
    fixed, n, spin, cores = run(code)
    assert (fixed, n, spin) == ("False", cores, T.SPIN_COUNT)
    assert run(code, OMP_NUM_THREADS="1") == ["True", "1", T.SPIN_COUNT, "1"]
    # the user's wait policy is left alone
    assert run(code, OMP_WAIT_POLICY="passive")[2] == "None"
    assert run(code, GOMP_SPINCOUNT="7")[2] == "7"


@pytest.mark.skipif(_core.max_threads() < 2, reason="a limit of one thread is the default")
def test_threadpoolctl_sees_the_count_and_its_limit_fixes_it():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def openmp():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "openmp" and "gomp" in i["prefix"]]

    mt.set_num_threads(1)
    assert 1 in openmp()
    mt.set_num_threads("auto")
    assert _core.max_threads() in openmp()
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert _core.num_threads_fixed() and mt.get_num_threads() == 1
        _, hist = fit()
        assert hist.threads == [1, 1]
    assert not _core.num_threads_fixed()


def in_thread(fn):
    out = {}

    def target():
        out["value"] = fn()

    t = threading.Thread(target=target)
    t.start()
    t.join()
    return out.get("value")


def test_set_num_threads_from_another_thread_applies_process_wide():
    in_thread(lambda: mt.set_num_threads(1))
    assert mt.get_num_threads() == 1
    _, hist = fit()
    assert hist.threads == [1, 1]
    mt.set_num_threads(1)
    assert in_thread(lambda: fit()[1].threads) == [1, 1]
    assert in_thread(mt.get_num_threads) == 1


@pytest.mark.skipif(len(_core.available_isas()) < 2, reason="one instruction set only")
def test_the_isa_is_fixed_per_net_and_per_gemm_call():
    best = _core.isa()
    if best == "generic":
        pytest.skip("the default is the generic kernels already")
    solo = weights(fit(2, epochs=3)[0])
    stop = threading.Event()
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(64, 64)), rng.normal(size=(64, 64))
    generic = []

    def other_thread():  # GEMMs with other micro-kernels, throughout the fit
        while not stop.is_set():
            generic.append(_core.gemm(A, B, isa="generic"))

    t = threading.Thread(target=other_thread)
    t.start()
    try:
        shared = weights(fit(2, epochs=3)[0])
    finally:
        stop.set()
        t.join()
    assert len(generic) > 0
    assert_same(shared, solo)
    assert _core.isa() == best
    # a net keeps the micro-kernels it was made with; the default is for new nets
    X, y = data()
    model = mt.Sequential(layers(), seed=0)
    model.build(X.shape[1])
    try:
        _core.set_isa("generic")
        assert model._net.isa == best
        model.fit(X, y, epochs=3, batch_size=128, verbose=0,
                  optimizer=mt.SGD(lr=0.05, momentum=0.9))
        assert mt.Sequential(layers(), seed=0).build(X.shape[1])._net.isa == "generic"
    finally:
        _core.set_isa(best)
    assert_same(weights(model), solo)
    # and the per-call ISA gives that ISA's numbers
    np.testing.assert_array_equal(_core.gemm(A, B, isa="generic"), generic[0])


class FakeNet:
    threads = 0


@pytest.fixture
def fake(monkeypatch):
    """A controller on a fake clock and a 2-core machine: run(n) does n iterations whose
    seconds are speed[team], and returns the teams they ran on."""
    monkeypatch.setattr(_core, "max_threads", lambda: 2)
    monkeypatch.setattr(_core, "num_threads_fixed", lambda: False)
    ctl = T.ThreadController(FakeNet())
    ctl.enabled = True
    state = {"clock": 0.0, "speed": {1: 1.0, 2: 1.0}, "serial": False}

    def team():
        return 1 if state["serial"] else ctl.net.threads or 2
    monkeypatch.setattr(_core, "last_team", team)
    monkeypatch.setattr(T.time, "perf_counter", lambda: state["clock"])

    def run(n):
        teams = []
        for _ in range(n):
            t0 = ctl.start()
            teams.append(team())
            state["clock"] += state["speed"][teams[-1]]
            ctl.stop(t0)
        return teams
    return ctl, state, run


def test_the_controller_keeps_the_faster_team_and_follows_the_machine(fake):
    ctl, state, run = fake
    state["speed"] = {1: 1.0, 2: 3.0}  # a core taken by another process
    teams = run(200)
    assert ctl.team == 1 and teams[-1] == 1
    # a check costs two slow iterations (the untimed one and one timed), and the checks
    # together at most the budget of the time
    assert teams[:8] == [1] * 6 + [2] * 2
    extra = sum(state["speed"][t] - 1 for t in teams)
    assert 0 < extra <= ctl.budget * len(teams)
    state["speed"] = {1: 1.0, 2: 0.5}  # the machine quiet again
    teams = run(2000)
    assert ctl.team == 2 and teams[-100:].count(2) >= 98
    extra = sum(state["speed"][t] - 0.5 for t in teams[200:])
    assert extra <= ctl.budget * 0.5 * len(teams[200:])
    assert ctl.used() == 2
    # the chosen size slowing down by more than half is timed again at once
    state["speed"] = {1: 1.0, 2: 4.0}
    teams = run(30)
    assert ctl.team == 1 and teams[-5:] == [1] * 5


def test_the_controller_never_chooses_a_team_the_core_does_not_use(fake):
    ctl, state, run = fake
    state["serial"] = True  # a small iteration: the core keeps it on one thread
    run(50)
    assert ctl.team == 1 and ctl.net.threads == 1 and ctl.used() == 1


def test_blas_single_thread_limits_numpy_blas_and_restores_it():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()
              if i["user_api"] == "blas"}
    with T.blas_single_thread():
        inside = [i["num_threads"] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "blas"]
        assert inside and set(inside) == {1}
    after = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()
             if i["user_api"] == "blas"}
    assert after == before


def test_iterations_the_core_keeps_serial_are_not_timed_until_the_next_look(fake):
    ctl, state, run = fake
    state["serial"] = True
    run(20)  # one check: every candidate ran on one thread
    assert ctl.team == 1 and ctl._serial > 0
    calls = []
    real = _core.last_team
    _core.last_team = lambda: calls.append(1) or real()
    try:
        run(ctl.serial_interval - 100)
    finally:
        _core.last_team = real
    assert calls == [] and ctl.used() == 1
    # the iterations grow (a team now runs them): the next look finds the faster team
    state["serial"], state["speed"] = False, {1: 1.0, 2: 0.5}
    teams = run(300)
    assert ctl.team == 2 and teams[-100:].count(2) >= 90


def test_a_chosen_team_is_not_taken_for_a_serial_iteration_at_the_next_look(fake):
    ctl, state, run = fake
    state["speed"] = {1: 1.0, 2: 0.5}
    run(400)  # chosen: 2, then looked at again at least once
    assert ctl.team == 2 and ctl._serial == 0
