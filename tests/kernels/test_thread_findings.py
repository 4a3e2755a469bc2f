"""The thread controllers of a process share what their checks found: a new net (a new
estimator fit, a second model) starts at the team found recently for iterations of its
size, checks again when that finding expires, and follows a machine that becomes quiet.
The controller logic runs on a fake clock and fake nets; the real nets show that the
weights do not depend on what the controller chose."""

import warnings

import numpy as np
import pytest

import minitrain as mt
from minitrain import _core
from minitrain import threads as T

ROW_WORK = 1000  # multiply-adds per row of the fake nets
ROWS = 32


@pytest.fixture(autouse=True)
def no_findings():
    """Every test starts with nothing found, in auto mode, and leaves nothing behind."""
    before = mt.get_num_threads() if _core.num_threads_fixed() else "auto"
    mt.set_num_threads("auto")
    T.forget()
    yield
    T.forget()
    mt.set_num_threads(before)


class FakeNet:
    threads = 0


@pytest.fixture
def machine(monkeypatch):
    """A 2-core machine on a fake clock: ``run(ctl, n)`` does n iterations of `ctl` whose
    seconds are speed[team] (plus `wake` for the first iteration on a team after another
    one: a worker that slept), and returns the teams they ran on."""
    state = {"clock": 1000.0, "speed": {1: 1.0, 2: 1.0}, "wake": 0.0, "fixed": None,
             "serial": False, "current": None, "previous": None}
    monkeypatch.setattr(_core, "max_threads", lambda: 2)
    monkeypatch.setattr(T.time, "perf_counter", lambda: state["clock"])

    def team():
        if state["fixed"]:
            return state["fixed"]
        return 1 if state["serial"] else state["current"].threads or 2
    monkeypatch.setattr(_core, "last_team", team)

    def new(row_work=ROW_WORK):
        ctl = T.ThreadController(FakeNet(), row_work)
        ctl.enabled = True
        return ctl

    def run(ctl, n, rows=ROWS):
        teams = []
        for _ in range(n):
            t0 = ctl.start(rows)
            state["current"] = ctl.net
            teams.append(team())
            woke = teams[-1] > 1 and state["previous"] not in (None, teams[-1])
            state["clock"] += state["speed"][teams[-1]] + (state["wake"] if woke else 0.0)
            state["previous"] = teams[-1]
            ctl.stop(t0)
        return teams
    return state, new, run


def busy(state):
    state["speed"] = {1: 1.0, 2: 3.0}  # a core taken by another process


def quiet(state):
    state["speed"] = {1: 1.0, 2: 0.5}


def test_a_new_controller_starts_at_the_team_a_recent_check_found(machine):
    state, new, run = machine
    busy(state)
    first = run(new(), 20)
    assert first[:8] == [1] * 6 + [2] * 2  # the check: two slow iterations
    found = T.recall(3 * ROWS * ROW_WORK, state["clock"])
    assert found is not None and found.team == 1 and found.times[2] == 3.0
    # the next fit's new net: no check of its own, not one iteration on two threads
    second = new()
    assert run(second, 50) == [1] * 50
    assert second.team == 1 and second.net.threads == 1 and second.used() == 1


def test_an_old_finding_is_not_inherited(machine):
    state, new, run = machine
    busy(state)
    run(new(), 20)
    found = T.recall(3 * ROWS * ROW_WORK, state["clock"])
    state["clock"] = found.until + 1.0  # the check that made it would have been redone
    assert T.recall(3 * ROWS * ROW_WORK, state["clock"]) is None
    assert run(new(), 20)[:8] == [1] * 6 + [2] * 2


def test_a_finding_for_another_size_of_iteration_is_not_inherited(machine):
    state, new, run = machine
    busy(state)
    run(new(), 20)
    assert run(new(), 20, rows=4 * ROWS)[:8] == [1] * 6 + [2] * 2  # 4 times the work
    assert run(new(row_work=20 * ROW_WORK), 20)[:8] == [1] * 6 + [2] * 2
    # within a factor of two it is the same size
    assert run(new(), 20, rows=ROWS + ROWS // 2) == [1] * 20


def test_the_inherited_team_is_checked_again_when_the_finding_expires(machine):
    state, new, run = machine
    busy(state)
    run(new(), 20)
    found = T.recall(3 * ROWS * ROW_WORK, state["clock"])
    second = new()
    teams = run(second, 20)
    assert teams == [1] * 20
    # the clock passes the finding's time: the next window ends in a check
    state["clock"] = found.until
    teams = run(second, 20)
    assert teams.count(2) == 2 and second.team == 1
    renewed = T.recall(3 * ROWS * ROW_WORK, state["clock"])
    assert renewed.at > found.at and renewed.until > found.until and renewed.team == 1


def test_a_machine_that_becomes_quiet_gets_two_threads_back(machine):
    state, new, run = machine
    busy(state)
    run(new(), 20)
    second = new()
    assert run(second, 5) == [1] * 5  # inherited
    quiet(state)  # the other process ended
    teams = run(second, 500)
    # at most a check in the last 100: one thread given up after two iterations
    assert second.team == 2 and teams[-100:].count(2) >= 98
    # and the next new net starts on two threads at once
    assert run(new(), 30) == [2] * 30
    # a new net long after: its own check finds two threads too
    state["clock"] += 10 ** 6
    teams = run(new(), 30)
    assert teams[:6] == [1] * 6 and teams[-10:] == [2] * 10


def test_many_short_fits_spend_at_most_the_budget_on_checks(machine):
    state, new, run = machine
    busy(state)
    state["wake"] = 10.0  # the first iteration on two threads waits for the taken core
    teams = []
    for _ in range(100):  # 100 scikit-learn-style fits of 50 iterations, a new net each
        teams += run(new(), 50)
    extra = sum(state["speed"][t] - 1.0 for t in teams) + \
        state["wake"] * sum(1 for a, b in zip([1] + teams, teams) if b == 2 and a != 2)
    assert 0 < extra <= T.ThreadController.budget * len(teams)
    # each fit checking for itself would have spent 2 + 2 + 10 of every 50 iterations
    assert teams.count(2) < 2 * 100 / 4


def test_checks_that_keep_the_team_come_less_and_less_often(machine):
    state, new, run = machine
    busy(state)
    ctl = new()
    teams = run(ctl, 20000)
    starts = [i for i in range(1, len(teams)) if teams[i] == 2 and teams[i - 1] == 1]
    gaps = np.diff(starts)
    assert len(starts) >= 4 and (gaps[1:] >= gaps[:-1]).all() and gaps[-1] >= 2000
    assert gaps[-1] <= T.ThreadController.max_interval + 20


def test_a_fixed_count_finds_nothing_to_share(machine):
    state, new, run = machine
    state["fixed"] = 2  # set_num_threads(2): every candidate runs on two threads
    busy(state)
    ctl = new()
    run(ctl, 30)
    assert T.recall(3 * ROWS * ROW_WORK, state["clock"]) is None
    # an inherited team the core does not run (the count fixed meanwhile) is not kept
    state["fixed"] = None
    run(new(), 20)
    assert T.recall(3 * ROWS * ROW_WORK, state["clock"]).team == 1
    state["fixed"] = 2
    third = new()
    teams = run(third, 20)
    assert teams == [2] * 20 and third.team == 2 and third.inherited is None


def test_iterations_the_core_keeps_serial_find_nothing_to_share(machine):
    state, new, run = machine
    state["serial"] = True  # a small iteration: the core keeps it on one thread
    run(new(), 20)
    assert T.recall(3 * ROWS * ROW_WORK, state["clock"]) is None


def test_controllers_without_a_size_share_nothing(machine):
    state, new, run = machine
    busy(state)
    run(new(row_work=0), 20)
    assert T.recall(3 * ROWS * ROW_WORK, state["clock"]) is None
    assert T.recall(0, state["clock"]) is None


# ------------------------------------------------------------------ real nets

def _data(rows=512, features=200, classes=5):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(rows, features)).astype(np.float32),
            rng.integers(0, classes, rows))


def _plant(model, rows, team):
    """A fresh finding of `team` for iterations of `model` on `rows` rows."""
    work = 3.0 * rows * model._n_decay
    now = T.time.perf_counter()
    T.learn(T.Finding(work, team, {1: 1.0, 2: 1.0}, now, now + 3600.0))


def _fit(team, threads=None):
    X, y = _data()
    if threads is not None:
        mt.set_num_threads(threads)
    model = mt.Sequential([mt.Dense(128, activation="relu"), mt.Dropout(0.2),
                           mt.Dense(5)], seed=0)
    model.build(X.shape[1])
    if team is not None:
        _plant(model, 128, team)
    hist = model.fit(X, y, epochs=2, batch_size=128, verbose=0,
                     optimizer=mt.SGD(lr=0.05, momentum=0.9))
    mt.set_num_threads("auto")
    T.forget()
    return model.params_flat.copy(), hist.threads


def test_a_fit_trains_on_the_team_found_and_to_the_same_bits():
    one, _ = _fit(None, threads=1)
    for team in (1, 2):
        weights, used = _fit(team)
        assert used == [team, team]  # no check: a fresh finding for this size
        np.testing.assert_array_equal(weights, one)


def _digits():
    X, y = mt.load_digits()
    return X / 16.0, y


def _classifier(solver, **kw):
    from minitrain.sklearn import MLPClassifier
    return MLPClassifier((128,), solver=solver, batch_size=200, max_iter=8, tol=0.0,
                         random_state=0, **kw)


@pytest.mark.parametrize("solver", ["lbfgs", "adam", "sgd"])
def test_an_estimator_fits_to_the_same_bits_whatever_team_was_found(solver):
    pytest.importorskip("sklearn")
    X, y = _digits()
    fits = {}
    for team in (None, 1, 2):
        est = _classifier(solver)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # not converged; a batch clipped to 64 rows
            est.fit(X[:64], y[:64])  # builds the model; its check is forgotten below
            T.forget()
            if team is not None:
                rows = len(X) if solver == "lbfgs" else 200
                _plant(est._model, rows, team)
            est.fit(X, y)
        ctl = est._model._thread_control
        if team is not None:
            assert ctl.used() == team  # the whole fit on the team found
        fits[team] = [c.copy() for c in est.coefs_]
        T.forget()
    for team in (1, 2):
        for a, b in zip(fits[team], fits[None], strict=True):
            np.testing.assert_array_equal(a, b)


def test_every_estimator_path_goes_through_the_controller_and_one_blas_thread(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    pytest.importorskip("sklearn")
    from sklearn.exceptions import ConvergenceWarning
    calls = {"start": 0, "blas": [], "forward": 0}
    start, forward = T.ThreadController.start, T.ThreadController.forward_team

    def counted_start(self, rows=0):
        if calls["start"] % 50 == 0:  # what NumPy's and SciPy's BLAS may use meanwhile
            calls["blas"].append(max(i["num_threads"] for i in
                                     threadpoolctl.threadpool_info()
                                     if i["user_api"] == "blas"))
        calls["start"] += 1
        return start(self, rows)

    def counted_forward(self, rows):
        calls["forward"] += 1
        return forward(self, rows)
    monkeypatch.setattr(T.ThreadController, "start", counted_start)
    monkeypatch.setattr(T.ThreadController, "forward_team", counted_forward)
    X, y = _digits()
    for solver in ("lbfgs", "adam", "sgd"):
        est = _classifier(solver, early_stopping=solver != "lbfgs")
        calls["start"], calls["blas"] = 0, []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
        steps = est.n_iter_ if solver == "lbfgs" else est.n_iter_ * 9  # 1617 rows / 200
        assert calls["start"] >= steps and set(calls["blas"]) == {1}, solver
        if solver != "lbfgs":
            calls["start"], calls["blas"] = 0, []
            _classifier(solver).partial_fit(X, y, classes=np.unique(y))
            assert calls["start"] == 9 and set(calls["blas"]) == {1}
        calls["forward"] = 0
        est.predict(X)
        est.score(X, y)
        est.predict_proba(X[:5])
        assert calls["forward"] == 3


def test_an_inherited_team_that_became_slow_is_checked_at_once(machine):
    state, new, run = machine
    quiet(state)
    run(new(), 30)
    assert T.recall(3 * ROWS * ROW_WORK, state["clock"]).team == 2
    busy(state)  # a core taken since: two threads three times slower than found
    second = new()
    teams = run(second, 20)
    assert teams[:5] == [2] * 5 and 1 in teams[5:12] and second.team == 1
    assert T.recall(3 * ROWS * ROW_WORK, state["clock"]).team == 1


def test_a_passing_slowdown_does_not_hand_the_next_interval_to_a_slower_team(machine):
    state, new, run = machine
    quiet(state)
    ctl = new()
    run(ctl, 20)
    assert ctl.team == 2
    state["speed"] = {1: 1.0, 2: 2.0}  # a window of slow iterations (an epoch's end)
    run(ctl, ctl.probe)
    quiet(state)  # and the machine is as before
    # the check that the slowdown started times two threads again, as they are now,
    # rather than against their slow window, which one thread would beat
    teams = run(ctl, 100)
    assert ctl.team == 2 and teams.count(2) >= 90
