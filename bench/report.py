"""Run every benchmark task for every peer and write bench/results/.

    python bench/report.py            # the full benchmark (several minutes)
    python bench/report.py --quick    # tiny sizes, seconds: checks that it all runs

For each thread count (1 and all cores by default) one worker process runs every task
for every available peer, interleaved (see tasks.py). The thread count is fixed before
the worker starts — OMP_NUM_THREADS and the BLAS variables, XLA_FLAGS, the CPU affinity
mask — and again inside it (minitrain.set_num_threads, torch.set_num_threads), because
some libraries size their pool once, at import. The peak memory of one epoch is
measured in a fresh process per peer and thread count. The FMA peak comes from
bench/fma_probe.c, compiled here with the system C compiler.

Writes report.md (tables), report.json (every raw figure and the machine),
readme_table.md (the summary table for README.md) and PNG plots.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"

from bench import peers as P  # noqa: E402
from bench import render  # noqa: E402
from bench import tasks as T  # noqa: E402

HERE = Path(__file__).resolve().parent
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


# ----------------------------------------------------------------- thread pinning
def allowed_cpus():
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else list(range(os.cpu_count() or 1))


def thread_environment(n):
    """The environment of a process whose libraries all use n threads."""
    env = dict(os.environ)
    for var in THREAD_VARIABLES:
        env[var] = str(n)
    if n == 1:  # XLA's CPU backend otherwise runs Eigen over a pool of all cores
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                            " intra_op_parallelism_threads=1").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def pin_cpus(n):
    """Restrict this process (and the pools it will create) to its first n CPUs."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, allowed_cpus()[:n])


def run_python(args, n_threads, timeout=3600):
    """Run this script with `args` in a fresh interpreter pinned to n_threads."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(cmd, env=thread_environment(n_threads), capture_output=True,
                          text=True, timeout=timeout,
                          preexec_fn=(lambda: pin_cpus(n_threads))
                          if hasattr(os, "sched_setaffinity") else None)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout


# ----------------------------------------------------------------------- machine
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                            if f in flags]
    except OSError:
        pass
    return []


def machine_description(classes):
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
            "load_average_before": list(os.getloadavg()),
            "cpus_available": len(allowed_cpus()), "memory_gb": mem,
            "os": platform.platform(), "python": platform.python_version(),
            "versions": P.versions(classes)}


def minitrain_isa():
    """The instruction set minitrain's kernels run with, if minitrain reports it."""
    try:
        from minitrain import _core
    except ImportError as err:
        return f"unknown (minitrain's C extension does not import: {err})"
    isa = getattr(_core, "isa", None)
    if callable(isa):
        return str(isa())
    return "not reported by minitrain (no minitrain._core.isa())"


# ---------------------------------------------------------------- FMA peak probe
def fma_peak(thread_counts, workdir):
    """GFLOP/s of the FMA probe at each thread count, or an error string."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return {"error": "no C compiler (cc) found"}
    exe = Path(workdir) / "fma_probe"
    build = subprocess.run([cc, "-O2", "-fopenmp", str(HERE / "fma_probe.c"), "-o", str(exe)],
                           capture_output=True, text=True)
    if build.returncode != 0:
        return {"error": f"{cc} failed: {build.stderr[-2000:]}"}
    out = {"compiler": cc, "flags": "-O2 -fopenmp"}
    for n in thread_counts:
        proc = subprocess.run([str(exe), str(n)], env=thread_environment(n),
                              capture_output=True, text=True,
                              preexec_fn=(lambda n=n: pin_cpus(n))
                              if hasattr(os, "sched_setaffinity") else None)
        out[str(n)] = json.loads(proc.stdout) if proc.returncode == 0 \
            else {"error": proc.stderr[-2000:]}
    return out


# ------------------------------------------------------------- in-worker entries
def load_peers(names):
    """{name: peer instance} for the peers that import, and {name: reason} for the rest."""
    loaded, failed = {}, {}
    for cls in P.peer_classes(names):
        try:
            loaded[cls.name] = P.load(cls)
        except Exception as err:  # missing or broken: reported, never dropped
            failed[cls.name] = f"import failed: {type(err).__name__}: {err}"
    return loaded, failed


def thread_state(loaded, n):
    """What each library reports about its threads after pinning them to n."""
    state = {"requested": n, "affinity": sorted(os.sched_getaffinity(0))
             if hasattr(os, "sched_getaffinity") else None}
    try:
        import minitrain
        state["minitrain"] = minitrain.get_num_threads()
    except ImportError:
        pass
    if "torch" in loaded or "torch-dataloader" in loaded:
        import torch
        state["torch"] = torch.get_num_threads()
        state["torch_interop"] = torch.get_num_interop_threads()
    try:
        from threadpoolctl import threadpool_info
        state["threadpools"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads",
                                                         "architecture", "filepath")}
                                for p in threadpool_info()]
    except ImportError:
        state["threadpools"] = "threadpoolctl is not installed"
    return state


def worker(args):
    cfg = T.Config.from_dict(json.loads(args.config))
    n = args.worker
    loaded, failed = load_peers([name for name in args.peers.split(",") if name])
    for peer in loaded.values():
        peer.set_threads(n)
    result = {"threads": thread_state(loaded, n), "isa": minitrain_isa(),
              "failed_peers": failed, **T.run_all(loaded, cfg, set(loaded))}
    Path(args.result).write_text(json.dumps(result))


def memory_worker(args):
    cfg = T.Config.from_dict(json.loads(args.config))
    loaded, failed = load_peers([args.memory_probe])
    if failed:
        print(json.dumps({"error": failed[args.memory_probe]}))
        return
    peer = loaded[args.memory_probe]
    peer.set_threads(args.threads)
    print(json.dumps(T.memory_probe(peer, cfg)))


# ------------------------------------------------------------------- the report
def run(out_dir, cfg, thread_counts, peer_names=None, memory=True, plots=True,
        command="python bench/report.py"):
    """Run everything and write the report files into out_dir; returns the results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = P.peer_classes(peer_names)
    status = {cls.name: {"label": cls.label, "missing": cls.missing()} for cls in classes}
    available = [name for name, s in status.items() if s["missing"] is None]
    started = datetime.datetime.now(datetime.timezone.utc)
    results = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "command": command,
               "config": cfg.to_dict(), "machine": machine_description(classes),
               "thread_counts": thread_counts, "peers": status, "runs": {}, "memory": {}}
    with tempfile.TemporaryDirectory() as tmp:
        results["fma_peak"] = fma_peak(thread_counts, tmp)
        for n in thread_counts:
            result_file = Path(tmp) / f"worker-{n}.json"
            run_python(["--worker", str(n), "--config", json.dumps(cfg.to_dict()),
                        "--peers", ",".join(available), "--result", str(result_file)], n)
            results["runs"][str(n)] = json.loads(result_file.read_text())
            for name, reason in results["runs"][str(n)]["failed_peers"].items():
                status[name]["missing"] = reason
    for n in thread_counts if memory else ():
        results["memory"][str(n)] = {}
        for name in available:
            out = run_python(["--memory-probe", name, "--threads", str(n),
                              "--config", json.dumps(cfg.to_dict())], n)
            results["memory"][str(n)][name] = json.loads(out.strip().splitlines()[-1])
    results["machine"]["minitrain_isa"] = next(
        (r["isa"] for r in results["runs"].values()), minitrain_isa())
    results["machine"]["load_average_after"] = list(os.getloadavg())
    results["elapsed_seconds"] = (datetime.datetime.now(datetime.timezone.utc)
                                  - started).total_seconds()
    results["plots"] = render.plots(results, out_dir) if plots else {"skipped": "--no-plots"}
    (out_dir / "report.json").write_text(json.dumps(results, indent=1))
    (out_dir / "report.md").write_text(render.report_markdown(results))
    (out_dir / "readme_table.md").write_text(render.readme_table(results))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    p.add_argument("--out", default=str(HERE / "results"), help="output directory")
    p.add_argument("--threads", help="comma-separated thread counts (default: 1 and all "
                                     "available cores)")
    p.add_argument("--peers", help=f"comma-separated subset of {[c.name for c in P.PEERS]}")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory task")
    p.add_argument("--no-plots", action="store_true")
    # internal: the per-thread-count worker and the per-peer memory probe
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.memory_probe:
        args.threads = int(args.threads)
        return memory_worker(args)
    cfg = T.Config.quick() if args.quick else T.Config()
    cores = len(allowed_cpus())
    threads = sorted({int(t) for t in args.threads.split(",")}) if args.threads \
        else sorted({1, cores})
    peer_names = args.peers.split(",") if args.peers else None
    command = "python bench/report.py" + (" " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])).rstrip()
    results = run(args.out, cfg, threads, peer_names, memory=not args.no_memory,
                  plots=not args.no_plots, command=command)
    print(f"wrote {args.out}/report.md, report.json, readme_table.md "
          f"({results['elapsed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
