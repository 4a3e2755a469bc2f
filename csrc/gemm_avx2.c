// AVX2+FMA micro-kernel: 6 rows x 2 ymm vectors of C in 12 registers. Compiled with
// -mavx2 -mfma (CMakeLists.txt) and only called when the CPU reports both.
#define MT_REAL_SOURCE
#include "gemm.h"
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define MR 6
#define NV 2
typedef __m256i vmask;
#if MT_DOUBLE
#define VL 4
typedef __m256d vec;
#define V_LOAD _mm256_loadu_pd
#define V_LOADM(m, p) _mm256_maskload_pd(p, m)
#define V_STORE _mm256_storeu_pd
#define V_STOREM _mm256_maskstore_pd
#define V_SET1 _mm256_set1_pd
#define V_ZERO _mm256_setzero_pd
#define V_FMA _mm256_fmadd_pd
#define V_ADD _mm256_add_pd
#define V_SUB _mm256_sub_pd
#define V_MUL _mm256_mul_pd
#define V_GT0(x) _mm256_cmp_pd(x, _mm256_setzero_pd(), _CMP_GT_OQ)
#define V_SELECT(c, t, f) _mm256_blendv_pd(f, t, c)
#define M_FIRST(n) _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3))
#else
#define VL 8
typedef __m256 vec;
#define V_LOAD _mm256_loadu_ps
#define V_LOADM(m, p) _mm256_maskload_ps(p, m)
#define V_STORE _mm256_storeu_ps
#define V_STOREM _mm256_maskstore_ps
#define V_SET1 _mm256_set1_ps
#define V_ZERO _mm256_setzero_ps
#define V_FMA _mm256_fmadd_ps
#define V_ADD _mm256_add_ps
#define V_SUB _mm256_sub_ps
#define V_MUL _mm256_mul_ps
#define V_GT0(x) _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ)
#define V_SELECT(c, t, f) _mm256_blendv_ps(f, t, c)
#define M_FIRST(n) \
    _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#endif

#include "gemm_kernel.h"

KERNEL_DESCRIPTOR(avx2, 256, 144, MT_DOUBLE ? 512 : 1024);
#endif
