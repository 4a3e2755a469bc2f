"""Type checkers read minitrain's annotations (py.typed): a user's script that uses the
public API correctly checks clean, and a wrong argument type is reported. Runs when mypy
is installed (the `test` extra has it)."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("mypy")

GOOD = """
    import numpy as np
    import minitrain as mt
    from minitrain.sklearn import MLPClassifier

    X, y = mt.load_digits()
    X_train, X_test, y_train, y_test = mt.train_test_split(X / 16, y, test_size=0.2)
    model = mt.Sequential([mt.Dense(32, activation="relu"), mt.Dropout(0.1),
                           mt.Dense(10)], loss="cross_entropy", seed=0)
    hist: mt.History = model.fit(
        X_train, y_train, epochs=2, batch_size=64, verbose=0,
        optimizer=mt.SGD(lr=mt.schedules.CosineDecay(0.1, decay_steps=100), momentum=0.9),
        validation_split=0.2, callbacks=[mt.EarlyStopping(patience=2)])
    losses: np.ndarray = hist.iteration_loss
    per_epoch: int = hist.iterations_per_epoch
    scores: dict[str, float] = model.evaluate(X_test, y_test)
    loss: float = model.train_step(X_train[:32], y_train[:32])
    labels: np.ndarray = model.predict(X_test)
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    mt.set_num_threads(1)
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5).fit(X, y)
    proba: np.ndarray = clf.predict_proba(X[:2])
"""

BAD = """
    import minitrain as mt

    model = mt.Sequential([mt.Dense(10)], seed=0)
    model.fit([[0.0]], [0], epochs="ten")
    width: str = model.n_outputs
"""


def _mypy(tmp_path, source):
    path = tmp_path / "user.py"
    path.write_text(textwrap.dedent(source))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull,
         "--no-error-summary", "--hide-error-context", str(path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    return result.returncode, result.stdout + result.stderr


def test_a_correct_script_type_checks(tmp_path):
    code, output = _mypy(tmp_path, GOOD)
    assert code == 0, output


def test_a_wrong_argument_type_is_reported(tmp_path):
    code, output = _mypy(tmp_path, BAD)
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 2, output
    # fit is inherited from the runner's Trainer, which mypy names
    assert 'Argument "epochs" to "fit" of "Trainer" has incompatible type "str"; ' \
        'expected "int"' in lines[0]
    assert 'expression has type "int | None", variable has type "str"' in lines[1]
