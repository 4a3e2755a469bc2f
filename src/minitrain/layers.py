"""Layers of a Sequential model."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._validation import check_int, check_number
from .functional import ACTIVATION_ALIASES, ACTIVATIONS


def _activation_name(activation, allow_softmax):
    name = ACTIVATION_ALIASES.get(activation, activation)
    if name not in ACTIVATIONS and not (allow_softmax and name == "softmax"):
        extra = " or 'softmax'" if allow_softmax else ""
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}{extra}, "
                         f"got {activation!r}")
    return name


def _slope(negative_slope):
    return check_number("negative_slope", negative_slope, low=None)


def _fraction(name, value, high_open):
    """A finite number in [0, 1) (or [0, 1] when not `high_open`)."""
    # not a number at all: a TypeError, as for Dense(units=...)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return check_number(name, value, 0, high=1, high_open=high_open)


class Layer:
    """Base class of the layers. A layer knows its output width once built; its
    parameters are views into the model's flat buffers, bound by the model.

    The C core implements a fixed set of layer kinds (Dense, Activation, BatchNorm,
    Dropout), so new layers are not made by subclassing.

    Attributes
    ----------
    n_in, units : int or None
        Input and output widths (None until the model is built).
    n_weights : int
        Parameters decayed by the optimizers' weight decay (a Dense layer's ``W``).
    n_params : int
        All trainable parameters; the other ``n_params - n_weights`` (biases, batch-norm
        scales and shifts) are not decayed, unless the optimizer has ``decay_all=True``.
    n_buffers : int
        Non-trainable state (batch-norm running statistics).
    """

    n_in = None
    units = None
    n_weights = 0
    n_params = 0
    n_buffers = 0

    def build(self, n_in: int) -> int:
        """Fix the input width (called by ``Sequential.build``).

        Parameters
        ----------
        n_in : int
            Width of the layer's input.

        Returns
        -------
        int
            Width of the layer's output.
        """
        self.n_in = self.units = n_in
        return n_in

    def bind(self, params: np.ndarray, w_off: int, p_off: int, buffers: np.ndarray,
             s_off: int, rng: np.random.Generator) -> dict:
        """Take views of the model's flat buffers and initialise them (called by
        ``Sequential.build``).

        Parameters
        ----------
        params : numpy.ndarray
            The model's ``params_flat``.
        w_off : int
            Offset in `params` of this layer's decayed weights.
        p_off : int
            Offset in `params` of its other parameters (biases, scales, shifts).
        buffers : numpy.ndarray
            The model's ``buffers_flat``.
        s_off : int
            Offset in `buffers` of its non-trainable state.
        rng : numpy.random.Generator
            Draws the initial weights.

        Returns
        -------
        dict
            The layer's description for the backend (the fields of ``mt_layer``).
        """
        raise NotImplementedError

    def _spec(self, kind, **fields):
        return {"kind": kind, "in": self.n_in, "out": self.units, **fields}

    def get_config(self) -> dict:
        """The layer's constructor arguments, as JSON values (checkpoints store them).

        Returns
        -------
        dict
            ``class`` (the layer's class name) and its constructor arguments.
        """
        raise NotImplementedError


class Dense(Layer):
    """Fully connected layer: ``activation(X @ W + b)``, with ``W`` of shape (in, units).

    Weights are initialised uniformly: He's bound ``sqrt(6 / in)`` for relu-like
    activations (``relu``, ``leaky_relu``, ``gelu``), Glorot's ``sqrt(6 / (in + units))``
    otherwise; biases start at 0.

    Parameters
    ----------
    units : int
        Output width.
    activation : str or None, default None
        ``identity`` (None, ``linear``), ``relu``, ``leaky_relu``, ``tanh``,
        ``sigmoid`` (``logistic``), ``gelu``; and on the last layer ``softmax`` with
        the cross-entropy loss (the softmax is then fused into the loss).
    negative_slope : float, default 0.01
        Slope of ``leaky_relu`` below zero.

    Attributes
    ----------
    W : numpy.ndarray of shape (in, units)
        The weights, a view into the model's ``params_flat`` (None until built).
    b : numpy.ndarray of shape (units,)
        The biases, a view into ``params_flat``.

    Examples
    --------
    >>> import minitrain as mt
    >>> model = mt.Sequential([mt.Dense(128, activation="relu"), mt.Dense(10)])
    """

    def __init__(self, units: int, activation: str | None = None,
                 negative_slope: float = 0.01) -> None:
        units = check_int("units", units, 1)
        self.activation = _activation_name(activation, allow_softmax=True)
        self.negative_slope = _slope(negative_slope)
        self.units = int(units)
        self.W = None
        self.b = None

    def build(self, n_in: int) -> int:
        self.n_in = n_in
        return self.units

    @property
    def n_weights(self) -> int:
        """Number of weights, ``in * units``."""
        return self.n_in * self.units

    @property
    def n_params(self) -> int:
        """Number of weights and biases, ``(in + 1) * units``."""
        return self.n_weights + self.units

    def init_limit(self) -> float:
        """Uniform initialisation bound: He for relu-like activations, Glorot otherwise.

        Returns
        -------
        float
            ``sqrt(6 / in)`` or ``sqrt(6 / (in + units))``.
        """
        if self.activation in ("relu", "leaky_relu", "gelu"):
            return math.sqrt(6.0 / self.n_in)
        return math.sqrt(6.0 / (self.n_in + self.units))

    def bind(self, params: np.ndarray, w_off: int, p_off: int, buffers: np.ndarray,
             s_off: int, rng: np.random.Generator) -> dict:
        self.W = params[w_off:w_off + self.n_weights].reshape(self.n_in, self.units)
        self.b = params[p_off:p_off + self.units]
        limit = self.init_limit()
        self.W[...] = rng.uniform(-limit, limit, size=self.W.shape)
        act = "identity" if self.activation == "softmax" else self.activation
        return self._spec("dense", act=act, act_param=self.negative_slope,
                          w_off=w_off, b_off=p_off)

    def get_config(self) -> dict:
        return {"class": "Dense", "units": self.units, "activation": self.activation,
                "negative_slope": self.negative_slope}

    def __repr__(self):
        return f"Dense({self.units}, activation={self.activation!r})"


class Dropout(Layer):
    """Inverted dropout: in training each input is zeroed with probability `rate` and
    the others are scaled by ``1/(1-rate)``; in ``predict``/``evaluate`` it is the
    identity.

    The mask is a counter-based hash of (model seed, iteration, layer, element), so it
    does not depend on the thread count, and a resumed run draws the same masks.

    Parameters
    ----------
    rate : float in [0, 1)
        Probability of zeroing an element.
    """

    def __init__(self, rate: float) -> None:
        self.rate = _fraction("rate", rate, high_open=True)

    def bind(self, params: np.ndarray, w_off: int, p_off: int, buffers: np.ndarray,
             s_off: int, rng: np.random.Generator) -> dict:
        return self._spec("dropout", rate=self.rate)

    def get_config(self) -> dict:
        return {"class": "Dropout", "rate": self.rate}

    def __repr__(self):
        return f"Dropout({self.rate!r})"


class BatchNorm(Layer):
    """Batch normalisation of each feature: ``gamma * (x - mean) / sqrt(var + epsilon)
    + beta``.

    In training, ``mean`` and ``var`` are the statistics of the batch, and running
    estimates are updated after every iteration:
    ``running = momentum * running + (1 - momentum) * batch`` (Keras' convention; the
    running variance takes the unbiased batch variance, as in PyTorch, so the defaults
    match ``torch.nn.BatchNorm1d(momentum=0.1, eps=1e-5)``). ``predict`` and
    ``evaluate`` use the running estimates (initially mean 0 and variance 1).

    ``gamma`` (initially 1) and ``beta`` (initially 0) are trained and not decayed (but
    by an optimizer with ``decay_all=True``); the running statistics live in the model's
    ``buffers_flat``.

    Parameters
    ----------
    momentum : float in [0, 1], default 0.9
        Weight of the previous running statistics in each update.
    epsilon : float > 0, default 1e-5
        Added to the variance.

    Attributes
    ----------
    gamma, beta : numpy.ndarray of shape (units,)
        Scale and shift, views into the model's ``params_flat``.
    running_mean, running_var : numpy.ndarray of shape (units,)
        Running statistics, views into the model's ``buffers_flat``.
    """

    def __init__(self, momentum: float = 0.9, epsilon: float = 1e-5) -> None:
        self.momentum = _fraction("momentum", momentum, high_open=False)
        self.epsilon = check_number("epsilon", epsilon, low_open=True)
        self.gamma = self.beta = self.running_mean = self.running_var = None

    @property
    def n_params(self) -> int:
        """Number of scales and shifts, ``2 * units``."""
        return 2 * self.units

    @property
    def n_buffers(self) -> int:
        """Number of running statistics, ``2 * units``."""
        return 2 * self.units

    def bind(self, params: np.ndarray, w_off: int, p_off: int, buffers: np.ndarray,
             s_off: int, rng: np.random.Generator) -> dict:
        c = self.units
        self.gamma = params[p_off:p_off + c]
        self.beta = params[p_off + c:p_off + 2 * c]
        self.running_mean = buffers[s_off:s_off + c]
        self.running_var = buffers[s_off + c:s_off + 2 * c]
        self.gamma[...] = 1
        self.running_var[...] = 1
        return self._spec("batchnorm", w_off=p_off, b_off=p_off + c, s_off=s_off,
                          momentum=self.momentum, eps=self.epsilon)

    def get_config(self) -> dict:
        return {"class": "BatchNorm", "momentum": self.momentum, "epsilon": self.epsilon}

    def __repr__(self):
        return f"BatchNorm(momentum={self.momentum!r}, epsilon={self.epsilon!r})"


class Activation(Layer):
    """An activation function as a layer of its own, e.g. after a BatchNorm:
    ``Dense(64) -> BatchNorm() -> Activation("relu")``.

    Parameters
    ----------
    activation : str
        As for Dense, except ``softmax`` (which only exists fused into the loss).
    negative_slope : float, default 0.01
        Slope of ``leaky_relu`` below zero.
    """

    def __init__(self, activation: str, negative_slope: float = 0.01) -> None:
        self.activation = _activation_name(activation, allow_softmax=False)
        self.negative_slope = _slope(negative_slope)

    def bind(self, params: np.ndarray, w_off: int, p_off: int, buffers: np.ndarray,
             s_off: int, rng: np.random.Generator) -> dict:
        return self._spec("activation", act=self.activation,
                          act_param=self.negative_slope)

    def get_config(self) -> dict:
        return {"class": "Activation", "activation": self.activation,
                "negative_slope": self.negative_slope}

    def __repr__(self):
        return f"Activation({self.activation!r})"


def summary_lines(name: str, layers: list[Layer], built: bool,
                  line_length: int | None = None) -> list[str]:
    """The lines of Keras' ``Model.summary`` table for a model `name` of `layers`: each
    layer, its output shape and parameter count, then the totals (once `built`)."""
    name_width = max([28] + [len(repr(layer)) + 2 for layer in layers])
    width = max(name_width + 37, line_length or 0)
    shape_width = (width - name_width) * 2 // 3
    param_width = width - name_width - shape_width
    rows = [("Layer (type)", "Output Shape", "Param #")]
    for layer in layers:
        known = layer.n_in is not None
        rows.append((repr(layer), f"(None, {layer.units})" if layer.units else "?",
                     f"{layer.n_params + layer.n_buffers:,}" if known else "?"))
    lines = [f'Model: "{name}"', "_" * width]
    for i, (layer, shape, params) in enumerate(rows):
        lines.append(f"{layer:<{name_width}}{shape:<{shape_width}}{params:>{param_width}}")
        lines.append("=" * width if i in (0, len(rows) - 1) else "")
    if built:
        trainable = sum(layer.n_params for layer in layers)
        fixed = sum(layer.n_buffers for layer in layers)
        lines += [f"Total params: {trainable + fixed:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {fixed:,}"]
    else:
        lines.append("Total params: ? (the model is built on the first fit, or by build)")
    return lines + ["_" * width]
