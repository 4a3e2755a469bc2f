"""The distributed fits the tests check, run under ``mpiexec -n k``: ``python worker.py
CASE DIR``. Rank 0 writes what it found to DIR/CASE-k.json (the other ranks' results
gathered there); every rank compares itself with a one-process fit it runs too."""

import hashlib
import json
import logging
import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

import minitrain as mt

comm = MPI.COMM_WORLD
rank, k = comm.Get_rank(), comm.Get_size()
case, out_dir = sys.argv[1], sys.argv[2]

X, y = mt.load_digits()
X, y = X[:352] / 16, y[:352]  # 11 batches of 32 (the last one short with validation_split)

ARCHITECTURES = {
    "plain": lambda: [mt.Dense(24, activation="relu"), mt.Dense(10)],
    "dropout": lambda: [mt.Dense(24, activation="relu"), mt.Dropout(0.3), mt.Dense(10)],
    "batchnorm": lambda: [mt.Dense(24), mt.BatchNorm(), mt.Activation("relu"),
                          mt.Dropout(0.2), mt.Dense(10)],
}
# Adam turns the gradient of the bias below a batch norm, zero up to rounding, into steps
# of size lr whatever its rounding: SGD keeps that bias (which changes no output) as close
# as the rest
OPTIMIZERS = {"plain": lambda: mt.Adam(0.01), "dropout": lambda: mt.Adam(0.01),
              "batchnorm": lambda: mt.SGD(0.05, momentum=0.9)}


def model(name, backend="c"):
    return mt.Sequential(ARCHITECTURES[name](), seed=0, dtype="float64", backend=backend)


def fit(name, distributed=True, backend="c", **settings):
    m = model(name, backend)
    settings = {"epochs": 3, "batch_size": 32, "verbose": 0, "validation_split": 0.2,
                "optimizer": OPTIMIZERS[name](), **settings}
    hist = m.fit(X, y, comm=comm if distributed else None, **settings)
    return m, hist


def digest(m):
    h = hashlib.sha256(m.params_flat.tobytes() + m.buffers_flat.tobytes())
    h.update(json.dumps({key: m.history.history[key] for key in m.history.history
                         if key != "time"}).encode())
    h.update(m.history.iteration_loss.tobytes())
    return h.hexdigest()


def relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def history_error(h, ref):
    return max(float(np.max(np.abs(np.subtract(h.history[key], ref.history[key]))))
               for key in ref.history if key != "time")


def report(result):
    gathered = comm.gather(result)
    if rank == 0:
        with open(os.path.join(out_dir, f"{case}-{k}.json"), "w") as f:
            json.dump(gathered, f)


def equivalence():
    result = {}
    # the NumPy twin has the core's shard semantics
    for name, backend in [(name, "c") for name in ARCHITECTURES] + [("batchnorm", "numpy")]:
        m, hist = fit(name, backend=backend)
        again, _ = fit(name, backend=backend)
        ref, ref_hist = fit(name, distributed=False, backend=backend)
        result[name if backend == "c" else f"{name}-{backend}"] = {
            "params": relative(m.params_flat, ref.params_flat),
            "buffers": relative(m.buffers_flat, ref.buffers_flat) if m.buffers_flat.size
            else 0.0,
            "history": history_error(hist, ref_hist),
            "iteration_loss": float(np.abs(hist.iteration_loss - ref_hist.iteration_loss).max()),
            "digest": digest(m), "again": digest(again),
            "keys": sorted(hist.history), "epochs": len(hist.history["loss"])}
    # the same .npy memory-mapped by every rank (each gathers only its parts' rows)
    path = os.path.join(out_dir, f"X-{k}.npy")
    if rank == 0:
        np.save(path, X)
    comm.Barrier()
    m = model("dropout")
    m.fit(np.load(path, mmap_mode="r"), y, epochs=3, batch_size=32, verbose=0,
          validation_split=0.2, optimizer=OPTIMIZERS["dropout"](), comm=comm)
    result["memmap_same"] = digest(m) == result["dropout"]["digest"]
    return result


def output():
    """verbose and the writing callbacks: rank 0 only; resume from a checkpoint, with
    this k and (RESUME_FROM, written with another k) another."""
    path = os.path.join(out_dir, f"run-{k}-rank{rank}.npz")
    log = os.path.join(out_dir, f"log-{k}-rank{rank}.csv")
    print(f"rank {rank} before", flush=True)
    m, _ = fit("batchnorm", epochs=2, verbose=2,
               callbacks=[mt.ModelCheckpoint(path), mt.CSVLogger(log)])
    result = {"written": sorted(f for f in os.listdir(out_dir)
                                if f.startswith((f"run-{k}-", f"log-{k}-")))}
    comm.Barrier()
    straight, _ = fit("batchnorm", distributed=False, epochs=4)
    saved = os.path.join(out_dir, f"run-{k}-rank0.npz")
    resumed, _ = fit("batchnorm", epochs=4, resume_from=saved, optimizer=None)
    result["same_k"] = relative(resumed.params_flat, straight.params_flat)
    # the minitrain logger's events: rank 0's only
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("minitrain")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    h = model("plain").fit(X, y, epochs=5, verbose=0, comm=comm, callbacks=[
        mt.EarlyStopping(monitor="loss", patience=0, min_delta=100)])
    logger.removeHandler(handler)
    result["stopped"] = [h.stop_reason, len(h.history["loss"])]
    result["log_records"] = [r.getMessage() for r in records]
    other = os.environ.get("RESUME_FROM")
    if other:
        resumed, _ = fit("batchnorm", epochs=4, resume_from=other, optimizer=None)
        result["other_k"] = relative(resumed.params_flat, straight.params_flat)
    return result


def faults():
    result = {}
    # bad input on one rank: every rank raises the same error, before anything changes
    m = model("plain")
    bad_y = y.copy()
    if rank == k - 1:
        bad_y[5] = 10
    try:
        m.fit(X, bad_y, epochs=1, verbose=0, comm=comm)
    except ValueError as err:
        result["bad_input"] = [type(err).__name__, str(err), m.built]
    # a non-finite loss on one rank's part, mid-fit: agreed before the update
    m = model("plain")
    m.fit(X, y, epochs=1, batch_size=32, verbose=0, comm=comm)
    before = m.params_flat.copy()
    huge = X * (1e308 if rank == k - 1 else 1)  # overflows in the first layer
    try:
        m.fit(huge, y, epochs=1, batch_size=32, verbose=0, comm=comm)
    except FloatingPointError as err:
        result["diverged"] = [type(err).__name__, str(err).split(": ")[0],
                              bool(np.array_equal(m.params_flat, before))]
    # max_time: every rank stops after the same iteration, the first that ends with one
    # rank's clock past the deadline (rank 0's, slowed down after iteration 1)
    class Slow(mt.Callback):
        def on_iteration_end(self, iteration, logs=None):
            if rank == 0 and iteration == 1:
                time.sleep(0.5)
    h = model("plain").fit(X, y, epochs=5, max_time=0.3, verbose=0, comm=comm,
                           callbacks=[Slow()])
    result["max_time"] = [h.stop_reason, len(h.iteration_loss)]
    # ranks given different fits
    try:
        model("plain").fit(X, y, epochs=1 + (rank == 1), verbose=0, comm=comm)
    except ValueError as err:
        result["different"] = str(err)
    # a batch with fewer rows than ranks
    try:
        model("plain").fit(X[:k + k - 1], y[:k + k - 1], batch_size=k, verbose=0, comm=comm)
    except ValueError as err:
        result["small_batch"] = str(err)
    return result


def killed():
    """Rank 1 dies mid-fit: mpiexec must end the others and fail."""
    class Die(mt.Callback):
        def on_iteration_end(self, iteration, logs=None):
            if iteration == 3 and rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
    model("plain").fit(X, y, epochs=50, verbose=0, callbacks=[Die()], comm=comm)
    return {"finished": True}


def raises():
    """Rank 0 alone raises mid-fit (a disk full in a callback): the others would wait for
    it for ever; the job must end, non-zero."""
    class Full(mt.Callback):
        def on_iteration_end(self, iteration, logs=None):
            if iteration == 3 and rank == 0:
                raise OSError("disk full")
    model("plain").fit(X, y, epochs=50, verbose=0, callbacks=[Full()], comm=comm)
    return {"finished": True}


report({"equivalence": equivalence, "output": output, "faults": faults,
        "killed": killed, "raises": raises}[case]())
