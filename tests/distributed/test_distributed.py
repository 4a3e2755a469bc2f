"""Data-parallel training over MPI: ``mpiexec -n 2`` and ``-n 3`` on worker.py, whose
ranks each compare their fit with the one-process fit (float64) and report to rank 0."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minitrain as mt

WORKER = Path(__file__).with_name("worker.py")


def _mpiexec():
    # the mpich wheel puts mpiexec next to the interpreter of the environment it is in
    for where in (Path(sys.executable).parent, Path(sys.base_prefix) / "bin"):
        if (where / "mpiexec").exists():
            return str(where / "mpiexec")
    return shutil.which("mpiexec")


MPIEXEC = _mpiexec()
mpi4py = pytest.importorskip("mpi4py", reason="the distributed tests need mpi4py "
                                              "(pip install 'minitrain[mpi]')")
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec found (pip install "
                                                           "'minitrain[mpi]' brings mpich's)")


def launch(k, case, out, timeout=60, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([MPIEXEC, "-n", str(k), sys.executable, str(WORKER), case, str(out)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def results(k, case, out, env=None):
    proc = launch(k, case, out, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / f"{case}-{k}.json").read_text()), proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case on 2 ranks, then on 3 (which resume the checkpoint of the 2)."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec found (pip install 'minitrain[mpi]' brings mpich's)")
    out = tmp_path_factory.mktemp("mpi")
    found = {}
    for k in (2, 3):
        env = {"RESUME_FROM": str(out / "run-2-rank0.npz")} if k == 3 else None
        for case in ("equivalence", "output", "faults"):
            found[case, k] = results(k, case, out, env)
    return found


@needs_mpiexec
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", ["plain", "dropout", "batchnorm", "batchnorm-numpy"])
def test_k_ranks_give_the_weights_of_one_process(runs, k, name):
    ranks = [r[name] for r in runs["equivalence", k][0]]
    # a memory-mapped X trains as the array it holds
    assert all(r["memmap_same"] for r in runs["equivalence", k][0])
    assert len(ranks) == k
    for r in ranks:
        assert r["params"] <= 1e-12 and r["buffers"] <= 1e-12
        assert r["history"] <= 1e-12 and r["iteration_loss"] <= 1e-12
        assert r["epochs"] == 3 and "val_accuracy" in r["keys"]
    # every rank ends with the same bits, History included; a second run repeats them
    assert len({r["digest"] for r in ranks}) == 1
    assert ranks[0]["again"] == ranks[0]["digest"]


@needs_mpiexec
@pytest.mark.parametrize("k", [2, 3])
def test_only_rank_0_prints_and_writes_files(runs, k):
    found, proc = runs["output", k]
    # the ranks' lines interleave: counted, not split
    assert all(proc.stdout.count(f"rank {r} before") == 1 for r in range(k))
    assert re.findall(r"Epoch \d/2", proc.stdout) == ["Epoch 1/2", "Epoch 2/2"]
    assert found[0]["written"] == [f"log-{k}-rank0.csv", f"run-{k}-rank0.npz"]
    # every rank stops at the same epoch; only rank 0 logs it
    assert all(r["stopped"] == ["early_stopping", 2] for r in found)
    assert [len(r["log_records"]) for r in found] == [1] + [0] * (k - 1)
    assert found[0]["log_records"][0].startswith("early stopping at epoch 2")


@needs_mpiexec
@pytest.mark.parametrize("k", [2, 3])
def test_resume_with_the_same_or_another_number_of_ranks(runs, k):
    for r in runs["output", k][0]:
        assert r["same_k"] <= 1e-12
        if k == 3:  # from the checkpoint the 2 ranks wrote
            assert r["other_k"] <= 1e-12


@needs_mpiexec
@pytest.mark.parametrize("k", [2, 3])
def test_an_error_on_one_rank_is_raised_by_every_rank(runs, k):
    ranks = runs["faults", k][0]
    assert len(ranks) == k
    for r in ranks:
        assert r == ranks[0]  # the same errors, word for word
    r = ranks[0]
    assert r["bad_input"] == ["ValueError", f"rank {k - 1} of {k}: y holds labels outside "
                              f"[0, 10): the last layer has 10 units", False]
    # the first iteration of the second fit overflowed on the last rank: nothing updated
    assert r["diverged"] == ["FloatingPointError",
                             "training diverged at epoch 2, iteration 1 (iteration 12 "
                             "overall)", True]
    assert r["different"].startswith("comm: rank 1 was given another fit than rank 0 "
                                     "(epochs 2, not 1)")
    assert "every batch must hold at least one row per rank" in r["small_batch"]
    assert r["max_time"] == ["max_time", 2]
    # a callback stopped one rank alone (6 iterations an epoch): every rank stopped there
    assert r["stop_iteration"] == ["one_rank", 3, 1]
    assert r["stop_epoch"] == ["one_rank", 6, 1]
    assert r["stop_epoch_begin"] == ["one_rank", 6, 1]


@needs_mpiexec
def test_a_killed_rank_ends_the_run_with_an_error_in_time(tmp_path):
    start = time.monotonic()
    proc = launch(2, "killed", tmp_path, timeout=30)
    assert proc.returncode != 0
    assert time.monotonic() - start < 30
    assert not (tmp_path / "killed-2.json").exists()


@needs_mpiexec
def test_an_error_on_one_rank_alone_ends_the_job_in_time(tmp_path):
    start = time.monotonic()
    proc = launch(2, "raises", tmp_path, timeout=30)
    assert proc.returncode != 0
    assert time.monotonic() - start < 30
    assert "minitrain: rank 0 of 2: OSError: disk full; the other ranks cannot go on" \
        in proc.stderr


def test_one_rank_is_one_process_bit_for_bit(digits):
    from mpi4py import MPI
    X, _, y, _ = digits
    layers = lambda: [mt.Dense(32), mt.BatchNorm(), mt.Activation("relu"), mt.Dropout(0.2),
                      mt.Dense(10)]
    models = []
    for comm in (None, MPI.COMM_SELF):
        m = mt.Sequential(layers(), seed=0)
        m.fit(X, y, epochs=2, batch_size=64, verbose=0, comm=comm, validation_split=0.1)
        models.append(m)
    assert np.array_equal(models[0].params_flat, models[1].params_flat)
    assert np.array_equal(models[0].buffers_flat, models[1].buffers_flat)
    assert models[0].history.history["val_loss"] == models[1].history.history["val_loss"]
    # the losses travel in float32 slots of the gradient's all-reduce, split in two
    np.testing.assert_allclose(models[1].history.iteration_loss,
                               models[0].history.iteration_loss, rtol=1e-13)
    # the model trains on as one process's afterwards
    a, b = (m.train_step(X[:32], y[:32]) for m in models)
    assert a == b and np.array_equal(models[0].params_flat, models[1].params_flat)


def test_comm_is_checked_before_anything_changes(digits):
    X, _, y, _ = digits
    m = mt.Sequential([mt.Dense(10)], seed=0)
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        m.fit(X, y, comm="world", verbose=0)
    assert not m.built


def test_parts_are_those_of_array_split():
    from minitrain.distributed import part_bounds
    for n in (3, 7, 32, 33):
        for k in (1, 2, 3):
            sizes = [len(p) for p in np.array_split(np.arange(n), k)]
            assert np.diff(part_bounds(n, k)).tolist() == sizes


@needs_mpiexec
def test_the_command_line_trains_over_the_ranks_and_only_rank_0_speaks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "minitrain", "--distributed"]
    proc = subprocess.run(command + ["--epochs", "2", "--checkpoint", str(tmp_path / "r.npz")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("× 2 ranks") and len(lines) == 6
    assert [l for l in lines if l.startswith("test accuracy")] == [lines[-1]]
    # the same run in one process: the same epochs, to the digits printed
    one = subprocess.run([sys.executable, "-m", "minitrain", "--epochs", "2"],
                         capture_output=True, text=True, timeout=60, env=env)
    strip = lambda ls: [" ".join(l.split()[:4]) for l in ls[3:5]]  # epoch, it, loss, acc
    assert strip(lines) == strip(one.stdout.splitlines())
    assert (tmp_path / "r.npz").exists()
    for bad, status in ((["--lr", "0"], 2), (["--epochs", "1", "--lr", "1e6"], 1)):
        proc = subprocess.run(command + bad, capture_output=True, text=True, timeout=60,
                              env=env)
        assert proc.returncode == status
        errors = [l for l in proc.stderr.splitlines() if l.startswith("minitrain: error:")]
        assert len(errors) == 1, proc.stderr


@needs_mpiexec
def test_the_readme_example_runs_under_mpiexec(tmp_path):
    readme = Path(__file__).resolve().parents[2] / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not next to the tests (installed tests)")
    blocks = re.findall(r"^```python\n(.*?)^```$", readme.read_text(encoding="utf-8"),
                        re.S | re.M)
    (code,) = [b for b in blocks if "mpiexec -n 4 python train.py" in b]
    (tmp_path / "train.py").write_text(code)
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "train.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 1 and 0.8 < float(proc.stdout) <= 1  # rank 0 only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz", "train.py"]


@needs_mpiexec
def test_the_benchmark_runs_on_tiny_sizes():
    bench = Path(__file__).resolve().parents[2] / "bench" / "distributed.py"
    if not bench.exists():
        pytest.skip("bench/ is not next to the tests (installed tests)")
    proc = subprocess.run([sys.executable, str(bench), "--quick", "--epochs", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [l for l in proc.stdout.splitlines() if l.startswith("| 784") or
            l.startswith("| 1024")]
    assert len(rows) == 2 and all(l.count("%") == 2 and l.count(" s |") == 3 for l in rows)
