"""The ``minitrain`` command: train an MLP on the shipped digits, or on your own file.

Every mistake in the options or the files is found before training starts and
reported as one line, ``minitrain: error: ...``, naming the option or the file, with
exit status 2 (argparse's convention). A run that fails after it started (training
diverged, a disk full) says so the same way with exit status 1.

Options are added in ``build_parser``, each to its group. A checkpoint keeps the
options of its run, for ``--resume``; ``SESSION_OPTIONS`` lists those that describe
one invocation instead (outputs, threads), which it does not keep.
"""

import argparse
import csv
import hashlib
import importlib.util
import io
import math
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

import minitrain as mt
from minitrain import checkpoint, export, models, training
from minitrain import functional as F
from minitrain._validation import check_int

PROG = "minitrain"
# the options of one invocation, not of the run it trains: a checkpoint keeps the
# others, and --resume takes from the checkpoint those not given again
SESSION_OPTIONS = {"resume", "checkpoint", "plot", "save", "export", "predict",
                   "predict_output", "quiet", "threads", "distributed"}
PATIENCE_VALIDATION_SPLIT = 0.1
# an integer target with at most this many distinct values is taken for class labels
MAX_GUESSED_CLASSES = 100
_OPTIMIZER_OPTIONS = {"optimizer", "lr", "momentum", "weight_decay", "schedule"}
_DEFAULT_LR = {"sgd": 0.05, "adam": 0.001, "adamw": 0.001}
# the last layer's curvature under a squared error grows with the hidden width (about
# 2 x 128 for 128 ReLU units on standardised data): SGD with momentum 0.9 needs an lr
# below about 0.015 there, where the bounded softmax gradient takes 0.05; the Poisson
# loss's exp(z) is steeper still for counts in the tens
_DEFAULT_SGD_LR = {"mse": 0.005, "poisson": 0.001}
_REGRESSION_LOSSES = ("mse", "poisson")
_CLASSIFICATION_LOSSES = ("cross_entropy", "binary_cross_entropy")
# resume_conflicts' names of settings, as the options that set them
_SETTING_OPTIONS = {
    "layers": "the layers (--hidden, --activation, --dropout, --batch-norm)",
    "loss": "--loss", "dtype": "--dtype", "n_features_in": "the features (--data)",
    "optimizer": "--optimizer", "lr": "--lr (with --schedule)", "momentum": "--momentum",
    "weight_decay": "--weight-decay", "batch_size": "--batch-size",
    "n_samples": "the training rows (--data, --test-size, --validation-split)",
}


class CommandError(Exception):
    """A mistake in the command line or its files: one line on stderr, exit status 2."""

    status = 2


class RunError(CommandError):
    """The run failed after it started (diverged, could not write a file): status 1."""

    status = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line: the usage is a --help away, and printed first it hides the message
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; an option whose default is "none" says in its
    help what happens without it."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


# ------------------------------------------------------------- argument types
def _integer(low):
    def integer(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            return check_int("value", value, low)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return integer


def _real(low, high=None, low_open=False, high_open=False):
    interval = (f"{'(' if low_open else '['}{low:g}, "
                f"{'inf)' if high is None else f'{high:g}' + (')' if high_open else ']')}")

    def real(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and (
                high is None or (value < high if high_open else value <= high))):
            raise argparse.ArgumentTypeError(f"value must lie in {interval}, got {text}")
        return value
    return real


_POSITIVE = _real(0, low_open=True)
_NON_NEGATIVE = _real(0)
_FRACTION = _real(0, 1, low_open=True, high_open=True)
_RATE = _real(0, 1, high_open=True)


def build_parser():
    p = _Parser(
        prog=PROG, formatter_class=_Help,
        description="Train a multi-layer perceptron with mini-batch gradient descent on a "
                    "table (features and a target column), evaluate it once on a held-out "
                    "test split, and optionally save it or predict new rows. Without --data, "
                    "trains on the handwritten digits shipped with minitrain.")
    p.add_argument("--version", action="version", version=f"%(prog)s {mt.__version__}")

    data = p.add_argument_group("data")
    data.add_argument("--data", metavar="FILE",
                      help=".npz (arrays X and y), .npy or .csv table (a header row is "
                           "optional; ',', ';', tab or '|' separated) (default: the "
                           "handwritten digits shipped with minitrain)")
    data.add_argument("--target", default="-1", metavar="COLUMN",
                      help="the target column of a .csv or .npy table: a header name, or an "
                           "index (negative counts from the last column)")
    data.add_argument("--task", choices=("auto", "classification", "regression"),
                      default="auto",
                      help="auto: text labels are classes; an integer target with at most "
                           f"{MAX_GUESSED_CLASSES} distinct values too (with a warning); "
                           "anything else is regressed")
    data.add_argument("--test-size", type=_FRACTION, default=0.2, metavar="FRACTION",
                      help="fraction of the rows held out (per class for classification) "
                           "and evaluated once, after training")
    data.add_argument("--validation-split", type=_FRACTION, metavar="FRACTION",
                      help="fraction of the training rows held out and evaluated after every "
                           "epoch (val_loss), which --patience watches (default: none; "
                           f"{PATIENCE_VALIDATION_SPLIT} with --patience)")
    data.add_argument("--seed", type=_integer(0), default=0,
                      help="seeds the splits, the initial weights and the shuffling")

    model = p.add_argument_group("model")
    model.add_argument("--hidden", type=_integer(1), nargs="+", default=[128],
                       metavar="UNITS", help="hidden layer widths")
    model.add_argument("--activation", choices=sorted(F.ACTIVATIONS), default="relu",
                       help="activation of the hidden layers")
    model.add_argument("--dropout", type=_RATE, default=0.0, metavar="RATE",
                       help="dropout rate after each hidden layer (0: none)")
    model.add_argument("--batch-norm", action="store_true",
                       help="batch normalisation before each hidden activation")
    model.add_argument("--loss", choices=("auto",) + _CLASSIFICATION_LOSSES
                       + _REGRESSION_LOSSES, default="auto",
                       help="auto: cross_entropy for classification, mse for regression; "
                            "binary_cross_entropy takes two classes, poisson counts >= 0")
    model.add_argument("--dtype", choices=("float32", "float64", "mixed_bfloat16"),
                       default="float32",
                       help="precision of the parameters and the arithmetic; "
                            "mixed_bfloat16: float32 parameters, products of bfloat16 inputs")
    model.add_argument("--backend", choices=("c", "numpy"), default="c",
                       help="c: the C/OpenMP core; numpy: the pure-NumPy reference")

    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=_integer(1), default=30,
                       help="epochs to train (with --resume: the total, saved epochs "
                            "included)")
    train.add_argument("--batch-size", type=_integer(1), default=32, metavar="ROWS",
                       help="rows per iteration")
    train.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd",
                       help="sgd (with --momentum), adam, or adamw (decoupled weight decay)")
    train.add_argument("--lr", type=_POSITIVE,
                       help="learning rate (default: 0.05 for sgd, 0.005 for sgd on mse, "
                            "0.001 for sgd on poisson and for adam and adamw)")
    train.add_argument("--momentum", type=_RATE, default=0.9,
                       help="momentum of --optimizer sgd")
    train.add_argument("--weight-decay", type=_NON_NEGATIVE, metavar="DECAY",
                       help="weight decay of the weights, not the biases: L2 for sgd and "
                            "adam, decoupled for adamw (default: 0; 0.01 for adamw)")
    train.add_argument("--schedule", choices=sorted(mt.schedules.SCHEDULES), default="constant",
                       help="learning-rate schedule over the run's iterations (step: x0.1 "
                            "after each third of the run; exponential: x0.01 over the run; "
                            "cosine: 5%% linear warm-up then cosine to 0; invscaling: "
                            "lr/sqrt(t+1))")
    train.add_argument("--patience", type=_integer(0), metavar="EPOCHS",
                       help="stop when the validation loss has not improved for this many "
                            "epochs, and keep the best epoch's weights (default: train all "
                            "--epochs)")
    train.add_argument("--threads", type=_integer(1),
                       help="threads of the C core (default: OMP_NUM_THREADS, else all "
                            "cores)")
    train.add_argument("--distributed", action="store_true",
                       help="train data-parallel over the ranks of mpiexec (mpiexec -n 4 "
                            "minitrain --distributed ...; the mpi extra): the same weights "
                            "as one process; only rank 0 prints and writes files")

    out = p.add_argument_group("output")
    out.add_argument("--checkpoint", metavar="NPZ",
                     help="save the model and its training state here after every epoch "
                          "(default: none)")
    out.add_argument("--resume", metavar="NPZ",
                     help="continue the run saved in this checkpoint up to --epochs; the "
                          "options not given are the saved run's, and an option given must "
                          "agree with it (default: a new run)")
    out.add_argument("--save", metavar="NPZ",
                     help="write the trained model here (read it with minitrain.load): it "
                          "takes the raw features and predicts in the target's units, the "
                          "standardisation being folded into its first and last layers "
                          "(default: not saved)")
    out.add_argument("--export", metavar="ONNX",
                     help="write the trained model here as ONNX, standardisation and class "
                          "labels included, so it takes the raw features (needs the onnx "
                          "extra: pip install \"minitrain[onnx]\") (default: none)")
    out.add_argument("--predict", metavar="FILE",
                     help="predict the rows of this .csv, .npy or .npz file (the features, "
                          "or a table like --data's) into --predict-output (default: none)")
    out.add_argument("--predict-output", metavar="CSV",
                     help="where --predict writes the predictions, and class probabilities "
                          "for classification (default: FILE's name with .predictions.csv, "
                          "in the current directory)")
    out.add_argument("--plot", metavar="PNG",
                     help="write the learning curves to this image (needs matplotlib: "
                          "pip install \"minitrain[plot]\") (default: none)")
    out.add_argument("-q", "--quiet", action="store_true", help="print only the final result")
    return p


def _given(argv):
    """The options written on the command line (their dests), defaults left out."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


# ---------------------------------------------------------------- tables
class Table:
    """A loaded data file: feature columns and the target, by column."""

    def __init__(self, names, columns, delimiter=None):
        self.names = names          # header names, or None
        self.columns = columns      # list of 1-D arrays: float64 where numeric, else str
        self.delimiter = delimiter


def _delimiter(sample, complete):
    """The column separator of a CSV's first bytes: the Sniffer's choice, but ';' when
    every line holds as many ';' -- the CSV of spreadsheets in locales whose decimal
    mark is the comma, on which the Sniffer prefers ','."""
    lines = [line for line in sample.splitlines()[:None if complete else -1] if line.strip()]
    if lines and len({line.count(";") for line in lines}) == 1 and lines[0].count(";"):
        return csv.excel, ";"
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:  # one column, or too little text to tell
        dialect = csv.excel
    return dialect, dialect.delimiter


def _number(cell, decimal_comma):
    """float(cell), or None; with ';' between the columns, '1,5' is 1.5."""
    try:
        return float(cell.replace(",", ".") if decimal_comma else cell)
    except ValueError:
        return None


def _read_csv(path, option):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(1 << 16)
            dialect, delimiter = _delimiter(sample, complete=len(sample) < 1 << 16)
            f.seek(0)
            reader = csv.reader(f, dialect, delimiter=delimiter)
            rows, lines = [], []
            for row in reader:
                if any(cell.strip() for cell in row):  # blank lines are no rows
                    rows.append(row)
                    lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise CommandError(f"{option} {path}: not a text (UTF-8) file") from None
    except csv.Error as err:
        raise CommandError(f"{option} {path}: unreadable CSV ({err})") from None
    if not rows:
        raise CommandError(f"{option} {path}: the file has no rows")
    width = len(rows[0])
    if width < 2:
        raise CommandError(f"{option} {path}: found one column on line {lines[0]} "
                           f"({rows[0][0][:40]!r}); separate the columns with ',' (or ';', "
                           f"tab, '|')")
    for row, line in zip(rows, lines, strict=True):
        if len(row) != width:
            raise CommandError(f"{option} {path}: line {line} has {len(row)} cells, line "
                               f"{lines[0]} has {width}")

    comma = delimiter == ";"
    # a header row: a cell that is no number above a cell that is one
    header = len(rows) > 1 and any(_number(a, comma) is None and _number(b, comma) is not None
                                   for a, b in zip(rows[0], rows[1], strict=True))
    names = [c.strip() for c in rows[0]] if header else None
    if header:
        rows, lines = rows[1:], lines[1:]
    columns = []
    for j in range(width):
        cells = [row[j] for row in rows]
        values = [_number(c, comma) for c in cells]
        columns.append(np.array(values, dtype=np.float64) if None not in values
                       else np.array([c.strip() for c in cells]))
    return Table(names, columns, delimiter), lines


def _column_name(table, j):
    return repr(table.names[j]) if table.names else str(j)


def _check_numeric(table, lines, j, path, option, what):
    """Column j as float64 with finite values, else a CommandError naming the cell."""
    col = table.columns[j]
    if col.dtype.kind != "f":
        for i, cell in enumerate(col):
            if _number(cell, table.delimiter == ";") is None:
                where = f"{option} {path}: line {lines[i]}, column {_column_name(table, j)}"
                if not cell:
                    raise CommandError(f"{where}: empty cell ({what} must be numbers; "
                                       f"minitrain does not fill in missing values)")
                raise CommandError(f"{where}: {cell[:40]!r} is not a number ({what} must be "
                                   f"numbers)")
    bad = np.flatnonzero(~np.isfinite(col))
    if bad.size:
        i = bad[0]
        raise CommandError(f"{option} {path}: line {lines[i]}, column "
                           f"{_column_name(table, j)}: {float(col[i])} is not a finite number "
                           f"(minitrain does not fill in missing values)")
    return col


def _target_index(spec, names, width, path):
    if names is not None and spec in names:
        return names.index(spec)
    try:
        index = int(spec)
    except ValueError:
        known = (f"the header has {', '.join(map(repr, names))}" if names is not None
                 else f"{path} has no header row: give a column index")
        raise CommandError(f"--target {spec!r}: no such column; {known}") from None
    if not -width <= index < width:
        raise CommandError(f"--target {spec}: out of range for the {width} columns of {path} "
                           f"(0..{width - 1}, or -{width}..-1)")
    return index % width


def _require_file(path, option):
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"{option} {path}: no such file" if not path.exists()
                           else f"{option} {path}: not a file")
    return path


def _data_file(path, option):
    """`path` as a Path and its kind ('.csv', '.npz' or '.npy')."""
    path = _require_file(path, option)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".npz", ".npy"):
        raise CommandError(f"{option} {path}: use a .csv, .npz or .npy file")
    return path, suffix


def _read_npy(path, option):
    table = _np_load(path, option)
    if isinstance(table, np.lib.npyio.NpzFile):
        table.close()
        raise CommandError(f"{option} {path}: a .npz archive named .npy; rename it .npz")
    return table


def _np_load(path, option):
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise CommandError(f"{option} {path}: holds Python objects (pickles), which "
                               f"minitrain does not load; store numbers or strings") from None
        raise CommandError(f"{option} {path}: not a readable NumPy file ({err})") from None
    except (OSError, EOFError) as err:
        raise CommandError(f"{option} {path}: not a readable NumPy file ({err})") from None
    return data


def _npz_arrays(path, option):
    data = _np_load(path, option)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise CommandError(f"{option} {path}: a .npz holds arrays X and y; this is a .npy array")
    with data:
        for xk, yk in (("X", "y"), ("x", "y"), ("data", "target")):
            if xk in data.files:
                try:
                    return data[xk], (data[yk] if yk in data.files else None)
                except ValueError as err:
                    if "allow_pickle" in str(err):
                        raise CommandError(f"{option} {path}: holds Python objects (pickles), "
                                           f"which minitrain does not load; store numbers or "
                                           f"strings") from None
                    raise
        raise CommandError(f"{option} {path}: expected arrays named X and y, found "
                           f"{', '.join(data.files) or 'none'}")


def _check_X(X, path, option):
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise CommandError(f"{option} {path}: X must be a 2-D array (rows, features), got "
                           f"shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise CommandError(f"{option} {path}: X must hold numbers, it holds {X.dtype}")
    X = X.astype(np.float64)
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        raise CommandError(f"{option} {path}: X[{bad[0][0]}, {bad[0][1]}] is {X[tuple(bad[0])]}"
                           f" (minitrain does not fill in missing values)")
    return X


def _target_values(y, path, option):
    """The target as numbers (float64) or as text labels (str)."""
    if y.dtype.kind == "S":
        y = y.astype(str)
    if y.dtype.kind not in "biufU":
        raise CommandError(f"{option} {path}: the target must hold numbers or text labels, "
                           f"it holds {y.dtype}")
    if y.dtype.kind in "iuf":
        y = y.astype(np.float64)
        if not np.isfinite(y).all():
            raise CommandError(f"{option} {path}: the target holds NaN or infinity")
    return y


def load_table(path, target, target_given=True, option="--data"):
    """(X float64, y numbers or text, the target's name, the CSV delimiter or None)."""
    path, suffix = _data_file(path, option)
    if suffix == ".npz":
        if target_given:
            raise CommandError(f"--target {target}: a .npz holds its target as the array y; "
                               f"--target selects a column of a .csv or .npy table")
        X, y = _npz_arrays(path, option)
        if y is None:
            raise CommandError(f"{option} {path}: expected an array y (the target) besides X")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim not in (1, 2) or len(y) != len(X):
            raise CommandError(f"{option} {path}: y must have one row per row of X: X is "
                               f"{X.shape}, y {y.shape}")
        return _check_X(X, path, option), _target_values(y, path, option), "y", None
    if suffix == ".npy":
        table = _read_npy(path, option)
        if table.ndim != 2 or table.shape[1] < 2:
            raise CommandError(f"{option} {path}: expected a 2-D table with feature columns "
                               f"and a target column, got shape {table.shape}")
        j = _target_index(target, None, table.shape[1], path)
        X = _check_X(np.delete(table, j, axis=1), path, option)
        return X, _target_values(table[:, j], path, option), f"column {j}", None
    table, lines = _read_csv(path, option)
    width = len(table.columns)
    j = _target_index(target, table.names, width, path)
    features = [_check_numeric(table, lines, k, path, option, "features")
                for k in range(width) if k != j]
    y = table.columns[j]
    if y.dtype.kind == "U":
        empty = np.flatnonzero(y == "")
        if empty.size:
            raise CommandError(f"{option} {path}: line {lines[empty[0]]}, column "
                               f"{_column_name(table, j)} (the target): empty cell")
    else:
        y = _check_numeric(table, lines, j, path, option, "targets")
    name = table.names[j] if table.names else f"column {j}"
    return np.column_stack(features), y, name, table.delimiter


def load_features(path, n_features, target, option="--predict"):
    """The feature rows of `path` for --predict: the features alone, or a table like
    --data's (its target column then dropped)."""
    path, suffix = _data_file(path, option)
    if suffix == ".npz":
        X = _check_X(_npz_arrays(path, option)[0], path, option)
    elif suffix == ".npy":
        X = _check_X(_read_npy(path, option), path, option)
        if X.shape[1] == n_features + 1:
            X = np.delete(X, _target_index(target, None, X.shape[1], path), axis=1)
    else:
        table, lines = _read_csv(path, option)
        width = len(table.columns)
        drop = None
        if table.names is not None and target in table.names:
            drop = table.names.index(target)
        elif width == n_features + 1:
            drop = _target_index(target, table.names, width, path)
        X = np.column_stack([_check_numeric(table, lines, k, path, option, "features")
                             for k in range(width) if k != drop])
    if X.shape[1] != n_features:
        raise CommandError(f"{option} {path}: has {X.shape[1]} feature columns, the model "
                           f"takes {n_features}")
    return X


# ---------------------------------------------------------------- checks
def _check_output(option, path):
    directory = Path(path).resolve().parent
    if not directory.is_dir():
        raise CommandError(f"{option} {path}: no such directory: {directory}")
    if Path(path).is_dir():
        raise CommandError(f"{option} {path}: is a directory")


def _check_plot(path):
    if importlib.util.find_spec("matplotlib") is None:
        raise CommandError(f"--plot {path}: needs matplotlib: pip install \"minitrain[plot]\" "
                           f"(or pip install matplotlib)")
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.lower().lstrip(".")
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in formats:
        raise CommandError(f"--plot {path}: matplotlib writes {', '.join(sorted(formats))}, "
                           f"not .{suffix}")


def _load_checkpoint(path):
    _require_file(path, "--resume")
    try:
        return models.load(path)
    except (ValueError, OSError) as err:
        reason = str(err)
        if "pickled" in reason:  # NumPy's words for bytes it cannot read, not the user's
            reason = reason.split(" (", 1)[0]
        raise CommandError(f"--resume {path}: {reason}") from None


def _fingerprint(X, y):
    """Identifies the data set of a run, so that a resume finds the same rows."""
    digest = hashlib.sha256(np.ascontiguousarray(X).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes() if y.dtype.kind != "U"
                  else "\0".join(y.tolist()).encode())
    return digest.hexdigest()[:16]


def _flag(dest):
    return "--" + dest.replace("_", "-")


# ---------------------------------------------------------------- the run
def schedule(name, lr, total_iterations):
    """The --schedule choices, scaled to the run's length."""
    return {
        "constant": lambda: lr,
        "step": lambda: mt.schedules.StepDecay(lr, step_size=max(total_iterations // 3, 1)),
        "exponential": lambda: mt.schedules.ExponentialDecay(
            lr, decay_rate=0.01, decay_steps=max(total_iterations, 1)),
        "cosine": lambda: mt.schedules.CosineDecay(
            lr, decay_steps=max(total_iterations - total_iterations // 20, 1),
            warmup_steps=total_iterations // 20),
        "invscaling": lambda: mt.schedules.InverseScaling(lr),
    }[name]()


def _optimizer(args, loss, iterations_per_epoch):
    lr = args.lr or (_DEFAULT_SGD_LR.get(loss, _DEFAULT_LR["sgd"]) if args.optimizer == "sgd"
                     else _DEFAULT_LR[args.optimizer])
    lr = schedule(args.schedule, lr, args.epochs * iterations_per_epoch)
    decay = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
    if args.optimizer == "sgd":
        return mt.SGD(lr=lr, momentum=args.momentum, **decay)
    return (mt.Adam if args.optimizer == "adam" else mt.AdamW)(lr=lr, **decay)


def _layers(args, n_out):
    layers = []
    for width in args.hidden:
        if args.batch_norm:
            layers += [mt.Dense(width), mt.BatchNorm(), mt.Activation(args.activation)]
        else:
            layers.append(mt.Dense(width, activation=args.activation))
        if args.dropout:
            layers.append(mt.Dropout(args.dropout))
    return layers + [mt.Dense(n_out)]


def _task_and_loss(args, y, target_name, builtin, warn):
    """The task and the loss, from --task, --loss and the target's values."""
    task, loss = args.task, args.loss
    if loss in _CLASSIFICATION_LOSSES and task == "regression" or (
            loss in _REGRESSION_LOSSES and task == "classification"):
        raise CommandError(f"--loss {loss} does not fit --task {task}")
    if task == "auto":
        if loss != "auto":
            task = "classification" if loss in _CLASSIFICATION_LOSSES else "regression"
        elif builtin or y.dtype.kind in "Ub":
            task = "classification"
        else:
            integral = y.ndim == 1 and bool(np.all(y == np.round(y)))
            distinct = len(np.unique(y)) if integral else 0
            task = "classification" if integral and distinct <= MAX_GUESSED_CLASSES \
                else "regression"
            if task == "classification":
                warn(f"the target {target_name} holds {distinct} distinct integers: taken as "
                     f"{distinct} classes; pass --task regression to predict it as a number")
    if task == "regression" and y.dtype.kind == "U":
        raise CommandError(f"--task regression: the target {target_name} holds text "
                           f"({str(y[0])!r}...), not numbers")
    if task == "classification" and y.ndim != 1:
        raise CommandError(f"--task classification: the target y must be 1-D labels, got "
                           f"shape {y.shape}")
    if loss == "auto":
        loss = "cross_entropy" if task == "classification" else "mse"
    if loss == "poisson" and (y < 0).any():
        raise CommandError(f"--loss poisson: the target {target_name} must be counts >= 0; "
                           f"it holds {y.min():g}")
    return task, loss


class _RunOptions(mt.Callback):
    """Keeps the command line's options in each checkpoint (its callbacks' state), so
    that --resume can continue the run they describe."""

    def __init__(self, options, data):
        self.options, self.data = options, data
        self.folded = False  # set for --save: its weights take raw features

    def get_state(self):
        return {"options": self.options, "data": self.data, "folded": self.folded}


class _EpochTable(mt.Callback):
    """Prints a line per epoch as it ends (a resumed run's saved epochs first)."""

    def __init__(self, say, loss_scale):
        self.say, self.loss_scale, self.columns = say, loss_scale, None

    def on_train_begin(self, logs=None):
        saved = self.model.history
        for i, epoch in enumerate(saved.epoch if saved is not None else []):
            self.row(epoch, {k: v[i] for k, v in saved.history.items()})

    def on_epoch_end(self, epoch, logs=None):
        self.row(epoch, logs)

    def row(self, epoch, logs):
        if self.columns is None:
            self.columns = [k for k in logs if k not in ("lr", "time")]
            self.say(f"{'epoch':>6} {'iterations':>10} "
                     + "".join(f"{c:>14} " for c in self.columns)
                     + f"{'lr':>10} {'time (s)':>10}")
        values = "".join(f"{self.shown(c, logs[c]):>14.4f} " for c in self.columns)
        self.say(f"{epoch:>6} {self.params['iterations_per_epoch']:>10} {values}"
                 f"{logs['lr']:>10.4g} {logs['time']:>10.4f}")

    def shown(self, name, value):
        return value * self.loss_scale if name in ("loss", "val_loss") else value


def _fold_scaling(model, d):
    """Make `model` take raw features (and predict a standardised target in its own
    units): the affine maps of the standardisation folded into the first and last
    Dense layers, computed in float64."""
    dense = [layer for layer in model.layers if isinstance(layer, mt.Dense)]
    first, last = dense[0], dense[-1]
    W = first.W.astype(np.float64)
    first.b[...] = first.b - (d.mean / d.std) @ W
    first.W[...] = W / d.std[:, None]
    if d.y_mean is not None:
        last.W[...] = last.W.astype(np.float64) * d.y_scale
        last.b[...] = last.b.astype(np.float64) * d.y_scale + np.reshape(d.y_mean, -1)


def _label(c):
    if isinstance(c, (float, np.floating)) and float(c).is_integer():
        return str(int(c))
    return str(c)


def _write_predictions(path, model, X, d):
    """A CSV of the predictions for the (standardised) rows X: the class label and the
    probability of each class, or the target's value."""
    if d.loss in _CLASSIFICATION_LOSSES:
        proba = model.predict_proba(X).astype(np.float64)
        if d.loss == "binary_cross_entropy":
            proba = np.column_stack([1 - proba[:, 0], proba[:, 0]])
        header = [d.target_name] + [f"probability_{_label(c)}" for c in d.classes]
        rows = ([_label(d.classes[k])] + [f"{p:.6g}" for p in row]
                for k, row in zip(proba.argmax(axis=1), proba, strict=True))
    else:
        pred = model.predict(X).astype(np.float64)
        if d.y_mean is not None:
            pred = pred * d.y_scale + d.y_mean
        pred = pred.reshape(len(X), -1)
        header = ([d.target_name] if pred.shape[1] == 1
                  else [f"{d.target_name}_{k}" for k in range(pred.shape[1])])
        rows = ([f"{v:.9g}" for v in row] for row in pred)

    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        text.detach()  # flushes, and leaves the file to atomic_write
    checkpoint.atomic_write(path, write)


def _resume_options(args, given):
    """The checkpoint of --resume, and the command line's options saved in it (None for
    a checkpoint written by the API), which fill in those not given."""
    if not args.resume:
        return None, None
    saved = _load_checkpoint(args.resume)
    state = saved._saved_callback_states.get(_RunOptions.__name__)
    if state is not None and state.get("folded"):
        raise CommandError(f"--resume {args.resume}: a model written by --save, whose weights "
                           f"take the raw features; resume from the run's --checkpoint")
    if state is not None:
        for dest, value in state["options"].items():
            if dest in vars(args) and dest not in given and dest not in SESSION_OPTIONS:
                setattr(args, dest, value)
    return saved, state


def _check_options(args, given):
    """What can be checked of the options before reading any data."""
    if args.patience is not None and args.validation_split is None:
        args.validation_split = PATIENCE_VALIDATION_SPLIT
    if "momentum" in given and args.optimizer != "sgd":
        raise CommandError(f"--momentum applies to --optimizer sgd, not {args.optimizer}")
    if args.data is None and "target" in given:
        raise CommandError("--target selects a column of --data; the digits have theirs")
    for dest in ("checkpoint", "save", "export", "predict_output", "plot"):
        if getattr(args, dest):
            _check_output(_flag(dest), getattr(args, dest))
    if args.export:
        try:
            export.import_onnx()
        except ImportError as err:
            raise CommandError(f"--export {args.export}: {err}") from None
    for dest in ("checkpoint", "resume"):
        if args.save and getattr(args, dest) and \
                Path(args.save).resolve() == Path(getattr(args, dest)).resolve():
            raise CommandError(f"--save {args.save}: is the {_flag(dest)} file; the model "
                               f"--save writes takes raw features and cannot be resumed")
    if args.plot:
        _check_plot(args.plot)


def _prepare_data(args, given, warn):
    """The data of the run: read, checked, split (test, then validation from the
    training rows) and standardised with the statistics of the rows trained on."""
    d = types.SimpleNamespace(delimiter=None, classes=None, y_mean=None, y_scale=None,
                              loss_scale=1.0, validation=None, predict_X=None)
    if args.data is None:
        X, y = mt.load_digits()
        X, y = X.astype(np.float64), y.astype(np.float64)
        d.name, d.target_name = "digits (UCI optical recognition, 1797 8x8 images)", "digit"
    else:
        X, y, d.target_name, d.delimiter = load_table(args.data, args.target,
                                                      "target" in given)
        d.name = Path(args.data).name
        args.data = os.path.abspath(args.data)  # a resume from elsewhere finds it
    d.n_features = X.shape[1]
    d.fingerprint = _fingerprint(X, y)
    d.task, d.loss = _task_and_loss(args, y, d.target_name, args.data is None, warn)
    if d.task == "classification":
        d.classes, y = np.unique(y, return_inverse=True)
        if d.classes.dtype.kind == "f" and np.all(d.classes == np.round(d.classes)):
            d.classes = d.classes.astype(np.int64)  # labels read as numbers are integers
        if len(d.classes) < 2:
            raise CommandError(f"the target {d.target_name} has one class "
                               f"({_label(d.classes[0])}): nothing to classify")
        if d.loss == "binary_cross_entropy" and len(d.classes) != 2:
            raise CommandError(f"--loss binary_cross_entropy takes two classes; the target "
                               f"{d.target_name} has {len(d.classes)}")
    d.n_out = (len(d.classes) if d.loss == "cross_entropy" else
               y.shape[1] if y.ndim == 2 else 1)
    stratify = d.task == "classification"
    try:
        X_fit, X_test, y_fit, y_test = mt.train_test_split(X, y, test_size=args.test_size,
                                                           seed=args.seed, stratify=stratify)
    except ValueError as err:
        raise CommandError(f"--test-size {args.test_size}: {err}") from None
    if args.validation_split is not None:
        try:
            X_fit, X_val, y_fit, y_val = mt.train_test_split(
                X_fit, y_fit, test_size=args.validation_split, seed=args.seed,
                stratify=stratify)
        except ValueError as err:
            raise CommandError(f"--validation-split {args.validation_split}: {err}") from None
    if args.predict:
        d.predict_X = load_features(args.predict, d.n_features, args.target)
        if args.predict_output is None:
            args.predict_output = Path(args.predict).name.rsplit(".", 1)[0] + ".predictions.csv"
        if Path(args.predict_output).resolve() in (Path(args.predict).resolve(),
                                                   Path(args.data or args.predict).resolve()):
            raise CommandError(f"--predict-output {args.predict_output}: would overwrite an "
                               f"input file")

    d.mean, d.std = X_fit.mean(axis=0), X_fit.std(axis=0)
    d.std[d.std == 0] = 1
    if d.loss == "mse":
        # SGD on a target in the hundreds diverges: standardise it too; a single target's
        # loss in its own units is then the loss trained on times its variance
        d.y_mean, d.y_scale = y_fit.mean(axis=0), y_fit.std(axis=0)
        d.y_scale = np.where(d.y_scale == 0, 1.0, d.y_scale)
        if y_fit.ndim == 1:
            d.loss_scale = float(d.y_scale) ** 2
    d.fit = (_standard(d, X_fit), _targets(d, y_fit))
    d.test = (_standard(d, X_test), _targets(d, y_test))
    if args.validation_split is not None:
        d.validation = (_standard(d, X_val), _targets(d, y_val))
    return d


def _standard(d, X):
    return (X - d.mean) / d.std


def _targets(d, y):
    """The targets as the loss takes them."""
    if d.loss == "mse":
        return (y - d.y_mean) / d.y_scale
    if d.loss == "binary_cross_entropy":
        return y.astype(np.float64)[:, None]
    return y.astype(np.int64) if d.loss == "cross_entropy" else y


def _train(args, d, say, saved, model, opt, batch_size, callbacks, comm):
    n_val = f"{len(d.validation[0])} validation / " if d.validation else ""
    kind = f"{d.task}, {len(d.classes)} classes" if d.classes is not None else d.task
    if d.delimiter not in (None, ","):
        kind += f", {d.delimiter!r}-separated"
    ranks = f" × {comm.Get_size()} ranks" if comm is not None else ""
    say(f"minitrain: {d.name} — {len(d.fit[0])} train / {n_val}{len(d.test[0])} test rows, "
        f"{d.n_features} features, {kind}, {mt.get_num_threads()} threads{ranks}")
    if saved is not None:
        say(f"resuming {args.resume} after epoch {saved.epoch}")
    extras = (f", dropout {args.dropout:g}" if args.dropout else "") + (
        ", batch norm" if args.batch_norm else "")
    say(f"model: {d.n_features}-{'-'.join(map(str, args.hidden))}-{d.n_out}{extras}, "
        f"{d.loss}, {opt if opt is not None else saved.optimizer}, batch {batch_size}")
    if d.loss == "mse" and d.n_out > 1:
        say("the losses per epoch are those of the standardised outputs; the test loss is in "
            "the outputs' units")
    try:
        return model.fit(*d.fit, epochs=args.epochs, batch_size=batch_size, optimizer=opt,
                         seed=args.seed, verbose=0, validation_data=d.validation,
                         metrics=_metrics(d), callbacks=callbacks, resume_from=args.resume,
                         comm=comm)
    except FloatingPointError as err:
        lr = (opt or saved.optimizer).lr
        counts = (", or scale the counts down (--loss poisson takes them as they are)"
                  if d.loss == "poisson" else "")
        raise RunError(f"{str(err).split(':')[0]}: the loss is no longer finite; lower --lr "
                       f"(this run's is {lr:g}){counts}") from None


def _metrics(d):
    return None if d.loss == "poisson" else "auto"


def _write_outputs(args, d, say, model, hist, run_options):
    try:
        if args.plot:
            shown = mt.History.from_dict(hist.to_dict())
            for key in ("loss", "val_loss"):
                if key in shown.history:
                    shown.history[key] = [v * d.loss_scale for v in shown.history[key]]
            shown.plot(args.plot)
            say(f"learning curves written to {args.plot}")
        if d.predict_X is not None:
            _write_predictions(args.predict_output, model, _standard(d, d.predict_X), d)
            say(f"predictions for {len(d.predict_X)} rows of {args.predict} written to "
                f"{args.predict_output}")
        if args.save or args.export:
            _fold_scaling(model, d)
            run_options.folded = True
        if args.save:
            model.save(args.save)
            say(f"model written to {args.save} (it takes the raw features)")
        if args.export:
            model.to_onnx(args.export, classes=d.classes)
            say(f"ONNX model written to {args.export}")
    except OSError as err:
        raise RunError(f"could not write {err.filename or 'a file'}: "
                       f"{err.strerror or err}") from None


def _comm(args):
    """MPI.COMM_WORLD with --distributed, else None."""
    if not args.distributed:
        return None
    if importlib.util.find_spec("mpi4py") is None:
        raise CommandError("--distributed needs mpi4py and an MPI: pip install "
                           "'minitrain[mpi]', then run mpiexec -n K minitrain --distributed")
    from mpi4py import MPI
    return MPI.COMM_WORLD


def _run(args, argv, say, comm=None):
    warnings = []  # shown once every check has passed: an error is the only line then
    given = _given(argv)
    if args.threads is not None:
        mt.set_num_threads(args.threads)
    saved, saved_state = _resume_options(args, given)
    _check_options(args, given)
    d = _prepare_data(args, given, warnings.append)

    model = mt.Sequential(_layers(args, d.n_out), loss=d.loss, seed=args.seed,
                          dtype=args.dtype, backend=args.backend)
    n = len(d.fit[0])
    batch_size = min(args.batch_size, n)
    opt = _optimizer(args, d.loss, -(-n // batch_size))
    if saved is not None:
        if not given & _OPTIMIZER_OPTIONS:
            opt = None  # the saved one, as it was
        _check_resume(args, given, saved, saved_state, model, opt, d.fingerprint,
                      batch_size=batch_size, n_samples=n, shuffle=True, drop_last=False)
        if saved.epoch >= args.epochs:
            raise CommandError(f"--epochs {args.epochs}: the run saved in {args.resume} has "
                               f"trained {saved.epoch} epochs; pass a larger --epochs to "
                               f"continue it")
    options = {k: v for k, v in vars(args).items() if k not in SESSION_OPTIONS}
    run_options = _RunOptions(options, d.fingerprint)
    callbacks = [_EpochTable(say, d.loss_scale), run_options]
    stopper = None
    if args.patience is not None:
        stopper = mt.EarlyStopping(patience=args.patience, restore_best_weights=True)
        callbacks.append(stopper)
    if args.checkpoint:
        callbacks.append(mt.ModelCheckpoint(args.checkpoint))

    # every check is done: the run begins (over the ranks, only rank 0 speaks and writes)
    root = comm is None or comm.Get_rank() == 0
    for message in warnings if root else []:
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    hist = _train(args, d, say, saved, model, opt, batch_size, callbacks, comm)
    wall = time.perf_counter() - t0
    ran = hist.epochs - (saved.epoch if saved is not None else 0)
    if hist.stop_reason == "early_stopping":
        say(f"stopped early: the validation loss did not improve for {args.patience} epochs; "
            f"the weights of epoch {stopper.best_epoch} are kept")
    elif hist.stop_reason != "completed":
        say(f"stopped: {hist.stop_reason.replace('_', ' ')}")

    result = model.evaluate(*d.test, metrics=_metrics(d))  # the test split, touched once
    test_loss = result["loss"] * d.loss_scale
    if d.loss == "mse" and d.n_out > 1:  # outputs of several scales: in their own units
        test_loss = float(np.mean(((model.predict(d.test[0]) - d.test[1]) * d.y_scale) ** 2))
    summary = f"test loss {test_loss:.4f}"
    if "accuracy" in result:
        summary = f"test accuracy {result['accuracy']:.4f} · " + summary
    if "r2" in result:
        summary += f" · test r2 {result['r2']:.4f}"
    if not root:
        return 0
    _write_outputs(args, d, say, model, hist, run_options)
    print(f"{summary} · {ran} epochs in {wall:.2f} s "
          f"({1000 * wall / max(ran, 1):.1f} ms/epoch)", flush=True)
    return 0


def _typed(value):
    """An option's value as it is typed (a default as such)."""
    if value is None:
        return "(the default)"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return "(on)" if value is True else "(off)" if value is False else str(value)


def _check_resume(args, given, saved, saved_state, model, opt, fingerprint, **settings):
    """Refuse, listing each conflict, options that would not continue the saved run."""
    conflicts = []
    if saved_state is not None:
        for dest, value in saved_state["options"].items():
            if dest in given and dest not in SESSION_OPTIONS | {"epochs", "data"} \
                    and getattr(args, dest) != value:
                conflicts.append(f"{_flag(dest)} {_typed(value)} in the checkpoint, "
                                 f"{_typed(getattr(args, dest))} here")
        if saved_state["data"] != fingerprint:
            conflicts.append(f"--data: other rows than the saved run's "
                             f"({saved_state['options'].get('data') or 'the digits'})")
    if not conflicts:
        conflicts = [training.describe_conflicts(
            training.resume_conflicts(saved, model, opt, **settings), _SETTING_OPTIONS)]
        conflicts = [c for c in conflicts if c]
    if conflicts:
        raise CommandError(f"--resume {args.resume}: these options would not continue the "
                           f"saved run: {'; '.join(conflicts)}. Leave them out to continue "
                           f"it, or leave out --resume to start a new run")


def _quiet_stdout():
    """Send what is left of stdout nowhere: the reader went away (minitrain | head)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv=None):
    """Run the command; returns 0, or raises SystemExit with status 2 (a mistake in the
    options or the files: found before training starts) or 1 (the run failed)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    root = True  # the process that speaks: rank 0 of a --distributed run
    if "--distributed" in argv and importlib.util.find_spec("mpi4py") is not None:
        from mpi4py import MPI
        root = MPI.COMM_WORLD.Get_rank() == 0
        if not root:  # every rank finds the same mistake in the options; rank 0 says it
            parser.error = lambda message: parser.exit(2)
    args = parser.parse_args(argv)

    def say(*parts):
        if not args.quiet and root:
            print(*parts, flush=True)

    try:
        comm = _comm(args)
        root = comm is None or comm.Get_rank() == 0
        return _run(args, argv, say, comm)
    except CommandError as err:
        # every rank finds the same mistake (or the agreed failure): one line, from rank 0
        parser.exit(err.status, f"{PROG}: error: {' '.join(str(err).split())}\n" if root
                    else None)
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except KeyboardInterrupt:
        parser.exit(130, f"{PROG}: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
