"""The `minitrain` command: runs in-process through main(argv), plus a few real processes
for the exit status, the pipe and `python -m minitrain`."""

import csv
import subprocess
import sys

import numpy as np
import pytest

import minitrain as mt
from minitrain import cli
from minitrain.cli import main


def run(args, capsys, stderr=""):
    assert main(args) == 0
    out, err = capsys.readouterr()
    if stderr is not None:
        assert err == stderr
    return out


def fails(args, capsys, status=2):
    """The stderr line of a refused command line; nothing was trained or printed."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == status
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("minitrain: error: "), err
    assert "Traceback" not in err
    return out, lines[0]


def last_number(out, label):
    return float(out.split(label + " ")[1].split()[0])


def test_default_job_trains_on_shipped_digits(capsys):
    out = run(["--epochs", "30"], capsys)
    assert "digits" in out and "1438 train / 359 test rows" in out
    assert out.count("\n") > 30  # the per-epoch table
    assert last_number(out, "test accuracy") >= 0.95


def test_python_m_minitrain_and_the_console_module():
    for module in ("minitrain", "minitrain.cli"):
        out = subprocess.run([sys.executable, "-m", module, "--epochs", "2", "--quiet"],
                             capture_output=True, text=True, check=True).stdout
        assert out.startswith("test accuracy") and out.count("\n") == 1
    version = subprocess.run([sys.executable, "-m", "minitrain", "--version"],
                             capture_output=True, text=True, check=True).stdout
    assert version.strip() == f"minitrain {mt.__version__}"


def test_a_user_error_in_a_real_process_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minitrain", "--data",
                           str(tmp_path / "missing.csv")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"minitrain: error: --data {tmp_path / 'missing.csv'}: no such file\n"


def test_closed_pipe_exits_quietly(tmp_path):
    # `minitrain | head -1`: the reader goes after the first line
    err = tmp_path / "err.txt"
    proc = subprocess.run(f"'{sys.executable}' -m minitrain --epochs 60 2>'{err}' | head -1",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("minitrain: digits") and proc.stdout.count("\n") == 1
    assert err.read_text() == ""


def test_every_option_has_help_and_shows_its_default():
    parser = cli.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.dest in ("help", "version"):
            continue
        assert action.help, action.dest
        assert "default" in formatter._get_help_string(action), action.dest
    text = parser.format_help()
    assert "(default: 0.2)" in text and "(default: relu)" in text


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_npz_file(tmp_path, table, capsys):
    X, y = table
    np.savez(tmp_path / "d.npz", X=X, y=y)
    out = run(["--data", str(tmp_path / "d.npz"), "--epochs", "20", "--hidden", "8", "-q"],
              capsys, stderr=None)
    assert last_number(out, "test accuracy") > 0.9


def test_regression_csv_with_a_target_in_the_hundreds_trains_with_the_defaults(tmp_path,
                                                                               capsys):
    # it diverged: the target was not standardised, and SGD's lr was the classifier's
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    target = 300 + 50 * (X @ [1.0, -0.5, 0.3]) + rng.normal(scale=2.0, size=300)
    path = write_csv(tmp_path / "r.csv", ["a", "b", "c", "price"], np.column_stack([X, target]))
    out = run(["--data", path], capsys)
    assert "regression" in out and "accuracy" not in out.splitlines()[-1]
    assert last_number(out, "test r2") > 0.98
    # the loss is in the target's units: the squared error of a fit to within a few units
    # (the target's variance is about 3400, the noise's 4)
    assert 1 < last_number(out, "test loss") < 100


def test_divergence_names_the_learning_rate(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    path = write_csv(tmp_path / "r.csv", None, np.column_stack([X, 300 + 50 * X[:, 0]]))
    _, line = fails(["--data", path, "--lr", "10"], capsys, status=1)
    assert "training diverged" in line and "lower --lr (this run's is 10)" in line
    assert "scale the inputs" not in line


def test_the_library_names_the_learning_rate_and_the_targets_scale_too():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    model = mt.Sequential([mt.Dense(128, activation="relu"), mt.Dense(1)], loss="mse", seed=0)
    with pytest.raises(FloatingPointError, match="Lower the learning rate, or standardise a "
                                                 "regression target whose scale is large"):
        model.fit(X, 300 + 50 * X[:, 0], epochs=5, optimizer=mt.SGD(lr=0.05, momentum=0.9),
                  verbose=0)


def test_csv_with_header_adam_regression(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    target = X @ [1.0, -2.0, 0.5]
    path = write_csv(tmp_path / "r.csv", ["a", "b", "c", "t"], np.column_stack([X, target]))
    out = run(["--data", path, "--epochs", "30", "--optimizer", "adam", "--lr", "0.01"], capsys)
    assert last_number(out, "test loss") < 0.5


def test_npy_with_target_column(tmp_path, table, capsys):
    X, y = table
    np.save(tmp_path / "t.npy", np.column_stack([y, X]))
    out = run(["--data", str(tmp_path / "t.npy"), "--target", "0", "--epochs", "10", "-q"],
              capsys, stderr=None)
    assert last_number(out, "test accuracy") > 0.85


def test_text_class_labels_in_csv_and_npz_are_classes(tmp_path, table, capsys):
    X, y = table
    labels = np.where(y == 1, "cat", "dog")
    path = write_csv(tmp_path / "l.csv", ["a", "b", "c", "d", "species"],
                     [[*map(str, row), lab] for row, lab in zip(X, labels, strict=True)])
    out = run(["--data", path, "--target", "species", "--epochs", "10"], capsys)
    # text labels are classes: nothing was guessed, nothing to warn of
    assert "classification, 2 classes" in out and last_number(out, "test accuracy") > 0.9
    np.savez(tmp_path / "l.npz", X=X, y=labels)
    out = run(["--data", str(tmp_path / "l.npz"), "--epochs", "10", "-q"], capsys)
    assert last_number(out, "test accuracy") > 0.9


def test_semicolon_separated_csv_is_read(tmp_path, table, capsys):
    # as spreadsheets write it where the decimal mark is a comma
    X, y = table
    path = write_csv(tmp_path / "s.csv", ["a", "b", "c", "d", "y"],
                     [[f"{v:.6f}".replace(".", ",") for v in row] + [str(label)]
                      for row, label in zip(X, y, strict=True)], delimiter=";")
    out = run(["--data", path, "--epochs", "10", "--task", "classification"], capsys)
    assert "';'-separated" in out and "4 features" in out
    assert last_number(out, "test accuracy") > 0.85


def test_target_by_name_and_the_guessed_task_warns(tmp_path, capsys):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 3))
    age = np.clip(np.round(50 + 15 * X[:, 0]), 18, 90)
    path = write_csv(tmp_path / "p.csv", ["age", "a", "b", "c"], np.column_stack([age, X]))
    assert main(["--data", path, "--target", "age", "--epochs", "2"]) == 0
    out, err = capsys.readouterr()
    distinct = len(np.unique(age))
    assert f"classification, {distinct} classes" in out
    assert err.count("\n") == 1 and err.startswith("minitrain: warning: the target age holds "
                                                   f"{distinct} distinct integers")
    assert "--task regression" in err
    out = run(["--data", path, "--target", "age", "--task", "regression", "--epochs", "2"],
              capsys)
    assert "regression" in out  # and no warning


def bad_files(tmp_path):
    files = {
        "text": write_csv(tmp_path / "text.csv", ["a", "b", "y"], [[1, "x", 0], [2, 3, 1]]),
        "empty": write_csv(tmp_path / "empty.csv", ["a", "b", "y"], [[1, "", 0], [2, 3, 1]]),
        "ragged": write_csv(tmp_path / "ragged.csv", ["a", "b", "y"], [[1, 2, 0], [2, 3]]),
        "one": write_csv(tmp_path / "one.csv", None, [["1 2 3"], ["4 5 6"]]),
        "nan": write_csv(tmp_path / "nan.csv", None, [[1, "nan", 0], [2, 3, 1]]),
        "good": write_csv(tmp_path / "good.csv", ["a", "b", "y"],
                          [[i, i % 7, i % 3] for i in range(60)]),
        "txt": str(tmp_path / "x.txt"),
        "noxy": str(tmp_path / "w.npz"),
        "notckpt": str(tmp_path / "not.npz"),
        "objects": str(tmp_path / "objects.npz"),
    }
    np.savez(tmp_path / "objects.npz", X=np.zeros((3, 2)), y=np.array([{}, 1, "a"], dtype=object))
    (tmp_path / "x.txt").write_text("1,2")
    np.savez(tmp_path / "w.npz", a=np.zeros(3))
    (tmp_path / "not.npz").write_bytes(b"not a checkpoint")
    return files


BAD = [  # (arguments, what the one line must name)
    (["--data", "{missing}"], "--data {missing}: no such file"),
    (["--data", "{text}"], "--data {text}: line 2, column 'b': 'x' is not a number"),
    (["--data", "{empty}"], "--data {empty}: line 2, column 'b': empty cell"),
    (["--data", "{ragged}"], "--data {ragged}: line 3 has 2 cells"),
    (["--data", "{one}"], "--data {one}: found one column"),
    (["--data", "{nan}"], "--data {nan}: line 1, column 1: nan is not a finite number"),
    (["--data", "{txt}"], "--data {txt}: use a .csv, .npz or .npy file"),
    (["--data", "{noxy}"], "--data {noxy}: expected arrays named X and y"),
    (["--data", "{good}", "--target", "7"], "--target 7: out of range"),
    (["--data", "{good}", "--target", "price"], "--target 'price': no such column"),
    (["--hidden", "0"], "argument --hidden: value must be >= 1, got 0"),
    (["--hidden", "64", "x"], "argument --hidden: expected an integer, got 'x'"),
    (["--lr", "-1"], "argument --lr: value must lie in (0, inf), got -1"),
    (["--lr", "0"], "argument --lr: value must lie in (0, inf), got 0"),
    (["--lr", "nan"], "argument --lr: value must lie in (0, inf), got nan"),
    (["--threads", "0"], "argument --threads: value must be >= 1, got 0"),
    (["--batch-size", "0"], "argument --batch-size: value must be >= 1, got 0"),
    (["--epochs", "0"], "argument --epochs: value must be >= 1, got 0"),
    (["--test-size", "1.5"], "argument --test-size: value must lie in (0, 1), got 1.5"),
    (["--validation-split", "0"], "argument --validation-split: value must lie in (0, 1)"),
    (["--dropout", "1"], "argument --dropout: value must lie in [0, 1), got 1"),
    (["--activation", "swish"], "argument --activation: invalid choice: 'swish'"),
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to --optimizer sgd"),
    (["--checkpoint", "{nodir}/run.npz"], "--checkpoint {nodir}/run.npz: no such directory"),
    (["--plot", "{nodir}/curves.png"], "--plot {nodir}/curves.png: no such directory"),
    (["--save", "{nodir}/m.npz"], "--save {nodir}/m.npz: no such directory"),
    (["--resume", "{missing}"], "--resume {missing}: no such file"),
    (["--resume", "{notckpt}"], "--resume {notckpt}: {notckpt} is not a minitrain checkpoint"),
    (["--resume", "{good}"], "--resume {good}: {good} is not a minitrain checkpoint"),
    (["--predict", "{missing}"], "--predict {missing}: no such file"),
    (["--predict", "{good}"], "--predict {good}: has 3 feature columns, the model takes 64"),
    (["--data", "{good}", "--task", "regression", "--loss", "cross_entropy"],
     "--loss cross_entropy does not fit --task regression"),
    (["--data", "{good}", "--loss", "binary_cross_entropy"],
     "--loss binary_cross_entropy takes two classes; the target y has 3"),
    (["--target", "0"], "--target selects a column of --data"),
    (["--data", "{objects}"], "--data {objects}: holds Python objects (pickles)"),
    (["--data", "{good}", "--predict", "{good}", "--predict-output", "{good}"],
     "--predict-output {good}: would overwrite an input file"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_user_errors_are_one_line_naming_the_option_before_training(args, message, tmp_path,
                                                                    capsys):
    names = {**bad_files(tmp_path), "missing": str(tmp_path / "missing.csv"),
             "nodir": str(tmp_path / "nodir")}
    out, line = fails([a.format(**names) for a in args], capsys)
    assert message.format(**names) in line
    assert out == ""  # refused before the run began


def test_plot_without_matplotlib_is_refused_before_training(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out, line = fails(["--plot", str(tmp_path / "c.png")], capsys)
    assert f"--plot {tmp_path / 'c.png'}: needs matplotlib" in line and out == ""


def test_patience_stops_on_a_validation_split_and_touches_the_test_rows_once(
        monkeypatch, tmp_path, table, capsys):
    X, y = table
    path = write_csv(tmp_path / "d.csv", None, np.column_stack([X, y]))
    seen = {"fit": [], "evaluate": []}
    fit, evaluate = mt.Sequential.fit, mt.Sequential.evaluate

    def spy_fit(self, X, y, **kwargs):
        seen["fit"].append((X, kwargs["validation_data"][0]))
        return fit(self, X, y, **kwargs)

    def spy_evaluate(self, X, y, **kwargs):
        seen["evaluate"].append(X)
        return evaluate(self, X, y, **kwargs)

    monkeypatch.setattr(mt.Sequential, "fit", spy_fit)
    monkeypatch.setattr(mt.Sequential, "evaluate", spy_evaluate)
    out = run(["--data", path, "--patience", "2", "--epochs", "40", "--task", "classification"],
              capsys)
    assert "216 train / 24 validation / 60 test rows" in out and "val_loss" in out
    (X_train, X_val), = seen["fit"]
    X_test, = seen["evaluate"]  # the test split: once, at the end
    train, val, test = ({r.tobytes() for r in A} for A in (X_train, X_val, X_test))
    assert (len(train), len(val), len(test)) == (216, 24, 60)  # all rows distinct
    assert not train & val and not train & test and not val & test
    assert "stopped early" in out


def test_new_options_save_a_model_of_the_raw_features_and_predict(tmp_path, capsys):
    rng = np.random.default_rng(3)
    X = rng.normal(loc=5.0, scale=[1.0, 10.0, 0.1], size=(400, 3))
    y = np.where(X[:, 0] + X[:, 1] / 10 > 5, "high", "low")
    data = write_csv(tmp_path / "d.csv", ["a", "b", "c", "level"],
                     [[*map(str, row), lab] for row, lab in zip(X, y, strict=True)])
    new = write_csv(tmp_path / "new.csv", ["a", "b", "c"], X[:50])
    model_path = tmp_path / "m.npz"
    out = run(["--data", data, "--epochs", "15", "--hidden", "16", "16", "--dropout", "0.1",
               "--batch-norm", "--optimizer", "adamw", "--weight-decay", "0.001", "--loss",
               "cross_entropy", "--save", str(model_path), "--predict", new,
               "--predict-output", str(tmp_path / "p.csv")], capsys)
    assert "dropout 0.1, batch norm" in out and "weight_decay=0.001" in out
    model = mt.load(model_path)
    assert [type(la).__name__ for la in model.layers] == [
        "Dense", "BatchNorm", "Activation", "Dropout"] * 2 + ["Dense"]
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["level", "probability_high", "probability_low"] and len(rows) == 51
    labels = np.array([r[0] for r in rows[1:]])
    assert np.mean(labels == y[:50]) >= 0.8
    # the saved model takes raw features: it predicts what the CLI wrote
    proba = model.predict_proba(X[:50])
    np.testing.assert_allclose(proba, np.array([r[1:] for r in rows[1:]], dtype=float),
                               atol=1e-4)


def test_regression_model_saved_predicts_in_the_targets_units(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where --predict writes by default
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 2))
    target = 1000 + 200 * X[:, 0] - 100 * X[:, 1]
    data = write_csv(tmp_path / "r.csv", ["a", "b", "t"], np.column_stack([X, target]))
    run(["--data", data, "--save", str(tmp_path / "m.npz"), "--predict", data, "-q"], capsys)
    predicted = np.loadtxt(tmp_path / "r.predictions.csv", skiprows=1)
    np.testing.assert_allclose(mt.load(tmp_path / "m.npz").predict(X), predicted, rtol=1e-5)
    assert np.abs(predicted - target).mean() < 0.05 * target.std()
    # its weights take raw features: it is no checkpoint of the run
    _, line = fails(["--resume", str(tmp_path / "m.npz"), "--epochs", "40"], capsys)
    assert "a model written by --save" in line
    _, line = fails(["--data", data, "--checkpoint", "run.npz", "--save", "run.npz"], capsys)
    assert "--save run.npz: is the --checkpoint file" in line


def test_resume_continues_the_saved_run_or_lists_the_conflicting_options(tmp_path, capsys):
    path = str(tmp_path / "run.npz")
    straight = run(["--epochs", "4", "--hidden", "32", "--batch-size", "64", "-q"], capsys)
    run(["--epochs", "2", "--hidden", "32", "--batch-size", "64", "--checkpoint", path, "-q"],
        capsys)
    # the saved options apply: a plain resume continues the run, bit-identically
    out = run(["--resume", path, "--epochs", "4"], capsys)
    assert "64-32-10" in out and "batch 64" in out
    assert out.splitlines()[-1].split(" · ")[:2] == straight.splitlines()[-1].split(" · ")[:2]
    _, line = fails(["--resume", path, "--epochs", "4", "--optimizer", "adam", "--lr", "0.01",
                     "--batch-size", "32"], capsys)
    assert f"--resume {path}: these options would not continue the saved run" in line
    for conflict in ("--optimizer sgd in the checkpoint, adam here",
                     "--lr (the default) in the checkpoint, 0.01 here",
                     "--batch-size 64 in the checkpoint, 32 here"):
        assert conflict in line
    _, line = fails(["--resume", path, "--epochs", "2"], capsys)
    assert "--epochs 2: the run saved in" in line and "has trained 2 epochs" in line


def test_resume_of_a_checkpoint_saved_by_the_api_lists_settings_as_options(tmp_path, capsys):
    X, y = mt.load_digits()
    model = mt.Sequential([mt.Dense(32, activation="relu"), mt.Dense(10)], seed=0)
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    model.save(tmp_path / "api.npz")
    _, line = fails(["--resume", str(tmp_path / "api.npz"), "--hidden", "32"], capsys)
    assert "--batch-size 16 in the checkpoint, 32 here" in line
    assert "the training rows (--data, --test-size, --validation-split) 1797" in line


def test_outputs_of_different_scales_are_standardised_each(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    Y = np.column_stack([100 + 30 * X[:, 0], -5 + X[:, 1]])
    np.savez(tmp_path / "m.npz", X=X, y=Y)
    out = run(["--data", str(tmp_path / "m.npz"), "--save", str(tmp_path / "model.npz")],
              capsys)
    assert last_number(out, "test r2") > 0.98  # the small output is fitted too
    errors = mt.load(tmp_path / "model.npz").predict(X) - Y
    assert np.sqrt(np.mean(errors ** 2, axis=0))[1] < 0.2


def test_export_of_a_regression_predicts_in_the_targets_units(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 2))
    target = 1000 + 200 * X[:, 0] - 100 * X[:, 1]
    data = write_csv(tmp_path / "r.csv", ["a", "b", "t"], np.column_stack([X, target]))
    path = tmp_path / "r.onnx"
    out = run(["--data", data, "--export", str(path)], capsys)
    assert f"ONNX model written to {path}" in out
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predicted, = session.run(None, {"X": X.astype(np.float32)})
    assert np.abs(predicted.reshape(-1) - target).mean() < 0.05 * target.std()
