"""The products of dtype="mixed_bfloat16": inputs rounded to bfloat16, float32 sums.

Every instruction set (vdpbf16ps, and its emulation on AVX-512F, AVX2 and portable C) is
checked against the NumPy twin (minitrain.functional.matmul), against each other bit for
bit, and on any thread count.
"""

import numpy as np
import pytest

import minitrain as mt
from minitrain import functional as F

_core = pytest.importorskip("minitrain._core")
ISAS = _core.available_isas()


def _flush(x, r):
    """r with the denormals of x made zeros of their sign, as the products read them."""
    tiny = np.abs(x) < np.finfo(np.float32).tiny
    return np.where(tiny, np.copysign(np.float32(0), x), r).astype(np.float32)


def _reference_bf16(x):
    """x rounded to bfloat16 in float64 arithmetic, independently of the twin's bit
    operations: 8 significant bits (frexp's mantissa in [0.5, 1) times 2^8, to the nearest
    integer, ties to even)."""
    x = np.ascontiguousarray(x, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # NaNs; infinity past the largest
        m, e = np.frexp(x.astype(np.float64))
        r = np.ldexp(np.rint(m * 256) / 256, e).astype(np.float32)
    return _flush(x, r)


def _torch_bf16(x):
    """x rounded to bfloat16 by PyTorch (nearest, ties to even)."""
    torch = pytest.importorskip("torch")
    r = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16)
    return _flush(x, r.to(torch.float32).numpy())


def _specials():
    f = np.float32
    one = 1 + 2.0**-7  # the bfloat16 after 1
    values = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan,
              1 + 2.0**-8,               # the tie between 1 and `one`: to 1 (even)
              one + 2.0**-8,             # the tie between `one` and 1 + 2^-6: up (even)
              1 + 2.0**-8 + 2.0**-20,    # just above a tie: up
              -(1 + 2.0**-8),            # ties are symmetric
              np.finfo(f).max,           # rounds up to infinity
              np.finfo(f).tiny,          # the smallest normal: stays
              np.finfo(f).tiny * (1 - 2.0**-23),  # the largest denormal: to zero
              -1e-45, 1e-40,             # denormals: zeros of their sign
              3.0e38, 1e-30, 65504.0, 0.1, -2.5e-3]
    return np.array(values, dtype=f)


def _rounding_cases():
    rng = np.random.default_rng(0)
    return np.concatenate([_specials(), rng.standard_normal(20000).astype(np.float32),
                           (rng.standard_normal(2000) * 1e-36).astype(np.float32),
                           rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
                           .view(np.float32)])


@pytest.mark.parametrize("reference", [_reference_bf16, _torch_bf16],
                         ids=["float64 arithmetic", "pytorch"])
def test_rounding_to_nearest_even(reference):
    x = _rounding_cases()
    mine, ref = F.round_bfloat16(x), reference(x)
    nan = np.isnan(x)
    assert np.isnan(mine[nan]).all()
    np.testing.assert_array_equal(mine[~nan].view(np.uint32), ref[~nan].view(np.uint32))
    assert not (mine.view(np.uint32) & 0xFFFF).any()  # every value a bfloat16
    assert F.round_bfloat16(np.float32(1 + 2.0**-8)) == 1
    assert F.round_bfloat16(np.float32(1 + 3 * 2.0**-8)) == 1 + 2.0**-6


@pytest.mark.parametrize("isa", ISAS)
def test_the_core_rounds_each_operand_as_the_twin(isa):
    # a K = 1 product by one gives the rounded values themselves (exact products and sums)
    x = _specials()
    a = _core.gemm(x[:, None], np.ones((1, 1), np.float32), isa=isa, bf16=True)[:, 0]
    b = _core.gemm(np.ones((1, 1), np.float32), x[None, :], isa=isa, bf16=True)[0]
    ref = F.round_bfloat16(x)
    for got in (a, b):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        ok = ~np.isnan(ref)
        np.testing.assert_array_equal(got[ok], ref[ok])


@pytest.mark.parametrize("isa", ISAS)
def test_every_packing_path_rounds_as_the_twin(isa):
    # operands read along k (X·W's X, dZ·Wᵀ's Wᵀ: vdpbf16ps packs them 16 x 16 in
    # registers) and along the lanes (Xᵀ, W), times a selection of their elements by one:
    # C holds the rounded values themselves
    rng = np.random.default_rng(5)
    specials = _specials()
    finite = specials[np.isfinite(specials) & (np.abs(specials) < 1e38)]
    X = rng.standard_normal((37, 97)).astype(np.float32)
    X.flat[rng.choice(X.size, 1500, replace=False)] = rng.choice(finite, 1500)
    eye = np.eye(97, dtype=np.float32)
    ref = F.round_bfloat16(X)
    for got in (_core.gemm(X, eye, isa=isa, bf16=True),                     # X·I
                _core.gemm(eye, X, False, True, isa=isa, bf16=True).T,      # I·Xᵀ
                _core.gemm(X.T.copy(), eye, True, False, isa=isa, bf16=True),  # (Xᵀ)ᵀ·I
                _core.gemm(eye, X.T.copy(), isa=isa, bf16=True).T):         # I·Xᵀ, rows
        np.testing.assert_array_equal(got, ref)


def _operands(rng, M, N, K, trans_a, trans_b, scale=1.0):
    A = (rng.standard_normal((K, M) if trans_a else (M, K)) * scale).astype(np.float32)
    B = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    return A, B


def _twin(A, B, trans_a, trans_b):
    return F.matmul(A.T if trans_a else A, B.T if trans_b else B, bf16=True)


SHAPES = [(1, 1, 1), (13, 33, 7), (12, 32, 2), (25, 65, 3), (37, 10, 64), (100, 40, 513),
          (50, 70, 1025), (7, 300, 1)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_every_isa_matches_the_twin_and_the_others_bit_for_bit(isa, trans_a, trans_b):
    rng = np.random.default_rng(1)
    for M, N, K in SHAPES:  # odd K, edge tiles, several k blocks
        A, B = _operands(rng, M, N, K, trans_a, trans_b)
        C = _core.gemm(A, B, bool(trans_a), bool(trans_b), isa=isa, bf16=True)
        ref = _twin(A, B, trans_a, trans_b)
        bound = np.abs(F.round_bfloat16(A)).max() * np.abs(F.round_bfloat16(B)).max() * K
        np.testing.assert_allclose(C, ref, rtol=0, atol=4e-7 * bound)
        # and not the float32 product: the inputs were rounded
        if K > 1:
            assert np.abs(C - (A.T if trans_a else A) @ (B.T if trans_b else B)).max() > \
                1e-4 * bound / K
        best = _core.gemm(A, B, bool(trans_a), bool(trans_b), isa=ISAS[-1], bf16=True)
        np.testing.assert_array_equal(C.view(np.uint32), best.view(np.uint32))


@pytest.mark.parametrize("isa", ISAS)
def test_accumulates_into_c(isa):
    rng = np.random.default_rng(2)
    A, B = _operands(rng, 30, 50, 77, 0, 0)
    C0 = rng.standard_normal((30, 50)).astype(np.float32)
    C = _core.gemm(A, B, C=C0.copy(), isa=isa, bf16=True)
    np.testing.assert_allclose(C, C0 + _twin(A, B, 0, 0), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(C, _core.gemm(A, B, C=C0.copy(), isa=ISAS[-1], bf16=True))
    np.testing.assert_array_equal(_core.gemm(A[:, :0].copy(), B[:0].copy(), C=C0.copy(),
                                             isa=isa, bf16=True), C0)


def test_denormal_sums_flush_to_zero_as_vdpbf16ps_does():
    # products and sums below float32's smallest normal: vdpbf16ps flushes the sums to
    # zero; the AVX-512F and AVX2 emulations run their FMAs flushing alike: the same bits.
    # Portable C has no FMA: it flushes a product below 2^-126 before adding it, so in this
    # range it differs, as flushed partial sums do (on normal data it gives the same bits,
    # as the tests above check).
    rng = np.random.default_rng(3)
    tiny = np.finfo(np.float32).tiny
    zeros = normals = 0
    for scale_a, scale_b in [(1e-20, 1e-19), (1e-19, 1e-19), (3e-20, 1e-18)]:
        A, B = _operands(rng, 30, 40, 300, 0, 0)
        A *= np.float32(scale_a)
        B *= np.float32(scale_b)
        outs = {isa: _core.gemm(A, B, isa=isa, bf16=True) for isa in ISAS}
        best = outs[ISAS[-1]]
        zeros += (best == 0).sum()
        normals += (np.abs(best) >= tiny).sum()
        assert (np.abs(best[best != 0]) >= tiny).all()  # no denormal
        for isa, C in outs.items():
            if isa != "generic":
                np.testing.assert_array_equal(C.view(np.uint32), best.view(np.uint32))
            else:
                bound = np.abs(F.round_bfloat16(A)).astype(np.float64) @ np.abs(
                    F.round_bfloat16(B)).astype(np.float64)
                assert (np.abs(C[C != 0]) >= tiny).all() and (np.abs(C) <= bound).all()
    assert zeros > 0 and normals > 0


def test_specials_propagate():
    A = np.array([[np.inf, 1, np.nan], [1, 2, 3], [-np.inf, 0, 1]], np.float32)
    B = np.ones((3, 2), np.float32)
    for isa in ISAS:
        C = _core.gemm(A, B, isa=isa, bf16=True)
        assert np.isnan(C[0]).all() and (C[1] == 6).all() and (C[2] == -np.inf).all()


@pytest.mark.parametrize("isa", ISAS)
def test_bit_identical_on_any_thread_count(isa):
    rng = np.random.default_rng(4)
    previous = mt.get_num_threads()
    try:
        # a B of one packing group (N <= 256) is packed in k slices, one per thread: odd K
        # (the MNIST-shaped first layer's) puts the zero pad in the last slice
        for M, N, K in [(301, 257, 1100), (32, 100, 1100), (128, 256, 785)]:
            A, B = _operands(rng, M, N, K, 1, 0)
            mt.set_num_threads(1)
            ref = _core.gemm(A, B, True, False, isa=isa, bf16=True)
            for n in (2, 3, 2, 2):
                mt.set_num_threads(n)
                np.testing.assert_array_equal(
                    _core.gemm(A, B, True, False, isa=isa, bf16=True), ref)
    finally:
        mt.set_num_threads(previous)


def test_bf16_needs_float32_operands():
    A = np.ones((3, 3))
    with pytest.raises(TypeError, match="float32"):
        _core.gemm(A, A, bf16=True)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("trans_b", [0, 1])
def test_a_pre_packed_b_gives_the_same_bits(isa, trans_b):
    # op(B) packed once on its own (as a pre-packed weight matrix is), then read by the
    # product instead of packed by it: several k blocks, odd K, edge panels, B groups
    # split in k slices between threads, K == 0
    rng = np.random.default_rng(5)
    previous = mt.get_num_threads()
    try:
        for M, N, K in [(13, 33, 7), (128, 256, 785), (100, 300, 1030), (7, 10, 1),
                        (9, 20, 0)]:
            A, B = _operands(rng, M, N, K, 0, trans_b)
            C0 = rng.standard_normal((M, N)).astype(np.float32)
            mt.set_num_threads(1)
            ref = _core.gemm(A, B, False, bool(trans_b), C=C0.copy(), isa=isa, bf16=True)
            if K:
                np.testing.assert_allclose(ref, C0 + _twin(A, B, 0, trans_b), rtol=0,
                                           atol=1e-4 * K)
            for n in (1, 2, 3):
                mt.set_num_threads(n)
                C = _core.gemm(A, B, False, bool(trans_b), C=C0.copy(), isa=isa, bf16=True,
                               prepack_b=True)
                np.testing.assert_array_equal(C.view(np.uint32), ref.view(np.uint32))
    finally:
        mt.set_num_threads(previous)


def test_prepack_b_is_for_bf16_products():
    A = np.ones((3, 3), np.float32)
    with pytest.raises(ValueError, match="prepack_b"):
        _core.gemm(A, A, prepack_b=True)
