"""Sequential: a stack of layers trained by mini-batch gradient descent."""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import checkpoint, evaluation, optimizers, training
from . import functional as F
from . import threads
from ._validation import all_finite, check_int, check_targets, check_X
from .backends import make_net
from .callbacks import Callback
from .history import History
from .layers import Dense, Layer, summary_lines

logger = logging.getLogger("minitrain")

_PREDICT_BATCH = 1024
_FUSED_OUTPUT = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}


def flat_arrays(model):
    """Every flat buffer of a built model (``params_flat``, ``state_flat``, ...), by name."""
    return {k: v for k, v in vars(model).items()
            if k.endswith("_flat") and isinstance(v, np.ndarray)}


def load(path: str | os.PathLike) -> Sequential:
    """The model saved at `path`, with its optimizer, counters, generator and history.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``Sequential.save`` or ``ModelCheckpoint`` (``.npz``, read
        with ``allow_pickle=False``: it cannot run code).

    Returns
    -------
    Sequential
        The model, built, ready to predict or to train on (``fit`` continues its
        optimizer, counters and history).

    Raises
    ------
    ValueError
        Before building anything visible, when the file is not a minitrain checkpoint,
        is truncated, or its arrays do not fit its architecture; the architecture is
        checked against the arrays' own headers before anything as large is allocated
        or read.

    Examples
    --------
    >>> import minitrain as mt
    >>> model.save("model.npz")          # doctest: +SKIP
    >>> same = mt.load("model.npz")      # doctest: +SKIP
    """
    state = checkpoint.read(path)
    try:
        return Sequential._from_state(state)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: malformed minitrain checkpoint ({type(err).__name__}: "
                         f"{err})") from None


class Sequential:
    """A multi-layer perceptron: layers applied in order, trained with ``fit``.

    Parameters
    ----------
    layers : list of Layer, optional
        The layers, in order; more can be added with ``add`` until the model is built.
        The input width is taken from the data on the first ``fit`` (or ``build``).
    loss : str, default "cross_entropy"
        ``cross_entropy`` (softmax over the last layer; integer labels, or exactly one-hot
        rows, which are taken as their labels), ``mse``,
        ``binary_cross_entropy`` (sigmoid over each output, 0/1 targets), or ``poisson``
        (counts; the prediction is exp of the last layer's output).
    seed : int or None, default None
        Seeds the one ``numpy.random.Generator`` behind initialisation and shuffling.
    dtype : {"float32", "float64", "mixed_bfloat16"}, default "float32"
        The dtype of the parameters and of the computation; ``"mixed_bfloat16"`` (Keras'
        policy name) keeps float32 parameters, gradients, optimizer state, activations
        and loss, and rounds the inputs of the dense layers' products to bfloat16
        (accumulated in float32; ``vdpbf16ps`` where the CPU has AVX512_BF16).
    backend : {"c", "numpy"}, default "c"
        The C core, or the pure-NumPy reference (same maths and random streams).
    optimizer : Optimizer or str, optional
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
    n_features_in_ : int or None
        The input width, once built.
    dtype_policy : str
        The `dtype` given: ``dtype`` is that of the buffers (float32 for
        ``"mixed_bfloat16"``).

    Notes
    -----
    A model may be shared between threads (a thread predicting while another trains):
    calls that use its workspace or its flat buffers run one at a time on that model, and
    ``train_step``, ``loss_and_gradient`` and each iteration of ``fit`` act as if the calls
    of all threads had been made one after another. Separate models run in parallel.

    Examples
    --------
    >>> import minitrain as mt
    >>> X, y = mt.load_digits()
    >>> model = mt.Sequential([mt.Dense(128, activation="relu"), mt.Dense(10)],
    ...                       loss="cross_entropy", seed=0)
    >>> hist = model.fit(X / 16, y, epochs=5, batch_size=32, verbose=0,
    ...                  optimizer=mt.SGD(lr=0.05, momentum=0.9))
    >>> model.predict(X[:3] / 16).shape
    (3,)
    """

    def __init__(self, layers: Sequence[Layer] | None = None, loss: str = "cross_entropy",
                 seed: int | None = None, dtype: str | np.dtype = "float32",
                 backend: str = "c", optimizer: optimizers.Optimizer | str | None = None
                 ) -> None:
        self.layers = []
        for layer in layers or []:
            self.add(layer)
        name = F.LOSS_ALIASES.get(loss, loss)
        if name not in F.LOSSES:
            raise ValueError(f"loss must be one of {sorted(F.LOSSES)}, got {loss!r}")
        policy = dtype if isinstance(dtype, str) and dtype in F.DTYPES else None
        if policy is None:
            try:
                policy = np.dtype(dtype).name
            except TypeError:
                pass
        if policy not in F.DTYPES:
            raise TypeError(f"dtype must be one of {sorted(F.DTYPES)}, got {dtype!r}")
        self.loss = name
        self.seed = seed
        self.dtype = F.DTYPES[policy]
        self.dtype_policy = policy
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
        # Serialises the sequences of calls that must see one state of the model (build,
        # optimizer, counters, step and what it leaves in grads_flat); the backend
        # serialises each call on its workspace itself, so predict needs no more.
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- structure
    def add(self, layer: Layer) -> None:
        """Append a layer (before the model is built).

        Parameters
        ----------
        layer : Layer
            A Dense, Activation, BatchNorm or Dropout layer.
        """
        if not isinstance(layer, Layer):
            raise TypeError(f"layers must be minitrain layers, got {type(layer).__name__}")
        if self.built:
            raise ValueError("cannot add layers to a built model")
        self.layers.append(layer)

    @property
    def built(self) -> bool:
        """Whether the parameters exist (after ``build`` or the first ``fit``)."""
        return getattr(self, "_net", None) is not None

    @property
    def n_outputs(self) -> int | None:
        """Width of the last layer (None without layers)."""
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

    def build(self, n_features: int) -> Sequential:
        """Allocate the flat buffers and initialise the weights.

        ``fit`` and ``train_step`` build the model on first use; call it to get the
        parameters before training.

        Parameters
        ----------
        n_features : int
            The input width.

        Returns
        -------
        Sequential
            The model itself.
        """
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
            spec[-1]["act"] = "identity"
        if self.dropout_seed is None:
            self.dropout_seed = int(self.rng.integers(2**63))
        self.n_features_in_ = n_features
        self._layer_spec = spec  # what another backend's net over these buffers needs
        self._net = make_net(self.backend, self.dtype_policy, self.loss, spec,
                             self.params_flat, self.grads_flat, self.state_flat,
                             self.buffers_flat, self.dropout_seed)
        self._net_optimizer = None
        self._reduction = "mean"
        return self

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

    def _gradient(self, X, y, sample_weight=None):
        """The batch loss of the core-ready X, y (unchecked), its gradient left in
        ``grads_flat``; nothing is updated."""
        with self._lock:
            self._net.reserve(X.shape[0])
            ctl = threads.controller(self)
            t0 = ctl.start()
            loss = self._net.step(X, y, 0.0, 0, False, sample_weight=sample_weight)
            ctl.stop(t0)
            return loss

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

    # --------------------------------------------------------------- validation
    def _check_xy(self, X, y, n_features=None):
        X = check_X(X, self.dtype, n_features or self.n_features_in_)
        if not self.built:
            self._check_structure()
        y = check_targets(y, self.loss, self.n_outputs, X.shape[0], self.dtype)
        return X, y

    # ----------------------------------------------------------------- training
    def fit(self, X: ArrayLike, y: ArrayLike, epochs: int = 1, batch_size: int = 32,
            optimizer: optimizers.Optimizer | str | None = None, shuffle: bool = True,
            drop_last: bool = False, seed: int | None = None, verbose: int = 1,
            validation_data: tuple[ArrayLike, ArrayLike] | None = None,
            validation_split: float | None = None,
            metrics: str | Sequence[str] | None = "auto",
            callbacks: Sequence[Callback] | None = None, tol: float | None = None,
            n_iter_no_change: int = 10, max_time: float | None = None,
            resume_from: str | os.PathLike | None = None) -> History:
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
        return training.fit(self, X, y, epochs=epochs, batch_size=batch_size,
                            optimizer=optimizer, shuffle=shuffle, drop_last=drop_last,
                            seed=seed, verbose=verbose, validation_data=validation_data,
                            validation_split=validation_split, metrics=metrics,
                            callbacks=callbacks, tol=tol, n_iter_no_change=n_iter_no_change,
                            max_time=max_time, resume_from=resume_from)

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
            opt = self._use_optimizer(opt)
            self._net.reserve(X.shape[0])
            ctl = threads.controller(self)
            t0 = ctl.start()
            loss = self._net.step(X, y, lr, opt.iterations + 1, iteration=self.iteration)
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

    # ---------------------------------------------------------------- inference
    def _require_built(self):
        if not self.built:
            raise ValueError("this model is not trained yet: call fit (or build) first")

    def _output(self, X, batch_size=None):
        """Network output (logits for the classification losses) in batches."""
        self._require_built()
        return self._forward_rows(check_X(X, self.dtype, self.n_features_in_), None, batch_size)

    def _forward_rows(self, X, rows, batch_size=None, step=None, finite=True):
        """Output for the rows `rows` of the checked X (all rows when None), computed in
        batches of `step` rows (default: the workspace's); only one batch of rows is
        gathered (made dense, for a sparse X) at a time. `finite`: refuse an overflow."""
        n = X.shape[0] if rows is None else len(rows)
        if batch_size is None:
            batch_size = max(self._net.max_batch, min(n, _PREDICT_BATCH))
        batch_size = check_int("batch_size", batch_size, 1)
        self._net.reserve(min(batch_size, n))
        step = step or self._net.max_batch
        out = np.empty((n, self.n_outputs), dtype=self.dtype)
        for start in range(0, n, step):
            stop = min(start + step, n)
            batch = X[start:stop] if rows is None else X[rows[start:stop]]
            if not isinstance(batch, np.ndarray):  # sparse
                batch = batch.toarray()
            batch = np.ascontiguousarray(batch, dtype=self.dtype)
            self._net.forward(batch, out[start:stop])
        if finite and not all_finite(out):  # finite weights: only inputs too large get here
            raise ValueError(f"X: the model's outputs overflow {self.dtype.name} on these "
                             f"inputs; scale X")
        return out

    def _evaluate_rows(self, X, y, rows, metric_names, batch_size=None, with_loss=True):
        out = self._forward_rows(X, rows, batch_size)
        return evaluation.compute(self.loss, metric_names, out, y if rows is None else y[rows],
                                  with_loss)

    def predict_proba(self, X: ArrayLike, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities: softmax (cross-entropy) or per-output sigmoid (binary
        cross-entropy).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The inputs.
        batch_size : int, optional
            Rows per forward pass (default: up to 1024).

        Returns
        -------
        numpy.ndarray of shape (n_samples, n_outputs)
            With cross-entropy each row sums to 1.

        Raises
        ------
        AttributeError
            For the regression losses (``mse``, ``poisson``).
        """
        if self.loss in ("mse", "poisson"):
            raise AttributeError("predict_proba is only defined for classification losses")
        return F.output_transform(self.loss, self._output(X, batch_size))

    def predict(self, X: ArrayLike, batch_size: int | None = None) -> np.ndarray:
        """Class labels for classification, outputs for regression.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The inputs.
        batch_size : int, optional
            Rows per forward pass (default: up to 1024).

        Returns
        -------
        numpy.ndarray
            ``cross_entropy``: labels (n_samples,); ``binary_cross_entropy``: 0/1
            labels, (n_samples,) for one output, else (n_samples, n_outputs);
            ``mse`` and ``poisson``: (n_samples,) for one output, else
            (n_samples, n_outputs) (``poisson``: the mean, exp of the output).
        """
        out = self._output(X, batch_size)
        if self.loss == "cross_entropy":
            return out.argmax(axis=1)
        if self.loss == "binary_cross_entropy":
            labels = (out > 0).astype(np.int64)
            return labels[:, 0] if labels.shape[1] == 1 else labels
        out = F.output_transform(self.loss, out)  # Poisson: the mean exp(z)
        return out[:, 0] if out.shape[1] == 1 else out

    def evaluate(self, X: ArrayLike, y: ArrayLike, batch_size: int | None = None,
                 metrics: str | Sequence[str] | None = "auto") -> dict[str, float]:
        """Mean loss on X, y and the metrics, in inference mode.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The inputs.
        y : array-like
            The targets, as for ``fit``.
        batch_size : int, optional
            Rows per forward pass (default: up to 1024).
        metrics : "auto", list of str, or None, default "auto"
            As for ``fit``.

        Returns
        -------
        dict
            ``{"loss": ..., "accuracy": ...}`` (or ``"r2"`` for regression).
        """
        names = evaluation.resolve(metrics, self.loss)
        X, y = self._check_xy(X, y)
        self._require_built()
        return self._evaluate_rows(X, y, None, names, batch_size)

    # ------------------------------------------------------------ persistence
    def get_weights(self) -> dict[str, np.ndarray]:
        """The arrays that define the function the model computes.

        Returns
        -------
        dict of numpy.ndarray
            ``params_flat`` and every other flat buffer but the gradients and the
            optimizer state (``buffers_flat``), by name; the model's own arrays, not
            copies.
        """
        return {k: v for k, v in flat_arrays(self).items()
                if k not in ("grads_flat", "state_flat")}

    def set_weights(self, weights: Mapping[str, ArrayLike]) -> None:
        """Copy arrays shaped as ``get_weights()`` into the model (all checked first).

        Parameters
        ----------
        weights : dict of array-like
            The names and shapes of ``get_weights()``.
        """
        mine = self.get_weights()
        if set(weights) != set(mine) or any(np.shape(weights[k]) != v.shape
                                            for k, v in mine.items()):
            raise ValueError(f"weights must hold the arrays {sorted(mine)} with the shapes "
                             f"of this model's")
        for k, v in mine.items():
            v[...] = weights[k]

    def get_state(self) -> dict:
        """The whole model as plain values: what pickling, ``copy.deepcopy`` and
        checkpoints are made of.

        Returns
        -------
        dict
            JSON-able values and NumPy arrays (copies), described below.

        Notes
        -----
        The keys: ``config`` (architecture,
        loss, dtype, backend, seeds, input width), ``arrays`` (every flat buffer:
        ``params_flat``, ``grads_flat``, ``state_flat`` (the optimizer's moments),
        ``buffers_flat``; empty before the model is built), ``optimizer`` (its config and
        update count), ``epoch``, ``iteration``, ``rng`` (the generator's state),
        ``history`` and ``callbacks`` (the state of the last fit's callbacks).
        ``set_state`` of it gives a model that predicts the same and trains on
        bit-identically.
        """
        callbacks = self._callbacks.get_states() if self._callbacks else \
            self._saved_callback_states
        return {
            "config": self._config(),
            "arrays": {k: v.copy() for k, v in flat_arrays(self).items()},
            "optimizer": {**self.optimizer.get_config(), "iterations": self.optimizer.iterations},
            "epoch": self.epoch, "iteration": self.iteration,
            "rng": self.rng.bit_generator.state,
            "history": None if self.history is None else copy.deepcopy(self.history.to_dict()),
            "callbacks": copy.deepcopy(callbacks or {}),
            # the workspace size sets predict's default batch: kept so the copy batches alike
            "max_batch": self._net.max_batch if self.built else 0,
        }

    def _config(self):
        """The architecture and settings that define the model, as JSON values."""
        return {"class": type(self).__name__, "loss": self.loss, "dtype": self.dtype_policy,
                "backend": self.backend, "seed": self.seed, "dropout_seed": self.dropout_seed,
                "n_features_in": self.n_features_in_,
                "layers": [layer.get_config() for layer in self.layers]}

    def set_state(self, state: dict) -> None:
        """Make this model the one `state` describes: its layers, weights, optimizer,
        counters, generator and history.

        Parameters
        ----------
        state : dict
            From ``get_state``. It is checked whole before anything changes; a
            ValueError leaves the model as it was.
        """
        fresh = vars(type(self)._from_state(state))  # carries a lock of its own
        lock = vars(self).get("_lock")
        if lock is None:  # unpickling or deepcopy: nothing else can hold this model yet
            vars(self).update(fresh)
            return
        with lock:  # a thread inside a call of this model finishes on the old state
            fresh["_lock"] = lock
            vars(self).update(fresh)

    @classmethod
    def _from_state(cls, state):
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from get_state(), got {type(state).__name__}")
        try:
            cfg = state["config"]
            model = cls([checkpoint._layer(c) for c in cfg["layers"]], loss=cfg["loss"],
                        seed=cfg["seed"], dtype=cfg["dtype"], backend=cfg["backend"])
            model.dropout_seed = cfg["dropout_seed"]
            if cfg["n_features_in"] is not None:
                model.build(cfg["n_features_in"])
            opt = dict(state["optimizer"])
            iterations = int(opt.pop("iterations"))
            model.optimizer = optimizers.from_config(opt)
            model.optimizer.iterations = iterations
            model.epoch, model.iteration = int(state["epoch"]), int(state["iteration"])
            model.rng = checkpoint._rng(state["rng"])
            history = state["history"]
            model.history = None if history is None else History.from_dict(copy.deepcopy(history))
            model._saved_callback_states = copy.deepcopy(state["callbacks"])
            arrays = dict(state["arrays"])
            max_batch = int(state.get("max_batch", 0))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"state is not a minitrain model state ({type(err).__name__}: "
                             f"{err})") from None
        buffers = flat_arrays(model)
        if set(arrays) != set(buffers):
            raise ValueError(f"state holds the arrays {sorted(arrays)}, its architecture has "
                             f"{sorted(buffers)}")
        for name, buf in buffers.items():
            if np.shape(arrays[name]) != buf.shape:
                raise ValueError(f"state: {name} has shape {np.shape(arrays[name])}, the "
                                 f"architecture needs {buf.shape}")
        for name, buf in buffers.items():
            buf[...] = arrays[name]
        if model.built:
            model._net.reserve(max_batch)
            # the saved state_flat belongs to this optimizer: bind it, as a trained model is
            model._use_optimizer(model.optimizer)
        return model

    def __getstate__(self):
        # never the C core's network (a pointer): it is rebuilt from the arrays
        return self.get_state()

    def __setstate__(self, state):
        self.set_state(state)

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.set_state(self.get_state())
        return new

    def save(self, path: str | os.PathLike) -> None:
        """Write the model and its training state (optimizer, counters, random
        generator, history, callbacks' state) to a checkpoint.

        Read it back with ``minitrain.load`` or ``fit(resume_from=path)``.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.npz`` file (no pickle inside), written atomically: a temporary
            file, synced, then renamed over `path`.
        """
        self._require_built()
        checkpoint.write(path, self.get_state())

    def to_onnx(self, path: str | os.PathLike | None = None, **options: Any) -> Any:
        """The inference graph as ONNX; outputs as ``predict`` / ``predict_proba``.

        Needs the ``onnx`` extra.

        Parameters
        ----------
        path : str or os.PathLike, optional
            Also write the model to this file (atomically).
        **options
            ``opset``, ``mean``, ``scale``, ``classes``: see ``minitrain.export.to_onnx``.

        Returns
        -------
        onnx.ModelProto
            The checked model.
        """
        from .export import to_onnx
        return to_onnx(self, path, **options)

    def summary(self, line_length: int | None = None,
                print_fn: Callable[[str], Any] | None = None) -> None:
        """Print a table of the layers, their output shapes and parameter counts, as
        Keras' ``Model.summary`` does; returns None.

        Parameters
        ----------
        line_length : int, optional
            Width of the table (at least the default, which fits the layers).
        print_fn : callable, optional
            Called with each line of the table instead of ``print``; e.g.
            ``lines = []; model.summary(print_fn=lines.append)`` keeps the text.
        """
        print_fn = print if print_fn is None else print_fn
        for line in summary_lines(type(self).__name__.lower(), self.layers, self.built,
                                  line_length):
            print_fn(line)

    def __repr__(self):
        return f"Sequential({self.layers!r}, loss={self.loss!r})"
