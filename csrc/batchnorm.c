// Batch normalisation over the rows of a batch: forward/backward pair for training,
// inference on the running statistics, and the running-statistics update.
//
// Threads split the columns; each column is reduced over the rows in order, in double,
// so the results do not depend on the thread count. The loops walk columns with a
// stride of c: batchnorm layers are as wide as the dense layers they follow, and this
// keeps every reduction in one thread without a second pass to combine partial sums.
#define MT_REAL_SOURCE
#include "mt_internal.h"
#include <math.h>

// column j of X (n, c) -> Y[:, j] = gamma * (X[:, j] - mean) * invstd + beta, and the
// normalised column into Xhat when it is kept for the backward pass
static void normalize_column(const real *X, real *Xhat, real *Y, int64_t n, int64_t c,
                             int64_t j, real mean, real invstd, real gamma, real beta) {
    for (int64_t i = 0; i < n; i++) {
        const real xhat = (X[i * c + j] - mean) * invstd;
        if (Xhat) Xhat[i * c + j] = xhat;
        Y[i * c + j] = gamma * xhat + beta;
    }
}

// X (n, c) -> Xhat (n, c) = (X - mean) / sqrt(var + eps), Y (n, c) = gamma Xhat + beta;
// stats (3, c) = batch mean, biased batch variance, 1 / sqrt(var + eps)
void FN(mt_batchnorm_forward)(const mt_layer *L, const real *params, const real *X,
                              real *Xhat, real *stats, real *Y, int64_t n) {
    const int64_t c = L->out;
    const real *gamma = params + L->w_off, *beta = params + L->b_off;
    real *mean = stats, *var = stats + c, *invstd = stats + 2 * c;
#pragma omp for schedule(dynamic, 8)
    for (int64_t j = 0; j < c; j++) {
        double s = 0, v = 0;
        for (int64_t i = 0; i < n; i++) s += X[i * c + j];
        const double mu = s / n;
        for (int64_t i = 0; i < n; i++) {
            const double d = X[i * c + j] - mu;
            v += d * d;
        }
        v /= n;
        mean[j] = (real)mu;
        var[j] = (real)v;
        invstd[j] = (real)(1 / sqrt(v + L->eps));
        normalize_column(X, Xhat, Y, n, c, j, mean[j], invstd[j], gamma[j], beta[j]);
    }
}

// X (n, c) -> Y (n, c) = gamma (X - running mean) / sqrt(running var + eps) + beta
void FN(mt_batchnorm_inference)(const mt_layer *L, const real *params, const real *buffers,
                                const real *X, real *Y, int64_t n) {
    const int64_t c = L->out;
    const real *gamma = params + L->w_off, *beta = params + L->b_off;
    const real *rmean = buffers + L->s_off, *rvar = rmean + c;
#pragma omp for schedule(dynamic, 8)
    for (int64_t j = 0; j < c; j++) {
        const real invstd = (real)(1 / sqrt((double)rvar[j] + L->eps));
        normalize_column(X, NULL, Y, n, c, j, rmean[j], invstd, gamma[j], beta[j]);
    }
}

// dY (n, c) -> dgamma (c) = Σ_rows dY Xhat, dbeta (c) = Σ_rows dY;
// dX (n, c) = gamma invstd / n (n dY - dbeta - Xhat dgamma) unless dX is NULL
void FN(mt_batchnorm_backward)(const mt_layer *L, const real *params, real *grads,
                               const real *Xhat, const real *stats, const real *dY,
                               real *dX, int64_t n) {
    const int64_t c = L->out;
    const real *gamma = params + L->w_off, *invstd = stats + 2 * c;
    real *dgamma = grads + L->w_off, *dbeta = grads + L->b_off;
#pragma omp for schedule(dynamic, 8)
    for (int64_t j = 0; j < c; j++) {
        double sb = 0, sg = 0;
        for (int64_t i = 0; i < n; i++) {
            sb += dY[i * c + j];
            sg += (double)dY[i * c + j] * Xhat[i * c + j];
        }
        dbeta[j] = (real)sb;
        dgamma[j] = (real)sg;
        if (!dX) continue;
        const double k = (double)gamma[j] * invstd[j] / n;
        for (int64_t i = 0; i < n; i++)
            dX[i * c + j] = (real)(k * ((double)n * dY[i * c + j] - sb - Xhat[i * c + j] * sg));
    }
}

// stats (3, c) of a batch of n rows -> running mean and variance (2, c) at buffers + s_off.
// The variance enters unbiased (times n / (n - 1)), as in PyTorch.
void FN(mt_batchnorm_update_running)(const mt_layer *L, const real *stats, real *buffers,
                                     int64_t n) {
    const int64_t c = L->out;
    const double m = L->momentum, unbias = n > 1 ? (double)n / (n - 1) : 1;
    real *rmean = buffers + L->s_off, *rvar = rmean + c;
    for (int64_t j = 0; j < c; j++) {
        rmean[j] = (real)(m * rmean[j] + (1 - m) * stats[j]);
        rvar[j] = (real)(m * rvar[j] + (1 - m) * stats[c + j] * unbias);
    }
}
