"""Learning-rate schedules, evaluated once per iteration.

A schedule maps the number of updates already applied, ``t`` (0 for the first
iteration of a run, cumulative over fits and resumes), to the learning rate of the
next update. Pass one as an optimizer's learning rate, as with Keras'
``LearningRateSchedule``::

    opt = mt.SGD(lr=mt.schedules.CosineDecay(0.1, decay_steps=1000, warmup_steps=100))

Schedules are pure functions of ``t``, so a resumed run continues them exactly.
Reducing the rate when a monitored value plateaus depends on the run, not on ``t``:
that is the ``mt.ReduceLROnPlateau`` callback.
"""

from __future__ import annotations

import math
import numbers

from ._validation import check_int
from ._validation import check_number as _number


def _steps(name, value, low=1):
    return check_int(name, value, low)


class Schedule:
    """Base class: ``schedule(t)`` is the learning rate of update ``t + 1``."""

    def __call__(self, t: int) -> float:
        """The learning rate of update ``t + 1``.

        Parameters
        ----------
        t : int
            Updates already applied (the optimizer's ``iterations``).

        Returns
        -------
        float
        """
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor arguments, as JSON values (checkpoints store them).

        Returns
        -------
        dict
            ``class`` (the schedule's class name) and its arguments; ``get`` rebuilds
            the schedule from it.
        """
        return {"class": type(self).__name__, **vars(self)}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """The same rate at every iteration.

    Parameters
    ----------
    lr : float > 0
        The learning rate.
    """

    def __init__(self, lr: float) -> None:
        self.lr = _number("lr", lr, low_open=True)

    def __call__(self, t: int) -> float:
        return self.lr


class StepDecay(Schedule):
    """``lr * gamma ** (t // step_size)``: PyTorch's StepLR, counted in iterations.

    Parameters
    ----------
    lr : float > 0
        The initial learning rate.
    step_size : int >= 1
        Iterations between two decays.
    gamma : float in (0, 1], default 0.1
        Factor of each decay.
    """

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1) -> None:
        self.lr = _number("lr", lr, low_open=True)
        self.step_size = _steps("step_size", step_size)
        self.gamma = _number("gamma", gamma, low_open=True, high=1.0)

    def __call__(self, t: int) -> float:
        return self.lr * self.gamma ** (t // self.step_size)


class ExponentialDecay(Schedule):
    """``initial_learning_rate * decay_rate ** (t / decay_steps)`` (the exponent floored
    when `staircase`): Keras' ExponentialDecay, with its arguments in its order.

    Parameters
    ----------
    initial_learning_rate : float > 0
        The initial learning rate; ``lr`` is accepted as a keyword for it, as the other
        schedules name it.
    decay_steps : int >= 1
        Iterations per factor of `decay_rate`.
    decay_rate : float in (0, 1]
        Factor applied every `decay_steps` iterations.
    staircase : bool, default False
        Decay in steps (the exponent floored) instead of continuously.
    lr : float > 0, optional
        Keyword alias of `initial_learning_rate`.
    """

    def __init__(self, initial_learning_rate: float | None = None,
                 decay_steps: int | None = None, decay_rate: float | None = None,
                 staircase: bool = False, *, lr: float | None = None) -> None:
        if (initial_learning_rate is None) == (lr is None):
            raise TypeError("ExponentialDecay takes initial_learning_rate (or its alias lr), "
                            "once")
        if decay_steps is None or decay_rate is None:
            raise TypeError("ExponentialDecay needs decay_steps and decay_rate: "
                            "ExponentialDecay(initial_learning_rate, decay_steps, decay_rate)")
        self.initial_learning_rate = _number(
            "initial_learning_rate", lr if initial_learning_rate is None else initial_learning_rate,
            low_open=True)
        if not isinstance(decay_steps, numbers.Integral) \
                and isinstance(decay_rate, numbers.Integral):
            # a call in the order minitrain took before, (lr, decay_rate, decay_steps)
            raise ValueError(f"decay_steps must be an integer >= 1, got {decay_steps!r}: the "
                             f"order is Keras' ExponentialDecay(initial_learning_rate, "
                             f"decay_steps, decay_rate)")
        self.decay_steps = _steps("decay_steps", decay_steps)
        self.decay_rate = _number("decay_rate", decay_rate, low_open=True, high=1.0)
        self.staircase = bool(staircase)

    def __call__(self, t: int) -> float:
        p = t // self.decay_steps if self.staircase else t / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** p


class CosineDecay(Schedule):
    """Linear warm-up then cosine decay.

    For ``t < warmup_steps`` the rate rises linearly, ``lr * (t + 1) / warmup_steps``
    (so the first update already moves); then it follows half a cosine from `lr` down
    to `min_lr` over `decay_steps` iterations and stays at `min_lr` afterwards.

    Parameters
    ----------
    lr : float > 0
        The peak learning rate, reached at the end of the warm-up.
    decay_steps : int >= 1
        Iterations of the cosine decay, after the warm-up.
    warmup_steps : int >= 0, default 0
        Iterations of the linear warm-up.
    min_lr : float in [0, lr], default 0.0
        The rate at the end of the decay and after it.

    Examples
    --------
    >>> import minitrain as mt
    >>> opt = mt.SGD(lr=mt.schedules.CosineDecay(0.1, decay_steps=1000, warmup_steps=100))
    """

    def __init__(self, lr: float, decay_steps: int, warmup_steps: int = 0,
                 min_lr: float = 0.0) -> None:
        self.lr = _number("lr", lr, low_open=True)
        self.decay_steps = _steps("decay_steps", decay_steps)
        self.warmup_steps = _steps("warmup_steps", warmup_steps, low=0)
        self.min_lr = _number("min_lr", min_lr, high=self.lr)

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.lr * (t + 1) / self.warmup_steps
        progress = min(t - self.warmup_steps, self.decay_steps) / self.decay_steps
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class InverseScaling(Schedule):
    """``lr / (t + 1) ** power_t``: scikit-learn's ``invscaling``, counted in iterations
    (scikit-learn counts samples).

    Parameters
    ----------
    lr : float > 0
        The initial learning rate.
    power_t : float >= 0, default 0.5
        The exponent.
    """

    def __init__(self, lr: float, power_t: float = 0.5) -> None:
        self.lr = _number("lr", lr, low_open=True)
        self.power_t = _number("power_t", power_t)

    def __call__(self, t: int) -> float:
        return self.lr / (t + 1) ** self.power_t


SCHEDULES = {"constant": Constant, "step": StepDecay, "exponential": ExponentialDecay,
             "cosine": CosineDecay, "invscaling": InverseScaling}
_BY_CLASS = {cls.__name__: cls for cls in SCHEDULES.values()}


def get(identifier: Schedule | str | dict, **kwargs: float) -> Schedule:
    """A Schedule from an instance, a name or a ``get_config()`` dict.

    Parameters
    ----------
    identifier : Schedule, str or dict
        A schedule (returned as is); a name in ``SCHEDULES`` (``"constant"``,
        ``"step"``, ``"exponential"``, ``"cosine"``, ``"invscaling"``); or a dict
        returned by ``Schedule.get_config``.
    **kwargs
        The constructor arguments, with a name.

    Returns
    -------
    Schedule

    Examples
    --------
    >>> import minitrain as mt
    >>> mt.schedules.get("step", lr=0.1, step_size=100)(250)
    0.0010000000000000002
    """
    if isinstance(identifier, Schedule):
        return identifier
    if isinstance(identifier, dict):
        config = dict(identifier)
        cls = _BY_CLASS.get(config.pop("class", None))
        if cls is None:
            raise ValueError(f"unknown schedule config {identifier!r}")
        return cls(**config)
    if isinstance(identifier, str) and identifier.lower() in SCHEDULES:
        return SCHEDULES[identifier.lower()](**kwargs)
    raise ValueError(f"schedule must be a Schedule or one of {sorted(SCHEDULES)}, "
                     f"got {identifier!r}")
