// Optimizers: one fused pass over the flat parameter, gradient and state buffers.
// (`if (parallel: ...)`: a bare if clause on `parallel for simd` also turns simd off.)
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

// SGD on [lo, hi): buf = mu*buf + g + decay*p; p -= lr * (nesterov ? g + mu*buf : buf)
// (without momentum, mu == 0: p -= lr * (g + decay*p))
static void sgd_range(real *restrict p, const real *restrict g, real *restrict buf, int64_t lo,
                      int64_t hi, real lr, real gscale, real decay, real mu, int nesterov) {
    if (mu == 0) {
#pragma omp for simd schedule(static)
        for (int64_t i = lo; i < hi; i++) p[i] -= lr * (g[i] * gscale + decay * p[i]);
        return;
    }
#pragma omp for simd schedule(static)
    for (int64_t i = lo; i < hi; i++) {
        const real gi = g[i] * gscale + decay * p[i];
        buf[i] = mu * buf[i] + gi;
        p[i] -= lr * (nesterov ? gi + mu * buf[i] : buf[i]);
    }
}

// scikit-learn's MLP updates (MT_OPT_STYLE_SKLEARN), in its order of operations;
// state: velocity (n), or Adam moments m (n), v (n). wd is already per batch weight.
// Returns Σ p[:nd]² as it was before the update (the L2 term of scikit-learn's loss),
// read in the same pass: fixed chunks summed in order, the same bits on any thread count.
static double sklearn_update(const mt_optim *o, real *restrict p, const real *restrict g,
                             real *restrict state, int64_t n, real gscale, real wd) {
    const int64_t nd = o->n_decay;
    const real lr = (real)o->lr, mu = (real)o->momentum;
    const int sgd = o->kind == MT_OPT_SGD, nesterov = o->nesterov;
    const real b1 = (real)o->beta1, b2 = (real)o->beta2, eps = (real)o->eps;
    const real c1 = (real)(1 - o->beta1), c2 = (real)(1 - o->beta2);
    const double t = (double)o->t;
    const real lr_t = sgd ? 0 : (real)(o->lr * sqrt(1 - pow(o->beta2, t)) / (1 - pow(o->beta1, t)));
    real *restrict m = state, *restrict v = state + n;
    double part[NORM_CHUNKS];
    const int64_t chunk = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;
#pragma omp parallel for schedule(static) if (n >= MT_PAR_ELEMS)
    for (int c = 0; c < NORM_CHUNKS; c++) {
        const int64_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        double sq = 0;
        if (sgd) {
#pragma omp simd reduction(+ : sq)
            for (int64_t i = lo; i < hi; i++) {
                const real pi = p[i], gi = g[i] * gscale + (i < nd ? wd * pi : 0);
                sq += i < nd ? (double)pi * pi : 0;
                m[i] = mu * m[i] - lr * gi;
                p[i] = pi + (nesterov ? mu * m[i] - lr * gi : m[i]);
            }
        } else {
#pragma omp simd reduction(+ : sq)
            for (int64_t i = lo; i < hi; i++) {
                const real pi = p[i], gi = g[i] * gscale + (i < nd ? wd * pi : 0);
                sq += i < nd ? (double)pi * pi : 0;
                m[i] = b1 * m[i] + c1 * gi;
                v[i] = b2 * v[i] + c2 * (gi * gi);
                // the square root rounded to real, as NumPy computes it
                p[i] = pi + -lr_t * m[i] / ((real)sqrt(v[i]) + eps);
            }
        }
        part[c] = sq;
    }
    double sq = 0;
    for (int c = 0; c < NORM_CHUNKS; c++) sq += part[c];
    return sq;
}

// params (n), grads (n), state: SGD momentum buffer (n) or Adam moments m (n), v (n);
// batch_weight: the sum of the batch's sample weights (its size when unweighted).
// Returns the L2 term of scikit-learn's loss for the scikit-learn style, from the
// parameters before the update (0 without weight decay, and for the other style).
double FN(mt_optim_update)(const mt_optim *o, real *p, real *g, real *state, int64_t n,
                           double batch_weight) {
    real gscale = 1;
    if (o->clip_norm > 0) {
        double norm = sqrt(grad_sq_norm(g, n));
        if (norm > o->clip_norm) gscale = (real)(o->clip_norm / norm);
    }
    if (o->style == MT_OPT_STYLE_SKLEARN) {
        const double wd = o->weight_decay / batch_weight;
        const double sq = sklearn_update(o, p, g, state, n, gscale, (real)wd);
        return 0.5 * wd * sq;
    }
    const real lr = (real)o->lr, wd = (real)o->weight_decay;
    const int64_t nd = o->n_decay;
    if (o->kind == MT_OPT_SGD) {
        // weights with L2 decay, then biases without: no test per element
        const real mu = (real)o->momentum;
        MT_PARALLEL_IF(n >= MT_PAR_ELEMS, {
            sgd_range(p, g, state, 0, nd, lr, gscale, wd, mu, o->nesterov);
            sgd_range(p, g, state, nd, n, lr, gscale, 0, mu, o->nesterov);
        });
    } else {
        const real b1 = (real)o->beta1, b2 = (real)o->beta2, eps = (real)o->eps;
        const real c1 = (real)(1 - pow(o->beta1, (double)o->t));
        const real c2 = (real)sqrt(1 - pow(o->beta2, (double)o->t));
        const real l2 = o->decoupled ? 0 : wd, decay = o->decoupled ? lr * wd : 0;
        real *m = state, *v = state + n;
#pragma omp parallel for simd schedule(static) if (parallel: n >= MT_PAR_ELEMS)
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
    return 0;
}
