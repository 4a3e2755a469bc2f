"""Layers of a Sequential model."""

import math
import numbers

from .functional import ACTIVATION_ALIASES, ACTIVATIONS


class Layer:
    """Base class. A layer knows its output width once built; parameters are views
    into the model's flat buffers, set by the model."""

    def build(self, n_in):
        raise NotImplementedError

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
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        name = ACTIVATION_ALIASES.get(activation, activation)
        if name not in ACTIVATIONS and name != "softmax":
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or 'softmax', "
                             f"got {activation!r}")
        if not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope must be finite, got {negative_slope!r}")
        self.units = int(units)
        self.activation = name
        self.negative_slope = float(negative_slope)
        self.n_in = None
        self.W = None
        self.b = None

    def build(self, n_in):
        self.n_in = n_in
        return self.units

    @property
    def n_weights(self):
        return self.n_in * self.units

    def init_limit(self):
        """Uniform initialisation bound: He for relu-like activations, Glorot otherwise."""
        if self.activation in ("relu", "leaky_relu", "gelu"):
            return math.sqrt(6.0 / self.n_in)
        return math.sqrt(6.0 / (self.n_in + self.units))

    def get_config(self):
        return {"class": "Dense", "units": self.units, "activation": self.activation,
                "negative_slope": self.negative_slope}

    def __repr__(self):
        return f"Dense({self.units}, activation={self.activation!r})"
