"""Data-parallel training over MPI: ``Sequential.fit(..., comm=MPI.COMM_WORLD)``.

Every rank runs the same fit on the same data (the same array, or the same ``.npy``
memory-mapped from shared storage). The epoch's permutation is the same on every rank;
each global batch is split into k contiguous, near-equal parts (``np.array_split``'s
sizes), and rank r gathers only the rows of part r. The core computes the gradient of
that part's share of the batch loss (scaled by the global batch's size; dropout masks keyed
by each row's place in the global batch; batch normalisation on the global batch's
statistics, through the net's reduce hook); one ``Allreduce`` (a sum) of the flat gradient,
which carries the part's loss and an error flag in trailing slots, makes every rank's
gradient the batch's; then every rank applies the same update. k ranks thus give the
weights of one process with the same global batch, to rounding.

An error on a rank (bad input, a non-finite loss) is agreed on before any update: every
rank takes part in every collective of the iteration, then all raise the same error with
the parameters untouched. Only rank 0 prints, logs and writes files.

The engine is MPI through mpi4py (the ``mpi`` extra: mpi4py and the ``mpich`` wheel, which
brings ``mpiexec``); minitrain adds no transport of its own.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import sys
import time
import traceback
from typing import Any

import numpy as np

from . import evaluation
from ._validation import all_finite

# trailing slots of the gradient's all-reduce: the part's loss (in two, a float32
# gradient's slots then carry it to about 1e-14), its error flag, and whether the rank's
# clock passed the fit's max_time
_LOSS, _LOSS_LOW, _FAILED, _LATE = 0, 1, 2, 3
SLOTS = 4


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:  # pragma: no cover - the extra is not installed
        raise ImportError("comm: a distributed fit needs mpi4py (pip install "
                          "'minitrain[mpi]')") from None
    return MPI


def check_comm(comm: Any) -> Any:
    """`comm` if it is an mpi4py intra-communicator, else TypeError."""
    MPI = _mpi()
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD) or "
                        f"None, got {type(comm).__name__}")
    return comm


def part_bounds(n: int, k: int) -> np.ndarray:
    """Where the k ranks' parts of a batch of n rows begin and end.

    Parameters
    ----------
    n : int
        Rows of the global batch.
    k : int
        Ranks.

    Returns
    -------
    numpy.ndarray of shape (k + 1,)
        Rank r trains on rows ``[bounds[r], bounds[r + 1])``: contiguous parts of the
        sizes ``np.array_split`` gives (the first ``n % k`` one row longer).
    """
    q, r = divmod(n, k)
    sizes = np.full(k, q, dtype=np.int64)
    sizes[:r] += 1
    return np.concatenate(([0], np.cumsum(sizes)))


def is_root(comm: Any = None) -> bool:
    """Whether this process speaks for the run: printing, logging and file writes of a
    distributed fit happen there only.

    Parameters
    ----------
    comm : mpi4py communicator, optional
        The fit's communicator; None for one process.

    Returns
    -------
    bool
        True on rank 0 of `comm`, and for any process without one.

    Examples
    --------
    >>> from minitrain.distributed import is_root
    >>> if is_root(comm):                 # doctest: +SKIP
    ...     model.save("model.npz")
    """
    return comm is None or comm.Get_rank() == 0


def _exception(name: str, message: str) -> Exception:
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    try:
        return cls(message)
    except TypeError:  # an exception class whose constructor wants more
        return RuntimeError(message)


def agree(comm: Any, err: BaseException | None, fingerprint: Any = None) -> None:
    """A collective: every rank raises the same exception, that of the lowest rank whose
    `err` is not None (its type and message, naming the rank), or a ValueError when the
    ranks' `fingerprint`s (what must be equal for the ranks to run one fit) differ."""
    mine = None if err is None else (type(err).__name__, str(err))
    gathered = comm.allgather((mine, fingerprint))
    for rank, (failure, _) in enumerate(gathered):
        if failure is not None:
            name, message = failure
            raise _exception(name, f"rank {rank} of {len(gathered)}: {message}") from err
    first = gathered[0][1]
    for rank, (_, theirs) in enumerate(gathered):
        if theirs != first:
            differ = ", ".join(f"{key} {theirs[key]!r}, not {first[key]!r}" for key in first
                               if theirs[key] != first[key])
            raise ValueError(f"comm: rank {rank} was given another fit than rank 0 ({differ}): "
                             f"every rank must call fit with the same model, data and "
                             f"arguments")


def fingerprint(run: Any, model: Any) -> dict:
    """What the ranks of one fit must share: the plan, the data's shape, the model's
    counters and, once built, its dropout seed."""
    return {**dataclasses.asdict(run.plan), "X shape": tuple(run.X.shape),
            "built": model.built, "epoch": model.epoch, "iteration": model.iteration,
            "dropout seed": model.dropout_seed if model.built else None}


def check_plan(comm: Any, model: Any, plan: Any) -> None:
    """Refuse what a distributed fit cannot run, before anything changes."""
    size = comm.Get_size()
    smallest = int(plan.batch_sizes().min())
    if smallest < size:
        raise ValueError(f"comm: every batch must hold at least one row per rank; with "
                         f"{size} ranks the batch of {smallest} rows cannot be split: use "
                         f"drop_last=True or another batch_size")


def start(comm: Any, model: Any, plan: Any, settings: dict) -> Any:
    """The fit this rank runs, `plan(settings)` with this rank's `settings`, once every
    rank has checked its own: all go on, or all raise the same error."""
    comm = check_comm(comm)
    run, err = None, None
    try:
        run = plan(rank_settings(comm, settings))
        check_plan(comm, model, run.plan)
    except Exception as e:  # agreed on with the other ranks, which raise it too
        err = e
    agree(comm, err, None if run is None else fingerprint(run, model))
    share_model(comm, model)
    return run


def share_model(comm: Any, model: Any) -> None:
    """Make every rank's `model` rank 0's: its generator (which initialises an unbuilt
    model and shuffles) and, once built, its flat buffers, so that ranks given models made
    with ``seed=None`` start from one model."""
    model.rng.bit_generator.state = comm.bcast(model.rng.bit_generator.state)
    if model.built:
        for buf in (model.params_flat, model.state_flat, model.buffers_flat):
            comm.Bcast(buf, root=0)


def rank_settings(comm: Any, settings: dict) -> dict:
    """The fit's `settings` on this rank: unchanged on rank 0; elsewhere silent
    (``verbose=0``) and without the callbacks whose job is output (checkpoints, logs,
    progress), which run on rank 0 only."""
    if is_root(comm):
        return settings
    from .callbacks import EpochLine, ModelCheckpoint, _FileLogger
    callbacks = [cb for cb in settings.get("callbacks") or []
                 if not isinstance(cb, (ModelCheckpoint, _FileLogger, EpochLine))]
    return {**settings, "verbose": 0, "callbacks": callbacks}


class Reducer:
    """The reduction of a distributed fit over `comm`, for `model` (built): the part of
    each global batch this rank trains on, the all-reduce of the gradient with the loss
    and error flag, the batch-norm sums' all-reduce, and evaluation over the ranks."""

    def __init__(self, comm: Any, model: Any = None) -> None:
        self.MPI = _mpi()
        self.comm = comm
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.deadline = None  # max_time's, as time.perf_counter()
        self.late = False  # a rank passed the deadline before the last all-reduce
        self.agreed = False  # an error being raised is raised by every rank
        if model is not None:
            self.bind(model)

    def bind(self, model: Any) -> None:
        """Reduce the gradient of `model` (built)."""
        # the gradient with its trailing slots: one buffer, so one all-reduce, no copy
        self.buf = model._grads_ext
        self.n = model.grads_flat.size

    def part(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of the global batch [start, stop)."""
        # part_bounds' parts, in integers: this runs every iteration
        q, r = divmod(stop - start, self.size)
        lo = start + self.rank * q + min(self.rank, r)
        return lo, lo + q + (self.rank < r)

    def sums(self, buf: np.ndarray) -> None:
        """The core's reduce hook: batch normalisation's per-feature sums, over the ranks."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf)

    def __call__(self, loss: float, err: BaseException | None) -> float:
        """Sum the gradient and the parts' losses over the ranks, in place; raise on every
        rank the error a rank met (`err`: this rank's), before anything is updated."""
        buf, n = self.buf, self.n
        loss = 0.0 if err is not None else loss
        buf[n + _LOSS] = loss
        buf[n + _LOSS_LOW] = loss - float(buf[n + _LOSS])  # what the dtype rounded away
        buf[n + _FAILED] = err is not None
        buf[n + _LATE] = self.deadline is not None and time.perf_counter() >= self.deadline
        self.comm.Allreduce(self.MPI.IN_PLACE, buf)
        if buf[n + _FAILED]:
            self.agreed = True
            agree(self.comm, err)
        self.late = bool(buf[n + _LATE])
        return float(buf[n + _LOSS]) + float(buf[n + _LOSS_LOW])

    @contextlib.contextmanager
    def guard(self) -> Any:
        """Around the batch loop: an exception this rank alone meets (in a callback, a file
        write) would leave the other ranks waiting in a collective for ever, so it ends
        the job (MPI_Abort), after saying why on stderr; an error every rank raises (an
        agreed one) is raised."""
        try:
            yield
        except BaseException as err:
            if not self.agreed:
                sys.stderr.write(f"minitrain: rank {self.rank} of {self.size}: "
                                 f"{type(err).__name__}: {err}; the other ranks cannot go on "
                                 f"without this one: ending the job (MPI_Abort)\n")
                traceback.print_exception(type(err), err, err.__traceback__)
                sys.stderr.flush()
                self.comm.Abort(1)
            raise

    def maximum(self, value: float) -> float:
        """The largest `value` over the ranks (an epoch's time: the slowest rank's)."""
        return self.comm.allreduce(value, op=self.MPI.MAX)

    def evaluate_rows(self, model: Any, X: Any, y: Any, rows: Any, metric_names: Any,
                      batch_size: Any = None, with_loss: bool = True) -> dict:
        """``evaluation.evaluate_rows`` over the ranks: each computes the outputs of its part
        of the rows; the parts are gathered, so every rank computes the metrics of the
        same outputs, those of one process."""
        n = X.shape[0] if rows is None else len(rows)
        bounds = part_bounds(n, self.size)
        lo, hi = int(bounds[self.rank]), int(bounds[self.rank + 1])
        chosen = np.arange(lo, hi, dtype=np.int64) if rows is None else rows[lo:hi]
        width = model.n_outputs
        mine = (evaluation.forward_rows(model, X, chosen, batch_size, finite=False) if hi > lo
                else np.empty((0, width), dtype=model.dtype))
        out = np.empty((n, width), dtype=model.dtype)
        self.comm.Allgatherv(mine, [out, np.diff(bounds) * width])
        if not all_finite(out):  # the same outputs on every rank: all raise
            self.agreed = True
            raise ValueError(f"X: the model's outputs overflow {model.dtype.name} on these "
                             f"inputs; scale X")
        return evaluation.compute(model.loss, metric_names, out,
                                  y if rows is None else y[rows], with_loss)


class quiet_logger:
    """On the ranks other than 0, the ``minitrain`` logger stays silent for the fit."""

    def __init__(self, comm: Any) -> None:
        self.silence = not is_root(comm)
        self.logger = logging.getLogger("minitrain")

    def __enter__(self) -> None:
        if self.silence:
            self.was, self.logger.disabled = self.logger.disabled, True

    def __exit__(self, *exc: Any) -> None:
        if self.silence:
            self.logger.disabled = self.was
