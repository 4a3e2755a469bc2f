"""The benchmark tasks and the interleaved measurement.

A task is a list of jobs (``jobs(cfg)``); a job is measured for every participant (a
peer, or a GEMM implementation) by a *sampler*: ``setup(min_seconds)`` builds the model
and data, warms up and decides how many calls one repetition times;
``sample()`` returns the seconds per call of one repetition; ``info()`` returns what
else the job reports. ``make_sampler`` builds them inside each peer's own process;
``interleaved`` drives them: after every participant is set up, repetition r times
A, then B, then C (the order rotates between repetitions), so the slow drifts of a
shared machine fall on all alike, and a ratio to minitrain is taken between samples
of the same repetition.

Everything returned is plain JSON-ready data: raw per-repetition figures.
"""

import math
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from . import peers as P

LR, MOMENTUM = 0.01, 0.9
# the peers of the scikit-learn drop-in task: scikit-learn's MLPClassifier and
# minitrain's; its speed-up is the first's time ÷ the second's
SKLEARN_FIT_PEERS = (P.SklearnPeer.name, P.MinitrainSklearnPeer.name)


def sklearn_fit_cases(digits_epochs, epoch_label, epoch_hidden):
    """The fits of the scikit-learn drop-in task: {name: the data ("digits", or the
    epoch task's "epoch" rows) and MLPClassifier's parameters (random_state=0 added)}."""
    digits = {"data": "digits", "hidden_layer_sizes": (128,), "batch_size": 32,
              "max_iter": digits_epochs, "tol": 0.0}
    epoch = {"data": "epoch", "hidden_layer_sizes": epoch_hidden, "batch_size": 128,
             "max_iter": 1}
    return {"digits, sgd": {**digits, "solver": "sgd"},
            "digits, adam": {**digits, "solver": "adam"},
            f"{epoch_label} float32, adam": {**epoch, "solver": "adam"}}


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
    sklearn_cases: dict = field(
        default_factory=lambda: sklearn_fit_cases(50, "60000x784", (256, 128)))
    sklearn_reps: int = 5

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
            gemm_square=(16, 32), gemm_reps=1,
            sklearn_cases=sklearn_fit_cases(2, "300x48", (16, 8)), sklearn_reps=1)

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


class Timed:
    """A sampler over calls of `fn`: after a warm-up call, calibration times batches of
    doubling size until one lasts a tenth of the requested seconds; a repetition then
    times enough calls to last those seconds.

    The calibration must not use the first call: it pays one-off costs (a workspace
    allocated, a function compiled) that would leave a repetition a handful of calls,
    each starting thread pools that went to sleep during the settle pause."""

    def __init__(self, fn, warmup=True, info=dict):
        self.fn, self.warmup, self._info, self.calls = fn, warmup, info, 1

    def setup(self, min_seconds):
        self.calls = 1
        if not self.warmup:
            return
        self.fn()
        n, per_call = 1, _timed(self.fn, 1)
        while per_call * n < min_seconds / 10:
            n *= 2
            per_call = _timed(self.fn, n)
        self.calls = max(1, math.ceil(min_seconds / per_call))

    def sample(self):
        return _timed(self.fn, self.calls)

    def info(self):
        return self._info()


def interleaved(samplers, reps, min_seconds=0.0, settle=0.0):
    """Seconds per call of each sampler, per repetition, measured round-robin.

    `settle` seconds pass before each repetition, so that the thread pool of the
    previous participant (BLAS threads spin for a while after each call) is asleep
    before the next one starts. A sampler that raises is dropped and its error
    returned; the others go on.
    Returns ({name: [seconds per call, one per repetition]}, {name: error}).
    """
    samples, errors = {}, {}
    for name, sampler in samplers.items():
        try:
            sampler.setup(min_seconds)
            samples[name] = []
        except Exception as err:  # a peer failing must not stop the others
            errors[name] = f"{type(err).__name__}: {err}"
    names = list(samples)
    for r in range(reps):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if name in errors:
                continue
            time.sleep(settle)
            try:
                samples[name].append(sampler_seconds(samplers[name]))
            except Exception as err:
                errors[name] = f"{type(err).__name__}: {err}"
                del samples[name]
    return samples, errors


def sampler_seconds(sampler):
    seconds = sampler.sample()
    if not (isinstance(seconds, float) and math.isfinite(seconds) and seconds > 0):
        raise RuntimeError(f"a repetition returned {seconds!r} seconds")
    return seconds


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


def sklearn_fit_data(data, cfg, seed):
    """X, y of a case of the scikit-learn drop-in task: the shipped digits (all 1797
    rows) divided by 16, in float64, or the epoch task's float32 rows."""
    if data == "digits":
        import minitrain as mt

        X, y = mt.load_digits()
        return X / 16.0, y
    return classification_data(cfg.epoch_rows, cfg.epoch_features, cfg.epoch_widths[-1],
                               seed)


def fitted_state(clf, X):
    """What the scikit-learn drop-in task compares of a MLPClassifier fitted on X, as
    JSON, with the floating-point operations of its fit (every epoch is one pass of
    forward and backward products over all rows: iteration_flops is linear in the rows)."""
    widths = (X.shape[1], *clf.hidden_layer_sizes, clf.n_outputs_)
    return {"dtype": str(X.dtype), "flops": iteration_flops(widths, X.shape[0]) * clf.n_iter_,
            "n_iter_": int(clf.n_iter_), "loss_": float(clf.loss_),
            "loss_curve_": [float(loss) for loss in clf.loss_curve_],
            "coefs_": [W.tolist() for W in clf.coefs_],
            "intercepts_": [b.tolist() for b in clf.intercepts_]}


def relative_difference(arrays, reference):
    """max over the arrays of max|a − b| / max|b|, b from `reference` (inf when their
    shapes differ, e.g. loss curves of different lengths)."""
    pairs = [(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
             for a, b in zip(arrays, reference)]
    if len(arrays) != len(reference) or any(a.shape != b.shape for a, b in pairs):
        return math.inf
    return max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in pairs)


def fit_comparison(infos):
    """n_iter_ and loss_ of each peer's fitted estimator and, when both fitted, the
    largest relative difference of minitrain.sklearn's coefs_, intercepts_ and
    loss_curve_ from scikit-learn's."""
    out = {"fitted": {name: {k: info[k] for k in ("data", "dtype", "flops", "n_iter_", "loss_")}
                      for name, info in infos.items()}, "difference": {}}
    if set(SKLEARN_FIT_PEERS) <= set(infos):
        sklearn, drop_in = (infos[name] for name in SKLEARN_FIT_PEERS)
        out["difference"] = {attr: relative_difference(drop_in[attr], sklearn[attr])
                             for attr in ("coefs_", "intercepts_")}
        out["difference"]["loss_curve_"] = relative_difference([drop_in["loss_curve_"]],
                                                               [sklearn["loss_curve_"]])
    return out


def accuracy_widths(cfg, data):
    return (data[0].shape[1], *cfg.accuracy_widths_hidden, 10)


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


GEMM_IMPLS = ("minitrain", "numpy", "torch")


def gemm_impls(available):
    """{name: f(A, B, trans_a, trans_b) -> op(A)·op(B)} for minitrain's GEMM,
    numpy.matmul and torch.matmul (minitrain and torch when in `available`).

    numpy and torch get transposed views, which their BLAS reads without copying."""
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


# ------------------------------------------------------------------------- jobs
def jobs(cfg):
    """Every measurement of a report, in order: [(key, kind, params)]. Keys name where
    the result goes: "iterations/mnist", "epoch", "sweep/128", "gemm/square 512", ..."""
    out = [("equivalence", "equivalence", {"widths": [32, 24, 10], "rows": 512,
                                            "batch": 64})]
    for key, spec in cfg.iterations.items():
        out.append((f"iterations/{key}", "iteration",
                    {"widths": list(spec["widths"]), "batch": spec["batch"]}))
    out.append(("epoch", "epoch", {}))
    out.append(("accuracy", "accuracy", {}))
    for batch in cfg.sweep_batches:
        out.append((f"sweep/{batch}", "iteration",
                    {"widths": list(cfg.sweep_widths), "batch": batch}))
    for label, M, N, K, ta, tb in gemm_shapes(cfg):
        out.append((f"gemm/{label}", "gemm", {"M": M, "N": N, "K": K, "trans_a": ta,
                                              "trans_b": tb}))
    for name, case in cfg.sklearn_cases.items():
        out.append((f"sklearn_fit/{name}", "sklearn_fit", case))
    return out


def participants(kind, peer_names):
    """The peers that run a job of this kind (GEMM jobs have their own: gemm_hosts)."""
    if kind == "sklearn_fit":
        return [name for name in peer_names if name in SKLEARN_FIT_PEERS]
    return list(peer_names)


def job_repetitions(kind, cfg):
    """(repetitions, seconds one repetition lasts at least) of a kind of job."""
    return {"equivalence": (0, 0.0), "iteration": (cfg.reps, cfg.min_sample_seconds),
            "epoch": (cfg.epoch_reps, 0.0), "accuracy": (cfg.accuracy_reps, 0.0),
            "gemm": (cfg.gemm_reps, cfg.min_sample_seconds / 2),
            "sklearn_fit": (cfg.sklearn_reps, 0.0)}[kind]


def make_sampler(kind, params, peer, cfg, impl=None, seed=0):
    """The sampler of one job for one peer (or, for "gemm", one implementation)."""
    if kind == "iteration":
        widths, batch = params["widths"], params["batch"]
        X, y = classification_data(batch, widths[0], widths[-1], seed)
        trainer = peer.trainer(P.initial_weights(widths, seed), LR, MOMENTUM)
        return Timed(lambda: trainer.step(X, y))
    if kind == "epoch":
        n, b = cfg.epoch_rows, cfg.epoch_batch
        X, y = classification_data(n, cfg.epoch_features, cfg.epoch_widths[-1], seed)
        trainer = peer.trainer(P.initial_weights(cfg.epoch_widths, seed), LR, MOMENTUM)
        # warm-up: a short epoch whose last batch has the size of the real last batch,
        # so a compiling peer (JAX) has seen every batch shape before the clock runs
        warm = min(n, 2 * b + n % b)
        trainer.epoch(X[:warm], y[:warm], b, seed)
        seeds = iter(range(1, 1 << 30))
        return Timed(lambda: trainer.epoch(X, y, b, next(seeds)), warmup=False)
    if kind == "accuracy":
        data = digits_split()
        weights = P.initial_weights(accuracy_widths(cfg, data), seed)
        outcome = {}

        def run():
            trainer = peer.trainer(weights, cfg.accuracy_lr, MOMENTUM)
            outcome.update(train_until(trainer, data, cfg))
        return Timed(run, info=lambda: outcome)
    if kind == "gemm":
        f = gemm_impls({impl})[impl]
        M, N, K, ta, tb = (params[k] for k in ("M", "N", "K", "trans_a", "trans_b"))
        A, B = gemm_operands(np.random.default_rng(seed), M, N, K, ta, tb)
        return Timed(lambda: f(A, B, ta, tb))
    if kind == "sklearn_fit":
        from sklearn.exceptions import ConvergenceWarning

        X, y = sklearn_fit_data(params["data"], cfg, seed)
        estimator = peer.estimator_class()
        kwargs = {**params, "hidden_layer_sizes": tuple(params["hidden_layer_sizes"]),
                  "random_state": 0}
        del kwargs["data"]
        fitted = []

        def fit():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fitted[:] = [estimator(**kwargs).fit(X, y)]
        fit()  # the warm-up; a repetition is then one whole fit
        data = f"{X.shape[0]}×{X.shape[1]} {X.dtype}"
        return Timed(fit, warmup=False,
                     info=lambda: {"data": data, **fitted_state(fitted[0], X)})
    if kind == "equivalence":
        X, y = classification_data(params["rows"], params["widths"][0], 10, seed)
        trainer = peer.trainer(P.initial_weights(params["widths"], seed), LR, MOMENTUM)
        trainer.epoch(X, y, params["batch"], seed)
        weights = [[W.tolist(), b.tolist()] for W, b in trainer.weights()]
        return Timed(lambda: None, warmup=False, info=lambda: {"weights": weights})
    raise ValueError(f"unknown job kind {kind!r}")


def gemm_hosts(peer_names):
    """Which peer's process runs each GEMM implementation: minitrain's GEMM in
    minitrain's, numpy.matmul in the NumPy backend's, torch.matmul in PyTorch's — so
    no process mixes the thread pools of two libraries."""
    hosts = {"minitrain": "minitrain", "torch": "torch",
             "numpy": "minitrain-numpy" if "minitrain-numpy" in peer_names else "minitrain"}
    return {impl: host for impl, host in hosts.items() if host in peer_names}


def assemble(cfg, measured):
    """The results of one thread count from {job key: (samples, errors, infos)}, in
    the layout report.md is rendered from."""
    out = {"iterations": {}, "sweep": {"title": "iteration time against batch size, "
                                                f"{'-'.join(map(str, cfg.sweep_widths))}",
                                       "unit": "s/iteration",
                                       "widths": list(cfg.sweep_widths), "batches": {}},
           "gemm": {"title": "GEMM, float32", "unit": "s/product", "shapes": {}}}
    infos_eq = measured["equivalence"][2]
    ref = infos_eq.get(P.REFERENCE, {}).get("weights")
    out["equivalence"] = {"errors": measured["equivalence"][1],
                          "max_abs_weight_difference": {
                              name: max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                                        for pr, pw in zip(ref, info["weights"])
                                        for a, b in zip(pr, pw))
                              for name, info in infos_eq.items()} if ref else {}}
    for key, spec in cfg.iterations.items():
        samples, errors, _ = measured[f"iterations/{key}"]
        widths, batch = tuple(spec["widths"]), spec["batch"]
        out["iterations"][key] = {
            "title": f"one iteration, {'-'.join(map(str, widths))}, batch {batch}",
            "unit": "s/iteration", "samples": samples, "errors": errors,
            "widths": list(widths), "batch": batch, "flops": iteration_flops(widths, batch)}
    samples, errors, _ = measured["epoch"]
    out["epoch"] = {
        "title": f"one epoch, {cfg.epoch_rows}x{cfg.epoch_features} float32, "
                 f"{'-'.join(map(str, cfg.epoch_widths))}, batch {cfg.epoch_batch}, shuffled",
        "unit": "s/epoch", "samples": samples, "errors": errors, "rows": cfg.epoch_rows,
        "batch": cfg.epoch_batch, "widths": list(cfg.epoch_widths)}
    samples, errors, infos = measured["accuracy"]
    out["accuracy"] = {
        "title": f"time to {cfg.accuracy_target:.0%} test accuracy on the shipped digits, "
                 f"{'-'.join(map(str, (64, *cfg.accuracy_widths_hidden, 10)))}, "
                 f"batch {cfg.accuracy_batch}, lr {cfg.accuracy_lr}",
        "unit": "s", "samples": samples, "errors": errors, "outcome": infos}
    for batch in cfg.sweep_batches:
        samples, errors, _ = measured[f"sweep/{batch}"]
        out["sweep"]["batches"][str(batch)] = {"samples": samples, "errors": errors}
    for label, M, N, K, ta, tb in gemm_shapes(cfg):
        samples, errors, _ = measured[f"gemm/{label}"]
        out["gemm"]["shapes"][label] = {"M": M, "N": N, "K": K, "trans_a": ta,
                                        "trans_b": tb, "flops": 2 * M * N * K,
                                        "samples": samples, "errors": errors}
    out["sklearn_fit"] = {"title": "scikit-learn drop-in: fit time", "unit": "s/fit",
                          "cases": {}}
    for name, case in cfg.sklearn_cases.items():
        samples, errors, infos = measured[f"sklearn_fit/{name}"]
        out["sklearn_fit"]["cases"][name] = {"params": case, "samples": samples,
                                             "errors": errors, **fit_comparison(infos)}
    return out


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
