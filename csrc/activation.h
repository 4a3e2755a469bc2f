// Element-wise activations and their derivatives, shared by the layers and the GEMM's
// epilogue (which applies the ones it cannot keep in vector registers tile by tile).
#ifndef MT_ACTIVATION_H
#define MT_ACTIVATION_H
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

#endif
