"""Backends: the C core (``backend="c"``) and its NumPy twin (``backend="numpy"``).

Both expose the same object, built over the model's flat buffers:
``reserve(max_batch)``, ``set_optimizer(kind, **hyper)``, ``set_data(X, y)``,
``step_rows(idx, start, stop, lr, t, update)``, ``step(X, y, lr, t, update)`` and
``forward(X, out)``. The NumPy one computes the same formulas in the same order of
operations wherever NumPy allows, and is the reference the C core is tested against.
"""

import math
import warnings

import numpy as np

from . import functional as F
from .optimizers import SGD_KIND, STYLE_SKLEARN

try:
    from . import _core
except ImportError:  # the extension was not built: the NumPy backend still works
    _core = None

BACKENDS = ("c", "numpy")


class NumpyNet:
    """The C core's iteration written with NumPy."""

    def __init__(self, dtype, loss, layers, params, grads, state):
        self.dtype = np.dtype(dtype)
        self.loss = {v: k for k, v in F.LOSSES.items()}[loss]
        acts = {v: k for k, v in F.ACTIVATIONS.items()}
        self.layers = [(acts[a], alpha, n_in, n_out, w, b) for a, alpha, n_in, n_out, w, b in layers]
        self.params, self.grads, self.state = params, grads, state
        self.max_batch = 0
        self.opt = None
        self.reduction = "mean"
        self.X = self.y = self.sample_weight = None

    def _views(self, flat, layer):
        _, _, n_in, n_out, w, b = layer
        return flat[w:w + n_in * n_out].reshape(n_in, n_out), flat[b:b + n_out]

    def reserve(self, max_batch):
        self.max_batch = max(self.max_batch, max_batch)

    def set_optimizer(self, kind, momentum=0.0, nesterov=False, weight_decay=0.0,
                      decoupled=False, beta1=0.9, beta2=0.999, eps=1e-8, clip_norm=0.0,
                      n_decay=0, style=0):
        self.opt = dict(kind=kind, momentum=momentum, nesterov=nesterov,
                        weight_decay=weight_decay, decoupled=decoupled, beta1=beta1,
                        beta2=beta2, eps=eps, clip_norm=clip_norm, n_decay=n_decay,
                        style=style)

    def set_reduction(self, reduction):
        self.reduction = {v: k for k, v in F.REDUCTIONS.items()}[reduction]

    def set_data(self, X, y, sample_weight=None):
        self.X, self.y, self.sample_weight = X, y, sample_weight

    def _forward(self, X):
        zs, acts = [], [X]
        for layer in self.layers:
            act, alpha, *_ = layer
            W, b = self._views(self.params, layer)
            z = X @ W + b
            X = F.activation_forward(act, alpha, z)
            zs.append(z)
            acts.append(X)
        return zs, acts

    def forward(self, X, out):
        out[...] = self._forward(X)[1][-1]

    def step_rows(self, idx, start, stop, lr, t, update=True):
        rows = idx[start:stop]
        w = None if self.sample_weight is None else self.sample_weight[rows]
        return self.step(self.X[rows], self.y[rows], lr, t, update, w)

    def step(self, X, y, lr=0.0, t=0, update=True, sample_weight=None):
        zs, acts = self._forward(X)
        loss = F.loss_value(self.loss, acts[-1], y, self.reduction, sample_weight)
        if not np.isfinite(loss):
            raise FloatingPointError(f"the loss is not finite ({loss})")
        d = F.loss_gradient(self.loss, acts[-1], y, self.reduction, sample_weight)
        for l in range(len(self.layers) - 1, -1, -1):
            act, alpha, *_ = self.layers[l]
            d = d * F.activation_derivative(act, alpha, zs[l], acts[l + 1])
            W, _ = self._views(self.params, self.layers[l])
            dW, db = self._views(self.grads, self.layers[l])
            db[...] = d.sum(axis=0)
            dW[...] = acts[l].T @ d
            if l > 0:
                d = d @ W.T
        if update:
            batch_weight = len(X) if sample_weight is None else float(
                sample_weight.astype(np.float64).sum())
            self._update(lr, t, batch_weight)
        return loss

    def _update(self, lr, t, batch_weight):
        o, p, g = self.opt, self.params, self.grads
        t_ = self.dtype.type
        if o["clip_norm"] > 0:
            norm = np.sqrt(np.dot(g.astype(np.float64), g.astype(np.float64)))
            if norm > o["clip_norm"]:
                g = g * t_(o["clip_norm"] / norm)
        if o["style"] == STYLE_SKLEARN:
            self._sklearn_update(lr, t, g, t_(o["weight_decay"] / batch_weight))
            return
        lr, wd, nd = t_(lr), t_(o["weight_decay"]), o["n_decay"]
        if o["kind"] == SGD_KIND:
            g = g.copy()
            g[:nd] += wd * p[:nd]
            mu = t_(o["momentum"])
            if mu != 0:
                buf = self.state[:p.size]
                buf *= mu
                buf += g
                g = g + mu * buf if o["nesterov"] else buf
            p -= lr * g
            return
        n = p.size
        m, v = self.state[:n], self.state[n:2 * n]
        b1, b2, eps = t_(o["beta1"]), t_(o["beta2"]), t_(o["eps"])
        c1 = t_(1 - o["beta1"] ** t)
        c2 = t_(np.sqrt(1 - o["beta2"] ** t))
        g = g.copy()
        if o["decoupled"]:
            p[:nd] -= lr * wd * p[:nd]
        else:
            g[:nd] += wd * p[:nd]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        p -= lr * (m / c1) / (np.sqrt(v) / c2 + eps)

    def _sklearn_update(self, lr, t, g, wd):
        """scikit-learn's MLP updates, in its order of operations (MT_OPT_STYLE_SKLEARN)."""
        o, p, n, t_ = self.opt, self.params, self.params.size, self.dtype.type
        g = g.copy()
        g[:o["n_decay"]] += wd * p[:o["n_decay"]]
        if o["kind"] == SGD_KIND:
            mu, v, lr = t_(o["momentum"]), self.state[:n], t_(lr)
            v[...] = mu * v - lr * g
            p += mu * v - lr * g if o["nesterov"] else v
            return
        b1, b2 = o["beta1"], o["beta2"]
        m, v = self.state[:n], self.state[n:2 * n]
        m[...] = t_(b1) * m + t_(1 - b1) * g
        v[...] = t_(b2) * v + t_(1 - b2) * (g * g)
        lr_t = t_(lr * math.sqrt(1 - b2 ** float(t)) / (1 - b1 ** float(t)))
        p += -lr_t * m / (np.sqrt(v) + t_(o["eps"]))


def make_net(backend, *args):
    """The backend's network object; ``backend="c"`` falls back to NumPy (with a
    warning) when the compiled extension is missing."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "c" and _core is None:
        warnings.warn("minitrain's C extension is not available; using the NumPy backend",
                      RuntimeWarning, stacklevel=3)
        backend = "numpy"
    return _core.Net(*args) if backend == "c" else NumpyNet(*args)


def set_num_threads(n):
    """Number of OpenMP threads of the C core (default: OMP_NUM_THREADS or all cores)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if _core is not None:
        _core.set_num_threads(int(n))


def get_num_threads():
    return _core.get_num_threads() if _core is not None else 1
