"""Turn the raw results of report.py into tables (Markdown) and plots (PNG).

Figures are medians over repetitions with the min–max range. A ratio to minitrain is
computed per repetition — the peer's time divided by minitrain's time in the same
round of the interleaved run — and then summarised the same way; above 1 means
minitrain was faster.
"""

import statistics
from pathlib import Path

from .peers import REFERENCE
from .tasks import GEMM_IMPLS, SKLEARN_FIT_PEERS


def summary(values):
    """{median, min, max, n} of a list of numbers (None when empty)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def ratios(samples, name, reference=REFERENCE):
    """Per-repetition samples[name] / samples[reference], summarised."""
    if name not in samples or reference not in samples:
        return None
    return summary([a / b for a, b in zip(samples[name], samples[reference]) if b > 0])


def fmt_seconds(s):
    if s is None:
        return "–"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_range(stats, fmt):
    if stats is None:
        return "–"
    if stats["n"] == 1:
        return fmt(stats["median"])
    return f"{fmt(stats['median'])} ({fmt(stats['min'])}–{fmt(stats['max'])})"


def fmt_number(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def fmt_ratio(stats):
    if stats is None:
        return "–"
    text = f"×{stats['median']:.2f}"
    if stats["n"] > 1:
        text += f" ({stats['min']:.2f}–{stats['max']:.2f})"
    return text


def threads_label(n):
    return f"{n} thread" + ("s" if int(n) > 1 else "")


def peer_status(results, name):
    status = results["peers"][name]
    return "ok" if status["missing"] is None else f"missing: {status['missing']}"


def _peers(results):
    return list(results["peers"])


def _runs(results):
    return sorted(results["runs"].items(), key=lambda kv: int(kv[0]))


def _cell(task, name, fmt=fmt_seconds, convert=None, spread=True):
    """'median (min–max)' of a task's samples for a peer (each sample passed through
    `convert` first, e.g. seconds to a rate), or why there is none."""
    if name in task["samples"]:
        values = task["samples"][name]
        stats = summary([convert(v) for v in values] if convert else values)
        return fmt_range(stats, fmt) if spread else fmt(stats["median"])
    if name in task.get("errors", {}):
        return "failed"
    return "missing"


# --------------------------------------------------------------------- markdown
def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _timed_task_table(results, pick, rate=None):
    """One row per peer; per thread count: time, an optional rate, ratio to minitrain."""
    header = ["peer"]
    for n, _ in _runs(results):
        header += [f"{threads_label(n)}: time", *([rate[0]] if rate else []), "÷ minitrain"]
    rows = []
    for name in _peers(results):
        row = [name]
        for _, run in _runs(results):
            task = pick(run)
            row.append(_cell(task, name))
            if rate:
                row.append(_cell(task, name, fmt_number, lambda s: rate[1](task) / s))
            row.append(fmt_ratio(ratios(task["samples"], name)))
        rows.append(row)
    return _table(header, rows)


def _errors(results, pick):
    lines = []
    for n, run in _runs(results):
        for name, err in pick(run).get("errors", {}).items():
            lines.append(f"- {name}, {threads_label(n)}: {err}")
    return lines


def _peak(results, n, dtype="float32"):
    """The FMA probe's peak at n threads (CPU-time rate: what the cores can retire)."""
    probe = results.get("fma_peak", {}).get(str(n), {})
    return probe.get(f"{dtype}_gflops_cpu_time")


def report_markdown(results):
    m = results["machine"]
    first_run = _runs(results)[0][1] if results["runs"] else {}
    out = [
        "# minitrain benchmark report", "",
        f"- date: {results['date']}; command: `{results['command']}` "
        f"({results.get('elapsed_seconds', 0):.0f} s)",
        f"- machine: {m['cpu']}, {m['cpus_available']} CPUs available "
        f"({m['logical_cpus']} logical), {m['memory_gb']:.1f} GB, {m['os']}, "
        f"Python {m['python']}",
        f"- CPU features: {', '.join(m['cpu_flags']) or 'none of interest'}; "
        f"minitrain ISA: {m.get('minitrain_isa')}",
        "- versions: " + ", ".join(f"{k} {v or 'not installed'}"
                                   for k, v in m["versions"].items()),
        f"- thread counts: {', '.join(map(str, results['thread_counts']))}",
        *([f"- note: {results['note']}"] if results.get("note") else []),
        "- load average (1, 5, 15 min) before: "
        + ", ".join(f"{x:.2f}" for x in m["load_average_before"]) + "; after: "
        + ", ".join(f"{x:.2f}" for x in m.get("load_average_after", [])), "",
        "Figures are medians over the repetitions with the min–max range in brackets. "
        "\"÷ minitrain\" is the peer's time divided by minitrain's time in the same "
        "repetition of the interleaved run (above 1: minitrain is faster). Every peer "
        "trains the same model from the same initial weights with the same loss, "
        "optimizer (SGD, momentum 0.9, PyTorch's form) and batch order, in float32.", "",
        "## Peers", "",
        _table(["peer", "what", "status"],
               [[n, s["label"], peer_status(results, n)] for n, s in results["peers"].items()]),
        "",
    ]
    if first_run:
        diffs = first_run["equivalence"]["max_abs_weight_difference"]
        out += ["Same model, same result: largest absolute weight difference to minitrain "
                "after one epoch (512 rows, batch 64) from the same weights — "
                + ", ".join(f"{k}: {v:.1e}" for k, v in diffs.items()) + ".", ""]
    out += ["## Summary", "", readme_table(results, heading=False), ""]
    out += _iteration_sections(results)
    out += _epoch_sections(results)
    out += _gemm_sections(results)
    out += _sklearn_fit_sections(results)
    out += ["## Plots", ""]
    plots = results.get("plots", {})
    if "skipped" in plots:
        out += [f"Plots skipped: {plots['skipped']}.", ""]
    else:
        out += [f"![{title}]({file})" for title, file in plots.items()] + [""]
    out += ["## What this run could not control", "", *uncontrolled(results), ""]
    return "\n".join(out)


def _iteration_sections(results):
    if not results["runs"]:
        return []
    out = []
    first = _runs(results)[0][1]
    for i, key in enumerate(first["iterations"], 1):
        task = first["iterations"][key]
        out += [f"## {i}. {task['title'].capitalize()}", "",
                f"{task['flops'] / 1e9:.3g} GFLOP per iteration (forward, backward); "
                "the rate columns are samples per second.", "",
                _timed_task_table(results, lambda r, k=key: r["iterations"][k],
                                  ("samples/s", lambda t: t["batch"])), ""]
        gflops = []
        for n, run in _runs(results):
            t = run["iterations"][key]
            if REFERENCE in t["samples"]:
                rate = t["flops"] / summary(t["samples"][REFERENCE])["median"] / 1e9
                peak = _peak(results, n)
                share = f" = {100 * rate / peak:.0f} % of the FMA peak" if peak else ""
                gflops.append(f"{threads_label(n)}: {rate:.1f} GFLOP/s{share}")
        if gflops:
            out += ["minitrain sustains " + "; ".join(gflops) + ".", ""]
        out += _errors(results, lambda r, k=key: r["iterations"][k])
    return out


def _epoch_sections(results):
    if not results["runs"]:
        return []
    first = _runs(results)[0][1]
    epoch = first["epoch"]
    out = [f"## 4. {epoch['title'].capitalize()}", "",
           _timed_task_table(results, lambda r: r["epoch"],
                             ("samples/s", lambda t: t["rows"])), "",
           *_errors(results, lambda r: r["epoch"]),
           f"## 5. {first['accuracy']['title'].capitalize()}", "",
           _timed_task_table(results, lambda r: r["accuracy"]), ""]
    header = ["peer"] + [f"{threads_label(n)}: epochs, test accuracy" for n, _ in _runs(results)]
    rows = []
    for name in _peers(results):
        row = [name]
        for _, run in _runs(results):
            o = run["accuracy"]["outcome"].get(name)
            row.append("–" if o is None else f"{o['epochs']}, {o['accuracy']:.4f}"
                       + ("" if o["reached"] else " (target NOT reached)"))
        rows.append(row)
    out += ["Epochs trained (the test accuracy is evaluated after every epoch):", "",
            _table(header, rows), "", *_errors(results, lambda r: r["accuracy"])]
    if results["memory"]:
        header = ["peer"] + [f"{threads_label(n)}: peak RSS" for n in results["memory"]] \
            + ["RSS before the epoch", "data"]
        rows = []
        for name in _peers(results):
            row, before, data = [name], "–", "–"
            for per_peer in results["memory"].values():
                mem = per_peer.get(name)
                if mem is None or "error" in mem:
                    row.append("missing" if mem is None else "failed")
                    continue
                row.append(f"{mem['peak_rss_mb']:.0f} MB")
                before = f"{mem['rss_before_epoch_mb']:.0f} MB"
                data = f"{mem['data_mb']:.1f} MB"
            rows.append(row + [before, data])
        out += ["## 6. Peak resident memory of task 4", "",
                "One fresh process per peer and thread count: imports, the data set, "
                "the model, then one epoch; the peak is the process's high-water mark "
                "(ru_maxrss), so it includes the interpreter, the libraries and the data.",
                "", _table(header, rows), ""]
    return out


def _gemm_sections(results):
    out = ["## 7. GEMM throughput against the FMA peak", ""]
    probe = results.get("fma_peak", {})
    if "error" in probe:
        out += [f"FMA probe: {probe['error']}", ""]
    else:
        rows = []
        for n in results["thread_counts"]:
            p = probe.get(str(n), {})
            if "error" in p or not p:
                rows.append([threads_label(n), p.get("error", "not run"), "", "", ""])
                continue
            rows.append([threads_label(n), p["isa"], f"{p['float32_gflops_cpu_time']:.1f}",
                         f"{p['float64_gflops_cpu_time']:.1f}", f"{p['float32_gflops']:.1f}"])
        out += ["FMA peak from bench/fma_probe.c (independent vfmadd chains on every "
                f"thread, compiled with `{probe.get('compiler')} {probe.get('flags')}`). The "
                "peak is the rate over the threads' CPU time, what the cores retire while "
                "they run; the wall-clock rate also loses what other processes take.", "",
                _table(["threads", "ISA", "float32 GFLOP/s", "float64 GFLOP/s",
                        "float32 wall-clock GFLOP/s"], rows), ""]
    for n, run in _runs(results):
        shapes = run["gemm"]["shapes"]
        peak = _peak(results, n)
        header = ["product", "M×N×K"] + [f"{i} GFLOP/s" for i in GEMM_IMPLS] \
            + ["minitrain % of peak", "numpy ÷ minitrain"]
        rows = []
        for label, s in shapes.items():
            row = [label, f"{s['M']}×{s['N']}×{s['K']}"]
            for impl in GEMM_IMPLS:
                row.append(_cell(s, impl, lambda g: f"{g:.1f}",
                                 lambda t, f=s["flops"]: f / t / 1e9))
            ref = s["samples"].get(REFERENCE)
            row.append(f"{100 * s['flops'] / summary(ref)['median'] / 1e9 / peak:.0f} %"
                       if ref and peak else "–")
            row.append(fmt_ratio(ratios(s["samples"], "numpy")))
            rows.append(row)
        out += [f"### {threads_label(n)}", "", _table(header, rows), ""]
    return out


def _sklearn_fit_sections(results):
    runs = [(n, run["sklearn_fit"]) for n, run in _runs(results) if "sklearn_fit" in run]
    if not runs:  # none measured, or a report from before this task
        return []
    cases = runs[0][1]["cases"]
    labels = dict(zip(SKLEARN_FIT_PEERS, ("scikit-learn", "minitrain.sklearn")))
    out = [f"## 8. {runs[0][1]['title']}", "",
           "Timed: one whole `fit` of a fresh MLPClassifier, scikit-learn's and "
           "minitrain.sklearn's, on the same data with the same parameters and "
           "random_state, each library in its own process. Speed-up: scikit-learn's time ÷ "
           "minitrain.sklearn's in the same repetition. Difference: the largest relative "
           "difference max|a − b| / max|b| of minitrain.sklearn's coefs_ (over the layers) "
           "and loss_curve_ from scikit-learn's (b). The float64 cases check that the "
           "results are equal; in float32 the libraries round differently (summation "
           "order) and hundreds of Adam steps amplify that as they amplify any one-ulp "
           "change of the data, so there the difference measures float32 rounding.", "",
           "The cases (other parameters at their defaults), with n_iter_ and the final "
           f"loss_ of each fit at {threads_label(runs[0][0])}:", ""]
    for name, case in cases.items():
        params = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}"
                           for k, v in case["params"].items() if k != "data")
        fitted = {label: case["fitted"][peer] for peer, label in labels.items()
                  if peer in case["fitted"]}
        data = next((f["data"] for f in fitted.values()), case["params"]["data"])
        outcome = "; ".join(f"{label}: n_iter_ {f['n_iter_']}, loss_ {f['loss_']:.6g}"
                            for label, f in fitted.items())
        out.append(f"- {name}: {data}; {params}, random_state=0 — {outcome or 'no fit'}")
    out.append("")
    out += ["\"minitrain.sklearn GFLOP/s\": the fit's forward and backward products over "
            "its median time, against the FMA peak of the fit's dtype; \"at the peak\": the "
            "speed-up of a fit that did those products at the peak and nothing else, the "
            "most any implementation could reach on this machine.", ""]
    for n, fit in runs:
        rows = []
        for name, case in fit["cases"].items():
            diff = case["difference"]
            rows.append([name, *(_cell(case, peer) for peer in SKLEARN_FIT_PEERS),
                         fmt_ratio(ratios(case["samples"], *SKLEARN_FIT_PEERS)),
                         *_fit_rates(results, n, case),
                         f"{diff['coefs_']:.1e} / {diff['loss_curve_']:.1e}" if diff
                         else "–"])
        out += [f"### {threads_label(n)}", "",
                _table(["case", *labels.values(), "speed-up", "minitrain.sklearn GFLOP/s",
                        "at the peak", "coefs_ / loss_curve_ difference"], rows), ""]
    for name in cases:
        out += _errors(results, lambda r, k=name: r["sklearn_fit"]["cases"][k])
    return out


def _fit_rates(results, n, case):
    """[minitrain.sklearn's GFLOP/s (% of the peak), the speed-up bound at the FMA peak]
    of a case of task 8, "–" for what was not measured."""
    sklearn, drop_in = (summary(case["samples"].get(peer, [])) for peer in SKLEARN_FIT_PEERS)
    fitted = case["fitted"].get(SKLEARN_FIT_PEERS[1])
    if not drop_in or not fitted or "flops" not in fitted:  # or a report from before
        return ["–", "–"]
    rate = fitted["flops"] / drop_in["median"] / 1e9
    peak = _peak(results, n, fitted["dtype"])
    if not peak:
        return [f"{rate:.0f}", "–"]
    cell = f"{rate:.0f} ({rate / peak:.0%})"
    if not sklearn:
        return [cell, "–"]
    bound = sklearn["median"] / (fitted["flops"] / peak / 1e9)
    return [cell, f"×{bound:.1f}" if bound < 100 else f"×{bound:,.0f}"]


def uncontrolled(results):
    """What the run could not pin down, stated in the report."""
    m = results["machine"]
    load = max(m["load_average_before"][0], m.get("load_average_after", [0])[0])
    lines = [
        "- The machine is shared: other jobs ran at the same time, so absolute figures "
        "are noisy (the min–max ranges show how much); the interleaving makes the ratios "
        "more trustworthy than the absolute numbers.",
    ]
    if load > m["cpus_available"]:
        lines.append(
            f"- The load average reached {load:.1f} on {m['cpus_available']} CPUs: more "
            "runnable processes than cores. Multi-threaded figures suffer most, since a "
            "library that splits an iteration over all cores waits at every barrier for "
            "a thread that another process has displaced; treat them as lower bounds.")
    lines += [
        "- CPU frequency (boost, thermal state) and, on a virtual machine, the host's "
        "scheduling are outside the benchmark's control.",
        "- Threads are pinned by environment variables, by each library's API and by the "
        "CPU affinity mask of each worker process; JAX's XLA backend has no public thread "
        "setting, so at more than one thread it uses its own pool over the allowed CPUs.",
        "- scikit-learn has no thread setting of its own; its matrix products run in "
        "NumPy's BLAS, pinned by OPENBLAS_NUM_THREADS / OMP_NUM_THREADS.",
        "- scikit-learn's iteration is a partial_fit call on one batch, which includes "
        "its per-call input validation; that is the only way to run one iteration.",
    ]
    lines.append(
        "- Every peer runs in its own worker process (thread pools of different libraries "
        "in one process take cores from each other); the workers are driven in turn, and "
        "at more than one thread 0.1 s passes before each repetition so that the previous "
        "peer's pool has stopped spinning.")
    for n, run in _runs(results):
        states = run.get("threads_by_peer") or {REFERENCE: run["threads"]}
        parts = [f"{name}: {_pools(state)}" for name, state in states.items()]
        lines.append(f"- {threads_label(n)}: CPUs {run['threads'].get('affinity')}; thread "
                     f"pools seen in each peer's process — " + "; ".join(parts) + ".")
    missing = [f"{n} ({s['missing']})" for n, s in results["peers"].items() if s["missing"]]
    if missing:
        lines.append("- Missing peers (not run): " + "; ".join(missing) + ".")
    return lines


def _pools(state):
    """One peer process's thread pools, as threadpoolctl and the libraries report them."""
    own = [f"{lib} {state[lib]}" for lib in ("minitrain", "torch") if lib in state]
    if "torch_interop" in state:
        own[-1] += f" (inter-op {state['torch_interop']})"
    pools = state.get("threadpools")
    if isinstance(pools, list):
        own += [f"{p['internal_api']} {p['num_threads']}"
                + (f" ({p['architecture']} kernels)" if p.get("architecture") else "")
                for p in pools]
    elif pools:
        own.append(pools)
    return ", ".join(own)


def readme_table(results, heading=True):
    """The summary at the highest thread count, for README.md."""
    if not results["runs"]:
        return "No run.\n"
    n, run = _runs(results)[-1]
    m = results["machine"]
    keys = list(run["iterations"])
    header = ["peer"] + [run["iterations"][k]["title"].replace("one iteration, ", "")
                         + " (time/iteration)" for k in keys] \
        + ["epoch, samples/s", f"time to {results['config']['accuracy_target']:.0%}",
           "peak RSS"]
    rows = []
    for name in _peers(results):
        row = [name]
        for k in keys:
            task = run["iterations"][k]
            cell = _cell(task, name, spread=False)
            ratio = ratios(task["samples"], name)
            if ratio and name != REFERENCE:
                cell += f" (×{ratio['median']:.2f})"
            row.append(cell)
        epoch = run["epoch"]
        row.append(_cell(epoch, name, fmt_number, lambda s: epoch["rows"] / s, spread=False))
        row.append(_cell(run["accuracy"], name, spread=False))
        mem = results["memory"].get(n, {}).get(name)
        row.append(f"{mem['peak_rss_mb']:.0f} MB" if mem and "error" not in mem else "–")
        rows.append(row)
    lines = []
    if heading:
        lines += [f"Measured {results['date']} on {m['cpu']} ({m['cpus_available']} cores, "
                  f"{threads_label(n)}, minitrain ISA: {m.get('minitrain_isa')}) with "
                  f"`{results['command']}`; a shared, noisy machine. Medians; (×r) = the "
                  "peer's time ÷ minitrain's. Full report: "
                  "[bench/results/report.md](bench/results/report.md).", ""]
    return "\n".join(lines + [_table(header, rows)]) + "\n"


# ------------------------------------------------------------------------ plots
def plots(results, out_dir):
    """Write the PNG plots; returns {title: file name} or {"skipped": reason}."""
    try:
        import matplotlib
    except ImportError:
        return {"skipped": "matplotlib is not installed"}
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = {}
    runs = _runs(results)
    if not runs:
        return {"skipped": "no run"}

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, (n, run) in zip(axes[0], runs):
        sweep = run["sweep"]
        batches = [int(b) for b in sweep["batches"]]
        for name in _peers(results):
            pts = [(b, b / summary(sweep["batches"][str(b)]["samples"][name])["median"])
                   for b in batches if name in sweep["batches"][str(b)]["samples"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="samples/s",
               title=f"{'-'.join(map(str, sweep['widths']))}, {threads_label(n)}")
        _log_ticks(ax, batches)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    written["samples/s against batch size"] = _save(fig, out_dir / "batch_sweep.png")

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, (n, run) in zip(axes[0], runs):
        square = {k: v for k, v in run["gemm"]["shapes"].items() if k.startswith("square")}
        sizes = [v["M"] for v in square.values()]
        for impl in GEMM_IMPLS:
            pts = [(v["M"], v["flops"] / summary(v["samples"][impl])["median"] / 1e9)
                   for v in square.values() if impl in v["samples"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl)
        peak = _peak(results, n)
        if peak:
            ax.axhline(peak, color="k", linestyle="--", label=f"FMA peak {peak:.0f}")
        ax.set(xscale="log", xlabel="n (square n×n×n)", ylabel="GFLOP/s",
               title=f"float32 GEMM, {threads_label(n)}", ylim=(0, None))
        _log_ticks(ax, sizes)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    written["GEMM GFLOP/s against matrix size"] = _save(fig, out_dir / "gemm.png")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    counts = [int(n) for n, _ in runs]
    for name in _peers(results):
        pts = [(int(n), summary(run["epoch"]["samples"][name])["median"])
               for n, run in runs if name in run["epoch"]["samples"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    first = runs[0][1]["epoch"]
    ax.set(xlabel="threads", ylabel="seconds per epoch", yscale="log",
           title=f"epoch, {first['rows']} rows, batch {first['batch']}")
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    written["epoch time against thread count"] = _save(fig, out_dir / "epoch_threads.png")
    return written


def _log_ticks(ax, values):
    """Label exactly the measured sizes on a log axis (no minor tick labels)."""
    from matplotlib.ticker import NullLocator

    ax.set_xticks(values, [str(v) for v in values])
    ax.xaxis.set_minor_locator(NullLocator())


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path.name
