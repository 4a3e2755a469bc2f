// GEMM: C (M, N) = op(A) (M, K) · op(B) (K, N) (+ C), row-major.
//
// Every element of C is reduced over k in increasing order by exactly one thread,
// and threads split the rows of C only, so the result does not depend on the thread
// count. This is the one entry point the layers use for matrix products.
#define MT_REAL_SOURCE
#include "mt_internal.h"
#include <string.h>

void FN(mt_gemm)(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                 const real *A, const real *B, real *C, int accumulate) {
    // op(A)[i, k] lives at A[i*K + k], or A[k*M + i] when transposed
    const int64_t a_row = trans_a ? 1 : K, a_col = trans_a ? M : 1;
    int par = (double)M * N * K >= MT_PAR_FLOPS && M > 1;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = 0; i < M; i++) {
        real *c = C + i * N;
        if (!accumulate) memset(c, 0, (size_t)N * sizeof(real));
        if (!trans_b) {
            // rank-1 updates stream contiguous rows of B: C[i, :] += A[i, k] * B[k, :]
            for (int64_t k = 0; k < K; k++) {
                const real a = A[i * a_row + k * a_col];
                const real *b = B + k * N;
#pragma omp simd
                for (int64_t j = 0; j < N; j++) c[j] += a * b[j];
            }
        } else {
            // B stored (N, K): C[i, j] += dot(op(A)[i, :], B[j, :]), both contiguous in k
            for (int64_t j = 0; j < N; j++) {
                const real *b = B + j * K;
                real s = 0;
                for (int64_t k = 0; k < K; k++) s += A[i * a_row + k * a_col] * b[k];
                c[j] += s;
            }
        }
    }
}
