// Dense layer with a fused activation: forward/backward pair. The GEMM's epilogue
// applies the bias and the activation on the forward pass, and the activation
// derivative of the layer below while it produces dX on the backward pass.
#define MT_REAL_SOURCE
#include "gemm.h"
#include "activation.h"

// X (n, in) · W (in, out) + b -> Z (n, out); A = act(Z) (A == Z for identity)
void FN(mt_dense_forward)(const mt_layer *L, const real *params, const real *X, real *Z,
                          real *A, int64_t n, const mt_gemm_ws *g) {
    const mt_epilogue ep = {.kind = MT_EP_FORWARD, .act = L->act, .alpha = L->act_param,
                            .bias = params + L->b_off, .out = A};
    const FN(mt_gemm_op) op = {0, 0, n, L->out, L->in, X, params + L->w_off, Z, 0, &ep,
                               g->packed_w};
    FN(mt_gemm_run)(&op, 1, g);
}

// dY (len) ⊙ act'(X, Y) -> dX (len), dX may be dY; threads split the elements
static void act_derivative_times(int act, real alpha, const real *X, const real *Y,
                                 const real *dY, real *dX, int64_t len) {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < len; i++) dX[i] = dY[i] * act_derivative(act, alpha, X[i], Y[i]);
}

// dA (n, out) -> dZ = dA ⊙ act'(Z) in place, for a dA no GEMM produced (the loss's)
void FN(mt_act_backward)(const mt_layer *L, const real *Z, const real *A, real *dA,
                         int64_t n) {
    const int64_t len = n * L->out;
    MT_PARALLEL_IF(len >= MT_PAR_ELEMS,
                   act_derivative_times(L->act, (real)L->act_param, Z, A, dA, dA, len));
}

// dZ (n, out) -> dW (in, out) = Xᵀ dZ; db (out) = Σ_rows dZ; unless dX is NULL,
// dX (n, in) = (dZ Wᵀ) ⊙ act'(Zin): the dZ of the layer `below` whose output X = act(Zin)
// is this layer's input and whose act' this GEMM applies (below->dact_above; below ==
// NULL: dX = dZ Wᵀ)
void FN(mt_dense_backward)(const mt_layer *L, const real *params, real *grads,
                           const real *X, const real *dZ, real *dX, int64_t n,
                           const mt_layer *below, const real *Zin, const mt_gemm_ws *g) {
    const int64_t in = L->in, out = L->out;
    // the GEMM sums dZ's columns into db while it packs dZ: one pass over dZ for both
    const mt_epilogue sums = {.kind = MT_EP_NONE, .b_sums = grads + L->b_off,
                              .nonfinite = g->nonfinite};
    mt_epilogue ep = {.kind = MT_EP_NONE};
    if (below)
        ep = (mt_epilogue){.kind = MT_EP_DACT, .act = below->act, .alpha = below->act_param,
                           .z = Zin, .a = X};
    // dW and dX are independent: one packing phase and one tile phase for both
    const FN(mt_gemm_op) ops[2] = {
        {1, 0, in, out, n, X, dZ, grads + L->w_off, 0, &sums},
        {0, 1, n, in, out, dZ, params + L->w_off, dX, 0, &ep, g->packed_wt}};
    FN(mt_gemm_run)(ops, dX ? 2 : 1, g);
}

size_t FN(mt_dense_pack_elems)(const mt_layer *L, int64_t n) {
    const size_t forward = FN(mt_gemm_pack_elems)(n, L->out, L->in);
    const size_t backward = FN(mt_gemm_pack_elems)(L->in, L->out, n) +
                            FN(mt_gemm_pack_elems)(n, L->in, L->out);
    return forward > backward ? forward : backward;
}

// Standalone activation layer (Dense -> BatchNorm -> Activation): the same functions as
// the fused ones above, on a layer that owns no parameters.

// Y (len) = act(X); threads split the elements
static void act_apply(int act, real alpha, const real *X, real *Y, int64_t len) {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < len; i++) Y[i] = act_forward(act, alpha, X[i]);
}

// X (n, c) -> Y (n, c) = act(X)
void FN(mt_activation_forward)(const mt_layer *L, const real *X, real *Y, int64_t n) {
    const int64_t size = n * L->out;
    MT_PARALLEL_IF(size >= MT_PAR_ELEMS, act_apply(L->act, (real)L->act_param, X, Y, size));
}

// dY (n, c) ⊙ act'(X, Y) -> dX (n, c); nothing to do without dX (first layer)
void FN(mt_activation_backward)(const mt_layer *L, const real *X, const real *Y,
                                const real *dY, real *dX, int64_t n) {
    if (!dX) return;
    const int64_t size = n * L->out;
    MT_PARALLEL_IF(size >= MT_PAR_ELEMS,
                   act_derivative_times(L->act, (real)L->act_param, X, Y, dY, dX, size));
}
