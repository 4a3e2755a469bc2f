"""Optimizers. Hyper-parameters live here; the update itself runs in the backend over
the model's flat parameter, gradient and state buffers."""

from __future__ import annotations

import numpy as np

from . import schedules
from ._validation import check_number

# the core's optimizer kinds (mt_opt_kind; "gradient" updates nothing: it adds the L2
# penalty to the gradient, for L-BFGS) and update forms (mt_opt_style: PyTorch's, or
# scikit-learn's MLP), by name: the binding reads their codes from minitrain.h
SGD_KIND, ADAM_KIND, GRADIENT_KIND = "sgd", "adam", "gradient"
STYLE_TORCH, STYLE_SKLEARN = "torch", "sklearn"


class Optimizer:
    """Base class of the optimizers.

    Parameters
    ----------
    lr : float > 0 or Schedule
        The learning rate, or a ``minitrain.schedules`` schedule.
    weight_decay : float >= 0
        The weight-decay coefficient (its form depends on the optimizer). It applies to
        the weights alone (as in Keras and scikit-learn), unless `decay_all`.
    clip_norm : float or None
        Clip the gradient's global L2 norm to it (None: no clipping).
    decay_all : bool, default False
        Apply the weight decay to every parameter, biases and batch-norm scales and
        shifts too, as PyTorch's optimizers do to every parameter they are given.

    Attributes
    ----------
    lr : float
        With a schedule, the rate of the latest update; checked whenever it is set.
    lr_schedule : Schedule or None
        The schedule, when `lr` was one.
    iterations : int
        The updates applied (Adam's step t), cumulative over fits.
    """

    kind = None

    def __init__(self, lr: float | schedules.Schedule, weight_decay: float,
                 clip_norm: float | None, decay_all: bool = False) -> None:
        self.lr_schedule = lr if isinstance(lr, schedules.Schedule) else None
        if not isinstance(decay_all, (bool, np.bool_)):
            raise TypeError(f"decay_all must be True or False, got {decay_all!r}")
        self.decay_all = bool(decay_all)
        self.iterations = 0
        self.lr = self.upcoming_lr() if self.lr_schedule else lr
        self.weight_decay = check_number("weight_decay", weight_decay)
        self.clip_norm = check_number("clip_norm", clip_norm) if clip_norm is not None else 0.0

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        # checked on every assignment: a callback or a user setting lr = -5 would
        # otherwise turn descent into ascent silently
        self._lr = check_number("lr", value, low_open=True)

    def upcoming_lr(self):
        """The learning rate the next update will use, checked, without taking it: a
        schedule's value that is not finite and >= 0 raises a ValueError naming the
        schedule and the iteration."""
        if self.lr_schedule is None:
            return self._lr
        # 0 is allowed here only: decaying schedules end there (CosineDecay's default
        # min_lr) or underflow to it, and a zero rate makes no update
        t = self.iterations
        value = self.lr_schedule(t)
        try:
            return check_number("lr", value)
        except ValueError:
            raise ValueError(f"lr: the schedule {self.lr_schedule!r} returned {value!r} at "
                             f"iteration {t}; a scheduled learning rate must be a finite "
                             f"number >= 0") from None

    def next_lr(self) -> float:
        """The learning rate of the next update (``fit`` calls it every iteration).

        Returns
        -------
        float
            ``upcoming_lr()``: the schedule's value at `iterations`, checked, or the
            constant rate; ``lr`` then holds it.
        """
        self._lr = self.upcoming_lr()
        return self._lr

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
        and batch-norm parameters are not decayed unless `decay_all`.
    clip_norm : float, optional
        Scale the whole gradient (every parameter, one flat vector) down to this L2
        norm when it is longer, before the update.
    decay_all : bool, default False
        Decay every parameter, biases and batch-norm scales and shifts too, as
        PyTorch's optimizers decay every parameter they are given.

    Examples
    --------
    >>> import minitrain as mt
    >>> opt = mt.SGD(lr=0.05, momentum=0.9, nesterov=True)
    """

    kind = SGD_KIND

    def __init__(self, lr: float | schedules.Schedule = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 clip_norm: float | None = None, decay_all: bool = False) -> None:
        super().__init__(lr, weight_decay, clip_norm, decay_all)
        self.momentum = check_number("momentum", momentum, high=1.0, high_open=True)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0")
        self.nesterov = bool(nesterov)

    def core_args(self):
        return {**super().core_args(), "momentum": self.momentum, "nesterov": self.nesterov}

    def get_config(self):
        return {"class": "SGD", "lr": self._lr_config(), "momentum": self.momentum,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay,
                "clip_norm": self.clip_norm or None, "decay_all": self.decay_all}


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
    decay_all : bool, default False
        Decay every parameter, biases and batch-norm scales and shifts too, as
        PyTorch's optimizers decay every parameter they are given.
    """

    kind = ADAM_KIND
    decoupled = False

    def __init__(self, lr: float | schedules.Schedule = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, weight_decay: float = 0.0,
                 clip_norm: float | None = None, decay_all: bool = False) -> None:
        super().__init__(lr, weight_decay, clip_norm, decay_all)
        self.beta_1 = check_number("beta_1", beta_1, high=1.0, high_open=True)
        self.beta_2 = check_number("beta_2", beta_2, high=1.0, high_open=True)
        self.epsilon = check_number("epsilon", epsilon, low_open=True)

    def core_args(self):
        return {**super().core_args(), "beta1": self.beta_1, "beta2": self.beta_2,
                "eps": self.epsilon, "decoupled": self.decoupled}

    def get_config(self):
        return {"class": type(self).__name__, "lr": self._lr_config(), "beta_1": self.beta_1,
                "beta_2": self.beta_2, "epsilon": self.epsilon,
                "weight_decay": self.weight_decay, "clip_norm": self.clip_norm or None,
                "decay_all": self.decay_all}


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
        the Adam step; biases and batch-norm parameters are not decayed unless
        `decay_all`.
    clip_norm : float, optional
        Scale the whole gradient (every parameter, one flat vector) down to this L2
        norm when it is longer, before the update.
    decay_all : bool, default False
        Decay every parameter, biases and batch-norm scales and shifts too, as
        PyTorch's optimizers decay every parameter they are given.
    """

    decoupled = True

    def __init__(self, lr: float | schedules.Schedule = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, weight_decay: float = 0.01,
                 clip_norm: float | None = None, decay_all: bool = False) -> None:
        super().__init__(lr, beta_1, beta_2, epsilon, weight_decay, clip_norm, decay_all)


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
