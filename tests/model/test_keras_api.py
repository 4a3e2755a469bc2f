"""What Keras users write: ExponentialDecay's argument order, summary() printing,
one-hot targets for the cross-entropy."""

import numpy as np
import pytest

import minitrain as mt
from minitrain import schedules as S


def test_exponential_decay_takes_keras_order():
    # keras.optimizers.schedules.ExponentialDecay(initial_learning_rate, decay_steps,
    # decay_rate, staircase=False)
    sched = S.ExponentialDecay(0.1, 1000, 0.96)
    assert (sched.initial_learning_rate, sched.decay_steps, sched.decay_rate) == (0.1, 1000, 0.96)
    assert sched(500) == pytest.approx(0.1 * 0.96 ** 0.5, rel=1e-15)
    stairs = S.ExponentialDecay(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.5,
                                staircase=True)
    assert [stairs(t) for t in (9, 10, 25)] == [0.1, 0.05, 0.025]
    # lr= is a keyword alias; configs of either spelling come back
    alias = S.ExponentialDecay(lr=0.1, decay_steps=1000, decay_rate=0.96)
    assert alias(777) == sched(777)
    assert S.get(sched.get_config())(777) == sched(777)
    old = {"class": "ExponentialDecay", "lr": 0.1, "decay_rate": 0.96, "decay_steps": 1000,
           "staircase": False}
    assert S.get(old)(777) == sched(777)


def test_exponential_decay_errors_say_what_to_pass():
    with pytest.raises(ValueError, match="Keras' ExponentialDecay"):
        S.ExponentialDecay(0.1, 0.96, 1000)  # the previous (lr, decay_rate, decay_steps)
    with pytest.raises(TypeError, match="once"):
        S.ExponentialDecay(0.1, 10, 0.5, lr=0.1)
    with pytest.raises(TypeError, match="decay_steps and decay_rate"):
        S.ExponentialDecay(0.1)
    with pytest.raises(ValueError, match="decay_rate must lie in"):
        S.ExponentialDecay(0.1, 10, 0.0)


def test_summary_prints_like_keras(capsys):
    model = mt.Sequential([mt.Dense(16, activation="relu"), mt.BatchNorm(), mt.Dense(3)])
    assert model.summary() is None
    unbuilt = capsys.readouterr().out
    assert "Layer (type)" in unbuilt and "Total params: ?" in unbuilt
    model.build(4)
    assert model.summary() is None
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'Model: "sequential"'
    row = next(line for line in out if line.startswith("Dense(16"))
    assert row.split()[-3:] == ["(None,", "16)", "80"]
    bn = next(line for line in out if line.startswith("BatchNorm"))
    assert bn.split()[-1] == "64"  # gamma, beta and the two running statistics, as Keras
    assert "Total params: 195" in out and "Trainable params: 163" in out
    assert "Non-trainable params: 32" in out
    lines = []
    model.summary(line_length=100, print_fn=lines.append)
    assert lines == [line for line in lines if "\n" not in line] and len(lines[1]) == 100
    assert capsys.readouterr().out == ""


def _problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


def test_one_hot_targets_train_as_their_labels():
    X, y = _problem()
    one_hot = np.eye(3)[y]
    runs = []
    for target, val in ((y, y), (one_hot, one_hot), (one_hot.astype(np.float32), y),
                        (one_hot.astype(bool), one_hot.astype(np.int8))):
        model = mt.Sequential([mt.Dense(8, activation="tanh"), mt.Dense(3)], seed=0)
        model.fit(X, target, epochs=3, batch_size=16, verbose=0, validation_data=(X, val))
        runs.append((model.params_flat.copy(), model.evaluate(X, target)))
        model.train_step(X[:5], target[:5])
    for params, scores in runs[1:]:
        assert np.array_equal(params, runs[0][0]) and scores == runs[0][1]


@pytest.mark.parametrize("target, message", [
    (lambda y: np.eye(3)[y] * 0.9 + 0.1 / 3, "exactly one-hot"),   # label smoothing
    (lambda y: np.eye(3)[y] + np.eye(3)[(y + 1) % 3], "exactly one-hot"),  # two ones
    (lambda y: np.zeros((len(y), 3)), "exactly one-hot"),
    (lambda y: np.eye(4)[y], "4 one-hot columns, the last layer has 3 units"),
])
def test_other_2d_targets_are_refused(target, message):
    X, y = _problem()
    model = mt.Sequential([mt.Dense(8), mt.Dense(3)], seed=0)
    with pytest.raises(ValueError, match=message):
        model.fit(X, target(y), verbose=0)
    assert not model.built
