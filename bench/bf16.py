"""mixed_bfloat16 against float32 and PyTorch's bfloat16 autocast (issue 15).

    python -m bench.bf16 [--threads 1 2] [--reps 5] [--out bench/results]

For each thread count, in a process of its own: the vdpbf16ps and FMA peaks
(bench/fma_probe.c), the bfloat16 GEMM's GFLOP/s on a square product and on the wide
iteration's products (with torch.matmul on bfloat16 tensors), then the three iteration
shapes and the MNIST-shaped epoch for minitrain float32, minitrain mixed_bfloat16,
PyTorch float32 and PyTorch autocast bfloat16, measured interleaved (bench/tasks.py:
repetition r times every participant in turn, so a shared machine's drifts fall on all
alike). Then the curves: an MNIST-shaped fit (60000 x 784 rows, 3 epochs) and the digits
fit in float32 and mixed_bfloat16, loss and accuracy per epoch, plotted side by side.
Writes bf16.json, bf16.md and bf16_curves.png into --out.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import peers as P
from bench import tasks as T

HERE = Path(__file__).resolve().parent
PEERS = ("minitrain", "minitrain-bf16", "torch", "torch-bf16")
GEMMS = ("minitrain float32", "minitrain bf16", "torch bf16")


def probe(threads):
    """The fma_probe JSON at `threads` (float32 FMA and vdpbf16ps peaks, GFLOP/s)."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "fma_probe"
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-fopenmp", str(HERE / "fma_probe.c"),
                        "-o", str(exe)], check=True)
        return json.loads(subprocess.run([str(exe), str(threads)], capture_output=True,
                                         text=True, check=True).stdout)


def gemm_impls():
    import torch

    from minitrain import _core

    def torch_bf16(A, B, ta, tb):
        # the conversion is part of the product, as minitrain rounds while it packs
        A, B = torch.from_numpy(A).bfloat16(), torch.from_numpy(B).bfloat16()
        return torch.matmul(A.T if ta else A, B.T if tb else B)
    return {"minitrain float32": lambda A, B, ta, tb: _core.gemm(A, B, ta, tb),
            "minitrain bf16": lambda A, B, ta, tb: _core.gemm(A, B, ta, tb, bf16=True),
            "torch bf16": torch_bf16}


def gemm_shapes():
    n, w = 512, (1024, 2048, 2048, 10)
    shapes = [("square 2048", 2048, 2048, 2048, False, False)]
    for l, (i, o) in enumerate(zip(w[:-1], w[1:])):
        if o < 16:
            continue
        shapes += [(f"wide L{l + 1} X·W", n, o, i, False, False),
                   (f"wide L{l + 1} Xᵀ·dZ", i, o, n, True, False)]
        if l > 0:
            shapes.append((f"wide L{l + 1} dZ·Wᵀ", n, i, o, False, True))
    return shapes


def _config(quick):
    return T.Config.quick() if quick else T.Config()


def worker(threads, reps, quick=False):
    """Every timed measurement at `threads`, in this process: JSON-ready."""
    cfg = _config(quick)
    peers = {cls.name: cls() for cls in P.peer_classes(PEERS)}
    for peer in peers.values():
        peer.set_threads(threads)
    out = {"threads": threads, "probe": probe(threads), "gemm": {}, "iterations": {}}
    impls = gemm_impls()
    rng = np.random.default_rng(0)
    for label, M, N, K, ta, tb in gemm_shapes()[:2 if quick else None]:
        A, B = T.gemm_operands(rng, M, N, K, ta, tb)
        samplers = {name: T.Timed(lambda f=f: f(A, B, ta, tb)) for name, f in impls.items()}
        samples, errors = T.interleaved(samplers, reps, cfg.min_sample_seconds / 2, 0.05)
        out["gemm"][label] = {"flops": 2.0 * M * N * K, "samples": samples, "errors": errors}
    for key, spec in cfg.iterations.items():
        samplers = {name: T.make_sampler("iteration", spec, peer, cfg)
                    for name, peer in peers.items()}
        samples, errors = T.interleaved(samplers, reps, cfg.min_sample_seconds, 0.1)
        out["iterations"][key] = {**spec, "flops": T.iteration_flops(spec["widths"],
                                                                       spec["batch"]),
                                  "samples": samples, "errors": errors}
    samplers = {name: T.make_sampler("epoch", {}, peer, cfg) for name, peer in peers.items()}
    samples, errors = T.interleaved(samplers, cfg.epoch_reps, 0.0, 0.1)
    out["epoch"] = {"rows": cfg.epoch_rows, "widths": cfg.epoch_widths,
                    "batch": cfg.epoch_batch, "samples": samples, "errors": errors}
    return out


def curves(quick=False):
    """Loss and accuracy per epoch, float32 against mixed_bfloat16: the MNIST-shaped fit
    (the epoch task's data and widths, batch 128, SGD with momentum, 3 epochs) and the
    digits fit of the README (30 epochs)."""
    import minitrain as mt

    cfg = _config(quick)
    n = cfg.epoch_rows
    X, y = T.classification_data(n + 10000, cfg.epoch_features, cfg.epoch_widths[-1], 0)
    X, Xv, y, yv = X[:n], X[n:], y[:n], y[n:]  # the last 10000 rows validate
    data = {"mnist-shaped": ((X, y), (Xv, yv), cfg.epoch_widths, 128, 3, 0.01)}
    d = T.digits_split()
    data["digits"] = ((d[0], d[2]), (d[1], d[3]), (64, 128, 10), 32, 3 if quick else 30, 0.05)
    out = {}
    for name, ((Xt, yt), val, widths, batch, epochs, lr) in data.items():
        out[name] = {}
        for dtype in ("float32", "mixed_bfloat16"):
            layers = [mt.Dense(w, activation="relu") for w in widths[1:-1]] + [mt.Dense(10)]
            model = mt.Sequential(layers, seed=0, dtype=dtype)
            hist = model.fit(Xt, yt, epochs=epochs, batch_size=batch, verbose=0,
                             validation_data=val, optimizer=mt.SGD(lr=lr, momentum=0.9))
            out[name][dtype] = {k: [float(v) for v in hist.history[k]]
                                for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
            # per iteration, averaged over windows of 20: the curve within the epochs
            it = np.asarray(hist.iteration_loss, dtype=np.float64)
            it = it[:len(it) // 20 * 20].reshape(-1, 20).mean(axis=1)
            out[name][dtype]["iteration_loss_20"] = [float(v) for v in it]
    return out


def median(xs):
    return statistics.median(xs) if xs else None


def markdown(results):
    lines = ["# mixed_bfloat16 against float32 and PyTorch autocast bfloat16", "",
             f"`{results['command']}` on {results['machine']}; medians of the interleaved "
             "repetitions (min–max in the JSON).", ""]
    for run in results["runs"]:
        n = run["threads"]
        pr = run["probe"]
        peak16, peak32 = pr.get("bfloat16_gflops_cpu_time"), pr.get("float32_gflops_cpu_time")
        lines += [f"## {n} thread{'s' if n > 1 else ''}", "",
                  f"Peaks (fma_probe.c): vdpbf16ps {peak16:.0f} GFLOP/s, float32 FMA "
                  f"{peak32:.0f} GFLOP/s.", "",
                  "| GEMM | " + " | ".join(f"{g} GFLOP/s" for g in GEMMS) +
                  " | minitrain bf16 / bf16 peak |", "|---" * (len(GEMMS) + 2) + "|"]
        for label, g in run["gemm"].items():
            rates = {k: g["flops"] / median(v) / 1e9 for k, v in g["samples"].items()}
            lines.append(f"| {label} | " + " | ".join(f"{rates.get(k, float('nan')):.0f}"
                                                     for k in GEMMS) +
                         f" | {rates['minitrain bf16'] / peak16:.0%} |")
        lines += ["", "| iteration | " + " | ".join(f"{p} ms" for p in PEERS) +
                  " | bf16 ÷ float32 speed-up | torch-bf16 ÷ minitrain-bf16 time | "
                  "minitrain-bf16 GFLOP/s (÷ bf16 peak) |", "|---" * (len(PEERS) + 4) + "|"]
        for key, it in run["iterations"].items():
            s = it["samples"]
            med = {p: median(v) for p, v in s.items()}
            speed = median([a / b for a, b in zip(s["minitrain"], s["minitrain-bf16"])])
            vs = median([a / b for a, b in zip(s.get("torch-bf16", []), s["minitrain-bf16"])])
            rate = it["flops"] / med["minitrain-bf16"] / 1e9
            lines.append(f"| {key} {'-'.join(map(str, it['widths']))} batch {it['batch']} | "
                         + " | ".join(f"{med[p] * 1e3:.2f}" if med.get(p) else "–"
                                      for p in PEERS)
                         + f" | ×{speed:.2f} | ×{vs:.2f} | {rate:.0f} ({rate / peak16:.0%}) |")
        e = run["epoch"]
        s = e["samples"]
        lines += ["", f"MNIST-shaped epoch ({e['rows']} rows, widths "
                  f"{'-'.join(map(str, e['widths']))}, batch {e['batch']}): " +
                  ", ".join(f"{p} {median(v):.3f} s" for p, v in s.items()) + "; bf16 ÷ "
                  f"float32 speed-up ×{median([a / b for a, b in zip(s['minitrain'], s['minitrain-bf16'])]):.2f}.",
                  ""]
    c = results["curves"]
    lines += ["## Curves (bf16_curves.png)", "",
              "| fit | float32 loss | mixed_bfloat16 loss | relative | float32 val accuracy | "
              "mixed_bfloat16 val accuracy |", "|---|---|---|---|---|---|"]
    for name, by in c.items():
        a, b = by["float32"], by["mixed_bfloat16"]
        lines.append(f"| {name}, {len(a['loss'])} epochs | {a['loss'][-1]:.4f} | "
                     f"{b['loss'][-1]:.4f} | {b['loss'][-1] / a['loss'][-1] - 1:+.2%} | "
                     f"{a['val_accuracy'][-1]:.4f} | {b['val_accuracy'][-1]:.4f} |")
    return "\n".join(lines) + "\n"


def plot(c, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(c), 2, figsize=(10, 3.6 * len(c)), squeeze=False)
    for row, (name, by) in zip(axes, c.items()):
        for dtype, style in (("float32", "-"), ("mixed_bfloat16", "--")):
            h = by[dtype]
            epochs = range(1, len(h["loss"]) + 1)
            steps = np.arange(1, len(h["iteration_loss_20"]) + 1) * 20
            per_epoch = len(h["iteration_loss_20"]) * 20 / len(h["loss"])
            row[0].plot(steps / per_epoch, h["iteration_loss_20"], style, alpha=0.7,
                        label=f"{dtype} train (20 iterations)")
            row[0].plot(epochs, h["val_loss"], style, label=f"{dtype} validation", alpha=0.6)
            row[1].plot(epochs, h["val_accuracy"], style, label=f"{dtype} validation")
        row[0].set(title=f"{name}: loss", xlabel="epoch")
        row[1].set(title=f"{name}: accuracy", xlabel="epoch")
        for ax in row:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.reps, args.quick)))
        return
    runs = []
    for n in args.threads:
        proc = subprocess.run([sys.executable, "-m", "bench.bf16", "--worker", str(n),
                               "--reps", str(args.reps)] + ["--quick"] * args.quick,
                              capture_output=True, text=True, check=True, cwd=HERE.parent)
        runs.append(json.loads(proc.stdout.splitlines()[-1]))
    results = {"command": "python -m bench.bf16 " + " ".join(argv or sys.argv[1:]),
               "machine": f"{platform.processor() or platform.machine()}, "
                          f"{os.cpu_count()} cores", "runs": runs, "curves": curves(args.quick)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bf16.json").write_text(json.dumps(results, indent=1))
    (out / "bf16.md").write_text(markdown(results))
    plot(results["curves"], out / "bf16_curves.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
