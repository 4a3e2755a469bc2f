"""The benchmark tasks, each run for every peer, interleaved.

Interleaving: after a warm-up of every peer, repetition r times peer A, then B, then C
(the order rotates between repetitions), so slow drifts of a shared machine (other
jobs, clock changes) fall on all peers alike, and the ratio of a peer to minitrain is
taken between samples of the same repetition.

Every function here returns plain JSON-ready data: raw per-repetition figures, never
only summaries.
"""

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import peers as P

LR, MOMENTUM = 0.01, 0.9


@dataclass
class Config:
    """Sizes and repetitions. ``quick()`` shrinks everything so the suite runs in
    seconds (the test run uses it); the default is the full benchmark."""

    reps: int = 5
    min_sample_seconds: float = 0.2     # one repetition of an iteration task lasts this long
    iterations: dict = field(default_factory=lambda: {
        "digits": {"widths": (64, 128, 10), "batch": 32},
        "mnist": {"widths": (784, 256, 128, 10), "batch": 128},
        "wide": {"widths": (1024, 2048, 2048, 10), "batch": 512},
    })
    epoch_rows: int = 60000
    epoch_features: int = 784
    epoch_widths: tuple = (784, 256, 128, 10)
    epoch_batch: int = 128
    epoch_reps: int = 3
    sweep_widths: tuple = (784, 256, 128, 10)
    sweep_batches: tuple = (8, 16, 32, 64, 128, 256, 512, 1024)
    sweep_reps: int = 3
    accuracy_target: float = 0.95
    accuracy_widths_hidden: tuple = (128,)
    accuracy_batch: int = 32
    accuracy_lr: float = 0.05
    accuracy_max_epochs: int = 50
    accuracy_reps: int = 3
    gemm_square: tuple = (256, 512, 1024, 2048)
    gemm_reps: int = 5

    @classmethod
    def quick(cls):
        return cls(
            reps=1, min_sample_seconds=0.0,
            iterations={"digits": {"widths": (64, 128, 10), "batch": 32},
                        "mnist": {"widths": (784, 32, 16, 10), "batch": 16},
                        "wide": {"widths": (96, 64, 64, 10), "batch": 24}},
            epoch_rows=300, epoch_features=48, epoch_widths=(48, 16, 10), epoch_batch=64,
            epoch_reps=1, sweep_widths=(48, 16, 10), sweep_batches=(8, 32), sweep_reps=1,
            accuracy_target=0.5, accuracy_max_epochs=5, accuracy_reps=1,
            gemm_square=(16, 32), gemm_reps=1)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ------------------------------------------------------------------ measurement
def _timed(fn, k):
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k


def interleaved(runners, reps, min_seconds=0.0, warmup=True):
    """Seconds per call of each runner, per repetition, measured round-robin.

    runners: {name: zero-argument callable}. Each repetition times enough calls to last
    `min_seconds` (counted after a warm-up call that also calibrates). A runner that
    raises is dropped and its error returned; the others go on.
    Returns ({name: [seconds per call, one per repetition]}, {name: error}).
    """
    samples, errors, calls = {}, {}, {}
    for name, fn in runners.items():
        try:
            first = _timed(fn, 1) if warmup else 0.0
            calls[name] = max(1, math.ceil(min_seconds / first)) if first > 0 else 1
            samples[name] = []
        except Exception as err:  # a peer failing must not stop the others
            errors[name] = f"{type(err).__name__}: {err}"
    names = list(samples)
    for r in range(reps):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if name in errors:
                continue
            try:
                samples[name].append(_timed(runners[name], calls[name]))
            except Exception as err:
                errors[name] = f"{type(err).__name__}: {err}"
                del samples[name]
    return samples, errors


def iteration_flops(widths, batch):
    """Floating-point operations of one iteration: forward X·W, backward Xᵀ·dZ, and
    dZ·Wᵀ for every layer but the first (bias, activation and update are O(n·out))."""
    pairs = list(zip(widths[:-1], widths[1:]))
    return sum(2 * batch * i * o * (2 if l == 0 else 3) for l, (i, o) in enumerate(pairs))


def classification_data(rows, features, classes, seed):
    """Standard-normal float32 rows labelled by a fixed random linear map (learnable,
    so the loss stays finite and meaningful)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features), dtype=np.float32)
    proj = rng.standard_normal((features, classes), dtype=np.float32)
    y = np.empty(rows, dtype=np.int64)
    for start in range(0, rows, 8192):  # chunked: no full-size temporary
        y[start:start + 8192] = (X[start:start + 8192] @ proj).argmax(axis=1)
    return X, y


def _task_result(title, unit, samples, errors, **extra):
    return {"title": title, "unit": unit, "samples": samples, "errors": errors, **extra}


# ------------------------------------------------------------------------ tasks
def iteration_task(loaded, widths, batch, reps, min_seconds, seed=0):
    """Seconds per iteration on one fixed batch, per peer."""
    X, y = classification_data(batch, widths[0], widths[-1], seed)
    weights = P.initial_weights(widths, seed)
    runners, errors = {}, {}
    for name, peer in loaded.items():
        try:
            trainer = peer.trainer(weights, LR, MOMENTUM)
            runners[name] = lambda t=trainer: t.step(X, y)
        except Exception as err:
            errors[name] = f"{type(err).__name__}: {err}"
    samples, run_errors = interleaved(runners, reps, min_seconds)
    return samples, {**errors, **run_errors}


def iteration_tasks(loaded, cfg):
    out = {}
    for key, spec in cfg.iterations.items():
        widths, batch = tuple(spec["widths"]), spec["batch"]
        samples, errors = iteration_task(loaded, widths, batch, cfg.reps,
                                         cfg.min_sample_seconds)
        out[key] = _task_result(
            f"one iteration, {'-'.join(map(str, widths))}, batch {batch}", "s/iteration",
            samples, errors, widths=list(widths), batch=batch,
            flops=iteration_flops(widths, batch))
    return out


def epoch_task(loaded, cfg, seed=0):
    """Seconds per epoch over epoch_rows x epoch_features, shuffling included.

    The warm-up is a short epoch whose last batch has the size of the real last batch,
    so a compiling peer (JAX) sees every batch shape before the clock runs.
    """
    n, b = cfg.epoch_rows, cfg.epoch_batch
    X, y = classification_data(n, cfg.epoch_features, cfg.epoch_widths[-1], seed)
    weights = P.initial_weights(cfg.epoch_widths, seed)
    warm_rows = min(n, 2 * b + n % b)
    runners, errors = {}, {}
    for name, peer in loaded.items():
        try:
            trainer = peer.trainer(weights, LR, MOMENTUM)
            trainer.epoch(X[:warm_rows], y[:warm_rows], b, seed)
            epochs = iter(range(1, 1 << 30))
            runners[name] = lambda t=trainer, e=epochs: t.epoch(X, y, b, next(e))
        except Exception as err:
            errors[name] = f"{type(err).__name__}: {err}"
    samples, run_errors = interleaved(runners, cfg.epoch_reps, warmup=False)
    return _task_result(
        f"one epoch, {n}x{cfg.epoch_features} float32, "
        f"{'-'.join(map(str, cfg.epoch_widths))}, batch {b}, shuffled", "s/epoch",
        samples, {**errors, **run_errors}, rows=n, batch=b, widths=list(cfg.epoch_widths))


def sweep_task(loaded, cfg):
    """Seconds per iteration against the batch size, for the sweep model."""
    out = {}
    for batch in cfg.sweep_batches:
        samples, errors = iteration_task(loaded, cfg.sweep_widths, batch, cfg.sweep_reps,
                                         cfg.min_sample_seconds / 2)
        out[str(batch)] = {"samples": samples, "errors": errors}
    return {"title": f"iteration time against batch size, "
                     f"{'-'.join(map(str, cfg.sweep_widths))}",
            "unit": "s/iteration", "widths": list(cfg.sweep_widths), "batches": out}


def digits_split():
    """The shipped digits, scaled to [0, 1], split 80/20 (stratified, seed 0)."""
    import minitrain as mt

    X, y = mt.load_digits()
    X_train, X_test, y_train, y_test = mt.train_test_split(X / 16.0, y, test_size=0.2, seed=0)
    return (X_train.astype(np.float32), X_test.astype(np.float32), y_train, y_test)


def train_until(trainer, data, cfg):
    """Train epoch by epoch (epoch e shuffled with seed e) until the test accuracy
    reaches cfg.accuracy_target or cfg.accuracy_max_epochs pass."""
    X_train, X_test, y_train, y_test = data
    for epoch in range(1, cfg.accuracy_max_epochs + 1):
        trainer.epoch(X_train, y_train, cfg.accuracy_batch, epoch)
        accuracy = float(np.mean(trainer.predict(X_test) == y_test))
        if accuracy >= cfg.accuracy_target:
            break
    return {"epochs": epoch, "accuracy": accuracy, "reached": accuracy >= cfg.accuracy_target}


def accuracy_widths(cfg, data):
    return (data[0].shape[1], *cfg.accuracy_widths_hidden, 10)


def accuracy_task(loaded, cfg, seed=0):
    """Seconds (building the model, training, and the test evaluation after every
    epoch) from the initial weights until the test accuracy reaches the target."""
    data = digits_split()
    widths = accuracy_widths(cfg, data)
    weights = P.initial_weights(widths, seed)
    outcome = {}

    def run(name, peer):
        outcome[name] = train_until(peer.trainer(weights, cfg.accuracy_lr, MOMENTUM), data,
                                    cfg)

    runners = {name: (lambda n=name, p=peer: run(n, p)) for name, peer in loaded.items()}
    samples, errors = interleaved(runners, cfg.accuracy_reps)
    return _task_result(
        f"time to {cfg.accuracy_target:.0%} test accuracy on the shipped digits, "
        f"{'-'.join(map(str, widths))}, batch {cfg.accuracy_batch}, lr {cfg.accuracy_lr}",
        "s", samples, errors, outcome=outcome)


def gemm_shapes(cfg):
    """(label, M, N, K, trans_a, trans_b): the square sizes, then every product of the
    iteration tasks — forward X·W, backward Xᵀ·dZ and dZ·Wᵀ (not for the first layer)."""
    shapes = [(f"square {n}", n, n, n, False, False) for n in cfg.gemm_square]
    for key, spec in cfg.iterations.items():
        n = spec["batch"]
        for l, (i, o) in enumerate(zip(spec["widths"][:-1], spec["widths"][1:])):
            shapes.append((f"{key} L{l + 1} X·W", n, o, i, False, False))
            shapes.append((f"{key} L{l + 1} Xᵀ·dZ", i, o, n, True, False))
            if l > 0:
                shapes.append((f"{key} L{l + 1} dZ·Wᵀ", n, i, o, False, True))
    return shapes


def gemm_impls(available):
    """{name: f(A, B, trans_a, trans_b) -> op(A)·op(B)} for minitrain's GEMM,
    numpy.matmul and torch.matmul (minitrain and torch when in `available`)."""
    impls = {}
    if "minitrain" in available:
        from minitrain import _core
        impls["minitrain"] = lambda A, B, ta, tb: _core.gemm(A, B, ta, tb)
    impls["numpy"] = lambda A, B, ta, tb: np.matmul(A.T if ta else A, B.T if tb else B)
    if "torch" in available:
        import torch

        def torch_matmul(A, B, ta, tb):
            A, B = torch.from_numpy(A), torch.from_numpy(B)
            return torch.matmul(A.T if ta else A, B.T if tb else B)
        impls["torch"] = torch_matmul
    return impls


def gemm_operands(rng, M, N, K, ta, tb):
    """Random float32 A, B stored as the iteration stores them for op(A)·op(B)."""
    A = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
    B = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
    return A, B


def gemm_task(available, cfg, seed=0):
    """Seconds per product for minitrain's GEMM, numpy.matmul and torch.matmul.

    Operands are stored as the training iteration stores them (a transposed operand is
    the transpose of a row-major array); numpy and torch get transposed views, which
    their BLAS reads without copying."""
    rng = np.random.default_rng(seed)
    impls = gemm_impls(available)
    out = {}
    for label, M, N, K, ta, tb in gemm_shapes(cfg):
        A, B = gemm_operands(rng, M, N, K, ta, tb)
        runners = {name: (lambda f=f: f(A, B, ta, tb)) for name, f in impls.items()}
        samples, errors = interleaved(runners, cfg.gemm_reps, cfg.min_sample_seconds / 2)
        out[label] = {"M": M, "N": N, "K": K, "trans_a": ta, "trans_b": tb,
                      "flops": 2 * M * N * K, "samples": samples, "errors": errors}
    return {"title": "GEMM, float32", "unit": "s/product", "shapes": out}


def equivalence_check(loaded, seed=0):
    """Largest absolute weight difference to minitrain after one short epoch from the
    same weights: evidence that every peer trains the same model."""
    X, y = classification_data(512, 32, 10, seed)
    weights = P.initial_weights((32, 24, 10), seed)
    trained, errors = {}, {}
    for name, peer in loaded.items():
        try:
            trainer = peer.trainer(weights, LR, MOMENTUM)
            trainer.epoch(X, y, 64, seed)
            trained[name] = trainer.weights()
        except Exception as err:
            errors[name] = f"{type(err).__name__}: {err}"
    ref = trained.get(P.REFERENCE)
    diffs = {}
    if ref is not None:
        for name, w in trained.items():
            diffs[name] = max(float(np.abs(a - b).max())
                              for pair_ref, pair in zip(ref, w) for a, b in zip(pair_ref, pair))
    return {"max_abs_weight_difference": diffs, "errors": errors}


def run_all(loaded, cfg, available_names):
    """Every in-process task for the loaded peers (the memory task runs elsewhere)."""
    return {
        "equivalence": equivalence_check(loaded),
        "iterations": iteration_tasks(loaded, cfg),
        "epoch": epoch_task(loaded, cfg),
        "accuracy": accuracy_task(loaded, cfg),
        "sweep": sweep_task(loaded, cfg),
        "gemm": gemm_task(available_names, cfg),
    }


def memory_probe(peer, cfg, seed=0):
    """Peak resident memory of one epoch (task 4) for one peer; run it in a fresh
    process, since the peak of a process only ever grows."""
    import resource

    def rss_mb(field_name):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
        return None

    X, y = classification_data(cfg.epoch_rows, cfg.epoch_features, cfg.epoch_widths[-1], seed)
    trainer = peer.trainer(P.initial_weights(cfg.epoch_widths, seed), LR, MOMENTUM)
    before, peak_before = rss_mb("VmRSS"), rss_mb("VmHWM")
    trainer.epoch(X, y, cfg.epoch_batch, seed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mb": peak, "rss_before_epoch_mb": before,
            "peak_rss_before_epoch_mb": peak_before,
            "data_mb": (X.nbytes + y.nbytes) / 2**20}
