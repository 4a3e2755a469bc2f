"""Data-parallel training over MPI: epoch time on 1 process x 1 thread against 2 ranks x 1
thread, the scaling efficiency T1 / (2 T2), and the all-reduce's share of an iteration.

    python bench/distributed.py                # both models, 3 repetitions: results/distributed.*
    python bench/distributed.py --quick        # tiny sizes, a few seconds (the tests run it)

Each measurement is a fresh ``mpiexec -n K`` (K = 1, then 2) of this file with
``--worker``, OMP_NUM_THREADS=1 (one thread per rank: 2 ranks fill the 2 cores that one
process with 2 threads would use). A worker fits the model for one warm-up epoch and
``--epochs`` timed epochs on random float32 data (``verbose=0, metrics=None``) and reports
the median epoch time; it also times the ``Reducer`` call of every iteration (the gradient's
all-reduce, including the wait for the slower rank) and, alone, an ``Allreduce`` of the
gradient's size. Runs of K = 1 and 2 alternate over the repetitions; the table shows
medians.

The overlap probe (``--overlap``) asks whether starting the all-reduce of the last layers'
gradients while the first layer's backward runs (DDP's and Horovod's bucketing) pays here:
it times a dW GEMM of the wide model's first layer followed by an ``Allreduce`` of the
other layers' gradients, against an ``Iallreduce`` started before the GEMM and waited for
after it, with and without MPICH's progress thread (MPIR_CVAR_ASYNC_PROGRESS=1).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = {  # name: (hidden widths, inputs, outputs, global batch, rows of the epoch)
    "mnist": ((256, 128), 784, 10, 128, 60000),
    "wide": ((2048, 2048), 1024, 10, 512, 8192),
}
QUICK = {"mnist": ((32,), 64, 10, 64, 2048), "wide": ((64, 64), 64, 10, 64, 1024)}


def mpiexec():
    for where in (Path(sys.executable).parent, Path(sys.base_prefix) / "bin"):
        if (where / "mpiexec").exists():
            return str(where / "mpiexec")
    found = shutil.which("mpiexec")
    if found is None:
        sys.exit("bench/distributed.py: no mpiexec (pip install 'minitrain[mpi]')")
    return found


def worker(args):
    import numpy as np
    from mpi4py import MPI

    import minitrain as mt
    from minitrain import distributed

    comm = MPI.COMM_WORLD
    hidden, n_in, n_out, batch, rows = (QUICK if args.quick else MODELS)[args.model]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, n_in), dtype=np.float32)
    y = rng.integers(0, n_out, rows)
    model = mt.Sequential([*(mt.Dense(h, activation="relu") for h in hidden), mt.Dense(n_out)],
                          seed=0)
    opt = mt.SGD(lr=0.01, momentum=0.9)
    reduce_times = []
    call = distributed.Reducer.__call__

    def timed(self, loss, err):
        t0 = time.perf_counter()
        try:
            return call(self, loss, err)
        finally:
            reduce_times.append(time.perf_counter() - t0)

    distributed.Reducer.__call__ = timed
    on = comm if comm.Get_size() > 1 else None
    model.fit(X, y, epochs=1, batch_size=batch, optimizer=opt, verbose=0, metrics=None, comm=on)
    reduce_times.clear()
    hist = model.fit(X, y, epochs=args.epochs, batch_size=batch, optimizer=opt, verbose=0,
                     metrics=None, comm=on)
    epoch = statistics.median(hist.history["time"])
    half = None
    if comm.Get_size() == 1:
        # one rank's share of the work of 2 ranks, without them: the epoch at half the batch
        # (twice the iterations). T1 / this is the efficiency 2 ranks would reach with a free
        # all-reduce and no contention between them: what the per-iteration costs that do not
        # shrink with the batch (the update, the weights' reads) leave.
        half = statistics.median(model.fit(X, y, epochs=args.epochs, batch_size=batch // 2,
                                           optimizer=opt, verbose=0,
                                           metrics=None).history["time"])
    alone = []
    buf = np.zeros(model.params_flat.size + distributed.SLOTS, dtype=np.float32)
    for i in range(220):  # the first 20 warm the shared-memory channel up
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf)
        if i >= 20:
            alone.append(time.perf_counter() - t0)
    if comm.Get_rank() == 0:
        print(json.dumps({
            "model": args.model, "ranks": comm.Get_size(), "epoch_s": epoch,
            "iterations": hist.iterations_per_epoch, "params": int(model.params_flat.size),
            "half_batch_epoch_s": half,
            "reduce_in_fit_s": statistics.median(reduce_times) if reduce_times else 0.0,
            "allreduce_alone_s": statistics.median(alone)}))


def overlap_worker(args):
    import numpy as np
    from mpi4py import MPI

    from minitrain import _core

    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(0)
    n, n_in, width = (256, 1024, 2048) if not args.quick else (64, 64, 64)
    X = rng.standard_normal((n, n_in), dtype=np.float32)
    dZ = rng.standard_normal((n, width), dtype=np.float32)
    dW = np.empty((n_in, width), dtype=np.float32)
    rest = np.ones(width * width + width * 10, dtype=np.float32)  # the later layers' dW
    seq, ovl = [], []
    for _ in range(args.epochs * 4):
        comm.Barrier()
        t0 = time.perf_counter()
        _core.gemm(X, dZ, trans_a=True, C=dW)
        comm.Allreduce(MPI.IN_PLACE, rest)
        seq.append(time.perf_counter() - t0)
        comm.Barrier()
        t0 = time.perf_counter()
        request = comm.Iallreduce(MPI.IN_PLACE, rest)
        _core.gemm(X, dZ, trans_a=True, C=dW)
        request.Wait()
        ovl.append(time.perf_counter() - t0)
    if comm.Get_rank() == 0:
        print(json.dumps({"sequential_s": statistics.median(seq),
                          "overlapped_s": statistics.median(ovl),
                          "async_progress": os.environ.get("MPIR_CVAR_ASYNC_PROGRESS", "0")}))


def launch(k, extra, env=None):
    command = [mpiexec(), "-n", str(k), sys.executable, str(Path(__file__).resolve()),
               "--worker", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args):
    flags = (["--quick"] if args.quick else []) + ["--epochs", str(args.epochs)]
    load_before = os.getloadavg()[0]
    rows = {}
    # (ranks, threads per rank): 1 process on 1 core, 2 ranks on 2, 1 process on 2 threads
    settings = ((1, 1), (2, 1), (1, 2))
    for rep in range(args.reps):
        for name in MODELS:
            for k, threads in settings[rep % 3:] + settings[:rep % 3]:  # rotate the order
                rows.setdefault((name, k, threads), []).append(
                    launch(k, ["--model", name, *flags], {"OMP_NUM_THREADS": str(threads)}))
    # the machine's load average (1 minute) before and after: the 2-core settings need
    # both cores free
    results = {"models": {}, "overlap": [], "load": [load_before, os.getloadavg()[0]],
               "date": time.strftime("%Y-%m-%d %H:%M")}
    for name in MODELS:
        one, two, threaded = rows[name, 1, 1], rows[name, 2, 1], rows[name, 1, 2]
        t1 = statistics.median(r["epoch_s"] for r in one)
        t2 = statistics.median(r["epoch_s"] for r in two)
        t1_2 = statistics.median(r["epoch_s"] for r in threaded)
        half = statistics.median(r["half_batch_epoch_s"] for r in one)
        results["models"][name] = {
            "shape": "-".join(map(str, (MODELS[name][1], *MODELS[name][0], MODELS[name][2]))),
            "batch": MODELS[name][3], "rows": MODELS[name][4],
            "iterations": two[0]["iterations"], "params": two[0]["params"],
            "T1_s": t1, "T2_s": t2, "efficiency": t1 / (2 * t2), "T1_2threads_s": t1_2,
            "half_batch_epoch_s": half, "bound": t1 / half,
            "compute_per_iteration_1_rank_s": t1 / two[0]["iterations"],
            "reduce_in_fit_s": statistics.median(r["reduce_in_fit_s"] for r in two),
            "allreduce_alone_s": statistics.median(r["allreduce_alone_s"] for r in two)}
    if args.overlap:
        for progress in ("0", "1"):
            results["overlap"].append(launch(2, ["--overlap", *flags],
                                             {"MPIR_CVAR_ASYNC_PROGRESS": progress}))
    return results


def table(results):
    lines = ["| model | global batch | iterations/epoch | T1 (1 process × 1 thread) | "
             "T2 (2 ranks × 1 thread) | efficiency T1/(2·T2) | bound without communication "
             "| all-reduce per iteration (in the fit / alone) | 1 process × 2 threads |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["models"].values():
        lines.append(f"| {r['shape']} | {r['batch']} | {r['iterations']} | {r['T1_s']:.3f} s "
                     f"| {r['T2_s']:.3f} s | {100 * r['efficiency']:.0f} % | "
                     f"{100 * r['bound']:.0f} % | "
                     f"{1e3 * r['reduce_in_fit_s']:.2f} / {1e3 * r['allreduce_alone_s']:.2f} ms | "
                     f"{r['T1_2threads_s']:.3f} s |")
    lines.append("\nThe bound without communication is T1 ÷ the 1-process epoch at half the "
                 "batch (each rank's share of the work, alone): the efficiency 2 ranks would "
                 "reach if the all-reduce took no time and the ranks did not share caches and "
                 "memory bandwidth. The all-reduce in the fit includes the wait for the slower "
                 "rank; alone, it is the median of 200 after a barrier.")
    lines.append(f"\n{results['date']}, load average {results['load'][0]:.1f} before and "
                 f"{results['load'][1]:.1f} after the runs, on {os.cpu_count()} cores")
    for o in results["overlap"]:
        lines.append(f"\noverlap probe (MPIR_CVAR_ASYNC_PROGRESS={o['async_progress']}): dW GEMM "
                     f"then Allreduce {1e3 * o['sequential_s']:.2f} ms, Iallreduce around the "
                     f"GEMM {1e3 * o['overlapped_s']:.2f} ms")
    return "\n".join(lines)


# The three model shapes of tasks 1-3 with their iteration at 1 thread on a quiet machine
# (bench/results/report.md, 2026-11-21): the compute the cost model divides over k nodes
SHAPES = (("64-128-10", (64, 128, 10), 15.2e-6 / 32),
          ("784-256-128-10", (784, 256, 128, 10), 703e-6 / 128),
          ("1024-2048-2048-10", (1024, 2048, 2048, 10), 91e-3 / 512))
NODES = (2, 4, 8, 16, 32, 64)
BATCHES = (512, 1024, 2048, 4096, 8192)
NETWORKS = {"10 Gb/s": 10e9 / 8, "25 Gb/s": 25e9 / 8, "100 Gb/s": 100e9 / 8}
LATENCY_S = 10e-6  # per step of the ring: a message between two nodes


def ring_allreduce_s(k, nbytes, bandwidth):
    """A ring all-reduce of nbytes over k nodes: 2(k-1)/k of the bytes through each
    link, in 2(k-1) steps."""
    return 2 * (k - 1) / k * nbytes / bandwidth + 2 * (k - 1) * LATENCY_S


def efficiency(k, batch, row_s, nbytes, bandwidth):
    """T_c / (T_c + T_ar): T_c the compute of a node's batch / k rows, T_ar the ring
    all-reduce of the gradient, not overlapped."""
    t_c = batch / k * row_s
    return t_c / (t_c + ring_allreduce_s(k, nbytes, bandwidth))


def cost_model():
    """Markdown tables of the cost model: for each shape and network, the smallest global
    batch that keeps k nodes at >= 90 % efficiency, and the most nodes (of 2-64) that
    keep >= 50 % (a speed-up of k/2) at each global batch."""
    lines = ["| model (gradient) | network | " + " | ".join(f"k={k}" for k in NODES) + " |",
             "|---|---|" + "---|" * len(NODES)]
    scaling = ["| model | network | " + " | ".join(f"B={b}" for b in BATCHES) + " |",
               "|---|---|" + "---|" * len(BATCHES)]
    for name, widths, row_s in SHAPES:
        params = sum(a * b + b for a, b in zip(widths, widths[1:]))
        nbytes = 4 * params  # float32
        label = f"{name} ({nbytes / 1e6:.2f} MB)"
        for net, bw in NETWORKS.items():
            # efficiency >= 0.9 when batch / k * row_s >= 9 * T_ar
            need = [9 * ring_allreduce_s(k, nbytes, bw) * k / row_s for k in NODES]
            lines.append(f"| {label} | {net} | " + " | ".join(f"{b:,.0f}" for b in need) + " |")
            most = []
            for b in BATCHES:
                ok = [k for k in NODES if efficiency(k, b, row_s, nbytes, bw) >= 0.5]
                most.append(str(max(ok)) if ok else "< 2")
            scaling.append(f"| {name} | {net} | " + " | ".join(most) + " |")
    return "\n".join(["Smallest global batch for >= 90 % efficiency on k nodes:", "",
                      *lines, "", "Most nodes at >= 50 % efficiency (speed-up >= k/2), by "
                      "global batch:", "", *scaling])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overlap", action="store_true", help="also run the overlap probe")
    p.add_argument("--model", choices=sorted(MODELS), default="mnist")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per run")
    p.add_argument("--reps", type=int, default=3, help="runs per model and rank count")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--cost-model", action="store_true",
                   help="print the cost model's tables (bench/README.md)")
    args = p.parse_args()
    if args.cost_model:
        print(cost_model())
        return None
    if args.worker:
        return overlap_worker(args) if args.overlap else worker(args)
    if args.quick:
        args.reps = 1
    results = run(args)
    text = table(results)
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "distributed.json").write_text(json.dumps(results, indent=1))
        (args.out / "distributed.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
