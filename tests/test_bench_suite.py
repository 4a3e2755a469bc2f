"""The benchmark suite (bench/) on tiny sizes, so that it cannot rot: every task runs
for the minitrain, NumPy and scikit-learn peers, the report files are written and
parse, and a missing peer is reported as missing. Needs only the test extra (no torch,
jax, ...)."""

import importlib.util
import json
import math

import numpy as np
import pytest

from bench import peers as P
from bench import render
from bench import report
from bench import tasks as T

RUN_PEERS = ["minitrain", "minitrain-numpy", "sklearn", "minitrain-sklearn"]  # PEERS order
THREADS = sorted({1, min(2, len(report.allowed_cpus()))})


class PhantomPeer(P.Peer):
    """A peer whose library is not installed."""

    name = "phantom"
    label = "a library that is not installed"
    modules = ("minitrain_phantom_library",)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    patch = pytest.MonkeyPatch()
    patch.setattr(P, "PEERS", [*P.PEERS, PhantomPeer])
    try:
        report.run(out, T.Config.quick(), THREADS, RUN_PEERS + ["phantom"],
                   command="python bench/report.py --quick")
    finally:
        patch.undo()
    return out, json.loads((out / "report.json").read_text())


def test_every_task_runs_for_every_peer(quick_report):
    _, results = quick_report
    assert sorted(results["runs"]) == [str(n) for n in THREADS]
    for run in results["runs"].values():
        timed = [*run["iterations"].values(), run["epoch"], run["accuracy"],
                 *run["sweep"]["batches"].values(), *run["gemm"]["shapes"].values()]
        assert len(run["iterations"]) == 3 and len(run["gemm"]["shapes"]) > 3
        for task in timed:
            assert task["errors"] == {}
            gemm = "M" in task
            assert sorted(task["samples"]) == sorted(["minitrain", "numpy"] if gemm
                                                     else RUN_PEERS)
            for values in task["samples"].values():
                assert len(values) == 1 and all(np.isfinite(v) and v > 0 for v in values)
        for name in RUN_PEERS:
            assert run["accuracy"]["outcome"][name]["reached"]
        # same weights as minitrain after an epoch: every peer trains the same model
        differences = run["equivalence"]["max_abs_weight_difference"]
        assert differences["minitrain"] == 0
        assert all(differences[name] < 1e-5 for name in RUN_PEERS)
        assert run["threads"]["minitrain"] == run["threads"]["requested"]
    for per_peer in results["memory"].values():
        for name in RUN_PEERS:
            mem = per_peer[name]
            # the kernel's high-water mark (ru_maxrss) sums per-CPU counters approximately,
            # off by a few pages from /proc's RSS: a peer whose epoch on tiny data allocates
            # nothing (scikit-learn's) can show a peak a page below the RSS read before
            assert mem["peak_rss_mb"] > mem["rss_before_epoch_mb"] - 1
            assert mem["rss_before_epoch_mb"] > mem["data_mb"] > 0


def test_sklearn_fit_times_both_estimators_with_the_same_results(quick_report):
    _, results = quick_report
    cases = T.Config.quick().sklearn_cases
    for run in results["runs"].values():
        assert list(run["sklearn_fit"]["cases"]) == list(cases)
        for name, case in run["sklearn_fit"]["cases"].items():
            assert case["errors"] == {}
            assert sorted(case["samples"]) == sorted(T.SKLEARN_FIT_PEERS)
            for values in case["samples"].values():
                assert len(values) == 1 and all(np.isfinite(v) and v > 0 for v in values)
            # the same model trained in float64 on the digits, in float32 on the rest
            digits = cases[name]["data"] == "digits"
            bound = 1e-6 if digits else 1e-3
            assert set(case["difference"]) == {"coefs_", "intercepts_", "loss_curve_"}
            assert all(0 <= d < bound for d in case["difference"].values())
            sklearn, drop_in = (case["fitted"][peer] for peer in T.SKLEARN_FIT_PEERS)
            assert sklearn["n_iter_"] == drop_in["n_iter_"] == cases[name]["max_iter"]
            assert drop_in["loss_"] == pytest.approx(sklearn["loss_"], rel=bound)
            assert sklearn["data"] == drop_in["data"] == \
                ("1797×64 float64" if digits else "300×48 float32")
            rows, features = (1797, 64) if digits else (300, 48)
            widths = (features, *cases[name]["hidden_layer_sizes"], 10)
            assert sklearn["flops"] == drop_in["flops"] == \
                T.iteration_flops(widths, rows) * cases[name]["max_iter"]
            assert drop_in["dtype"] == ("float64" if digits else "float32")


def test_relative_difference_is_relative_to_the_reference():
    # layer 1: 0.5 / 2; layer 2: 2 / 2
    assert T.relative_difference([[1.0, 2.5], [[4.0]]], [[1.0, 2.0], [[2.0]]]) == 1.0
    assert T.relative_difference([[1.0, 2.0]], [[1.0, 2.0, 3.0]]) == math.inf
    assert T.relative_difference([[1.0]], [[1.0], [2.0]]) == math.inf


def test_fit_rate_and_the_speed_up_a_fit_at_the_fma_peak_would_reach():
    # 1 GFLOP in 10 ms against a 200 GFLOP/s peak; scikit-learn takes 100 ms, a fit at
    # the peak 5 ms
    results = {"fma_peak": {"2": {"float64_gflops_cpu_time": 200.0}}}
    case = {"samples": {"sklearn": [0.1, 0.12, 0.09], "minitrain-sklearn": [0.01, 0.011, 0.009]},
            "fitted": {"minitrain-sklearn": {"flops": 1e9, "dtype": "float64"}}}
    assert render._fit_rates(results, 2, case) == ["100 (50%)", "×20.0"]
    assert render._fit_rates({}, 2, case) == ["100", "–"]
    assert render._fit_rates(results, 2, {"samples": {}, "fitted": {}}) == ["–", "–"]


def test_only_the_estimator_peers_fit_as_scikit_learn():
    names = ["minitrain", "sklearn", "minitrain-sklearn"]
    assert T.participants("sklearn_fit", names) == ["sklearn", "minitrain-sklearn"]
    assert T.participants("epoch", names) == names


def test_fma_probe_measures_a_peak(quick_report):
    _, results = quick_report
    for n in THREADS:
        probe = results["fma_peak"][str(n)]
        assert probe["threads"] == n
        assert probe["isa"] in ("avx512f", "avx2+fma")
        assert probe["float32_gflops_cpu_time"] > probe["float64_gflops_cpu_time"] > 0


def test_report_files_are_written_and_parse(quick_report):
    out, results = quick_report
    md = (out / "report.md").read_text()
    for heading in ("## 1. One iteration", "## 4. One epoch", "## 5. Time to",
                    "## 6. Peak resident memory", "## 7. GEMM",
                    "## 8. scikit-learn drop-in: fit time", "## What this run could not"):
        assert heading in md
    header = "| case | scikit-learn | minitrain.sklearn | speed-up | minitrain.sklearn " \
             "GFLOP/s | at the peak | coefs_ / loss_curve_ difference |"
    for n in THREADS:
        assert f"### {render.threads_label(n)}\n\n{header}" in md
    assert results["machine"]["cpu"] and results["machine"]["versions"]["numpy"]
    assert results["machine"]["minitrain_isa"]
    table = (out / "readme_table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == RUN_PEERS + ["phantom"]
    assert "python bench/report.py --quick" in table
    if importlib.util.find_spec("matplotlib"):
        assert set(results["plots"].values()) == {"batch_sweep.png", "gemm.png",
                                                  "epoch_threads.png"}
        for name in results["plots"].values():
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert results["plots"] == {"skipped": "matplotlib is not installed"}


def test_report_is_rewritten_from_its_json(quick_report, tmp_path):
    out, _ = quick_report
    assert report.main(["--from-json", str(out / "report.json"), "--out", str(tmp_path),
                        "--no-plots"]) == 0
    assert (tmp_path / "readme_table.md").read_text() == (out / "readme_table.md").read_text()
    assert "Plots skipped: --no-plots." in (tmp_path / "report.md").read_text()


def test_missing_peer_is_reported_not_dropped(quick_report):
    out, results = quick_report
    assert results["peers"]["phantom"]["missing"] == \
        "minitrain_phantom_library is not installed"
    for run in results["runs"].values():
        assert "phantom" not in run["epoch"]["samples"]
    md = (out / "report.md").read_text()
    assert "| phantom | a library that is not installed | missing: " \
           "minitrain_phantom_library is not installed |" in md
    assert "| phantom | missing | missing | missing | missing | missing | – |" in md


def test_ratios_pair_repetitions():
    samples = {"minitrain": [1.0, 2.0, 4.0], "other": [3.0, 2.0, 4.0]}
    assert render.ratios(samples, "other") == {"median": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert render.ratios(samples, "absent") is None


def test_interleaved_keeps_going_when_a_sampler_fails():
    calls = []

    def broken():
        raise RuntimeError("no luck")

    samplers = {"ok": T.Timed(lambda: calls.append(1)), "broken": T.Timed(broken)}
    samples, errors = T.interleaved(samplers, reps=3)
    # a warm-up call, one calibrating call (no time requested), three repetitions
    assert list(samples) == ["ok"] and len(samples["ok"]) == 3 and len(calls) == 5
    assert errors == {"broken": "RuntimeError: no luck"}


def test_iteration_flops_count_forward_and_backward():
    # forward and dW for both layers, dX for the second only
    assert T.iteration_flops((64, 128, 10), 32) == 2 * 32 * (64 * 128 * 2 + 128 * 10 * 3)


def test_gemm_shapes_cover_every_product_of_an_iteration():
    cfg = T.Config.quick()
    shapes = {label: (M, N, K, ta, tb) for label, M, N, K, ta, tb in T.gemm_shapes(cfg)}
    assert shapes["digits L1 X·W"] == (32, 128, 64, False, False)
    assert shapes["digits L1 Xᵀ·dZ"] == (64, 128, 32, True, False)
    assert shapes["digits L2 dZ·Wᵀ"] == (32, 128, 10, False, True)
    assert "digits L1 dZ·Wᵀ" not in shapes  # no input gradient for the first layer
    impl = T.gemm_impls({"minitrain"})
    A, B = T.gemm_operands(np.random.default_rng(0), 5, 3, 4, True, True)
    np.testing.assert_allclose(impl["minitrain"](A, B, True, True), A.T @ B.T, rtol=1e-5)


def test_thread_environment_pins_every_pool():
    env = report.thread_environment(1)
    assert all(env[v] == "1" for v in report.THREAD_VARIABLES)
    assert "--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]
    two = report.thread_environment(2)
    assert "--xla_cpu_multi_thread_eigen" not in two.get("XLA_FLAGS", "")
