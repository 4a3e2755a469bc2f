"""pytest-benchmark suites: ``pip install ".[bench]" && pytest bench/ --benchmark-only``.

They measure at the thread count of the environment: set OMP_NUM_THREADS (it also
pins minitrain and PyTorch here) to compare 1 thread with all cores, e.g.
``OMP_NUM_THREADS=1 taskset -c 0 pytest bench/ --benchmark-only``. A peer that is not
installed is skipped with the reason ("missing peer ..."), listed by ``-ra``.
``python bench/report.py`` runs the same tasks interleaved, at every thread count, and
writes the report.
"""

import os

import pytest

from bench import peers as P
from bench import tasks as T


def bench_threads():
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1


def load_or_skip(cls):
    """The peer, pinned to the benchmark's thread count, or a skip naming it missing."""
    reason = cls.missing()
    if reason is None:
        try:
            peer = P.load(cls)
        except Exception as err:
            reason = f"import failed: {type(err).__name__}: {err}"
    if reason is not None:
        pytest.skip(f"missing peer {cls.name}: {reason}")
    peer.set_threads(bench_threads())
    return peer


@pytest.fixture(scope="session", params=[cls.name for cls in P.PEERS])
def peer(request):
    return load_or_skip(P.peer_classes([request.param])[0])


@pytest.fixture(scope="session", params=T.SKLEARN_FIT_PEERS)
def estimator_peer(request):
    """The peers that are scikit-learn estimators (task 8 fits only those)."""
    return load_or_skip(P.peer_classes([request.param])[0])
