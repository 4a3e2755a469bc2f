"""Input checks shared by the models and fronts. Every error names the argument."""

import math
import numbers
import warnings

import numpy as np

try:  # single passes in C, no temporaries: these checks run on every batch of train_step
    from ._core import all_finite as _all_finite, checked_as_is as _checked_as_is
    from ._core import labels_below as _labels_below
except ImportError:  # the extension was not built
    _all_finite = _checked_as_is = _labels_below = None

_INT64 = np.dtype(np.int64)

_CHUNK_ELEMENTS = 1 << 18


def check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return int(value)


def check_number(name, value, low=0.0, low_open=False, high=None, high_open=False):
    """`value` as a float if it is a finite real number within the bounds (``[low,
    high]``, either end open on request; no upper bound when `high` is None)."""
    # a float skips the abstract-class checks: schedules' values are checked every iteration
    if (type(value) is not float and (isinstance(value, bool) or not isinstance(
            value, numbers.Real))) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and (value < low or (low_open and value == low))) or (
            high is not None and (value > high or (high_open and value == high))):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must lie in {'(' if low_open else '['}{lo}, "
                         f"{hi}{')' if high_open else ']'}, got {value!r}")
    return float(value)


def _numeric(name, a):
    if isinstance(a, np.ndarray):
        arr = a
    else:
        try:
            arr = np.asarray(a)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be array-like of numbers: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    return arr


def all_finite(a):
    """True if the float array `a` (at least 1-D) holds no NaN or infinity."""
    if _all_finite is not None and a.dtype in (np.float32, np.float64) \
            and a.flags.c_contiguous:
        return bool(_all_finite(a))
    # chunked so a memory-mapped X is never loaded whole, nor a temporary as large made
    rows = max(1, _CHUNK_ELEMENTS // max(1, a.size // max(1, a.shape[0])))
    return all(np.isfinite(a[start:start + rows]).all() for start in range(0, a.shape[0], rows))


def _check_finite(name, a):
    if not all_finite(a):
        raise ValueError(f"{name} contains NaN or infinity")


def check_X(X, dtype, n_features=None, name="X"):
    """A C-contiguous 2-D array of `dtype` with finite values (copied only if needed)."""
    if _checked_as_is is not None and _checked_as_is(X, dtype, -1, n_features or 0):
        return X  # the common case, in one call: what the checks below would return
    arr = _numeric(name, X)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features, the model expects {n_features}")
    if arr.dtype.kind == "f":
        _check_finite(name, arr)
    out = _convert(name, arr, dtype)
    if isinstance(arr, np.memmap) and not np.may_share_memory(out, arr):
        warnings.warn(f"{name} is memory-mapped as {arr.dtype} (C-contiguous: "
                      f"{arr.flags.c_contiguous}); it was loaded whole to convert it to a "
                      f"C-contiguous {np.dtype(dtype).name} array. Store it that way to keep "
                      f"it on disk.", UserWarning, stacklevel=3)
    return out


def _convert(name, arr, dtype):
    """The finite numbers `arr` as a C-contiguous `dtype` array (copied only if needed);
    a narrowing float conversion that overflows raises a ValueError naming `name`."""
    size = dtype.itemsize if isinstance(dtype, np.dtype) else np.dtype(dtype).itemsize
    if arr.dtype.kind != "f" or arr.dtype.itemsize <= size:
        # no overflow possible (int64's range fits float32's); errstate costs a
        # microsecond, and train_step checks every batch
        return np.ascontiguousarray(arr, dtype=dtype)
    with np.errstate(over="ignore"):  # an overflow is reported below, naming the array
        out = np.ascontiguousarray(arr, dtype=dtype)
    if not all_finite(out):
        raise ValueError(f"{name} holds values too large for the model's dtype "
                         f"{out.dtype.name} (largest {np.finfo(out.dtype).max:.4g})")
    return out


def _labels_in_range(y, n_outputs):
    if _labels_below is not None and y.dtype == np.int64 and y.flags.c_contiguous:
        return _labels_below(y, n_outputs)
    return y.min() >= 0 and y.max() < n_outputs


def _one_hot_labels(name, arr, n_outputs):
    """The class labels of exactly one-hot rows (a single 1, the rest 0), as Keras'
    categorical targets; soft labels and anything else 2-D are refused."""
    ones = arr == 1
    if not (ones | (arr == 0)).all() or not (ones.sum(axis=1) == 1).all():
        raise ValueError(f"{name} must be 1-D class labels or exactly one-hot rows (a single 1, "
                         f"the rest 0) for the cross-entropy loss, got shape {arr.shape} with "
                         f"rows that are not one-hot")
    if n_outputs is not None and arr.shape[1] != n_outputs:
        raise ValueError(f"{name} has {arr.shape[1]} one-hot columns, the last layer has "
                         f"{n_outputs} units")
    return ones.argmax(axis=1)


def check_targets(y, loss, n_outputs, n_samples, dtype, name="y"):
    """Targets for `loss`: int64 labels (n,) for cross-entropy, else (n, n_outputs)."""
    if _checked_as_is is not None and n_outputs is not None and (
            _checked_as_is(y, _INT64, n_samples, -1, n_outputs) if loss == "cross_entropy"
            else loss == "mse" and _checked_as_is(y, dtype, n_samples, n_outputs)):
        return y  # the common case, in one call: what the checks below would return
    arr = _numeric(name, y)
    if arr.shape[:1] != (n_samples,):
        raise ValueError(f"X and {name} have different lengths: {n_samples} and "
                         f"{arr.shape[0] if arr.ndim else 'a scalar'}")
    if arr.dtype.kind == "f":
        _check_finite(name, arr)
    if loss == "cross_entropy":
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        elif arr.ndim == 2:
            arr = _one_hot_labels(name, arr, n_outputs)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D class labels for the cross-entropy loss, "
                             f"got shape {arr.shape}")
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class labels for the cross-entropy loss")
        if n_outputs is not None and not _labels_in_range(arr, n_outputs):
            raise ValueError(f"{name} holds labels outside [0, {n_outputs}): the last layer has "
                             f"{n_outputs} units")
        return np.ascontiguousarray(arr, dtype=np.int64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or (n_outputs is not None and arr.shape[1] != n_outputs):
        raise ValueError(f"{name} must have shape ({n_samples}, {n_outputs}) to match the last "
                         f"layer's {n_outputs} units, got {np.shape(y)}")
    if loss == "binary_cross_entropy" and ((arr < 0) | (arr > 1)).any():
        raise ValueError(f"{name} must lie in [0, 1] for the binary cross-entropy loss")
    if loss == "poisson" and (arr < 0).any():
        raise ValueError(f"{name} must hold counts >= 0 for the Poisson loss")
    return _convert(name, arr, dtype)
