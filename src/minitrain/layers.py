"""Layers of a Sequential model."""

import math
import numbers

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
    """Base class. A layer knows its output width once built; its parameters are views
    into the model's flat buffers, bound by the model.

    ``n_weights`` parameters are decayed by the optimizers' weight decay; the other
    ``n_params - n_weights`` (biases, batch-norm scales and shifts) are not, unless the
    optimizer has ``decay_all=True``.
    ``n_buffers`` counts non-trainable state (batch-norm running statistics).
    """

    n_in = None
    units = None
    n_weights = 0
    n_params = 0
    n_buffers = 0

    def build(self, n_in):
        """Fix the input width; returns the output width."""
        self.n_in = self.units = n_in
        return n_in

    def bind(self, params, w_off, p_off, buffers, s_off, rng):
        """Take views of the model's flat buffers at the given offsets (weights at
        w_off, other parameters at p_off, buffers at s_off), initialise them, and return
        the layer's description for the backend (the fields of mt_layer)."""
        raise NotImplementedError

    def _spec(self, kind, **fields):
        return {"kind": kind, "in": self.n_in, "out": self.units, **fields}

    def get_config(self):
        raise NotImplementedError


class Dense(Layer):
    """Fully connected layer: ``activation(X @ W + b)``, with ``W`` of shape (in, units).

    Parameters
    ----------
    units : int
        Output width.
    activation : str or None
        ``identity`` (None, ``linear``), ``relu``, ``leaky_relu``, ``tanh``,
        ``sigmoid`` (``logistic``), ``gelu``; and on the last layer ``softmax`` with
        the cross-entropy loss (the softmax is then fused into the loss).
    negative_slope : float
        Slope of ``leaky_relu`` below zero.
    """

    def __init__(self, units, activation=None, negative_slope=0.01):
        units = check_int("units", units, 1)
        self.activation = _activation_name(activation, allow_softmax=True)
        self.negative_slope = _slope(negative_slope)
        self.units = int(units)
        self.W = None
        self.b = None

    def build(self, n_in):
        self.n_in = n_in
        return self.units

    @property
    def n_weights(self):
        return self.n_in * self.units

    @property
    def n_params(self):
        return self.n_weights + self.units

    def init_limit(self):
        """Uniform initialisation bound: He for relu-like activations, Glorot otherwise."""
        if self.activation in ("relu", "leaky_relu", "gelu"):
            return math.sqrt(6.0 / self.n_in)
        return math.sqrt(6.0 / (self.n_in + self.units))

    def bind(self, params, w_off, p_off, buffers, s_off, rng):
        self.W = params[w_off:w_off + self.n_weights].reshape(self.n_in, self.units)
        self.b = params[p_off:p_off + self.units]
        limit = self.init_limit()
        self.W[...] = rng.uniform(-limit, limit, size=self.W.shape)
        act = "identity" if self.activation == "softmax" else self.activation
        return self._spec("dense", act=act, act_param=self.negative_slope,
                          w_off=w_off, b_off=p_off)

    def get_config(self):
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

    def __init__(self, rate):
        self.rate = _fraction("rate", rate, high_open=True)

    def bind(self, params, w_off, p_off, buffers, s_off, rng):
        return self._spec("dropout", rate=self.rate)

    def get_config(self):
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
    momentum : float in [0, 1]
        Weight of the previous running statistics in each update.
    epsilon : float > 0
        Added to the variance.
    """

    def __init__(self, momentum=0.9, epsilon=1e-5):
        self.momentum = _fraction("momentum", momentum, high_open=False)
        self.epsilon = check_number("epsilon", epsilon, low_open=True)
        self.gamma = self.beta = self.running_mean = self.running_var = None

    @property
    def n_params(self):
        return 2 * self.units

    @property
    def n_buffers(self):
        return 2 * self.units

    def bind(self, params, w_off, p_off, buffers, s_off, rng):
        c = self.units
        self.gamma = params[p_off:p_off + c]
        self.beta = params[p_off + c:p_off + 2 * c]
        self.running_mean = buffers[s_off:s_off + c]
        self.running_var = buffers[s_off + c:s_off + 2 * c]
        self.gamma[...] = 1
        self.running_var[...] = 1
        return self._spec("batchnorm", w_off=p_off, b_off=p_off + c, s_off=s_off,
                          momentum=self.momentum, eps=self.epsilon)

    def get_config(self):
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
    negative_slope : float
        Slope of ``leaky_relu`` below zero.
    """

    def __init__(self, activation, negative_slope=0.01):
        self.activation = _activation_name(activation, allow_softmax=False)
        self.negative_slope = _slope(negative_slope)

    def bind(self, params, w_off, p_off, buffers, s_off, rng):
        return self._spec("activation", act=self.activation,
                          act_param=self.negative_slope)

    def get_config(self):
        return {"class": "Activation", "activation": self.activation,
                "negative_slope": self.negative_slope}

    def __repr__(self):
        return f"Activation({self.activation!r})"
