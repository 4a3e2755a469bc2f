"""Task 7: GEMM GFLOP/s of minitrain's GEMM, numpy.matmul and torch.matmul on the square
sizes and every product of the training iterations (the FMA peak is in report.py)."""

import numpy as np
import pytest

from bench import peers as P
from bench import tasks as T
from bench.conftest import load_or_skip

CFG = T.Config()
SHAPES = T.gemm_shapes(CFG)


@pytest.fixture(scope="session", params=["minitrain", "numpy", "torch"])
def impl(request):
    name = request.param
    if name != "numpy":
        load_or_skip(P.peer_classes([name])[0])
    return name, T.gemm_impls({name})[name]


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0].replace(" ", "_").replace("·", ".").replace("ᵀ", "T")
                                             for s in SHAPES])
def test_gemm(benchmark, impl, shape):
    name, f = impl
    label, M, N, K, ta, tb = shape
    A, B = T.gemm_operands(np.random.default_rng(0), M, N, K, ta, tb)
    benchmark.group = f"gemm {label} {M}x{N}x{K}"
    benchmark.extra_info["gflop"] = 2 * M * N * K / 1e9
    benchmark(f, A, B, ta, tb)
