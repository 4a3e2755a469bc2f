// Losses over the network output P (n, out): mean loss and dP = d loss / dP.
#define MT_REAL_SOURCE
#include "mt_internal.h"
#include <math.h>

// one row of targets: labels for cross-entropy are int64, others rows of `real`
static inline int64_t row_of(const int64_t *idx, int64_t i) { return idx ? idx[i] : i; }

// softmax cross-entropy, labels (n,) int64: loss_i = logsumexp(z_i) - z_i[y_i]
static double softmax_ce_row(const real *z, int64_t label, real *dz, int64_t C, double scale) {
    double m = z[0];
    for (int64_t j = 1; j < C; j++) m = z[j] > m ? z[j] : m;
    double s = 0;
    for (int64_t j = 0; j < C; j++) { // one exp per logit: dz holds exp(z - m) meanwhile
        const double e = exp((double)z[j] - m);
        dz[j] = (real)e;
        s += e;
    }
    for (int64_t j = 0; j < C; j++) dz[j] = (real)(dz[j] / s * scale);
    dz[label] -= (real)scale;
    return m + log(s) - z[label];
}

// P (n, out), y -> dP (n, out); returns the mean loss. Row losses go to rowloss (n)
// and are summed in order so the result does not depend on the thread count.
double FN(mt_loss_forward_backward)(int loss, const real *P, const void *y,
                                    const int64_t *idx, real *dP, int64_t n, int64_t out,
                                    double *rowloss) {
    const double inv = loss == MT_LOSS_CROSS_ENTROPY ? 1.0 / n : 1.0 / ((double)n * out);
#pragma omp parallel for schedule(static) if (n * out >= MT_PAR_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        const real *p = P + i * out;
        real *dp = dP + i * out;
        const int64_t r = row_of(idx, i);
        double l = 0;
        if (loss == MT_LOSS_CROSS_ENTROPY) {
            l = softmax_ce_row(p, ((const int64_t *)y)[r], dp, out, inv);
        } else {
            const real *t = (const real *)y + r * out;
            for (int64_t j = 0; j < out; j++) {
                double z = p[j], d = z - t[j];
                if (loss == MT_LOSS_MSE) {
                    l += d * d;
                    dp[j] = (real)(2 * d * inv);
                } else { // binary cross-entropy on logits, stable for any sign of z
                    l += fmax(z, 0) - z * t[j] + log1p(exp(-fabs(z)));
                    double sig = z >= 0 ? 1 / (1 + exp(-z)) : exp(z) / (1 + exp(z));
                    dp[j] = (real)((sig - t[j]) * inv);
                }
            }
        }
        rowloss[i] = l;
    }
    double total = 0;
    for (int64_t i = 0; i < n; i++) total += rowloss[i];
    return total * inv;
}
