// Optimizers: a check of the flat gradient (which also takes clipping's norm; skipped when the
// iteration checked each gradient tile as it was stored), then one fused pass over the flat
// parameter, gradient and state buffers.
#define MT_REAL_SOURCE
#include "gemm.h"
#include <math.h>

#define NORM_CHUNKS MT_UPDATE_CHUNKS
#define UPDATE_CHUNK 2048

// bad[c] = whether chunk c of g (chunks of `chunk` elements, the last one shorter) holds an
// infinity or a NaN, and with `squares` part[c] = its Σ g² in order: the norm's chunks are
// fixed, so the same bits on any thread count. Threads split the chunks; the barrier at the
// end lets every thread read all of bad and part.
static void check_chunks(const real *g, int64_t n, int64_t chunk, int chunks, int squares,
                         int *bad, double *part) {
#pragma omp for schedule(static)
    for (int c = 0; c < chunks; c++) {
        const int64_t lo = c * chunk < n ? c * chunk : n;
        const int64_t end = (c + 1) * chunk < n ? (c + 1) * chunk : n;
        // the integer pass brings the chunk into the cache for the sum and the update
        bad[c] = !mt_all_finite(MT_DOUBLE ? MT_FLOAT64 : MT_FLOAT32, g + lo, end - lo);
        if (!squares) continue;
        double s = 0;
        for (int64_t i = lo; i < end; i++) s += (double)g[i] * g[i];
        part[c] = s;
    }
}

// The hyperparameters of one update, rounded to real as the formulas use them.
typedef struct {
    int kind, style, nesterov;
    int64_t nd;                  // weight decay on [0, nd)
    real lr, gscale, mu, wd;     // wd: L2 added to the gradient
    real decay;                  // AdamW: p -= decay*p
    real b1, b2, c1, c2, eps;    // torch Adam: c1, c2 bias corrections; sklearn: 1 - beta
    real lr_t;                   // sklearn Adam: the bias-corrected step
} update_args;

// The update of p[lo, hi), g, state m (SGD momentum or velocity, Adam first moment) and v
// (Adam second moment); for MT_OPT_GRADIENT, no update: g becomes the gradient every update
// below takes, the L2 penalty's added. Returns Σ p[lo:min(hi, nd)]² before the update for
// the scikit-learn style (its loss's L2 term) and MT_OPT_GRADIENT, else 0.
// Element-wise, so the same bits from every clone (this file is compiled without
// contraction into fused multiply-adds) and every split of [0, n) into ranges; only the
// sum of squares depends on the vector width.
MT_TARGET_CLONES
static double update_range(const update_args *u, real *restrict p, real *restrict g,
                           real *restrict m, real *restrict v, int64_t lo, int64_t hi) {
    const int64_t nd = u->nd;
    const real lr = u->lr, gscale = u->gscale, mu = u->mu, wd = u->wd;
    const real b1 = u->b1, b2 = u->b2, c1 = u->c1, c2 = u->c2, eps = u->eps;
    double sq = 0;
    if (u->kind == MT_OPT_GRADIENT) { // for an optimizer outside the core (L-BFGS)
#pragma omp simd reduction(+ : sq)
        for (int64_t i = lo; i < hi; i++) {
            const real pi = p[i];
            sq += i < nd ? (double)pi * pi : 0;
            g[i] = g[i] * gscale + (i < nd ? wd * pi : 0);
        }
    } else if (u->style == MT_OPT_STYLE_SKLEARN) {
        // in scikit-learn's order of operations: velocity m = mu*m - lr*g, p += m
        // (nesterov: p += mu*m - lr*g); Adam p += -lr_t*m/(sqrt(v)+eps)
        if (u->kind == MT_OPT_SGD) {
            const int nesterov = u->nesterov;
#pragma omp simd reduction(+ : sq)
            for (int64_t i = lo; i < hi; i++) {
                const real pi = p[i], gi = g[i] * gscale + (i < nd ? wd * pi : 0);
                sq += i < nd ? (double)pi * pi : 0;
                m[i] = mu * m[i] - lr * gi;
                p[i] = pi + (nesterov ? mu * m[i] - lr * gi : m[i]);
            }
        } else {
            const real lr_t = u->lr_t;
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
    } else if (u->kind == MT_OPT_SGD && mu == 0) { // p -= lr * (g + wd*p)
#pragma omp simd
        for (int64_t i = lo; i < hi; i++) p[i] -= lr * (g[i] * gscale + (i < nd ? wd * p[i] : 0));
    } else if (u->kind == MT_OPT_SGD) {
        // buf = mu*buf + g + wd*p; p -= lr * (nesterov ? g + mu*buf : buf)
        const int nesterov = u->nesterov;
#pragma omp simd
        for (int64_t i = lo; i < hi; i++) {
            const real gi = g[i] * gscale + (i < nd ? wd * p[i] : 0);
            m[i] = mu * m[i] + gi;
            p[i] -= lr * (nesterov ? gi + mu * m[i] : m[i]);
        }
    } else {
        const real decay = u->decay;
#pragma omp simd
        for (int64_t i = lo; i < hi; i++) {
            real gi = g[i] * gscale;
            if (i < nd) {
                gi += wd * p[i];
                p[i] -= decay * p[i];
            }
            m[i] = b1 * m[i] + (1 - b1) * gi;
            v[i] = b2 * v[i] + (1 - b2) * gi * gi;
            p[i] -= lr * (m[i] / c1) / (sqrt(v[i]) / c2 + eps);
        }
    }
    return sq;
}

// One piece of the update's split: the parameters [lo, hi); with m >= 0, whole rows of
// weight matrix m of the packed copies, whose copies the piece writes.
typedef struct {
    int64_t lo, hi;
    int m;
} piece;
enum { MAX_PIECES = MT_UPDATE_CHUNKS + 2 * MT_MAX_LAYERS + 2 };

// The split of the n parameters into pieces, fixed whatever the thread count: chunks of
// `chunk`; with copies (pw), each of their weight matrices in pieces of whole packing units
// of both layouts (pairs of rows, NR-row panels) of at least a chunk, so that the piece
// writes its rows' copies from the weights it has just updated, still in its core's cache,
// and no two threads write one unit; chunks between the matrices. Returns the count (at
// most n/chunk + 2 per matrix + 1: within MAX_PIECES).
static int split_of(int64_t n, int64_t chunk, const mt_packed_weights *pw, piece *pc) {
    int k = 0;
    const int nm = pw ? pw->n : 0;
    int64_t at = 0;
    for (int m = 0;; m++) {
        const int64_t end = m < nm ? pw->w[m].off : n;
        for (; at < end; at += chunk)
            pc[k++] = (piece){at, at + chunk < end ? at + chunk : end, -1};
        if (m == nm) return k;
#if !MT_DOUBLE
        const mt_packed_w *w = &pw->w[m];
        const int64_t panel = mt_gemm_pack_unit_bf16(pw->isa, 1);
        const int64_t unit = panel % 2 ? 2 * panel : panel;
        const int64_t rows = ((chunk + w->out - 1) / w->out + unit - 1) / unit * unit;
        for (int64_t r = 0; r < w->in; r += rows) {
            const int64_t r1 = r + rows < w->in ? r + rows : w->in;
            pc[k++] = (piece){w->off + r * w->out, w->off + r1 * w->out, m};
        }
        at = w->off + w->in * w->out;
#endif
    }
}

// part[c] = update_range of piece c; threads split the pieces
static void update_pieces(const update_args *u, real *p, real *g, real *state, int64_t n,
                          const piece *pc, int pieces, const mt_packed_weights *pw,
                          double *part) {
#pragma omp for schedule(static) nowait
    for (int c = 0; c < pieces; c++) {
        part[c] = update_range(u, p, g, state, state + n, pc[c].lo, pc[c].hi);
#if !MT_DOUBLE
        if (pc[c].m < 0 || u->kind == MT_OPT_GRADIENT || !pw->write) continue;
        const mt_packed_w *w = &pw->w[pc[c].m];
        const int64_t r0 = (pc[c].lo - w->off) / w->out, r1 = (pc[c].hi - w->off) / w->out;
        mt_gemm_pack_b_rows_bf16(pw->isa, 0, w->in, w->out, p + w->off, r0, r1, w->fwd);
        if (w->bwd)
            mt_gemm_pack_b_rows_bf16(pw->isa, 1, w->out, w->in, p + w->off, r0, r1, w->bwd);
#else
        (void)pw;
#endif
    }
}

// The gradient's checks (and clipping's norm, on its fixed chunks) unless the caller checked
// it, then the update unless a check failed: every thread reads the checks' results and
// takes the same branch.
static void check_and_update(const update_args *args, double clip_norm, int checked,
                             real *p, real *g, real *state, int64_t n, int64_t chunk,
                             int chunks, const mt_packed_weights *pw,
                             mt_update_scratch *s) {
    const int clip = clip_norm > 0;
    const int64_t norm_chunk = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;
    if (clip)
        check_chunks(g, n, norm_chunk, NORM_CHUNKS, 1, s->bad, s->norm_part);
    else if (!checked) // else mt_optim_result reads no flag either
        check_chunks(g, n, chunk, chunks, 0, s->bad, s->norm_part);
    for (int c = 0; c < (clip ? NORM_CHUNKS : checked ? 0 : chunks); c++)
        if (s->bad[c]) return;
    update_args u = *args;
    if (clip) {
        double sq = 0;
        for (int c = 0; c < NORM_CHUNKS; c++) sq += s->norm_part[c];
        const double norm = sqrt(sq);
        if (norm > clip_norm) u.gscale = (real)(clip_norm / norm);
    }
    piece pc[MAX_PIECES];
    const int pieces = split_of(n, chunk, pw, pc);
    update_pieces(&u, p, g, state, n, pc, pieces, pw, s->part);
}

// The hyperparameters of the update after a batch of weight batch_weight; *wd = the weight
// decay as the gradient takes it.
static update_args args_of(const mt_optim *o, double batch_weight, double *wd) {
    update_args u = {.kind = o->kind, .style = o->style, .nesterov = o->nesterov,
                     .nd = o->n_decay, .lr = (real)o->lr, .gscale = 1,
                     .mu = (real)o->momentum, .eps = (real)o->eps};
    // scikit-learn's alpha is the L2 of the batch's summed loss: per unit of batch weight
    *wd = o->style == MT_OPT_STYLE_SKLEARN ? o->weight_decay / batch_weight : o->weight_decay;
    const double t = (double)o->t;
    u.wd = (real)*wd;
    u.b1 = (real)o->beta1;
    u.b2 = (real)o->beta2;
    if (o->style == MT_OPT_STYLE_SKLEARN) {
        u.c1 = (real)(1 - o->beta1);
        u.c2 = (real)(1 - o->beta2);
        if (o->kind == MT_OPT_ADAM)
            u.lr_t = (real)(o->lr * sqrt(1 - pow(o->beta2, t)) / (1 - pow(o->beta1, t)));
    } else if (o->kind == MT_OPT_ADAM) {
        u.c1 = (real)(1 - pow(o->beta1, t));
        u.c2 = (real)sqrt(1 - pow(o->beta2, t));
        if (o->decoupled) { // AdamW: decay the weights, add nothing to the gradient
            u.decay = u.lr * u.wd;
            u.wd = 0;
        }
    }
    return u;
}

// fixed chunks of the n parameters, whatever the thread count; a chunk is long enough to run
// at vector speed
static int64_t chunk_of(int64_t n) {
    const int64_t even = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;
    return even > UPDATE_CHUNK ? even : UPDATE_CHUNK;
}

void FN(mt_optim_update_team)(const mt_optim *o, real *p, real *g, real *state,
                              int64_t n, double batch_weight, int checked,
                              const mt_packed_weights *pw, mt_update_scratch *s) {
    double wd;
    const update_args u = args_of(o, batch_weight, &wd);
    const int64_t chunk = chunk_of(n);
    check_and_update(&u, o->clip_norm, checked, p, g, state, n, chunk,
                     (int)((n + chunk - 1) / chunk), pw, s);
}

int FN(mt_optim_result)(const mt_optim *o, int64_t n, double batch_weight, int checked,
                        const mt_packed_weights *pw, const mt_update_scratch *s,
                        double *l2_term) {
    const int64_t chunk = chunk_of(n);
    const int chunks = (int)((n + chunk - 1) / chunk);
    *l2_term = 0;
    for (int c = 0; c < (o->clip_norm > 0 ? NORM_CHUNKS : checked ? 0 : chunks); c++)
        if (s->bad[c]) return MT_ERR_NONFINITE_GRADIENT;
    if (o->style != MT_OPT_STYLE_SKLEARN) return MT_OK;
    double wd, sq = 0;
    args_of(o, batch_weight, &wd);
    piece pc[MAX_PIECES];
    const int pieces = split_of(n, chunk, pw, pc);
    for (int c = 0; c < pieces; c++) sq += s->part[c];
    *l2_term = 0.5 * wd * sq;
    return MT_OK;
}

// params (n), grads (n), state: SGD momentum buffer (n) or Adam moments m (n), v (n);
// batch_weight: the sum of the batch's sample weights (its size when unweighted).
// Nothing is written unless every gradient element is finite (MT_ERR_NONFINITE_GRADIENT).
// *l2_term = the L2 term of scikit-learn's loss for the scikit-learn style, from the
// parameters before the update (0 without weight decay, and for the other style).
// MT_OPT_GRADIENT updates nothing: g gets the L2 penalty's gradient added, as the updates
// add it, and *l2_term is its loss term, as above.
int FN(mt_optim_update)(const mt_optim *o, real *p, real *g, real *state, int64_t n,
                        double batch_weight, const mt_packed_weights *pw,
                        double *l2_term) {
    mt_update_scratch s;
    MT_PARALLEL_IF(n >= MT_PAR_ELEMS,
                   FN(mt_optim_update_team)(o, p, g, state, n, batch_weight, 0, pw, &s));
    return FN(mt_optim_result)(o, n, batch_weight, 0, pw, &s, l2_term);
}
