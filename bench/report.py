"""Run every benchmark task for every peer and write bench/results/.

    python bench/report.py            # the full benchmark (several minutes)
    python bench/report.py --quick    # tiny sizes, seconds: checks that it all runs
    python bench/report.py --busy-only  # only the busy-core task (bench/busy.py)

For each thread count (1 and all cores by default) every available peer gets its own
worker process, and this process drives them all through every task, interleaved (see
tasks.py): one process per peer, because thread pools of different libraries in one
process (libgomp, PyTorch's own libgomp, OpenBLAS, XLA) take cores from each other —
BLAS threads keep spinning after a call — which made multi-threaded figures up to a
hundred times slower. The thread count is fixed before a worker starts —
OMP_NUM_THREADS and the BLAS variables, XLA_FLAGS, the CPU affinity mask — and again
inside it (minitrain.set_num_threads, torch.set_num_threads), because some libraries
size their pool once, at import. The peak memory of one epoch is measured in a fresh
process per peer and thread count. The FMA peak comes from bench/fma_probe.c, compiled
here with the system C compiler.

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

from bench import busy  # noqa: E402
from bench import peers as P  # noqa: E402
from bench import render  # noqa: E402
from bench import tasks as T  # noqa: E402

HERE = Path(__file__).resolve().parent
SETTLE_SECONDS = 0.1  # between repetitions at > 1 thread: see tasks.interleaved
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


def _python(args):
    return [sys.executable, str(Path(__file__).resolve()), *args]


def _pinned(n_threads):
    return (lambda: pin_cpus(n_threads)) if hasattr(os, "sched_setaffinity") else None


def run_python(args, n_threads, timeout=3600):
    """Run this script with `args` in a fresh interpreter pinned to n_threads."""
    proc = subprocess.run(_python(args), env=thread_environment(n_threads),
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_pinned(n_threads))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout


class PeerProcess:
    """A peer's worker process (``--serve``), pinned to n threads, driven by one JSON
    request and one JSON reply per line."""

    def __init__(self, name, n_threads, cfg, log_dir):
        self.name = name
        self.log = open(Path(log_dir) / f"{name}-{n_threads}.log", "w+")
        self.proc = subprocess.Popen(
            _python(["--serve", name, "--threads", str(n_threads),
                     "--config", json.dumps(cfg.to_dict())]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=thread_environment(n_threads), preexec_fn=_pinned(n_threads))
        self.hello = self.call(None)

    def call(self, request):
        if request is not None:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"the {self.name} process ended: {self.log.read()[-2000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class RemoteSampler:
    """A tasks.py sampler that runs in a peer's process."""

    def __init__(self, process, kind, params, impl=None):
        self.process, self.request = process, {"kind": kind, "params": params, "impl": impl}

    def setup(self, min_seconds):
        self.process.call({"op": "setup", "min_seconds": min_seconds, **self.request})

    def sample(self):
        return self.process.call({"op": "sample"})["seconds"]

    def info(self):
        return self.process.call({"op": "info"})["info"]


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
                              capture_output=True, text=True, preexec_fn=_pinned(n))
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
        # library paths below the interpreter's prefix: the report shows no local paths
        state["threadpools"] = [{**{k: p.get(k) for k in ("internal_api", "version",
                                                          "num_threads", "architecture")},
                                 "filepath": p["filepath"].replace(sys.prefix, "<prefix>")}
                                for p in threadpool_info()]
    except ImportError:
        state["threadpools"] = "threadpoolctl is not installed"
    return state


def serve(args):
    """A peer's worker: load the peer, pin its threads, then answer the requests of
    PeerProcess until stdin closes."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the libraries print goes to the log, not into the protocol

    def reply(obj):
        protocol.write(json.dumps(obj) + "\n")
        protocol.flush()

    cfg = T.Config.from_dict(json.loads(args.config))
    loaded, failed = load_peers([args.serve])
    if failed:
        return reply({"error": failed[args.serve]})
    peer = loaded[args.serve]
    peer.set_threads(args.threads)
    reply({"threads": thread_state(loaded, args.threads), "isa": minitrain_isa()})
    sampler = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "setup":
                sampler = None  # free the previous job's data first
                sampler = T.make_sampler(request["kind"], request["params"], peer, cfg,
                                         request["impl"])
                sampler.setup(request["min_seconds"])
                reply({"ok": True})
            elif request["op"] == "sample":
                reply({"seconds": sampler.sample()})
            else:
                reply({"info": sampler.info()})
        except Exception as err:  # reported for this peer; the run goes on
            reply({"error": f"{type(err).__name__}: {err}"})


def measure(cfg, n, peer_names, log_dir):
    """Every job at n threads, each peer in its own process, interleaved."""
    processes, failed = {}, {}
    for name in peer_names:
        try:
            processes[name] = PeerProcess(name, n, cfg, log_dir)
        except RuntimeError as err:
            failed[name] = str(err)
    settle = SETTLE_SECONDS if n > 1 else 0.0
    measured = {}
    try:
        hosts = T.gemm_hosts(processes)
        for key, kind, params in T.jobs(cfg):
            if kind == "gemm":
                samplers = {impl: RemoteSampler(processes[host], kind, params, impl)
                            for impl, host in hosts.items()}
            else:
                samplers = {name: RemoteSampler(processes[name], kind, params)
                            for name in T.participants(kind, processes)}
            reps, min_seconds = T.job_repetitions(kind, cfg)
            samples, errors = T.interleaved(samplers, reps, min_seconds, settle)
            infos = {}
            for name in samples:
                try:
                    infos[name] = samplers[name].info()
                except RuntimeError as err:
                    errors[name] = str(err)
            measured[key] = (samples, errors, infos)
    finally:
        for p in processes.values():
            p.close()
    result = T.assemble(cfg, measured)
    hello = {name: p.hello for name, p in processes.items()}
    first = hello.get(P.REFERENCE) or next(iter(hello.values()), {})
    result.update({"threads": first.get("threads", {"requested": n}),
                   "threads_by_peer": {k: v["threads"] for k, v in hello.items()},
                   "isa": first.get("isa", minitrain_isa()), "failed_peers": failed})
    return result


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
        command="python bench/report.py", note=None, busy_cfg=None):
    """Run everything and write the report files into out_dir; returns the results.
    With busy_cfg, the busy-core task (bench/busy.py) too, into busy_core.md/json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = P.peer_classes(peer_names)
    status = {cls.name: {"label": cls.label, "missing": cls.missing()} for cls in classes}
    available = [name for name, s in status.items() if s["missing"] is None]
    started = datetime.datetime.now(datetime.timezone.utc)
    results = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "command": command, "note": note,
               "config": cfg.to_dict(), "machine": machine_description(classes),
               "thread_counts": thread_counts, "peers": status, "runs": {}, "memory": {}}
    with tempfile.TemporaryDirectory() as tmp:
        results["fma_peak"] = fma_peak(thread_counts, tmp)
        for n in thread_counts:
            results["runs"][str(n)] = measure(cfg, n, available, tmp)
            for name, reason in results["runs"][str(n)]["failed_peers"].items():
                status[name]["missing"] = reason
    for n in thread_counts if memory else ():
        results["memory"][str(n)] = {}
        for name in available:
            out = run_python(["--memory-probe", name, "--threads", str(n),
                              "--config", json.dumps(cfg.to_dict())], n)
            results["memory"][str(n)][name] = json.loads(out.strip().splitlines()[-1])
    if busy_cfg is not None:
        write_busy(busy.run(busy_cfg), out_dir)
    results["machine"]["minitrain_isa"] = next(
        (r["isa"] for r in results["runs"].values()), minitrain_isa())
    results["machine"]["load_average_after"] = list(os.getloadavg())
    results["elapsed_seconds"] = (datetime.datetime.now(datetime.timezone.utc)
                                  - started).total_seconds()
    write_report(results, out_dir, plots)
    return results


def write_report(results, out_dir, plots=True):
    """report.json, report.md, readme_table.md and the plots of `results` in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results["plots"] = render.plots(results, out_dir) if plots else {"skipped": "--no-plots"}
    (out_dir / "report.json").write_text(json.dumps(results, indent=1))
    (out_dir / "report.md").write_text(render.report_markdown(results))
    (out_dir / "readme_table.md").write_text(render.readme_table(results))


def write_busy(result, out_dir):
    """busy_core.json and busy_core.md (the busy-core task's table) in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "busy_core.json").write_text(json.dumps(result, indent=1))
    (out_dir / "busy_core.md").write_text(busy.markdown(result))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    p.add_argument("--out", default=str(HERE / "results"), help="output directory")
    p.add_argument("--threads", help="comma-separated thread counts (default: 1 and all "
                                     "available cores)")
    p.add_argument("--peers", help=f"comma-separated subset of {[c.name for c in P.PEERS]}")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory task")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-busy", action="store_true", help="skip the busy-core task")
    p.add_argument("--busy-only", action="store_true",
                   help="only the busy-core task (bench/busy.py), into --out")
    p.add_argument("--note", help="a line for the report header, e.g. which build of "
                                  "minitrain was measured")
    p.add_argument("--from-json", metavar="REPORT_JSON",
                   help="only rewrite the tables and plots of an earlier run into --out")
    # internal: a peer's worker process and the per-peer memory probe
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve or args.memory_probe:
        args.threads = int(args.threads)
        return serve(args) if args.serve else memory_worker(args)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        write_report(results, Path(args.out), plots=not args.no_plots)
        print(f"rewrote {args.out}/report.md, readme_table.md and the plots")
        return 0
    busy_cfg = None if args.no_busy else \
        busy.BusyConfig.quick() if args.quick else busy.BusyConfig()
    if args.busy_only:
        write_busy(busy.run(busy_cfg or busy.BusyConfig()), Path(args.out))
        print(f"wrote {args.out}/busy_core.md, busy_core.json")
        return 0
    cfg = T.Config.quick() if args.quick else T.Config()
    cores = len(allowed_cpus())
    threads = sorted({int(t) for t in args.threads.split(",")}) if args.threads \
        else sorted({1, cores})
    peer_names = args.peers.split(",") if args.peers else None
    command = "python bench/report.py" + (" " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])).rstrip()
    results = run(args.out, cfg, threads, peer_names, memory=not args.no_memory,
                  plots=not args.no_plots, command=command, note=args.note,
                  busy_cfg=busy_cfg)
    print(f"wrote {args.out}/report.md, report.json, readme_table.md "
          f"({results['elapsed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
