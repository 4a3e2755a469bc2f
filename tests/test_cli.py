"""The `minitrain` command."""

import subprocess
import sys

import numpy as np
import pytest

from minitrain.cli import main


def run(args, capsys):
    assert main(args) == 0
    return capsys.readouterr().out


def test_default_job_trains_on_shipped_digits(capsys):
    out = run(["--epochs", "30"], capsys)
    assert "digits" in out and "1438 train / 359 test rows" in out
    assert out.count("\n") > 30  # the per-epoch table
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy >= 0.95


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "minitrain.cli", "--epochs", "2", "--quiet"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("test accuracy") and out.count("\n") == 1


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


def test_npz_file(tmp_path, table, capsys):
    X, y = table
    np.savez(tmp_path / "d.npz", X=X, y=y)
    out = run(["--data", str(tmp_path / "d.npz"), "--epochs", "20", "--hidden", "8", "-q"], capsys)
    assert float(out.split("test accuracy ")[1].split()[0]) > 0.9


def test_csv_with_header_and_string_free_regression(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    target = X @ [1.0, -2.0, 0.5]
    path = tmp_path / "r.csv"
    np.savetxt(path, np.column_stack([X, target]), delimiter=",", header="a,b,c,t", comments="")
    out = run(["--data", str(path), "--epochs", "30", "--optimizer", "adam", "--lr", "0.01"], capsys)
    assert "regression" in out and "test loss" in out and "accuracy" not in out.splitlines()[-1]
    assert float(out.split("test loss ")[1].split()[0]) < 0.5


def test_npy_with_target_column(tmp_path, table, capsys):
    X, y = table
    np.save(tmp_path / "t.npy", np.column_stack([y, X]))
    out = run(["--data", str(tmp_path / "t.npy"), "--target", "0", "--epochs", "10", "-q"], capsys)
    assert "test accuracy" in out


def test_bad_file(tmp_path):
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(SystemExit, match="use a .npz, .npy or .csv"):
        main(["--data", str(tmp_path / "x.txt")])
    np.savez(tmp_path / "w.npz", a=np.zeros(3))
    with pytest.raises(SystemExit, match="expected arrays named X and y"):
        main(["--data", str(tmp_path / "w.npz")])
