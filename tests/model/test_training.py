"""The one runner: its fit plan and its batch loop, driven by a policy."""

import numpy as np
import pytest

import minitrain as mt
from minitrain import training


def test_fit_plan_counts_iterations_and_batch_sizes_as_keras():
    plan = training.FitPlan(n_samples=100, batch_size=32, epochs=5, initial_epoch=2)
    assert plan.steps_per_epoch == 4
    np.testing.assert_array_equal(plan.batch_sizes(), [32, 32, 32, 4])
    assert plan.params() == {"epochs": 5, "batch_size": 32, "n_samples": 100,
                             "iterations_per_epoch": 4, "shuffle": True, "drop_last": False}
    dropped = training.FitPlan(n_samples=100, batch_size=32, epochs=1, drop_last=True)
    assert dropped.steps_per_epoch == 3
    np.testing.assert_array_equal(dropped.batch_sizes(), [32, 32, 32])
    with pytest.raises(ValueError, match="leaves no iteration"):
        training.FitPlan(n_samples=10, batch_size=32, epochs=1, drop_last=True)


class _Recorder(training.Policy):
    """A plain loop: rows in reverse order, a fixed rate, stop after `stop_after` epochs."""

    def __init__(self, stop_after):
        self.t, self.stop_after, self.seen, self.epochs = 0, stop_after, [], []

    def order(self, rows):
        return rows[::-1].copy()

    def rate(self):
        self.t += 1
        return 0.1, self.t, self.t - 1

    def iteration_end(self, runner, loss, lr, epoch, batch, start, stop):
        self.seen.append((epoch, batch, stop - start))

    def epoch_end(self, epoch, losses):
        self.epochs.append((epoch, len(losses)))
        self.stop_training = len(self.epochs) >= self.stop_after


def test_runner_runs_the_plan_until_the_policy_stops():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(10, 3)), rng.integers(0, 2, 10)
    model = mt.Sequential([mt.Dense(2)], seed=0, dtype="float64").build(3)
    model._use_optimizer(mt.SGD(lr=0.1))
    X, y = model._check_xy(X, y)
    plan = training.FitPlan(n_samples=10, batch_size=4, epochs=4, initial_epoch=1)
    policy = _Recorder(stop_after=2)
    training.Runner(model, plan, policy, X, y).run()
    assert policy.epochs == [(2, 3), (3, 3)]  # epochs 2 and 3; then the policy stopped
    assert policy.seen == [(2, 1, 4), (2, 2, 4), (2, 3, 2), (3, 1, 4), (3, 2, 4), (3, 3, 2)]
    # the same updates as train_step on the batches of the policy's order
    twin = mt.Sequential([mt.Dense(2)], seed=0, dtype="float64").build(3)
    rows = np.arange(10)[::-1]
    for _ in range(2):
        for start in range(0, 10, 4):
            twin.train_step(X[rows[start:start + 4]], y[rows[start:start + 4]],
                            optimizer=mt.SGD(lr=0.1) if twin.iteration == 0 else None)
    np.testing.assert_array_equal(model.params_flat, twin.params_flat)


def test_a_reduction_takes_dense_rows_without_sample_weight():
    model = mt.Sequential([mt.Dense(2)], seed=0).build(3)
    X, y = model._check_xy(np.zeros((4, 3)), np.zeros(4, dtype=np.int64))
    plan = training.FitPlan(n_samples=4, batch_size=2, epochs=1)
    with pytest.raises(NotImplementedError, match="without sample_weight"):
        training.Runner(model, plan, _Recorder(1), X, y, sample_weight=np.ones(4),
                        reduce=_OneRank(model))


class _OneRank:
    """The reduction of one rank (minitrain.distributed.Reducer's interface): the whole
    batch is its part; `change(grads)` stands for the all-reduce."""

    def __init__(self, model, change=None):
        self.model, self.change, self.seen = model, change, []

    def part(self, start, stop):
        return start, stop

    def sums(self, buf):
        pass

    def __call__(self, loss, err):
        if err is not None:
            raise err
        self.seen.append(np.abs(self.model.grads_flat).sum())
        if self.change is not None:
            self.change(self.model.grads_flat)
        return loss


def test_sequential_fit_and_the_sklearn_solvers_run_through_the_runner(monkeypatch):
    pytest.importorskip("sklearn")
    import ast
    import inspect

    from minitrain import sklearn as mt_sklearn
    seen = []
    real = training.Runner.run_epoch

    def counted(self, epoch):
        seen.append((type(self.policy).__name__, epoch))
        return real(self, epoch)

    monkeypatch.setattr(training.Runner, "run_epoch", counted)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    mt.Sequential([mt.Dense(2)], seed=0).fit(X, y, epochs=2, batch_size=8, verbose=0)
    with pytest.warns(Warning, match="Maximum iterations"):
        mt_sklearn.MLPClassifier((4,), solver="sgd", max_iter=3, tol=0.0, n_iter_no_change=99,
                                 random_state=0).fit(X, y)
    assert seen == [("KerasPolicy", 1), ("KerasPolicy", 2), ("_SklearnPolicy", 1),
                    ("_SklearnPolicy", 2), ("_SklearnPolicy", 3)]
    # and the scikit-learn front reaches into no model's backend
    tree = ast.parse(inspect.getsource(mt_sklearn))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "_net"]


def _seam_run(change, optimizer, backend="numpy", reduced=True):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    model = mt.Sequential([mt.Dense(6, activation="relu"), mt.BatchNorm(), mt.Dense(3)],
                          seed=0, dtype="float64", backend=backend).build(4)
    model._use_optimizer(optimizer)
    X, y = model._check_xy(X, y)
    plan = training.FitPlan(n_samples=30, batch_size=8, epochs=2)
    reduce = _OneRank(model, change) if reduced else None
    training.Runner(model, plan, _Recorder(2), X, y, reduce=reduce).run()
    return model, reduce


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_the_reduce_seam_sits_between_the_gradient_and_the_update(backend):
    fused, _ = _seam_run(None, mt.Adam(lr=0.01), backend, reduced=False)
    reduced, reduce = _seam_run(None, mt.Adam(lr=0.01), backend)
    assert len(reduce.seen) == 8 and all(s > 0 for s in reduce.seen)  # 2 epochs of 4
    for name in ("params_flat", "state_flat", "buffers_flat"):
        np.testing.assert_array_equal(getattr(reduced, name), getattr(fused, name))

    def zero(grads):  # what the update reads is the reduced gradient
        grads[...] = 0

    untouched, _ = _seam_run(zero, mt.SGD(lr=0.1), backend)
    start = mt.Sequential([mt.Dense(6, activation="relu"), mt.BatchNorm(), mt.Dense(3)],
                          seed=0, dtype="float64", backend=backend).build(4)
    np.testing.assert_array_equal(untouched.params_flat, start.params_flat)
