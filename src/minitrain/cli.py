"""The ``minitrain`` command: train an MLP on the shipped digits, or on your own file."""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import minitrain as mt
from minitrain import export


def load_table(path, target):
    """X, y from a .npz (arrays X and y), a .npy or a .csv (target = a column index)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            for xk, yk in (("X", "y"), ("x", "y"), ("data", "target")):
                if xk in data and yk in data:
                    return data[xk], data[yk]
            raise SystemExit(f"{path}: expected arrays named X and y, found {list(data)}")
    if suffix == ".npy":
        table = np.load(path, allow_pickle=False)
    elif suffix == ".csv":
        with open(path) as f:
            first = f.readline()
        try:
            [float(v) for v in first.split(",")]
            skip = 0
        except ValueError:
            skip = 1  # a header row
        table = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    else:
        raise SystemExit(f"{path}: use a .npz, .npy or .csv file")
    if table.ndim != 2 or table.shape[1] < 2:
        raise SystemExit(f"{path}: expected a 2-D table with feature columns and a target column")
    return np.delete(table, target, axis=1), table[:, target]


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


def onnx_file(path):
    """--export's checks, made before any training: the onnx extra and the directory."""
    try:
        export.import_onnx()
    except ImportError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not Path(path).absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {Path(path).absolute().parent}")
    return path


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="minitrain",
        description="Train a multi-layer perceptron with mini-batch gradient descent. "
                    "Without --data, trains on the handwritten digits shipped with minitrain.")
    p.add_argument("--data", help=".npz (arrays X, y), .npy or .csv (numeric, last column the "
                                  "target unless --target) file")
    p.add_argument("--target", type=int, default=-1, help="target column of a .npy/.csv table")
    p.add_argument("--task", choices=["auto", "classification", "regression"], default="auto")
    p.add_argument("--hidden", type=int, nargs="+", default=[128], metavar="UNITS",
                   help="hidden layer widths (default: 128)")
    p.add_argument("--activation", default="relu")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 0.05 for sgd, 0.001 for adam)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--schedule", choices=sorted(mt.schedules.SCHEDULES), default="constant",
                   help="learning-rate schedule over the run's iterations (step: x0.1 after "
                        "each third of the run; exponential: x0.01 over the run; cosine: "
                        "5%% linear warm-up then cosine to 0; invscaling: lr/sqrt(t+1))")
    p.add_argument("--patience", type=int, default=None,
                   help="stop when the test loss has not improved for this many epochs "
                        "and keep the best epoch's weights")
    p.add_argument("--test-size", type=float, default=0.2,
                   help="fraction held out, evaluated after every epoch (default: 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backend", choices=["c", "numpy"], default="c")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--plot", metavar="PNG", help="write the learning curves to this PNG "
                                                 "(needs matplotlib)")
    p.add_argument("--checkpoint", metavar="NPZ",
                   help="save the model and its training state here after every epoch")
    p.add_argument("--resume", metavar="NPZ",
                   help="continue the run saved in this checkpoint up to --epochs")
    p.add_argument("--export", metavar="ONNX", type=onnx_file,
                   help="write the trained model here as ONNX, standardisation and class "
                        "labels included, so it takes the raw features (needs the onnx "
                        "extra)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the final result")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    if args.threads:
        mt.set_num_threads(args.threads)
    if args.data:
        X, y = load_table(args.data, args.target)
        name = Path(args.data).name
    else:
        X, y = mt.load_digits()
        name = "digits (UCI optical recognition, 1797 8x8 images)"
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    task = args.task
    if task == "auto":
        integral = y.dtype.kind in "iub" or (y.dtype.kind == "f" and np.all(y == np.round(y)))
        task = "classification" if y.ndim == 1 and integral and len(np.unique(y)) <= 100 \
            else "regression"
    classes = None
    if task == "classification":
        classes, y = np.unique(y, return_inverse=True)
    X_train, X_test, y_train, y_test = mt.train_test_split(
        X, y, test_size=args.test_size, seed=args.seed, stratify=task == "classification")
    # standardise with the training statistics only
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std[std == 0] = 1
    X_train, X_test = (X_train - mean) / std, (X_test - mean) / std

    n_out = len(classes) if classes is not None else (1 if y.ndim == 1 else y.shape[1])
    layers = [mt.Dense(h, activation=args.activation) for h in args.hidden] + [mt.Dense(n_out)]
    model = mt.Sequential(layers, loss="cross_entropy" if classes is not None else "mse",
                          seed=args.seed, dtype=args.dtype, backend=args.backend)
    lr = args.lr or (0.05 if args.optimizer == "sgd" else 0.001)
    lr = schedule(args.schedule, lr, args.epochs * -(-len(X_train) // args.batch_size))
    if args.optimizer == "sgd":
        opt = mt.SGD(lr=lr, momentum=args.momentum)
    else:
        opt = (mt.Adam if args.optimizer == "adam" else mt.AdamW)(lr=lr)
    callbacks = []
    if args.patience is not None:
        callbacks.append(mt.EarlyStopping(patience=args.patience, restore_best_weights=True))
    if args.checkpoint:
        callbacks.append(mt.ModelCheckpoint(args.checkpoint))
    say(f"minitrain: {name} — {len(X_train)} train / {len(X_test)} test rows, "
        f"{X.shape[1]} features, {task}, {mt.get_num_threads()} threads")
    say(f"model: {X.shape[1]}-{'-'.join(map(str, args.hidden))}-{n_out}, {opt}, "
        f"batch {args.batch_size}")
    t0 = time.perf_counter()
    hist = model.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=None if args.resume else opt, seed=args.seed, verbose=0,
                     validation_data=(X_test, y_test), callbacks=callbacks,
                     resume_from=args.resume)
    wall = time.perf_counter() - t0
    columns = [k for k in hist.history if k not in ("lr", "time")]
    say(f"{'epoch':>6} {'iterations':>10} " + "".join(f"{c:>14} " for c in columns)
        + f"{'lr':>10} {'time (s)':>10}")
    for i, e in enumerate(hist.epoch):
        say(f"{e:>6} {hist.iterations_per_epoch:>10} "
            + "".join(f"{hist.history[c][i]:>14.4f} " for c in columns)
            + f"{hist.history['lr'][i]:>10.4g} {hist.history['time'][i]:>10.4f}")
    if hist.stop_reason != "completed":
        say(f"stopped: {hist.stop_reason.replace('_', ' ')}")
    if args.plot:
        hist.plot(args.plot)
        say(f"learning curves written to {args.plot}")
    if args.export:
        model.to_onnx(args.export, mean=mean, scale=std, classes=classes)
        say(f"ONNX model written to {args.export}")
    result = model.evaluate(X_test, y_test)
    summary = f"test loss {result['loss']:.4f}"
    if "accuracy" in result:
        summary = f"test accuracy {result['accuracy']:.4f} · " + summary
    print(f"{summary} · {hist.epochs} epochs in {wall:.2f} s "
          f"({1000 * wall / max(hist.epochs, 1):.1f} ms/epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
