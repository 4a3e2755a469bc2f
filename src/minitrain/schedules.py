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

import math
import numbers

from ._validation import check_int
from ._validation import check_number as _number


def _steps(name, value, low=1):
    return check_int(name, value, low)


class Schedule:
    """Base class: ``schedule(t)`` is the learning rate of update ``t + 1``."""

    def __call__(self, t):
        raise NotImplementedError

    def get_config(self):
        return {"class": type(self).__name__, **vars(self)}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """The same rate at every iteration."""

    def __init__(self, lr):
        self.lr = _number("lr", lr, low_open=True)

    def __call__(self, t):
        return self.lr


class StepDecay(Schedule):
    """``lr * gamma ** (t // step_size)``: PyTorch's StepLR, counted in iterations."""

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = _number("lr", lr, low_open=True)
        self.step_size = _steps("step_size", step_size)
        self.gamma = _number("gamma", gamma, low_open=True, high=1.0)

    def __call__(self, t):
        return self.lr * self.gamma ** (t // self.step_size)


class ExponentialDecay(Schedule):
    """``initial_learning_rate * decay_rate ** (t / decay_steps)`` (the exponent floored
    when `staircase`): Keras' ExponentialDecay, with its arguments in its order.

    ``lr`` is accepted as a keyword for `initial_learning_rate`, as the other schedules
    name it.
    """

    def __init__(self, initial_learning_rate=None, decay_steps=None, decay_rate=None,
                 staircase=False, *, lr=None):
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

    def __call__(self, t):
        p = t // self.decay_steps if self.staircase else t / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** p


class CosineDecay(Schedule):
    """Linear warm-up then cosine decay.

    For ``t < warmup_steps`` the rate rises linearly, ``lr * (t + 1) / warmup_steps``
    (so the first update already moves); then it follows half a cosine from `lr` down
    to `min_lr` over `decay_steps` iterations and stays at `min_lr` afterwards.
    """

    def __init__(self, lr, decay_steps, warmup_steps=0, min_lr=0.0):
        self.lr = _number("lr", lr, low_open=True)
        self.decay_steps = _steps("decay_steps", decay_steps)
        self.warmup_steps = _steps("warmup_steps", warmup_steps, low=0)
        self.min_lr = _number("min_lr", min_lr, high=self.lr)

    def __call__(self, t):
        if t < self.warmup_steps:
            return self.lr * (t + 1) / self.warmup_steps
        progress = min(t - self.warmup_steps, self.decay_steps) / self.decay_steps
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class InverseScaling(Schedule):
    """``lr / (t + 1) ** power_t``: scikit-learn's ``invscaling``, counted in iterations
    (scikit-learn counts samples)."""

    def __init__(self, lr, power_t=0.5):
        self.lr = _number("lr", lr, low_open=True)
        self.power_t = _number("power_t", power_t)

    def __call__(self, t):
        return self.lr / (t + 1) ** self.power_t


SCHEDULES = {"constant": Constant, "step": StepDecay, "exponential": ExponentialDecay,
             "cosine": CosineDecay, "invscaling": InverseScaling}
_BY_CLASS = {cls.__name__: cls for cls in SCHEDULES.values()}


def get(identifier, **kwargs):
    """A Schedule from an instance, a name in SCHEDULES (with its arguments as keywords)
    or a ``get_config()`` dict."""
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
