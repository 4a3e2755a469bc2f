// Dense layer with a fused activation: forward/backward pair.
#define MT_REAL_SOURCE
#include "mt_internal.h"
#include <tgmath.h>

static inline real act_forward(int act, real alpha, real z) {
    switch (act) {
    case MT_ACT_RELU: return z > 0 ? z : 0;
    case MT_ACT_LEAKY_RELU: return z > 0 ? z : alpha * z;
    case MT_ACT_TANH: return tanh(z);
    case MT_ACT_SIGMOID: {
        // split by sign so exp never overflows
        if (z >= 0) return 1 / (1 + exp(-z));
        real e = exp(z);
        return e / (1 + e);
    }
    case MT_ACT_GELU: return (real)0.5 * z * (1 + erf(z * (real)0.70710678118654752440));
    default: return z;
    }
}

// d act(z) / dz, from the pre-activation z or the output a, whichever is cheaper
static inline real act_derivative(int act, real alpha, real z, real a) {
    switch (act) {
    case MT_ACT_RELU: return z > 0 ? 1 : 0;
    case MT_ACT_LEAKY_RELU: return z > 0 ? 1 : alpha;
    case MT_ACT_TANH: return 1 - a * a;
    case MT_ACT_SIGMOID: return a * (1 - a);
    case MT_ACT_GELU:
        return (real)0.5 * (1 + erf(z * (real)0.70710678118654752440)) +
               z * exp((real)-0.5 * z * z) * (real)0.39894228040143267794;
    default: return 1;
    }
}

// X (n, in) · W (in, out) + b -> Z (n, out); A = act(Z) (A == Z for identity)
void FN(mt_dense_forward)(const mt_layer *L, const real *params, const real *X, real *Z,
                          real *A, int64_t n) {
    const int64_t out = L->out;
    const real *b = params + L->b_off;
    const real alpha = (real)L->act_param;
    FN(mt_gemm)(0, 0, n, out, L->in, X, params + L->w_off, Z, 0);
#pragma omp parallel for schedule(static) if (n * out >= MT_PAR_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        real *z = Z + i * out, *a = A + i * out;
        for (int64_t j = 0; j < out; j++) {
            z[j] += b[j];
            a[j] = act_forward(L->act, alpha, z[j]);
        }
    }
}

// dA (n, out) -> dZ in place; dW (in, out) = Xᵀ dZ; db (out) = Σ_rows dZ;
// dX (n, in) = dZ Wᵀ unless dX is NULL (first layer)
void FN(mt_dense_backward)(const mt_layer *L, const real *params, real *grads,
                           const real *X, const real *Z, const real *A, real *dA,
                           real *dX, int64_t n) {
    const int64_t in = L->in, out = L->out;
    const real alpha = (real)L->act_param;
    real *db = grads + L->b_off;
    if (L->act != MT_ACT_IDENTITY) {
#pragma omp parallel for schedule(static) if (n * out >= MT_PAR_ELEMS)
        for (int64_t i = 0; i < n * out; i++) dA[i] *= act_derivative(L->act, alpha, Z[i], A[i]);
    }
    // columns are split between threads, rows summed in order: thread-count independent
#pragma omp parallel for schedule(static) if (n * out >= MT_PAR_ELEMS)
    for (int64_t j = 0; j < out; j++) {
        real s = 0;
        for (int64_t i = 0; i < n; i++) s += dA[i * out + j];
        db[j] = s;
    }
    FN(mt_gemm)(1, 0, in, out, n, X, dA, grads + L->w_off, 0);
    if (dX) FN(mt_gemm)(0, 1, n, in, out, dA, params + L->w_off, dX, 0);
}

// Standalone activation layer (Dense -> BatchNorm -> Activation): the same functions as
// the fused ones above, on a layer that owns no parameters.

// X (n, c) -> Y (n, c) = act(X)
void FN(mt_activation_forward)(const mt_layer *L, const real *X, real *Y, int64_t n) {
    const int64_t size = n * L->out;
    const real alpha = (real)L->act_param;
#pragma omp parallel for schedule(static) if (size >= MT_PAR_ELEMS)
    for (int64_t i = 0; i < size; i++) Y[i] = act_forward(L->act, alpha, X[i]);
}

// dY (n, c) ⊙ act'(X, Y) -> dX (n, c); nothing to do without dX (first layer)
void FN(mt_activation_backward)(const mt_layer *L, const real *X, const real *Y,
                                const real *dY, real *dX, int64_t n) {
    if (!dX) return;
    const int64_t size = n * L->out;
    const real alpha = (real)L->act_param;
#pragma omp parallel for schedule(static) if (size >= MT_PAR_ELEMS)
    for (int64_t i = 0; i < size; i++) dX[i] = dY[i] * act_derivative(L->act, alpha, X[i], Y[i]);
}
