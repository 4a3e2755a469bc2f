"""The maths of minitrain in NumPy: activations, losses and their derivatives.

The C core implements exactly these formulas; the NumPy backend and `evaluate` use
them, so the two backends can be compared line by line.
"""

import math

import numpy as np

# The names of the core's activations, losses, layer kinds and loss reductions. Python
# speaks in these names, the NumPy twin included; their C codes are read from
# csrc/minitrain.h by the binding alone (minitrain._core.CODES).
ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "gelu")
ACTIVATION_ALIASES = {None: "identity", "linear": "identity", "logistic": "sigmoid"}
LOSSES = ("cross_entropy", "mse", "binary_cross_entropy", "poisson")
LAYER_KINDS = ("dense", "dropout", "batchnorm", "activation")
# how element losses become a batch loss: see mt_reduction in csrc/minitrain.h
REDUCTIONS = ("mean", "sklearn")
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


def loss_rows(loss, p, y, reduction="mean"):
    """Per-row loss (n,) in float64 for outputs p (n, out) and targets y: the sum over
    the outputs; with the scikit-learn reduction the squared error is halved and the log
    losses are capped at -log(eps), as scikit-learn clips probabilities."""
    sklearn = reduction == "sklearn"
    dtype = p.dtype
    p = p.astype(np.float64)
    if loss == "cross_entropy":
        m = p.max(axis=1, keepdims=True)
        lse = m + np.log(np.exp(p - m).sum(axis=1, keepdims=True))
        elements = lse - p[np.arange(len(p)), y][:, None]
    elif loss == "mse":
        d = p - y
        elements = 0.5 * d * d if sklearn else d * d
    elif loss == "poisson":  # half deviance, y log(y/mu) taken as 0 at y = 0
        mu = np.exp(p)
        elements = np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / mu), 0) - y + mu
    else:
        elements = np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p)))
    if sklearn and loss in ("cross_entropy", "binary_cross_entropy"):
        elements = _cap(elements, dtype)
    return elements.sum(axis=1)


def _cap(loss, dtype):
    eps = np.finfo(dtype).eps
    return np.clip(loss, -np.log1p(-eps), -np.log(eps))


def _row_scale(loss, p, reduction, sample_weight, batch_weight=None):
    """Weights w_i of the rows and the divisor of the batch loss: W = sum w_i (or
    `batch_weight`, a global batch's of which p is a part), times out for the mean
    reduction of the element-wise losses."""
    w = np.ones(len(p)) if sample_weight is None else sample_weight.astype(np.float64)
    total = float(len(p)) if sample_weight is None else w.sum()
    if batch_weight:
        total = float(batch_weight)
    if reduction == "mean" and loss != "cross_entropy":
        total *= p.shape[1]
    return w, total


def loss_value(loss, p, y, reduction="mean", sample_weight=None, batch_weight=None):
    """Batch loss: the weighted mean over rows of the row losses, divided by the
    number of outputs too for the mean reduction (except cross-entropy); with
    `batch_weight`, the share of a global batch of that weight."""
    w, total = _row_scale(loss, p, reduction, sample_weight, batch_weight)
    return float((w * loss_rows(loss, p, y, reduction)).sum() * (1.0 / total))


def loss_gradient(loss, p, y, reduction="mean", sample_weight=None, batch_weight=None):
    """d batch-loss / d p, computed in float64 and returned in p's dtype."""
    w, total = _row_scale(loss, p, reduction, sample_weight, batch_weight)
    z = p.astype(np.float64)
    if loss == "cross_entropy":
        g = softmax(z)
        g[np.arange(len(z)), y] -= 1
    elif loss == "mse":
        g = z - y if reduction == "sklearn" else 2 * (z - y)
    elif loss == "poisson":
        g = np.exp(z) - y
    else:
        g = sigmoid(z) - y
    return (g * (w * (1.0 / total))[:, None]).astype(p.dtype)


def output_transform(loss, p):
    """Probabilities from the network output: softmax / sigmoid of the logits; the
    mean exp(z) of the Poisson loss."""
    if loss == "cross_entropy":
        return softmax(p.astype(np.float64)).astype(p.dtype)
    if loss == "binary_cross_entropy":
        return sigmoid(p)
    if loss == "poisson":
        return np.exp(p)
    return p


# ------------------------------------------------------------------ dropout
_U64 = np.uint64
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: 2^64 / golden ratio


def _mix64(z):
    """splitmix64's output function on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def _word(v):
    """v modulo 2**64 as a one-element uint64 array: array arithmetic wraps silently,
    as C's does, where NumPy scalars would warn."""
    return np.array([v % 2**64], dtype=_U64)


def dropout_mask(seed, iteration, layer, shape, rate, dtype, row0=0):
    """The C core's dropout mask: 0 or ``1/(1-rate)`` for each element of `shape` (rows
    `row0` onwards of a batch).

    Element ``e`` (row-major) is the ``e``-th output of the splitmix64 stream keyed by
    (seed, iteration, layer) and is dropped when its top 53 bits fall below
    ``rate * 2**53``: a counter-based draw, independent of how the work is split.
    """
    key = _mix64(_mix64(_mix64(_word(seed)) + _word(iteration)) + _word(layer))
    first = row0 * shape[1] + 1
    e = np.arange(first, first + math.prod(shape), dtype=_U64)
    u = _mix64(key + e * _U64(_GOLDEN))
    keep = (u >> _U64(11)) >= _U64(int(rate * 2.0**53))
    dtype = np.dtype(dtype)
    return np.where(keep, dtype.type(1 / (1 - rate)), dtype.type(0)).reshape(shape)


# --------------------------------------------------------------- bfloat16
# The dtype names a model accepts: the buffers' dtype, by name. "mixed_bfloat16" (Keras'
# policy name) keeps float32 buffers and rounds the inputs of the dense layers' products
# to bfloat16, accumulating in float32.
MIXED_BFLOAT16 = "mixed_bfloat16"
DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
          MIXED_BFLOAT16: np.dtype(np.float32)}


def round_bfloat16(x):
    """float32 x rounded to bfloat16 (returned as float32), as the C core rounds the
    inputs of its products: to nearest, ties to even; a NaN stays NaN (made quiet);
    denormals become zeros of their sign (vdpbf16ps reads them so)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    one, top = np.uint32(1), np.uint32(16)
    # a carry out of the top bit only happens for NaNs, which the next line replaces
    rounded = (u + np.uint32(0x7FFF) + ((u >> top) & one)) >> top
    r = np.where((u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000),
                 (u >> top) | np.uint32(0x40), rounded)
    r = np.where((u & np.uint32(0x7F800000)) == 0, (u >> top) & np.uint32(0x8000), r)
    return (r.astype(np.uint32) << top).view(np.float32).reshape(np.shape(x))


def matmul(a, b, bf16=False):
    """a @ b; with `bf16` both rounded to bfloat16 first, accumulated in float32."""
    return round_bfloat16(a) @ round_bfloat16(b) if bf16 else a @ b


# --------------------------------------------------------------- batch norm
def _summed(sums, reduce):
    if reduce is not None:  # over the ranks, in place
        reduce(sums)
    return sums


def batchnorm_forward(x, gamma, beta, eps, total=None, reduce=None):
    """Training mode over the rows of x (n, c): returns y, the normalised x and the
    batch (mean, biased variance, 1/sqrt(var + eps)), each in x's dtype. With `reduce`,
    x is a part of a global batch of `total` rows, whose column sums reduce(sums) sums
    over the parts in place."""
    x64 = x.astype(np.float64)
    total = total or len(x)
    mean = _summed(x64.sum(axis=0), reduce) / total
    var = _summed(((x64 - mean) ** 2).sum(axis=0), reduce) / total
    t = x.dtype
    stats = (mean.astype(t), var.astype(t), (1 / np.sqrt(var + eps)).astype(t))
    xhat = (x - stats[0]) * stats[2]
    return gamma * xhat + beta, xhat, stats


def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps):
    """Inference mode: normalise x (n, c) with the running statistics."""
    invstd = (1 / np.sqrt(running_var.astype(np.float64) + eps)).astype(x.dtype)
    return gamma * ((x - running_mean) * invstd) + beta


def batchnorm_backward(dy, xhat, gamma, invstd, total=None, reduce=None):
    """Gradients (dgamma, dbeta, dx) of a training-mode batch norm from dy (n, c): of the
    part's rows for dgamma and dbeta; dx with the sums of the global batch of `total` rows
    (reduce(sums) sums them over the parts in place)."""
    dy64 = dy.astype(np.float64)
    dbeta = dy64.sum(axis=0)
    dgamma = (dy64 * xhat).sum(axis=0)
    sums = _summed(np.concatenate((dbeta, dgamma)), reduce)
    sb, sg = sums[:len(dbeta)], sums[len(dbeta):]
    n = total or len(dy)
    k = gamma.astype(np.float64) * invstd / n
    dx = k * (n * dy64 - sb - xhat * sg)
    return dgamma.astype(dy.dtype), dbeta.astype(dy.dtype), dx.astype(dy.dtype)


def batchnorm_update_running(running_mean, running_var, stats, momentum, n):
    """running = momentum*running + (1-momentum)*batch, in place; the batch variance
    enters unbiased (times n/(n-1)), as in PyTorch."""
    mean, var = (s.astype(np.float64) for s in stats[:2])
    unbias = n / (n - 1) if n > 1 else 1.0
    running_mean[...] = momentum * running_mean.astype(np.float64) + (1 - momentum) * mean
    running_var[...] = momentum * running_var.astype(np.float64) + (1 - momentum) * var * unbias
