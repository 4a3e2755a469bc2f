"""The one training runner: a fit plan and the batch loop.

``Sequential.fit`` and the stochastic solvers of ``minitrain.sklearn`` both train through
``Runner``: shuffled index batches, one core step per batch, the epoch's losses. What a
front decides — the order of the rows, the learning rate of each update, what happens
after an iteration, after an epoch or on a non-finite loss, when to stop — is a
``Policy`` the runner is given: ``KerasPolicy`` (callbacks, History, ``max_time``) for
``Sequential.fit``, scikit-learn's rules in ``minitrain.sklearn``.

One iteration is "gradients are ready → (reduce) → update" in ``Runner.step``: with no
reduction the core computes the gradient and updates in one pass (the fast path); with a
``reduce`` (``minitrain.distributed.Reducer``, the all-reduce of a distributed fit) the
rank computes the gradient of its part of the batch, the gradient is reduced in place,
then applied by the backend's ``update(lr, t)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
import warnings
from typing import Any

import numpy as np

from . import distributed, evaluation, optimizers, threads
from ._validation import check_int, check_number, check_targets, check_X
from .callbacks import CallbackList, ConvergenceCheck, EpochLine, ProgressBar
from .history import History

# training-set metrics use at most this many rows, evenly spaced, as scikit-learn's
# HistGradientBoosting scores training data: their cost stays bounded on large sets
_TRAIN_METRIC_ROWS = 10_000


@dataclasses.dataclass
class FitPlan:
    """The layout of one fit, in Keras' words.

    Epochs are numbered from 1 and cumulative over fits: the run trains epochs
    ``initial_epoch + 1`` to ``epochs``, each of ``steps_per_epoch`` iterations over
    ``n_samples`` rows in batches of ``batch_size`` (the last one smaller unless
    ``drop_last``).
    """

    n_samples: int
    batch_size: int
    epochs: int
    initial_epoch: int = 0
    shuffle: bool = True
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.steps_per_epoch == 0:
            raise ValueError("drop_last=True with batch_size > n_samples leaves no iteration")

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_last:
            return self.n_samples // self.batch_size
        return math.ceil(self.n_samples / self.batch_size)

    def batch_sizes(self) -> np.ndarray:
        """Rows of each iteration of an epoch (float64, for weighted means)."""
        sizes = np.full(self.steps_per_epoch, self.batch_size, dtype=np.float64)
        if not self.drop_last:
            sizes[-1] = self.n_samples - self.batch_size * (self.steps_per_epoch - 1)
        return sizes

    def params(self) -> dict:
        """The run's settings as callbacks and History see them."""
        return {"epochs": self.epochs, "batch_size": self.batch_size,
                "n_samples": self.n_samples, "iterations_per_epoch": self.steps_per_epoch,
                "shuffle": self.shuffle, "drop_last": self.drop_last}


class Policy:
    """A front's decisions about a fit; the defaults are those of a plain loop."""

    stop_training = False

    def order(self, rows: np.ndarray) -> np.ndarray:
        """The rows of the next epoch, in the order of its batches."""
        return rows

    def rate(self) -> tuple[float, int, int]:
        """(learning rate, Adam's 1-based step t, iteration keying the dropout masks) of
        the next update."""
        raise NotImplementedError

    def epoch_begin(self, epoch: int) -> None:
        pass

    def updated(self) -> None:
        """Right after each update, under the model's lock (its counters)."""

    def iteration_end(self, runner: Runner, loss: float, lr: float, epoch: int, batch: int,
                      start: int, stop: int) -> None:
        """After the update of batch `batch` (1-based) of `epoch`, rows start:stop of
        the epoch's order; outside the model's lock (callbacks may use the model)."""

    def diverged(self, runner: Runner, err: FloatingPointError, epoch: int,
                 batch: int) -> float:
        """The core refused a non-finite loss at batch `batch`: raise, or retry the
        batch on another net (``runner.use_net``) and return its loss."""
        raise err

    def epoch_end(self, epoch: int, losses: np.ndarray) -> None:
        """After an epoch (`losses`: one per iteration, fewer when stopped)."""


class Runner:
    """Trains `model` over X, y (rows `rows` of them; all when None) as `plan` lays out
    and `policy` decides. X may be sparse (``toarray``): its batches are made dense one at
    a time; dense X is handed to the core once and its rows gathered there."""

    def __init__(self, model: Any, plan: FitPlan, policy: Policy, X: Any, y: np.ndarray,
                 sample_weight: np.ndarray | None = None, rows: np.ndarray | None = None,
                 reduce: distributed.Reducer | None = None) -> None:
        self.model, self.plan, self.policy = model, plan, policy
        self.X, self.y, self.sample_weight = X, y, sample_weight
        self.rows = np.arange(plan.n_samples, dtype=np.int64) if rows is None else rows
        self.sparse = hasattr(X, "toarray")
        # the seam of a distributed fit: each rank's part of a batch, the all-reduce of the
        # gradient, then the backend's update(lr, t)
        if reduce is not None and (sample_weight is not None or self.sparse):
            raise NotImplementedError("a distributed fit takes dense X without sample_weight")
        self.reduce = reduce
        # every call that uses the model's workspace holds its lock (see Sequential)
        self.lock = model._lock
        # times the iterations to choose the thread count (set_num_threads("auto"))
        self.controller = threads.controller(model)
        with self.lock:
            model._net.reserve(plan.batch_size)
            self.use_net(model._net)

    def use_net(self, net: Any) -> None:
        """Train with `net` (a backend over the model's buffers) from the next step."""
        self.net = net
        if self.sparse:
            self._step_rows = self._sparse_step
        else:  # the core gathers the rows of each batch
            net.set_data(self.X, self.y, self.sample_weight)
            self._step_rows = net.step_rows

    def _sparse_step(self, idx, start, stop, lr, t, update=True, iteration=0):
        rows = idx[start:stop]
        w = None if self.sample_weight is None else self.sample_weight[rows]
        return self.net.step(self.X[rows].toarray(), self.y[rows], lr, t, update, iteration,
                             sample_weight=w)

    def step(self, order: np.ndarray, start: int, stop: int, lr: float, t: int,
             iteration: int) -> float:
        """One iteration on rows order[start:stop]: gradients → (reduce) → update."""
        if self.reduce is None:  # the core updates in the pass that computes the gradient
            return self._step_rows(order, start, stop, lr, t, iteration=iteration)
        lo, hi = self.reduce.part(start, stop)  # this rank's rows of the global batch
        self.net.set_shard(lo - start, stop - start, stop - start, self.reduce.sums)
        err, loss = None, 0.0
        try:
            loss = self._step_rows(order, lo, hi, 0.0, 0, False, iteration=iteration)
        except (ValueError, FloatingPointError) as e:  # raised below, on every rank
            err = e
        loss = self.reduce(loss, err)  # sums grads_flat; raises a rank's error on every rank
        self.net.update(lr, t)
        return loss

    def run_epoch(self, epoch: int) -> np.ndarray:
        """The iterations of one epoch; returns their losses (fewer when stopped)."""
        policy, plan = self.policy, self.plan
        order = policy.order(self.rows)
        n, batch_size, steps = len(self.rows), plan.batch_size, plan.steps_per_epoch
        losses = np.empty(steps)
        done = 0
        lock, ctl = self.lock, self.controller
        while done < steps and not policy.stop_training:
            start = done * batch_size
            stop = min(start + batch_size, n)
            with lock:
                lr, t, iteration = policy.rate()
                t0 = ctl.start()
                try:
                    loss = self.step(order, start, stop, lr, t, iteration)
                except FloatingPointError as err:
                    self._retry = (order, start, stop, lr, t, iteration)
                    loss = policy.diverged(self, err, epoch, done + 1)
                ctl.stop(t0)
                policy.updated()
            losses[done] = loss
            done += 1
            policy.iteration_end(self, loss, lr, epoch, done, start, stop)
        return losses[:done]

    def retry(self) -> float:
        """The step that raised, again (on the net ``use_net`` gave)."""
        return self.step(*self._retry)

    def run(self) -> None:
        """Epochs ``initial_epoch + 1`` to ``epochs``, until the policy stops."""
        try:
            for epoch in range(self.plan.initial_epoch + 1, self.plan.epochs + 1):
                self.policy.epoch_begin(epoch)
                losses = self.run_epoch(epoch)
                if losses.size == 0:  # stopped before the epoch's first iteration
                    break
                self.policy.epoch_end(epoch, losses)
                if self.policy.stop_training:
                    break
        finally:
            self.model._net.clear_data()  # do not keep the training set alive
            if self.reduce is not None:
                self.net.set_shard()  # later steps are one process's


# ------------------------------------------------------------- Sequential.fit

class KerasPolicy(Policy):
    """``Sequential.fit``'s decisions: the model's generator permutes the rows every
    epoch, the optimizer (and its schedule) gives each update's rate, callbacks run,
    History records, ``max_time`` and callbacks stop."""

    def __init__(self, model, fit, reducer=None):
        self.model, self.fit, self.reducer = model, fit, reducer
        self.optimizer = fit.optimizer
        self.on_iteration = fit.callbacks.on_iteration_end
        self.sizes = fit.plan.batch_sizes()
        self.deadline = None  # set when the run starts

    @property
    def stop_training(self):
        return self.model.stop_training

    def order(self, rows):
        return rows[self.model.rng.permutation(len(rows))] if self.fit.plan.shuffle else rows

    def rate(self):
        lr = self.optimizer.next_lr()
        return lr, self.optimizer.iterations + 1, self.model.iteration

    def epoch_begin(self, epoch):
        self.fit.callbacks.call("on_epoch_begin", epoch)
        self.start_time = time.perf_counter()

    def updated(self):
        self.optimizer.iterations += 1
        self.model.iteration += 1

    def iteration_end(self, runner, loss, lr, epoch, batch, start, stop):
        model = self.model
        if self.on_iteration:
            logs = {"loss": loss, "lr": lr, "epoch": epoch, "batch": batch}
            for fn in self.on_iteration:
                fn(model.iteration, logs)
        # in a distributed fit every rank stops at the iteration where one rank's clock
        # passed the deadline (the all-reduce carried it), or the ranks would part
        if self.deadline is not None and (self.reducer.late if self.reducer is not None
                                          else time.perf_counter() >= self.deadline):
            model.stop_training, model.stop_reason = True, "max_time"

    def diverged(self, runner, err, epoch, batch):
        raise FloatingPointError(
            f"training diverged at epoch {epoch}, iteration {batch} "
            f"(iteration {self.model.iteration + 1} overall): {err}; the weights of the "
            f"last finite iteration are kept. Lower the learning rate, or "
            f"standardise a regression target whose scale is large.") from None

    def epoch_end(self, epoch, losses):
        self.model.epoch = epoch
        logs = self.epoch_logs(losses)
        self.model.history.record_epoch(epoch, losses, logs)
        self.model.history.threads.append(threads.controller(self.model).used())
        self.fit.callbacks.call("on_epoch_end", epoch, logs)

    def epoch_logs(self, losses):
        """loss (sample-weighted mean over the epoch's iterations), metrics on the
        training rows, validation loss and metrics, lr, time."""
        fit, model, reducer = self.fit, self.model, self.reducer
        sizes = self.sizes[:len(losses)]
        logs = {"loss": float(np.dot(losses, sizes) / sizes.sum())}
        # a distributed fit: each rank evaluates a part of the rows
        evaluate = model._evaluate_rows if reducer is None else functools.partial(
            reducer.evaluate_rows, model)
        if fit.metric_names:
            logs.update(evaluate(fit.X, fit.y, fit.metric_rows, fit.metric_names,
                                 with_loss=False))
        if fit.validation is not None:
            val = evaluate(*fit.validation, fit.metric_names)
            logs.update(("val_" + k, v) for k, v in val.items())
        elapsed = time.perf_counter() - self.start_time
        logs.update(lr=self.optimizer.lr,
                    time=elapsed if reducer is None else reducer.maximum(elapsed))
        return logs


@dataclasses.dataclass
class _Fit:
    """One checked ``Sequential.fit`` call: its data, plan and settings."""

    X: object
    y: object
    rows: object
    plan: FitPlan
    optimizer: object
    saved: object
    seed: object
    metric_names: list
    metric_rows: object
    validation: object
    callbacks: CallbackList
    max_time: object


def validation_set(model, X, y, validation_data, validation_split):
    """(training rows or None, (X_val, y_val, rows of them or None) or None)."""
    if validation_data is not None and validation_split is not None:
        raise ValueError("pass validation_data or validation_split, not both")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a tuple (X_val, y_val)")
        Xv = check_X(validation_data[0], model.dtype, X.shape[1], name="validation_data X")
        yv = check_targets(validation_data[1], model.loss, model.n_outputs, Xv.shape[0],
                           model.dtype, name="validation_data y")
        return None, (Xv, yv, None)
    if validation_split is not None:
        stratify = model.loss == "cross_entropy" or (
            model.loss == "binary_cross_entropy" and y.shape[1] == 1)
        train, val = evaluation.holdout(y, validation_split, stratify)
        return train, (X, y, val)
    return None, None


def plan_fit(model, X, y, epochs, batch_size, optimizer, shuffle, drop_last, seed, verbose,
             validation_data, validation_split, metrics, callbacks, tol, n_iter_no_change,
             max_time, saved, resume_from):
    """Check every argument of ``Sequential.fit`` and lay the run out, changing nothing.
    `saved` is the state read from the checkpoint at `resume_from`, or None."""
    if optimizer is not None:
        optimizer = optimizers.get(optimizer)
    if saved is not None and resume_conflicts(saved, model):
        # another architecture: the data cannot even be checked against it
        check_resumable(saved, model, optimizer, resume_from)
    X, y = model._check_xy(X, y, saved["config"]["n_features_in"] if saved else None)
    epochs = check_int("epochs", epochs, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    verbose = check_int("verbose", int(verbose) if isinstance(verbose, bool) else verbose, 0)
    if seed is not None:
        seed = check_int("seed", seed, 0)
    if max_time is not None:
        max_time = check_number("max_time", max_time, 0, low_open=True)
    metric_names = evaluation.resolve(metrics, model.loss)
    train_rows, validation = validation_set(model, X, y, validation_data, validation_split)
    n = X.shape[0] if train_rows is None else len(train_rows)
    if batch_size > n:
        warnings.warn(f"batch_size={batch_size} is larger than the {n} samples; "
                      f"it is clipped to {n}", UserWarning, stacklevel=4)
        batch_size = n
    shuffle, drop_last = bool(shuffle), bool(drop_last)
    if saved is not None:
        check_resumable(saved, model, optimizer, resume_from, n_samples=n,
                        batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)
        optimizer = optimizer or saved_optimizer(saved)
    optimizer = optimizer or model.optimizer
    optimizer.upcoming_lr()  # a schedule's bad first rate is refused before the run
    first = saved["epoch"] if saved is not None else model.epoch
    plan = FitPlan(n_samples=n, batch_size=batch_size,
                   epochs=epochs if saved is not None else model.epoch + epochs,
                   initial_epoch=first, shuffle=shuffle, drop_last=drop_last)
    params = plan.params()
    extra = [ConvergenceCheck(tol, n_iter_no_change)] if tol is not None else []
    if verbose:
        extra.append(ProgressBar() if verbose == 1 and sys.stderr.isatty() else EpochLine())
    cbs = CallbackList(list(callbacks or []) + extra, model, params)
    log_keys = {"loss", "lr", "time", *metric_names}
    if validation is not None:
        log_keys |= {"val_" + k for k in ("loss", *metric_names)}
    cbs.check_fit(log_keys, optimizer)

    rows = np.arange(n, dtype=np.int64) if train_rows is None else train_rows
    metric_rows = train_rows
    if n > _TRAIN_METRIC_ROWS:
        metric_rows = rows[np.linspace(0, n - 1, _TRAIN_METRIC_ROWS).astype(np.int64)]
    return _Fit(X=X, y=y, rows=rows, plan=plan, optimizer=optimizer, saved=saved, seed=seed,
                metric_names=metric_names, metric_rows=metric_rows, validation=validation,
                callbacks=cbs, max_time=max_time)


def fit(model: Any, X: Any, y: Any, *, resume_from: Any = None, comm: Any = None,
        **settings: Any) -> History:
    """``Sequential.fit``: check, lay out, then train through the runner (over the ranks
    of `comm`, an mpi4py communicator, when given)."""
    if comm is None:
        return _fit(model, _checked_fit(model, X, y, resume_from, settings))
    comm = distributed.check_comm(comm)
    settings = distributed.rank_settings(comm, settings)
    run, err = None, None
    try:
        run = _checked_fit(model, X, y, resume_from, settings)
        distributed.check_plan(comm, model, run.plan)
    except Exception as e:  # agreed on with the other ranks, which raise it too
        err = e
    distributed.agree(comm, err, None if run is None else distributed.fingerprint(run, model))
    distributed.share_model(comm, model)
    with distributed.quiet_logger(comm):
        return _fit(model, run, comm)


def _checked_fit(model, X, y, resume_from, settings):
    from . import checkpoint
    saved = checkpoint.read(resume_from) if resume_from is not None else None
    return plan_fit(model, X, y, saved=saved, resume_from=resume_from, **settings)


def _fit(model, run, comm=None):
    # every argument is checked: from here on the model changes
    model._begin_fit(run)
    reducer = None if comm is None else distributed.Reducer(comm, model)
    policy = KerasPolicy(model, run, reducer)
    model.stop_training, model.stop_reason = False, None
    run.callbacks.call("on_train_begin")
    run.callbacks.set_states(model._saved_callback_states if run.saved is not None else {})
    policy.deadline = None if run.max_time is None else time.perf_counter() + run.max_time
    if reducer is not None:
        reducer.deadline = policy.deadline
    Runner(model, run.plan, policy, run.X, run.y, rows=run.rows, reduce=reducer).run()
    model.history.stop_reason = (model.stop_reason or "callback") if model.stop_training \
        else "completed"
    run.callbacks.call("on_train_end")
    return model.history


# ----------------------------------------------------------------------- resume

# the settings of a fit that shape its batches: a resumed run must keep them to continue
# the saved run exactly (History.params records them; older checkpoints lack some)
RUN_SETTINGS = ("batch_size", "shuffle", "drop_last", "n_samples")


def saved_optimizer(state):
    """The optimizer of the run `state` (``get_state()``, a checkpoint) describes, with
    its update count."""
    config = dict(state["optimizer"])
    iterations = int(config.pop("iterations"))
    optimizer = optimizers.from_config(config)
    optimizer.iterations = iterations
    return optimizer


def resume_conflicts(saved, model, optimizer=None, **settings):
    """The settings in which resuming `saved` (a state from ``get_state()`` or
    ``checkpoint.read``, or a loaded model) with `model` (possibly unbuilt), `optimizer`
    (None: the saved one) and the fit `settings` (names in RUN_SETTINGS) would not
    continue the saved run, as a list of ``(name, saved value, requested value)``; empty
    when it would."""
    from .checkpoint import _layer
    state = saved if isinstance(saved, dict) else saved.get_state()
    conflicts = []
    mine, theirs = model._config(), state["config"]
    if not model.built:
        mine["n_features_in"] = theirs["n_features_in"]
    for key in ("layers", "loss", "dtype", "n_features_in"):
        if mine[key] != theirs[key]:
            shown = (model.layers, [_layer(c) for c in theirs["layers"]]) if key == "layers" \
                else (mine[key], theirs[key])
            conflicts.append((key, shown[1], shown[0]))
    if optimizer is not None:
        before = saved_optimizer(state)
        old, new = before.get_config(), optimizer.get_config()
        if old["class"] != new["class"]:
            conflicts.append(("optimizer", before, optimizer))
        else:
            old_lr = before.lr_schedule or old["lr"]
            new_lr = optimizer.lr_schedule or new["lr"]
            conflicts.extend((key, old_lr, new_lr) if key == "lr" else (key, old[key], new[key])
                             for key in old if key != "class" and old[key] != new.get(key))
    params = state["history"]["params"] if state["history"] is not None else {}
    for key in RUN_SETTINGS:
        if key in settings and key in params and settings[key] != params[key]:
            conflicts.append((key, params[key], settings[key]))
    return conflicts


def describe_conflicts(conflicts, names=None):
    """'name X in the checkpoint, Y here; ...' for `resume_conflicts`' list; `names`
    renames settings (the command line shows its options)."""
    names = names or {}
    return "; ".join(f"{names.get(key, key)} {old!r} in the checkpoint, {new!r} here"
                     for key, old, new in conflicts)


def check_resumable(saved, model, optimizer, path="the checkpoint", **settings):
    """Raise ValueError, listing every conflicting setting, unless resuming `saved`
    with `model`, `optimizer` and the fit `settings` continues the saved run exactly
    (see resume_conflicts)."""
    conflicts = resume_conflicts(saved, model, optimizer, **settings)
    if conflicts:
        hint = ("; pass optimizer=None to continue with the saved optimizer"
                if any(key not in RUN_SETTINGS + ("layers", "loss", "dtype", "n_features_in")
                       for key, _, _ in conflicts) else "")
        raise ValueError(f"resume_from: {path} holds a run that these settings would not "
                         f"continue exactly: {describe_conflicts(conflicts)}{hint}. Resume with "
                         f"the saved settings (more epochs are fine), or start a new run")
