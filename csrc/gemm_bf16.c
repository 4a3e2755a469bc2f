// Products with bfloat16 inputs and float32 accumulation (dtype "mixed_bfloat16"): C (M, N)
// = op(A) (M, K) · op(B) (K, N), both operands rounded to bfloat16 while they are packed.
//
// vdpbf16ps (AVX512_BF16) takes k in pairs: per float32 lane, acc += a[2q+1] b[2q+1], then
// acc += a[2q] b[2q], each add rounded to nearest with denormal inputs read as zero and
// denormal results flushed to zero. The product of two bfloat16 values is exact in
// float32, so a fused multiply-add on the values widened to float32 rounds as each of
// those adds does: the other instruction sets run their float32 micro-kernels (gemm.c's)
// on panels of the rounded values with the two k of every pair swapped, under the
// flush-to-zero and denormals-are-zero modes. The k blocks (MT_BF16_KC) and the epilogues
// are the same for every ISA, so every ISA gives the same bits, on any thread count.
// This file is the packing of those products (two mt_packing formats); the driver is
// gemm.c's, as for every dtype. Both operands are always packed: the rounding happens
// there, and an odd K is padded with a zero pair element.
#define MT_REAL_SOURCE
#include "gemm.h"
#if !MT_DOUBLE
#include <string.h>

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// float32 bits -> bfloat16 bits: to nearest, ties to even; a NaN stays NaN (made quiet);
// a denormal becomes zero of its sign, as vdpbf16ps reads it. Branch-free: it vectorises.
static inline uint32_t bf16_bits(uint32_t u) {
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t nan = (u >> 16) | 0x40u;
    const uint32_t r = (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded;
    return (u & 0x7f800000u) == 0 ? (u >> 16) & 0x8000u : r;
}

// lanes a row of pack_pairs_rows holds at most (gemm.c's jobs take 256)
#define GROUP_LANES 256

// Packed layouts, R lanes x (rows of op(A), columns of op(B)) by k pairs q, lanes past
// the operand's and k past kc zeros: hw: dst[q*R + x] = bf16(k = 2q) | bf16(2q + 1) << 16;
// emulation: dst[2q*R + x] = the float32 of bf16(2q + 1), dst[(2q+1)*R + x] = bf16(2q)'s.

// The panels of w <= GROUP_LANES lanes contiguous in the source (op(X)(x, k) =
// src[x + k*ks]), k in [0, kc): panel g at dst + g*stride. Row by row across the panels,
// so that each source row is read in one sweep rather than R lanes at a time, rows pages
// apart; a row's words are made in one vectorised pass, then copied panel by panel.
MT_TARGET_CLONES
static void pack_pairs_rows(const float *src, int64_t ks, int64_t w, int R, int64_t kc,
                            int hw, uint32_t *restrict dst, int64_t stride) {
    const uint32_t *s = (const uint32_t *)src;
    const int64_t panels = (w + R - 1) / R;
    uint32_t lo[GROUP_LANES + 32], hi[GROUP_LANES + 32]; // zeros past w: the padded lanes
    for (int64_t x = w; x < panels * R; x++) lo[x] = hi[x] = 0;
    for (int64_t q = 0; q < (kc + 1) / 2; q++) {
        const uint32_t *s0 = s + 2 * q * ks, *s1 = s0 + ks;
        if (2 * q + 1 < kc) { // else k = 2q + 1 is the zero pad of an odd kc
            if (hw)
                for (int64_t x = 0; x < w; x++) lo[x] = bf16_bits(s0[x]) | bf16_bits(s1[x]) << 16;
            else
                for (int64_t x = 0; x < w; x++) {
                    lo[x] = bf16_bits(s0[x]) << 16;
                    hi[x] = bf16_bits(s1[x]) << 16;
                }
        } else {
            for (int64_t x = 0; x < w; x++) {
                lo[x] = hw ? bf16_bits(s0[x]) : bf16_bits(s0[x]) << 16;
                hi[x] = 0;
            }
        }
        for (int64_t g = 0; g < panels; g++) {
            uint32_t *d = dst + g * stride + (hw ? q : 2 * q) * R;
            memcpy(d, hw ? lo + g * R : hi + g * R, (size_t)R * 4);
            if (!hw) memcpy(d + R, lo + g * R, (size_t)R * 4);
        }
    }
}

// One panel of h <= R lanes strided in the source (op(X)(x, k) = src[x*ls + k], k
// contiguous), k in [0, kc).
MT_TARGET_CLONES
static void pack_pairs(const float *src, int64_t ls, int64_t h, int R, int64_t kc, int hw,
                       uint32_t *restrict dst) {
    const uint32_t *s = (const uint32_t *)src;
    const int64_t pairs = kc / 2;
    // each lane's pairs into words of a small block (contiguous, so the rounding
    // vectorises), then the block transposed into the panel
    enum { QB = 64 };
    uint32_t block[32 * QB]; // R <= 32 lanes x QB pairs
    int64_t first = 0;
#if defined(__x86_64__) || defined(_M_X64)
    if (hw) first = mt_pack_pairs_strided_avx512(src, ls, h, R, pairs, dst);
#endif
    for (int64_t q0 = first; q0 < pairs; q0 += QB) {
        const int qb = (int)(pairs - q0 < QB ? pairs - q0 : QB);
        for (int x = 0; x < h; x++) {
            const uint32_t *sx = s + x * ls + 2 * q0;
            uint32_t *b = block + x * QB;
            for (int q = 0; q < qb; q++)
                b[q] = bf16_bits(sx[2 * q]) | bf16_bits(sx[2 * q + 1]) << 16;
        }
        for (int q = 0; q < qb; q++) {
            uint32_t *d = dst + (hw ? q0 + q : 2 * (q0 + q)) * R;
            for (int x = 0; x < R; x++) {
                const uint32_t w = x < h ? block[x * QB + q] : 0;
                if (hw) {
                    d[x] = w;
                } else {
                    d[x] = w & 0xffff0000u;
                    d[R + x] = w << 16;
                }
            }
        }
    }
    if (kc % 2) { // the last pair: k = kc - 1 and a zero
        const int64_t q = pairs;
        uint32_t *d = dst + (hw ? q : 2 * q) * R;
        for (int x = 0; x < R; x++) {
            const uint32_t v = x < h ? bf16_bits(s[x * ls + kc - 1]) : 0;
            if (hw) {
                d[x] = v;
            } else {
                d[x] = 0;
                d[R + x] = v << 16;
            }
        }
    }
}

// sums[j] = Σ_k op(B)(k, j) for j in [0, w), op(B)(k, j) = src[j*ls + k*ks], in k order and
// in float32 (the bias gradient, from dZ as it is, not rounded)
static void column_sums(const float *src, int64_t ls, int64_t ks, int64_t w, int64_t K,
                        float *sums) {
    for (int64_t j = 0; j < w; j++) sums[j] = 0;
    for (int64_t k = 0; k < K; k++)
        for (int64_t j = 0; j < w; j++) sums[j] += src[j * ls + k * ks];
}

// kw(k): words per lane for k values, k/2 for pairs, k for the emulation
static inline int64_t kw(const mt_plan_f32 *P, int64_t k) { return k / P->fmt->k_per_word; }

// Lanes [x0, x0 + w) of op(X) (op(A) when a, else op(B)), k in [k0, k1) of every k block,
// into the panels of packed (Lp lanes, R per panel) from the panel of lane x0 on
static void pack_lanes(const mt_plan_f32 *P, int a, int64_t x0, int64_t w, int64_t k0,
                       int64_t k1) {
    const mt_gemm_op_f32 *op = &P->op;
    const int hw = P->fmt->k_per_word == 2;
    const int64_t K = op->K, KC = P->kc;
    const int trans = a ? op->trans_a : !op->trans_b; // lanes contiguous
    const int R = a ? P->ker->mr : P->ker->nr;
    const int64_t L = a ? op->M : op->N; // lanes in all
    const float *src = a ? op->A : op->B;
    uint32_t *packed = (uint32_t *)(a ? P->Ap : P->Bp);
    const int64_t Lp = a ? P->Mp : P->Np;
    for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = min64(KC, K - pc), panel = kw(P, (kc + 1) / 2 * 2) * R;
        uint32_t *dst = packed + kw(P, pc) * Lp + x0 / R * panel;
        const int64_t lo = k0 > pc ? k0 - pc : 0, hi = min64(kc, k1 - pc); // slice in block
        if (lo >= hi) continue;
        if (trans) // op(X)(x, k) = src[x + k*L]
            pack_pairs_rows(src + x0 + (pc + lo) * L, L, w, R, hi - lo, hw,
                            dst + kw(P, lo) * R, panel);
        else // op(X)(x, k) = src[x*K + k]
            pack_pairs(src + x0 * K + pc, K, w, R, kc, hw, dst);
    }
}

// row panels [p0, p1) of op(A), every k block
static void pack_a_bf16(const mt_plan_f32 *P, int64_t p0, int64_t p1) {
    const int64_t R = P->ker->mr;
    pack_lanes(P, 1, p0 * R, min64((p1 - p0) * R, P->op.M - p0 * R), 0, P->op.K);
}

// column panels [q0, q1) of op(B), k in [k0, k1); their column sums with the first slice
static void pack_b_bf16(const mt_plan_f32 *P, int64_t q0, int64_t q1, int64_t k0, int64_t k1) {
    const mt_gemm_op_f32 *op = &P->op;
    const int64_t R = P->ker->nr, N = op->N, K = op->K, x0 = q0 * R;
    const int64_t w = min64((q1 - q0) * R, N - x0);
    pack_lanes(P, 0, x0, w, k0, k1);
    if (op->ep && op->ep->b_sums && k0 == 0) {
        const int64_t ls = op->trans_b ? K : 1, ks = op->trans_b ? 1 : N;
        float *sums = (float *)op->ep->b_sums + x0;
        column_sums(op->B + x0 * ls, ls, ks, w, K, sums);
        if (op->ep->nonfinite) mt_flag_nonfinite_f32(sums, 1, w, w, op->ep->nonfinite);
    }
}

// flush-to-zero and denormals-are-zero, as vdpbf16ps: the emulation's FMAs and every
// path's epilogue round alike
#define BF16_PACKING(k_words)                                                              \
    {.kc = MT_BF16_KC, .k_align = 2, .k_per_word = k_words, .always = 1, .group_a = 1,      \
     .slice_b = 1, .ftz = 1, .dact_after = 1, .pack_a = pack_a_bf16, .pack_b = pack_b_bf16}
const mt_packing_f32 mt_packing_bf16_pairs = BF16_PACKING(2);
const mt_packing_f32 mt_packing_bf16_emulated = BF16_PACKING(1);
#endif
