"""Metrics computed from network outputs, the batched inference pass that computes those
outputs, and the validation hold-out of ``fit``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import functional as F
from ._validation import all_finite, check_int, check_number

_CLASSIFICATION = ("cross_entropy", "binary_cross_entropy")
_PREDICT_BATCH = 1024


def accuracy(loss: str, out: np.ndarray, y: np.ndarray) -> float:
    """Fraction of correct labels (for binary cross-entropy: of correct 0/1 outputs).

    Parameters
    ----------
    loss : str
        The model's loss name (``cross_entropy``, ``mse``, ...).
    out : numpy.ndarray of shape (n_samples, n_outputs)
        Network outputs (logits for the classification losses).
    y : numpy.ndarray
        Targets, as the model's ``fit`` takes them.

    Returns
    -------
    float
        In [0, 1].
    """
    if loss == "cross_entropy":
        return float(np.mean(out.argmax(axis=1) == y))
    return float(np.mean((out > 0) == (y > 0.5)))


def r2(loss: str, out: np.ndarray, y: np.ndarray) -> float:
    """Coefficient of determination, averaged over the outputs (scikit-learn's r2_score):
    ``1 - SS_res / SS_tot``; an output with constant targets scores 1 if predicted
    exactly, else 0.

    Parameters
    ----------
    loss : str
        The model's loss name (``cross_entropy``, ``mse``, ...).
    out : numpy.ndarray of shape (n_samples, n_outputs)
        Network outputs (logits for the classification losses).
    y : numpy.ndarray
        Targets, as the model's ``fit`` takes them.

    Returns
    -------
    float
        At most 1.
    """
    out, y = out.astype(np.float64), y.astype(np.float64)
    ss_res = ((y - out) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    score = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1),
                     np.where(ss_res == 0, 1.0, 0.0))
    return float(score.mean())


def mae(loss: str, out: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute error over all output elements.

    Parameters
    ----------
    loss : str
        The model's loss name (``cross_entropy``, ``mse``, ...).
    out : numpy.ndarray of shape (n_samples, n_outputs)
        Network outputs (logits for the classification losses).
    y : numpy.ndarray
        Targets, as the model's ``fit`` takes them.

    Returns
    -------
    float
        At least 0.
    """
    return float(np.mean(np.abs(out.astype(np.float64) - y)))


# metric name -> (function, losses it applies to)
METRICS = {"accuracy": (accuracy, _CLASSIFICATION), "r2": (r2, ("mse",)),
           "mae": (mae, ("mse",))}
_AUTO = {"cross_entropy": ("accuracy",), "binary_cross_entropy": ("accuracy",),
         "mse": ("r2",)}


def resolve(metrics: str | Sequence[str] | None, loss: str) -> tuple[str, ...]:
    """The metric names of a fit or evaluate call.

    Parameters
    ----------
    metrics : str, sequence of str, or None
        ``"auto"`` is accuracy for the classification losses, r2 for mse and none for
        poisson (whose loss is already the Poisson deviance, halved); a name or names
        from ``METRICS``; None or () is none.
    loss : str
        The model's loss name.

    Returns
    -------
    tuple of str
        The names, each once, in the order given.

    Raises
    ------
    ValueError
        For an unknown name, or a metric that does not apply to `loss`.
    """
    if metrics is None:
        return ()
    if isinstance(metrics, str):
        metrics = _AUTO.get(loss, ()) if metrics == "auto" else (metrics,)
    if not isinstance(metrics, (list, tuple)):
        raise TypeError(f"metrics must be 'auto', a metric name, a list of them or None, "
                        f"got {metrics!r}")
    names = []
    for name in metrics:
        if not isinstance(name, str) or name not in METRICS:
            raise ValueError(f"metrics: unknown metric {name!r}; use 'auto' or names from "
                             f"{sorted(METRICS)}")
        if loss not in METRICS[name][1]:
            raise ValueError(f"metrics: {name!r} does not apply to the {loss} loss (it needs "
                             f"{' or '.join(METRICS[name][1])})")
        if name not in names:
            names.append(name)
    return tuple(names)


def compute(loss: str, names: Sequence[str], out: np.ndarray, y: np.ndarray,
            with_loss: bool = True) -> dict[str, float]:
    """The mean loss and the metrics of outputs `out` for targets `y`.

    Parameters
    ----------
    loss : str
        The model's loss name.
    names : sequence of str
        Metric names, as ``resolve`` returns them.
    out : numpy.ndarray of shape (n_samples, n_outputs)
        Network outputs.
    y : numpy.ndarray
        Targets.
    with_loss : bool, default True
        Include the mean loss.

    Returns
    -------
    dict
        ``{"loss": mean loss, name: value for each metric}``.
    """
    logs = {"loss": F.loss_value(loss, out, y)} if with_loss else {}
    for name in names:
        logs[name] = METRICS[name][0](loss, out, y)
    return logs



def forward_rows(model, X, rows, batch_size=None, step=None, finite=True):
    """`model`'s output for the rows `rows` of the checked X (all rows when None),
    computed in batches of `step` rows (default: the workspace's); only one batch of rows
    is gathered (made dense, for a sparse X) at a time. `finite`: refuse an overflow."""
    net = model._net
    n = X.shape[0] if rows is None else len(rows)
    if batch_size is None:
        batch_size = max(net.max_batch, min(n, _PREDICT_BATCH))
    batch_size = check_int("batch_size", batch_size, 1)
    net.reserve(min(batch_size, n))
    step = step or net.max_batch
    out = np.empty((n, model.n_outputs), dtype=model.dtype)
    for start in range(0, n, step):
        stop = min(start + step, n)
        batch = X[start:stop] if rows is None else X[rows[start:stop]]
        if not isinstance(batch, np.ndarray):  # sparse
            batch = batch.toarray()
        batch = np.ascontiguousarray(batch, dtype=model.dtype)
        net.forward(batch, out[start:stop])
    if finite and not all_finite(out):  # finite weights: only inputs too large get here
        raise ValueError(f"X: the model's outputs overflow {model.dtype.name} on these "
                         f"inputs; scale X")
    return out


def evaluate_rows(model, X, y, rows, metric_names, batch_size=None, with_loss=True):
    """``compute`` on `model`'s outputs for the rows `rows` of the checked X, y."""
    out = forward_rows(model, X, rows, batch_size)
    return compute(model.loss, metric_names, out, y if rows is None else y[rows], with_loss)


def holdout(y: np.ndarray, fraction: float, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row indices holding out the last `fraction` of the rows, per class when
    `stratify`, as Keras' validation_split does without stratification: no
    randomness, so the generator's stream is untouched.

    Parameters
    ----------
    y : numpy.ndarray
        The targets (labels when `stratify`).
    fraction : float in (0, 1)
        The fraction held out.
    stratify : bool
        Hold out the last `fraction` of each class's rows.

    Returns
    -------
    train, validation : numpy.ndarray of int64
        Row indices, in increasing order.
    """
    check_number("validation_split", fraction, 0, low_open=True, high=1, high_open=True)
    n = len(y)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(n)]
    val = np.concatenate([g[int(len(g) * (1 - fraction)):] for g in groups])
    if len(val) == 0 or len(val) == n:
        raise ValueError(f"validation_split={fraction} leaves an empty training or "
                         f"validation set for {n} samples")
    mask = np.zeros(n, dtype=bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
