"""ONNX export of a trained Sequential, for serving without minitrain (ONNX Runtime).

``model.to_onnx("model.onnx")`` writes the inference graph of the model: each Dense as
``MatMul`` + ``Add`` (``W`` is stored (in, out), so ``X @ W + b``), the activations,
BatchNorm with its running statistics, no Dropout (the identity in inference), and the
output head of the loss, so the graph returns what ``predict`` / ``predict_proba``
return:

=========================  ==========================================================
loss                       outputs
=========================  ==========================================================
``cross_entropy``          ``label`` (int64, argmax), ``probabilities`` (softmax)
``binary_cross_entropy``   ``label`` (int64, logit > 0), ``probabilities`` (sigmoid)
``mse``                    ``predictions``
``poisson``                ``predictions`` (exp of the last layer's output)
=========================  ==========================================================

Labels and predictions of a one-output model are 1-D, as ``predict`` returns them.
The input ``X`` has a dynamic batch dimension and the model's dtype (a float64 model
exports in float64; a mixed_bfloat16 model exports its float32 master weights and
computes in float32, so its outputs differ from ``predict``'s by bfloat16 rounding). Needs the ``onnx`` extra: ``pip install "minitrain[onnx]"``.
"""

import functools
import math

import numpy as np

from . import checkpoint
from ._validation import check_int
from .models import _FUSED_OUTPUT

# opset 17 is run by every ONNX Runtime since 1.13 and by most other runtimes; Gelu
# became an operator in opset 20
DEFAULT_OPSET = 17
_GELU_OPSET = 20
_MIN_OPSET = 13  # Squeeze takes its axes as an input from 13 on


def import_onnx():
    """The ``onnx`` module, or an ImportError that says how to install it."""
    try:
        import onnx
        import onnx.checker
        import onnx.helper
        import onnx.numpy_helper
    except ImportError as e:
        raise ImportError('ONNX export needs the onnx package: pip install "minitrain[onnx]"'
                          ) from e
    return onnx


def to_onnx(model, path=None, *, opset=DEFAULT_OPSET, mean=None, scale=None, classes=None):
    """The inference graph of a built `model` as an ``onnx.ModelProto``.

    Parameters
    ----------
    model : Sequential
        Built (trained, or ``build`` called).
    path : str or path-like, optional
        Also write the model there (atomically).
    opset : int
        The ONNX operator set, >= 13 (default 17). From 20 on, a float32 gelu is the
        ``Gelu`` operator; below, ``0.5 x (1 + erf(x / sqrt 2))``.
    mean, scale : array-like of shape (n_features,), optional
        The graph first standardises its input as ``(X - mean) / scale``: the
        preprocessing the model was trained behind, so the file takes raw features.
    classes : array-like, optional
        The label of each class index (``n_outputs`` of them for cross-entropy, 2 for a
        one-output binary cross-entropy model): ``label`` is then ``classes[index]``.

    Returns
    -------
    onnx.ModelProto
        Checked with ``onnx.checker.check_model``.
    """
    model._require_built()
    opset = check_int("opset", opset, _MIN_OPSET)
    # a mixed-precision model keeps float32 master weights: it exports in float32
    dtype = np.dtype(np.float64 if model.params_flat.dtype == np.float64 else np.float32)
    n_in = model.n_features_in_
    mean = _vector("mean", mean, n_in, dtype)
    scale = _vector("scale", scale, n_in, dtype)
    if scale is not None and not np.all(scale != 0):
        raise ValueError("scale must be non-zero")
    classes = _classes(model, classes)
    onnx = import_onnx()
    if opset > onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be <= {onnx.defs.onnx_opset_version()} (the newest the "
                         f"installed onnx {onnx.__version__} knows), got {opset}")

    g = _Graph(onnx, dtype, opset)
    x = "X"
    if mean is not None:
        x = g.op("Sub", x, g.const("input_mean", mean))
    if scale is not None:
        x = g.op("Div", x, g.const("input_scale", scale))
    last = len(model.layers) - 1
    for i, layer in enumerate(model.layers):
        # a softmax / sigmoid output is fused into the loss: the head applies it
        fused = i == last and layer.activation == _FUSED_OUTPUT.get(model.loss)
        x = _layer(g, f"layer{i}", layer, x, fused)
    outputs = _head(g, model, x, classes)

    helper = onnx.helper
    dims = ["N", n_in]
    graph = helper.make_graph(
        g.nodes, "minitrain_sequential",
        [helper.make_tensor_value_info("X", g.elem, dims)],
        [helper.make_tensor_value_info(name, elem, ["N"] + shape) for name, elem, shape in outputs],
        initializer=g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="minitrain",
                              ir_version=helper.find_min_ir_version_for(opsets),
                              doc_string=repr(model))
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        data = proto.SerializeToString()
        checkpoint.atomic_write(path, lambda f: f.write(data))
    return proto


def _vector(name, value, n, dtype):
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one value per input feature, "
                         f"got {arr.shape}")
    with np.errstate(over="ignore"):
        arr = arr.astype(dtype)
    if not np.all(np.isfinite(arr)):  # after the cast: float64 values too large for float32
        raise ValueError(f"{name} contains NaN or infinity (in {np.dtype(dtype).name})")
    return arr


def _classes(model, classes):
    if classes is None:
        return None
    n = {"cross_entropy": model.n_outputs,
         "binary_cross_entropy": 2 if model.n_outputs == 1 else None}.get(model.loss)
    if n is None:
        raise ValueError(f"classes only apply to one label per row (cross_entropy, or "
                         f"binary_cross_entropy with one output), not to this "
                         f"{model.loss} model with {model.n_outputs} outputs")
    arr = np.asarray(classes)
    if arr.dtype.kind not in "biufU" or arr.shape != (n,):
        raise ValueError(f"classes must be {n} numbers or strings, one per class, got "
                         f"{arr.dtype} array of shape {arr.shape}")
    if arr.dtype.kind == "U":
        return arr.astype(object)
    return arr.astype(np.int64 if arr.dtype.kind in "biu" else np.float64)


class _Graph:
    """Nodes and initializers under construction; every value gets a fresh name."""

    def __init__(self, onnx, dtype, opset):
        self.helper, self.numpy_helper = onnx.helper, onnx.numpy_helper
        self.dtype, self.opset = dtype, opset
        self.elem = self.helper.np_dtype_to_tensor_dtype(dtype)
        self.nodes, self.initializers = [], []
        self._count = 0

    def const(self, name, value, dtype=None):
        name = f"{name}_{len(self.initializers)}"
        arr = np.asarray(value, dtype=dtype or self.dtype)
        self.initializers.append(self.numpy_helper.from_array(arr, name))
        return name

    def scalar(self, value):
        return self.const("c", value)

    def op(self, op_type, *inputs, output=None, **attrs):
        self._count += 1
        output = output or f"{op_type.lower()}_{self._count}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output],
                                                name=f"{op_type}_{self._count}", **attrs))
        return output


def _layer(g, name, layer, x, fused):
    kind = type(layer).__name__
    if kind == "Dense":
        x = g.op("MatMul", x, g.const(f"{name}_W", layer.W))
        x = g.op("Add", x, g.const(f"{name}_b", layer.b))
        act = "identity" if fused else layer.activation
        return _activation(g, act, layer.negative_slope, x)
    if kind == "Activation":
        return _activation(g, layer.activation, layer.negative_slope, x)
    if kind == "BatchNorm":
        # inference form, (x - running_mean) * gamma / sqrt(running_var + epsilon) + beta,
        # with the factor computed in float64 here: BatchNormalization's epsilon is a
        # float32 attribute, which moves a float64 model's outputs by ~1e-13
        factor = layer.gamma * (1 / np.sqrt(layer.running_var.astype(np.float64)
                                            + layer.epsilon))
        x = g.op("Sub", x, g.const(f"{name}_running_mean", layer.running_mean))
        x = g.op("Mul", x, g.const(f"{name}_factor", factor))
        return g.op("Add", x, g.const(f"{name}_beta", layer.beta))
    if kind == "Dropout":  # the identity in inference
        return x
    raise TypeError(f"cannot export a {kind} layer to ONNX")


def _activation(g, act, slope, x):
    if act == "identity":
        return x
    if act in ("relu", "tanh", "sigmoid"):
        return g.op({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[act], x)
    if act == "leaky_relu":
        if g.dtype == np.float32:
            return g.op("LeakyRelu", x, alpha=slope)
        # ONNX Runtime has no float64 LeakyRelu kernel at every opset: the same formula
        return g.op("Where", g.op("Greater", x, g.scalar(0)), x,
                    g.op("Mul", x, g.scalar(slope)))
    if act == "gelu":
        if g.dtype == np.float32 and g.opset >= _GELU_OPSET:
            return g.op("Gelu", x)
        erf = _erf_float32 if g.dtype == np.float32 else _erf_float64
        e = erf(g, g.op("Mul", x, g.scalar(math.sqrt(0.5))))
        return g.op("Mul", g.op("Mul", x, g.scalar(0.5)), g.op("Add", e, g.scalar(1)))
    raise ValueError(f"cannot export activation {act!r} to ONNX")


def _erf_float32(g, x):
    return g.op("Erf", x)


# ONNX Runtime has no float64 Erf kernel, so a float64 gelu computes erf with a
# piecewise polynomial: degree 10 on each of 24 intervals of width 1/4 covering [0, 6]
# (erf is 1 to double precision beyond), within 5 ulp of the C library's erf.
_ERF_WIDTH, _ERF_PIECES, _ERF_DEGREE = 0.25, 24, 10


@functools.lru_cache(maxsize=1)
def _erf_coefficients():
    """(pieces, degree + 1) coefficients in powers of x minus the piece's centre, fitted
    at Chebyshev points to math.erf."""
    d = _ERF_DEGREE
    t = np.cos(np.pi * (np.arange(4 * d) + 0.5) / (4 * d)) * (_ERF_WIDTH / 2)
    powers = np.vander(t, d + 1, increasing=True)
    rows = []
    for i in range(_ERF_PIECES):
        centre = (i + 0.5) * _ERF_WIDTH
        values = np.array([math.erf(centre + v) for v in t])
        rows.append(np.linalg.lstsq(powers, values, rcond=None)[0])
    return np.array(rows)


def _erf_float64(g, x):
    coef = _erf_coefficients()
    u = g.op("Min", g.op("Abs", x), g.scalar(_ERF_PIECES * _ERF_WIDTH))
    piece = g.op("Min", g.op("Floor", g.op("Mul", u, g.scalar(1 / _ERF_WIDTH))),
                 g.scalar(_ERF_PIECES - 1))
    centre = g.op("Add", g.op("Mul", piece, g.scalar(_ERF_WIDTH)), g.scalar(_ERF_WIDTH / 2))
    t = g.op("Sub", u, centre)
    index = g.op("Cast", piece, to=g.helper.np_dtype_to_tensor_dtype(np.dtype(np.int64)))
    p = g.op("Gather", g.const("erf_c", coef[:, -1]), index)
    for k in range(_ERF_DEGREE - 1, -1, -1):  # Horner
        p = g.op("Add", g.op("Mul", p, t), g.op("Gather", g.const("erf_c", coef[:, k]), index))
    return g.op("Mul", p, g.op("Sign", x))


def _head(g, model, x, classes):
    """The loss's outputs: [(name, element type, shape after the batch dimension)]."""
    helper = g.helper
    int64 = helper.np_dtype_to_tensor_dtype(np.dtype(np.int64))
    k = model.n_outputs
    squeeze = k == 1  # predict returns one output as a 1-D array

    def labels(index):
        if classes is None:
            return index, int64
        return g.op("Gather", g.const("classes", classes, classes.dtype), index), \
            helper.np_dtype_to_tensor_dtype(classes.dtype)

    if model.loss == "cross_entropy":
        g.op("Softmax", x, axis=1, output="probabilities")
        # argmax of the logits, as predict takes it (first index on ties)
        label, elem = labels(g.op("ArgMax", x, axis=1, keepdims=0))
        g.op("Identity", label, output="label")
        return [("label", elem, []), ("probabilities", g.elem, [k])]
    if model.loss == "binary_cross_entropy":
        g.op("Sigmoid", x, output="probabilities")
        # logit > 0 is predict's rule; sigmoid > 0.5 would differ where a float32
        # sigmoid rounds to 0.5
        label = g.op("Cast", g.op("Greater", x, g.scalar(0)), to=int64)
        if squeeze:
            label = g.op("Squeeze", label, g.const("axes", [1], np.int64))
        label, elem = labels(label)
        g.op("Identity", label, output="label")
        return [("label", elem, [] if squeeze else [k]), ("probabilities", g.elem, [k])]
    if model.loss == "poisson":
        x = g.op("Exp", x)
    if squeeze:
        x = g.op("Squeeze", x, g.const("axes", [1], np.int64))
    g.op("Identity", x, output="predictions")
    return [("predictions", g.elem, [] if squeeze else [k])]
