"""Callbacks: code that runs at fixed points of ``fit``, with Keras' vocabulary.

Epochs and iterations are numbered from 1 and cumulative over fits, like
``History.epoch`` and ``model.iteration``. ``fit`` finds once, before its loop,
which callbacks override ``on_iteration_end``: when none does, an iteration costs
nothing more than without callbacks.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from typing import IO, Any

from ._validation import check_int, check_number

logger = logging.getLogger("minitrain")

_HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
          "on_iteration_end")


class Callback:
    """Base class; override the hooks you need.

    ``self.model`` is the model being trained and ``self.params`` the run's settings
    (``epochs`` — the epoch number training stops at —, ``batch_size``,
    ``iterations_per_epoch``, ``n_samples``). Set ``self.model.stop_training = True``
    to stop after the current iteration.

    Callbacks whose decisions depend on the past (``EarlyStopping``...) return that
    past from ``get_state``; checkpoints store it so that a resumed run decides
    exactly as the uninterrupted one would.

    Examples
    --------
    >>> import minitrain as mt
    >>> class PrintLoss(mt.Callback):
    ...     def on_epoch_end(self, epoch, logs=None):
    ...         print(epoch, logs["loss"])
    """

    model = None
    params = None

    def set_model(self, model: Any) -> None:
        """Attach the model being trained (``fit`` calls it before training).

        Parameters
        ----------
        model : Sequential
            Available to the hooks as ``self.model``.
        """
        self.model = model

    def set_params(self, params: dict) -> None:
        """Pass the run's settings (``fit`` calls it before training).

        Parameters
        ----------
        params : dict
            ``epochs``, ``batch_size``, ``iterations_per_epoch``, ``n_samples``;
            available to the hooks as ``self.params``.
        """
        self.params = params

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Called once when ``fit`` starts, before the first epoch.

        Parameters
        ----------
        logs : dict or None
            Unused (None); kept for Keras' signature.
        """

    def on_train_end(self, logs: dict | None = None) -> None:
        """Called once when ``fit`` ends, however it stopped.

        Parameters
        ----------
        logs : dict or None
            Unused (None); kept for Keras' signature.
        """

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Called at the start of every epoch.

        Parameters
        ----------
        epoch : int
            The epoch about to run (1-based, cumulative over fits).
        logs : dict or None
            Unused (None); kept for Keras' signature.
        """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Called at the end of every epoch, after validation.

        Parameters
        ----------
        epoch : int
            The epoch just run (1-based, cumulative over fits).
        logs : dict
            ``loss``, the metrics, their ``val_`` twins, ``lr`` and ``time``.
        """

    def on_iteration_end(self, iteration: int, logs: dict | None = None) -> None:
        """Called after every iteration, only for callbacks that override it.

        Parameters
        ----------
        iteration : int
            The iteration just run (1-based, cumulative over fits, as
            ``model.iteration``).
        logs : dict
            The iteration's ``loss`` and ``lr``, its ``epoch`` and its ``batch``
            (1-based position within the epoch).
        """

    def check_fit(self, log_keys: set[str], optimizer: Any) -> None:
        """Raise ValueError before training if this callback cannot work with this fit.

        Parameters
        ----------
        log_keys : set of str
            The names the fit logs every epoch (``loss``, ``val_loss``, ...).
        optimizer : Optimizer
            The optimizer the fit updates with.
        """

    def get_state(self) -> dict:
        """What a checkpoint keeps of this callback.

        Returns
        -------
        dict
            JSON values and numpy arrays; empty for callbacks without a past.
        """
        return {}

    def set_state(self, state: dict) -> None:
        """Restore what ``get_state`` returned (when a fit resumes from a checkpoint).

        Parameters
        ----------
        state : dict
            A dict returned by ``get_state``.
        """

    def stop(self, reason: str) -> None:
        """Ask fit to stop after the current iteration.

        Parameters
        ----------
        reason : str
            Goes to ``History.stop_reason``.
        """
        self.model.stop_training = True
        self.model.stop_reason = reason


def _overrides(callback, hook):
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class CallbackList:
    """The callbacks of one fit, in order; ModelCheckpoints run after the others so a
    checkpoint holds the other callbacks' state of the same epoch."""

    def __init__(self, callbacks, model, params):
        callbacks = list(callbacks or [])
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be minitrain Callback instances, got "
                                f"{type(cb).__name__}")
        self.callbacks = sorted(callbacks, key=lambda cb: isinstance(cb, ModelCheckpoint))
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params(params)
        self.hooks = {hook: [getattr(cb, hook) for cb in self.callbacks if _overrides(cb, hook)]
                      for hook in _HOOKS}
        # the iteration hooks, for the loop's one truth test per iteration
        self.on_iteration_end = self.hooks["on_iteration_end"]

    def call(self, hook, *args):
        for fn in self.hooks[hook]:
            fn(*args)

    def check_fit(self, log_keys, optimizer):
        for cb in self.callbacks:
            cb.check_fit(log_keys, optimizer)

    def _keys(self):
        seen = {}
        for cb in self.callbacks:
            name = type(cb).__name__
            seen[name] = seen.get(name, 0) + 1
            yield (name if seen[name] == 1 else f"{name}{seen[name]}"), cb

    def get_states(self):
        return {key: state for key, cb in self._keys() if (state := cb.get_state())}

    def set_states(self, states):
        for key, cb in self._keys():
            if key in states:
                cb.set_state(states[key])


# ---------------------------------------------------------------- monitoring

def _mode(monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if monitor.endswith(("accuracy", "r2")) else "min"
    return mode


def _nonneg(name, value):
    return check_number(name, value)


def _count(name, value):
    return check_int(name, value, 0)


class _Monitor(Callback):
    """Tracks the best value of one logged quantity."""

    def __init__(self, monitor, mode, min_delta):
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a log name such as 'val_loss', got {monitor!r}")
        self.monitor = monitor
        self.mode = _mode(monitor, mode)
        self.min_delta = _nonneg("min_delta", min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf

    def check_fit(self, log_keys, optimizer):
        if self.monitor not in log_keys:
            hint = " (pass validation_data or validation_split)" \
                if self.monitor.startswith("val_") else ""
            raise ValueError(f"{type(self).__name__}: monitor {self.monitor!r} is not logged "
                             f"by this fit{hint}; logged: {sorted(log_keys)}")

    def improved(self, current):
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta

    def get_state(self):
        return {"best": self.best}

    def set_state(self, state):
        self.best = state["best"]


class EarlyStopping(_Monitor):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience`
    epochs (Keras' semantics).

    Parameters
    ----------
    monitor : str, default "val_loss"
        A name the fit logs: ``loss``, ``val_loss``, ``val_accuracy``, ...
    patience : int, default 0
        Epochs without improvement before stopping.
    min_delta : float, default 0.0
        A change of at most `min_delta` is no improvement.
    mode : {"auto", "min", "max"}, default "auto"
        Whether lower or higher is better; ``"auto"`` maximises names ending in
        ``accuracy`` or ``r2`` and minimises the others.
    restore_best_weights : bool, default False
        End training with the weights of the best epoch (the optimizer state stays
        that of the last epoch, as in Keras).

    Attributes
    ----------
    best : float
        The best value of `monitor` so far.
    best_epoch, stopped_epoch : int
        The epoch of `best`, and the epoch training stopped at (0 if it did not).

    Examples
    --------
    >>> import minitrain as mt
    >>> stop = mt.EarlyStopping(patience=5, restore_best_weights=True)
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0,
                 min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = False) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = _count("patience", patience)
        self.restore_best_weights = bool(restore_best_weights)
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        """Each fit starts afresh (a resumed one then gets its saved state back)."""
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = self.best_epoch = self.stopped_epoch = 0
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        if self.improved(logs[self.monitor]):
            self.best, self.best_epoch, self.wait = logs[self.monitor], epoch, 0
            if self.restore_best_weights:
                self.best_weights = {k: a.copy() for k, a in self.model.get_weights().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.stop("early_stopping")
            logger.debug("early stopping at epoch %d: %s did not improve for %d epochs "
                         "(best %.6g at epoch %d)", epoch, self.monitor, self.wait,
                         self.best, self.best_epoch)

    def on_train_end(self, logs=None):
        if self.best_weights is not None and self.best_epoch != self.model.epoch:
            self.model.set_weights(self.best_weights)
            logger.debug("restored the weights of epoch %d", self.best_epoch)

    def get_state(self):
        return {**super().get_state(), "wait": self.wait, "best_epoch": self.best_epoch,
                "best_weights": self.best_weights}

    def set_state(self, state):
        super().set_state(state)
        self.wait, self.best_epoch = state["wait"], state["best_epoch"]
        self.best_weights = state["best_weights"]


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by `factor` when `monitor` has not improved for
    `patience` epochs, then wait `cooldown` epochs before watching again (Keras'
    semantics). Works on optimizers with a constant learning rate; the new rate is in
    the optimizer's config, so checkpoints keep it.

    Parameters
    ----------
    monitor : str, default "val_loss"
        A name the fit logs.
    factor : float in (0, 1), default 0.1
        The learning rate is multiplied by it.
    patience : int, default 10
        Epochs without improvement before reducing.
    min_delta : float, default 1e-4
        A change of at most `min_delta` is no improvement.
    cooldown : int, default 0
        Epochs to wait after a reduction before counting again.
    min_lr : float, default 0.0
        The rate is never reduced below it.
    mode : {"auto", "min", "max"}, default "auto"
        As for EarlyStopping.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0,
                 mode: str = "auto") -> None:
        super().__init__(monitor, mode, min_delta)
        self.factor = check_number("factor", factor, 0, low_open=True, high=1, high_open=True)
        self.patience = _count("patience", patience)
        self.cooldown = _count("cooldown", cooldown)
        self.min_lr = _nonneg("min_lr", min_lr)
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        """Each fit starts afresh (a resumed one then gets its saved state back)."""
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = self.cooldown_counter = 0

    def check_fit(self, log_keys, optimizer):
        super().check_fit(log_keys, optimizer)
        if optimizer.lr_schedule is not None:
            raise ValueError("ReduceLROnPlateau needs an optimizer with a constant learning "
                             "rate, not a schedule")

    def on_epoch_end(self, epoch, logs=None):
        current = logs[self.monitor]
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.improved(current):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            opt = self.model.optimizer
            if self.wait >= self.patience and opt.lr > self.min_lr:
                opt.lr = max(opt.lr * self.factor, self.min_lr)
                self.cooldown_counter, self.wait = self.cooldown, 0
                logger.debug("epoch %d: learning rate reduced to %.6g", epoch, opt.lr)

    def get_state(self):
        return {**super().get_state(), "wait": self.wait,
                "cooldown_counter": self.cooldown_counter}

    def set_state(self, state):
        super().set_state(state)
        self.wait, self.cooldown_counter = state["wait"], state["cooldown_counter"]


class ConvergenceCheck(Callback):
    """scikit-learn's stopping rule for runs without validation (``fit(tol=...)``):
    an epoch whose training loss is not below the best so far minus `tol` counts as
    no improvement; training stops once more than `n_iter_no_change` consecutive
    epochs did not improve."""

    def __init__(self, tol=1e-4, n_iter_no_change=10):
        self.tol = _nonneg("tol", tol)
        self.n_iter_no_change = check_int("n_iter_no_change", n_iter_no_change, 1)
        self.best = math.inf
        self.no_improvement = 0

    def on_epoch_end(self, epoch, logs=None):
        loss = logs["loss"]
        self.no_improvement = self.no_improvement + 1 if loss > self.best - self.tol else 0
        self.best = min(self.best, loss)
        if self.no_improvement > self.n_iter_no_change:
            self.stop("converged")

    def get_state(self):
        return {"best": self.best, "no_improvement": self.no_improvement}

    def set_state(self, state):
        self.best, self.no_improvement = state["best"], state["no_improvement"]


# ------------------------------------------------------------------- writers

class ModelCheckpoint(_Monitor):
    """Save the model (``model.save``: atomic, never a half-written file) at the end of
    every epoch, or only when `monitor` improved with `save_best_only`.

    A checkpoint holds the whole training state, so ``fit(resume_from=path)``
    continues the run bit-identically.

    Parameters
    ----------
    path : str or os.PathLike
        The file written; it may hold ``{epoch}`` and log names, e.g.
        ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``.
    monitor : str, default "val_loss"
        A name the fit logs; used with `save_best_only`.
    save_best_only : bool, default False
        Save only the epochs where `monitor` improved.
    mode : {"auto", "min", "max"}, default "auto"
        As for EarlyStopping.
    """

    def __init__(self, path: str | os.PathLike, monitor: str = "val_loss",
                 save_best_only: bool = False, mode: str = "auto") -> None:
        super().__init__(monitor, mode, 0.0)
        self.path = os.fspath(path)
        self.save_best_only = bool(save_best_only)

    def check_fit(self, log_keys, optimizer):
        if self.save_best_only:
            super().check_fit(log_keys, optimizer)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_best_only:
            if not self.improved(logs[self.monitor]):
                return
            self.best = logs[self.monitor]
        self.model.save(self.path.format(epoch=epoch, **logs))


class _FileLogger(Callback):
    def __init__(self, path: str | os.PathLike, append: bool = False) -> None:
        self.path = os.fspath(path)
        self.append = bool(append)
        self.file = None

    def on_train_begin(self, logs=None):
        self.file = open(self.path, "a" if self.append else "w", newline="")

    def on_epoch_end(self, epoch, logs=None):
        self.write({"epoch": epoch, **logs})
        self.file.flush()

    def on_train_end(self, logs=None):
        self.file.close()


class CSVLogger(_FileLogger):
    """One CSV row per epoch: ``epoch`` then the logs (``loss``, metrics, ``val_*``,
    ``lr``, ``time``), after a header row.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file.
    separator : str, default ","
        The field delimiter.
    append : bool, default False
        Add rows after the existing ones (for resumed runs) instead of overwriting;
        the header is written only to an empty file.
    """

    def __init__(self, path: str | os.PathLike, separator: str = ",",
                 append: bool = False) -> None:
        super().__init__(path, append)
        self.separator = separator
        self.writer = None

    def on_train_begin(self, logs=None):
        write_header = not (self.append and os.path.exists(self.path)
                            and os.path.getsize(self.path) > 0)
        super().on_train_begin(logs)
        self.writer = csv.writer(self.file, delimiter=self.separator)
        self.write_header = write_header

    def write(self, row):
        if self.write_header:
            self.writer.writerow(row)
            self.write_header = False
        self.writer.writerow(row.values())


class JSONLogger(_FileLogger):
    """One JSON object per line and epoch (JSON Lines), with the keys of CSVLogger.

    Parameters
    ----------
    path : str or os.PathLike
        The JSON Lines file.
    append : bool, default False
        Add lines after the existing ones (for resumed runs) instead of overwriting.
    """

    def write(self, row):
        self.file.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------ progress

def format_logs(logs):
    parts = [f"{k} {v:.4g}" if k == "lr" else f"{k} {v:.4f}"
             for k, v in logs.items() if k != "time"]
    return " · ".join(parts)


class EpochLine(Callback):
    """One line per epoch (``fit(verbose=2)``, or ``verbose=1`` off a terminal), written
    to `stream` (standard output by default).

    The line is written, not logged, as Keras writes its progress: it then looks the
    same whatever the application's logging set-up, and is never shown twice (once by
    a handler of the library, once by the application's). The ``minitrain`` logger
    keeps the events (early stopping, learning-rate changes) at DEBUG level.
    """

    def __init__(self, stream=None):
        self.line_stream = stream

    def on_epoch_end(self, epoch, logs=None):
        line = (f"Epoch {epoch}/{self.params['epochs']} · {self.params['iterations_per_epoch']} "
                f"it · {format_logs(logs)} · {logs['time']:.2f} s")
        # sys.stdout looked up now: it may have been replaced since the fit began
        print(line, file=self.line_stream or sys.stdout, flush=True)


class ProgressBar(EpochLine):
    """What ``fit(verbose=1)`` shows on an interactive terminal: a bar per epoch with
    the iteration within the epoch, the running loss, the learning rate and the speed
    (tqdm when installed, else a one-line fallback), then the epoch's line.

    Parameters
    ----------
    stream : file object, optional
        Where both are written; by default the bar goes to standard error and the
        line to standard output.
    """

    _REFRESH = 0.1  # seconds between redraws, so drawing never slows training down

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream)
        self.stream = stream or sys.stderr
        self._tqdm = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.loss_sum, self.done, self.shown = 0.0, 0, 0
        self.start = self.last = time.perf_counter()
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._tqdm = tqdm(total=self.params["iterations_per_epoch"], leave=False,
                          file=self.stream, unit="it",
                          desc=f"Epoch {epoch}/{self.params['epochs']}")

    def on_iteration_end(self, iteration, logs=None):
        self.loss_sum += logs["loss"]
        self.done += 1
        now = time.perf_counter()
        if now - self.last >= self._REFRESH or self.done == self.params["iterations_per_epoch"]:
            self.last = now
            self._draw(now, logs["lr"])

    def _draw(self, now, lr):
        status = f"loss {self.loss_sum / self.done:.4f} · lr {lr:.3g}"
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(status, refresh=False)
            self._tqdm.update(self.done - self.shown)
            self._tqdm.refresh()  # tqdm's own throttle could skip the epoch's last state
        else:
            total = self.params["iterations_per_epoch"]
            width = 24
            filled = width * self.done // total
            speed = self.done / max(now - self.start, 1e-9)
            self.stream.write(f"\rEpoch {self.epoch}/{self.params['epochs']} "
                              f"{self.done}/{total} [{'=' * filled}{' ' * (width - filled)}] "
                              f"{status} · {speed:.0f} it/s ")
            self.stream.flush()
        self.shown = self.done

    def on_epoch_end(self, epoch, logs=None):
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        else:
            self.stream.write("\r\033[K")
            self.stream.flush()
        super().on_epoch_end(epoch, logs)
