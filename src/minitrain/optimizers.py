"""Optimizers. Hyper-parameters live here; the update itself runs in the backend over
the model's flat parameter, gradient and state buffers."""

from __future__ import annotations

import math
import numbers

from . import schedules

SGD_KIND, ADAM_KIND = 0, 1
# update forms of the core (mt_opt_style): PyTorch's, or scikit-learn's MLP
STYLE_TORCH, STYLE_SKLEARN = 0, 1


def _check(name, value, low=0.0, low_open=False, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or (
            high is not None and (value > high or (high_open and value == high))):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must lie in {lo}{low}, {high if high is not None else 'inf'}{hi}, "
                         f"got {value!r}")
    return float(value)


class Optimizer:
    """Base class of the optimizers.

    Parameters
    ----------
    lr : float > 0 or Schedule
        The learning rate, or a ``minitrain.schedules`` schedule.
    weight_decay : float >= 0
        The weight-decay coefficient (its form depends on the optimizer).
    clip_norm : float or None
        Clip the gradient's global L2 norm to it (None: no clipping).

    Attributes
    ----------
    lr : float
        With a schedule, the rate of the latest update.
    lr_schedule : Schedule or None
        The schedule, when `lr` was one.
    iterations : int
        The updates applied (Adam's step t), cumulative over fits.
    """

    kind = None

    def __init__(self, lr: float | schedules.Schedule, weight_decay: float,
                 clip_norm: float | None) -> None:
        self.lr_schedule = lr if isinstance(lr, schedules.Schedule) else None
        self.lr = _check("lr", lr(0) if self.lr_schedule else lr, low_open=True)
        self.weight_decay = _check("weight_decay", weight_decay)
        self.clip_norm = _check("clip_norm", clip_norm) if clip_norm is not None else 0.0
        self.iterations = 0

    def next_lr(self) -> float:
        """The learning rate of the next update (``fit`` calls it every iteration).

        Returns
        -------
        float
            The schedule's value at `iterations`, or the constant rate.
        """
        if self.lr_schedule is not None:
            self.lr = float(self.lr_schedule(self.iterations))
        return self.lr

    def core_args(self) -> dict:
        """The hyper-parameters as the backend's ``set_optimizer`` takes them.

        Returns
        -------
        dict
            Keyword arguments of ``set_optimizer``.
        """
        return {"weight_decay": self.weight_decay, "clip_norm": self.clip_norm}

    def _lr_config(self):
        return self.lr_schedule.get_config() if self.lr_schedule else self.lr

    def get_config(self) -> dict:
        """The constructor arguments, as JSON values (checkpoints store them).

        Returns
        -------
        dict
            ``class`` and the arguments; a schedule as `lr` is its own config dict.
        """
        raise NotImplementedError

    def __repr__(self):
        config = {**self.get_config(), "lr": self.lr_schedule or self.lr}
        args = ", ".join(f"{k}={v!r}" for k, v in config.items() if k != "class")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, with momentum and Nesterov momentum as in PyTorch:
    ``buf = momentum*buf + g; p -= lr * (g + momentum*buf if nesterov else buf)``.

    Parameters
    ----------
    lr : float > 0 or Schedule, default 0.01
        The learning rate, or a ``minitrain.schedules`` schedule evaluated every
        iteration.
    momentum : float in [0, 1), default 0.0
        Momentum factor (0: plain SGD).
    nesterov : bool, default False
        Nesterov momentum (needs `momentum` > 0).
    weight_decay : float >= 0, default 0.0
        Adds ``weight_decay * W`` to the gradient of the weights (L2); biases
        and batch-norm parameters are not decayed.
    clip_norm : float, optional
        Scale the whole gradient (every parameter, one flat vector) down to this L2
        norm when it is longer, before the update.

    Examples
    --------
    >>> import minitrain as mt
    >>> opt = mt.SGD(lr=0.05, momentum=0.9, nesterov=True)
    """

    kind = SGD_KIND

    def __init__(self, lr: float | schedules.Schedule = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 clip_norm: float | None = None) -> None:
        super().__init__(lr, weight_decay, clip_norm)
        self.momentum = _check("momentum", momentum, high=1.0, high_open=True)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0")
        self.nesterov = bool(nesterov)

    def core_args(self):
        return {**super().core_args(), "momentum": self.momentum, "nesterov": self.nesterov}

    def get_config(self):
        return {"class": "SGD", "lr": self._lr_config(), "momentum": self.momentum,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay,
                "clip_norm": self.clip_norm or None}


class Adam(Optimizer):
    """Adam (Kingma & Ba), bias-corrected as in PyTorch.

    Parameters
    ----------
    lr : float > 0 or Schedule, default 0.001
        The learning rate, or a ``minitrain.schedules`` schedule evaluated every
        iteration.
    beta_1 : float in [0, 1), default 0.9
        Decay rate of the first-moment (mean) estimate.
    beta_2 : float in [0, 1), default 0.999
        Decay rate of the second-moment estimate.
    epsilon : float > 0, default 1e-8
        Added to the denominator.
    weight_decay : float >= 0, default 0.0
        An L2 term ``weight_decay * W`` added to the gradient of the weights;
        see AdamW for decoupled decay.
    clip_norm : float, optional
        Scale the whole gradient (every parameter, one flat vector) down to this L2
        norm when it is longer, before the update.
    """

    kind = ADAM_KIND
    decoupled = False

    def __init__(self, lr: float | schedules.Schedule = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, weight_decay: float = 0.0,
                 clip_norm: float | None = None) -> None:
        super().__init__(lr, weight_decay, clip_norm)
        self.beta_1 = _check("beta_1", beta_1, high=1.0, high_open=True)
        self.beta_2 = _check("beta_2", beta_2, high=1.0, high_open=True)
        self.epsilon = _check("epsilon", epsilon, low_open=True)

    def core_args(self):
        return {**super().core_args(), "beta1": self.beta_1, "beta2": self.beta_2,
                "eps": self.epsilon, "decoupled": self.decoupled}

    def get_config(self):
        return {"class": type(self).__name__, "lr": self._lr_config(), "beta_1": self.beta_1,
                "beta_2": self.beta_2, "epsilon": self.epsilon,
                "weight_decay": self.weight_decay, "clip_norm": self.clip_norm or None}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as PyTorch's AdamW.

    Parameters
    ----------
    lr : float > 0 or Schedule, default 0.001
        The learning rate, or a ``minitrain.schedules`` schedule evaluated every
        iteration.
    beta_1 : float in [0, 1), default 0.9
        Decay rate of the first-moment (mean) estimate.
    beta_2 : float in [0, 1), default 0.999
        Decay rate of the second-moment estimate.
    epsilon : float > 0, default 1e-8
        Added to the denominator.
    weight_decay : float >= 0, default 0.01
        Decoupled decay of the weights, ``W -= lr * weight_decay * W`` before
        the Adam step; biases and batch-norm parameters are not decayed.
    clip_norm : float, optional
        Scale the whole gradient (every parameter, one flat vector) down to this L2
        norm when it is longer, before the update.
    """

    decoupled = True

    def __init__(self, lr: float | schedules.Schedule = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, weight_decay: float = 0.01,
                 clip_norm: float | None = None) -> None:
        super().__init__(lr, beta_1, beta_2, epsilon, weight_decay, clip_norm)


_NAMES = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get(optimizer: Optimizer | str) -> Optimizer:
    """An Optimizer from an instance or a name ('sgd', 'adam', 'adamw')."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in _NAMES:
        return _NAMES[optimizer.lower()]()
    raise ValueError(f"optimizer must be an Optimizer or one of {sorted(_NAMES)}, "
                     f"got {optimizer!r}")


def from_config(config: dict) -> Optimizer:
    """The optimizer ``get_config()`` describes (a schedule as lr is rebuilt too)."""
    config = dict(config)
    cls = _NAMES.get(str(config.pop("class", "")).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer config {config!r}")
    if isinstance(config.get("lr"), dict):
        config["lr"] = schedules.get(config["lr"])
    return cls(**config)
