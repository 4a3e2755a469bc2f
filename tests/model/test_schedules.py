"""Learning-rate schedules: values at chosen iterations, use in fit, plateau reduction."""

import math

import numpy as np
import pytest

import minitrain as mt
from minitrain import schedules as S


def small_problem(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    return X, y


def small_model(seed=0):
    return mt.Sequential([mt.Dense(8, activation="tanh"), mt.Dense(2)], seed=seed,
                         dtype="float64")


@pytest.mark.parametrize("schedule, values", [
    (S.Constant(0.1), {0: 0.1, 7: 0.1, 10**6: 0.1}),
    (S.StepDecay(0.1, step_size=10, gamma=0.5), {0: 0.1, 9: 0.1, 10: 0.05, 25: 0.025}),
    (S.ExponentialDecay(0.1, 10, 0.5), {0: 0.1, 5: 0.1 * 0.5 ** 0.5, 10: 0.05, 30: 0.0125}),
    (S.ExponentialDecay(0.1, 10, 0.5, True),
     {9: 0.1, 10: 0.05, 19: 0.05}),
    # warm-up: lr * (t + 1) / warmup_steps, then half a cosine from lr to min_lr
    (S.CosineDecay(0.1, decay_steps=100, warmup_steps=10, min_lr=0.01),
     {0: 0.01, 4: 0.05, 9: 0.1, 10: 0.1, 60: 0.055, 110: 0.01, 500: 0.01}),
    (S.CosineDecay(1.0, decay_steps=4), {0: 1.0, 1: 0.5 + 0.5 * math.cos(math.pi / 4),
                                         2: 0.5, 4: 0.0}),
    (S.InverseScaling(0.1, power_t=0.5), {0: 0.1, 3: 0.05, 99: 0.01}),
])
def test_schedule_values(schedule, values):
    for t, expected in values.items():
        assert schedule(t) == pytest.approx(expected, rel=1e-12, abs=1e-15), t


def test_schedule_config_round_trip_and_names():
    sched = S.CosineDecay(0.2, decay_steps=50, warmup_steps=5, min_lr=0.001)
    again = S.get(sched.get_config())
    assert type(again) is S.CosineDecay
    assert [again(t) for t in range(60)] == [sched(t) for t in range(60)]
    assert S.get("step", lr=0.1, step_size=3)(3) == pytest.approx(0.01)
    assert S.get(sched) is sched


def test_fit_uses_the_schedule_every_iteration():
    """The rate of update t+1 is schedule(t): logged per epoch (last iteration) and seen
    by on_iteration_end."""
    X, y = small_problem()
    sched = S.StepDecay(0.1, step_size=4, gamma=0.5)
    seen = []

    class Record(mt.Callback):
        def on_iteration_end(self, iteration, logs=None):
            seen.append((iteration, logs["lr"]))

    model = small_model()
    hist = model.fit(X, y, epochs=3, batch_size=32, optimizer=mt.SGD(lr=sched),
                     callbacks=[Record()], verbose=0)
    assert seen == [(t + 1, sched(t)) for t in range(9)]
    assert hist.history["lr"] == [sched(2), sched(5), sched(8)]

    # the same updates with a hand-written loop of train_step calls
    ref = small_model().build(X.shape[1])
    ref_opt = mt.SGD(lr=S.StepDecay(0.1, step_size=4, gamma=0.5))
    for _ in range(3):
        order = ref.rng.permutation(len(X))
        for start in range(0, len(X), 32):
            rows = order[start:start + 32]
            ref.train_step(X[rows], y[rows], optimizer=ref_opt)
    np.testing.assert_array_equal(ref.params_flat, model.params_flat)


def test_reduce_lr_on_plateau_on_a_constructed_curve():
    X, y = small_problem()
    curve = [1.0, 0.8, 0.85, 0.9, 0.79, 0.95, 0.96, 0.97, 0.98]

    class Curve(mt.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = curve[epoch - 1]

    model = small_model()
    opt = mt.SGD(lr=0.1)
    rlr = mt.ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.0, cooldown=1, min_lr=0.02)
    hist = model.fit(X, y, epochs=9, batch_size=72, optimizer=opt, validation_split=0.25,
                     callbacks=[Curve(), rlr], verbose=0)
    # (Keras' rule) epochs 3, 4 do not improve on 0.8 -> halve after epoch 4; epoch 5 is
    # the cooldown (and improves); 6, 7 do not improve -> halve after 7; 8 is the
    # cooldown; 8, 9 count -> halve after 9, down to the floor min_lr. The logged lr is
    # the one the epoch trained with.
    assert hist.history["lr"] == [0.1] * 4 + [0.05] * 3 + [0.025] * 2
    assert opt.lr == 0.02


def test_bad_schedules():
    with pytest.raises(ValueError, match="schedule must be a Schedule or one of"):
        S.get("linear_warmup", lr=0.1)
    with pytest.raises(ValueError, match="unknown schedule config"):
        S.get({"class": "Nope", "lr": 0.1})
    with pytest.raises(ValueError, match="step_size must be >= 1"):
        S.StepDecay(0.1, step_size=0)
    with pytest.raises(ValueError, match="lr must lie in"):
        S.CosineDecay(-0.1, decay_steps=10)
    with pytest.raises(ValueError, match="min_lr must lie in"):
        S.CosineDecay(0.1, decay_steps=10, min_lr=0.5)
    with pytest.raises(ValueError, match="factor must lie in"):
        mt.ReduceLROnPlateau(factor=1.5)
    X, y = small_problem()
    model = small_model()
    with pytest.raises(ValueError, match="constant learning rate"):
        model.fit(X, y, optimizer=mt.SGD(lr=S.Constant(0.1)), validation_split=0.2,
                  callbacks=[mt.ReduceLROnPlateau()], verbose=0)
    assert not model.built
