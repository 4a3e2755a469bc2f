// Public entry points: dispatch on the dtype, thread control.
#include "mt_internal.h"
#include <omp.h>

size_t mt_workspace_bytes(const mt_net *net, int64_t max_batch) {
    return net->dtype == MT_FLOAT64 ? mt_workspace_bytes_f64(net, max_batch)
                                    : mt_workspace_bytes_f32(net, max_batch);
}

int mt_step(mt_net *net, const void *X, const void *y, const int64_t *idx, int64_t n,
            int64_t iteration, const mt_optim *opt, double *loss) {
    return net->dtype == MT_FLOAT64 ? mt_step_f64(net, X, y, idx, n, iteration, opt, loss)
                                    : mt_step_f32(net, X, y, idx, n, iteration, opt, loss);
}

int mt_forward(mt_net *net, const void *X, const int64_t *idx, int64_t n, void *out) {
    return net->dtype == MT_FLOAT64 ? mt_forward_f64(net, X, idx, n, out)
                                    : mt_forward_f32(net, X, idx, n, out);
}

int mt_gemm(int dtype, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
            const void *A, const void *B, void *C, int accumulate) {
    return dtype == MT_FLOAT64
               ? mt_gemm_alloc_f64(trans_a, trans_b, M, N, K, A, B, C, accumulate)
               : mt_gemm_alloc_f32(trans_a, trans_b, M, N, K, A, B, C, accumulate);
}

void mt_set_num_threads(int n) { omp_set_num_threads(n); }
int mt_get_num_threads(void) { return omp_get_max_threads(); }
