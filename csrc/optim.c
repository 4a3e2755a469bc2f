// Optimizers: one fused pass over the flat parameter, gradient and state buffers.
#define MT_REAL_SOURCE
#include "mt_internal.h"
#include <math.h>

#define NORM_CHUNKS 256

// ||g||^2 as the ordered sum of NORM_CHUNKS fixed chunks: same bits on any thread count
static double grad_sq_norm(const real *g, int64_t n) {
    double part[NORM_CHUNKS];
    const int64_t chunk = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;
#pragma omp parallel for schedule(static) if (n >= MT_PAR_ELEMS)
    for (int c = 0; c < NORM_CHUNKS; c++) {
        double s = 0;
        int64_t end = (c + 1) * chunk < n ? (c + 1) * chunk : n;
        for (int64_t i = c * chunk; i < end; i++) s += (double)g[i] * g[i];
        part[c] = s;
    }
    double s = 0;
    for (int c = 0; c < NORM_CHUNKS; c++) s += part[c];
    return s;
}

// scikit-learn's MLP updates (MT_OPT_STYLE_SKLEARN), in its order of operations;
// state: velocity (n), or Adam moments m (n), v (n). wd is already per batch weight.
static void sklearn_update(const mt_optim *o, real *p, const real *g, real *state, int64_t n,
                           real gscale, real wd) {
    const int64_t nd = o->n_decay;
    const real lr = (real)o->lr;
    if (o->kind == MT_OPT_SGD) {
        const real mu = (real)o->momentum;
#pragma omp parallel for simd schedule(static) if (n >= MT_PAR_ELEMS)
        for (int64_t i = 0; i < n; i++) {
            real gi = g[i] * gscale + (i < nd ? wd * p[i] : 0);
            state[i] = mu * state[i] - lr * gi;
            p[i] += o->nesterov ? mu * state[i] - lr * gi : state[i];
        }
        return;
    }
    const real b1 = (real)o->beta1, b2 = (real)o->beta2, eps = (real)o->eps;
    const real c1 = (real)(1 - o->beta1), c2 = (real)(1 - o->beta2);
    const double t = (double)o->t;
    const real lr_t = (real)(o->lr * sqrt(1 - pow(o->beta2, t)) / (1 - pow(o->beta1, t)));
    real *m = state, *v = state + n;
#pragma omp parallel for simd schedule(static) if (n >= MT_PAR_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        real gi = g[i] * gscale + (i < nd ? wd * p[i] : 0);
        m[i] = b1 * m[i] + c1 * gi;
        v[i] = b2 * v[i] + c2 * (gi * gi);
        // the square root rounded to real, as NumPy computes it
        p[i] += -lr_t * m[i] / ((real)sqrt(v[i]) + eps);
    }
}

// params (n), grads (n), state: SGD momentum buffer (n) or Adam moments m (n), v (n);
// batch_weight: the sum of the batch's sample weights (its size when unweighted)
void FN(mt_optim_update)(const mt_optim *o, real *p, real *g, real *state, int64_t n,
                         double batch_weight) {
    real gscale = 1;
    if (o->clip_norm > 0) {
        double norm = sqrt(grad_sq_norm(g, n));
        if (norm > o->clip_norm) gscale = (real)(o->clip_norm / norm);
    }
    if (o->style == MT_OPT_STYLE_SKLEARN) {
        sklearn_update(o, p, g, state, n, gscale, (real)(o->weight_decay / batch_weight));
        return;
    }
    const real lr = (real)o->lr, wd = (real)o->weight_decay;
    const int64_t nd = o->n_decay;
    if (o->kind == MT_OPT_SGD) {
        const real mu = (real)o->momentum;
#pragma omp parallel for simd schedule(static) if (n >= MT_PAR_ELEMS)
        for (int64_t i = 0; i < n; i++) {
            real gi = g[i] * gscale + (i < nd ? wd * p[i] : 0);
            if (mu != 0) {
                state[i] = mu * state[i] + gi;
                gi = o->nesterov ? gi + mu * state[i] : state[i];
            }
            p[i] -= lr * gi;
        }
    } else {
        const real b1 = (real)o->beta1, b2 = (real)o->beta2, eps = (real)o->eps;
        const real c1 = (real)(1 - pow(o->beta1, (double)o->t));
        const real c2 = (real)sqrt(1 - pow(o->beta2, (double)o->t));
        const real l2 = o->decoupled ? 0 : wd, decay = o->decoupled ? lr * wd : 0;
        real *m = state, *v = state + n;
#pragma omp parallel for simd schedule(static) if (n >= MT_PAR_ELEMS)
        for (int64_t i = 0; i < n; i++) {
            real gi = g[i] * gscale;
            if (i < nd) {
                gi += l2 * p[i];
                p[i] -= decay * p[i];
            }
            m[i] = b1 * m[i] + (1 - b1) * gi;
            v[i] = b2 * v[i] + (1 - b2) * gi * gi;
            p[i] -= lr * (m[i] / c1) / (sqrt(v[i]) / c2 + eps);
        }
    }
}
