"""The C core's GEMM against numpy.matmul: every micro-kernel this CPU runs, every
transpose combination, both dtypes, sizes that are not multiples of any block size."""

import os

import numpy as np
import pytest

import minitrain as mt
from minitrain import _core

ISAS = _core.available_isas()
DTYPES = [np.float32, np.float64]
TRANSPOSES = [(False, False), (True, False), (False, True), (True, True)]
# (M, N, K): ones, batch 1, odd sizes, and sizes past every register tile (MR 12/8/6,
# NR 32/16/8/4) and cache block (KC 256/512, MC 144, NC 512/1024) without being multiples;
# small ones as a batch of 32 and 64-128-10 layers make them, and an A whose rows are 4 KB
# apart when transposed
SHAPES = [(1, 1, 1), (7, 17, 1), (1, 1023, 7), (17, 7, 255), (255, 17, 1023),
          (1023, 33, 17), (145, 1025, 257), (10, 128, 32), (128, 10, 32), (32, 128, 10),
          (64, 128, 32), (512, 40, 8)]


def operands(M, N, K, trans_a, trans_b, dtype, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    B = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    return A, B


def assert_matmul_close(C, opA, opB, initial=None):
    """|C - op(A) op(B)| within a rounding-error bound of K ulps of |op(A)| |op(B)|."""
    exact = opA.astype(np.float64) @ opB.astype(np.float64)
    bound = np.abs(opA).astype(np.float64) @ np.abs(opB).astype(np.float64)
    if initial is not None:
        exact += initial
        bound += np.abs(initial)
    eps = np.finfo(C.dtype).eps
    K = opA.shape[1]
    err = np.abs(C - exact)
    assert np.all(err <= 2 * (K + 2) * eps * bound + np.finfo(C.dtype).tiny), err.max()
    np.testing.assert_allclose(C, np.matmul(opA, opB) + (0 if initial is None else initial),
                               rtol=1e-4 if C.dtype == np.float32 else 1e-12,
                               atol=(1e-4 if C.dtype == np.float32 else 1e-12) * max(1, K ** 0.5))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_every_variant_matches_numpy(isa, dtype, trans_a, trans_b):
    for M, N, K in SHAPES:
        A, B = operands(M, N, K, trans_a, trans_b, dtype)
        C = _core.gemm(A, B, trans_a, trans_b, isa=isa)
        assert C.dtype == dtype and C.shape == (M, N)
        assert_matmul_close(C, A.T if trans_a else A, B.T if trans_b else B)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulates_into_c(isa, dtype):
    A, B = operands(150, 40, 300, False, True, dtype, seed=1)
    initial = np.random.default_rng(2).standard_normal((150, 40)).astype(dtype)
    C = initial.copy()
    out = _core.gemm(A, B, False, True, C=C, isa=isa)
    assert out is C
    assert_matmul_close(C, A, B.T, initial=initial)


@pytest.mark.parametrize("isa", ISAS)
def test_empty_reduction_gives_zeros(isa):
    A = np.empty((5, 0), np.float32)
    B = np.empty((0, 40), np.float32)
    np.testing.assert_array_equal(_core.gemm(A, B, isa=isa), np.zeros((5, 40), np.float32))
    C = np.ones((5, 40), np.float32)
    np.testing.assert_array_equal(_core.gemm(A, B, C=C, isa=isa), np.ones((5, 40)))


def test_isa_selection():
    # the best this CPU runs, unless the suite runs with MINITRAIN_ISA lowering it
    chosen = _core.isa()
    forced = os.environ.get("MINITRAIN_ISA")
    assert ISAS[0] == "generic" and chosen == (forced if forced in ISAS else ISAS[-1])
    assert mt.cpu_info()["isa"] == chosen
    assert mt.cpu_info()["available_isas"] == ISAS
    try:
        for isa in ISAS:
            _core.set_isa(isa)
            assert _core.isa() == isa
    finally:
        _core.set_isa(chosen)
    with pytest.raises(ValueError, match="isa must be one of"):
        _core.set_isa("sse9")
    # a gemm run with another ISA leaves the one in use unchanged
    A, B = operands(3, 4, 5, False, False, np.float64)
    _core.gemm(A, B, isa="generic")
    assert _core.isa() == chosen


def test_bad_operands_are_rejected():
    A = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        _core.gemm(A, np.ones((5, 2), np.float32))
    with pytest.raises(TypeError, match="B must be"):
        _core.gemm(A, np.ones((4, 2), np.float64))
    with pytest.raises(ValueError, match="C must have shape"):
        _core.gemm(A, np.ones((4, 2), np.float32), C=np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_threads_over_several_k_blocks_are_exact(isa, dtype):
    # The shape of a weight gradient, Xᵀ·dZ with a batch longer than one k block: the
    # threads split C by rows and pack A without a barrier between k blocks, so a thread
    # running ahead must never pack over A panels another still reads. Races show only
    # now and then: repeat.
    rng = np.random.default_rng(0)
    n_before = mt.get_num_threads()
    try:
        for M, N, K in [(32, 100, 400), (32, 100, 1100), (64, 40, 700)]:
            A = rng.standard_normal((K, M)).astype(dtype)
            B = rng.standard_normal((K, N)).astype(dtype)
            mt.set_num_threads(1)
            ref = _core.gemm(A, B, True, False, isa=isa)
            mt.set_num_threads(2)
            for _ in range(60):
                np.testing.assert_array_equal(_core.gemm(A, B, True, False, isa=isa), ref)
    finally:
        mt.set_num_threads(n_before)


def test_the_c_codes_come_from_the_header_by_the_python_names():
    from minitrain import functional as F
    from minitrain import optimizers
    codes = _core.CODES
    assert tuple(codes["activation"]) == F.ACTIVATIONS
    assert tuple(codes["loss"]) == F.LOSSES
    assert tuple(codes["layer"]) == F.LAYER_KINDS
    assert tuple(codes["reduction"]) == F.REDUCTIONS
    assert set(codes["optimizer"]) == {optimizers.SGD_KIND, optimizers.ADAM_KIND,
                                       optimizers.GRADIENT_KIND}
    assert set(codes["style"]) == {optimizers.STYLE_TORCH, optimizers.STYLE_SKLEARN}
    assert _core.ISAS == tuple(codes["isa"]) == ("generic", "avx2", "avx512", "avx512_bf16")
    # every table is an enum of minitrain.h: distinct codes from 0 up
    for table in codes.values():
        assert sorted(table.values()) == list(range(len(table)))
    with pytest.raises(ValueError, match="loss must be one of"):
        _core.Net(np.float64, 1, [{"kind": "dense", "in": 1, "out": 1}], np.zeros(2),
                  np.zeros(2), np.zeros(4))
