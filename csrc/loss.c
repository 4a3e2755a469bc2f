// Losses over the network output P (n, out): batch loss and dP = d loss / dP.
#define MT_REAL_SOURCE
#include "mt_internal.h"
#include <float.h>
#include <math.h>
#include <string.h>

#if MT_DOUBLE
#define REAL_EPS DBL_EPSILON
#else
#define REAL_EPS FLT_EPSILON
#endif

// one row of targets: labels for cross-entropy are int64, others rows of `real`
static inline int64_t row_of(const int64_t *idx, int64_t i) { return idx ? idx[i] : i; }

// exp(x) for x <= 0 in straight-line code that vectorises (libm's exp is a call per
// element): x = k ln2 + r with |r| <= ln2/2, exp(r) by its Taylor series to r^13 in
// Horner's form (the next term is below 2^-53), 2^k written into the exponent bits
// through the rounding constant 1.5*2^52. Within an ulp or two of libm; 0 below -708
// (exp(-708) < 2^-1021).
static inline double exp_nonpositive(double x) {
    const double shifter = 0x1.8p52, big = x < -708 ? -708 : x;
    const double kd = big * 1.4426950408889634 + shifter, k = kd - shifter;
    const double r = (big - k * 0x1.62e42fefa3800p-1) - k * 0x1.ef35793c76730p-45;
    double p = 1;
    for (int n = 13; n >= 1; n--) p = 1 + p * r * (1.0 / n); // 1 + r/1 (1 + r/2 (1 + ...))
    uint64_t bits;
    memcpy(&bits, &kd, sizeof bits);
    bits = (bits + 1023) << 52; // kd's low bits hold k: the exponent field becomes k + 1023
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -708 ? 0 : p * scale;
}

// loss of one output z against target t; *d = d loss / dz. `half` halves the squared
// error (scikit-learn's), whose gradient is then z - t.
static inline double element_loss(int loss, int half, double z, double t, double *d) {
    if (loss == MT_LOSS_MSE) {
        double e = z - t;
        *d = half ? e : 2 * e;
        return half ? 0.5 * e * e : e * e;
    }
    if (loss == MT_LOSS_POISSON) { // half deviance, y log(y/mu) taken as 0 at y = 0
        double mu = exp(z);
        *d = mu - t;
        return (t > 0 ? t * log(t / mu) : 0) - t + mu;
    }
    // binary cross-entropy on logits, stable for any sign of z
    double sig = z >= 0 ? 1 / (1 + exp(-z)) : exp(z) / (1 + exp(z));
    *d = sig - t;
    return fmax(z, 0) - z * t + log1p(exp(-fabs(z)));
}

// What the rows of a batch share: the loss, its reduction and the scale of each row
typedef struct {
    int loss, sk, capped;       // mt_loss; scikit-learn's reduction; its capped log losses
    const real *w;              // row weights or NULL
    double inv, lo, hi;         // 1 / the reduction's divisor; the caps
    int *bad_label;             // set when a cross-entropy label lies outside [0, out)
} loss_args;

// The softmax's exp runs over the shifted logits of as many rows as fill SOFTMAX_BLOCK
// elements: rows of a few logits (a classifier's ten) would leave most of a vector idle.
enum { SOFTMAX_BLOCK = 1024 };

// x[k] = exp(x[k]) for x <= 0
MT_TARGET_CLONES
static void exp_block(double *x, int64_t len) {
#pragma omp simd
    for (int64_t k = 0; k < len; k++) x[k] = exp_nonpositive(x[k]);
}

// rows [i0, i1) of a softmax cross-entropy, labels (n,) int64: loss_i = logsumexp(z_i) -
// z_i[y_i] -> rowloss (weighted); dz_i = (softmax(z_i) - onehot(y_i)) * scale_i. The rows
// hold at most SOFTMAX_BLOCK logits, or are one row, taken in windows of that size.
// A label outside [0, C) sets *bad_label and is not used as an index: the caller owns y,
// which may have changed since the binding checked it.
static void softmax_ce_rows(const loss_args *a, const real *P, const int64_t *labels,
                            const int64_t *idx, real *dP, int64_t i0, int64_t i1, int64_t C,
                            double *rowloss) {
    double x[SOFTMAX_BLOCK], sums[SOFTMAX_BLOCK] = {0}; // Σ_j exp(z_ij - m_i) per row
    for (int64_t i = i0; i < i1; i++) { // the row maxima m_i, in rowloss meanwhile
        const real *z = P + i * C;
        double m = z[0];
        for (int64_t j = 1; j < C; j++) m = z[j] > m ? z[j] : m;
        rowloss[i] = m;
    }
    const real *z = P + i0 * C;
    real *dz = dP + i0 * C; // holds exp(z - m) until the rows are normalised
    const int64_t len = (i1 - i0) * C;
    for (int64_t e0 = 0; e0 < len; e0 += SOFTMAX_BLOCK) {
        const int64_t w = len - e0 < SOFTMAX_BLOCK ? len - e0 : SOFTMAX_BLOCK;
        // the window's elements e0 + k, row segment by row segment: x = z - m
        for (int64_t k = 0, seg; k < w; k += seg) {
            const int64_t r = (e0 + k) / C;
            seg = C - (e0 + k) % C < w - k ? C - (e0 + k) % C : w - k;
            for (int64_t j = k; j < k + seg; j++) x[j] = (double)z[e0 + j] - rowloss[i0 + r];
        }
        exp_block(x, w);
        for (int64_t k = 0, seg; k < w; k += seg) {
            const int64_t r = (e0 + k) / C;
            seg = C - (e0 + k) % C < w - k ? C - (e0 + k) % C : w - k;
            double s = 0;
            for (int64_t j = k; j < k + seg; j++) {
                dz[e0 + j] = (real)x[j];
                s += x[j];
            }
            sums[r] += s;
        }
    }
    for (int64_t i = i0; i < i1; i++) {
        const int64_t row = row_of(idx, i), label = labels[row];
        if ((uint64_t)label >= (uint64_t)C) { // negative labels too
#pragma omp atomic write
            *a->bad_label = 1;
            rowloss[i] = 0;
            continue;
        }
        const double wi = a->w ? a->w[row] : 1, scale = wi * a->inv, s = sums[i - i0];
        real *dzi = dP + i * C;
        for (int64_t j = 0; j < C; j++) dzi[j] = (real)(dzi[j] / s * scale);
        dzi[label] -= (real)scale;
        double l = rowloss[i] + log(s) - P[i * C + label];
        if (a->capped) l = fmin(fmax(l, a->lo), a->hi);
        rowloss[i] = wi * l;
    }
}

// rows [0, n) of P -> their rows of dP and rowloss (weighted); threads split blocks of rows
static void loss_rows(const loss_args *a, const real *P, const void *y, const int64_t *idx,
                      real *dP, int64_t n, int64_t out, double *rowloss) {
    const int64_t rows = out < SOFTMAX_BLOCK ? SOFTMAX_BLOCK / out : 1;
#pragma omp for schedule(static) nowait
    for (int64_t i0 = 0; i0 < n; i0 += rows) {
        const int64_t i1 = i0 + rows < n ? i0 + rows : n;
        if (a->loss == MT_LOSS_CROSS_ENTROPY) {
            softmax_ce_rows(a, P, (const int64_t *)y, idx, dP, i0, i1, out, rowloss);
            continue;
        }
        for (int64_t i = i0; i < i1; i++) {
            const real *p = P + i * out, *t = (const real *)y + row_of(idx, i) * out;
            real *dp = dP + i * out;
            const double wi = a->w ? a->w[row_of(idx, i)] : 1, scale = wi * a->inv;
            double l = 0;
            for (int64_t j = 0; j < out; j++) {
                double d, e = element_loss(a->loss, a->sk, p[j], t[j], &d);
                l += a->capped ? fmin(fmax(e, a->lo), a->hi) : e;
                dp[j] = (real)(d * scale);
            }
            rowloss[i] = wi * l;
        }
    }
}

// P (n, out), y -> dP (n, out); *batch_loss = the batch loss: the sum over rows of
// w_i * loss_i over the batch weight W = sum w_i (n when unweighted), with loss_i the
// row's sum over outputs (over out more for the mean reduction, except cross-entropy).
// Row losses go to rowloss (n) and are summed in order, so the result does not depend
// on the thread count; *batch_weight receives W (net->shard_weight instead when set: the
// rows are then a rank's part of a global batch of that weight). MT_ERR_BAD_LABEL when a cross-entropy
// label lies outside [0, out) (dP and *batch_loss are then meaningless). Inside a
// parallel region every thread calls this: *bad_label (0 on entry) is shared by the team
// and read after the pass's barrier, so every thread returns the same status.
int FN(mt_loss_forward_backward)(const mt_net *net, const real *P, const void *y,
                                 const int64_t *idx, real *dP, int64_t n, int64_t out,
                                 double *rowloss, int *bad_label, double *batch_loss,
                                 double *batch_weight) {
    const int loss = net->loss, sk = net->reduction == MT_REDUCE_SKLEARN;
    const real *w = (const real *)net->sample_weight;
    double wsum = (double)n;
    if (w) {
        wsum = 0;
        for (int64_t i = 0; i < n; i++) wsum += w[row_of(idx, i)];
    }
    // a rank's part of a global batch is scaled by the global batch's weight, so that the
    // parts' losses and gradients sum to the batch's
    if (net->shard_weight > 0) wsum = net->shard_weight;
    *batch_weight = wsum;
    // scikit-learn clips probabilities to [eps, 1 - eps] before taking logs
    const loss_args a = {
        .loss = loss, .sk = sk, .w = w,
        .capped = sk && (loss == MT_LOSS_CROSS_ENTROPY || loss == MT_LOSS_BINARY_CROSS_ENTROPY),
        .inv = loss == MT_LOSS_CROSS_ENTROPY || sk ? 1.0 / wsum : 1.0 / (wsum * out),
        .lo = -log1p(-REAL_EPS), .hi = -log(REAL_EPS), .bad_label = bad_label};
    // (a second thread would pay from about a thousand elements, an exp each, on a quiet
    // machine; but each fork waits for a thread that may be descheduled)
    MT_PARALLEL_IF(n * out >= MT_PAR_ELEMS, loss_rows(&a, P, y, idx, dP, n, out, rowloss));
    double total = 0;
    for (int64_t i = 0; i < n; i++) total += rowloss[i];
    *batch_loss = total * a.inv;
    int bad;
#pragma omp atomic read
    bad = *bad_label;
    return bad ? MT_ERR_BAD_LABEL : MT_OK;
}
