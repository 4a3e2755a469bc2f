"""The maths of minitrain in NumPy: activations, losses and their derivatives.

The C core implements exactly these formulas; the NumPy backend and `evaluate` use
them, so the two backends can be compared line by line.
"""

import math

import numpy as np

ACTIVATIONS = {"identity": 0, "relu": 1, "leaky_relu": 2, "tanh": 3, "sigmoid": 4, "gelu": 5}
ACTIVATION_ALIASES = {None: "identity", "linear": "identity", "logistic": "sigmoid"}
LOSSES = {"cross_entropy": 0, "mse": 1, "binary_cross_entropy": 2}
LOSS_ALIASES = {
    "categorical_crossentropy": "cross_entropy",
    "sparse_categorical_crossentropy": "cross_entropy",
    "mean_squared_error": "mse",
    "binary_crossentropy": "binary_cross_entropy",
    "bce": "binary_cross_entropy",
    "logistic": "binary_cross_entropy",
}

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    """Element-wise erf (NumPy has none); matches the C library's erf."""
    return _erf(x).astype(x.dtype)


def sigmoid(z):
    # split by sign, as the C core does, so exp never overflows
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def activation_forward(act, alpha, z):
    if act == "relu":
        return np.maximum(z, 0)
    if act == "leaky_relu":
        return np.where(z > 0, z, z.dtype.type(alpha) * z)
    if act == "tanh":
        return np.tanh(z)
    if act == "sigmoid":
        return sigmoid(z)
    if act == "gelu":
        return z.dtype.type(0.5) * z * (1 + erf(z * z.dtype.type(math.sqrt(0.5))))
    return z


def activation_derivative(act, alpha, z, a):
    t = z.dtype.type
    if act == "relu":
        return (z > 0).astype(z.dtype)
    if act == "leaky_relu":
        return np.where(z > 0, t(1), t(alpha))
    if act == "tanh":
        return 1 - a * a
    if act == "sigmoid":
        return a * (1 - a)
    if act == "gelu":
        return t(0.5) * (1 + erf(z * t(math.sqrt(0.5)))) + z * np.exp(t(-0.5) * z * z) * t(
            1 / math.sqrt(2 * math.pi))
    return np.ones_like(z)


def loss_rows(loss, p, y):
    """Per-row loss (n,) in float64 for outputs p (n, out) and targets y."""
    p = p.astype(np.float64)
    if loss == "cross_entropy":
        m = p.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(p - m).sum(axis=1, keepdims=True)))[:, 0]
        return lse - p[np.arange(len(p)), y]
    d = p - y
    if loss == "mse":
        return (d * d).sum(axis=1)
    return (np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p)))).sum(axis=1)


def loss_value(loss, p, y):
    """Mean loss: over rows for cross-entropy, over all elements otherwise."""
    per = loss_rows(loss, p, y).sum()
    return float(per / (len(p) if loss == "cross_entropy" else p.size))


def loss_gradient(loss, p, y):
    """d mean-loss / d p, computed in float64 and returned in p's dtype."""
    z = p.astype(np.float64)
    if loss == "cross_entropy":
        g = softmax(z)
        g[np.arange(len(z)), y] -= 1
        return (g / len(z)).astype(p.dtype)
    if loss == "mse":
        return (2 * (z - y) / z.size).astype(p.dtype)
    return ((sigmoid(z) - y) / z.size).astype(p.dtype)


def output_transform(loss, p):
    """Probabilities from the network output: softmax / sigmoid of the logits."""
    if loss == "cross_entropy":
        return softmax(p.astype(np.float64)).astype(p.dtype)
    if loss == "binary_cross_entropy":
        return sigmoid(p)
    return p
