"""Sequential: a stack of layers trained by mini-batch gradient descent."""

import logging
import math
import sys
import time
import warnings

import numpy as np

from . import functional as F
from . import optimizers
from ._validation import check_int, check_targets, check_X
from .backends import make_net
from .history import History
from .layers import Dense, Layer

logger = logging.getLogger("minitrain")

_PREDICT_BATCH = 1024
_FLOAT_DTYPES = (np.float32, np.float64)


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
    epoch, iteration : int
        Epochs and iterations trained so far.
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
        self.epoch = 0
        self.iteration = 0
        self.n_features_in_ = None
        self._net = None
        self._net_optimizer = None

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
        if any(l.activation == "softmax" for l in self.layers[:-1]) or (
                out_act == "softmax" and self.loss != "cross_entropy"):
            raise ValueError("softmax is only supported on the last layer with cross_entropy")

    def build(self, n_features):
        """Allocate the flat buffers and initialise the weights for `n_features` inputs."""
        n_features = check_int("n_features", n_features, 1)
        self._check_structure()
        width = n_features
        for layer in self.layers:
            width = layer.build(width)
        # weights first, then biases: weight decay applies to params_flat[:n_decay]
        n_weights = sum(l.n_weights for l in self.layers)
        n_params = n_weights + sum(l.units for l in self.layers)
        self.params_flat = np.zeros(n_params, dtype=self.dtype)
        self.grads_flat = np.zeros(n_params, dtype=self.dtype)
        self.state_flat = np.zeros(2 * n_params, dtype=self.dtype)
        self._n_decay = n_weights
        spec, w_off, b_off = [], 0, n_weights
        for layer in self.layers:
            layer.W = self.params_flat[w_off:w_off + layer.n_weights].reshape(layer.n_in, layer.units)
            layer.b = self.params_flat[b_off:b_off + layer.units]
            limit = layer.init_limit()
            layer.W[...] = self.rng.uniform(-limit, limit, size=layer.W.shape)
            act = "identity" if layer.activation == "softmax" else layer.activation
            spec.append((F.ACTIVATIONS[act], layer.negative_slope, layer.n_in, layer.units,
                         w_off, b_off))
            w_off += layer.n_weights
            b_off += layer.units
        self.n_features_in_ = n_features
        self._net = make_net(self.backend, self.dtype, F.LOSSES[self.loss], spec,
                             self.params_flat, self.grads_flat, self.state_flat)
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
        if self.built:
            n_out = self.n_outputs
        else:
            self._check_structure()
            n_out = self.n_outputs
        y = check_targets(y, self.loss, n_out, X.shape[0], self.dtype)
        return X, y

    # ----------------------------------------------------------------- training
    def fit(self, X, y, epochs=1, batch_size=32, optimizer=None, shuffle=True,
            drop_last=False, seed=None, verbose=1):
        """Train for `epochs` epochs of shuffled mini-batches.

        One epoch is ``ceil(N / batch_size)`` iterations (``floor`` with
        ``drop_last=True``); one iteration is a forward pass, a backward pass and an
        update on one batch. The rows are permuted afresh every epoch when `shuffle`.
        Returns a History.
        """
        X, y = self._check_xy(X, y)
        n = X.shape[0]
        epochs = check_int("epochs", epochs, 0)
        batch_size = check_int("batch_size", batch_size, 1)
        verbose = check_int("verbose", int(verbose) if isinstance(verbose, bool) else verbose, 0)
        if seed is not None:
            seed = check_int("seed", seed, 0)
        opt = optimizers.get(optimizer if optimizer is not None else self.optimizer)
        if batch_size > n:
            warnings.warn(f"batch_size={batch_size} is larger than the {n} samples; "
                          f"it is clipped to {n}", UserWarning, stacklevel=2)
            batch_size = n
        per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
        if per_epoch == 0:
            raise ValueError("drop_last=True with batch_size > n_samples leaves no iteration")

        if not self.built:
            self.build(X.shape[1])
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        opt = self._use_optimizer(opt)
        net = self._net
        net.reserve(batch_size)
        net.set_data(X, y)
        if verbose:
            _ensure_console_logging()
        history = History({"epochs": epochs, "batch_size": batch_size, "n_samples": n,
                           "iterations_per_epoch": per_epoch})
        sizes = np.full(per_epoch, batch_size, dtype=np.float64)
        if not drop_last:
            sizes[-1] = n - batch_size * (per_epoch - 1)
        arange = np.arange(n, dtype=np.int64)
        for e in range(epochs):
            start_time = time.perf_counter()
            order = self.rng.permutation(n) if shuffle else arange
            losses = np.empty(per_epoch)
            for it in range(per_epoch):
                start = it * batch_size
                try:
                    losses[it] = net.step_rows(order, start, min(start + batch_size, n),
                                               opt.lr, opt.iterations + 1)
                except FloatingPointError as err:
                    raise FloatingPointError(
                        f"training diverged at epoch {self.epoch + 1}, iteration {it + 1} "
                        f"(iteration {self.iteration + 1} overall): {err}; the weights of the "
                        f"last finite iteration are kept. Lower the learning rate or "
                        f"scale the inputs.") from None
                opt.iterations += 1
                self.iteration += 1
            self.epoch += 1
            logs = {"loss": float(np.dot(losses, sizes) / sizes.sum()),
                    "time": time.perf_counter() - start_time, "lr": opt.lr}
            history.record_epoch(self.epoch, losses, logs)
            if verbose:
                logger.info("Epoch %d/%d · %d it · loss %.4f · %.2f s", e + 1, epochs,
                            per_epoch, logs["loss"], logs["time"])
        net.set_data(X[:1], y[:1])  # do not keep the training set alive
        return history

    def train_step(self, X, y, optimizer=None):
        """One iteration (forward, backward, update) on the batch X, y; returns its loss.

        For users who keep their own loop; counts towards ``iteration`` (not ``epoch``).
        """
        X, y = self._check_xy(X, y)
        if not self.built:
            self.build(X.shape[1])
        opt = self._use_optimizer(optimizer)
        self._net.reserve(X.shape[0])
        loss = self._net.step(X, y, opt.lr, opt.iterations + 1)
        opt.iterations += 1
        self.iteration += 1
        return loss

    def loss_and_gradient(self, X, y):
        """The mean loss on X, y and its gradient (a copy, laid out like ``params_flat``),
        without updating anything."""
        X, y = self._check_xy(X, y)
        self._require_built()
        self._net.reserve(X.shape[0])
        loss = self._net.step(X, y, 0.0, 0, False)
        return loss, self.grads_flat.copy()

    # ---------------------------------------------------------------- inference
    def _require_built(self):
        if not self.built:
            raise ValueError("this model is not trained yet: call fit (or build) first")

    def _output(self, X, batch_size=None):
        """Network output (logits for the classification losses) in batches."""
        self._require_built()
        X = check_X(X, self.dtype, self.n_features_in_)
        if batch_size is None:
            batch_size = max(self._net.max_batch, min(X.shape[0], _PREDICT_BATCH))
        batch_size = check_int("batch_size", batch_size, 1)
        self._net.reserve(min(batch_size, X.shape[0]))
        step = self._net.max_batch
        out = np.empty((X.shape[0], self.n_outputs), dtype=self.dtype)
        for start in range(0, X.shape[0], step):
            self._net.forward(X[start:start + step], out[start:start + step])
        return out

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

    def evaluate(self, X, y, batch_size=None):
        """Mean loss on X, y, and accuracy for classification, as a dict."""
        X, y = self._check_xy(X, y)
        out = self._output(X, batch_size)
        result = {"loss": F.loss_value(self.loss, out, y)}
        if self.loss == "cross_entropy":
            result["accuracy"] = float(np.mean(out.argmax(axis=1) == y))
        elif self.loss == "binary_cross_entropy":
            result["accuracy"] = float(np.mean((out > 0) == (y > 0.5)))
        return result

    def summary(self):
        """A table of the layers and their parameter counts."""
        rows = [f"{'layer':<28}{'output':>10}{'params':>12}"]
        for layer in self.layers:
            n = (layer.n_weights + layer.units) if layer.n_in else "?"
            rows.append(f"{layer!r:<28}{layer.units:>10}{n:>12}")
        if self.built:
            rows.append(f"total parameters: {self.params_flat.size}")
        return "\n".join(rows)

    def __repr__(self):
        return f"Sequential({self.layers!r}, loss={self.loss!r})"
