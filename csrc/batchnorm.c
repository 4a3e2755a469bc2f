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

// Σ_i X[i, j] over the n rows of column j of X (n, c)
static double column_sum(const real *X, int64_t n, int64_t c, int64_t j) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += X[i * c + j];
    return s;
}

// Σ_i (X[i, j] - mu)² over the n rows of column j of X (n, c)
static double column_squares(const real *X, int64_t n, int64_t c, int64_t j, double mu) {
    double v = 0;
    for (int64_t i = 0; i < n; i++) {
        const double d = X[i * c + j] - mu;
        v += d * d;
    }
    return v;
}

// column j's statistics from its sums s = Σ x and v = Σ (x - mean)² over `total` rows,
// then its n rows normalised
static void finish_column(const mt_layer *L, const real *params, const real *X, real *Xhat,
                          real *stats, real *Y, int64_t n, int64_t j, double s, double v,
                          int64_t total) {
    const int64_t c = L->out;
    real *mean = stats, *var = stats + c, *invstd = stats + 2 * c;
    mean[j] = (real)(s / total);
    var[j] = (real)(v / total);
    invstd[j] = (real)(1 / sqrt(v / total + L->eps));
    normalize_column(X, Xhat, Y, n, c, j, mean[j], invstd[j], params[L->w_off + j],
                     params[L->b_off + j]);
}

// X (n, c) -> Xhat (n, c) = (X - mean) / sqrt(var + eps), Y (n, c) = gamma Xhat + beta;
// stats (3, c) = batch mean, biased batch variance, 1 / sqrt(var + eps). The batch is the
// `total` rows of which X holds n: with net->reduce, the column sums of every rank's part
// (sums (2, c): Σ x, then Σ (x - mean)²) are summed before they are used, so the
// statistics are the global batch's, with the two-pass variance of one process. Without,
// each column is finished in one go, while it is in the cache.
void FN(mt_batchnorm_forward)(const mt_net *net, const mt_layer *L, const real *X,
                              real *Xhat, real *stats, double *sums, real *Y, int64_t n,
                              int64_t total, int *status) {
    const int64_t c = L->out;
    const real *params = net->params;
    double *s = sums, *v = sums + c;
    if (!net->reduce) {
#pragma omp for schedule(dynamic, 8)
        for (int64_t j = 0; j < c; j++) {
            const double sj = column_sum(X, n, c, j);
            finish_column(L, params, X, Xhat, stats, Y, n, j, sj,
                          column_squares(X, n, c, j, sj / total), total);
        }
        return;
    }
#pragma omp for schedule(dynamic, 8)
    for (int64_t j = 0; j < c; j++) s[j] = column_sum(X, n, c, j);
    mt_allreduce(net, s, c, status);
#pragma omp for schedule(dynamic, 8)
    for (int64_t j = 0; j < c; j++) v[j] = column_squares(X, n, c, j, s[j] / total);
    mt_allreduce(net, v, c, status);
#pragma omp for schedule(dynamic, 8)
    for (int64_t j = 0; j < c; j++)
        finish_column(L, params, X, Xhat, stats, Y, n, j, s[j], v[j], total);
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

// column j of dY (n, c): dbeta[j] = Σ_rows dY, dgamma[j] = Σ_rows dY Xhat, also kept in
// double in sb[j], sg[j]
static void column_grads(const real *Xhat, const real *dY, real *dgamma, real *dbeta,
                         double *sb, double *sg, int64_t n, int64_t c, int64_t j) {
    double b = 0, g = 0;
    for (int64_t i = 0; i < n; i++) {
        b += dY[i * c + j];
        g += (double)dY[i * c + j] * Xhat[i * c + j];
    }
    dbeta[j] = (real)b;
    dgamma[j] = (real)g;
    sb[j] = b;
    sg[j] = g;
}

// column j of dX (n, c) = k (total dY - sb - Xhat sg), k = gamma invstd / total
static void column_dx(const real *Xhat, const real *dY, real *dX, int64_t n, int64_t c,
                      int64_t j, double k, int64_t total, double sb, double sg) {
    for (int64_t i = 0; i < n; i++)
        dX[i * c + j] = (real)(k * ((double)total * dY[i * c + j] - sb - Xhat[i * c + j] * sg));
}

// dY (n, c) -> dgamma (c) = Σ_rows dY Xhat, dbeta (c) = Σ_rows dY over this part's rows
// (the gradient's all-reduce sums the parts); unless dX is NULL, dX (n, c) = gamma invstd /
// total (total dY - Σ dY - Xhat Σ dY Xhat) with the sums of the global batch's `total` rows:
// with net->reduce, sums (2, c) is summed over the ranks first
void FN(mt_batchnorm_backward)(const mt_net *net, const mt_layer *L, const real *Xhat,
                               const real *stats, double *sums, const real *dY, real *dX,
                               int64_t n, int64_t total, int *status) {
    const int64_t c = L->out;
    const real *gamma = (const real *)net->params + L->w_off, *invstd = stats + 2 * c;
    real *dgamma = (real *)net->grads + L->w_off, *dbeta = (real *)net->grads + L->b_off;
    double *sb = sums, *sg = sums + c;
    const int split = dX && net->reduce; // the global sums are needed before dX
#pragma omp for schedule(dynamic, 8)
    for (int64_t j = 0; j < c; j++) {
        column_grads(Xhat, dY, dgamma, dbeta, sb, sg, n, c, j);
        if (dX && !split)
            column_dx(Xhat, dY, dX, n, c, j, (double)gamma[j] * invstd[j] / total, total,
                      sb[j], sg[j]);
    }
    if (!split) return;
    mt_allreduce(net, sums, 2 * c, status);
#pragma omp for schedule(dynamic, 8)
    for (int64_t j = 0; j < c; j++)
        column_dx(Xhat, dY, dX, n, c, j, (double)gamma[j] * invstd[j] / total, total, sb[j],
                  sg[j]);
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
