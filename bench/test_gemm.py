"""Task 7: GEMM GFLOP/s of minitrain's GEMM, numpy.matmul and torch.matmul on the square
sizes and every product of the training iterations (the FMA peak is in report.py)."""

import pytest

from bench import peers as P
from bench import tasks as T
from bench.conftest import load_or_skip

CFG = T.Config()
SHAPES = T.gemm_shapes(CFG)


@pytest.fixture(scope="session", params=T.GEMM_IMPLS)
def impl(request):
    if request.param != "numpy":
        load_or_skip(P.peer_classes([request.param])[0])
    return request.param


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0].replace(" ", "_").replace("·", ".")
                                             .replace("ᵀ", "T") for s in SHAPES])
def test_gemm(benchmark, impl, shape):
    label, M, N, K, ta, tb = shape
    params = {"M": M, "N": N, "K": K, "trans_a": ta, "trans_b": tb}
    sampler = T.make_sampler("gemm", params, None, CFG, impl)
    benchmark.group = f"gemm {label} {M}x{N}x{K}"
    benchmark.extra_info["gflop"] = 2 * M * N * K / 1e9
    benchmark(sampler.fn)
