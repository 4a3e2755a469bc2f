"""The busy-core task: minitrain (and PyTorch's manual loop, the peer) while another
process keeps one core busy, beside the same runs on the quiet machine.

    python bench/busy.py                 # the full task (several minutes), prints the table
    python bench/report.py --busy-only   # the same, written into bench/results/

The competitor is a plain Python busy loop pinned to the last allowed CPU that stops by
itself after a bound (and is ended by its pid as soon as the run is over). Every run is
a fresh process (``--worker``), so no thread pool, controller or cache carries over;
runs alternate between the settings and peers (the order rotates each repetition), and
the table shows medians. Settings: ``default`` (minitrain's "auto"; PyTorch's own
default), and 1 and 2 threads fixed (``set_num_threads``).

Workloads: the README digits fit (30 epochs), the MNIST-shaped epoch (60000x784 random
data, 784-256-128-10, batch 128) without and with the per-epoch metrics, a
``train_step`` loop on MNIST-shaped batches, and ``minitrain.sklearn`` ``lbfgs`` and
``adam`` on digits. PyTorch runs the epoch, the step loop and the digits fit (its
manual loop, bench/peers.py).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"

HERE = Path(__file__).resolve().parent
SETTINGS = ("default", "1", "2")
MINITRAIN_WORKLOADS = ("digits_fit", "epoch", "epoch_metrics", "train_step",
                       "sklearn_lbfgs", "sklearn_adam")
TORCH_WORKLOADS = ("digits_fit", "epoch", "train_step")
LABELS = {"digits_fit": "README digits fit, 30 epochs", "epoch": "MNIST-shaped epoch",
          "epoch_metrics": "MNIST-shaped epoch, per-epoch metrics",
          "train_step": "train_step loop, MNIST-shaped batches",
          "sklearn_lbfgs": "minitrain.sklearn lbfgs, digits",
          "sklearn_adam": "minitrain.sklearn adam, digits"}


@dataclass
class BusyConfig:
    rows: int = 60000
    features: int = 784
    widths: tuple = (784, 256, 128, 10)
    batch: int = 128
    steps: int = 300
    digits_epochs: int = 30
    sklearn_iter: int = 50
    reps: int = 5
    loads: tuple = ("quiet", "busy")
    competitor_seconds: float = 600.0  # the bound; a run ends it much sooner
    peers: tuple = ("minitrain", "torch")
    workloads: tuple = MINITRAIN_WORKLOADS  # those PyTorch has too run for it
    settings: tuple = SETTINGS

    @classmethod
    def quick(cls):
        return cls(rows=600, features=48, widths=(48, 16, 10), batch=64, steps=5,
                   digits_epochs=2, sklearn_iter=2, reps=1, competitor_seconds=60.0,
                   peers=("minitrain",))


# ------------------------------------------------------------- the competitor
COMPETITOR = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


def allowed_cpus():
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else list(range(os.cpu_count() or 1))


def start_competitor(seconds):
    """A busy loop on the last allowed CPU that stops by itself after `seconds`."""
    cpu = allowed_cpus()[-1]
    pin = (lambda: os.sched_setaffinity(0, [cpu])) if hasattr(os, "sched_setaffinity") \
        else None
    return subprocess.Popen([sys.executable, "-c", COMPETITOR.format(s=seconds)],
                            preexec_fn=pin)


def stop_competitor(proc):
    """Ends the competitor by its pid (Popen's own), never by name."""
    if proc.poll() is None:
        proc.terminate()
    proc.wait()


# ---------------------------------------------------------------- the workers
def _environment(setting):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    if setting != "default":
        env["OMP_NUM_THREADS"] = setting
    return env


def _mnist(cfg, seed=0):
    from bench import tasks as T

    return T.classification_data(cfg.rows, cfg.features, cfg.widths[-1], seed)


def worker(peer, workload, setting, cfg):
    """{"seconds": of the timed part, "per": what one unit is, "units": how many,
    "threads": what minitrain reports it used} for one run, in this fresh process."""
    import numpy as np

    if peer == "torch":
        import torch

        from bench import peers as P
        if setting != "default":
            torch.set_num_threads(int(setting))
        if workload == "digits_fit":
            import minitrain as mt
            X, y = mt.load_digits()
            X = (X[:1438] / 16.0).astype(np.float32)
            y = y[:1438]
            widths = (64, 128, 10)
            warm = P.TorchTrainer(P.initial_weights(widths), 0.05, 0.9)
            warm.epoch(X, y, 32, 0)
            trainer = P.TorchTrainer(P.initial_weights(widths), 0.05, 0.9)
            t0 = time.perf_counter()
            for e in range(cfg.digits_epochs):
                trainer.epoch(X, y, 32, e)
            return {"seconds": time.perf_counter() - t0, "per": "fit", "units": 1,
                    "threads": torch.get_num_threads()}
        X, y = _mnist(cfg)
        trainer = P.TorchTrainer(P.initial_weights(cfg.widths), 0.01, 0.9)
        if workload == "epoch":
            trainer.epoch(X[:4 * cfg.batch], y[:4 * cfg.batch], cfg.batch, 0)
            t0 = time.perf_counter()
            trainer.epoch(X, y, cfg.batch, 1)
            return {"seconds": time.perf_counter() - t0, "per": "sample", "units": len(X),
                    "threads": torch.get_num_threads()}
        Xb, yb = X[:cfg.batch], y[:cfg.batch]
        for _ in range(5):
            trainer.step(Xb, yb)
        t0 = time.perf_counter()
        for i in range(cfg.steps):
            s = (i % (len(X) // cfg.batch)) * cfg.batch
            trainer.step(X[s:s + cfg.batch], y[s:s + cfg.batch])
        return {"seconds": time.perf_counter() - t0, "per": "step", "units": cfg.steps,
                "threads": torch.get_num_threads()}

    import minitrain as mt
    if setting != "default":
        mt.set_num_threads(int(setting))
    if workload == "digits_fit":
        X, y = mt.load_digits()
        X_train, _, y_train, _ = mt.train_test_split(X / 16.0, y, test_size=0.2, seed=0)

        def fit():
            model = mt.Sequential([mt.Dense(128, activation="relu"), mt.Dense(10)],
                                  loss="cross_entropy", seed=0)
            return model.fit(X_train, y_train, epochs=cfg.digits_epochs, batch_size=32,
                             verbose=0, optimizer=mt.SGD(lr=0.05, momentum=0.9))
        fit()
        t0 = time.perf_counter()
        hist = fit()
        return {"seconds": time.perf_counter() - t0, "per": "fit", "units": 1,
                "threads": getattr(hist, "threads", None)}
    if workload.startswith("sklearn"):
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        from minitrain.sklearn import MLPClassifier
        X, y = mt.load_digits()
        solver = workload.split("_")[1]

        def fit():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                return MLPClassifier((128,), solver=solver, batch_size=32,
                                     max_iter=cfg.sklearn_iter, tol=0.0,
                                     random_state=0).fit(X / 16.0, y)
        fit()
        t0 = time.perf_counter()
        fit()
        return {"seconds": time.perf_counter() - t0, "per": "fit", "units": 1,
                "threads": mt.get_num_threads()}
    X, y = _mnist(cfg)
    layers = [mt.Dense(w, activation="relu") for w in cfg.widths[1:-1]] + \
        [mt.Dense(cfg.widths[-1])]
    model = mt.Sequential(layers, seed=0)
    opt = mt.SGD(lr=0.01, momentum=0.9)
    if workload in ("epoch", "epoch_metrics"):
        metrics = "auto" if workload == "epoch_metrics" else None
        model.fit(X[:4 * cfg.batch], y[:4 * cfg.batch], epochs=1, batch_size=cfg.batch,
                  verbose=0, metrics=metrics, optimizer=opt)
        t0 = time.perf_counter()
        hist = model.fit(X, y, epochs=1, batch_size=cfg.batch, verbose=0, metrics=metrics,
                         optimizer=opt)
        return {"seconds": time.perf_counter() - t0, "per": "sample", "units": len(X),
                "threads": getattr(hist, "threads", None)}
    for i in range(5):
        model.train_step(X[:cfg.batch], y[:cfg.batch], optimizer=opt)
    t0 = time.perf_counter()
    for i in range(cfg.steps):
        s = (i % (len(X) // cfg.batch)) * cfg.batch
        model.train_step(X[s:s + cfg.batch], y[s:s + cfg.batch])
    return {"seconds": time.perf_counter() - t0, "per": "step", "units": cfg.steps,
            "threads": mt.get_num_threads()}


def run_worker(peer, workload, setting, cfg, timeout=1800):
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", peer, workload, setting,
         "--config", json.dumps(asdict(cfg))],
        env=_environment(setting), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the driver
def cases(cfg):
    out = []
    for peer in cfg.peers:
        for workload in cfg.workloads:
            if peer == "torch" and workload not in TORCH_WORKLOADS:
                continue
            for setting in cfg.settings:
                out.append((peer, workload, setting))
    return out


def run(cfg=None, log=None):
    """{"config", "runs": {load: {peer/workload/setting: [run, ...]}}, "medians"}."""
    cfg = cfg or BusyConfig()
    if "torch" in cfg.peers:
        try:
            import torch  # noqa: F401
        except ImportError:
            cfg.peers = tuple(p for p in cfg.peers if p != "torch")
    runs = {load: {} for load in cfg.loads}
    all_cases = cases(cfg)
    for r in range(cfg.reps):
        shift = r % len(all_cases)
        for load in cfg.loads:
            for peer, workload, setting in all_cases[shift:] + all_cases[:shift]:
                competitor = start_competitor(cfg.competitor_seconds) if load == "busy" \
                    else None
                try:
                    if competitor is not None:
                        time.sleep(0.05)  # the loop is running before the run starts
                    out = run_worker(peer, workload, setting, cfg)
                finally:
                    if competitor is not None:
                        stop_competitor(competitor)
                runs[load].setdefault(f"{peer}/{workload}/{setting}", []).append(out)
                if log:
                    log(f"{load} {peer} {workload} {setting}: {out}")
    return {"config": asdict(cfg), "runs": runs, "medians": medians(runs),
            "load_average": list(os.getloadavg())}


def medians(runs):
    """{load: {key: median seconds per unit}} over the runs without error."""
    out = {}
    for load, by_key in runs.items():
        out[load] = {}
        for key, values in by_key.items():
            ok = [v["seconds"] / v["units"] for v in values if "seconds" in v]
            out[load][key] = statistics.median(ok) if ok else None
    return out


def _figure(per, seconds):
    if seconds is None:
        return "—"
    if per == "sample":
        return f"{1 / seconds / 1000:.0f}k samples/s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs/{per}"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms/{per}"
    return f"{seconds:.2f} s/{per}"


def markdown(result):
    """The busy-core table: per workload and peer, each setting quiet and busy, and
    the busy default ÷ the busy 1-thread time (the target: at most 1.10)."""
    med = result["medians"]
    loads = list(med)
    lines = ["## Busy core: one core taken by another process", "",
             "A Python busy loop pinned to one core while each run (a fresh process) "
             "trains; medians over alternating runs. default = minitrain's "
             '`set_num_threads("auto")` (PyTorch: its own default).', "",
             "| peer | workload | " + " | ".join(f"{load} {s}" for load in loads
                                                 for s in SETTINGS)
             + " | busy default ÷ busy 1 |",
             "|---|---|" + "---|" * (len(loads) * len(SETTINGS) + 1)]
    keys = sorted({k.rsplit("/", 1)[0] for load in loads for k in med[load]},
                  key=lambda k: (k.split("/")[0] != "minitrain", k))
    for key in keys:
        peer, workload = key.split("/")
        per = "sample" if workload.startswith("epoch") else \
            "step" if workload == "train_step" else "fit"
        cells = [_figure(per, med[load].get(f"{key}/{s}")) for load in loads
                 for s in SETTINGS]
        busy = med.get("busy", {})
        d, one = busy.get(f"{key}/default"), busy.get(f"{key}/1")
        ratio = f"{d / one:.2f}" if d and one else "—"
        lines.append(f"| {peer} | {LABELS.get(workload, workload)} | " + " | ".join(cells)
                     + f" | {ratio} |")
    used = [f"{k}: {[v.get('threads') for v in vs]}"
            for load in loads for k, vs in result["runs"][load].items()
            if k.startswith("minitrain") and k.endswith("/default")
            and k.split("/")[1] in ("epoch", "digits_fit")]
    lines += ["", "Threads minitrain's default used per epoch (first runs): "
              + "; ".join(used[:4]) if used else "", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    p.add_argument("--reps", type=int)
    p.add_argument("--out", help="write busy_core.json and busy_core.md here")
    p.add_argument("--workloads", help="comma-separated subset of "
                   + ", ".join(MINITRAIN_WORKLOADS))
    p.add_argument("--peers", help="comma-separated subset of minitrain, torch")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        cfg = BusyConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in json.loads(args.config).items()})
        print(json.dumps(worker(*args.worker, cfg)))
        return 0
    cfg = BusyConfig.quick() if args.quick else BusyConfig()
    if args.reps:
        cfg.reps = args.reps
    for name, known in (("workloads", MINITRAIN_WORKLOADS), ("peers", ("minitrain", "torch"))):
        chosen = getattr(args, name)
        if chosen:
            chosen = tuple(chosen.split(","))
            unknown = sorted(set(chosen) - set(known))
            if unknown:
                p.error(f"--{name}: unknown {', '.join(unknown)}; choose from "
                        f"{', '.join(known)}")
            setattr(cfg, name, chosen)
    result = run(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    text = markdown(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "busy_core.json").write_text(json.dumps(result, indent=1))
        (out / "busy_core.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
