"""Sequential: a stack of layers trained by mini-batch gradient descent."""

import logging
import math
import numbers
import sys
import time
import types
import warnings

import numpy as np

from . import checkpoint, evaluation, optimizers
from . import functional as F
from . import threads
from ._validation import check_int, check_targets, check_X
from .backends import make_net
from .callbacks import CallbackList, ConvergenceCheck, EpochLine, ProgressBar
from .history import History
from .layers import Dense, Layer

logger = logging.getLogger("minitrain")

_PREDICT_BATCH = 1024
# training-set metrics use at most this many rows, evenly spaced, as scikit-learn's
# HistGradientBoosting scores training data: their cost stays bounded on large sets
_TRAIN_METRIC_ROWS = 10_000
_FLOAT_DTYPES = (np.float32, np.float64)
_FUSED_OUTPUT = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}


class _Run(types.SimpleNamespace):
    """The layout of one fit: its checked data, rows, batches, epochs and callbacks."""


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _ensure_console_logging():
    """With verbose > 0 and no logging set up by the application, show INFO lines."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


class Sequential:
    """A multi-layer perceptron: layers applied in order, trained with ``fit``.

    Parameters
    ----------
    layers : list of Layer
        The input width is taken from the data on the first ``fit`` (or ``build``).
    loss : str
        ``cross_entropy`` (softmax over the last layer, integer labels), ``mse``,
        ``binary_cross_entropy`` (sigmoid over each output, 0/1 targets), or ``poisson``
        (counts; the prediction is exp of the last layer's output).
    seed : int or None
        Seeds the one ``numpy.random.Generator`` behind initialisation and shuffling.
    dtype : ``"float32"`` or ``"float64"``
    backend : ``"c"`` (default) or ``"numpy"`` (the pure-NumPy reference)
    optimizer : Optimizer or str
        The default optimizer of ``fit`` and ``train_step`` (``SGD(lr=0.01)``).

    Attributes
    ----------
    params_flat, grads_flat, state_flat : numpy.ndarray
        All parameters, their gradients and the optimizer state, each one flat array;
        every layer's ``W`` and ``b`` are views into ``params_flat``.
    buffers_flat : numpy.ndarray
        Non-trainable state, one flat array: the BatchNorm running statistics.
    dropout_seed : int
        Keys the dropout masks with the iteration: `seed`, or drawn from the generator
        when `seed` is None.
    epoch, iteration : int
        Epochs and iterations trained so far.
    history : History or None
        The record of the current (or last) fit; checkpoints keep it.
    """

    def __init__(self, layers=None, loss="cross_entropy", seed=None, dtype="float32",
                 backend="c", optimizer=None):
        self.layers = []
        for layer in layers or []:
            self.add(layer)
        name = F.LOSS_ALIASES.get(loss, loss)
        if name not in F.LOSSES:
            raise ValueError(f"loss must be one of {sorted(F.LOSSES)}, got {loss!r}")
        if np.dtype(dtype) not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
        self.loss = name
        self.seed = seed
        self.dtype = np.dtype(dtype)
        self.backend = backend
        self.optimizer = optimizers.get(optimizer or optimizers.SGD())
        self.rng = np.random.default_rng(seed)
        self.dropout_seed = seed
        self.epoch = 0
        self.iteration = 0
        self.n_features_in_ = None
        self.history = None
        self.stop_training = False
        self.stop_reason = None
        self._net = None
        self._net_optimizer = None
        self._callbacks = None
        self._saved_callback_states = {}

    # ---------------------------------------------------------------- structure
    def add(self, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"layers must be minitrain layers, got {type(layer).__name__}")
        if self.built:
            raise ValueError("cannot add layers to a built model")
        self.layers.append(layer)

    @property
    def built(self):
        return getattr(self, "_net", None) is not None

    @property
    def n_outputs(self):
        return self.layers[-1].units if self.layers else None

    def _check_structure(self):
        if not self.layers or not isinstance(self.layers[-1], Dense):
            raise ValueError("a model needs at least one layer and must end with a Dense layer")
        out_act = self.layers[-1].activation
        allowed = {"cross_entropy": ("identity", "softmax"),
                   "binary_cross_entropy": ("identity", "sigmoid")}.get(self.loss)
        if allowed and out_act not in allowed:
            raise ValueError(f"the last layer of a {self.loss} model must output logits "
                             f"(activation {' or '.join(map(repr, allowed))}), got {out_act!r}")
        if any(isinstance(l, Dense) and l.activation == "softmax" for l in self.layers[:-1]) or (
                out_act == "softmax" and self.loss != "cross_entropy"):
            raise ValueError("softmax is only supported on the last layer with cross_entropy")

    def build(self, n_features):
        """Allocate the flat buffers and initialise the weights for `n_features` inputs."""
        n_features = check_int("n_features", n_features, 1)
        self._check_structure()
        width = n_features
        for layer in self.layers:
            width = layer.build(width)
        # weights first, then biases, gammas and betas: weight decay applies to
        # params_flat[:n_decay]
        n_weights = sum(l.n_weights for l in self.layers)
        n_params = sum(l.n_params for l in self.layers)
        self.params_flat = np.zeros(n_params, dtype=self.dtype)
        self.grads_flat = np.zeros(n_params, dtype=self.dtype)
        self.state_flat = np.zeros(2 * n_params, dtype=self.dtype)
        self.buffers_flat = np.zeros(sum(l.n_buffers for l in self.layers), dtype=self.dtype)
        self._n_decay = n_weights
        spec, w_off, p_off, s_off = [], 0, n_weights, 0
        for layer in self.layers:
            spec.append(layer.bind(self.params_flat, w_off, p_off, self.buffers_flat, s_off,
                                   self.rng))
            w_off += layer.n_weights
            p_off += layer.n_params - layer.n_weights
            s_off += layer.n_buffers
        # a softmax / sigmoid output is fused into its loss, which takes logits
        if self.layers[-1].activation == _FUSED_OUTPUT.get(self.loss):
            spec[-1]["act"] = F.ACTIVATIONS["identity"]
        if self.dropout_seed is None:
            self.dropout_seed = int(self.rng.integers(2**63))
        self.n_features_in_ = n_features
        self._net = make_net(self.backend, self.dtype, F.LOSSES[self.loss], spec,
                             self.params_flat, self.grads_flat, self.state_flat,
                             self.buffers_flat, self.dropout_seed)
        self._net_optimizer = None
        return self

    def _use_optimizer(self, optimizer):
        """Make `optimizer` the one the backend updates with; a new optimizer starts
        from fresh state."""
        optimizer = optimizers.get(optimizer if optimizer is not None else self.optimizer)
        if optimizer is not self._net_optimizer:
            if self._net_optimizer is not None:
                self.state_flat[:] = 0
            self._net.set_optimizer(optimizer.kind, n_decay=self._n_decay,
                                    **optimizer.core_args())
            self._net_optimizer = optimizer
        self.optimizer = optimizer
        return optimizer

    # --------------------------------------------------------------- validation
    def _check_xy(self, X, y):
        X = check_X(X, self.dtype, self.n_features_in_)
        if not self.built:
            self._check_structure()
        y = check_targets(y, self.loss, self.n_outputs, X.shape[0], self.dtype)
        return X, y

    # ----------------------------------------------------------------- training
    def fit(self, X, y, epochs=1, batch_size=32, optimizer=None, shuffle=True,
            drop_last=False, seed=None, verbose=1, validation_data=None,
            validation_split=None, metrics="auto", callbacks=None, tol=None,
            n_iter_no_change=10, max_time=None, resume_from=None):
        """Train for `epochs` epochs of shuffled mini-batches; returns a History.

        One epoch is ``ceil(N / batch_size)`` iterations (``floor`` with
        ``drop_last=True``); one iteration is a forward pass, a backward pass and an
        update on one batch. The rows are permuted afresh every epoch when `shuffle`.
        X may be memory-mapped (``np.load(path, mmap_mode="r")``) in the model's dtype:
        batches are gathered from it row by row, it is never loaded whole.

        Parameters
        ----------
        validation_data : (X_val, y_val), optional
            Evaluated at the end of every epoch (``val_loss`` and ``val_`` metrics).
        validation_split : float in (0, 1), optional
            Hold out the last fraction of the rows of each class (of all rows for
            regression) as validation data, before training.
        metrics : "auto", list of str, or None
            Metrics logged per epoch besides the loss, on the training rows and the
            validation data: ``"auto"`` is ``accuracy`` for classification and ``r2`` for
            regression; see ``minitrain.evaluation.METRICS``. Training-set metrics are
            computed at the end of each epoch on the training rows (at most 10,000 of
            them, evenly spaced), an inference pass; ``None`` skips them.
        callbacks : list of Callback
        tol, n_iter_no_change : float, int
            With `tol` set, stop as scikit-learn's MLP does when the training loss has
            not improved by at least `tol` for more than `n_iter_no_change` epochs.
        max_time : float, optional
            Stop after the first iteration that ends more than `max_time` seconds after
            the start; the epoch it cuts short is recorded.
        resume_from : path, optional
            Continue the run saved at this checkpoint (``save`` or ``ModelCheckpoint``):
            weights, optimizer state, counters, random generator, history and callback
            state are restored and training runs from the saved epoch up to epoch
            `epochs` (here `epochs` counts the total, as Keras' ``initial_epoch``). The
            result is bit-identical to the uninterrupted run; `seed` is then ignored.
        verbose : 0, 1 or 2
            0 prints nothing; 1 shows a progress bar on interactive terminals and a line
            per epoch; 2 a line per epoch.
        """
        run = self._plan_fit(X, y, epochs, batch_size, optimizer, shuffle, drop_last, seed,
                             verbose, validation_data, validation_split, metrics, callbacks,
                             tol, n_iter_no_change, max_time, resume_from)
        # every argument is checked: from here on the model changes
        self._begin_fit(run)
        for epoch in range(run.first + 1, run.last + 1):
            run.callbacks.call("on_epoch_begin", epoch)
            start_time = time.perf_counter()
            losses = self._train_epoch(run, epoch)
            if losses.size == 0:  # stopped before the epoch's first iteration
                break
            self.epoch = epoch
            logs = self._epoch_logs(run, losses, start_time)
            self.history.record_epoch(epoch, losses, logs)
            self.history.threads.append(threads.controller(self).used())
            run.callbacks.call("on_epoch_end", epoch, logs)
            if self.stop_training:
                break
        self.history.stop_reason = (self.stop_reason or "callback") if self.stop_training \
            else "completed"
        self._net.set_data(run.X[:1], run.y[:1])  # do not keep the training set alive
        run.callbacks.call("on_train_end")
        return self.history

    def _plan_fit(self, X, y, epochs, batch_size, optimizer, shuffle, drop_last, seed,
                  verbose, validation_data, validation_split, metrics, callbacks, tol,
                  n_iter_no_change, max_time, resume_from):
        """Check every argument of fit and lay the run out, changing nothing."""
        if optimizer is not None:
            optimizer = optimizers.get(optimizer)
        saved = checkpoint.load(resume_from) if resume_from is not None else None
        if saved is not None:
            checkpoint.check_resumable(saved, self, optimizer)
        X, y = (saved or self)._check_xy(X, y)
        epochs = check_int("epochs", epochs, 0)
        batch_size = check_int("batch_size", batch_size, 1)
        verbose = check_int("verbose", int(verbose) if isinstance(verbose, bool) else verbose, 0)
        if seed is not None:
            seed = check_int("seed", seed, 0)
        if max_time is not None:
            max_time = _positive("max_time", max_time)
        metric_names = evaluation.resolve(metrics, self.loss)
        train_rows, validation = self._validation_set(X, y, validation_data, validation_split)
        n = X.shape[0] if train_rows is None else len(train_rows)
        if optimizer is None:
            optimizer = saved.optimizer if saved is not None else self.optimizer
        if batch_size > n:
            warnings.warn(f"batch_size={batch_size} is larger than the {n} samples; "
                          f"it is clipped to {n}", UserWarning, stacklevel=3)
            batch_size = n
        per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
        if per_epoch == 0:
            raise ValueError("drop_last=True with batch_size > n_samples leaves no iteration")
        first = saved.epoch if saved is not None else self.epoch
        last = epochs if saved is not None else self.epoch + epochs
        params = {"epochs": last, "batch_size": batch_size, "n_samples": n,
                  "iterations_per_epoch": per_epoch}
        extra = [ConvergenceCheck(tol, n_iter_no_change)] if tol is not None else []
        if verbose:
            extra.append(ProgressBar() if verbose == 1 and sys.stderr.isatty() else EpochLine())
        cbs = CallbackList(list(callbacks or []) + extra, self, params)
        log_keys = {"loss", "lr", "time", *metric_names}
        if validation is not None:
            log_keys |= {"val_" + k for k in ("loss", *metric_names)}
        cbs.check_fit(log_keys, optimizer)

        rows = np.arange(n, dtype=np.int64) if train_rows is None else train_rows
        metric_rows = train_rows
        if n > _TRAIN_METRIC_ROWS:
            metric_rows = rows[np.linspace(0, n - 1, _TRAIN_METRIC_ROWS).astype(np.int64)]
        sizes = np.full(per_epoch, batch_size, dtype=np.float64)
        if not drop_last:
            sizes[-1] = n - batch_size * (per_epoch - 1)
        return _Run(X=X, y=y, rows=rows, shuffle=shuffle, batch_size=batch_size,
                    per_epoch=per_epoch, sizes=sizes, first=first, last=last, params=params,
                    optimizer=optimizer, saved=saved, seed=seed, verbose=verbose,
                    metric_names=metric_names, metric_rows=metric_rows, validation=validation,
                    callbacks=cbs, max_time=max_time)

    def _begin_fit(self, run):
        if run.saved is not None:
            checkpoint.transfer(run.saved, self, run.optimizer)
        elif not self.built:
            self.build(run.X.shape[1])
        if run.seed is not None and run.saved is None:
            self.rng = np.random.default_rng(run.seed)
        run.optimizer = self._use_optimizer(run.optimizer)
        self._net.reserve(run.batch_size)
        self._net.set_data(run.X, run.y)
        if run.verbose:
            _ensure_console_logging()
        if run.saved is None or self.history is None:
            self.history = History(run.params)
        self.history.params = run.params
        self._callbacks = run.callbacks
        self.stop_training, self.stop_reason = False, None
        run.callbacks.call("on_train_begin")
        run.callbacks.set_states(self._saved_callback_states if run.saved is not None else {})
        run.deadline = None if run.max_time is None else time.perf_counter() + run.max_time

    def _train_epoch(self, run, epoch):
        """The iterations of one epoch; returns their losses (fewer when stopped)."""
        net, opt, n, batch_size = self._net, run.optimizer, len(run.rows), run.batch_size
        order = run.rows[self.rng.permutation(n)] if run.shuffle else run.rows
        on_iteration = run.callbacks.on_iteration_end
        ctl = threads.controller(self)
        losses = np.empty(run.per_epoch)
        done = 0
        while done < run.per_epoch and not self.stop_training:
            start = done * batch_size
            lr = opt.next_lr()
            t0 = ctl.start()
            try:
                losses[done] = net.step_rows(order, start, min(start + batch_size, n), lr,
                                             opt.iterations + 1, iteration=self.iteration)
            except FloatingPointError as err:
                raise FloatingPointError(
                    f"training diverged at epoch {epoch}, iteration {done + 1} "
                    f"(iteration {self.iteration + 1} overall): {err}; the weights of the "
                    f"last finite iteration are kept. Lower the learning rate or "
                    f"scale the inputs.") from None
            ctl.stop(t0)
            opt.iterations += 1
            self.iteration += 1
            done += 1
            if on_iteration:
                logs = {"loss": losses[done - 1], "lr": lr, "epoch": epoch, "batch": done}
                for fn in on_iteration:
                    fn(self.iteration, logs)
            if run.deadline is not None and time.perf_counter() >= run.deadline:
                self.stop_training, self.stop_reason = True, "max_time"
        return losses[:done]

    def _epoch_logs(self, run, losses, start_time):
        """loss (sample-weighted mean over the epoch's iterations), metrics on the
        training rows, validation loss and metrics, lr, time."""
        sizes = run.sizes[:len(losses)]
        logs = {"loss": float(np.dot(losses, sizes) / sizes.sum())}
        if run.metric_names:
            logs.update(self._evaluate_rows(run.X, run.y, run.metric_rows, run.metric_names,
                                            with_loss=False))
        if run.validation is not None:
            val = self._evaluate_rows(*run.validation, run.metric_names)
            logs.update(("val_" + k, v) for k, v in val.items())
        logs.update(lr=run.optimizer.lr, time=time.perf_counter() - start_time)
        return logs

    def _validation_set(self, X, y, validation_data, validation_split):
        """(training rows or None, (X_val, y_val, rows of them or None) or None)."""
        if validation_data is not None and validation_split is not None:
            raise ValueError("pass validation_data or validation_split, not both")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a tuple (X_val, y_val)")
            Xv = check_X(validation_data[0], self.dtype, X.shape[1], name="validation_data X")
            yv = check_targets(validation_data[1], self.loss, self.n_outputs, Xv.shape[0],
                               self.dtype, name="validation_data y")
            return None, (Xv, yv, None)
        if validation_split is not None:
            stratify = self.loss == "cross_entropy" or (
                self.loss == "binary_cross_entropy" and y.shape[1] == 1)
            train, val = evaluation.holdout(y, validation_split, stratify)
            return train, (X, y, val)
        return None, None

    def train_step(self, X, y, optimizer=None):
        """One iteration (forward, backward, update) on the batch X, y; returns its loss.

        For users who keep their own loop; counts towards ``iteration`` (not ``epoch``).
        """
        X, y = self._check_xy(X, y)
        if not self.built:
            self.build(X.shape[1])
        opt = self._use_optimizer(optimizer)
        self._net.reserve(X.shape[0])
        ctl = threads.controller(self)
        t0 = ctl.start()
        loss = self._net.step(X, y, opt.next_lr(), opt.iterations + 1, iteration=self.iteration)
        ctl.stop(t0)
        opt.iterations += 1
        self.iteration += 1
        return loss

    def loss_and_gradient(self, X, y):
        """The mean loss on X, y and its gradient (a copy, laid out like ``params_flat``),
        without updating anything. Training mode: dropout draws the masks of the next
        iteration, batch norm uses the batch statistics."""
        X, y = self._check_xy(X, y)
        self._require_built()
        self._net.reserve(X.shape[0])
        loss = self._net.step(X, y, 0.0, 0, False, iteration=self.iteration)
        return loss, self.grads_flat.copy()

    # ---------------------------------------------------------------- inference
    def _require_built(self):
        if not self.built:
            raise ValueError("this model is not trained yet: call fit (or build) first")

    def _output(self, X, batch_size=None):
        """Network output (logits for the classification losses) in batches."""
        self._require_built()
        return self._forward_rows(check_X(X, self.dtype, self.n_features_in_), None, batch_size)

    def _forward_rows(self, X, rows, batch_size=None):
        """Output for the rows `rows` of the checked X (all rows when None), computed in
        batches; only one batch of rows is gathered at a time."""
        n = X.shape[0] if rows is None else len(rows)
        if batch_size is None:
            batch_size = max(self._net.max_batch, min(n, _PREDICT_BATCH))
        batch_size = check_int("batch_size", batch_size, 1)
        self._net.reserve(min(batch_size, n))
        step = self._net.max_batch
        out = np.empty((n, self.n_outputs), dtype=self.dtype)
        for start in range(0, n, step):
            stop = min(start + step, n)
            batch = X[start:stop] if rows is None else X[rows[start:stop]]
            self._net.forward(batch, out[start:stop])
        return out

    def _evaluate_rows(self, X, y, rows, metric_names, batch_size=None, with_loss=True):
        out = self._forward_rows(X, rows, batch_size)
        return evaluation.compute(self.loss, metric_names, out, y if rows is None else y[rows],
                                  with_loss)

    def predict_proba(self, X, batch_size=None):
        """Class probabilities: softmax (cross-entropy) or per-output sigmoid."""
        if self.loss in ("mse", "poisson"):
            raise AttributeError("predict_proba is only defined for classification losses")
        return F.output_transform(self.loss, self._output(X, batch_size))

    def predict(self, X, batch_size=None):
        """Class labels for classification, outputs for regression."""
        out = self._output(X, batch_size)
        if self.loss == "cross_entropy":
            return out.argmax(axis=1)
        if self.loss == "binary_cross_entropy":
            labels = (out > 0).astype(np.int64)
            return labels[:, 0] if labels.shape[1] == 1 else labels
        out = F.output_transform(self.loss, out)  # Poisson: the mean exp(z)
        return out[:, 0] if out.shape[1] == 1 else out

    def evaluate(self, X, y, batch_size=None, metrics="auto"):
        """Mean loss on X, y and the `metrics` (see ``fit``), as a dict."""
        names = evaluation.resolve(metrics, self.loss)
        X, y = self._check_xy(X, y)
        self._require_built()
        return self._evaluate_rows(X, y, None, names, batch_size)

    # ------------------------------------------------------------ persistence
    def get_weights(self):
        """The arrays that define the function the model computes (``params_flat`` and
        any other flat buffer but the gradients and the optimizer state), by name."""
        return {k: v for k, v in checkpoint.flat_arrays(self).items()
                if k not in ("grads_flat", "state_flat")}

    def set_weights(self, weights):
        """Copy arrays shaped as ``get_weights()`` into the model (all checked first)."""
        mine = self.get_weights()
        if set(weights) != set(mine) or any(np.shape(weights[k]) != v.shape
                                            for k, v in mine.items()):
            raise ValueError(f"weights must hold the arrays {sorted(mine)} with the shapes "
                             f"of this model's")
        for k, v in mine.items():
            v[...] = weights[k]

    def save(self, path):
        """Write the model and its training state (optimizer, counters, random
        generator, history, callbacks' state) to `path` (``.npz``; no pickle; written
        atomically). Read it back with ``minitrain.load`` or ``fit(resume_from=path)``."""
        checkpoint.save(self, path)

    def summary(self):
        """A table of the layers and their parameter counts."""
        width = max([28] + [len(repr(layer)) + 2 for layer in self.layers])
        rows = [f"{'layer':<{width}}{'output':>10}{'params':>12}"]
        for layer in self.layers:
            n = layer.n_params if layer.n_in else "?"
            rows.append(f"{layer!r:<{width}}{layer.units or '?':>10}{n:>12}")
        if self.built:
            rows.append(f"total parameters: {self.params_flat.size}")
        return "\n".join(rows)

    def __repr__(self):
        return f"Sequential({self.layers!r}, loss={self.loss!r})"
