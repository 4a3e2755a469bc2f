"""Sequential: a stack of layers trained by mini-batch gradient descent."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import distributed, evaluation, optimizers
from . import functional as F
from ._validation import check_int, check_targets, check_X
from .backends import make_net
from .layers import Dense, Layer, summary_lines
from .state import Stateful, flat_arrays, load  # noqa: F401 (minitrain.models.load)
from .training import Trainer

logger = logging.getLogger("minitrain")

_FUSED_OUTPUT = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}




class Sequential(Trainer, Stateful):
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
        # trailing slots carry a distributed iteration's loss and flags in the gradient's
        # one all-reduce (minitrain.distributed)
        self._grads_ext = np.zeros(n_params + distributed.SLOTS, dtype=self.dtype)
        self.grads_flat = self._grads_ext[:n_params]
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

    # --------------------------------------------------------------- validation
    def _check_xy(self, X, y, n_features=None):
        X = check_X(X, self.dtype, n_features or self.n_features_in_)
        if not self.built:
            self._check_structure()
        y = check_targets(y, self.loss, self.n_outputs, X.shape[0], self.dtype)
        return X, y

    # ---------------------------------------------------------------- inference
    def _require_built(self):
        if not self.built:
            raise ValueError("this model is not trained yet: call fit (or build) first")

    def _output(self, X, batch_size=None):
        """Network output (logits for the classification losses) in batches."""
        self._require_built()
        X = check_X(X, self.dtype, self.n_features_in_)
        return evaluation.forward_rows(self, X, None, batch_size)


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
        return evaluation.evaluate_rows(self, X, y, None, names, batch_size)


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
