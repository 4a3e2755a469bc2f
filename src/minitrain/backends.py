"""Backends: the C core (``backend="c"``) and its NumPy twin (``backend="numpy"``).

Both expose the same object, built over the model's flat buffers:
``reserve(max_batch)``, ``set_optimizer(kind, **hyper)``, ``set_data(X, y)``, ``clear_data()``,
``step_rows(idx, start, stop, lr, t, update)``, ``step(X, y, lr, t, update)``,
``update(lr, t)``, ``set_shard(row0, rows, weight, reduce)`` and ``forward(X, out)``. The NumPy one computes the same formulas in the same order of
operations wherever NumPy allows, and is the reference the C core is tested against.
"""

from __future__ import annotations

import math
import threading
import warnings

import numpy as np

from . import functional as F
from .optimizers import GRADIENT_KIND, SGD_KIND, STYLE_SKLEARN, STYLE_TORCH

try:
    from . import _core
except ImportError:  # the extension was not built: the NumPy backend still works
    _core = None

BACKENDS = ("c", "numpy")


_LAYER_DEFAULTS = dict.fromkeys(("act_param", "w_off", "b_off", "rate", "momentum", "eps",
                                 "s_off"), 0)


class NumpyNet:
    """The C core's iteration written with NumPy, with the core's guarantees: calls on one
    net run one at a time (NumPy releases the GIL inside its loops), a batch's labels are
    checked where they are used, and nothing is updated unless the gradient is finite."""

    def __init__(self, dtype, loss, layers, params, grads, state, buffers=None, seed=0):
        # mixed_bfloat16: float32 buffers, bfloat16 inputs to the dense layers' products
        self.bf16 = isinstance(dtype, str) and dtype == F.MIXED_BFLOAT16
        self.dtype = F.DTYPES[dtype] if self.bf16 else np.dtype(dtype)
        self.loss = loss
        # the mt_layer fields (absent ones 0, as in the binding; kind and activation names)
        self.layers = [{**_LAYER_DEFAULTS, "act": "identity", **spec} for spec in layers]
        self.params, self.grads, self.state = params, grads, state
        self.buffers, self.seed = buffers, seed
        self.max_batch = 0
        self.opt = None
        self.reduction = "mean"
        self.l2_term = 0.0  # as the core's: set by step() with the scikit-learn style
        # False: a non-finite loss is updated through, as scikit-learn's MLP does, where
        # the core refuses the update (FloatingPointError)
        self.finite_only = True
        self.X = self.y = self.sample_weight = None
        self._pending = None  # (batch weight, kept values, rows) of a step not applied yet
        self.shard = (0, 0, 0.0, None)  # see set_shard
        # below the first layer with parameters no gradient is needed
        self._first = next((l for l, L in enumerate(self.layers)
                            if L["kind"] in ("dense", "batchnorm")), len(self.layers) - 1)
        self._lock = threading.Lock()

    @staticmethod
    def _pair(flat, L):
        """A layer's two blocks of `flat`: (W, b) for dense, (gamma, beta) for batchnorm."""
        w, b, n_in, n_out = L["w_off"], L["b_off"], L["in"], L["out"]
        if L["kind"] == "dense":
            return flat[w:w + n_in * n_out].reshape(n_in, n_out), flat[b:b + n_out]
        return flat[w:w + n_out], flat[b:b + n_out]

    def _running(self, L):
        s, c = L["s_off"], L["out"]
        return self.buffers[s:s + c], self.buffers[s + c:s + 2 * c]

    def reserve(self, max_batch):
        with self._lock:
            self.max_batch = max(self.max_batch, max_batch)

    def set_optimizer(self, kind, momentum=0.0, nesterov=False, weight_decay=0.0,
                      decoupled=False, beta1=0.9, beta2=0.999, eps=1e-8, clip_norm=0.0,
                      n_decay=0, style=STYLE_TORCH):
        with self._lock:
            self.opt = dict(kind=kind, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay, decoupled=decoupled, beta1=beta1,
                            beta2=beta2, eps=eps, clip_norm=clip_norm, n_decay=n_decay,
                            style=style)

    def set_reduction(self, reduction):
        if reduction not in F.REDUCTIONS:
            raise ValueError(f"reduction must be one of {sorted(F.REDUCTIONS)}, got "
                             f"{reduction!r}")
        with self._lock:
            self.reduction = reduction

    def set_shard(self, row0=0, rows=0, weight=0.0, reduce=None):
        """The next steps' rows are rows [row0, row0 + n) of a global batch of `rows` rows
        and weight `weight`, whose batch-norm sums reduce(buf) sums over the ranks in
        place (mt_net's shard fields)."""
        if row0 < 0 or rows < 0 or (rows and row0 >= rows) or not weight >= 0:
            raise ValueError(f"set_shard: row0 must lie in [0, rows) and weight be >= 0, got "
                             f"row0={row0}, rows={rows}, weight={weight}")
        with self._lock:
            self.shard = (row0, rows, weight, reduce)

    def set_data(self, X, y, sample_weight=None):
        with self._lock:
            self.X, self.y, self.sample_weight = X, y, sample_weight

    def clear_data(self):
        self.set_data(None, None)

    def _forward(self, X, training, iteration=0):
        """Outputs of every layer (X first) and what each keeps for backward."""
        outs, kept = [X], []
        row0, total, _, reduce = self.shard
        for l, L in enumerate(self.layers):
            kind, keep = L["kind"], None
            if kind == "dense":
                W, b = self._pair(self.params, L)
                keep = F.matmul(X, W, self.bf16) + b
                X = F.activation_forward(L["act"], L["act_param"], keep)
            elif kind == "activation":
                X = F.activation_forward(L["act"], L["act_param"], X)
            elif kind == "dropout" and training:  # in inference, the identity
                keep = F.dropout_mask(self.seed, iteration, l, X.shape, L["rate"], self.dtype,
                                      row0)
                X = X * keep
            elif kind == "batchnorm":
                gamma, beta = self._pair(self.params, L)
                if training:
                    X, *keep = F.batchnorm_forward(X, gamma, beta, L["eps"], total, reduce)
                else:
                    X = F.batchnorm_inference(X, gamma, beta, *self._running(L), L["eps"])
            outs.append(X)
            kept.append(keep)
        return outs, kept

    def forward(self, X, out):
        with self._lock:
            out[...] = self._forward(X, training=False)[0][-1]

    def step_rows(self, idx, start, stop, lr, t, update=True, iteration=0):
        with self._lock:
            rows = idx[start:stop]
            w = None if self.sample_weight is None else self.sample_weight[rows]
            return self._step(self.X[rows], self.y[rows], lr, t, update, iteration, w)

    def step(self, X, y, lr=0.0, t=0, update=True, iteration=0, sample_weight=None):
        with self._lock:
            return self._step(X, y, lr, t, update, iteration, sample_weight)

    def _step(self, X, y, lr, t, update, iteration, sample_weight):
        self.l2_term = 0.0
        self._pending = None
        _, rows, weight, reduce = self.shard
        failure = None
        if self.loss == "cross_entropy":
            # the caller owns y: it may have changed since it was checked
            y = np.array(y, dtype=np.int64)  # a copy, so the check holds for what is used
            n_out = self.layers[-1]["out"]
            if y.size and (y.min() < 0 or y.max() >= n_out):
                failure = ValueError(f"y holds a label outside [0, {n_out}) in this batch "
                                     f"(was it changed after it was passed in?); nothing was "
                                     f"updated")
                y = np.clip(y, 0, n_out - 1)  # for the passes a reduce hook still needs
        if failure is not None and reduce is None:
            raise failure
        outs, kept = self._forward(X, training=True, iteration=iteration)
        loss = F.loss_value(self.loss, outs[-1], y, self.reduction, sample_weight, weight)
        if failure is None and self.finite_only and not np.isfinite(loss):
            failure = FloatingPointError(f"the loss is not finite ({loss}); nothing was "
                                         f"updated")
        # with a reduce hook every pass runs, so every rank makes the same calls to it
        if failure is not None and reduce is None:
            raise failure
        # an overflow is reported once, below, as the core reports it: not as warnings
        with np.errstate(over="ignore", invalid="ignore"):
            d = F.loss_gradient(self.loss, outs[-1], y, self.reduction, sample_weight, weight)
            for l in range(len(self.layers) - 1, self._first - 1, -1):
                d = self._backward(l, outs[l], outs[l + 1], kept[l], d, l > self._first)
        if failure is not None:
            raise failure
        batch_weight = weight or (len(X) if sample_weight is None else float(
            sample_weight.astype(np.float64).sum()))
        # what the update needs: applied now, or by update() once grads are reduced
        self._pending = (batch_weight, kept, rows or len(X))
        if update:
            self._apply(lr, t, f" (the loss is {loss})")
        return loss

    def update(self, lr, t):
        """Apply the update of the last ``step(..., update=False)`` from ``grads`` as they
        are now (all-reduced, in a distributed fit): parameters, optimizer state and
        batch-norm running statistics, as ``step`` would have."""
        with self._lock:
            if self._pending is None:
                raise ValueError("update() applies the gradient of a step(update=False); "
                                 "there is none")
            self._apply(lr, t, "")

    def _apply(self, lr, t, why):
        batch_weight, kept, n = self._pending
        self._pending = None
        if self.finite_only and not np.isfinite(self.grads).all():
            raise FloatingPointError(f"the gradient is not finite{why}; the parameters were "
                                     f"not updated")
        self._update(lr, t, batch_weight)
        if self.opt["kind"] == GRADIENT_KIND:
            return  # the running statistics stay with the parameters
        for L, keep in zip(self.layers, kept):
            if L["kind"] == "batchnorm":
                F.batchnorm_update_running(*self._running(L), keep[1], L["momentum"], n)

    def _backward(self, l, x, a, keep, d, need_dx):
        """Layer l's parameter gradients from d = dloss/da; returns dloss/dx (or None)."""
        L = self.layers[l]
        kind = L["kind"]
        if kind == "dense":
            d = d * F.activation_derivative(L["act"], L["act_param"], keep, a)
            W, _ = self._pair(self.params, L)
            dW, db = self._pair(self.grads, L)
            db[...] = d.sum(axis=0)
            dW[...] = F.matmul(x.T, d, self.bf16)
            return F.matmul(d, W.T, self.bf16) if need_dx else None
        if kind == "activation":
            return d * F.activation_derivative(L["act"], L["act_param"], x, a)
        if kind == "dropout":
            return d * keep
        gamma, _ = self._pair(self.params, L)
        dgamma, dbeta = self._pair(self.grads, L)
        xhat, stats = keep
        _, total, _, reduce = self.shard
        dgamma[...], dbeta[...], dx = F.batchnorm_backward(d, xhat, gamma, stats[2], total,
                                                           reduce if need_dx else None)
        return dx

    def _with_l2(self, g, wd):
        """The gradient `g` plus the L2 penalty's, wd * W over the decayed parameters (a
        copy); scikit-learn's style also records the penalty itself, 0.5 wd ||W||², from
        the parameters before the update, as the core's update pass does."""
        nd = self.opt["n_decay"]
        if self.opt["style"] == STYLE_SKLEARN:
            weights = self.params[:nd].astype(np.float64)
            self.l2_term = 0.5 * wd * float(np.dot(weights, weights))
        g = g.copy()
        g[:nd] += self.dtype.type(wd) * self.params[:nd]
        return g

    def _update(self, lr, t, batch_weight):
        o, p, g = self.opt, self.params, self.grads
        t_ = self.dtype.type
        if o["clip_norm"] > 0:
            norm = np.sqrt(np.dot(g.astype(np.float64), g.astype(np.float64)))
            if norm > o["clip_norm"]:
                g = g * t_(o["clip_norm"] / norm)
        if o["kind"] == GRADIENT_KIND:  # no update: the gradient the updates below take
            wd = o["weight_decay"]
            self.grads[...] = self._with_l2(g, wd / batch_weight if o["style"] == STYLE_SKLEARN
                                            else wd)
            return
        if o["style"] == STYLE_SKLEARN:
            self._sklearn_update(lr, t, g, o["weight_decay"] / batch_weight)
            return
        lr, wd, nd = t_(lr), t_(o["weight_decay"]), o["n_decay"]
        if o["kind"] == SGD_KIND:
            g = self._with_l2(g, o["weight_decay"])
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
        if o["decoupled"]:
            g = g.copy()
            p[:nd] -= lr * wd * p[:nd]
        else:
            g = self._with_l2(g, o["weight_decay"])
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        p -= lr * (m / c1) / (np.sqrt(v) / c2 + eps)

    def _sklearn_update(self, lr, t, g, wd):
        """scikit-learn's MLP updates, in its order of operations (MT_OPT_STYLE_SKLEARN)."""
        o, p, n, t_ = self.opt, self.params, self.params.size, self.dtype.type
        g = self._with_l2(g, wd)
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


def set_num_threads(n: int | str) -> None:
    """Set the threads of the C core, for every call from any Python thread.

    Results do not depend on it: the same seed gives bit-identical weights on any
    thread count. ``threadpoolctl`` sees and sets the same number.

    Parameters
    ----------
    n : int >= 1 or "auto"
        ``"auto"`` (the default unless ``OMP_NUM_THREADS`` is set): each training loop
        times its iterations and uses the team size that is faster now, re-checking
        regularly. An integer fixes the count; so does ``OMP_NUM_THREADS``, and a
        threadpoolctl limit (in the thread it is set in).
    """
    if n == "auto":
        code = 0
    elif isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer or 'auto', got {n!r}")
    else:
        code = int(n)
    if _core is not None:
        _core.set_num_threads(code)


def get_num_threads() -> int:
    """The threads of the C core.

    Returns
    -------
    int
        The fixed thread count, or in "auto" mode the team of the last iteration; 1
        when the extension is not built (the NumPy backend).
    """
    return _core.get_num_threads() if _core is not None else 1


def cpu_info() -> dict:
    """What the C core runs on.

    Returns
    -------
    dict
        ``isa``: the instruction set of its GEMM micro-kernels (``"avx512_bf16"``,
        ``"avx512"``, ``"avx2"`` or ``"generic"``; the best the CPU supports unless
        lowered with the environment variable ``MINITRAIN_ISA``), or None without the extension;
        ``available_isas``: those this CPU can run; ``num_threads``.
    """
    if _core is None:
        return {"isa": None, "available_isas": (), "num_threads": 1}
    return {"isa": _core.isa(), "available_isas": _core.available_isas(),
            "num_threads": _core.get_num_threads()}
