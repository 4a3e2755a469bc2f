// AVX-512 micro-kernel: 12 rows x 2 zmm vectors of C in 24 registers. Compiled with
// -mavx512f (CMakeLists.txt) and only called when the CPU reports AVX-512F.
#define MT_REAL_SOURCE
#include "gemm.h"
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#if MT_DOUBLE
#define MR 8
#define NV 2
#define VL 8
typedef __m512d vec;
typedef __mmask8 vmask;
#define V_LOAD _mm512_loadu_pd
#define V_LOADM(m, p) _mm512_maskz_loadu_pd(m, p)
#define V_STORE _mm512_storeu_pd
#define V_STOREM _mm512_mask_storeu_pd
#define V_SET1 _mm512_set1_pd
#define V_ZERO _mm512_setzero_pd
#define V_FMA _mm512_fmadd_pd
#define V_ADD _mm512_add_pd
#define V_SUB _mm512_sub_pd
#define V_MUL _mm512_mul_pd
#define V_GT0(x) _mm512_cmp_pd_mask(x, _mm512_setzero_pd(), _CMP_GT_OQ)
#define V_SELECT(c, t, f) _mm512_mask_blend_pd(c, f, t)
#else
#define MR 12
#define NV 2
#define VL 16
typedef __m512 vec;
typedef __mmask16 vmask;
#define V_LOAD _mm512_loadu_ps
#define V_LOADM(m, p) _mm512_maskz_loadu_ps(m, p)
#define V_STORE _mm512_storeu_ps
#define V_STOREM _mm512_mask_storeu_ps
#define V_SET1 _mm512_set1_ps
#define V_ZERO _mm512_setzero_ps
#define V_FMA _mm512_fmadd_ps
#define V_ADD _mm512_add_ps
#define V_SUB _mm512_sub_ps
#define V_MUL _mm512_mul_ps
#define V_GT0(x) _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ)
#define V_SELECT(c, t, f) _mm512_mask_blend_ps(c, f, t)
#define V_TRANSPOSE transpose16
// bfloat16 products; only called when the CPU reports AVX512_BF16
typedef __m512i vint;
#define VI_LOAD(p) _mm512_loadu_si512(p)
#define VI_SET1 _mm512_set1_epi32
#define V_DPBF16(acc, a, b) _mm512_dpbf16_ps(acc, (__m512bh)(a), (__m512bh)(b))
#define BF16_TARGET __attribute__((target("avx512bf16")))

// r[i][j] -> r[j][i] for 16 x 16 floats: pairs, then quadruples within 128-bit lanes,
// then the 128-bit lanes themselves
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
}
#endif
#define M_FIRST(n) ((vmask)((n) >= VL ? ~0u : (n) <= 0 ? 0u : (1u << (n)) - 1))

#include "gemm_kernel.h"

// KC: fewer passes over C pay more than keeping the whole KC x NR micro-panel of B in L1
KERNEL_DESCRIPTOR(avx512, 512, 144, MT_DOUBLE ? 512 : 1024);

#if !MT_DOUBLE
// float32 bits -> bfloat16 bits in the low half of each lane, as gemm_bf16.c's bf16_bits
static inline __m512i bf16_bits16(__m512i u) {
    const __m512i hi = _mm512_srli_epi32(u, 16), one = _mm512_set1_epi32(1);
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                         _mm512_and_si512(hi, one)), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __mmask16 tiny = _mm512_testn_epi32_mask(u, _mm512_set1_epi32(0x7f800000));
    __m512i r = _mm512_mask_mov_epi32(rounded, nan,
                                      _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    return _mm512_mask_mov_epi32(r, tiny, _mm512_and_si512(hi, _mm512_set1_epi32(0x8000)));
}

// The vdpbf16ps panel of h <= R lanes strided in the source (op(X)(x, k) = src[x*ls + k]):
// dst[q*R + x] = bf16(2q) | bf16(2q + 1) << 16 for the first pairs in blocks of 16, 16
// lanes at a time, transposed in registers. Returns the pairs done (the caller packs the
// rest).
int64_t mt_pack_pairs_strided_avx512(const float *src, int64_t ls, int64_t h, int R,
                                     int64_t pairs, uint32_t *dst) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const int64_t done = pairs / 16 * 16;
    for (int g = 0; g < R; g += 16) {
        const __mmask16 lanes = M_FIRST(R - g);
        for (int64_t q0 = 0; q0 < done; q0 += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                if (g + i >= h) {
                    r[i] = _mm512_setzero_ps();
                    continue;
                }
                const float *s = src + (g + i) * ls + 2 * q0;
                const __m512i r0 = bf16_bits16(_mm512_loadu_si512(s));
                const __m512i r1 = bf16_bits16(_mm512_loadu_si512(s + 16));
                const __m512i w = _mm512_or_si512(
                    _mm512_permutex2var_epi32(r0, even, r1),
                    _mm512_slli_epi32(_mm512_permutex2var_epi32(r0, odd, r1), 16));
                r[i] = _mm512_castsi512_ps(w);
            }
            transpose16(r);
            for (int q = 0; q < 16; q++)
                _mm512_mask_storeu_ps(dst + (q0 + q) * R + g, lanes, r[q]);
        }
    }
    return done;
}

const mt_kernel_f32 mt_kernel_avx512_bf16 = {
    .mr = MR, .nr = NR, .vl = VL, .kc = MT_BF16_KC, .mc = 144, .nc = 1024,
    .packed = kernel_packed_bf16};
#endif
#endif
