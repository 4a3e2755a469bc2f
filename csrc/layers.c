// Dense layer with a fused activation: forward/backward pair. The GEMM's epilogue
// applies the bias and the activation on the forward pass, and the activation
// derivative of the layer below while it produces dX on the backward pass.
#define MT_REAL_SOURCE
#include "gemm.h"
#include "activation.h"

// X (n, in) · W (in, out) + b -> Z (n, out); A = act(Z) (A == Z for identity)
void FN(mt_dense_forward)(const mt_layer *L, const real *params, const real *X, real *Z,
                          real *A, int64_t n, real *pack) {
    const mt_epilogue ep = {.kind = MT_EP_FORWARD, .act = L->act, .alpha = L->act_param,
                            .bias = params + L->b_off, .out = A};
    FN(mt_gemm)(0, 0, n, L->out, L->in, X, params + L->w_off, Z, 0, &ep, pack);
}

// dA (n, out) -> dZ = dA ⊙ act'(Z) in place, for a dA no GEMM produced (the loss's)
void FN(mt_act_backward)(const mt_layer *L, const real *Z, const real *A, real *dA,
                         int64_t n) {
    const real alpha = (real)L->act_param;
    const int64_t len = n * L->out;
#pragma omp parallel for schedule(static) if (len >= MT_PAR_ELEMS)
    for (int64_t i = 0; i < len; i++) dA[i] *= act_derivative(L->act, alpha, Z[i], A[i]);
}

// dZ (n, out) -> db (out) = Σ_rows dZ. Threads split the columns and each column is
// summed in row order, so the result does not depend on the thread count.
static void bias_backward(const real *dZ, int64_t n, int64_t out, real *db) {
    enum { CHUNK = 256 };
#pragma omp for schedule(static)
    for (int64_t j0 = 0; j0 < out; j0 += CHUNK) {
        const int64_t j1 = j0 + CHUNK < out ? j0 + CHUNK : out;
        for (int64_t j = j0; j < j1; j++) db[j] = 0;
        for (int64_t i = 0; i < n; i++) {
            const real *row = dZ + i * out;
#pragma omp simd
            for (int64_t j = j0; j < j1; j++) db[j] += row[j];
        }
    }
}

// dZ (n, out) -> dW (in, out) = Xᵀ dZ; db (out) = Σ_rows dZ; unless dX is NULL,
// dX (n, in) = (dZ Wᵀ) ⊙ act'(Zin): the dZ of the layer `below` whose output X = act(Zin)
// is this layer's input (below == NULL: X is the data, or reached without activation)
void FN(mt_dense_backward)(const mt_layer *L, const real *params, real *grads,
                           const real *X, const real *dZ, real *dX, int64_t n,
                           const mt_layer *below, const real *Zin, real *pack) {
    const int64_t in = L->in, out = L->out;
    MT_PARALLEL_IF(n * out >= MT_PAR_ELEMS, bias_backward(dZ, n, out, grads + L->b_off));
    FN(mt_gemm)(1, 0, in, out, n, X, dZ, grads + L->w_off, 0, NULL, pack);
    if (!dX) return;
    mt_epilogue ep = {.kind = MT_EP_NONE};
    if (below && below->act != MT_ACT_IDENTITY)
        ep = (mt_epilogue){.kind = MT_EP_DACT, .act = below->act, .alpha = below->act_param,
                           .z = Zin, .a = X};
    FN(mt_gemm)(0, 1, n, in, out, dZ, params + L->w_off, dX, 0, &ep, pack);
}
