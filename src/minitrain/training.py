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

``Trainer`` is the training surface ``Sequential`` inherits (``fit``, ``train_step``,
``loss_and_gradient``, the optimizer's binding to the backend), as Keras' ``Model``
inherits its own from a trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import checkpoint, distributed, evaluation, optimizers, schedules, threads
from ._validation import check_int, check_number, check_targets, check_X
from .backends import make_net
from .callbacks import Callback, CallbackList, ConvergenceCheck, EpochLine, ProgressBar
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
    # True when no code but the library's runs from one iteration's update to the next
    # iteration of the epoch (``rate`` and ``iteration_end`` included), so that nothing
    # can write the weights in between: the runner then lets the core reuse what the update
    # packed of them (mixed_bfloat16). False whenever a user's function may run there.
    quiet = False

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
        self.unchanged = False
        # times the iterations to choose the thread count (set_num_threads("auto"))
        self.controller = threads.controller(model)
        with self.lock:
            model._net.reserve(plan.batch_size)
            self.use_net(model._net)

    def use_net(self, net: Any) -> None:
        """Train with `net` (a backend over the model's buffers) from the next step."""
        self.net = net
        # a core net of mixed_bfloat16 keeps copies of the weights packed by its updates,
        # which its next step may read when the runner vouches that nothing wrote the
        # weights in between (self.unchanged); a new net has not updated them yet
        self.marks = bool(getattr(net, "packs_weights", False)) and not self.sparse
        self.unchanged = False
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
             iteration: int, pack: bool = False) -> float:
        """One iteration on rows order[start:stop]: gradients → (reduce) → update (which
        with `pack` writes the weights' copies for the next step: ``use_net``)."""
        # self.unchanged is for this step only: whatever happens next, the following step
        # has it only if the loop says so again
        mark = {"unchanged": self.unchanged, "pack": pack} if self.marks else {}
        self.unchanged = False
        if self.reduce is None:  # the core updates in the pass that computes the gradient
            return self._step_rows(order, start, stop, lr, t, iteration=iteration, **mark)
        lo, hi = self.reduce.part(start, stop)  # this rank's rows of the global batch
        self.net.set_shard(lo - start, stop - start, stop - start, self.reduce.sums)
        err, loss = None, 0.0
        try:
            loss = self._step_rows(order, lo, hi, 0.0, 0, False, iteration=iteration, **mark)
        except (ValueError, FloatingPointError) as e:  # raised below, on every rank
            err = e
        loss = self.reduce(loss, err)  # sums grads_flat; raises a rank's error on every rank
        try:
            self.net.update(lr, t)
        except FloatingPointError:  # the same summed gradient on every rank: all raise it
            self.reduce.agreed = True
            raise
        return loss

    def run_epoch(self, epoch: int) -> np.ndarray:
        """The iterations of one epoch; returns their losses (fewer when stopped)."""
        policy, plan = self.policy, self.plan
        order = policy.order(self.rows)
        n, batch_size, steps = len(self.rows), plan.batch_size, plan.steps_per_epoch
        losses = np.empty(steps)
        done = 0
        # looked up once: an iteration of the digits fit takes 20 us, each lookup 20 ns
        lock, ctl, rate, updated = self.lock, self.controller, policy.rate, policy.updated
        iteration_end = policy.iteration_end
        fused = self.reduce is None  # the core updates in the pass that computes the gradient
        # the epoch's first step follows the epoch's callbacks (and whatever ran since the
        # last fit): only a step right after another of this loop, with nothing but the
        # library's code in between, is told that the weights are as the update left them
        quiet, follows = policy.quiet, False
        while done < steps and not policy.stop_training:
            start = done * batch_size
            stop = start + batch_size if start + batch_size < n else n
            with lock:
                lr, t, iteration = rate()
                t0 = ctl.start(stop - start)
                try:
                    # `step` without its frame (the net may change: use_net), unless the
                    # net keeps weight copies that the step must be told about
                    if fused and not self.marks:
                        loss = self._step_rows(order, start, stop, lr, t, True, iteration)
                    else:
                        self.unchanged = quiet and follows
                        # the copies are worth writing for a next step of this loop
                        loss = self.step(order, start, stop, lr, t, iteration,
                                         pack=quiet and done + 1 < steps)
                    follows = True
                except FloatingPointError as err:
                    follows = False
                    self._retry = (order, start, stop, lr, t, iteration)
                    loss = policy.diverged(self, err, epoch, done + 1)
                ctl.stop(t0)
                updated()
            losses[done] = loss
            done += 1
            iteration_end(self, loss, lr, epoch, done, start, stop)
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
        # between iterations run the iteration callbacks (as Keras, only those that
        # override the hook) and the optimizer's rate (its schedule): quiet when every one
        # is the library's own, none of which writes the weights
        schedule = self.optimizer.lr_schedule
        self.quiet = (all(type(getattr(fn, "__self__", None)) is ProgressBar
                          for fn in self.on_iteration)
                      and type(self.optimizer).__module__ == optimizers.__name__
                      and (schedule is None or type(schedule).__module__ == schedules.__name__))

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
        if self.reducer is not None:  # a callback may stop one rank alone
            self.reducer.stop(self.model)
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
            if self.reducer is not None:  # so may an iteration callback
                self.reducer.stop(model)
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
        if self.reducer is not None:  # so may an epoch callback
            self.reducer.stop(self.model)

    def epoch_logs(self, losses):
        """loss (sample-weighted mean over the epoch's iterations), metrics on the
        training rows, validation loss and metrics, lr, time."""
        fit, model, reducer = self.fit, self.model, self.reducer
        sizes = self.sizes[:len(losses)]
        logs = {"loss": float(np.dot(losses, sizes) / sizes.sum())}
        # a distributed fit: each rank evaluates a part of the rows
        evaluate = evaluation.evaluate_rows if reducer is None else reducer.evaluate_rows
        if fit.metric_names:
            logs.update(evaluate(model, fit.X, fit.y, fit.metric_rows, fit.metric_names,
                                 with_loss=False))
        if fit.validation is not None:
            val = evaluate(model, *fit.validation, fit.metric_names)
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
                      f"it is clipped to {n}", UserWarning, stacklevel=3)
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


class Trainer:
    """The training surface of a model (``fit``, ``train_step``, ``loss_and_gradient``)
    and its binding to the backend, as Keras' ``Model`` inherits it from its trainer.

    The model brings its structure: ``build``, ``_check_xy``, ``_require_built``, its flat
    buffers, counters, generator, ``optimizer``, ``history`` and ``_lock``, and the state
    API (``set_state``) a resume uses.
    """

    def _set_reduction(self, name):
        """How the batch loss is reduced: ``"mean"`` or ``"sklearn"`` (scikit-learn's)."""
        self._reduction = name
        self._net.set_reduction(name)

    def _bind_update(self, kind, **core_args):
        """Make the backend update with optimizer `kind` and the backend's
        ``set_optimizer`` arguments (weight decay over the weights unless `n_decay`)."""
        core_args.setdefault("n_decay", self._n_decay)
        self._net.set_optimizer(kind, **core_args)
        self._update_args = (kind, core_args)

    def _twin(self, finite_only=True):
        """The NumPy backend's network over this model's buffers, set up as its own is;
        `finite_only=False` makes it update through a non-finite loss."""
        net = make_net("numpy", self.dtype_policy, self.loss, self._layer_spec,
                       self.params_flat, self.grads_flat, self.state_flat,
                       self.buffers_flat, self.dropout_seed)
        net.set_reduction(self._reduction)
        net.reserve(self._net.max_batch)
        net.finite_only = finite_only
        kind, core_args = self._update_args
        net.set_optimizer(kind, **core_args)
        return net

    def _gradient(self, X, y, sample_weight=None, weight_decay=0.0):
        """(batch loss, L2 term of its loss) of the core-ready X, y (unchecked), the
        gradient with scikit-learn's L2 penalty `weight_decay` left in ``grads_flat``;
        nothing is updated."""
        with self._lock:
            self._bind_update(optimizers.GRADIENT_KIND, weight_decay=weight_decay,
                              style=optimizers.STYLE_SKLEARN)
            self._net.reserve(X.shape[0])
            ctl = threads.controller(self)
            t0 = ctl.start(X.shape[0])
            # the "update" of the gradient kind only adds the penalty to the gradient
            loss = self._net.step(X, y, 0.0, 0, True, sample_weight=sample_weight)
            ctl.stop(t0)
            return loss, self._net.l2_term

    def _use_optimizer(self, optimizer):
        """Make `optimizer` the one the backend updates with; a new optimizer starts
        from fresh state."""
        optimizer = optimizers.get(optimizer if optimizer is not None else self.optimizer)
        if optimizer is not self._net_optimizer:
            if self._net_optimizer is not None:
                self.state_flat[:] = 0
            n_decay = self.params_flat.size if optimizer.decay_all else self._n_decay
            self._bind_update(optimizer.kind, n_decay=n_decay, **optimizer.core_args())
            self._net_optimizer = optimizer
        self.optimizer = optimizer
        return optimizer

    def fit(self, X: ArrayLike, y: ArrayLike, epochs: int = 1, batch_size: int = 32,
            optimizer: optimizers.Optimizer | str | None = None, shuffle: bool = True,
            drop_last: bool = False, seed: int | None = None, verbose: int = 1,
            validation_data: tuple[ArrayLike, ArrayLike] | None = None,
            validation_split: float | None = None,
            metrics: str | Sequence[str] | None = "auto",
            callbacks: Sequence[Callback] | None = None, tol: float | None = None,
            n_iter_no_change: int = 10, max_time: float | None = None,
            resume_from: str | os.PathLike | None = None, comm: Any = None) -> History:
        """Train for `epochs` epochs of shuffled mini-batches.

        One epoch is ``ceil(N / batch_size)`` iterations (``floor`` with
        ``drop_last=True``); one iteration is a forward pass, a backward pass and an
        update on one batch. The rows are permuted afresh every epoch when `shuffle`.
        X may be memory-mapped (``np.load(path, mmap_mode="r")``) in the model's dtype:
        batches are gathered from it row by row, it is never loaded whole.

        Every argument is checked before anything changes: a rejected call leaves the
        model as it was.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The inputs, converted to the model's dtype.
        y : array-like
            Targets: class labels 0 .. n_outputs-1 of shape (n_samples,) for
            ``cross_entropy``; values of shape (n_samples,) or (n_samples, n_outputs)
            for ``mse`` and ``poisson``, and in [0, 1] (usually 0/1) for
            ``binary_cross_entropy``.
        epochs : int >= 0, default 1
            Epochs to train, added to those already trained (with `resume_from`: the
            epoch number to train up to).
        batch_size : int >= 1, default 32
            Rows per iteration; clipped, with a warning, to the number of training
            rows.
        optimizer : Optimizer or str, optional
            The optimizer of this fit and of later calls (default: the model's). A new
            optimizer starts from fresh state; passing the same instance again
            continues its momentum or moments.
        shuffle : bool, default True
            Permute the rows afresh every epoch (with the model's generator); False
            takes them in order.
        drop_last : bool, default False
            Skip an epoch's last batch when it is smaller than `batch_size`, so every
            iteration has `batch_size` rows.
        seed : int, optional
            Reseed the model's generator before training, so the batch order is that
            of this seed (the initial weights of an unbuilt model still come from the
            model's `seed`); None continues the generator's stream.
        verbose : {0, 1, 2}, default 1
            0 prints nothing; 1 shows a progress bar on interactive terminals and a line
            per epoch; 2 a line per epoch. The lines go to standard output, written
            rather than logged, so the logging set-up changes nothing about them.
        validation_data : (X_val, y_val), optional
            Evaluated at the end of every epoch (``val_loss`` and ``val_`` metrics).
        validation_split : float in (0, 1), optional
            Hold out the last fraction of the rows of each class (of all rows for
            regression) as validation data, before training.
        metrics : "auto", list of str, or None
            Metrics logged per epoch besides the loss, on the training rows and the
            validation data: ``"auto"`` is ``accuracy`` for classification, ``r2`` for
            mse and none for poisson; see ``minitrain.evaluation.METRICS``. Training-set
            metrics are computed at the end of each epoch on the training rows (at most
            10,000 of them, evenly spaced), an inference pass; ``None`` skips them.
        callbacks : list of Callback, optional
            Called at fixed points of training (``EarlyStopping``, ``ModelCheckpoint``,
            ``CSVLogger``, ...), in order (``ModelCheckpoint`` after the others, so a
            checkpoint holds their state of the same epoch).
        tol : float, optional
            Stop as scikit-learn's MLP does when the training loss has not improved by
            at least `tol` for more than `n_iter_no_change` epochs (None: no such rule).
        n_iter_no_change : int >= 1, default 10
            The patience of the `tol` rule, in epochs.
        max_time : float, optional
            Stop after the first iteration that ends more than `max_time` seconds after
            the start; the epoch it cuts short is recorded.
        resume_from : path, optional
            Continue the run saved at this checkpoint (``save`` or ``ModelCheckpoint``):
            weights, optimizer state, counters, random generator, history and callback
            state are restored and training runs from the saved epoch up to epoch
            `epochs` (here `epochs` counts the total, as Keras' ``initial_epoch``). The
            result is bit-identical to the uninterrupted run; `seed` is then ignored.
            Anything else that would change the run is refused, before anything changes,
            by a ValueError listing each conflicting setting: the architecture, the
            optimizer's kind and hyper-parameters (pass ``optimizer=None`` to continue
            with the saved one), `batch_size`, `shuffle`, `drop_last`, and the number of
            training rows.
        comm : mpi4py communicator, optional
            Train data-parallel over its ranks (``MPI.COMM_WORLD`` under ``mpiexec``):
            every rank calls ``fit`` with the same arguments and data; `batch_size` is the
            global batch, each rank computes the gradient of a contiguous part of it, and
            one all-reduce per iteration gives every rank the weights one process would
            reach, to rounding. Only rank 0 prints and writes files; see
            ``minitrain.distributed``.

        Returns
        -------
        History
            One entry per epoch in ``history`` (``loss``, the metrics, their ``val_``
            twins, ``lr``, ``time``), the loss of every iteration in
            ``iteration_loss``, and ``iterations_per_epoch`` and ``stop_reason``.

        Raises
        ------
        ValueError, TypeError
            For bad input, before the model changes.
        FloatingPointError
            When the loss or the gradient stops being finite; the weights of the last
            finite iteration are kept.

        Examples
        --------
        >>> import minitrain as mt
        >>> X, y = mt.load_digits()
        >>> model = mt.Sequential([mt.Dense(128, activation="relu"), mt.Dense(10)], seed=0)
        >>> hist = model.fit(X / 16, y, epochs=3, batch_size=32, verbose=0,
        ...                  optimizer=mt.SGD(lr=0.05, momentum=0.9), validation_split=0.2)
        >>> hist.iterations_per_epoch, sorted(hist.history)
        (45, ['accuracy', 'loss', 'lr', 'time', 'val_accuracy', 'val_loss'])
        """
        settings = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                        shuffle=shuffle, drop_last=drop_last, seed=seed, verbose=verbose,
                        validation_data=validation_data, validation_split=validation_split,
                        metrics=metrics, callbacks=callbacks, tol=tol,
                        n_iter_no_change=n_iter_no_change, max_time=max_time)

        def plan(settings):
            saved = checkpoint.read(resume_from) if resume_from is not None else None
            return plan_fit(self, X, y, saved=saved, resume_from=resume_from, **settings)

        if comm is None:
            return self._train(plan(settings))
        # every rank checks its own call, then all agree: all train, or all raise
        run = distributed.start(comm, self, plan, settings)
        with distributed.quiet_logger(comm):
            return self._train(run, distributed.Reducer(comm))

    def _train(self, run, reducer=None):
        # every argument is checked: from here on the model changes
        self._begin_fit(run)
        if reducer is not None:
            reducer.bind(self)
        policy = KerasPolicy(self, run, reducer)
        self.stop_training, self.stop_reason = False, None
        run.callbacks.call("on_train_begin")
        run.callbacks.set_states(self._saved_callback_states if run.saved is not None else {})
        policy.deadline = None if run.max_time is None else time.perf_counter() + run.max_time
        if reducer is not None:
            reducer.deadline = policy.deadline
        with contextlib.nullcontext() if reducer is None else reducer.guard():
            Runner(self, run.plan, policy, run.X, run.y, rows=run.rows, reduce=reducer).run()
        self.history.stop_reason = (self.stop_reason or "callback") if self.stop_training \
            else "completed"
        run.callbacks.call("on_train_end")
        return self.history

    def _resume(self, state, optimizer):
        """Become the model of the run `state` describes (on this model's backend), to
        continue it with `optimizer`, which holds the saved one's settings."""
        self.set_state({**state, "config": {**state["config"], "backend": self.backend}})
        # the saved update count goes on (Adam's step, a schedule's position)
        optimizer.iterations = self.optimizer.iterations
        self.optimizer = optimizer
        self._net_optimizer = None  # the saved state_flat belongs to this optimizer

    def _begin_fit(self, run):
        if run.saved is not None:
            self._resume(run.saved, run.optimizer)
        elif not self.built:
            self.build(run.X.shape[1])
        if run.seed is not None and run.saved is None:
            self.rng = np.random.default_rng(run.seed)
        with self._lock:
            run.optimizer = self._use_optimizer(run.optimizer)
        if run.saved is None or self.history is None:
            self.history = History(run.plan.params())
        self.history.params = run.plan.params()
        self._callbacks = run.callbacks

    def train_step(self, X: ArrayLike, y: ArrayLike,
                   optimizer: optimizers.Optimizer | str | None = None) -> float:
        """One iteration (forward, backward, update) on the batch X, y.

        For users who keep their own loop; counts towards ``iteration`` (not ``epoch``).
        Builds the model on first use.

        Parameters
        ----------
        X : array-like of shape (batch, n_features)
            The batch's inputs.
        y : array-like
            The batch's targets, as for ``fit``.
        optimizer : Optimizer or str, optional
            As for ``fit`` (default: the model's).

        Returns
        -------
        float
            The mean loss of the batch, before the update.
        """
        X, y = self._check_xy(X, y)
        opt = optimizers.get(optimizer if optimizer is not None else self.optimizer)
        with self._lock:
            lr = opt.next_lr()  # a schedule's bad rate is refused before the model changes
            if not self.built:
                self.build(X.shape[1])
            if opt is not self._net_optimizer:  # else the backend updates with it already
                self._use_optimizer(opt)
            self.optimizer = opt
            net = self._net
            net.reserve(X.shape[0])
            ctl = threads.controller(self)
            t0 = ctl.start(X.shape[0])
            loss = net.step(X, y, lr, opt.iterations + 1, iteration=self.iteration)
            ctl.stop(t0)
            opt.iterations += 1
            self.iteration += 1
        return loss

    def loss_and_gradient(self, X: ArrayLike, y: ArrayLike) -> tuple[float, np.ndarray]:
        """The mean loss on X, y and its gradient, without updating anything.

        Training mode: dropout draws the masks of the next iteration, batch norm uses
        the batch statistics.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The inputs.
        y : array-like
            The targets, as for ``fit``.

        Returns
        -------
        loss : float
            The mean loss.
        gradient : numpy.ndarray
            Its gradient, a copy laid out like ``params_flat``.
        """
        X, y = self._check_xy(X, y)
        self._require_built()
        with self._lock:
            self._net.reserve(X.shape[0])
            loss = self._net.step(X, y, 0.0, 0, False, iteration=self.iteration)
            return loss, self.grads_flat.copy()


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
    state = saved if isinstance(saved, dict) else saved.get_state()
    conflicts = []
    mine, theirs = model._config(), state["config"]
    if not model.built:
        mine["n_features_in"] = theirs["n_features_in"]
    for key in ("layers", "loss", "dtype", "n_features_in"):
        if mine[key] != theirs[key]:
            shown = (model.layers, [checkpoint._layer(c) for c in theirs["layers"]]) if key == "layers" \
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
